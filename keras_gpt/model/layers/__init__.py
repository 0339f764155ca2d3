"""Keras layers that compose `keras_gpt.GPT`."""

from keras_gpt.model.layers.attention import CausalSelfAttention
from keras_gpt.model.layers.block import TransformerBlock
from keras_gpt.model.layers.dropout import PortableDropout
from keras_gpt.model.layers.embeddings import TokenAndPositionEmbedding

__all__ = [
    "CausalSelfAttention",
    "PortableDropout",
    "TokenAndPositionEmbedding",
    "TransformerBlock",
]
