"""Runs one backend's half of the cross-backend parity tests.

Usage: KERAS_BACKEND=<backend> python tests/cross_backend_worker.py OUT_DIR [--load]

Builds a seeded tiny GPT, trains it with `fit`, and saves everything the
parity test compares into OUT_DIR/<backend>.npz, and the model as
OUT_DIR/<backend>.keras. With --load (run after every backend has trained),
loads each backend's `.keras` file instead and saves the logits into
OUT_DIR/<backend>_loaded.npz: saving on one backend, loading on another.
"""

import glob
import os
import sys

import keras
import numpy as np

import keras_gpt

CONFIG = dict(
    vocabulary_size=61, num_layers=2, num_heads=2, hidden_dim=32, max_sequence_length=16, seed=1234
)
STEPS, BATCH = 50, 4


def token_stream(steps: int, batch: int, length: int, vocab: int) -> np.ndarray:
    """Learnable, seeded data: noisy arithmetic sequences (next = prev + stride)."""
    rng = np.random.default_rng(7)
    start = rng.integers(0, vocab, (steps * batch, 1))
    stride = rng.integers(1, 4, (steps * batch, 1))
    seq = (start + stride * np.arange(length + 1)) % vocab
    noise = rng.random(seq.shape) < 0.1
    seq[noise] = rng.integers(0, vocab, noise.sum())
    return seq.astype("int32")


def train(model: keras_gpt.GPT, data: np.ndarray, steps: int) -> list[float]:
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=3e-3, weight_decay=0.1))
    # One step per epoch (the iterator carries on across epochs) so that
    # history["loss"] holds each step's loss, not a running mean.
    history = model.fit(
        data[:, :-1],
        data[:, 1:],
        batch_size=BATCH,
        epochs=steps,
        steps_per_epoch=1,
        shuffle=False,
        verbose=0,
    )
    return history.history["loss"]


def weights_of(model) -> dict[str, np.ndarray]:
    return {f"w:{v.path}": keras.ops.convert_to_numpy(v) for v in model.weights}


def load_all(out_dir: str) -> None:
    """Logits of every backend's saved model, loaded on this backend."""
    backend = keras.backend.backend()
    data = token_stream(STEPS, BATCH, CONFIG["max_sequence_length"], CONFIG["vocabulary_size"])
    results = {}
    for path in sorted(glob.glob(os.path.join(out_dir, "*.keras"))):
        source = os.path.basename(path).split(".")[0]
        loaded = keras.saving.load_model(path)
        results[f"loaded_logits:{source}"] = keras.ops.convert_to_numpy(loaded(data[:2, :-1]))
    np.savez(os.path.join(out_dir, f"{backend}_loaded.npz"), **results)


def main(out_dir: str) -> None:
    backend = keras.backend.backend()
    data = token_stream(STEPS, BATCH, CONFIG["max_sequence_length"], CONFIG["vocabulary_size"])
    probe = data[:2, :-1]
    results = {}

    model = keras_gpt.GPT(**CONFIG)
    results.update({f"init_{k}": v for k, v in weights_of(model).items()})
    results["logits"] = keras.ops.convert_to_numpy(model(probe))
    results["losses"] = np.array(train(model, data, STEPS))
    results.update({f"final_{k}": v for k, v in weights_of(model).items()})
    results["trained_logits"] = keras.ops.convert_to_numpy(model(probe))
    model.save(os.path.join(out_dir, f"{backend}.keras"))

    dropout_model = keras_gpt.GPT(**CONFIG, dropout=0.1)
    layer = dropout_model.embeddings_dropout
    results["dropout_mask"] = keras.ops.convert_to_numpy(
        layer(keras.ops.ones((4, 16, 32)), training=True)
    )
    results["dropout_losses"] = np.array(train(dropout_model, data, 10))

    np.savez(os.path.join(out_dir, f"{backend}.npz"), **results)


if __name__ == "__main__":
    if "--load" in sys.argv[2:]:
        load_all(sys.argv[1])
    else:
        main(sys.argv[1])
