"""The Shakespeare-char recipe beside nanoGPT's procedure, with a wall-time breakdown.

For each backend, one pair of fresh processes in turn (the pair's order alternates
from one backend to the next, so a slow spell of the machine does not always hit the
same side):

- `nanogpt`: `benchmarks/nanogpt_reference.py`'s faithful nanoGPT run (plain PyTorch,
  eager; its estimates every 250 steps and its checkpoint saves), then its model
  scored over the whole validation split, as our recipe scores (that scoring is not
  part of nanoGPT's run, so its time is left out of nanoGPT's wall time);
- `keras_gpt`: `keras-gpt pretrain --config recipes/configs/shakespeare_char.toml`
  as a user runs it (same code path: `pretrain`), its phases timed by wrapping the
  functions the recipe calls.

Wall time is the parent's clock from spawning the process to its exit (interpreter
start and imports included). Prints one JSON object: per backend both sides'
breakdowns (start-up, data, train steps, evaluations, checkpoints, plot, sample) and
the ratios keras_gpt / nanoGPT of wall time and of time in training steps.

    python benchmarks/recipe.py                          # 2000 steps, all backends
    python benchmarks/recipe.py --backends torch --steps 500
    python benchmarks/recipe.py --set dtype=mixed_bfloat16   # any recipe setting
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

_IMPORT_START = time.perf_counter()

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIG = ROOT / "recipes" / "configs" / "shakespeare_char.toml"


def _timed(seconds: dict, key: str, fn):
    """`fn`, adding its wall time to `seconds[key]` (and counting calls)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start
            seconds[key + "_calls"] = seconds.get(key + "_calls", 0) + 1

    return wrapper


def child_keras(args) -> dict:
    """Runs the recipe through `pretrain`, timing each phase."""
    import importlib

    import keras

    from keras_gpt.model.gpt import GPT

    # The modules (`keras_gpt.training.pretrain` is also the name of a function there).
    loop = importlib.import_module("keras_gpt.training.loop")
    pretrain = importlib.import_module("keras_gpt.training.pretrain")

    seconds: dict = {"import": time.perf_counter() - _IMPORT_START}
    for name in ("resolve_data", "make_tokenizer", "tokenize_corpus"):
        setattr(pretrain, name, _timed(seconds, "data", getattr(pretrain, name)))
    pretrain.probe_peak_flops = _timed(seconds, "peak_probe", pretrain.probe_peak_flops)
    pretrain._save_best = _timed(seconds, "best_model", pretrain._save_best)
    loop.save_checkpoint = _timed(seconds, "checkpoints", loop.save_checkpoint)
    loop.plot_loss_curve = _timed(seconds, "plot", loop.plot_loss_curve)
    GPT.evaluate = _timed(seconds, "evals", keras.Model.evaluate)
    GPT.generate = _timed(seconds, "sample", GPT.generate)
    fit = keras.Model.fit

    def timed_fit(self, *a, **k):
        # The process's first `fit` compiles the train step: counted on its own.
        key = "compile_step" if "compile_step" not in seconds else "train_steps"
        return _timed(seconds, key, fit)(self, *a, **k)

    GPT.fit = timed_fit
    overrides = {"out": args.out, "overwrite": True, "max_steps": args.steps}
    overrides.update(dict(item.split("=", 1) for item in args.set))
    config = pretrain.load_config(CONFIG, overrides)
    start = time.perf_counter()
    summary = pretrain.pretrain(config)
    seconds["pretrain"] = time.perf_counter() - start
    phases = [k for k in seconds if not k.endswith("_calls") and k not in ("import", "pretrain")]
    # What no wrapper caught: building and compiling the model, logging, the loop itself.
    seconds["other"] = seconds["pretrain"] - sum(seconds[k] for k in phases)
    return {
        "backend": keras.backend.backend(),
        "steps": summary["steps"],
        "val_loss": summary["val_loss"],
        "tokens_per_second": summary["tokens_per_second"],
        "seconds": seconds,
        "settings": overrides,
    }


