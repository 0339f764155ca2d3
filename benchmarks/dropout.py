"""What `PortableDropout` costs on the current backend. Prints JSON.

Its masks come from an integer hash in `keras.ops` (the same masks on every
backend). XLA fuses the hash into one loop; eager PyTorch and TensorFlow run
each integer op over the whole tensor. This times (a) drawing one mask of the
size of a baby-GPT attention-probability tensor, and (b) one training step of
the baby-GPT shape (6 layers, 6 heads, 384 wide, context 256) with dropout 0
and with dropout 0.2.

    KERAS_BACKEND=torch python benchmarks/dropout.py
    KERAS_BACKEND=jax python benchmarks/dropout.py --batch 16 --steps 3
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def seconds(fn, repeats: int) -> float:
    """Mean seconds of `fn()` over `repeats` calls, after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--repeats", type=int, default=3, help="timed mask draws")
    args = parser.parse_args()

    import keras

    import keras_gpt
    from keras_gpt.model.layers.dropout import hash_ints

    heads, context = 6, 256
    shape = (args.batch, heads, context, context)
    counter = keras.ops.convert_to_tensor(1, "int32")
    mask_s = seconds(
        lambda: keras.ops.convert_to_numpy(hash_ints(shape, 0, counter)[0, 0, 0, 0]), args.repeats
    )

    tokens = np.random.default_rng(0).integers(0, 65, (args.batch, context + 1)).astype("int32")
    step_s = {}
    for rate in (0.0, 0.2):
        model = keras_gpt.GPT(
            vocabulary_size=65,
            num_layers=6,
            num_heads=heads,
            hidden_dim=384,
            max_sequence_length=context,
            dropout=rate,
            seed=0,
        )
        model.compile(optimizer=keras.optimizers.AdamW(1e-3))
        step_s[str(rate)] = round(
            seconds(lambda: model.train_on_batch(tokens[:, :-1], tokens[:, 1:]), args.steps), 3
        )

    print(
        json.dumps(
            {
                "benchmark": "PortableDropout cost",
                "backend": keras.backend.backend(),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "mask_shape": list(shape),
                "mask_seconds": round(mask_s, 3),
                "batch": args.batch,
                "train_step_seconds_by_dropout": step_s,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
