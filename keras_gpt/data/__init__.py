"""Data: corpora, text → token shards, batches of token windows, instruction data."""

from keras_gpt.data.batches import RandomWindows, SequentialWindows
from keras_gpt.data.corpus import stdlib_corpus
from keras_gpt.data.documents import input_files, read_documents
from keras_gpt.data.instructions import (
    InstructionBatches,
    encode_example,
    format_prompt,
    read_instructions,
)
from keras_gpt.data.prepare import prepare
from keras_gpt.data.token_stream import TokenStream, read_metadata

__all__ = ["InstructionBatches", "RandomWindows", "SequentialWindows", "TokenStream",
           "encode_example", "format_prompt", "input_files", "prepare", "read_documents",
           "read_instructions", "read_metadata", "stdlib_corpus"]
