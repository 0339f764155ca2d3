"""Rotary position embedding (RoPE): positions as rotations of query and key pairs."""

from __future__ import annotations

import numpy as np
from keras import ops

from keras_gpt.backend import Tensor


def is_row_index(index) -> bool:
    """Whether a cache index is a `(batch,)` vector (one position per row), not a scalar."""
    shape = getattr(index, "shape", None)
    return shape is not None and len(shape) == 1


def rotary_embedding(x: Tensor, start_index: int | Tensor = 0, base: float = 10000.0) -> Tensor:
    """Rotates `x` (batch, seq, heads, head_dim) by the angles of positions start_index + [0, seq).

    The two halves of each head are the (real, imaginary) parts of head_dim/2
    complex numbers, rotated by position · base^(-2i/head_dim): the half-split
    convention of GPT-NeoX, Llama in Hugging Face `transformers`,
    modded-nanogpt and nanochat. A query at position m and a key at n then
    score q·k as a function of m − n only, which is why the cache can store
    keys already rotated at their absolute positions. Angles, sines and
    cosines are computed in float32 (positions past 2²⁴ would lose
    precision in anything narrower).

    Args:
        x: queries or keys, (batch, seq, heads, head_dim) with even head_dim.
        start_index: absolute position of `x[:, 0]` (the cache index when
            decoding): an int scalar, or a `(batch,)` vector, one per row.
        base: the frequency base θ (10,000 in RoFormer and Llama 2).
    """
    head_dim = int(x.shape[-1])  # static; an int also under torch.jit.trace
    half = head_dim // 2
    # The frequencies from NumPy: a constant, the same bits on every backend.
    inv_freq = (float(base) ** (-np.arange(half, dtype=np.float64) * 2.0 / head_dim)).astype(
        np.float32
    )
    if is_row_index(start_index):  # one start per row: angles (batch, seq, half)
        positions = ops.arange(0, ops.shape(x)[1], dtype="float32")[None, :] + ops.expand_dims(
            ops.cast(start_index, "float32"), 1
        )
        angles = ops.expand_dims(positions, -1) * ops.convert_to_tensor(inv_freq)
        cos = ops.expand_dims(ops.cos(angles), 2)
        sin = ops.expand_dims(ops.sin(angles), 2)
    else:
        positions = ops.arange(0, ops.shape(x)[1], dtype="float32") + ops.cast(
            start_index, "float32"
        )
        # As a tensor: `torch_tensor * ndarray` would let NumPy take the product
        # (leaving torch.jit.trace a constant: the positions of the traced call).
        angles = ops.expand_dims(positions, -1) * ops.convert_to_tensor(inv_freq)  # (seq, half)
        cos = ops.cos(angles)[None, :, None, :]
        sin = ops.sin(angles)[None, :, None, :]
    y = ops.cast(x, "float32")
    x1, x2 = y[..., :half], y[..., half:]
    rotated = ops.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return ops.cast(rotated, x.dtype)
