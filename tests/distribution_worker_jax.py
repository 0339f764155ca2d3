"""JAX on 8 virtual CPU devices: one device vs DataParallel vs ModelParallel.

Run by tests/test_distribution.py in a fresh process (the device count is fixed
when JAX starts). Prints one JSON object with the measured differences.
"""

import json
import os
import sys
import tempfile

os.environ["KERAS_BACKEND"] = "jax"
# Added to the flags the test run passes down (tests/conftest.py's compile settings).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_gpt  # noqa: E402
from keras_gpt import distribution  # noqa: E402

# Dropout on: its hash-based masks are drawn over the global batch, so they
# must not depend on how the batch is split.
CONFIG = dict(
    vocabulary_size=64,
    num_layers=1,
    num_heads=4,
    hidden_dim=32,
    max_sequence_length=12,
    dropout=0.1,
    seed=0,
)
STEPS, BATCH = 20, 16
TOKENS = np.random.default_rng(0).integers(0, 64, (STEPS * BATCH, 13)).astype("int32")


class StepLosses(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))


def train(dist):
    with dist.scope() if dist is not None else _nullscope():
        model = keras_gpt.GPT(**CONFIG)
        model.compile(optimizer=keras.optimizers.AdamW(1e-3))
        steps = StepLosses()
        model.fit(
            TOKENS[:, :-1],
            TOKENS[:, 1:],
            batch_size=BATCH,
            shuffle=False,
            verbose=0,
            callbacks=[steps],
        )
    return model, steps.losses


class _nullscope:
    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def weights(model):
    # In creation order: paths differ between models ("gpt", "gpt_1", ...).
    return [np.asarray(keras.ops.convert_to_numpy(v.value)) for v in model.weights]


def max_diff(a, b):
    assert len(a) == len(b)
    return max(float(np.abs(x.astype("float64") - y).max()) for x, y in zip(a, b))


def main():
    devices = keras.distribution.list_devices()
    result = {"devices": len(devices)}
    single, single_losses = train(None)

    data_parallel = keras.distribution.DataParallel(devices=devices)
    dp_model, dp_losses = train(data_parallel)
    result["dp_loss_diff"] = float(np.abs(np.subtract(dp_losses, single_losses)).max())
    result["dp_weight_diff"] = max_diff(weights(dp_model), weights(single))

    mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "model"), devices)
    model_parallel = keras.distribution.ModelParallel(
        layout_map=keras_gpt.GPT.get_layout_map(mesh), batch_dim_name="batch"
    )
    mp_model, mp_losses = train(model_parallel)
    result["mp_loss_diff"] = float(np.abs(np.subtract(mp_losses, single_losses)).max())
    result["mp_weight_diff"] = max_diff(weights(mp_model), weights(single))
    result["steps"] = len(mp_losses)
    result["mp_layouts"] = {k: list(v) for k, v in distribution.variable_layouts(mp_model).items()}
    result["mp_shard_shapes"] = {
        v.path: list(v.value.addressable_shards[0].data.shape) for v in mp_model.weights
    }

    with tempfile.TemporaryDirectory() as tmp:
        # Sharded checkpoint → one device.
        mp_model.save(os.path.join(tmp, "mp.keras"))
        loaded = keras.saving.load_model(os.path.join(tmp, "mp.keras"))
        result["mp_to_single_diff"] = max_diff(weights(loaded), weights(mp_model))
        result["mp_to_single_iterations"] = int(loaded.optimizer.iterations.numpy())
        result["mp_to_single_device_count"] = len(loaded.weights[0].value.devices())
        # One-device checkpoint → sharded model, then one more epoch on both.
        single.save(os.path.join(tmp, "single.keras"))
        with model_parallel.scope():
            resumed = keras.saving.load_model(os.path.join(tmp, "single.keras"))
            result["single_to_mp_layouts"] = {
                k: list(v) for k, v in distribution.variable_layouts(resumed).items()
            }
            result["single_to_mp_diff"] = max_diff(weights(resumed), weights(single))
            resumed.fit(
                TOKENS[:64, :-1], TOKENS[:64, 1:], batch_size=BATCH, shuffle=False, verbose=0
            )
        single.fit(TOKENS[:64, :-1], TOKENS[:64, 1:], batch_size=BATCH, shuffle=False, verbose=0)
        result["resumed_weight_diff"] = max_diff(weights(resumed), weights(single))

    # `configure`, the one-call set-up the pretraining recipe uses.
    dist = distribution.configure(model_parallel=2)
    result["configure_mesh"] = list(dist.device_mesh.shape)
    result["configure_axes"] = list(dist.device_mesh.axis_names)
    keras.distribution.set_distribution(None)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
