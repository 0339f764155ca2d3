"""The model: layers → transformer blocks → `GPT`, its loss, metric, LoRA and layout map.

Written with `keras.ops` and `keras.layers` only; what differs per backend
lives in `keras_gpt.backend`. `GPT.generate` and `GPT.from_preset` /
`save_to_preset` hand the model to `keras_gpt.generation` and
`keras_gpt.presets`, which are written against the model's public methods and
never import it.
"""

from keras_gpt.model import layers
from keras_gpt.model.gpt import GPT
from keras_gpt.model.losses import causal_lm_loss, token_cross_entropy
from keras_gpt.model.metrics import Perplexity
from keras_gpt.model.parameters import count_parameters

__all__ = [
    "GPT",
    "Perplexity",
    "causal_lm_loss",
    "count_parameters",
    "layers",
    "token_cross_entropy",
]
