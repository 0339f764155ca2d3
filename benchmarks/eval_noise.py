"""How noisy is a validation loss estimated from a few random batches? Prints JSON.

nanoGPT reports its Shakespeare result from `estimate_loss`: the mean loss of
`eval_iters` (20 in its CPU command) random batches of 12 windows. Our recipe
evaluates the whole validation split. For each trained preset given, this script
draws many random validation windows, as nanoGPT's `get_batch` does, and reports
the mean loss, the standard error of one nanoGPT-style estimate
(`batches * batch_size` windows) and the range of several such estimates.

    keras-gpt pretrain --config recipes/configs/shakespeare_char.toml --seed 1 --out runs/s1
    python benchmarks/eval_noise.py runs/s1/best runs/s2/best

The validation text is the last 10 % of the corpus (as the recipe splits a
character-level corpus); `--text` names the corpus file.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def window_losses(model, ids: np.ndarray, starts: np.ndarray, context: int) -> np.ndarray:
    """Mean next-token loss of each window ids[s : s + context] (targets shifted by one)."""
    import keras

    x = np.stack([ids[s : s + context] for s in starts])
    y = np.stack([ids[s + 1 : s + context + 1] for s in starts])
    logits = keras.ops.convert_to_numpy(model.predict(x, batch_size=240, verbose=0))
    logits = logits - logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, y[..., None], -1)[..., 0].mean(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="+", help="preset directories (a run's best/)")
    parser.add_argument("--text", default="../shared/data/tinyshakespeare.txt")
    parser.add_argument("--validation-fraction", type=float, default=0.1)
    parser.add_argument("--batches", type=int, default=20, help="nanoGPT's eval_iters")
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument(
        "--estimates", type=int, default=10, help="how many nanoGPT-style estimates to draw"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import keras_gpt
    from keras_gpt.presets import load_tokenizer

    text = open(args.text, encoding="utf-8").read()
    validation = text[int(len(text) * (1 - args.validation_fraction)) :]
    per_estimate = args.batches * args.batch_size
    results = {}
    for preset in args.presets:
        model = keras_gpt.GPT.from_preset(preset)
        ids = np.array(load_tokenizer(preset).encode(validation), "int32")
        context = model.max_sequence_length
        starts = np.random.default_rng(args.seed).integers(
            0, len(ids) - context, args.estimates * per_estimate
        )
        losses = window_losses(model, ids, starts, context)
        estimates = losses.reshape(args.estimates, per_estimate).mean(-1)
        results[preset] = {
            "mean_loss": round(float(losses.mean()), 5),
            "standard_error_of_one_estimate": round(
                float(losses.std(ddof=1) / np.sqrt(per_estimate)), 5
            ),
            "estimates_min": round(float(estimates.min()), 5),
            "estimates_max": round(float(estimates.max()), 5),
        }
    print(
        json.dumps(
            {
                "benchmark": "validation-loss estimate noise",
                "windows_per_estimate": per_estimate,
                "context": context,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
