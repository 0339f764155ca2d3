"""Data-parallel replicas: which one this is, and a loss scaled for `tf.distribute`."""

from __future__ import annotations

import keras

from keras_gpt.backend.ops import Tensor


def replica_index() -> int | Tensor:
    """This replica's index in a data-parallel run whose engine splits the batch per replica.

    Layers that draw per-element values from the element index (`PortableDropout`)
    add `replica_index() * local_size` to it: the engines split each global batch
    into contiguous, equal slices in replica order (`ddp_fit` gives rank r the rows
    `[r * local, (r + 1) * local)`; `tf.distribute.MirroredStrategy` in Keras `fit`
    does the same, replica 0 first), so each replica then sees the same values as
    one device computing the whole global batch.

    - PyTorch: the `torch.distributed` rank once a process group is joined
      (`torch_init_process_group`, used with `ddp_fit`); 0 otherwise.
    - TensorFlow: `replica_id_in_sync_group` inside a replica context of a
      strategy with several replicas (a Python int when TensorFlow knows it
      statically, an int32 tensor otherwise); 0 otherwise.
    - JAX: 0. `keras.distribution` is SPMD: layers compute on the global batch.

    Example:
    >>> offset = replica_index() * local_size
    """
    backend = keras.backend.backend()
    if backend == "torch":
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
        return 0
    if backend == "tensorflow":
        import tensorflow as tf

        context = tf.distribute.get_replica_context()  # None in cross-replica context
        if context is None or context.num_replicas_in_sync == 1:
            return 0
        replica = context.replica_id_in_sync_group
        static = tf.get_static_value(replica)
        return replica if static is None else int(static)
    return 0


def replica_scaled(loss: Tensor) -> Tensor:
    """Divides a per-replica mean loss by the number of `tf.distribute` replicas.

    TensorFlow sums the replicas' gradients, so each replica's loss must be
    its share of the global mean. Keras' built-in losses do this; a custom
    `compute_loss` must too, otherwise every gradient is `num_replicas` times
    too large (SGD diverges; Adam, nearly scale invariant, drifts through its
    epsilon and gradient clipping) and the logged loss is `num_replicas` times
    too high. On JAX and PyTorch, and outside a strategy, returns `loss`.

    Args:
        loss: a scalar mean loss computed on this replica's batch.

    Example:
    >>> loss = replica_scaled(causal_lm_loss(labels, logits))
    """
    if keras.backend.backend() != "tensorflow":
        return loss
    import tensorflow as tf

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if replicas == 1:
        return loss
    return loss * (1.0 / replicas)
