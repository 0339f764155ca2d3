"""Export for serving: a TensorFlow SavedModel with `logits` and `generate` signatures
(`saved_model.py`), and the logits graph as ONNX (`onnx.py`), from any backend."""

from keras_gpt.export.onnx import export_onnx
from keras_gpt.export.saved_model import (
    GENERATE_INPUTS,
    LOGITS_INPUTS,
    METADATA_FILE,
    SIGNATURES,
    export,
    generate_function,
    logits_function,
)

__all__ = [
    "GENERATE_INPUTS",
    "LOGITS_INPUTS",
    "METADATA_FILE",
    "SIGNATURES",
    "export",
    "export_onnx",
    "generate_function",
    "logits_function",
]
