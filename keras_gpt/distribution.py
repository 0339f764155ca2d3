"""Training on several devices or hosts with each backend's own distributed engine.

keras_gpt adds no engine of its own; it prepares the model for the one each
backend already has:

- JAX: `keras.distribution` (`DataParallel`, `ModelParallel` with the layout map
  of `layout_map` / `GPT.get_layout_map`); `configure` sets it up in one call and
  `initialize` joins several processes or hosts.
- PyTorch: `torch.distributed` with `DistributedDataParallel`, driven by
  `ddp_fit`, a training loop that keeps the model's loss, metrics and Keras
  optimizer; launched with `torchrun`.
- TensorFlow: `tf.distribute.MirroredStrategy` / `MultiWorkerMirroredStrategy`
  from `tf_strategy`; build and compile the model in `strategy.scope()`, then
  call `fit` as usual.

The guide `docs/guides/distributed.md` gives the launch commands.
"""

from __future__ import annotations

import math
import os
import pathlib
from typing import Any

import keras
import numpy as np

from keras_gpt.backend import Tensor

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
    dims = {"hidden_dim": hidden,
            "intermediate_dim": int(config.get("intermediate_dim") or 4 * hidden)}
    for name, value in dims.items():
        if value % model_parallel:
            raise ValueError(
                f"`{name}` ({value}) is not divisible by `model_parallel` "
                f"({model_parallel}); the sharded weights need equal pieces."
            )


# -- JAX: keras.distribution --------------------------------------------------


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


# -- PyTorch: DistributedDataParallel -----------------------------------------


def torch_init_process_group(backend: str | None = None) -> tuple[int, int]:
    """Joins the `torchrun` process group; returns `(rank, world_size)`.

    Reads `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT`
    set by `torchrun`. Picks `nccl` with CUDA (and binds this process to GPU
    `LOCAL_RANK`, so Keras allocates there) and `gloo` otherwise.

    Args:
        backend: `"gloo"` or `"nccl"`; default by device as above.

    Example:
    >>> rank, world = torch_init_process_group()   # under torchrun
    """
    import torch
    import torch.distributed as dist

    if "RANK" not in os.environ:
        raise ValueError(
            "No RANK in the environment: launch with "
            "`torchrun --nproc_per_node N script.py`."
        )
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"))
    return dist.get_rank(), dist.get_world_size()


def ddp_fit(
    model: keras.Model,
    x: np.ndarray | dict[str, np.ndarray],
    y: np.ndarray,
    batch_size: int,
    epochs: int = 1,
    steps: int | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    verbose: bool = True,
) -> dict[str, list[float]]:
    """Trains a compiled model with PyTorch `DistributedDataParallel` (under torchrun).

    Every process passes the same data; each global batch of `batch_size`
    rows (taken in order, like `fit(..., shuffle=False)`) is split into
    `world_size` equal slices, one per process. DDP averages the gradients,
    and the model's own `compute_loss` and compiled Keras optimizer and
    metrics are used, so the run matches single-device
    `fit(x, y, batch_size=batch_size, shuffle=False)` to float32 rounding. With
    a padding mask, each process' loss is re-weighted by its share of the
    global real tokens, so the step still minimises the mean over all real
    tokens of the global batch. Dropout draws one device's masks too: each
    process offsets `PortableDropout`'s hash by the elements of the ranks
    before it (`keras_gpt.backend.replica_index`).

    Logged values are global: the loss is the mean over the global batch, and
    metric states are summed over processes before `result()`. Checkpoints
    (`model.save`, with the optimizer) are written by rank 0 only; they load
    on a single device with `keras.saving.load_model`, and a single-device
    checkpoint can be loaded by every process to continue here.

    Args:
        model: a compiled Keras model (e.g. `GPT`), the same on every process
            (same seed or the same loaded checkpoint; DDP also broadcasts rank
            0's weights).
        x: int token ids `(rows, seq)`, or a dict with `"token_ids"` and
            `"padding_mask"`.
        y: int next-token ids `(rows, seq)`.
        batch_size: global batch size; divisible by the number of processes.
        epochs: passes over the data (ignored when `steps` is given).
        steps: total optimizer steps; wraps around the data if needed.
        checkpoint_path: where rank 0 saves the model (`.keras`), if given.
        checkpoint_every: save every this many steps (default: at the end only).
        verbose: rank 0 prints the step, loss and metrics.

    Returns:
        History `{"loss": [...], metric: [...]}` with one global value per
        step: like `fit`'s batch logs, the mean over the epoch so far.

    Example:
    >>> # torchrun --nproc_per_node 2 train.py
    >>> rank, world = torch_init_process_group()
    >>> model = GPT(..., seed=0); model.compile(optimizer="adamw", metrics=[Perplexity()])
    >>> history = ddp_fit(model, tokens[:, :-1], tokens[:, 1:], batch_size=16,
    ...                   steps=100, checkpoint_path="ckpt.keras")
    """
    import torch
    import torch.distributed as dist

    if keras.backend.backend() != "torch":
        raise ValueError(f"`ddp_fit` needs the torch backend, not {keras.backend.backend()!r}.")
    if not dist.is_initialized():
        raise ValueError("No torch process group: call `torch_init_process_group()` first.")
    if model.optimizer is None:
        raise ValueError("Compile the model with an optimizer before `ddp_fit`.")
    rank, world = dist.get_rank(), dist.get_world_size()
    if batch_size % world:
        raise ValueError(
            f"`batch_size` ({batch_size}) must be divisible by the number of "
            f"processes ({world})."
        )
    rows = len(y)
    batches_per_epoch = rows // batch_size
    if batches_per_epoch == 0:
        raise ValueError(f"`batch_size` ({batch_size}) exceeds the number of rows ({rows}).")
    total = int(steps) if steps is not None else epochs * batches_per_epoch
    local = batch_size // world

    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    ddp_model = torch.nn.parallel.DistributedDataParallel(model)
    history: dict[str, list[float]] = {}
    for step in range(total):
        if step % batches_per_epoch == 0:  # as `fit`: logs are means over the epoch
            model.reset_metrics()
            loss_sum, epoch_steps = 0.0, 0
        start = (step % batches_per_epoch) * batch_size + rank * local
        xb = _take_rows(x, start, local)
        yb = keras.ops.convert_to_tensor(y[start:start + local])
        logs = _ddp_train_step(model, ddp_model, xb, yb, world)
        loss_sum, epoch_steps = loss_sum + logs["loss"], epoch_steps + 1
        logs["loss"] = loss_sum / epoch_steps
        for key, value in logs.items():
            history.setdefault(key, []).append(value)
        if verbose and rank == 0:
            shown = " ".join(f"{k}={v:.5f}" for k, v in logs.items())
            print(f"step {step + 1}/{total} {shown}", flush=True)
        due = step + 1 == total or (checkpoint_every and (step + 1) % checkpoint_every == 0)
        if checkpoint_path and due:
            _save_on_rank_zero(model, checkpoint_path, rank)
    return history


