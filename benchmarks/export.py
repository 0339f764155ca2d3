"""SavedModel export: size, load time, and `generate` tokens/s served vs. in Keras.

Usage: KERAS_BACKEND=<backend> python benchmarks/export.py [--layers 4 --hidden 256 ...]

Exports a seeded GPT (random weights: speed does not depend on them) with
`keras_gpt.export`, then, in a fresh process running plain TensorFlow (no
keras_gpt), times `tf.saved_model.load` and the `generate` signature (greedy,
first call = trace/compile, then the median of timed calls); the same
generation through `model.generate` on the current backend for comparison.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def serve(path: str, batch: int, prompt: int, new: int, repeats: int) -> dict:
    """Runs in the child: plain TensorFlow only."""
    import numpy as np
    import tensorflow as tf

    start = time.perf_counter()
    served = tf.saved_model.load(path)
    load_s = time.perf_counter() - start
    generate = served.signatures["generate"]
    ids = tf.constant(np.random.default_rng(0).integers(1, 100, (batch, prompt)), tf.int32)
    inputs = dict(
        token_ids=ids,
        padding_mask=tf.ones_like(ids),
        max_new_tokens=tf.constant(new),
        temperature=tf.constant(0.0),
        top_k=tf.constant(0),
        top_p=tf.constant(1.0),
        seed=tf.constant(0),
    )
    start = time.perf_counter()
    out = generate(**inputs)
    first_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = generate(**inputs)
        out["token_ids"].numpy()
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    return dict(
        load_s=load_s,
        first_call_s=first_s,
        generate_s=median,
        tokens_per_s=batch * new / median,
        ids=out["token_ids"].numpy().tolist(),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--vocabulary", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.serve:
        print(json.dumps(serve(args.serve, args.batch, args.prompt, args.new, args.repeats)))
        return

    import keras
    import numpy as np

    import keras_gpt

    model = keras_gpt.GPT(
        vocabulary_size=args.vocabulary,
        num_layers=args.layers,
        num_heads=args.heads,
        hidden_dim=args.hidden,
        max_sequence_length=args.context,
        seed=0,
    )
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "gpt", "1")
        start = time.perf_counter()
        keras_gpt.export(model, path, max_new_tokens=args.new)
        export_s = time.perf_counter() - start
        size = sum(
            os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files
        )
        env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--serve",
                path,
                "--batch",
                str(args.batch),
                "--prompt",
                str(args.prompt),
                "--new",
                str(args.new),
                "--repeats",
                str(args.repeats),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        served = json.loads(proc.stdout.strip().splitlines()[-1])

    prompts = np.random.default_rng(0).integers(1, 100, (args.batch, args.prompt))
    start = time.perf_counter()
    ids = model.generate(prompts, max_new_tokens=args.new)
    keras_first = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        model.generate(prompts, max_new_tokens=args.new)
        times.append(time.perf_counter() - start)
    keras_s = float(np.median(times))
    print(
        json.dumps(
            dict(
                backend=keras.backend.backend(),
                config=dict(
                    vocabulary=args.vocabulary,
                    layers=args.layers,
                    heads=args.heads,
                    hidden=args.hidden,
                    context=args.context,
                    parameters=int(model.count_params()),
                ),
                request=dict(batch=args.batch, prompt=args.prompt, new_tokens=args.new),
                export_s=round(export_s, 2),
                saved_model_bytes=size,
                weights_bytes=int(model.count_params()) * 4,
                load_s=round(served["load_s"], 3),
                served_first_call_s=round(served["first_call_s"], 3),
                served_tokens_per_s=round(served["tokens_per_s"], 1),
                keras_first_call_s=round(keras_first, 3),
                keras_tokens_per_s=round(args.batch * args.new / keras_s, 1),
                same_greedy_ids=bool((np.asarray(served["ids"]) == ids).all()),
            ),
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
