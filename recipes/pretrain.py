"""Pretrain a small byte-level GPT and print a sample.

With no arguments this is the README's demo: a 4-layer GPT trained for about
three minutes on Python's own standard-library source (no download), on
whichever backend KERAS_BACKEND names.

    KERAS_BACKEND=jax python recipes/pretrain.py --max-seconds 60
    python recipes/pretrain.py --data my_corpus.txt --out runs/mine
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

import keras
import numpy as np

import keras_gpt
from keras_gpt.data import RandomWindows, stdlib_corpus
from keras_gpt.tokenizers import ByteTokenizer


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="a UTF-8 text file (default: Python's stdlib source)")
    p.add_argument("--out", default="runs/demo", help="output directory")
    p.add_argument("--max-seconds", type=float, default=180.0, help="training time budget")
    p.add_argument("--max-steps", type=int, default=5000)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--hidden-dim", type=int, default=128)
    p.add_argument("--sequence-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument("--prompt", default="def ")
    p.add_argument("--sample-tokens", type=int, default=200)
    return p.parse_args(argv)


class TimeBudget(keras.callbacks.Callback):
    """Stops training once `seconds` have passed."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if time.perf_counter() - self.start > self.seconds:
            self.model.stop_training = True


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"backend: {keras.backend.backend()}  config: {json.dumps(vars(args))}")

    text = pathlib.Path(args.data).read_text(encoding="utf-8") if args.data else stdlib_corpus()
    tokenizer = ByteTokenizer()
    tokens = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    split = int(0.9 * len(tokens))
    print(f"corpus: {len(tokens):,} bytes ({'stdlib source' if not args.data else args.data})")

    train = RandomWindows(tokens[:split], args.sequence_length, args.batch_size,
                          steps=args.max_steps, seed=args.seed)
    val = RandomWindows(tokens[split:], args.sequence_length, args.batch_size,
                        steps=args.eval_batches, seed=args.seed + 1)

    model = keras_gpt.GPT(
        vocabulary_size=tokenizer.vocabulary_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        hidden_dim=args.hidden_dim,
        max_sequence_length=args.sequence_length,
        dropout=args.dropout,
        seed=args.seed,
    )
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=args.max_steps, alpha=0.1,
        warmup_target=args.learning_rate, warmup_steps=args.warmup_steps,
    )
    optimizer = keras.optimizers.AdamW(schedule, beta_2=0.95, weight_decay=0.1,
                                       global_clipnorm=1.0)
    # Decay weight matrices only, as GPT-2 and nanoGPT do.
    optimizer.exclude_from_weight_decay(
        var_names=["bias", "gamma", "beta", "token_embeddings", "position_embeddings"]
    )
    model.compile(optimizer=optimizer, metrics=[keras_gpt.Perplexity()])
    print(f"model: {model.count_params():,} parameters")

    start = time.perf_counter()
    model.fit(train, epochs=1, callbacks=[TimeBudget(args.max_seconds)], verbose=2)
    seconds = time.perf_counter() - start
    steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    val_loss, val_ppl = model.evaluate(val, verbose=0)
    tokens_per_second = steps * args.batch_size * args.sequence_length / seconds
    print(f"trained {steps} steps in {seconds:.0f} s ({tokens_per_second:,.0f} tokens/s); "
          f"validation loss {val_loss:.3f}, perplexity {val_ppl:.2f}")
    model.save(out / "model.keras")

    prompt = tokenizer.encode(args.prompt)
    room = args.sequence_length - len(prompt)
    ids = model.generate(np.array([prompt]), max_new_tokens=min(args.sample_tokens, room),
                         sampler="top_k", top_k=20, temperature=0.8, seed=args.seed)
    sample = tokenizer.decode(ids[0])
    print("sample:\n" + sample)
    summary = {"steps": steps, "val_loss": float(val_loss), "tokens_per_second": tokens_per_second,
               "sample": sample}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
