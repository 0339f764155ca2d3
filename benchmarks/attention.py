"""Attention speed: the fused (`keras.ops.dot_product_attention`) vs the plain path.

Times a training step (forward, backward, SGD update) of one
`CausalSelfAttention` layer per implementation on the current backend,
alternating the two. Prints JSON. Used to choose `attention_implementation="auto"`.

    KERAS_BACKEND=torch python benchmarks/attention.py --batch 8 --length 256
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import keras
import numpy as np

from keras_gpt.backend import has_accelerator
from keras_gpt.model.layers import CausalSelfAttention


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--dtype", default="float32")
    args = p.parse_args()
    x = (
        np.random.default_rng(0)
        .standard_normal((args.batch, args.length, args.hidden))
        .astype("float32")
    )
    models = {}
    for impl in ("plain", "fused"):
        inputs = keras.Input((args.length, args.hidden))
        layer = CausalSelfAttention(
            args.heads, args.hidden, attention_implementation=impl, seed=0, dtype=args.dtype
        )
        model = keras.Model(inputs, layer(inputs))
        model.compile(optimizer="sgd", loss="mse")
        model.train_on_batch(x, x)  # compile
        models[impl] = (model, [])
    for _ in range(args.steps):
        for impl, (model, times) in models.items():
            start = time.perf_counter()
            keras.ops.convert_to_numpy(model.train_on_batch(x, x))
            times.append(time.perf_counter() - start)
    result = {"backend": keras.backend.backend(), "accelerator": has_accelerator(), **vars(args)}
    for impl, (_, times) in models.items():
        result[f"{impl}_ms"] = 1000 * statistics.median(times)
    result["fused_speedup"] = result["plain_ms"] / result["fused_ms"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
