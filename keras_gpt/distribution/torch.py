"""PyTorch: `torch.distributed` with `DistributedDataParallel`, driven by `ddp_fit`
(launched with `torchrun`)."""

from __future__ import annotations

import math
import os
import pathlib

import keras
import numpy as np

from keras_gpt.files import atomic_path


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
            "No RANK in the environment: launch with `torchrun --nproc_per_node N script.py`."
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
            f"`batch_size` ({batch_size}) must be divisible by the number of processes ({world})."
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
        yb = keras.ops.convert_to_tensor(y[start : start + local])
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
        return {k: keras.ops.convert_to_tensor(v[start : start + count]) for k, v in x.items()}
    return keras.ops.convert_to_tensor(x[start : start + count])


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
    results = {
        k: float(keras.ops.convert_to_numpy(v))
        for k, v in model.get_metrics_result().items()
        if k != "loss"
    }
    for metric, values in zip(metrics, local):
        for variable, value in zip(metric.variables, values):
            variable.assign(value)
    return results


def _save_on_rank_zero(model, path, rank: int) -> None:
    import torch.distributed as dist

    if rank == 0:
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=path.suffix) as temporary:  # Keras reads the suffix
            model.save(temporary)
    dist.barrier()
