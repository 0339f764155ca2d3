"""One backend's half of the cross-backend generation test.

Usage: KERAS_BACKEND=<backend> python tests/generation_worker.py OUT_DIR

Generates with a seeded tiny GPT (bit-identical weights on every backend),
greedy and sampled, ragged prompts and stop tokens, and saves the token ids to
OUT_DIR/<backend>.npz for tests/test_generation.py to compare.
"""

import sys

from helpers import save_worker_result

import keras_gpt

CONFIG = dict(
    vocabulary_size=61, num_layers=2, num_heads=2, hidden_dim=32, max_sequence_length=64, seed=1234
)
PROMPTS = [[5, 9, 2, 33, 17, 8], [40, 1], [12, 12, 60, 3]]


def main(out_dir: str) -> None:
    model = keras_gpt.GPT(**CONFIG)
    results = {
        "greedy": model.generate(PROMPTS, max_new_tokens=24, stop_token_ids=[7, 30]),
        "top_k": model.generate(PROMPTS, 24, sampler="top_k", top_k=10, seed=5),
        "top_p": model.generate(PROMPTS, 24, sampler="top_p", top_p=0.9, temperature=0.7, seed=6),
    }
    save_worker_result(out_dir, results)


if __name__ == "__main__":
    main(sys.argv[1])
