"""GPT-2 124M on one GPU: training tokens/s and MFU, generation tokens/s, beside Hugging Face.

One fresh process per job, so each library gets the device to itself:

- `keras_gpt` on JAX and on PyTorch (eager Keras step; `--torch-compile` adds Keras'
  `jit_compile=True`, i.e. `torch.compile`): `fit` in `mixed_bfloat16` (bfloat16
  matmuls, float32 weights and AdamW state), GPT-2's optimizer recipe;
- Hugging Face `GPT2LMHeadModel` (SDPA attention) under `torch.autocast(bfloat16)`
  with fused AdamW, eager and `torch.compile`d;
- generation: greedy, prompt 32 tokens, at batch 1 and 32, `GPT.generate` against
  Hugging Face's `generate` (KV cache), the same bfloat16 compute.

MFU is (tokens/s × FLOPs per token) / the device's published dense bfloat16 peak
(`keras_gpt.training.throughput.DEVICE_PEAK_FLOPS`, keyed by device name); FLOPs per
token are 6·N + 12·layers·width·context for both libraries (PaLM's count, N every
parameter). A device not in the table gets no MFU (never one against a guess). On a
CPU (`--tiny`) the peak is a matmul probe, and MFU is left out when the figures
exceed it. Timings: after `--warmup` steps (compiling), the median of `--rounds`
timed rounds of `--steps` steps; generation after one warm-up call.

    python benchmarks/gpu.py                     # GPT-2 124M, context 1024: ~7.5 min at most
    python benchmarks/gpu.py --tiny              # a tiny shape on any CPU: a smoke test
    python benchmarks/gpu.py --jobs jax hf       # a subset
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

GPT2 = dict(vocab=50257, layers=12, heads=12, width=768, context=1024, batch=16)
TINY = dict(vocab=512, layers=2, heads=2, width=64, context=64, batch=2)
JOBS = ("jax", "torch", "torch_compile", "hf", "hf_compile")
PROMPT = 32


def flops_per_token(params: int, shape: dict) -> float:
    return 6.0 * params + 12 * shape["layers"] * shape["width"] * shape["context"]


def peak_and_device(backend: str, dtype: str) -> tuple[float | None, str]:
    """The published peak for the device (None if unknown), or a probe on a CPU."""
    from keras_gpt.backend import accelerator_name
    from keras_gpt.training.throughput import device_peak_flops

    if backend == "hf":
        import torch

        name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    else:
        name = accelerator_name()
    if name is None:  # a CPU: a lower bound of its peak (mfu() refuses figures above it)
        from keras_gpt.training.throughput import probe_peak_flops

        return probe_peak_flops(dtype=dtype, budget_seconds=0.3), "cpu (matmul probe)"
    return device_peak_flops(name, dtype), name


def summarize(times: list[float], tokens_per_step: int, flops: float, peak: float | None):
    from keras_gpt.training.throughput import mfu

    step = statistics.median(times)
    rate = tokens_per_step / step
    return {
        "median_step_s": step,
        "tokens_per_second": rate,
        "mfu": mfu(rate, flops, peak or 0.0),
        "steps_timed": len(times),
    }


def keras_job(args, shape: dict, compile_torch: bool) -> dict:
    """keras_gpt on the process's backend: `fit` rounds, then `generate`."""
    import keras
    import numpy as np

    from keras_gpt import GPT
    from keras_gpt.training import StepBatches, gpt_optimizer

    dtype = "mixed_bfloat16"
    result: dict = {"backend": keras.backend.backend(), "dtype": dtype}
    peak, device = peak_and_device(keras.backend.backend(), "bfloat16")
    result["device"], result["peak_flops"] = device, peak
    start = time.perf_counter()
    model = GPT(
        vocabulary_size=shape["vocab"],
        num_layers=shape["layers"],
        num_heads=shape["heads"],
        hidden_dim=shape["width"],
        max_sequence_length=shape["context"],
        dropout=0.0,
        seed=0,
        dtype=dtype,
    )
    model.compile(
        optimizer=gpt_optimizer(6e-4, total_steps=10_000, warmup_steps=10),
        jit_compile=True if compile_torch else "auto",
    )
    b, t = shape["batch"], shape["context"]
    rng = np.random.default_rng(0)
    data = rng.integers(0, shape["vocab"], (64 * b, t + 1)).astype("int32")

    def batch_at(i: int):
        rows = data[(i * b) % len(data) :][:b]
        return rows[:, :-1], rows[:, 1:]

    model.fit(StepBatches(batch_at, 0, args.warmup), verbose=0, shuffle=False)
    result["first_steps_s"] = time.perf_counter() - start
    times = []
    for r in range(args.rounds):
        tick = time.perf_counter()
        history = model.fit(StepBatches(batch_at, r, args.steps), verbose=0, shuffle=False)
        float(history.history["loss"][-1])  # the round's last step has finished
        times.append((time.perf_counter() - tick) / args.steps)
    flops = flops_per_token(model.count_params(), shape)
    result["params"] = model.count_params()
    result["train"] = summarize(times, b * t, flops, peak)
    if compile_torch:
        return result  # generation is timed once, in the eager job
    result["generate"] = {}
    for batch in args.gen_batches:
        prompts = data[:batch, :PROMPT]
        model.generate(prompts, max_new_tokens=args.new_tokens)  # compiles
        tick = time.perf_counter()
        model.generate(prompts, max_new_tokens=args.new_tokens)
        result["generate"][str(batch)] = batch * args.new_tokens / (time.perf_counter() - tick)
    return result


