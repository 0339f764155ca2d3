"""keras_gpt: one GPT in Keras 3 that trains the same on TensorFlow, JAX and PyTorch."""

from keras_gpt import layers, presets
from keras_gpt.gpt import GPT
from keras_gpt.export import export, export_onnx
from keras_gpt.losses import causal_lm_loss
from keras_gpt.metrics import Perplexity
from keras_gpt.tokenizers import Tokenizer

__version__ = "0.1.0"

__all__ = ["GPT", "Perplexity", "Tokenizer", "causal_lm_loss", "export", "export_onnx", "layers",
           "presets", "__version__"]
