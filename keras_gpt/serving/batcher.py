"""The batcher: one worker thread decoding the requests in flight together.

Keras models are not thread-safe, so one thread owns the model. Requests wait
in a queue; whenever the worker is free it takes the waiting requests, oldest
first, up to `max_batch` rows, and decodes them in one `GPT.generate` call:
ragged prompts, one compiled step for the whole batch. Requests that arrive
meanwhile form the next batch.

Sampler settings are data (`keras_gpt.generation.samplers.RowSampler`): each
row's temperature, top-k, top-p and seed are inputs of the compiled step, so
greedy and sampled requests with any settings share a batch, and no value
compiles a new program. What a batch compiles depends only on its shapes and
its mode: all greedy, sampled without top-k/top-p, or with them.

Why a request's result does not depend on its neighbours:

- Greedy rows: `generate` decodes every row on its own (ragged prompts are
  right-padded and masked), so a row equals `model.generate` on its prompt
  alone. A batch decodes as many tokens as its longest-asking row; each row's
  own `max_tokens` and stop strings are applied by its `TextStream`.
- Sampled rows: a request's choice i draws the noise of row i of a
  `generate` call seeded with the request's `seed` (or a seed drawn for the
  request when it gives none), wherever it sits in the batch. So a seeded
  request gives the same choices alone or under load, equal to
  `model.generate(prompts × n, seed=seed, ...)`.

Batch sizes are rounded up to a power of two (capped at `max_batch`) by
repeating the first prompt, so a server compiles a handful of programs, not
one per batch size. Streaming, stop strings and time limits use `generate`'s `callback`:
text is released at every step, and when every row of a batch has ended (its
own `max_tokens`, a stop string, its time limit, or a client that went away)
the callback ends the call early. Without them the whole decoding loop runs
as one compiled program (JAX, TensorFlow), which is faster but cannot stop
for a row that is no longer wanted. (The server gives every request a time
limit unless `--request-timeout 0`, so its batches always decode stepwise.)
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np

from keras_gpt.generation.engine import compiled_programs
from keras_gpt.generation.samplers import RowSampler
from keras_gpt.serving.metrics import Metrics
from keras_gpt.serving.params import Sampling
from keras_gpt.tokenizers import TextStream

logger = logging.getLogger("keras_gpt.serving")

#: Seeds for requests that give none.
_seeds = np.random.default_rng()


class QueueFull(Exception):
    """The queue holds `max_queue` rows: the request is refused (HTTP 429)."""


class ShuttingDown(QueueFull):
    """The server is draining for shutdown: no new request is admitted (HTTP 503)."""


class _BatchDone(Exception):
    """Raised from the streaming callback when every row of the batch has ended."""


@dataclass
class Choice:
    """One generated row of a request: choice `index` of the response."""

    index: int
    prompt_ids: list[int]
    text: TextStream


class Request:
    """A request's rows (prompts × n choices) and the channel back to its handler.

    The worker thread reports through `events`, an `asyncio.Queue` of the
    handler's event loop: `("text", index, text)`, `("end", index,
    finish_reason, tokens)` for each choice, or `("error", message, details)`
    with `details` the `status`, `code` and `type` of the `ApiError` to answer.

    Args:
        request_id: e.g. `"cmpl-..."`, for logs.
        choices: the rows to generate.
        sampling: the request's sampler settings.
        loop: the handler's event loop (`asyncio.get_running_loop()`).
        prompt_tokens: the request's prompt tokens (each prompt once), for `usage`.
        timeout: seconds the request may take from now (`None`: no limit); past
            it, the worker stops decoding its rows.
    """

    def __init__(
        self,
        request_id: str,
        choices: Sequence[Choice],
        sampling: Sampling,
        loop: asyncio.AbstractEventLoop,
        prompt_tokens: int = 0,
        timeout: float | None = None,
    ):
        self.id = request_id
        self.prompt_tokens = int(prompt_tokens)
        self.choices = list(choices)
        self.sampling = sampling
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self.started = time.monotonic()
        self.deadline = None if timeout is None else self.started + float(timeout)
        self.first_text_at: float | None = None  # when its first text was emitted
        # The seed of its rows' noise (see the module docstring).
        self.seed = int(sampling.seed if sampling.seed is not None else _seeds.integers(1 << 30))

    def emit(self, *event) -> None:
        """Sends an event to the handler (called from the worker thread)."""
        if self.cancelled:
            return
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop has closed (shutdown): nobody is listening
            self.cancelled = True

    def fail(self, message: str, status: int = 500, code=None, type="server_error") -> None:
        """Ends the request with an error event (called from either thread)."""
        self.emit("error", message, {"status": status, "code": code, "type": type})
        self.cancelled = True

    def time_left(self) -> float | None:
        """Seconds until the deadline (negative past it), or None without one."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    @property
    def finished(self) -> bool:
        """Whether every choice has ended, the client went away, or time ran out."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            return True
        return self.cancelled or all(c.text.finished for c in self.choices)


class Batcher:
    """Queues requests and decodes compatible ones together in a worker thread.

    Args:
        model: a `keras_gpt.GPT` (only the worker thread calls it).
        max_batch: most rows decoded in one `generate` call.
        max_queue: most rows waiting; `submit` raises `QueueFull` beyond.
        stop_token_ids: ids that end every row (the tokenizer's end of text).
        batch_wait: seconds the worker, once free, waits for more requests
            before starting a batch that is not full. Clients that send their
            next request when the last one returns arrive a few milliseconds
            apart; without the wait, one of them starts a batch of one and
            the others the next batch, and they stay out of step.
        metrics: a `keras_gpt.serving.metrics.Metrics` told of each token count
            and first token (optional).

    Example:
    >>> batcher = Batcher(model, max_batch=16, max_queue=256)
    >>> batcher.start()
    >>> batcher.submit(request)        # then await request.events
    >>> batcher.stats["peak_batch"]
    """

    def __init__(
        self,
        model: keras.Model,
        max_batch: int = 16,
        max_queue: int = 256,
        stop_token_ids: Sequence[int] = (),
        batch_wait: float = 0.01,
        metrics: Metrics | None = None,
    ):
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be >= 1, got {max_batch}, {max_queue}.")
        self.model = model
        self.max_batch = int(max_batch)
        self.max_queue = int(max_queue)
        self.stop_token_ids = list(stop_token_ids)
        self.batch_wait = float(batch_wait)
        self._waiting: deque[Request] = deque()
        self._waiting_rows = 0
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._draining = False
        self._batch: list[Request] = []
        self.metrics = metrics
        self._stats = dict(
            requests=0, batches=0, rows_decoded=0, peak_batch=0, decoding=0, tokens=0, programs=0
        )

    # -- called from the event loop ----------------------------------------------

    def start(self) -> None:
        """Starts the worker thread."""
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="keras_gpt-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the worker after its current batch; waiting requests are dropped."""
        with self._condition:
            self._stopping = True
            for request in self._waiting:
                request.fail("the server is shutting down", 503, "shutting_down")
            self._waiting.clear()
            self._waiting_rows = 0
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def draining(self) -> bool:
        """Whether `drain` has been called: new requests are refused."""
        return self._draining

    def drain(self) -> None:
        """Stops admitting requests (`submit` raises `ShuttingDown`); queued and
        decoding ones go on."""
        with self._condition:
            self._draining = True

    def busy(self) -> bool:
        """Whether any request is waiting or being decoded."""
        with self._condition:
            return bool(self._waiting) or any(not r.finished for r in self._batch)

    def abort(self, message: str) -> int:
        """Ends every waiting and decoding request with HTTP 503 and `message`;
        returns how many there were (the rest of a shutdown's grace period ran out)."""
        with self._condition:
            requests = list(self._waiting) + [r for r in self._batch if not r.finished]
            self._waiting.clear()
            self._waiting_rows = 0
        for request in requests:
            request.fail(message, 503, "shutting_down")
        return len(requests)

    def submit(self, request: Request) -> None:
        """Queues `request`; raises `QueueFull` if its rows do not fit in the queue.

        Args:
            request: at most `max_batch` rows.
        """
        rows = len(request.choices)
        if rows > self.max_batch:
            raise ValueError(f"a request may have at most {self.max_batch} rows, got {rows}")
        with self._condition:
            if self._stopping or self._draining:
                raise ShuttingDown("the server is shutting down")
            if self._waiting_rows + rows > self.max_queue:
                raise QueueFull(
                    f"{self._waiting_rows} rows are waiting (the limit is {self.max_queue})"
                )
            self._waiting.append(request)
            self._waiting_rows += rows
            self._stats["requests"] += 1
            self._condition.notify()

    def cancel(self, request: Request) -> None:
        """Drops `request` (its client went away): out of the queue at once, and its
        rows are no longer decoded for; a batch whose rows have all ended stops."""
        request.cancelled = True
        with self._condition:
            if request in self._waiting:
                self._waiting.remove(request)
                self._waiting_rows -= len(request.choices)

    @property
    def stats(self) -> dict:
        """Counters: `requests`, `batches`, `rows_decoded`, `peak_batch` (most real rows
        in one batch), `decoding` (rows in the current batch), `waiting` (rows queued),
        `tokens` (generated), `programs` (compiled by the model's generation engine,
        counted at each batch's first step, before it sends any text), `max_batch`, `max_queue`."""
        with self._condition:
            return dict(
                self._stats,
                waiting=self._waiting_rows,
                max_batch=self.max_batch,
                max_queue=self.max_queue,
            )

    # -- the worker thread ---------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._waiting and not self._stopping:
                    self._condition.wait()
                deadline = time.monotonic() + self.batch_wait
                while self._waiting_rows < self.max_batch and not self._stopping:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._condition.wait(left)
                if self._stopping:
                    return
                if not self._waiting:  # cancelled while we waited
                    continue
                batch = self._take()
                rows = sum(len(r.choices) for r in batch)
                self._stats["batches"] += 1
                self._stats["rows_decoded"] += rows
                self._stats["decoding"] = rows
                self._stats["peak_batch"] = max(self._stats["peak_batch"], rows)
                self._batch = batch
            try:
                self._decode(batch)
            except Exception as error:  # a bug, not a bad request: those never get here
                logger.exception("batch of %d requests failed", len(batch))
                for request in batch:
                    if not request.finished:
                        request.fail(f"generation failed: {error}")
            finally:
                with self._condition:
                    self._stats["decoding"] = 0
                    self._batch = []

    def _count_programs(self) -> int:
        """Updates `stats["programs"]` (the engine's compiled programs)."""
        programs = len(compiled_programs(self.model))
        with self._condition:
            self._stats["programs"] = programs
        return programs

    def _take(self) -> list[Request]:
        """The waiting requests, oldest first, that fit in one batch."""
        batch, rows = [], 0
        for request in list(self._waiting):
            size = len(request.choices)
            if rows + size <= self.max_batch:
                batch.append(request)
                rows += size
                self._waiting.remove(request)
                self._waiting_rows -= size
        return batch

    def _batch_size(self, rows: int) -> int:
        """`rows` rounded up to a power of two, at most `max_batch`: few compiled shapes."""
        return min(1 << (rows - 1).bit_length(), self.max_batch)

    def _decode(self, batch: list[Request]) -> None:
        rows = [(request, choice) for request in batch for choice in request.choices]
        prompts = [choice.prompt_ids for _, choice in rows]
        padding = self._batch_size(len(rows)) - len(rows)
        prompts += [prompts[0]] * padding
        sampler = RowSampler(
            temperature=[r.sampling.temperature for r, _ in rows] + [0.0] * padding,
            top_k=[r.sampling.top_k for r, _ in rows] + [None] * padding,
            top_p=[r.sampling.top_p for r, _ in rows] + [None] * padding,
            seeds=[r.seed for r, _ in rows] + [0] * padding,
            sample_index=[c.index for _, c in rows] + [0] * padding,
        )
        stepwise = (
            any(r.sampling.stream or r.deadline is not None for r in batch)
            or any(c.text.stop for _, c in rows)
            or self._draining
        )

        def feed(request: Request, choice: Choice, token: int) -> None:
            if request.cancelled or choice.text.finished:
                return
            text = choice.text.feed(token)
            if text:
                if request.first_text_at is None:
                    request.first_text_at = time.monotonic()
                request.emit("text", choice.index, text)
            if choice.text.finished:
                self._end(request, choice)

        def on_step(token_ids: np.ndarray, is_new: np.ndarray) -> None:
            if not counted:  # the programs are compiled: count them before any text goes out
                counted.append(self._count_programs())
            for r, (request, choice) in enumerate(rows):
                if is_new[r]:
                    feed(request, choice, int(token_ids[r]))
            if all(request.finished for request in batch):
                raise _BatchDone

        counted = []
        try:
            out, lengths = self.model.generate(
                prompts,
                max_new_tokens=max(c.text.max_tokens for _, c in rows),
                stop_token_ids=self.stop_token_ids or None,
                sampler=sampler,
                seed=0,  # unused: every row has its own
                return_lengths=True,
                callback=on_step if stepwise else None,
            )
        except _BatchDone:
            return
        if not counted:
            self._count_programs()
        for r, (request, choice) in enumerate(rows):
            if not stepwise:  # the callback has fed the stepwise rows already
                for token in out[r, len(choice.prompt_ids) : lengths[r]]:
                    feed(request, choice, int(token))
            if not (request.cancelled or choice.text.finished):
                text = choice.text.close("length")
                if text:
                    request.emit("text", choice.index, text)
                self._end(request, choice)

    def _end(self, request: Request, choice: Choice) -> None:
        with self._condition:
            self._stats["tokens"] += choice.text.tokens
        if self.metrics is not None:
            self.metrics.generated(choice.text.tokens)
        request.emit("end", choice.index, choice.text.finish_reason, choice.text.tokens)
