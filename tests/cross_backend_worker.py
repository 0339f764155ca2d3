"""Runs one backend's half of the cross-backend parity tests.

Usage: KERAS_BACKEND=<backend> python tests/cross_backend_worker.py OUT_DIR [--MODE]
(MODE: load, recipe or resume; none: the fit parity run)

Builds a seeded tiny GPT, trains it with `fit`, and saves everything the
parity test compares into OUT_DIR/<backend>.npz, and the model as
OUT_DIR/<backend>.keras. With --load (run after every backend has trained),
loads each backend's `.keras` file instead and saves the logits into
OUT_DIR/<backend>_loaded.npz: saving on one backend, loading on another.

With --recipe, runs the pretraining recipe (`keras_gpt.training.pretrain`: the
recipe optimizer with warm-up, cosine decay, global clipnorm, weight-decay
exclusions and gradient accumulation, dropout, checkpoints) into
OUT_DIR/recipe_<backend>/ and saves its metrics rows and final checkpoint as
OUT_DIR/recipe_<backend>.npz. On JAX it also starts the same run in
OUT_DIR/handoff/ and stops it after its first round (and checkpoint). With
--resume, resumes OUT_DIR/handoff/ on this backend to the end and saves
OUT_DIR/resumed_<backend>.npz.
"""

import dataclasses
import glob
import os
import pathlib
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


# The speedrun recipe's block (every option beyond GPT-2 on, the output projections
# and head given small random weights so that gradients reach every weight at once).
MODERN = dict(
    position_embedding="rope",
    normalization="rmsnorm",
    norm_scale=True,
    qk_norm=True,
    activation="relu2",
    tie_embeddings=False,
    head_init_stddev=0.02,
    residual_init_stddev=0.01,
    logit_soft_cap=15.0,
    use_bias=False,
    value_embeddings="alternate",
)


def train(model: keras_gpt.GPT, data: np.ndarray, steps: int, optimizer=None) -> list[float]:
    optimizer = optimizer or keras.optimizers.AdamW(learning_rate=3e-3, weight_decay=0.1)
    model.compile(optimizer=optimizer)
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

    # The modern block with the speedrun optimizer (Muon on the matrices, AdamW on the
    # rest, warmup-stable-decay).
    from keras_gpt.training import speedrun_optimizer

    modern = keras_gpt.GPT(**CONFIG, **MODERN)
    results.update({f"modern_init_{k}": v for k, v in weights_of(modern).items()})
    results["modern_logits"] = keras.ops.convert_to_numpy(modern(probe))
    optimizer = speedrun_optimizer(
        STEPS, learning_rate=3e-3, matrix_learning_rate=0.005, weight_decay=0.1
    )
    results["modern_losses"] = np.array(train(modern, data, STEPS, optimizer))
    results.update({f"modern_final_{k}": v for k, v in weights_of(modern).items()})

    dropout_model = keras_gpt.GPT(**CONFIG, dropout=0.1)
    layer = dropout_model.embeddings_dropout
    results["dropout_mask"] = keras.ops.convert_to_numpy(
        layer(keras.ops.ones((4, 16, 32)), training=True)
    )
    results["dropout_losses"] = np.array(train(dropout_model, data, 10))

    np.savez(os.path.join(out_dir, f"{backend}.npz"), **results)


# A repetitive text a char model learns within a few steps.
RECIPE_TEXT = "".join(
    f"line {i % 7}: the quick brown fox jumps over the lazy dog.\n" for i in range(200)
)


def recipe_config(out_dir: str, name: str, **overrides):
    """A tiny pretraining run whose every optimizer feature is on.

    12 steps in rounds of 4, weights updated every 2 batches (gradient
    accumulation: 6 updates); the rate warms up linearly for 2 steps, then
    decays along a cosine to 0.1x; `clipnorm` 0.25
    is well below this run's gradient norms (0.86-1.9 a batch, measured on
    PyTorch without clipping), so clipping acts on every update; weight decay 0.1 with biases,
    LayerNorms and embeddings excluded; dropout 0.1.
    """
    from keras_gpt.training.config import PretrainConfig

    data = pathlib.Path(out_dir) / "recipe.txt"
    data.write_text(RECIPE_TEXT)
    config = PretrainConfig(
        data=str(data),
        tokenizer="char",
        out=str(pathlib.Path(out_dir) / name),
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        sequence_length=16,
        batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=12,
        eval_interval=4,
        eval_batches=2,
        learning_rate=1e-2,
        warmup_steps=2,
        weight_decay=0.1,
        clipnorm=0.25,
        dropout=0.1,
        peak_flops=1e9,
        verbose=0,
        sample_tokens=0,
    )
    return dataclasses.replace(config, **overrides)


def run_result(out: pathlib.Path) -> dict[str, np.ndarray]:
    """A recipe run's metrics rows and its final checkpoint (weights and optimizer state)."""
    from keras_gpt.training import latest_checkpoint, read_metrics

    rows = read_metrics(out)
    results = {
        key: np.array([row[key] for row in rows])
        for key in ("step", "train_loss", "val_loss", "learning_rate")
    }
    checkpoint = latest_checkpoint(out / "checkpoints")
    for kind in ("weights", "optimizer"):
        with np.load(checkpoint / f"{kind}.npz") as stored:
            results.update({f"{kind}:{name}": stored[name] for name in stored.files})
    return results


def recipe(out_dir: str) -> None:
    from keras_gpt.training.pretrain import pretrain

    backend = keras.backend.backend()
    config = recipe_config(out_dir, f"recipe_{backend}")
    pretrain(config)
    np.savez(os.path.join(out_dir, f"recipe_{backend}.npz"), **run_result(pathlib.Path(config.out)))
    if backend == "jax":
        # A time budget no round fits in: the run stops after its first round and
        # checkpoint (max_seconds is a setting a resumed run may change).
        pretrain(recipe_config(out_dir, "handoff", max_seconds=1e-9))


def resume(out_dir: str) -> None:
    from keras_gpt.training.pretrain import pretrain

    config = recipe_config(out_dir, "handoff")
    pretrain(config, resume=True)
    np.savez(
        os.path.join(out_dir, f"resumed_{keras.backend.backend()}.npz"),
        **run_result(pathlib.Path(config.out)),
    )


if __name__ == "__main__":
    if "--load" in sys.argv[2:]:
        load_all(sys.argv[1])
    elif "--recipe" in sys.argv[2:]:
        recipe(sys.argv[1])
    elif "--resume" in sys.argv[2:]:
        resume(sys.argv[1])
    else:
        main(sys.argv[1])
