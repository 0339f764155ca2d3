"""Tokenizers: text ↔ token ids.

All share one small interface (`keras_gpt.tokenizers.Tokenizer`):
`vocabulary_size`, `encode`, `decode`, `encode_batch`, `decode_batch`,
`token_to_id`, `end_of_text_id`, `save(directory)`, and `Tokenizer.load(directory)` reads back
whichever kind was saved.
"""

from keras_gpt.tokenizers.byte_pair_tokenizer import BytePairTokenizer, bytes_to_unicode
from keras_gpt.tokenizers.byte_tokenizer import ByteTokenizer
from keras_gpt.tokenizers.char_tokenizer import CharTokenizer
from keras_gpt.tokenizers.streaming import TextStream
from keras_gpt.tokenizers.tokenizer import END_OF_TEXT, Tokenizer, split_text

__all__ = [
    "END_OF_TEXT",
    "BytePairTokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "TextStream",
    "Tokenizer",
    "bytes_to_unicode",
    "split_text",
]
