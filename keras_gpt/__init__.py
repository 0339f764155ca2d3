"""keras_gpt: one GPT in Keras 3 that trains the same on TensorFlow, JAX and PyTorch.

The package, floor by floor (a module imports only from floors below it):

- `backend/`: the few functions whose code differs per backend.
- `random.py`: seeds, NumPy-drawn initializers, the counter hash.
- `tokenizers/`, `data/`: text ↔ ids, text → shards → batches.
- `presets/`, `generation/`: preset files and the generation engine, written
  against the model's public methods (they take the model or its class).
- `model/`: layers → blocks → `GPT`.
- `distribution/`, `training/`, `export/`: what is done with a model.
- `cli.py`: the `keras-gpt` command.
"""

import importlib.metadata

from keras_gpt import presets
from keras_gpt.export import export, export_onnx
from keras_gpt.model import GPT, Perplexity, causal_lm_loss, layers
from keras_gpt.tokenizers import Tokenizer

__version__ = importlib.metadata.version("keras-gpt")

__all__ = [
    "GPT",
    "Perplexity",
    "Tokenizer",
    "causal_lm_loss",
    "export",
    "export_onnx",
    "layers",
    "presets",
    "__version__",
]
