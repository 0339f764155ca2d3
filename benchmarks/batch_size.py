"""Training throughput of the speedrun recipe's model against batch size, per backend.

On a CPU a small model's step is partly fixed cost (Python, Muon's Newton–Schulz
iterations, which cost per step and not per token), so tokens/s grows with the batch;
the speedrun recipe picks its batch for time to a target loss, which needs both this
and the loss against step (docs/guides/training-fast.md).

Per backend a fresh process builds the recipe's model and optimizer
(`recipes/configs/shakespeare_char_speedrun.toml`, 65-token vocabulary, context 64),
compiles one train step per batch size, then times `--steps` steps of each batch size
in turn, `--rounds` times, the order reversed every other round; the median step time
of each batch size is reported. Prints JSON.

    python benchmarks/batch_size.py --threads 1
    python benchmarks/batch_size.py --backends torch --sizes 24 32 48
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from machine import machine_report  # noqa: E402

CONFIG = HERE.parent / "recipes" / "configs" / "shakespeare_char_speedrun.toml"


def child(args) -> dict:
    import importlib

    import numpy as np

    from keras_gpt.model.metrics import Perplexity

    # The module: `keras_gpt.training.pretrain` is also the function's name there.
    pretrain = importlib.import_module("keras_gpt.training.pretrain")

    config = pretrain.load_config(str(CONFIG), {"threads": args.threads})
    pretrain.set_threads(config.threads)
    model = pretrain.build_model(config, vocabulary_size=65)
    optimizer = pretrain.build_optimizer(config)
    jit = pretrain.jit_compile(config)
    model.compile(optimizer=optimizer, metrics=[Perplexity()], jit_compile=jit)
    optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)

    def batch(size: int):
        x = rng.integers(0, 65, (size, config.sequence_length + 1)).astype("int32")
        return x[:, :-1], x[:, 1:]

    batches = {size: batch(size) for size in args.sizes}
    for size in args.sizes:  # compile (JAX, TensorFlow) and warm up
        for _ in range(3):
            model.train_on_batch(*batches[size])
    times = {size: [] for size in args.sizes}
    for r in range(args.rounds):
        for size in args.sizes if r % 2 == 0 else reversed(args.sizes):
            start = time.perf_counter()
            for _ in range(args.steps):
                model.train_on_batch(*batches[size])
            times[size].append((time.perf_counter() - start) / args.steps)
    result = {}
    for size in args.sizes:
        step = statistics.median(times[size])
        result[str(size)] = {
            "step_ms": round(step * 1000, 2),
            "tokens_per_second": round(size * config.sequence_length / step),
            "rounds_ms": [round(t * 1000, 2) for t in times[size]],
        }
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", nargs="+", default=["torch", "jax", "tensorflow"])
    p.add_argument("--sizes", nargs="+", type=int, default=[12, 24, 32, 48])
    p.add_argument("--steps", type=int, default=15, help="steps a timing")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (0: the backend's default)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    report = {**machine_report("training step time against batch size (speedrun model)")}
    report.update(threads=args.threads, steps=args.steps, rounds=args.rounds, backends={})
    for backend in args.backends:
        cmd = [sys.executable, __file__, "--child", "--threads", str(args.threads)]
        cmd += ["--steps", str(args.steps), "--rounds", str(args.rounds), "--sizes"]
        cmd += [str(s) for s in args.sizes]
        env = {**os.environ, "KERAS_BACKEND": backend}
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not lines:
            report["backends"][backend] = {"error": f"exit {proc.returncode}"}
            continue
        report["backends"][backend] = json.loads(lines[-1][len("RESULT ") :])
        print(json.dumps({backend: report["backends"][backend]}), file=sys.stderr, flush=True)
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
