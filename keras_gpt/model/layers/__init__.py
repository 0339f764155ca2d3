"""Keras layers that compose `keras_gpt.GPT`."""

from keras_gpt.model.layers.attention import CausalSelfAttention
from keras_gpt.model.layers.block import TransformerBlock
from keras_gpt.model.layers.dropout import PortableDropout
from keras_gpt.model.layers.embeddings import TokenAndPositionEmbedding
from keras_gpt.model.layers.normalization import RMSNorm
from keras_gpt.model.layers.rotary import rotary_embedding

__all__ = [
    "CausalSelfAttention",
    "PortableDropout",
    "RMSNorm",
    "TokenAndPositionEmbedding",
    "TransformerBlock",
    "rotary_embedding",
]
