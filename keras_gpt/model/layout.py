"""How a `GPT`'s weights split over a device mesh: the `keras.distribution.LayoutMap`
of model parallelism."""

from __future__ import annotations

import keras

#: Mesh axis names used by `layout_map` and `configure`.
BATCH_AXIS = "batch"


MODEL_AXIS = "model"


# Megatron-style tensor parallelism: the first matmul of each pair (QKV, MLP in)
# is split by output columns, the second (attention output, MLP out) by input
# rows, so each pair needs one all-reduce. Embeddings are split along the hidden
# dimension, which (unlike the vocabulary) is always divisible by the mesh size
# for the usual shapes. Keys are regexes over the *whole* variable path
# ("gpt/block_0/attention/qkv/kernel"): Keras matches them with re.fullmatch, so
# a key without the ".*/" prefix matches nothing and silently shards nothing.
_SHARDING_RULES = (
    (".*/embeddings/token_embeddings", (None, MODEL_AXIS)),
    (".*/embeddings/position_embeddings", (None, MODEL_AXIS)),
    (".*/attention/qkv/kernel", (None, MODEL_AXIS)),
    (".*/attention/qkv/bias", (MODEL_AXIS,)),
    (".*/attention/output/kernel", (MODEL_AXIS, None)),
    (".*/mlp_in/kernel", (None, MODEL_AXIS)),
    (".*/mlp_in/bias", (MODEL_AXIS,)),
    (".*/mlp_out/kernel", (MODEL_AXIS, None)),
    (".*/lm_head/kernel", (None, MODEL_AXIS)),
)


def layout_map(
    device_mesh: keras.distribution.DeviceMesh,
    model_axis: str = MODEL_AXIS,
) -> keras.distribution.LayoutMap:
    """The `keras.distribution.LayoutMap` that shards a `GPT` along `model_axis`.

    Token and position embeddings and the LM head are split along the hidden
    dimension; the QKV and MLP-in kernels (and biases) by output columns; the
    attention-output and MLP-out kernels by input rows. LayerNorm weights,
    the remaining biases and the dropout counters are replicated. Every
    sharded dimension must be divisible by the size of `model_axis`
    (`check_model_parallel` says which one is not).

    Args:
        device_mesh: the mesh; it must have an axis named `model_axis`.
        model_axis: name of the mesh axis that splits the weights.

    Returns:
        A `LayoutMap` for `keras.distribution.ModelParallel`.

    Example:
    >>> devices = keras.distribution.list_devices()          # e.g. 8 devices
    >>> mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "model"), devices)
    >>> keras.distribution.set_distribution(keras.distribution.ModelParallel(
    ...     layout_map=layout_map(mesh), batch_dim_name="batch"))
    >>> model = GPT(...)   # variables are created sharded
    """
    if model_axis not in device_mesh.axis_names:
        raise ValueError(
            f"The device mesh has axes {list(device_mesh.axis_names)}; "
            f"`model_axis` {model_axis!r} is not one of them."
        )
    layouts = keras.distribution.LayoutMap(device_mesh)
    for key, axes in _SHARDING_RULES:
        layouts[key] = tuple(model_axis if axis == MODEL_AXIS else axis for axis in axes)
    return layouts
