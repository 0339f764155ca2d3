"""JAX: `keras.distribution` data and model parallelism, and multi-process runs."""

from __future__ import annotations

import keras

from keras_gpt.model.layout import BATCH_AXIS, MODEL_AXIS, layout_map


def check_model_parallel(config: dict, model_parallel: int) -> None:
    """Raises a ValueError if a `GPT` config cannot be split `model_parallel` ways.

    Args:
        config: `GPT` arguments (or `model.get_config()`).
        model_parallel: size of the mesh's model axis.

    Example:
    >>> check_model_parallel(dict(hidden_dim=768, num_heads=12), 4)
    """
    if int(model_parallel) != model_parallel or model_parallel < 1:
        raise ValueError(f"`model_parallel` must be a positive integer, got {model_parallel!r}.")
    hidden = int(config["hidden_dim"])
    dims = {
        "hidden_dim": hidden,
        "intermediate_dim": int(config.get("intermediate_dim") or 4 * hidden),
    }
    for name, value in dims.items():
        if value % model_parallel:
            raise ValueError(
                f"`{name}` ({value}) is not divisible by `model_parallel` "
                f"({model_parallel}); the sharded weights need equal pieces."
            )


def configure(
    data_parallel: bool = False,
    model_parallel: int = 1,
    devices: list[str] | None = None,
) -> keras.distribution.Distribution | None:
    """Sets `keras.distribution` for data and/or model parallel training (JAX).

    Call it before building the model: variables are placed when they are
    created. With `model_parallel > 1` the devices form a mesh
    `(n / model_parallel, model_parallel)` with axes `("batch", "model")`: the
    batch is split over the first axis and the weights over the second (see
    `layout_map`). With only `data_parallel`, every device holds all weights
    and the batch is split over all of them; the global batch size must be
    divisible by the number of batch shards. `fit`, `evaluate` and checkpoints
    work unchanged, and training matches one device to float32 rounding.

    Args:
        data_parallel: split the batch over the devices.
        model_parallel: number of devices that share each weight matrix; 1
            means no model parallelism.
        devices: Keras device names; default: all devices
            (`keras.distribution.list_devices()`), of every process after
            `initialize`.

    Returns:
        The distribution that was set, or `None` when neither option is on
        (nothing is changed).

    Example:
    >>> configure(data_parallel=True)                     # all devices, DP
    >>> configure(model_parallel=4)                        # 8 devices: 2 × 4 mesh
    >>> model = GPT(...); model.compile(...); model.fit(...)
    """
    if int(model_parallel) != model_parallel or model_parallel < 1:
        raise ValueError(f"`model_parallel` must be a positive integer, got {model_parallel!r}.")
    if not data_parallel and model_parallel == 1:
        return None
    if keras.backend.backend() != "jax":
        raise ValueError(
            f"`configure` sets `keras.distribution`, which trains on JAX only; the "
            f"backend is {keras.backend.backend()!r}. Use `tf_strategy()` on "
            "TensorFlow and `ddp_fit` under torchrun on PyTorch."
        )
    devices = list(devices or keras.distribution.list_devices())
    if model_parallel == 1:
        distribution = keras.distribution.DataParallel(devices=devices)
    else:
        if len(devices) % model_parallel:
            raise ValueError(
                f"{len(devices)} devices cannot be split into groups of "
                f"`model_parallel` = {model_parallel}."
            )
        mesh = keras.distribution.DeviceMesh(
            (len(devices) // model_parallel, model_parallel), (BATCH_AXIS, MODEL_AXIS), devices
        )
        distribution = keras.distribution.ModelParallel(
            layout_map=layout_map(mesh), batch_dim_name=BATCH_AXIS
        )
    keras.distribution.set_distribution(distribution)
    return distribution


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Joins a multi-process / multi-host JAX run (`jax.distributed.initialize`).

    Run the same script once per process (usually one per host); afterwards
    `keras.distribution.list_devices()` lists the devices of all processes and
    `configure` spans them. Arguments left `None` come from the environment
    variables `KERAS_DISTRIBUTION_JOB_ADDRESSES`, `KERAS_DISTRIBUTION_NUM_PROCESSES`
    and `KERAS_DISTRIBUTION_PROCESS_ID` (or from the cluster, e.g. on Cloud TPU
    or SLURM).

    Args:
        coordinator_address: `"host:port"` of process 0.
        num_processes: number of processes.
        process_id: this process, in [0, num_processes).

    Example:
    >>> initialize("10.0.0.1:1234", num_processes=2, process_id=0)  # on host 0
    >>> configure(data_parallel=True)
    """
    keras.distribution.initialize(coordinator_address, num_processes, process_id)


def variable_layouts(model: keras.Model) -> dict[str, tuple]:
    """How each variable is split across the mesh: `{path: axes}` (JAX).

    Each entry gives, per dimension, the mesh axis that splits it or `None`
    (read from the placed array, not from the layout map), so a layout map
    that matched nothing shows up as all-`None`.

    Args:
        model: a built model.

    Example:
    >>> variable_layouts(model)["gpt/block_0/mlp_in/kernel"]   # (None, "model")
    """
    return {v.path: _jax_partition_spec(v.value, len(v.shape)) for v in model.variables}


def _jax_partition_spec(array, rank: int) -> tuple:
    spec = getattr(array.sharding, "spec", None)
    if spec is None:  # a single-device array
        return (None,) * rank
    spec = tuple(spec) + (None,) * (rank - len(spec))
    return spec
