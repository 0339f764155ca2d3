"""Data: corpora, text → token shards, batches of token windows, instruction data.

Imports no model code: data is prepared the same way for any model.
"""

from keras_gpt.data.batches import RandomWindows, SequentialWindows
from keras_gpt.data.corpus import (
    make_tokenizer,
    resolve_data,
    stdlib_corpus,
    tokenize_corpus,
)
from keras_gpt.data.documents import input_files, read_documents
from keras_gpt.data.instructions import (
    InstructionBatches,
    encode_example,
    format_prompt,
    read_instructions,
)
from keras_gpt.data.prepare import prepare
from keras_gpt.data.token_stream import TokenStream, read_metadata

__all__ = [
    "InstructionBatches",
    "RandomWindows",
    "SequentialWindows",
    "TokenStream",
    "encode_example",
    "format_prompt",
    "input_files",
    "prepare",
    "read_documents",
    "make_tokenizer",
    "read_instructions",
    "read_metadata",
    "resolve_data",
    "stdlib_corpus",
    "tokenize_corpus",
]
