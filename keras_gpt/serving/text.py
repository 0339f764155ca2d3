"""Incremental detokenization for serving: the text of a row, token by token, at a cost per
token that does not grow with the row.

`keras_gpt.tokenizers.TextStream` decodes the whole row at every token and
searches it for stop strings: simple, and exact, but 2,000 tokens cost
2,000 decodes of up to 2,000 ids. `IncrementalText` has the same interface and
gives the same text for valid UTF-8, as Hugging Face `tokenizers`'
`DecodeStream` and vLLM's detokenizer do it:

- Only a window of ids is decoded: the ids not decoded yet, after those of the
  previous step as left context (for tokenizers whose decoding of a token
  depends on its neighbour). The new text is the window's decoding minus that
  of its context.
- A token that ends inside a UTF-8 character decodes to a trailing U+FFFD: its
  text is held back until a later token completes the character, for at most
  `hold_tokens` tokens; after that the U+FFFD is released (the bytes were
  invalid), so a broken sequence never stops the stream.
- Stop strings are searched in the text not released yet only, which is at most
  the longest stop string plus one token's text: text that could begin a stop
  string is held back until it either becomes one (the row ends before it) or
  stops matching.
"""

from __future__ import annotations

from collections.abc import Sequence

from keras_gpt.tokenizers import Tokenizer

REPLACEMENT = "\ufffd"


class IncrementalText:
    """The text of one generated row, fed token by token (a drop-in for `TextStream`).

    Args:
        tokenizer: any keras_gpt tokenizer (`decode`).
        max_tokens: the row ends with finish reason `"length"` after this many tokens.
        stop: strings that end the row (not included in its text).
        stop_token_ids: ids that end the row (not included in its text).
        hold_tokens: most tokens a partial UTF-8 character is held back for
            before it is released as U+FFFD.

    Example:
    >>> text = IncrementalText(tokenizer, max_tokens=8, stop=["\\n"])   # bytes
    >>> text.feed(104), text.feed(0xC3), text.feed(0xA9), text.feed(10)
    ('h', '', 'é', '')
    >>> text.finish_reason, text.text
    ('stop', 'hé')
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        max_tokens: int,
        stop: Sequence[str] = (),
        stop_token_ids: Sequence[int] = (),
        hold_tokens: int = 4,
    ):
        self.tokenizer = tokenizer
        self.max_tokens = int(max_tokens)
        self.stop = [s for s in stop if s]
        self.stop_token_ids = set(int(i) for i in stop_token_ids)
        self.hold_tokens = int(hold_tokens)
        self.ids: list[int] = []
        self.tokens = 0  #: tokens generated, stop tokens included (usage counts them)
        self.text = ""  #: the text released so far
        self.finish_reason: str | None = None
        self._prefix = 0  # ids[_prefix:_read] is the context of the next window
        self._read = 0  # ids before this are in `text` or `_pending`
        self._pending = ""  # decoded, not released (it may begin a stop string)

    @property
    def finished(self) -> bool:
        """Whether the row has ended (`finish_reason` is set)."""
        return self.finish_reason is not None

    def feed(self, token_id: int) -> str:
        """Adds one generated token; returns the text it releases (may be empty)."""
        if self.finished:
            return ""
        self.tokens += 1
        if int(token_id) in self.stop_token_ids:
            return self._end("stop")
        self.ids.append(int(token_id))
        self._advance(final=False)
        cut = self._stop_at()
        if cut is not None:
            self._pending = self._pending[:cut]
            return self._end("stop", flush=False)
        if self.tokens >= self.max_tokens:
            return self._end("length")
        safe = len(self._pending) - self._partial_stop()
        return self._release(safe)

    def close(self, reason: str = "length") -> str:
        """Ends the row (e.g. generation stopped); returns the text still held back."""
        if self.finished:
            return ""
        return self._end(reason)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids) if ids else ""

    def _advance(self, final: bool) -> None:
        """Moves the decoded text of the ids after `_read` into `_pending`."""
        if self._read == len(self.ids):
            return
        before = self._decode(self.ids[self._prefix : self._read])
        window = self._decode(self.ids[self._prefix :])
        partial = window.endswith(REPLACEMENT) and not final
        if partial and len(self.ids) - self._read < self.hold_tokens:
            return  # wait for the rest of the character
        new = window[len(before) :]
        if not new and not final:
            return  # nothing yet (a token that decodes to nothing on its own)
        self._pending += new
        # The released ids become the next window's left context.
        self._prefix, self._read = self._read, len(self.ids)

    def _end(self, reason: str, flush: bool = True) -> str:
        if flush:
            self._advance(final=True)
        self.finish_reason = reason
        return self._release(len(self._pending))

    def _release(self, size: int) -> str:
        out, self._pending = self._pending[:size], self._pending[size:]
        self.text += out
        return out

    def _stop_at(self) -> int | None:
        """Where the earliest stop string starts in the unreleased text, if one is there."""
        hits = [i for i in (self._pending.find(s) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _partial_stop(self) -> int:
        """Length of the longest end of the unreleased text that begins a stop string."""
        text, longest = self._pending, 0
        for s in self.stop:
            for size in range(min(len(s) - 1, len(text)), longest, -1):
                if text.endswith(s[:size]):
                    longest = size
                    break
        return longest
