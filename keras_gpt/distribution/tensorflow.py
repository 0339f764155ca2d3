"""TensorFlow: `tf.distribute.MirroredStrategy` / `MultiWorkerMirroredStrategy`."""

from __future__ import annotations

from typing import Any


def tf_strategy(devices: list[str] | None = None, multi_worker: bool = False) -> Any:
    """A `tf.distribute` strategy for data-parallel `fit` on TensorFlow.

    Build and compile the model inside `strategy.scope()`; `fit` then splits
    each global batch over the replicas. `GPT.compute_loss` divides its loss
    by the number of replicas, as Keras' own losses do, because the optimizer
    sums the replicas' gradients. Keras `fit` gives replica r the r-th
    contiguous slice of each global batch, and `PortableDropout` offsets its
    hash by the elements of the replicas before it, so dropout masks are one
    device's when the global batch size is divisible by the replicas.

    Args:
        devices: device names for `MirroredStrategy`, e.g.
            `["/gpu:0", "/gpu:1"]`; default: all GPUs (or the CPU).
        multi_worker: `MultiWorkerMirroredStrategy` across hosts, configured
            by the `TF_CONFIG` environment variable on each worker.

    Example:
    >>> strategy = tf_strategy()
    >>> with strategy.scope():
    ...     model = GPT(...); model.compile(optimizer="adamw")
    >>> model.fit(x, y, batch_size=64)        # global batch
    """
    import tensorflow as tf

    if multi_worker:
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.MirroredStrategy(devices)