def hf_job(args, shape: dict, compile_torch: bool) -> dict:
    """Hugging Face GPT2LMHeadModel, bfloat16 autocast, fused AdamW where it exists."""
    import numpy as np
    import torch
    from peers import hugging_face_gpt2

    device = "cuda" if torch.cuda.is_available() else "cpu"
    peak, name = peak_and_device("hf", "bfloat16")
    result: dict = {"library": "transformers", "device": name, "peak_flops": peak}
    torch.manual_seed(0)
    model = hugging_face_gpt2(
        dict(
            vocabulary_size=shape["vocab"],
            num_layers=shape["layers"],
            num_heads=shape["heads"],
            hidden_dim=shape["width"],
            max_sequence_length=shape["context"],
        )
    ).to(device)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=6e-4, weight_decay=0.1, fused=device == "cuda"
    )
    forward = torch.compile(model) if compile_torch else model
    b, t = shape["batch"], shape["context"]
    rng = np.random.default_rng(0)
    data = torch.from_numpy(rng.integers(0, shape["vocab"], (64 * b, t)).astype("int64"))
    data = data.to(device)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def step(i: int):
        ids = data[(i * b) % len(data) :][:b]
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = forward(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    start = time.perf_counter()
    for i in range(args.warmup):
        step(i)
    sync()
    result["first_steps_s"] = time.perf_counter() - start
    times = []
    for r in range(args.rounds):
        tick = time.perf_counter()
        for i in range(args.steps):
            step(r * args.steps + i)
        sync()
        times.append((time.perf_counter() - tick) / args.steps)
    result["params"] = params
    result["train"] = summarize(times, b * t, flops_per_token(params, shape), peak)
    if compile_torch:
        return result  # generation is timed once, on the eager model
    result["generate"] = {}
    model.eval()
    for batch in args.gen_batches:
        prompts = data[:batch, :PROMPT]
        kwargs = dict(
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            do_sample=False,
            pad_token_id=0,
            attention_mask=torch.ones_like(prompts),
        )
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
            model.generate(prompts, **kwargs)
            sync()
            tick = time.perf_counter()
            model.generate(prompts, **kwargs)
            sync()
        result["generate"][str(batch)] = batch * args.new_tokens / (time.perf_counter() - tick)
    return result


def child(args) -> dict:
    shape = TINY if args.tiny else GPT2
    if args.batch:
        shape = {**shape, "batch": args.batch}
    if args.child in ("hf", "hf_compile"):
        return hf_job(args, shape, args.child == "hf_compile")
    return keras_job(args, shape, args.child == "torch_compile")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="a tiny shape: a smoke test on a CPU")
    p.add_argument("--jobs", nargs="+", default=list(JOBS), choices=JOBS)
    p.add_argument("--batch", type=int, default=0, help="training batch (default 16; tiny 2)")
    p.add_argument("--steps", type=int, default=None, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3, help="untimed first steps (compiling)")
    p.add_argument("--new-tokens", type=int, default=None, help="generated tokens per row")
    p.add_argument("--gen-batches", type=int, nargs="+", default=[1, 32])
    p.add_argument(
        "--budget", type=float, default=450, help="seconds for all jobs (each at most 180)"
    )
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--child", choices=JOBS, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.steps = args.steps or (2 if args.tiny else 10)
    args.new_tokens = args.new_tokens or (8 if args.tiny else 128)
    if args.tiny:
        args.gen_batches = [min(g, 2) for g in args.gen_batches]
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from machine import cpu_name

    report: dict = {
        "benchmark": "GPT-2 124M on one GPU" if not args.tiny else "gpu.py --tiny smoke test",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host_cpu": cpu_name(),
        "shape": TINY if args.tiny else GPT2,
        "jobs": {},
    }
    passthrough = ["--rounds", str(args.rounds), "--warmup", str(args.warmup)]
    passthrough += ["--steps", str(args.steps), "--new-tokens", str(args.new_tokens)]
    passthrough += ["--gen-batches", *map(str, args.gen_batches), "--batch", str(args.batch)]
    passthrough += ["--tiny"] * args.tiny
    began = time.perf_counter()
    for i, job in enumerate(args.jobs):
        # Keep 30 s for each job still to come, so that one slow compile cannot take all.
        left = args.budget - (time.perf_counter() - began) - 30 * (len(args.jobs) - i - 1)
        timeout = max(30.0, min(180.0, left))
        backend = "jax" if job == "jax" else "torch"
        cmd = [sys.executable, os.path.abspath(__file__), "--child", job, *passthrough]
        env = {**os.environ, "KERAS_BACKEND": backend}
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
            lines = [s for s in proc.stdout.splitlines() if s.startswith("RESULT ")]
            result = (
                json.loads(lines[-1][len("RESULT ") :])
                if lines
                else {"error": f"exit {proc.returncode}: {proc.stderr[-1500:]}"}
            )
        except subprocess.TimeoutExpired:
            result = {"error": f"timed out after {timeout:.0f} s"}
        result["job_seconds"] = time.perf_counter() - start
        report["jobs"][job] = result
        print(json.dumps({job: result}), file=sys.stderr, flush=True)
    jobs = report["jobs"]

    def rate(job: str, key: str = "train") -> float | None:
        value = jobs.get(job, {}).get(key)
        if key == "train":
            return value["tokens_per_second"] if value else None
        return value

    ratios = {}
    for ours in ("jax", "torch", "torch_compile"):
        for theirs in ("hf", "hf_compile"):
            if rate(ours) and rate(theirs):
                ratios[f"train {ours} / {theirs}"] = rate(ours) / rate(theirs)
        ours_gen, hf_gen = rate(ours, "generate"), rate("hf", "generate")
        if ours_gen and hf_gen:
            for batch, value in ours_gen.items():
                if hf_gen.get(batch):
                    ratios[f"generate batch {batch} {ours} / hf"] = value / hf_gen[batch]
    report["ratios"] = ratios
    report["total_seconds"] = sum(j["job_seconds"] for j in jobs.values())
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
