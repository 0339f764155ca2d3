"""Token ids to text, one token at a time: whole UTF-8 characters and stop strings, at a
cost per token that does not grow with the row.

A generated row (served by `keras-gpt serve`, or streamed to the terminal by
`keras-gpt generate`) is decoded as it grows. `TextStream` does it as Hugging
Face `tokenizers`' `DecodeStream` and vLLM's detokenizer do:

- Only a window of ids is decoded: the ids not released yet, after those
  released last as left context (for tokenizers whose decoding of a token
  depends on its neighbour). The new text is the window's decoding minus
  that of its context. 2,000 tokens cost 2,000 decodes of a few ids each,
  not of up to 2,000.
- A token that ends inside a UTF-8 character decodes to a trailing U+FFFD
  (the tokenizers decode an unfinished sequence so): that character is held
  back until a later token completes it. Text before it is released as soon
  as later tokens cannot change it (so invalid bytes in front of a character
  that is still arriving do not wait for it). A character still unfinished
  after `hold_tokens` tokens of its own is released as U+FFFD and the next
  window starts after it: its bytes were invalid, no later byte joins them,
  and a broken sequence never stops the stream.
- Text that could be the start of a stop string is held back until it either
  becomes the stop string (the row ends before it) or stops matching. Stop
  strings are searched in the text not released yet only, which is at most
  the longest stop string plus one token's text.

For valid UTF-8 the released text is the tokenizer's decoding of the row, up
to the stop string; for invalid bytes, it is that decoding too unless an
unfinished character was released as U+FFFD before a byte that would have
completed it arrived (`tokenizer.decode` of the whole row would then join them).
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
        hold_tokens: most tokens an unfinished UTF-8 character is held back for
            before it is released as U+FFFD (4: the longest UTF-8 character is 4
            bytes, so byte-level tokens always complete one within 4).

    Example:
    >>> from keras_gpt.tokenizers import ByteTokenizer
    >>> stream = TextStream(ByteTokenizer(), max_tokens=8, stop=["\\n"])
    >>> stream.feed(104), stream.feed(0xC3), stream.feed(0xA9), stream.feed(10)
    ('h', '', 'é', '')
    >>> stream.finish_reason, stream.text
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
        if hold_tokens < 1:
            raise ValueError(f"hold_tokens must be >= 1, got {hold_tokens}.")
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
        self._context = (0, 0, "")  # (_prefix, _read, decoding of ids[_prefix:_read])

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
            return self._end("stop")
        self.ids.append(int(token_id))
        self._advance(final=False)
        cut = self._stop_at()
        if cut is not None:
            self._pending = self._pending[:cut]
            return self._end("stop", flush=False)
        if self.tokens >= self.max_tokens:
            return self._end("length")
        return self._release(len(self._pending) - self._partial_stop())

    def close(self, reason: str = "length") -> str:
        """Ends the row (e.g. generation stopped); returns the text still held back.

        Args:
            reason: the finish reason, if the row had not ended yet.
        """
        if self.finished:
            return ""
        return self._end(reason)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids) if ids else ""

    def _context_text(self) -> str:
        """The decoding of the window's context (decoded once per context)."""
        if self._context[:2] != (self._prefix, self._read):
            text = self._decode(self.ids[self._prefix : self._read])
            self._context = (self._prefix, self._read, text)
        return self._context[2]

    def _take(self, end: int, text: str, context: str) -> None:
        """Moves `text` (the decoding of ids[_prefix:end], which begins with `context`,
        that of the window's context) into `_pending`; ids before `end` are read."""
        self._pending += text[len(context) :]
        # The read ids become the next window's left context.
        self._prefix, self._read = self._read, end

    def _advance(self, final: bool) -> None:
        """Moves the decoded text of the ids after `_read` into `_pending`, but for an
        unfinished character at their end."""
        if self._read == len(self.ids):
            return
        context = self._context_text()
        window = self._decode(self.ids[self._prefix :])
        if final or not window.endswith(REPLACEMENT):
            if len(window) > len(context) or final:
                self._take(len(self.ids), window, context)
            return  # else: a token that decodes to nothing on its own yet
        # An unfinished character at the end: release what is in front of it, i.e.
        # the longest run of unread ids whose text no later id changes (a proper
        # prefix of the window's). At most hold_tokens - 1 short decodes.
        for end in range(len(self.ids) - 1, self._read, -1):
            text = self._decode(self.ids[self._prefix : end])
            if len(context) < len(text) < len(window) and window.startswith(text):
                self._take(end, text, context)
                context = self._context_text()
                window = self._decode(self.ids[self._prefix :])
                break
        if len(self.ids) - self._read >= self.hold_tokens:
            # Held long enough: the bytes were invalid. Release them as U+FFFD, and
            # start the next window after them, so no later byte completes them.
            self._take(len(self.ids), window, context)
            self._prefix = self._read

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
