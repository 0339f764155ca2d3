"""Generation speed: keras_gpt vs KerasHub GPT2CausalLM.generate vs Hugging Face.

Runs one subprocess per backend; inside each, keras_gpt's `GPT.generate` and
KerasHub's `GPT2CausalLM.generate` (and, in the PyTorch process, Hugging Face
`GPT2LMHeadModel.generate`) decode greedily from the same random prompt with
randomly initialised models of the same shape. Prints one JSON object.

    python benchmarks/generate.py                         # all backends
    python benchmarks/generate.py --backends torch --repeats 2 --threads 1
    python benchmarks/generate.py --gpt2-small            # also 124M, batch 1, ours only
    python benchmarks/generate.py --libraries keras_gpt --dtype float32 bfloat16 int8 \
        --shape gpt2-small --batches 1                    # quantized decoding, 124M

bench-small: vocabulary 8192, 4 layers, 4 heads, hidden 256, context 256,
float32; prompt 32 tokens, 128 new tokens, batch 1 and 8. `matmul_floor` is
not a library: it runs only the step's weight products (see `matmul_floor`), a
rough bound for any float32 decoder of this shape. `first_call_s` is
the first call's wall time (compilation included), `tokens_per_s` is
batch · new tokens / median wall time of the following calls, timed in
rounds that take every library and batch in turn (in reverse order every
other round, so no library always runs first). Stop tokens are
off in every library so that each row decodes all 128 tokens.

`--dtype` runs keras_gpt once per weight format, side by side in the same
rounds: `float32`, `bfloat16` (`GPT(dtype="bfloat16")`: weights and
arithmetic in bfloat16) and `int8` (`GPT.quantize("int8")`: int8 matrices,
float32 activations); results are keyed `keras_gpt/...`, `keras_gpt_bfloat16/...`,
`keras_gpt_int8/...`. `--shape gpt2-small` times the GPT-2 small (124M) shape
instead of bench-small. `--quality` measures instead how far int8 and
bfloat16 greedy decoding stray from float32 (16 prompts x 128 tokens) and
the presets' sizes (see `quality`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from machine import cpu_name

SHAPE = dict(
    vocabulary_size=8192, num_layers=4, num_heads=4, hidden_dim=256, max_sequence_length=256
)
GPT2_SMALL = dict(
    vocabulary_size=50257, num_layers=12, num_heads=12, hidden_dim=768, max_sequence_length=1024
)
PROMPT, NEW = 32, 128


def cpu_details() -> dict:
    """`lscpu`'s model, family and the flags that decide int8 and bfloat16 speed."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")
    info = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return info
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("Model name", "CPU family", "Model", "CPU(s)"):
            info[key.strip()] = value.strip()
        elif key.strip() == "Flags":
            info["flags"] = [f for f in wanted if f in value.split()]
    return info


def keras_gpt_generate(shape, dtype="float32"):
    import keras_gpt

    model = keras_gpt.GPT(**shape, seed=0, dtype="bfloat16" if dtype == "bfloat16" else None)
    if dtype == "int8":
        model.quantize("int8")
    return lambda prompt, new: model.generate(prompt, max_new_tokens=new)


def keras_hub_generate(shape):
    import keras_hub
    import numpy as np

    backbone = keras_hub.models.GPT2Backbone(
        **shape, intermediate_dim=4 * shape["hidden_dim"], dropout=0.0
    )
    model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    model.compile(sampler="greedy")

    def run(prompt, new):
        # Without a preprocessor, KerasHub generates into the padded positions.
        batch, length = prompt.shape
        ids = np.zeros((batch, length + new), "int32")
        ids[:, :length] = prompt
        mask = np.zeros_like(ids)
        mask[:, :length] = 1
        return model.generate({"token_ids": ids, "padding_mask": mask}, stop_token_ids=None)

    return run


def hugging_face_generate(shape):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=shape["vocabulary_size"],
        n_positions=shape["max_sequence_length"],
        n_embd=shape["hidden_dim"],
        n_layer=shape["num_layers"],
        n_head=shape["num_heads"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config).eval()

    def run(prompt, new):
        with torch.no_grad():
            return model.generate(
                torch.as_tensor(prompt, dtype=torch.long),
                attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=0,
            )

    return run


