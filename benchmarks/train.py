"""Training throughput: keras_gpt.GPT vs KerasHub's GPT2CausalLM, same shape.

Runs one subprocess per backend; inside each, the two models alternate in
rounds of `fit` so that machine load affects both alike. Prints one JSON object.

    python benchmarks/train.py                    # bench-small, all backends
    python benchmarks/train.py --backends jax --steps 20 --rounds 3
    python benchmarks/train.py --floor            # also the matmuls alone (a bound)

bench-small: vocabulary 8192, 4 layers, 4 heads, hidden 256, context 256,
batch 8, float32, AdamW; default `compile()` settings for both models. In the
PyTorch process, Hugging Face's `GPT2LMHeadModel` (eager, `torch.optim.AdamW`,
the same shape, dropout 0) takes its turn in the same rounds, timed per step
the same way (forward, backward, update, loss read back).
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
from peers import hugging_face_gpt2

SHAPE = dict(
    vocabulary_size=8192, num_layers=4, num_heads=4, hidden_dim=256, max_sequence_length=256
)
BATCH = 8


def matmul_floor(dtype: str):
    """Only bench-small's weight products (and its loss and AdamW), trained by the same `fit`.

    Per layer the four weight matrices (QKV, attention output, MLP up and
    down, with `tanh` standing in for attention and GELU), then the tied
    logits: the same parameters and matmul FLOPs as the GPT, without
    attention scores, LayerNorm or dropout. A lower bound on the step time of
    any Keras GPT of this shape, not a library to beat.
    """
    import keras
    from keras import ops

    d = SHAPE["hidden_dim"]

    class MatmulFloor(keras.Model):
        def __init__(self):
            super().__init__(dtype=dtype)
            self.embedding = keras.layers.Embedding(SHAPE["vocabulary_size"], d, dtype=dtype)
            self.blocks = [
                [
                    keras.layers.Dense(width, use_bias=False, dtype=dtype)
                    for width in (3 * d, d, 4 * d, d)
                ]
                for _ in range(SHAPE["num_layers"])
            ]

        def call(self, x):
            h = self.embedding(x)
            for qkv, out, up, down in self.blocks:
                h = h + out(ops.tanh(qkv(h)[..., :d]))
                h = h + down(ops.tanh(up(h)))
            return ops.matmul(h, ops.transpose(self.embedding.embeddings))

    return MatmulFloor()


def build(kind: str, dtype: str):
    import keras

    if kind == "matmul_floor":
        model = matmul_floor(dtype)
        model.compile(
            optimizer=keras.optimizers.AdamW(1e-4),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        return model, lambda x: x
    if kind == "keras_gpt":
        import keras_gpt

        model = keras_gpt.GPT(**SHAPE, seed=0, dtype=dtype)
        model.compile(optimizer=keras.optimizers.AdamW(1e-4))
        return model, lambda x: x
    import keras_hub

    backbone = keras_hub.models.GPT2Backbone(
        **SHAPE, intermediate_dim=4 * SHAPE["hidden_dim"], dropout=0.0, dtype=dtype
    )
    model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model, lambda x: {"token_ids": x, "padding_mask": (x >= 0).astype("int32")}


class HuggingFaceTrainer:
    """Hugging Face GPT-2 of bench-small's shape, trained by a plain PyTorch loop."""

    def __init__(self, dtype: str):
        import torch

        torch.manual_seed(0)
        self.torch = torch
        self.model = hugging_face_gpt2(SHAPE).to(getattr(torch, dtype))
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)

    def fit(self, x, y, times: list[float]) -> None:
        torch = self.torch
        for i in range(0, len(x), BATCH):
            ids = torch.from_numpy(x[i : i + BATCH].astype("int64"))
            labels = torch.from_numpy(y[i : i + BATCH].astype("int64"))
            start = time.perf_counter()
            logits = self.model(input_ids=ids).logits
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            loss.item()
            times.append(time.perf_counter() - start)


class StepTimer:
    def __init__(self):
        import keras

        class _Cb(keras.callbacks.Callback):
            def on_train_batch_begin(cb, batch, logs=None):
                cb.t = time.perf_counter()

            def on_train_batch_end(cb, batch, logs=None):
                self.times.append(time.perf_counter() - cb.t)

        self.times: list[float] = []
        self.callback = _Cb()


def worker(args) -> dict:
    import numpy as np

    length = SHAPE["max_sequence_length"]
    rng = np.random.default_rng(0)
    data = rng.integers(0, SHAPE["vocabulary_size"], (BATCH * args.steps, length + 1)).astype(
        "int32"
    )
    x, y = data[:, :-1], data[:, 1:]
    models = {}
    for kind in ["keras_gpt", "keras_hub"] + ["matmul_floor"] * args.floor:
        start = time.perf_counter()
        model, adapt = build(kind, args.dtype)
        timer = StepTimer()
        model.fit(adapt(x[: BATCH * 2]), y[: BATCH * 2], batch_size=BATCH, epochs=1, verbose=0)
        models[kind] = (model, adapt, timer, time.perf_counter() - start)
    if os.environ.get("KERAS_BACKEND") == "torch":
        start = time.perf_counter()
        hf, timer = HuggingFaceTrainer(args.dtype), StepTimer()
        hf.fit(x[: BATCH * 2], y[: BATCH * 2], [])
        models["huggingface"] = (hf, None, timer, time.perf_counter() - start)
    for _ in range(args.rounds):
        for kind, (model, adapt, timer, _) in models.items():
            if kind == "huggingface":
                model.fit(x, y, timer.times)
                continue
            model.fit(
                adapt(x),
                y,
                batch_size=BATCH,
                epochs=1,
                verbose=0,
                callbacks=[timer.callback],
                shuffle=False,
            )
    out = {}
    for kind, (model, _, timer, warmup) in models.items():
        step = statistics.median(timer.times)
        out[kind] = {
            "tokens_per_second": BATCH * length / step,
            "median_step_s": step,
            "first_two_steps_s": warmup,
            "steps_timed": len(timer.times),
        }
    if args.floor:
        out["keras_hub_share_of_floor"] = (
            out["keras_hub"]["tokens_per_second"] / out["matmul_floor"]["tokens_per_second"]
        )
    out["speedup"] = out["keras_gpt"]["tokens_per_second"] / out["keras_hub"]["tokens_per_second"]
    if "huggingface" in out:
        out["speedup_vs_huggingface"] = (
            out["keras_gpt"]["tokens_per_second"] / out["huggingface"]["tokens_per_second"]
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", default="tensorflow,jax,torch")
    p.add_argument("--steps", type=int, default=15, help="steps per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--dtype", default="float32")
    p.add_argument(
        "--floor",
        action="store_true",
        help="also time `matmul_floor` (the GPT's matmuls alone) in the same rounds",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return
    results = {
        "benchmark": "train bench-small",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "batch": BATCH,
        "shape": SHAPE,
        "dtype": args.dtype,
        "backends": {},
    }
    for backend in args.backends.split(","):
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            "--steps",
            str(args.steps),
            "--rounds",
            str(args.rounds),
            "--dtype",
            args.dtype,
        ] + ["--floor"] * args.floor
        proc = subprocess.run(
            cmd, env={**os.environ, "KERAS_BACKEND": backend}, capture_output=True, text=True
        )
        lines = [s for s in proc.stdout.splitlines() if s.startswith("RESULT ")]
        results["backends"][backend] = (
            json.loads(lines[-1][7:]) if lines else {"error": proc.stderr[-2000:]}
        )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
