"""ONNX export of the `logits` computation (through TensorFlow's `tf2onnx`)."""

from __future__ import annotations

import os

import keras

from keras_gpt.export.saved_model import (
    LOGITS_INPUTS,
    _export_in_child,
    _input_specs,
    _resolve_model,
)
from keras_gpt.files import atomic_path


def export_onnx(
    model_or_preset: keras.Model | str | os.PathLike,
    path: str | os.PathLike,
    overwrite: bool = False,
    backend: str | None = None,
) -> str:
    """Writes the `logits` computation as an ONNX file (dynamic batch and length).

    Inputs `token_ids` and `padding_mask` (int32 `[batch, seq]`), output the
    float32 logits `[batch, seq, vocabulary]`; run it with `onnxruntime`. The
    decode loop is not exported to ONNX (use the SavedModel's `generate`).
    Needs `pip install "keras-gpt[onnx]"` (onnx, onnxruntime, tf2onnx). Keras
    converts through TensorFlow (`tf2onnx`); under JAX (which would need
    `jax2onnx`) and PyTorch (no dynamic sequence length) the model is
    converted by a TensorFlow child process instead.

    Args:
        model_or_preset: a built `keras_gpt.GPT`, or a preset handle or directory.
        path: output file, e.g. `"gpt.onnx"`; must not exist unless `overwrite`.
        overwrite: replace an existing file.
        backend: None or `"tensorflow"` (the only backend that converts here).

    Returns:
        `path`, as a string.

    Example:
    >>> keras_gpt.export_onnx(model, "gpt.onnx")
    'gpt.onnx'
    >>> import onnxruntime
    >>> session = onnxruntime.InferenceSession("gpt.onnx")
    >>> logits, = session.run(None, {"token_ids": ids, "padding_mask": mask})
    """
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise ValueError(
            f"Export path {path!r} already exists; choose a new file or pass overwrite=True."
        )
    if backend not in (None, "tensorflow"):
        raise ValueError(
            f"ONNX export runs through TensorFlow: `backend` must be None "
            f"or 'tensorflow', got {backend!r}."
        )
    if keras.backend.backend() != "tensorflow":
        return _export_in_child(model_or_preset, path, ["--format", "onnx"], overwrite)
    model = _resolve_model(model_or_preset)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with atomic_path(path) as staging:
        model.export(
            str(staging), format="onnx", verbose=False, input_signature=_input_specs(LOGITS_INPUTS)
        )
        _rename_onnx_output(str(staging), "logits")
    return path


def _rename_onnx_output(path: str, name: str) -> None:
    """tf2onnx names the output after the TensorFlow tensor ("Identity:0")."""
    import onnx

    graph_model = onnx.load(path)
    old = graph_model.graph.output[0].name
    for node in graph_model.graph.node:
        node.output[:] = [name if out == old else out for out in node.output]
    graph_model.graph.output[0].name = name
    onnx.save(graph_model, path)
