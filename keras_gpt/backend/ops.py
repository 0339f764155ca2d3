"""Tensor questions and writes whose answer depends on the Keras backend."""

from __future__ import annotations

from typing import Any

import keras

#: A backend tensor (`tf.Tensor`, `jax.Array`, `torch.Tensor`) or a NumPy array.
Tensor = Any


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


def accelerator_name() -> str | None:
    """The first accelerator's name on the current backend (None on a CPU-only machine)."""
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            device = jax.devices()[0]
            return None if device.platform == "cpu" else device.device_kind
        if backend == "torch":
            import torch

            return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                return tf.config.experimental.get_device_details(gpus[0]).get("device_name")
    except Exception:  # a broken driver: fall back to the probe
        return None
    return None


def in_distribution_strategy() -> bool:
    """True inside a `tf.distribute` strategy's scope (TensorFlow); False elsewhere.

    Keras leaves XLA off for models built under a strategy; `GPT.compile` follows
    that rule.
    """
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return tf.distribute.has_strategy()


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


def write_rows(buffer: Tensor, update: Tensor, index: Tensor, axis: int) -> Tensor:
    """`buffer` with row r's `update` written at position `index[r]` of `axis`.

    Continuous batching writes each slot's new key and value at the slot's own
    position: `buffer` is `(batch, ..., length, ...)`, `update` the same with
    size 1 along `axis`, `index` an int `(batch,)` vector. On PyTorch one
    in-place indexed write (`keras.ops.slice_update` would clone the buffer);
    elsewhere one `keras.ops.slice_update` per row (the batch is static), which
    XLA does in place. (A one-hot `keras.ops.where` over the positions made a
    bench-small decode step at 16 slots and 512 positions 7x slower on JAX.)

    Args:
        buffer: the tensor to write into; rows along axis 0.
        update: the values, `buffer`'s shape with 1 along `axis`, in its dtype.
        index: int `(batch,)` positions along `axis`, one per row.
        axis: the axis written along (> 0).

    Example:
    >>> buffer = keras.ops.zeros((2, 3, 1))
    >>> index = keras.ops.convert_to_tensor([2, 0], "int32")
    >>> out = write_rows(buffer, keras.ops.ones((2, 1, 1)), index, axis=1)
    >>> keras.ops.convert_to_numpy(out)[:, :, 0].tolist()
    [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    """
    if keras.backend.backend() == "torch":
        import torch

        rows = torch.arange(buffer.shape[0], device=buffer.device)
        where = (rows,) + (slice(None),) * (axis - 1) + (index.long(),)
        buffer[where] = update.squeeze(axis)
        return buffer
    for row in range(update.shape[0]):
        start = [row] + [0] * (len(update.shape) - 1)
        start[axis] = index[row]
        buffer = keras.ops.slice_update(buffer, tuple(start), update[row : row + 1])
    return buffer


def int8_matmul(x: Tensor, kernel: Tensor, scale: Tensor, transposed: bool = False) -> Tensor:
    """`x · (kernel / scale)`: a product with int8 weights; `x` stays in its float dtype.

    Keras' int8 convention: a float weight w is stored as `kernel = round(w · scale)`
    with one scale per output. Only the weights are int8 (weight-only
    quantization): at batch 1 decoding reads every weight once per token, so
    fewer weight bytes is what can make it faster, and float activations keep
    the products as exact as the weights allow.

    - PyTorch on CPU, inputs a multiple of 16 wide: `torch._weight_int8pack_mm`,
      a kernel that reads int8 weights, with the `(out, in)` weight contiguous
      (`weight_values` hands decode programs int8 kernels in that layout) and
      the input and output in bfloat16 (its fast path; see below).
    - Elsewhere: the kernel is cast to `x`'s dtype and multiplied; XLA fuses
      the cast into the product (see docs/guides/quantization.md for what that
      costs on CPU).

    Args:
        x: float `(..., in)`.
        kernel: int8 `(in, out)`, or `(out, in)` with `transposed`.
        scale: float `(out,)`.
        transposed: `kernel` is `(out, in)` (a tied embedding projecting to logits).

    Example:
    >>> y = int8_matmul(h, layer._kernel, layer.kernel_scale)   # (..., out)
    """
    # torch 2.13's kernel reads past its input when the input width is not a multiple
    # of 16 and crashes the process (segmentation fault; e.g. (2, 8) x (8, 16)): such
    # layers, too small for the kernel to matter, take the general path.
    if keras.backend.backend() == "torch" and x.device.type == "cpu" and x.shape[-1] % 16 == 0:
        import torch

        weight = (kernel if transposed else kernel.t()).contiguous()  # (out, in)
        # The kernel's float32 path is ~10x slower than its bfloat16 one (and
        # than a float32 matmul): measured on a Zen 4 (AVX512_BF16), one thread,
        # (1, 768) x (768, 2304): float32 matmul 0.22 ms, int8 with float32
        # input 1.6 ms, with bfloat16 input 0.10 ms. So the input is rounded
        # to bfloat16 for this product (accumulation stays float32 inside).
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16).contiguous()
        y = torch._weight_int8pack_mm(flat, weight, (1.0 / scale).to(torch.bfloat16))
        return y.to(x.dtype).reshape(*x.shape[:-1], y.shape[-1])
    ops = keras.ops
    weight = ops.cast(kernel, x.dtype)
    y = ops.matmul(x, ops.transpose(weight) if transposed else weight)
    return y / ops.cast(scale, y.dtype)


def relu_squared(x: Tensor) -> Tensor:
    """ReLU squared, max(x, 0)², with a one-pass gradient on eager PyTorch.

    PyTorch's autograd differentiates `square(relu(x))` op by op: `pow`'s backward
    (a power, two products) then `relu`'s (a threshold), four passes over the
    MLP's widest activation (and `pow` forward is slower than a product). Its derivative is
    2·max(x, 0), so here PyTorch's backward is one product, (r + r)·g, from the
    saved r = max(x, 0). The numbers are the same as autograd's and as JAX's and
    TensorFlow's (doubling is exact: (r + r)·g = 2·(r·g) bit for bit). On JAX and
    TensorFlow, and without gradients, it is `square(relu(x))` (XLA fuses it).

    Args:
        x: any tensor.

    Example:
    >>> keras.ops.convert_to_numpy(relu_squared(keras.ops.convert_to_tensor([-1.0, 3.0]))).tolist()
    [0.0, 9.0]
    """
    if keras.backend.backend() == "torch":
        import torch

        if torch.is_grad_enabled() and getattr(x, "requires_grad", False):
            return _torch_relu_squared().apply(x)
    return keras.ops.square(keras.ops.relu(x))


_TORCH_RELU_SQUARED = None


def _torch_relu_squared():
    """The `torch.autograd.Function` behind `relu_squared` (made once, on first use)."""
    global _TORCH_RELU_SQUARED
    if _TORCH_RELU_SQUARED is None:
        import torch

        class ReluSquared(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                r = torch.relu(x)
                ctx.save_for_backward(r)
                return r * r

            @staticmethod
            def backward(ctx, grad):
                (r,) = ctx.saved_tensors
                return (r + r) * grad

        _TORCH_RELU_SQUARED = ReluSquared
    return _TORCH_RELU_SQUARED
