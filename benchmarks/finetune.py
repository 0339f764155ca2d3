"""LoRA vs full fine-tuning: trainable parameters, step time and peak memory.

One subprocess per mode (peak RSS is per process). GPT-2-small shape by
default (124M parameters); prints one JSON object.

    KERAS_BACKEND=jax python benchmarks/finetune.py --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SHAPE = dict(
    vocabulary_size=50257, num_layers=12, num_heads=12, hidden_dim=768, max_sequence_length=1024
)


def worker(mode: str, args) -> dict:
    import keras
    import numpy as np

    import keras_gpt

    model = keras_gpt.GPT(**SHAPE, seed=0)
    if mode == "lora":
        model.enable_lora(rank=args.rank)
    model.compile(optimizer=keras.optimizers.AdamW(1e-4))
    rng = np.random.default_rng(0)
    x = rng.integers(0, SHAPE["vocabulary_size"], (args.batch, args.length + 1)).astype("int32")
    times = []
    for _ in range(args.steps + 1):
        start = time.perf_counter()
        model.train_on_batch(x[:, :-1], x[:, 1:])
        times.append(time.perf_counter() - start)
    trainable = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    return {
        "trainable_parameters": trainable,
        "total_parameters": model.count_params(),
        "median_step_s": statistics.median(times[1:]),
        "first_step_s": times[0],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--worker", choices=["full", "lora"])
    args = p.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args)))
        return
    import keras

    result = {
        "benchmark": "finetune GPT-2 small shape",
        "date": time.strftime("%Y-%m-%d"),
        "backend": keras.backend.backend(),
        "batch": args.batch,
        "length": args.length,
        "lora_rank": args.rank,
    }
    for mode in ("full", "lora"):
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            mode,
            "--steps",
            str(args.steps),
            "--batch",
            str(args.batch),
            "--length",
            str(args.length),
            "--rank",
            str(args.rank),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
        lines = [s for s in proc.stdout.splitlines() if s.startswith("RESULT ")]
        result[mode] = json.loads(lines[-1][7:]) if lines else {"error": proc.stderr[-1500:]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
