"""Token ids to text, one token at a time: whole UTF-8 characters and stop strings.

A generated row (served, or streamed to the terminal by `keras-gpt generate`) is
decoded as it grows. Two things keep the streamed text equal
to the text of the finished row:

- Text is released only up to its last whole character: the tokenizers decode
  an unfinished UTF-8 sequence (a byte-level token holding part of a
  character) as U+FFFD, so trailing U+FFFD is held back until the next token
  completes the character, or the row ends (then it was really invalid).
- Text that could be the start of a stop string is held back until it either
  becomes the stop string (the row ends before it) or stops matching.
"""

from __future__ import annotations

from collections.abc import Sequence

from keras_gpt.tokenizers.tokenizer import Tokenizer

REPLACEMENT = "\ufffd"


class TextStream:
    """The text of one generated row, fed token by token.

    Args:
        tokenizer: any keras_gpt tokenizer (`decode`).
        max_tokens: the row ends with finish reason `"length"` after this many tokens.
        stop: strings that end the row (not included in its text).
        stop_token_ids: ids that end the row (not included in its text).

    Example:
    >>> from keras_gpt.tokenizers import ByteTokenizer
    >>> stream = TextStream(ByteTokenizer(), max_tokens=8, stop=["\\n"])
    >>> stream.feed(104), stream.feed(105), stream.feed(10)
    ('h', 'i', '')
    >>> stream.finish_reason, stream.text
    ('stop', 'hi')
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        max_tokens: int,
        stop: Sequence[str] = (),
        stop_token_ids: Sequence[int] = (),
    ):
        self.tokenizer = tokenizer
        self.max_tokens = int(max_tokens)
        self.stop = [s for s in stop if s]
        self.stop_token_ids = set(int(i) for i in stop_token_ids)
        self.ids: list[int] = []
        self.tokens = 0  #: tokens generated, stop tokens included (usage counts them)
        self.text = ""  #: the text released so far
        self.finish_reason: str | None = None

    @property
    def finished(self) -> bool:
        """Whether the row has ended (`finish_reason` is set)."""
        return self.finish_reason is not None

    def feed(self, token_id: int) -> str:
        """Adds one generated token; returns the text it releases (may be empty).

        Args:
            token_id: the next generated id.

        Returns:
            New text; after the row ended, always `""`.
        """
        if self.finished:
            return ""
        self.tokens += 1
        if int(token_id) in self.stop_token_ids:
            return self._end("stop", self._decoded())
        self.ids.append(int(token_id))
        full = self._decoded()
        cut = self._stop_at(full)
        if cut is not None:
            return self._end("stop", full[:cut])
        if self.tokens >= self.max_tokens:
            return self._end("length", full)
        safe = len(full.rstrip(REPLACEMENT))
        safe -= self._partial_stop(full[:safe])
        return self._release(full[:safe])

    def close(self, reason: str = "length") -> str:
        """Ends the row (e.g. generation stopped); returns the text still held back.

        Args:
            reason: the finish reason, if the row had not ended yet.
        """
        if self.finished:
            return ""
        return self._end(reason, self._decoded())

    def _decoded(self) -> str:
        return self.tokenizer.decode(self.ids) if self.ids else ""

    def _end(self, reason: str, text: str) -> str:
        self.finish_reason = reason
        return self._release(text)

    def _release(self, text: str) -> str:
        # The released text only grows: held-back text is never shown early.
        if len(text) <= len(self.text):
            return ""
        new = text[len(self.text) :]
        self.text = text
        return new

    def _stop_at(self, full: str) -> int | None:
        """Where the earliest stop string starts in `full`, if one is there."""
        if not self.stop:
            return None
        # A stop string can only start in what has not been released yet.
        begin = len(self.text)
        hits = [i for i in (full.find(s, begin) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _partial_stop(self, text: str) -> int:
        """Length of the longest end of `text` that begins some stop string."""
        longest = 0
        for s in self.stop:
            for size in range(min(len(s) - 1, len(text)), longest, -1):
                if text.endswith(s[:size]):
                    longest = size
                    break
        return longest
