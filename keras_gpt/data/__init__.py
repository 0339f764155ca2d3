"""Data: corpora, text → token shards, and batches of token windows."""

from keras_gpt.data.batches import RandomWindows, SequentialWindows
from keras_gpt.data.corpus import stdlib_corpus
from keras_gpt.data.documents import input_files, read_documents
from keras_gpt.data.prepare import prepare
from keras_gpt.data.token_stream import TokenStream, read_metadata

__all__ = ["RandomWindows", "SequentialWindows", "TokenStream", "input_files", "prepare",
           "read_documents", "read_metadata", "stdlib_corpus"]
