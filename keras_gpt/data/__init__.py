"""Data: corpora and batches of token windows."""

from keras_gpt.data.batches import RandomWindows
from keras_gpt.data.corpus import stdlib_corpus

__all__ = ["RandomWindows", "stdlib_corpus"]
