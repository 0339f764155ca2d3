"""`IncrementalText`: the served text of a row at a cost per token that does not grow with it."""

from __future__ import annotations

import numpy as np
import pytest

from keras_gpt.serving.text import REPLACEMENT, IncrementalText
from keras_gpt.tokenizers import ByteTokenizer, TextStream

pytestmark = pytest.mark.backend_independent

TEXT = "héllo wörld € 日本語 stop here. END more ünïcödé 🙂 text\n" * 3


class CountingTokenizer(ByteTokenizer):
    """A ByteTokenizer that records how many ids each `decode` call got."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def decode(self, ids):
        self.sizes.append(len(ids))
        return super().decode(ids)


def run(stream, ids):
    out = "".join(stream.feed(i) for i in ids) + stream.close()
    return out, stream.finish_reason, stream.tokens


@pytest.mark.parametrize("stop", [[], ["END"], ["\n"], ["ö", "€ 日"], ["here. E"]])
def test_the_same_text_as_decoding_the_whole_row(stop):
    """Slices of valid UTF-8 (ByteTokenizer: multi-byte characters span tokens), with
    stop strings, stop ids and max_tokens: what TextStream gives, text and reason."""
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode(TEXT)
    rng = np.random.default_rng(0)
    for _ in range(60):
        start = int(rng.integers(0, len(ids) - 1))
        while ids[start] & 0xC0 == 0x80:  # start on a character
            start += 1
        row = ids[start : start + int(rng.integers(1, 80))] + [256]
        max_tokens = int(rng.integers(1, 90))
        expected = run(TextStream(tokenizer, max_tokens, stop, [256]), row)
        assert run(IncrementalText(tokenizer, max_tokens, stop, [256]), row) == expected


def test_a_broken_character_is_released_as_replacement_after_a_few_tokens():
    text = IncrementalText(ByteTokenizer(), 100, hold_tokens=3)
    # 0xE2 0x82 starts a 3-byte character that never completes: continuation bytes follow.
    out = [text.feed(i) for i in [0xE2, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82]]
    assert out[:2] == ["", ""] and out[2] == "₂"  # E2 82 82 is U+2082
    assert out[3:5] == ["", ""] and REPLACEMENT in out[5]  # held 3 tokens at most
    assert text.feed(ord("A")) + text.close() == REPLACEMENT + "A"


def test_the_cost_per_token_does_not_grow_with_the_row():
    tokenizer = CountingTokenizer()
    ids = tokenizer.encode(TEXT * 30)  # about 6,000 tokens
    text = IncrementalText(tokenizer, len(ids) + 1, stop=["never there", "nor this"])
    out = "".join(text.feed(i) for i in ids)
    assert out == TEXT * 30
    assert max(tokenizer.sizes) <= 8  # ids per decode: a window, never the row
    assert len(tokenizer.sizes) <= 2 * len(ids)
