"""One of two JAX processes on localhost, joined by `distribution.initialize`.

Usage: python distribution_worker_jax_multiprocess.py PROCESS_ID PORT OUT_DIR

Run twice by tests/test_distribution.py (process ids 0 and 1). Each process has
`LOCAL_DEVICES` CPU devices; `DataParallel` spans the devices of both. Each
process feeds only its own slice of every global batch: Keras' JAX trainer
assembles the global batch from the processes' slices
(`jax.make_array_from_process_local_data`), process 0's rows first. Process 0
writes the per-step losses and the final weights to OUT_DIR; the test trains
one device on the same global batches and compares.

The test imports this module for `CONFIG` and `global_batches`, so nothing
touches the environment or JAX at import time.
"""

import os
import sys

import numpy as np

# Dropout on: its hash-based masks are drawn over the global batch, so they
# must not depend on how the batch is split over processes.
CONFIG = dict(
    vocabulary_size=64,
    num_layers=1,
    num_heads=4,
    hidden_dim=32,
    max_sequence_length=12,
    dropout=0.1,
    seed=0,
)
STEPS, BATCH, PROCESSES, LOCAL_DEVICES = 10, 8, 2, 2
LEARNING_RATE = 1e-3


def global_batches() -> np.ndarray:
    """(STEPS * BATCH, 13) token ids: rows [s*BATCH, (s+1)*BATCH) are step s."""
    return np.random.default_rng(0).integers(0, 64, (STEPS * BATCH, 13)).astype("int32")


def local_rows(tokens: np.ndarray, process_id: int) -> np.ndarray:
    """This process' contiguous share of every global batch, in step order."""
    share = BATCH // PROCESSES
    steps = tokens.reshape(STEPS, BATCH, -1)
    return steps[:, process_id * share : (process_id + 1) * share].reshape(STEPS * share, -1)


def main(process_id: int, port: int, out_dir: str) -> None:
    # Before JAX creates its CPU client: the device count, and gloo for the
    # cross-process collectives (jax 0.10's default; set so it is explicit).
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={LOCAL_DEVICES}"
    )
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import keras

    import keras_gpt
    from keras_gpt import distribution

    distribution.initialize(f"localhost:{port}", num_processes=PROCESSES, process_id=process_id)
    devices = keras.distribution.list_devices()
    dist = distribution.configure(data_parallel=True)
    # The arrays below are this process' rows already; by default Keras expects
    # a global tf.data.Dataset to shard itself, and refuses NumPy arrays.
    dist.auto_shard_dataset = False

    class StepLosses(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.losses = []

        def on_train_batch_end(self, batch, logs=None):
            self.losses.append(float(logs["loss"]))

    model = keras_gpt.GPT(**CONFIG)
    model.compile(optimizer=keras.optimizers.AdamW(LEARNING_RATE))
    tokens = local_rows(global_batches(), process_id)
    steps = StepLosses()
    model.fit(
        tokens[:, :-1],
        tokens[:, 1:],
        batch_size=BATCH // PROCESSES,
        shuffle=False,
        verbose=0,
        callbacks=[steps],
    )

    if process_id == 0:
        # Replicated arrays: each process holds the whole value.
        weights = {
            f"{i}": np.asarray(keras.ops.convert_to_numpy(v.value))
            for i, v in enumerate(model.weights)
        }
        np.savez(os.path.join(out_dir, "weights.npz"), **weights)
        np.savez(
            os.path.join(out_dir, "run.npz"),
            losses=np.asarray(steps.losses),
            devices=len(devices),
            local_devices=len(jax.local_devices()),
            processes=jax.process_count(),
            batch_devices=len(dist.device_mesh.devices.ravel()),
            iterations=int(model.optimizer.iterations.numpy()),
        )
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