def _take_rows(x, start: int, count: int):
    if isinstance(x, dict):
        return {k: keras.ops.convert_to_tensor(v[start:start + count]) for k, v in x.items()}
    return keras.ops.convert_to_tensor(x[start:start + count])


def _ddp_train_step(model, ddp_model, x, y, world: int) -> dict[str, float]:
    """Keras' torch `train_step`, with the forward pass through DDP."""
    import torch
    import torch.distributed as dist

    model.zero_grad()
    y_pred = ddp_model(x, training=True)
    loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
    # DDP averages gradients over processes; weighting each process' mean loss
    # by its share of the real tokens turns that average into the gradient of
    # the mean over all real tokens (a plain average when none are padded).
    local_tokens = _real_tokens(x, y)
    tokens = torch.tensor([local_tokens], dtype=torch.float64, device=loss.device)  # nccl: on GPU
    dist.all_reduce(tokens)
    share = world * local_tokens / max(tokens.item(), 1.0)
    model.optimizer.scale_loss(loss * share).backward()
    variables = model.trainable_variables
    with torch.no_grad():
        model.optimizer.apply([v.value.grad for v in variables], variables)
        global_loss = (loss.detach() * share / world).reshape(1).to(torch.float64)
        dist.all_reduce(global_loss)
        model.compute_metrics(x, y, y_pred)
        return {"loss": float(global_loss.item()), **_global_metric_results(model)}


def _real_tokens(x, y) -> float:
    mask = x.get("padding_mask") if isinstance(x, dict) else None
    if mask is None:
        return float(math.prod(y.shape))
    return float(keras.ops.convert_to_numpy(keras.ops.sum(keras.ops.cast(mask, "float32"))))


def _global_metric_results(model) -> dict[str, float]:
    """Compiled metrics over all processes: sums the states, reads, restores."""
    import torch.distributed as dist

    # The loss tracker is skipped: the caller averages the global loss itself.
    metrics = [m for m in model.metrics if m.name != "loss"]
    local = [[v.value.detach().clone() for v in m.variables] for m in metrics]
    for metric in metrics:
        for variable in metric.variables:
            value = variable.value.detach().clone()
            dist.all_reduce(value)
            variable.assign(value)
    results = {k: float(keras.ops.convert_to_numpy(v))
               for k, v in model.get_metrics_result().items() if k != "loss"}
    for metric, values in zip(metrics, local):
        for variable, value in zip(metric.variables, values):
            variable.assign(value)
    return results


def _save_on_rank_zero(model, path, rank: int) -> None:
    import torch.distributed as dist

    if rank == 0:
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp" + path.suffix)
        model.save(tmp)
        os.replace(tmp, path)  # atomic: a crash never leaves half a checkpoint
    dist.barrier()


# -- TensorFlow: tf.distribute --------------------------------------------------


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
