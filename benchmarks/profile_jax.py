"""Where JAX's time goes: per-kernel times of a bench-small train step or generate call.

Profiles with `jax.profiler.trace` (a Perfetto trace of every XLA CPU kernel
launch) and names each kernel's output shape from XLA's optimized HLO
(`XLA_FLAGS=--xla_dump_to`, set here before JAX is imported). Prints one JSON
object: the wall time, kernel time by category, and the slowest kernels.

    python benchmarks/profile_jax.py train        # one fit step of bench-small
    python benchmarks/profile_jax.py generate     # one greedy generate, 32 + 128 tokens

Categories: `matmul` (dot kernels, fusions around a dot and YNNPACK fusions), `transposed copy`
(fusions XLA names `copy_*`/`*_copy_*`, which lay an array out again, e.g. an
operand transposed for a dot), `other` (the remaining elementwise and
reduction fusions). Profiling adds overhead: compare shares, not totals.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

from machine import cpu_name

SHAPE = dict(
    vocabulary_size=8192, num_layers=4, num_heads=4, hidden_dim=256, max_sequence_length=256
)


def category(name: str) -> str:
    if name.startswith("dot") or "_dot_" in name or "ynn_fusion" in name:
        return "matmul"
    if name.startswith("copy") or "_copy_" in name or name.startswith("transpose"):
        return "transposed copy"
    return "other"


def kernel_times(trace_dir: str) -> dict[str, list]:
    """{kernel name: [launches, total µs]} from the Perfetto trace under `trace_dir`."""
    path = sorted(glob.glob(f"{trace_dir}/plugins/profile/*/perfetto_trace.json.gz"))[-1]
    events = json.load(gzip.open(path))
    events = events["traceEvents"] if isinstance(events, dict) else events
    kernels = collections.defaultdict(lambda: [0, 0.0])
    for event in events:
        name = event.get("name", "")
        # Python frames start with "$"; executor and thread-pool spans wrap the kernels.
        if (
            event.get("ph") != "X"
            or name.startswith(("$", "end:"))
            or any(word in name for word in ("Thunk", "Slinky", "Pjit", "Execute", "DevicePut"))
        ):
            continue
        kernels[name][0] += 1
        kernels[name][1] += event["dur"]
    return kernels


def hlo_shapes(dump_dir: str) -> dict[str, str]:
    shapes = {}
    for path in glob.glob(f"{dump_dir}/*after_optimizations.txt"):
        shapes.update(re.findall(r"^\s*%(\S+) = (\S+) ", open(path).read(), re.M))
    return shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["train", "generate"])
    parser.add_argument("--top", type=int, default=12, help="slowest kernels to list")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="profile_jax_")
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={work}/hlo --xla_dump_hlo_as_text"
    )
    import jax
    import keras
    import numpy as np

    import keras_gpt

    model = keras_gpt.GPT(**SHAPE, seed=0)
    rng = np.random.default_rng(0)
    if args.what == "train":
        model.compile(optimizer=keras.optimizers.AdamW(1e-4))
        data = rng.integers(0, SHAPE["vocabulary_size"], (8, 257)).astype("int32")

        def run():
            model.fit(data[:, :-1], data[:, 1:], batch_size=8, verbose=0)
    else:
        prompt = rng.integers(0, SHAPE["vocabulary_size"], (1, 32)).astype("int32")

        def run():
            model.generate(prompt, max_new_tokens=128)

    run()  # compile
    start = time.perf_counter()
    run()
    wall = time.perf_counter() - start
    with jax.profiler.trace(f"{work}/trace", create_perfetto_trace=True):
        run()
    kernels = kernel_times(f"{work}/trace")
    shapes = hlo_shapes(f"{work}/hlo")
    by_category = collections.Counter()
    for name, (_, micros) in kernels.items():
        by_category[category(name)] += micros
    total = sum(by_category.values())
    slowest = sorted(kernels.items(), key=lambda item: -item[1][1])[: args.top]
    print(
        json.dumps(
            {
                "cpu": cpu_name(),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "what": args.what,
                "wall_s_unprofiled": round(wall, 4),
                "kernel_ms_profiled": round(total / 1000, 1),
                "share": {k: round(v / total, 3) for k, v in by_category.most_common()},
                "launches": {
                    k: sum(n for name, (n, _) in kernels.items() if category(name) == k)
                    for k in by_category
                },
                "slowest": [
                    {
                        "kernel": name,
                        "shape": shapes.get(name, "?"),
                        "launches": n,
                        "ms": round(micros / 1000, 2),
                    }
                    for name, (n, micros) in slowest
                ],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
