"""Keras layers that compose `keras_gpt.GPT`."""

from keras_gpt.layers.causal_self_attention import CausalSelfAttention
from keras_gpt.layers.portable_dropout import PortableDropout
from keras_gpt.layers.token_and_position_embedding import TokenAndPositionEmbedding
from keras_gpt.layers.transformer_block import TransformerBlock

__all__ = [
    "CausalSelfAttention",
    "PortableDropout",
    "TokenAndPositionEmbedding",
    "TransformerBlock",
]
