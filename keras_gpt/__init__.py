"""keras_gpt: one GPT in Keras 3 that trains the same on TensorFlow, JAX and PyTorch.

The package, floor by floor (a module imports only from floors below it):

- `backend/`: the few functions whose code differs per backend.
- `random.py`: seeds, NumPy-drawn initializers, the counter hash.
- `tokenizers/`, `data/`: text ↔ ids, text → shards → batches.
- `presets/`, `generation/`: preset files and the generation engine, written
  against the model's public methods (they take the model or its class).
- `model/`: layers → blocks → `GPT`.
- `distribution/`, `training/`, `export/`, `evaluation/`: what is done with a model.
- `serving/`: the HTTP server.
- `cli.py`: the `keras-gpt` command.

The names below are imported on first use (PEP 562), so that `import keras_gpt.cli`
(and `keras-gpt --help`) does not import Keras and a backend.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
import types
from typing import TYPE_CHECKING

__version__ = importlib.metadata.version("keras-gpt")

#: Public name -> the module it comes from.
_EXPORTS = {
    "GPT": "keras_gpt.model",
    "Perplexity": "keras_gpt.model",
    "causal_lm_loss": "keras_gpt.model",
    "count_parameters": "keras_gpt.model",
    "layers": "keras_gpt.model",
    "Tokenizer": "keras_gpt.tokenizers",
    "export": "keras_gpt.export",
    "export_onnx": "keras_gpt.export",
    "presets": "keras_gpt.presets",
}

#: Parts reachable as attributes too (`keras_gpt.tokenizers.ByteTokenizer`), imported on use.
_PARTS = (
    "backend",
    "cli",
    "data",
    "distribution",
    "evaluation",
    "generation",
    "model",
    "random",
    "serving",
    "tokenizers",
    "training",
)

__all__ = [
    "GPT",
    "Perplexity",
    "Tokenizer",
    "causal_lm_loss",
    "count_parameters",
    "export",
    "export_onnx",
    "layers",
    "presets",
    "__version__",
]

if TYPE_CHECKING:  # for type checkers and the API docs; at run time, __getattr__
    from keras_gpt import presets
    from keras_gpt.export import export, export_onnx
    from keras_gpt.model import GPT, Perplexity, causal_lm_loss, count_parameters, layers
    from keras_gpt.tokenizers import Tokenizer


def __getattr__(name: str):
    if name in _PARTS:
        return importlib.import_module(f"keras_gpt.{name}")  # the import binds the name
    if name not in _EXPORTS:
        raise AttributeError(f"module 'keras_gpt' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    value = getattr(module, name) if hasattr(module, name) else module
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_PARTS})


class _Face(types.ModuleType):
    """The package module: `keras_gpt.export` stays the function.

    Python's import system sets `keras_gpt.export` to the subpackage
    `keras_gpt/export/` when that is first imported; the public name is the
    function `keras_gpt.export.export` (as it always was), so that assignment is
    turned into the function. The subpackage stays importable by its full name.
    """

    def __setattr__(self, name: str, value) -> None:
        if name in ("export", "export_onnx") and isinstance(value, types.ModuleType):
            value = getattr(value, name, value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Face