def matmul_floor(shape):
    """Only the matrix products of each decode step, compiled as tightly as the backend allows.

    Per step and layer the four weight products (QKV, attention output, MLP up
    and down; `tanh` stands in for attention and GELU to keep values bounded),
    then the logits against the embedding table (stored transposed, the
    fastest layout) and the argmax's row as the next input: the same weights
    read in the same order as a real step, with no attention, norms or
    sampling. At batch 1 these matrix-vector products stream every weight
    once per token, so this roughly bounds a step's time for float32 weights
    (roughly: it measures memory bandwidth, which varies between runs, and a
    backend may schedule the real step better); it is not a library to beat.
    """
    import keras
    import numpy as np
    from keras import ops

    rng = np.random.default_rng(0)
    d, v = shape["hidden_dim"], shape["vocabulary_size"]

    def normal(*dims):
        return rng.normal(0, 0.02, dims).astype("float32")

    layers = [
        tuple(
            ops.convert_to_tensor(normal(*dims))
            for dims in ((d, 3 * d), (d, d), (d, 4 * d), (4 * d, d))
        )
        for _ in range(shape["num_layers"])
    ]
    table = normal(v, d)
    # The logits' matrix as a contiguous (hidden, vocabulary) copy: the fastest layout.
    table, table_t = ops.convert_to_tensor(table), ops.convert_to_tensor(table.T.copy())

    def steps(h, n):
        def body(_, h):
            for qkv, out, up, down in layers:
                h = h + ops.matmul(ops.tanh(ops.matmul(h, qkv)[:, :d]), out)
                h = h + ops.matmul(ops.tanh(ops.matmul(h, up)), down)
            return ops.take(table, ops.argmax(ops.matmul(h, table_t), axis=-1), axis=0)

        return ops.fori_loop(0, n, body, h)

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        steps = jax.jit(steps, static_argnums=1)
    elif backend == "tensorflow":
        import tensorflow as tf

        steps = tf.function(steps, jit_compile=True, reduce_retracing=True)
    else:
        import torch

        # Plain torch calls: Keras' per-op checks would dominate an eager loop.
        @torch.no_grad()
        def steps(h, n):
            for _ in range(n):
                for qkv, out, up, down in layers:
                    h = h + torch.tanh((h @ qkv)[:, :d]) @ out
                    h = h + torch.tanh(h @ up) @ down
                h = table[torch.argmax(h @ table_t, dim=-1)]
            return h

    def run(prompt, new):
        out = ops.convert_to_numpy(steps(ops.take(table, prompt[:, -1], axis=0), new))
        return np.zeros((prompt.shape[0], PROMPT + new)) + out[:, :1]

    return run


def measure(runs: dict, batches, new: int, repeats: int, vocabulary: int) -> dict:
    """First call, then `repeats` rounds timing every (library, batch) once per round.

    Interleaving the rounds spreads the machine's slow spells (other tenants,
    memory bandwidth) over all libraries alike, so ratios within one run hold
    better than with each library's repeats back to back.
    """
    import numpy as np

    results, times, prompts = {}, {}, {}
    for name, run in runs.items():
        for batch in batches:
            key = f"{name}/batch{batch}"
            prompts[key] = (
                np.random.default_rng(batch)
                .integers(0, vocabulary, (batch, PROMPT))
                .astype("int32")
            )
            try:
                start = time.perf_counter()
                out = run(prompts[key], new)
                first = time.perf_counter() - start
                if isinstance(out, dict):  # KerasHub without a preprocessor
                    out = out["token_ids"]
                assert tuple(out.shape) == (batch, PROMPT + new), tuple(out.shape)
                results[key], times[key] = {"first_call_s": round(first, 3)}, []
            except Exception as error:  # report it, keep measuring the others
                results[key] = {"error": repr(error)[-500:]}
    for round_ in range(repeats):
        keys = list(times)
        for key in keys[::-1] if round_ % 2 else keys:
            run = runs[key.split("/")[0]]
            try:
                start = time.perf_counter()
                run(prompts[key], new)
                times[key].append(time.perf_counter() - start)
            except Exception as error:
                results[key] = {"error": repr(error)[-500:]}
                del times[key]
    for key, spans in times.items():
        batch = prompts[key].shape[0]
        median = statistics.median(spans)
        results[key].update(steady_s=round(median, 4), tokens_per_s=round(batch * new / median, 1))
    return results


