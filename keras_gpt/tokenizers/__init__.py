"""Tokenizers: text ↔ token ids."""

from keras_gpt.tokenizers.byte_tokenizer import ByteTokenizer

__all__ = ["ByteTokenizer"]
