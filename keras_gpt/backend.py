"""The few questions whose answer depends on the Keras backend.

Everything else in keras_gpt is written with `keras.ops` only; code that must
ask the backend directly lives here, in small functions.
"""

from __future__ import annotations

from typing import Any

import keras


def is_concrete(x) -> bool:
    """True when `x` holds values now (eager), False while tracing or building.

    Value checks (e.g. token ids in range) can only run on concrete tensors.
    """
    if keras.backend.is_keras_tensor(x):
        return False
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly() and not tf.is_symbolic_tensor(x)
    if backend == "jax":
        import jax

        return not isinstance(x, jax.core.Tracer)
    if backend == "torch":
        import torch

        return not torch.compiler.is_compiling()
    return True


def has_accelerator() -> bool:
    """True when the backend runs on a GPU or TPU."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend() != "cpu"
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_logical_devices("GPU"))
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def dense_gradient(table: Tensor) -> Tensor:
    """`table` as a tensor whose TensorFlow gradient is dense (a no-op elsewhere).

    A gather (`ops.take`) gives TensorFlow a `tf.IndexedSlices` gradient with one
    slice per looked-up row, repeats included, and Keras' TensorFlow optimizers
    update Adam's second moment slice by slice: a row looked up twice (the same
    token twice in a batch, or the replicas' slices joined by a `tf.distribute`
    all-reduce) gets g₁² + g₂² instead of (g₁ + g₂)². A dense gradient sums the
    slices first, as JAX and PyTorch do.

    Args:
        table: an embedding table (a variable) about to be gathered from.

    Example:
    >>> rows = keras.ops.take(dense_gradient(self.embeddings), ids, axis=0)
    """
    if keras.backend.backend() != "tensorflow":
        return table
    import tensorflow as tf

    @tf.custom_gradient
    def identity(x):
        return tf.identity(x), lambda upstream: tf.convert_to_tensor(upstream)

    return identity(tf.convert_to_tensor(table))


def write_at(buffer: Tensor, update: Tensor, index: int | Tensor, axis: int) -> Tensor:
    """`buffer` with `update` written at positions `index + [0, n)` of `axis`.

    `n` is `update`'s size along `axis`; the other dimensions match. Decoding
    writes each step's keys and values into the KV cache (axis 3 of
    `(batch, 2, num_heads, cache_length, head_dim)`) and each step's token into
    the token buffer (axis 1). On PyTorch the write is in place (`index_copy_`)
    and `buffer` itself is returned: `keras.ops.slice_update` would copy the
    whole buffer at every step. Elsewhere it is `keras.ops.slice_update` (XLA
    updates a loop-carried buffer in place by itself).

    Args:
        buffer: the tensor to write into.
        update: the values to write, in `buffer`'s dtype.
        index: int scalar, the position of `update`'s first entry along `axis`.
        axis: the axis written along.

    Example:
    >>> cache = write_at(cache, new_keys_and_values, cache_index, axis=3)
    """
    if keras.backend.backend() == "torch":
        import torch

        positions = torch.arange(update.shape[axis], device=buffer.device) + index
        return buffer.index_copy_(axis, positions, update)
    start = [0] * len(update.shape)
    start[axis] = index
    return keras.ops.slice_update(buffer, tuple(start), update)


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


#: A backend tensor (`tf.Tensor`, `jax.Array`, `torch.Tensor`) or a NumPy array.
Tensor = Any
