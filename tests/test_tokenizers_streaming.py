"""`keras_gpt.tokenizers.TextStream`: a row's text, token by token, as `keras-gpt serve` and
`keras-gpt generate` stream it: whole characters, stop strings held back, and a cost per
token that does not grow with the row."""

from __future__ import annotations

import numpy as np
import pytest

from keras_gpt.tokenizers import ByteTokenizer, TextStream
from keras_gpt.tokenizers.streaming import REPLACEMENT

pytestmark = pytest.mark.backend_independent

TEXT = "héllo wörld € 日本語 stop here. END more ünïcödé 🙂 text\n" * 3
#: Bytes that start, continue or cannot be in UTF-8 characters, and one ASCII letter.
BYTES = [0xFF, 0xFE, 0xC3, 0xA9, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x99, 0x80, ord("A")]


class CountingTokenizer(ByteTokenizer):
    """A ByteTokenizer that records how many ids each `decode` call got."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def decode(self, ids):
        self.sizes.append(len(ids))
        return super().decode(ids)


def run(stream, ids):
    chunks = [stream.feed(i) for i in ids] + [stream.close()]
    return "".join(chunks), stream.finish_reason, stream.tokens


def reference(tokenizer, ids, max_tokens, stop, stop_ids):
    """(text, finish reason, tokens) by decoding the whole row after every token and
    searching all of it: what a row's streamed text must add up to."""
    for k in range(1, len(ids) + 1):
        if ids[k - 1] in stop_ids:
            return tokenizer.decode(ids[: k - 1]), "stop", k
        text = tokenizer.decode(ids[:k])
        hits = [i for i in (text.find(s) for s in stop) if i >= 0]
        if hits:
            return text[: min(hits)], "stop", k
        if k == max_tokens:
            return text, "length", k
    return tokenizer.decode(ids), "length", len(ids)


@pytest.mark.parametrize("stop", [[], ["END"], ["\n"], ["ö", "€ 日"], ["here. E"]])
def test_the_same_text_as_decoding_the_whole_row(stop):
    """Slices of valid UTF-8 (ByteTokenizer: multi-byte characters span tokens), with
    stop strings, stop ids and max_tokens: the whole row's decoding, cut where the
    first stop string is complete."""
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode(TEXT)
    rng = np.random.default_rng(0)
    for _ in range(60):
        start = int(rng.integers(0, len(ids) - 1))
        while ids[start] & 0xC0 == 0x80:  # start on a character
            start += 1
        row = ids[start : start + int(rng.integers(1, 80))] + [256]
        max_tokens = int(rng.integers(1, 90))
        expected = reference(tokenizer, row, max_tokens, stop, {256})
        assert run(TextStream(tokenizer, max_tokens, stop, [256]), row) == expected


def test_invalid_bytes_before_a_multibyte_character_lose_nothing():
    """Invalid bytes, then a 4-byte character arriving a byte at a time: the invalid
    bytes are released as U+FFFD at once (they wait for nothing) and the character
    once it is whole (serving's copy counted the invalid bytes' tokens as the
    character's, released it unfinished after 4 and then lost it)."""
    tokenizer = ByteTokenizer()
    ids = [0xFF, 0xFE, *"🙂".encode(), ord("A")]
    stream = TextStream(tokenizer, 100)
    chunks = [stream.feed(i) for i in ids] + [stream.close()]
    assert "".join(chunks) == tokenizer.decode(ids) == REPLACEMENT * 2 + "🙂A"
    assert chunks[:4] == ["", REPLACEMENT, REPLACEMENT, ""]  # 0xF0 0x9F: 🙂 is unfinished
    assert chunks[5] == "🙂"


def test_any_bytes_add_up_to_the_decoded_row():
    """Random byte rows (valid and broken sequences mixed): the streamed chunks add up to
    `tokenizer.decode(row)`, and text is held back only while it ends in an unfinished
    character."""
    tokenizer = ByteTokenizer()
    rng = np.random.default_rng(0)
    for _ in range(3000):
        row = [int(b) for b in rng.choice(BYTES, int(rng.integers(1, 16)))]
        stream = TextStream(tokenizer, len(row) + 1)
        for k, token in enumerate(row, 1):
            stream.feed(token)
            decoded = tokenizer.decode(row[:k])
            assert decoded.startswith(stream.text)
            assert stream.text == decoded or decoded.endswith(REPLACEMENT), row[:k]
        stream.close()
        assert stream.text == tokenizer.decode(row), row


def test_a_character_unfinished_for_hold_tokens_is_released_as_replacement():
    stream = TextStream(ByteTokenizer(), 100, hold_tokens=3)
    # E2 82 82 is U+2082; the 0x82 after it are continuation bytes of nothing.
    chunks = [stream.feed(i) for i in [0xE2, 0x82, 0x82, 0x82, 0x82, 0x82]]
    assert chunks == ["", "", "₂", "", REPLACEMENT, REPLACEMENT]
    assert stream.feed(ord("A")) + stream.close() == REPLACEMENT + "A"
    # 🙂's 4 bytes with hold_tokens=2: released unfinished after 2 tokens, and the
    # next window starts after them (its last 2 bytes do not join them later).
    stream = TextStream(ByteTokenizer(), 100, hold_tokens=2)
    chunks = [stream.feed(i) for i in [*"🙂".encode(), ord("A")]] + [stream.close()]
    assert chunks == ["", REPLACEMENT, "", REPLACEMENT, REPLACEMENT + "A", ""]


def test_the_cost_per_token_does_not_grow_with_the_row():
    tokenizer = CountingTokenizer()
    ids = tokenizer.encode(TEXT * 30)  # about 6,000 tokens
    text = TextStream(tokenizer, len(ids) + 1, stop=["never there", "nor this"])
    out = "".join(text.feed(i) for i in ids)
    assert out == TEXT * 30
    assert max(tokenizer.sizes) <= 8  # ids per decode: a window, never the row
    assert len(tokenizer.sizes) <= 2 * len(ids)


def test_serving_uses_the_tokenizers_text_stream():
    """One implementation: the name serving exported before the merge is the same class."""
    from keras_gpt.serving import IncrementalText
    from keras_gpt.serving import TextStream as ServingTextStream

    assert IncrementalText is TextStream and ServingTextStream is TextStream
