"""TensorFlow: one device vs `MirroredStrategy` over 2 logical CPU devices.

Run by tests/test_distribution.py in a fresh process (logical devices must be
set before TensorFlow starts). Prints one JSON object with the differences.

Two things made Keras `fit` under MirroredStrategy drift from one device with
Adam; both are fixed in keras_gpt and checked here:
1. `GPT.compute_loss` returned each replica's mean while the optimizer sums
   the replicas' gradients (now scaled by 1/replicas, as Keras' own losses are);
2. the position-embedding gather gave `tf.IndexedSlices` gradients, which the
   all-reduce concatenates (rows repeated once per replica) and Keras' Adam then
   squares slice by slice (now dense; `keras_gpt.backend.dense_gradient`). The
   "untied" case covers the same bug on token embeddings.

Both run with dropout 0.1: each replica offsets its dropout hash by the
elements of the replicas before it, so together they draw one device's masks
(Keras `fit` gives replica r the r-th contiguous slice of each global batch).
"""

import json
import os
import sys
import tempfile

os.environ["KERAS_BACKEND"] = "tensorflow"

import tensorflow as tf  # noqa: E402

REPLICAS = 2
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration()] * REPLICAS,
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_gpt  # noqa: E402
from keras_gpt import distribution  # noqa: E402

CONFIG = dict(
    vocabulary_size=64,
    num_layers=1,
    num_heads=2,
    hidden_dim=16,
    max_sequence_length=12,
    dropout=0.1,
    seed=0,
)
STEPS, BATCH = 20, 8
TOKENS = np.random.default_rng(0).integers(0, 64, (STEPS * BATCH, 13)).astype("int32")


class StepLosses(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))


def train(strategy, rows=slice(None), model=None, **config):
    with strategy.scope():
        if model is None:
            model = keras_gpt.GPT(**{**CONFIG, **config})
            model.compile(optimizer=keras.optimizers.Adam(1e-2))
        steps = StepLosses()
    model.fit(
        TOKENS[rows, :-1],
        TOKENS[rows, 1:],
        batch_size=BATCH,
        shuffle=False,
        verbose=0,
        callbacks=[steps],
    )
    return model, steps.losses


def max_diff(a, b):
    return max(
        float(np.abs(np.asarray(x, "float64") - y).max())
        for x, y in zip(a.get_weights(), b.get_weights())
    )


def main():
    one = tf.distribute.get_strategy()
    mirrored = distribution.tf_strategy([f"/cpu:{i}" for i in range(REPLICAS)])
    result = {"replicas": mirrored.num_replicas_in_sync}
    models = {}
    for case, config in (("tied", {}), ("untied", {"tie_embeddings": False})):
        single, single_losses = train(one, **config)
        multi, multi_losses = train(mirrored, **config)
        models[case] = (single, multi)
        result[case] = {
            "loss_diff": float(np.abs(np.subtract(single_losses, multi_losses)).max()),
            "weight_diff": max_diff(single, multi),
            "mirrored_first_loss": multi_losses[0],
            # Counted, not the constant: batches logged and optimizer steps taken.
            "steps": [
                len(single_losses),
                len(multi_losses),
                int(single.optimizer.iterations.numpy()),
                int(multi.optimizer.iterations.numpy()),
            ],
        }

    single, multi = models["tied"]
    with tempfile.TemporaryDirectory() as tmp:
        multi.save(os.path.join(tmp, "mirrored.keras"))
        loaded = keras.saving.load_model(os.path.join(tmp, "mirrored.keras"))
        result["mirrored_to_single_diff"] = max_diff(loaded, multi)
        single.save(os.path.join(tmp, "single.keras"))
        with mirrored.scope():
            resumed = keras.saving.load_model(os.path.join(tmp, "single.keras"))
        result["single_to_mirrored_diff"] = max_diff(resumed, single)
        train(mirrored, slice(0, 4 * BATCH), model=resumed)
        train(one, slice(0, 4 * BATCH), model=single)
        result["resumed_weight_diff"] = max_diff(resumed, single)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