def child_nanogpt(args) -> dict:
    """nanoGPT's run (`nanogpt_reference.run`), checkpoints included, in this process."""
    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    import nanogpt_reference as ref

    torch.set_num_threads(args.threads or os.cpu_count())
    seconds: dict = {"import": time.perf_counter() - _IMPORT_START}
    start = time.perf_counter()
    text = open(ref.TEXT, encoding="utf-8").read()
    index = {c: i for i, c in enumerate(sorted(set(text)))}
    ids = np.array([index[c] for c in text], dtype=np.uint16)
    train, val = ids[: int(len(ids) * 0.9)], ids[int(len(ids) * 0.9) :]
    seconds["data"] = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        result = ref.run(args.seed, train, val, len(index), args.steps, tmp, score=False)
    seconds.update(
        train_steps=result["seconds"]["train"],
        evals=result["seconds"]["eval"],
        checkpoints=result["seconds"]["checkpoint"],
        score=result["seconds"]["score"],
    )
    return {
        "steps": args.steps,
        "val_loss": result["whole_split_val_loss"],
        "nanogpt_printed_val": result["nanogpt_log"][-1]["val"],
        "seconds": seconds,
    }


def spawn(kind: str, backend: str, args, log: pathlib.Path) -> dict:
    """Runs one side in a fresh process; its JSON plus the parent's wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--child", kind, "--steps", str(args.steps)]
        cmd += ["--seed", str(args.seed), "--out", tmp + "/run", "--threads", str(args.threads)]
        for item in args.set:
            cmd += ["--set", item]
        env = {**os.environ, "KERAS_BACKEND": backend}
        start = time.perf_counter()
        with open(log, "a") as f:
            f.write(f"\n=== {kind} {backend}: {' '.join(cmd)}\n")
            f.flush()
            proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=f, text=True)
        wall = time.perf_counter() - start
        with open(log, "a") as f:
            f.write(proc.stdout)
    lines = [s for s in proc.stdout.splitlines() if s.startswith("RESULT ")]
    if not lines:
        return {"error": f"exit {proc.returncode}, see {log}"}
    result = json.loads(lines[-1][len("RESULT ") :])
    # nanoGPT's own run ends at its last step: our whole-split scoring is not part of it.
    result["wall_seconds"] = wall - result["seconds"].get("score", 0.0)
    return result


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", nargs="+", default=["torch", "jax", "tensorflow"])
    p.add_argument("--steps", type=int, default=2000, help="training steps (both sides)")
    p.add_argument("--seed", type=int, default=0, help="both sides' seed")
    p.add_argument("--threads", type=int, default=0, help="nanoGPT's torch threads (0: all)")
    p.add_argument("--set", action="append", default=[], help="recipe setting key=value")
    p.add_argument("--log", default="/tmp/recipe_bench.log", help="children's output")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--child", choices=["keras_gpt", "nanogpt"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        fn = child_keras if args.child == "keras_gpt" else child_nanogpt
        print("RESULT " + json.dumps(fn(args)), flush=True)
        return

    sys.path.insert(0, str(HERE))
    from machine import cpu_name

    flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else []
    report = {
        "benchmark": "shakespeare_char recipe vs nanoGPT procedure",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "cpu_flags": sorted(
            {f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")}
        ),
        "steps": args.steps,
        "settings": args.set,
        "load_average_start": load_average(),
        "backends": {},
    }
    log = pathlib.Path(args.log)
    for i, backend in enumerate(args.backends):
        order = ["nanogpt", "keras_gpt"] if i % 2 == 0 else ["keras_gpt", "nanogpt"]
        pair = {"order": order}
        for kind in order:
            pair[kind] = spawn(kind, backend, args, log)
            pair[kind]["load_average_after"] = load_average()
            print(json.dumps({backend: {kind: pair[kind]}}), file=sys.stderr, flush=True)
        ours, ref = pair["keras_gpt"], pair["nanogpt"]
        if "error" not in ours and "error" not in ref:
            pair["wall_ratio"] = ours["wall_seconds"] / ref["wall_seconds"]
            pair["train_steps_ratio"] = (
                ours["seconds"]["train_steps"] + ours["seconds"]["compile_step"]
            ) / ref["seconds"]["train_steps"]
        report["backends"][backend] = pair
    report["load_average_end"] = load_average()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
