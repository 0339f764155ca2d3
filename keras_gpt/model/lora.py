"""LoRA: low-rank adapters on GPT's projection layers, built on Keras' own `Dense.enable_lora`.

Keras' `Dense.enable_lora` supplies the adapter maths (kernel + (α/r)·A·B). This
module adds what fine-tuning needs around it: a choice of target projections,
freezing of everything else (Keras freezes only the kernel), seeded adapter
initialisation (identical on every backend), merging for export, and saving and
loading the adapters alone, keyed by layer path.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence

import keras
import numpy as np

from keras_gpt.files import atomic_path
from keras_gpt.random import SeededNormal, derive_seed

#: LoRA targets: name → attribute path inside a `TransformerBlock`. Each is named
#: after its layer, as its variables' paths are (`block_0/attention/output/kernel`);
#: the order fixes each adapter's seed.
TARGETS = {
    "qkv": ("attention", "qkv"),
    "output": ("attention", "output_dense"),
    "mlp_in": ("mlp_in",),
    "mlp_out": ("mlp_out",),
}
#: Earlier names still accepted: adapter files and fine-tuned presets saved before
#: the rename carry them in their LoRA settings.
TARGET_ALIASES = {"attn_out": "output"}
DEFAULT_TARGETS = tuple(TARGETS)
_ADAPTER_NAMES = ("lora_kernel_a", "lora_kernel_b")


def _relative_path(variable) -> str:
    # Drop the model's own name ("gpt", "gpt_1", ...), which differs between instances.
    return variable.path.split("/", 1)[1]


def canonical_targets(target: Sequence[str]) -> list[str]:
    """`target` with earlier names replaced by today's (`"attn_out"` → `"output"`).

    Raises:
        ValueError: naming `target` when it is empty, names an unknown projection
            or names one twice.

    Example:
    >>> canonical_targets(["qkv", "attn_out"])
    ['qkv', 'output']
    """
    names = [TARGET_ALIASES.get(name, name) for name in target]
    if not names or set(names) - set(TARGETS) or len(set(names)) != len(names):
        raise ValueError(
            f"LoRA `target` must be a non-empty subset of {sorted(TARGETS)}, got {list(target)}."
        )
    return names


def target_layers(model, target: Sequence[str]) -> Iterator[tuple[int, str, keras.layers.Dense]]:
    """Yields (block index, target name, Dense layer) for each LoRA target."""
    target = canonical_targets(target)
    for i, block in enumerate(model.blocks):
        for name in target:
            layer = block
            for attribute in TARGETS[name]:
                layer = getattr(layer, attribute)
            yield i, name, layer


def enable_lora(
    model,
    rank: int,
    alpha: float | None = None,
    target: Sequence[str] = DEFAULT_TARGETS,
    train_biases: bool = False,
    train_norms: bool = False,
) -> None:
    """See `GPT.enable_lora`."""
    if int(rank) != rank or rank < 1:
        raise ValueError(f"LoRA `rank` must be a positive integer, got {rank!r}.")
    if getattr(model, "lora_config", None):
        raise ValueError("LoRA is already enabled on this model.")
    target = canonical_targets(target)
    for i, name, layer in target_layers(model, target):
        fan_in = layer.kernel.shape[0]
        layer.enable_lora(
            int(rank),
            lora_alpha=alpha,
            # Seeded, so adapters start identical on every backend; B = 0 makes
            # the adapted model equal to the base model at step 0.
            a_initializer=SeededNormal(
                1.0 / math.sqrt(fan_in), derive_seed(model.seed, 10, i, list(TARGETS).index(name))
            ),
            b_initializer="zeros",
        )
    for variable in model.weights:
        name = variable.path.rsplit("/", 1)[-1]
        if name in _ADAPTER_NAMES:
            variable.trainable = True
        elif name == "bias":
            variable.trainable = train_biases
        elif name in ("gamma", "beta"):
            variable.trainable = train_norms
        elif variable.trainable:
            variable.trainable = False
    model.lora_config = {
        "rank": int(rank),
        "alpha": float(alpha if alpha is not None else rank),
        "target": list(target),
    }


def base_kernel(layer: keras.layers.Dense) -> keras.Variable:
    """The frozen base kernel of a LoRA-enabled Dense layer.

    With LoRA on, `layer.kernel` is the adapted product (base + (α/r)·A·B); the
    base variable itself is the layer weight named `kernel` (Keras exposes it
    only as the private `_kernel`, so it is found by its public path).
    """
    for weight in layer.weights:
        if weight.path.rsplit("/", 1)[-1] == "kernel":
            return weight
    raise ValueError(f"{layer.path} has no kernel weight.")


def merge_lora(model) -> None:
    """See `GPT.merge_lora`."""
    if not getattr(model, "lora_config", None):
        raise ValueError("LoRA is not enabled on this model: nothing to merge.")
    for _, _, layer in target_layers(model, model.lora_config["target"]):
        merged = keras.ops.convert_to_numpy(layer.kernel)  # base + (α/r)·A·B
        base_kernel(layer).assign(merged)
        layer.lora_kernel_b.assign(np.zeros(layer.lora_kernel_b.shape, "float32"))
        layer.lora_enabled = False
        layer.lora_kernel_a.trainable = False
        layer.lora_kernel_b.trainable = False
    for variable in model.weights:
        if (
            variable.path.rsplit("/", 1)[-1] not in _ADAPTER_NAMES
            and "counter" not in variable.path
        ):
            variable.trainable = True
    model.lora_config = None


def adapter_weights(model) -> dict[str, np.ndarray]:
    """The adapter matrices, keyed by their path inside the model."""
    return {
        _relative_path(v): keras.ops.convert_to_numpy(v)
        for v in model.weights
        if v.path.rsplit("/", 1)[-1] in _ADAPTER_NAMES
    }


def save_lora(model, path: str | os.PathLike) -> None:
    """See `GPT.save_lora`."""
    if not getattr(model, "lora_config", None):
        raise ValueError("LoRA is not enabled on this model: no adapters to save.")
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"LoRA adapter files end in .npz, got {path!r}.")
    arrays = adapter_weights(model)
    arrays["__lora_config__"] = np.array(json.dumps(model.lora_config))
    with atomic_path(path, suffix=".npz") as temporary:
        np.savez(temporary, **arrays)


def load_lora(model, path: str | os.PathLike) -> None:
    """See `GPT.load_lora`."""
    try:
        with np.load(os.fspath(path)) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as error:
        raise ValueError(
            f"Could not read LoRA adapters from {os.fspath(path)!r}: {error}"
        ) from None
    if "__lora_config__" not in arrays:
        raise ValueError(f"{os.fspath(path)!r} is not a keras_gpt LoRA adapter file.")
    config = json.loads(str(arrays.pop("__lora_config__")))
    config["target"] = canonical_targets(config["target"])  # files saved before a rename
    current = getattr(model, "lora_config", None)
    if current is None:
        enable_lora(model, config["rank"], config["alpha"], config["target"])
    elif current != config:
        raise ValueError(f"The model's LoRA settings {current} differ from the file's {config}.")
    variables = {
        _relative_path(v): v for v in model.weights if v.path.rsplit("/", 1)[-1] in _ADAPTER_NAMES
    }
    if set(variables) != set(arrays):
        missing = sorted(set(variables) ^ set(arrays))[:4]
        raise ValueError(
            f"LoRA adapters in {os.fspath(path)!r} do not fit this model "
            f"(mismatched layers, e.g. {missing})."
        )
    for key, value in arrays.items():
        if tuple(variables[key].shape) != value.shape:
            raise ValueError(
                f"LoRA adapter {key} has shape {value.shape}, the model expects "
                f"{tuple(variables[key].shape)}."
            )
        variables[key].assign(value)


def merged_copy(model):
    """A new plain GPT (no adapters) whose kernels are the adapted kernels of `model`.

    Leaves `model` untouched, so training can go on (e.g. to save the best
    model as a preset in the middle of a LoRA run).
    """
    copy = type(model).from_config(model.get_config())
    values = {_relative_path(v): v for v in model.weights}
    merged = {}
    if getattr(model, "lora_config", None):
        for _, _, layer in target_layers(model, model.lora_config["target"]):
            merged[_relative_path(base_kernel(layer))] = layer.kernel  # base + (α/r)·A·B
    for variable in copy.weights:
        key = _relative_path(variable)
        variable.assign(merged.get(key, values[key]))
    return copy
