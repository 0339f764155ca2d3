"""Throughput of JAX data/model parallel training versus the number of devices.

One subprocess per (devices, mode): on CPU it asks XLA for that many virtual
devices (`--xla_force_host_platform_device_count`), which all share the same
cores: the numbers show that the sharded program runs and what it costs in
overhead, NOT a speed-up. On a machine with several GPUs, pass `--gpu` to use
the real devices (1, 2, ... up to all of them). Prints one JSON object.

    python benchmarks/distribution.py                       # 1, 2, 4, 8 virtual CPU devices
    python benchmarks/distribution.py --devices 1 2 --steps 10
    python benchmarks/distribution.py --gpu                  # real GPUs

Models (`--shape`): tiny (vocabulary 4096, 2 layers, 4 heads, hidden 128,
context 128; the default, for CPUs) or bench-small (8192, 4, 4, 256, 256; for
GPUs). AdamW, float32, 8 rows per device (weak scaling).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SHAPES = {
    "tiny": dict(
        vocabulary_size=4096, num_layers=2, num_heads=4, hidden_dim=128, max_sequence_length=128
    ),
    "bench-small": dict(
        vocabulary_size=8192, num_layers=4, num_heads=4, hidden_dim=256, max_sequence_length=256
    ),
}
PER_DEVICE_BATCH = 8


def child(devices: int, mode: str, steps: int, shape: dict) -> dict:
    import jax
    import keras
    import numpy as np

    import keras_gpt
    from keras_gpt import distribution

    available = keras.distribution.list_devices()[:devices]
    if mode == "data":
        distribution.configure(data_parallel=devices > 1, devices=available)
    else:
        distribution.configure(model_parallel=2, devices=available)
    batch = PER_DEVICE_BATCH * devices
    seq = shape["max_sequence_length"]
    tokens = (
        np.random.default_rng(0)
        .integers(0, shape["vocabulary_size"], (batch * (steps + 2), seq + 1))
        .astype("int32")
    )
    model = keras_gpt.GPT(**shape, seed=0)
    model.compile(optimizer=keras.optimizers.AdamW(1e-4))
    # Two warm-up steps compile the train function; then time `steps` steps.
    model.fit(tokens[: 2 * batch, :-1], tokens[: 2 * batch, 1:], batch_size=batch, verbose=0)
    start = time.perf_counter()
    model.fit(tokens[2 * batch :, :-1], tokens[2 * batch :, 1:], batch_size=batch, verbose=0)
    seconds = time.perf_counter() - start
    return {
        "devices": devices,
        "mode": mode,
        "global_batch": batch,
        "platform": jax.devices()[0].platform,
        "tokens_per_second": round(batch * seq * steps / seconds, 1),
        "seconds_per_step": round(seconds / steps, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--modes", nargs="+", default=["data", "model"], choices=["data", "model"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    parser.add_argument("--gpu", action="store_true", help="use real GPUs, not virtual CPUs")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        devices, mode, steps = int(args.child[0]), args.child[1], int(args.child[2])
        print(json.dumps(child(devices, mode, steps, SHAPES[args.shape])))
        return
    runs = []
    for devices in args.devices:
        for mode in args.modes:
            if mode == "model" and devices < 2:
                continue
            env = dict(os.environ, KERAS_BACKEND="jax")
            if not args.gpu:
                env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
                env["JAX_PLATFORMS"] = "cpu"
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    str(devices),
                    mode,
                    str(args.steps),
                    "--shape",
                    args.shape,
                ],
                capture_output=True,
                text=True,
                env=env,
            )
            if done.returncode:
                runs.append({"devices": devices, "mode": mode, "error": done.stderr[-500:]})
            else:
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(
        json.dumps(
            {
                "benchmark": "distribution",
                "shape": args.shape,
                "model": SHAPES[args.shape],
                "per_device_batch": PER_DEVICE_BATCH,
                "virtual_devices": not args.gpu,
                "runs": runs,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