def quality(shape, prompts: int = 16, new: int = NEW) -> dict:
    """How far int8 and bfloat16 decoding move from float32, and the preset sizes.

    One seeded model of `shape` (GPT-2's N(0, 0.02) initialisation: random,
    not trained), `prompts` random prompts of 32 tokens, `new` greedy tokens
    each. `agreement` is the fraction of generated positions whose token
    equals float32's (after a first difference a row continues from its own
    tokens, so this counts the divergence too); `rows_identical` the rows
    equal throughout; `logits_relative_error` the largest logit difference
    over float32's largest logit, on the prompts. Preset bytes are the
    `model.weights.h5` of `save_to_preset`.
    """
    import tempfile

    import keras
    import numpy as np

    import keras_gpt

    ids = np.random.default_rng(0).integers(0, shape["vocabulary_size"], (prompts, PROMPT))
    ids = ids.astype("int32")
    reference = keras_gpt.GPT(**shape, seed=0)
    expected = keras.ops.convert_to_numpy(reference(ids[:4]))
    tokens = reference.generate(ids, max_new_tokens=new)[:, PROMPT:]
    out = {"prompts": prompts, "new_tokens": new}
    with tempfile.TemporaryDirectory() as scratch:
        reference.save_to_preset(os.path.join(scratch, "float32"))
        sizes = {"float32": os.path.getsize(os.path.join(scratch, "float32", "model.weights.h5"))}
        del reference
        for dtype in ("int8", "bfloat16"):
            model = keras_gpt.GPT.from_preset(
                os.path.join(scratch, "float32"),
                **({"dtype": "bfloat16"} if dtype == "bfloat16" else {}),
            )
            if dtype == "int8":
                model.quantize("int8")
            logits = keras.ops.convert_to_numpy(keras.ops.cast(model(ids[:4]), "float32"))
            got = model.generate(ids, max_new_tokens=new)[:, PROMPT:]
            model.save_to_preset(os.path.join(scratch, dtype))
            sizes[dtype] = os.path.getsize(os.path.join(scratch, dtype, "model.weights.h5"))
            out[dtype] = {
                "agreement": round(float(np.mean(got == tokens)), 4),
                "rows_identical": int(np.sum(np.all(got == tokens, axis=1))),
                "logits_relative_error": round(
                    float(np.max(np.abs(logits - expected)) / np.max(np.abs(expected))), 5
                ),
                "preset_bytes": sizes[dtype],
                "preset_ratio_to_float32": round(sizes[dtype] / sizes["float32"], 4),
            }
            del model
    out["float32_preset_bytes"] = sizes["float32"]
    return out


def worker(args) -> dict:
    import keras

    backend = keras.backend.backend()
    if args.threads and backend == "torch":
        import torch

        torch.set_num_threads(args.threads)
    if args.quality:
        return {"quality": quality(GPT2_SMALL if args.shape == "gpt2-small" else SHAPE)}
    libraries = {
        "keras_gpt": keras_gpt_generate,
        "keras_hub": keras_hub_generate,
        "matmul_floor": matmul_floor,
    }
    if backend == "torch":
        libraries["hugging_face"] = hugging_face_generate
    shape = GPT2_SMALL if args.shape == "gpt2-small" else SHAPE
    runs = {}
    for name, make in libraries.items():
        if name not in args.libraries:
            continue
        if name != "keras_gpt":
            runs[name] = make(shape)
            continue
        for dtype in args.dtype:
            key = name if dtype == "float32" else f"{name}_{dtype}"
            runs[key] = make(shape, dtype)
    results = measure(runs, args.batches, NEW, args.repeats, shape["vocabulary_size"])
    if args.gpt2_small:
        run = {"keras_gpt": keras_gpt_generate(GPT2_SMALL)}
        small = measure(
            run,
            [1],
            args.gpt2_small_tokens,
            max(1, args.repeats - 1),
            GPT2_SMALL["vocabulary_size"],
        )
        results["keras_gpt/gpt2_small/batch1"] = small["keras_gpt/batch1"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument(
        "--libraries", nargs="+", default=["keras_gpt", "keras_hub", "hugging_face", "matmul_floor"]
    )
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the first")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch.set_num_threads in the PyTorch process (0: default)",
    )
    parser.add_argument(
        "--gpt2-small",
        action="store_true",
        help="also time keras_gpt at the GPT-2 small (124M) shape, batch 1",
    )
    parser.add_argument("--gpt2-small-tokens", type=int, default=64)
    parser.add_argument(
        "--dtype",
        nargs="+",
        default=["float32"],
        choices=["float32", "bfloat16", "int8"],
        help="keras_gpt weight formats to time side by side",
    )
    parser.add_argument("--shape", default="bench-small", choices=["bench-small", "gpt2-small"])
    parser.add_argument(
        "--quality",
        action="store_true",
        help="instead of timing: int8/bfloat16 greedy agreement with float32 and preset sizes",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    report = {
        "cpu": cpu_name(),
        "lscpu": cpu_details(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "shape": GPT2_SMALL if args.shape == "gpt2-small" else SHAPE,
        "dtypes": args.dtype,
        "prompt": PROMPT,
        "new_tokens": NEW,
        "results": {},
    }
    for backend in args.backends:
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        command = [sys.executable, __file__, "--worker", *sys.argv[1:]]
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        if proc.returncode:
            report["results"][backend] = {"error": proc.stderr[-2000:]}
        else:
            report["results"][backend] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
