"""The batcher: one worker thread decoding the requests in flight together.

Keras models are not thread-safe, so one thread owns the model. Requests wait
in a queue; the worker moves them into a `keras_gpt.generation.SlotEngine`, a
fixed set of `max_batch` slots in one preallocated KV cache, and steps it:
every step admits waiting rows into free slots (their prompts prefilled in
bucketed lengths), decodes one token for every slot, each at its own
position, streams each row's new text and frees the slots whose row ended
(`max_tokens`, a stop string, end of text, its time limit, or a client that
went away). That is continuous batching (`scheduler="continuous"`, the
default): a short request that arrives while a long one decodes starts at
the next step instead of waiting for it. `scheduler="static"` is the
batcher's earlier admission policy, kept to compare against: rows are
admitted as a group only when every slot is free, so a request that misses a
batch waits for the whole batch.

Sampler settings are data (`keras_gpt.generation.samplers.RowSampler`): each
slot's temperature, top-k, top-p and seed are inputs of the compiled step, so
greedy and sampled requests with any settings share a step, and no value
compiles a new program. The engine compiles a fixed set of programs (a
prefill per prompt bucket, a decode step per sampler mode and lane count:
see `SlotEngine`), all of them at start-up with `warmup()` (`keras-gpt
serve --warmup`, the default).

Why a request's result does not depend on its neighbours:

- Greedy rows: every slot attends only to its own row of the cache, so a row
  equals `model.generate` on its prompt alone.
- Sampled rows: a request's choice i draws the noise of row i of a
  `generate` call seeded with the request's `seed` (or a seed drawn for the
  request when it gives none), at each absolute position, wherever and
  whenever it decodes. So a seeded request gives the same choices alone or
  under load, equal to `model.generate(prompts × n, seed=seed, ...)`.
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
from keras_gpt.generation.slots import SCHEDULERS, SlotEngine, SlotEvent, SlotRequest
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


@dataclass
class Choice:
    """One generated row of a request: choice `index` of the response."""

    index: int
    prompt_ids: list[int]
    text: TextStream  #: the row's text as it is released
    slot_request: SlotRequest | None = None  #: its row in the engine, once admitted


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
    """Queues requests and decodes them in a worker thread with a `SlotEngine`.

    Args:
        model: a `keras_gpt.GPT` (only the worker thread calls it).
        max_batch: the engine's slots: most rows decoded together.
        max_queue: most rows waiting; `submit` raises `QueueFull` beyond.
        stop_token_ids: ids that end every row (the tokenizer's end of text).
        batch_wait: seconds the worker, when nothing is decoding, waits for more
            requests before admitting fewer than `max_batch` rows. Clients that
            send their next request when the last one returns arrive a few
            milliseconds apart; with the static scheduler, without the wait,
            one of them starts a batch of one and the others the next batch.
        metrics: a `keras_gpt.serving.metrics.Metrics` told of each token count
            and first token (optional).
        scheduler: `"continuous"` (rows join free slots at every step) or
            `"static"` (a group is admitted only when every slot is free).

    Example:
    >>> batcher = Batcher(model, max_batch=4, max_queue=16)
    >>> batcher.start()       # (`warmup()` first compiles every program); then submit
    >>> batcher.stats["scheduler"], batcher.stats["decoding"]
    ('continuous', 0)
    >>> batcher.stop()
    """

    def __init__(
        self,
        model: keras.Model,
        max_batch: int = 16,
        max_queue: int = 256,
        stop_token_ids: Sequence[int] = (),
        batch_wait: float = 0.01,
        metrics: Metrics | None = None,
        scheduler: str = "continuous",
    ):
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be >= 1, got {max_batch}, {max_queue}.")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}.")
        self.model = model
        self.max_batch = int(max_batch)
        self.max_queue = int(max_queue)
        self.stop_token_ids = list(stop_token_ids)
        self.batch_wait = float(batch_wait)
        self.scheduler = scheduler
        self.engine = SlotEngine(
            model, max_batch=self.max_batch, stop_token_ids=self.stop_token_ids, scheduler=scheduler
        )
        self._waiting: deque[Request] = deque()
        self._waiting_rows = 0
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._draining = False
        self._batch: list[Request] = []  # requests with rows in the engine
        self.metrics = metrics
        self._stats = dict(
            requests=0,
            batches=0,
            rows_decoded=0,
            peak_batch=0,
            decoding=0,
            tokens=0,
            decoded=0,
            programs=0,
        )

    # -- called from the event loop ----------------------------------------------

    def warmup(self) -> tuple[int, float]:
        """Compiles every program the engine can run (call it before `start`);
        returns (programs compiled, seconds taken)."""
        started = time.monotonic()
        compiled = self.engine.warmup()
        self._count_programs()
        return compiled, time.monotonic() - started

    def start(self) -> None:
        """Starts the worker thread."""
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="keras_gpt-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the worker after its current step; waiting requests are dropped."""
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
            self._condition.notify()
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
        """Drops `request` (its client went away): out of the queue at once; its rows
        in the engine end at the worker's next step, which frees their slots."""
        request.cancelled = True
        with self._condition:
            if request in self._waiting:
                self._waiting.remove(request)
                self._waiting_rows -= len(request.choices)
            self._condition.notify()

    @property
    def stats(self) -> dict:
        """Counters: `requests`, `batches` (steps that admitted rows), `rows_decoded`
        (rows admitted), `peak_batch` (most rows decoding at once), `decoding` (rows
        decoding now), `waiting` (rows queued), `tokens` (generated, in the responses),
        `decoded` (tokens the engine decoded, for rows that were abandoned too), `programs`
        (compiled by the slot engine and the model's generation engine), `max_batch`,
        `max_queue`, `scheduler`."""
        with self._condition:
            return dict(
                self._stats,
                waiting=self._waiting_rows,
                max_batch=self.max_batch,
                max_queue=self.max_queue,
                scheduler=self.scheduler,
            )

    # -- the worker thread ---------------------------------------------------------

    def _count_programs(self) -> int:
        """Updates `stats["programs"]` (the engines' compiled programs)."""
        programs = len(self.engine.program_keys) + len(compiled_programs(self.model))
        with self._condition:
            self._stats["programs"] = programs
        return programs

    def _run(self) -> None:
        engine = self.engine
        while True:
            with self._condition:
                while not self._waiting and not engine.busy and not self._stopping:
                    self._condition.wait()
                if not engine.busy and self._waiting:
                    # Nothing decoding: give simultaneous clients a moment to arrive.
                    deadline = time.monotonic() + self.batch_wait
                    while self._waiting_rows < self.max_batch and not self._stopping:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._condition.wait(left)
                if self._stopping:
                    return
                admitted = self._take()
            try:
                for request in admitted:
                    for choice in request.choices:
                        choice.slot_request = engine.submit(self._slot_request(request, choice))
                self._retire()
                events = engine.step()
                if admitted:
                    # Counted before the new rows' text goes out.
                    self._count_programs()
                with self._condition:
                    self._stats["decoded"] += sum(e.token is not None for e in events)
                for event in events:
                    self._deliver(event)
            except Exception as error:  # a bug, not a bad request: those never get here
                logger.exception("a decoding step failed")
                self._fail_all(error)
            with self._condition:
                # A request leaves the list once it has ended and none of its rows
                # decodes any more (`_retire` ends those first).
                self._batch = [r for r in self._batch if not r.finished or _decoding(r)]
                self._stats["decoding"] = engine.active
                self._stats["peak_batch"] = max(self._stats["peak_batch"], engine.active)

    def _fail_all(self, error: Exception) -> None:
        """Ends every request in the engine with a 500 and frees their slots."""
        for request in self._batch:
            if not request.finished:
                request.fail(f"generation failed: {error}")
            for choice in request.choices:
                if choice.slot_request is not None:
                    self.engine.cancel(choice.slot_request)
        try:
            self.engine.step()  # frees the cancelled slots
        except Exception:
            logger.exception("the engine could not free its slots")

    def _take(self) -> list[Request]:
        """The waiting requests whose rows fit in free slots (oldest first, whole
        requests); with the static scheduler, only when no row is decoding."""
        engine = self.engine
        if self.scheduler == "static" and engine.busy:
            return []
        free = self.max_batch - engine.active - engine.waiting
        taken = []
        while self._waiting and len(self._waiting[0].choices) <= free:
            request = self._waiting.popleft()
            rows = len(request.choices)
            self._waiting_rows -= rows
            free -= rows
            taken.append(request)
        if taken:
            self._batch.extend(taken)
            self._stats["batches"] += 1
            self._stats["rows_decoded"] += sum(len(r.choices) for r in taken)
        return taken

    def _slot_request(self, request: Request, choice: Choice) -> SlotRequest:
        sampling = request.sampling
        return SlotRequest(
            choice.prompt_ids,
            choice.text.max_tokens,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            seed=request.seed,
            sample_index=choice.index,
            deadline=request.deadline,
            data=(request, choice),
        )

    def _retire(self) -> None:
        """Ends the engine rows nobody waits for (the request ended: client gone, time
        limit, error): the next `step` frees their slots."""
        for request in self._batch:
            if request.finished:
                for choice in request.choices:
                    row = choice.slot_request
                    if row is not None and not row.finished:
                        self.engine.cancel(row)

    def _deliver(self, event: SlotEvent) -> None:
        request, choice = event.request.data
        if request.cancelled or choice.text.finished:
            return
        if event.token is not None:
            text = choice.text.feed(event.token)
            if text:
                if request.first_text_at is None:
                    request.first_text_at = time.monotonic()
                request.emit("text", choice.index, text)
        if event.finish_reason in ("length", "stop") and not choice.text.finished:
            text = choice.text.close(event.finish_reason)
            if text:
                request.emit("text", choice.index, text)
        if choice.text.finished:
            if event.finish_reason is None:  # a stop string: free the slot at the next step
                self.engine.cancel(event.request)
            self._end(request, choice)

    def _end(self, request: Request, choice: Choice) -> None:
        with self._condition:
            self._stats["tokens"] += choice.text.tokens
        if self.metrics is not None:
            self.metrics.generated(choice.text.tokens)
        request.emit("end", choice.index, choice.text.finish_reason, choice.text.tokens)


def _decoding(request: Request) -> bool:
    """Whether some row of `request` is still in the engine."""
    return any(c.slot_request is not None and not c.slot_request.finished for c in request.choices)
