"""Continuous batching: a fixed set of slots decoding together from one preallocated KV cache.

`SlotEngine` owns a `(max_batch, ..., cache_length, ...)` key/value cache, one
row per slot, and a queue of `SlotRequest`s. Each `step()`:

1. ends the requests that were cancelled or ran past their deadline (their
   slots are free again at once);
2. admits waiting requests into free slots: a request's prompt is run in a
   one-row cache at a bucketed length (a power of two, at least 16), its first
   token is sampled, and the row is written into its slot of the shared cache,
   all in one compiled program per prompt bucket. With the `"static"` policy a
   group of requests is admitted only when every slot is free (the batcher's
   behaviour before continuous batching: nobody joins a running batch);
3. runs one compiled decode step for every slot, each at its own position
   (`GPT.call_with_cache` with a `(batch,)` cache index), and hands out each
   active slot's new token; a request that reached `max_new_tokens` or
   produced a stop id ends and frees its slot.

The compiled programs are a fixed set: one prefill per prompt bucket, and
decode steps: one all-greedy, and for each sampler mode (sampled; sampled
with top-k/top-p: see `RowSampler`) one per lane count (`sample_lanes`).
Sampler settings are inputs of those programs, so no value compiles
anything; `warmup()` compiles them all up front.

Every slot gets its greedy pick (an argmax); only the sampled slots, gathered
into a fixed number of lanes (the smallest lane count that holds them), get
noise over the vocabulary and, with top-k/top-p, a sort. Noise is the costly
part of a sampled step: its integer hash is 18 element-wise `%` per
vocabulary entry, which PyTorch does not vectorize. On PyTorch (bench-small,
16 slots, one thread), a step with one sampled slot beside a greedy one cost
1.37x the all-greedy step when every slot drew noise, 1.10x with one lane.

Why a request's tokens do not depend on its neighbours: every row of the cache
is only ever attended by its own slot (the causal mask is per row), greedy
picks are per row, and a sampled request draws the noise of its own seed,
choice index (`sample_index`) and absolute position: exactly the noise row
`sample_index` of `GPT.generate(prompts, seed=seed, ...)` draws there. So a
greedy request returns `model.generate`'s tokens on its prompt alone, and a
seeded one the same tokens alone or under load.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_gpt.backend import Tensor, compile_function, weight_values, write_at
from keras_gpt.generation.engine import MIN_BUCKET, CachedModel, bucket_length
from keras_gpt.generation.samplers import RowSampler
from keras_gpt.random import HASH_RANGE

SCHEDULERS = ("continuous", "static")

#: Sampler modes of the decode step (`RowSampler.mode`), cheapest first.
MODES = ("greedy", "sample", "filter")

#: Lane counts of the sampled decode steps grow by this factor (then `max_batch`).
LANE_GROWTH = 4


@dataclass(eq=False)
class SlotRequest:
    """One sequence to continue, and (filled in by the engine) what became of it.

    Args:
        prompt_ids: the prompt's token ids (at least one).
        max_new_tokens: most tokens to generate (≥ 1).
        temperature: 0 = greedy; else sample from softmax(logits / temperature).
        top_k: sample among the k most likely tokens (None or 0: all).
        top_p: sample within the nucleus of mass p (None or 1: all).
        seed: the sampling seed; with `sample_index`, the request draws the noise
            row `sample_index` of `GPT.generate(..., seed=seed)` draws.
        sample_index: this sequence's row in that seeded call (a choice index).
        deadline: `time.monotonic()` past which the request ends (`"timeout"`).
        data: anything the caller wants to find again on the request's events.

    Attributes:
        tokens: the ids generated so far.
        finish_reason: `None` while running; then `"length"`, `"stop"` (a stop
            id, which is kept in `tokens`), `"cancelled"` or `"timeout"`.
        slot: the slot it decodes in, or `None` (waiting or ended).
        cancelled: set by `SlotEngine.cancel`; the request ends at the next step.
    """

    prompt_ids: Sequence[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    sample_index: int = 0
    deadline: float | None = None
    data: Any = None
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    slot: int | None = None
    cancelled: bool = False

    @property
    def finished(self) -> bool:
        """Whether the request has ended (its `finish_reason` is set)."""
        return self.finish_reason is not None


@dataclass
class SlotEvent:
    """What one step did for one request: a new token, and whether it ended.

    `token` is `None` for a request that ended without one (cancelled, timed
    out); `finish_reason` is `None` while the request goes on.
    """

    request: SlotRequest
    token: int | None
    finish_reason: str | None


class SlotEngine:
    """Continuous batching for one model: slots in one KV cache, one compiled step for all.

    Args:
        model: a model that meets `keras_gpt.generation.CachedModel`, whose
            `call_with_cache` takes a `(batch,)` cache index (`keras_gpt.GPT`).
        max_batch: the number of slots (sequences decoded together).
        cache_length: positions per slot (default: the model's
            `max_sequence_length`); a request's prompt plus `max_new_tokens`
            must fit.
        stop_token_ids: ids that end every request (the stop id is kept).
        scheduler: `"continuous"` (waiting requests join at every step) or
            `"static"` (a group is admitted only when every slot is free).

    One thread drives an engine (Keras models are not thread-safe). The
    model's weights are read when the engine goes from idle to busy, so a
    weight update is seen by the next busy period.

    Example:
    >>> engine = SlotEngine(model, max_batch=4)
    >>> long = engine.submit(SlotRequest([1, 2, 3], max_new_tokens=20))
    >>> events = engine.step()                          # admits it, decodes a token
    >>> short = engine.submit(SlotRequest([4], max_new_tokens=2, temperature=0.8, seed=1))
    >>> while engine.busy:
    ...     for event in engine.step():                 # `short` joins `long` here
    ...         if event.finish_reason:
    ...             print(event.request is short, len(event.request.tokens), event.finish_reason)
    True 2 length
    False 20 length
    >>> long.tokens == model.generate([[1, 2, 3]], 20)[0, 3:].tolist()
    True
    """

    def __init__(
        self,
        model: CachedModel,
        max_batch: int = 8,
        cache_length: int | None = None,
        stop_token_ids: Iterable[int] = (),
        scheduler: str = "continuous",
    ):
        if scheduler not in SCHEDULERS:
            raise ValueError(f"`scheduler` must be one of {SCHEDULERS}, got {scheduler!r}.")
        if int(max_batch) < 1:
            raise ValueError(f"`max_batch` must be >= 1, got {max_batch}.")
        self.model = model
        self.max_batch = int(max_batch)
        self.cache_length = int(cache_length or model.max_sequence_length)
        if not 2 <= self.cache_length <= model.max_sequence_length:
            raise ValueError(
                f"`cache_length` must be in [2, {model.max_sequence_length}], got {cache_length}."
            )
        self.stop_token_ids = {int(i) for i in stop_token_ids}
        self.scheduler = scheduler
        self._programs: dict[tuple, Callable] = {}
        self._waiting: deque[SlotRequest] = deque()
        self._slots: list[SlotRequest | None] = [None] * self.max_batch
        self._cache = None
        self._values = None
        batch = self.max_batch
        self._tokens = np.zeros(batch, np.int32)  # the token each slot feeds next
        self._positions = np.zeros(batch, np.int32)  # where that token goes
        self._temperature = np.zeros(batch, np.float32)
        self._top_k = np.zeros(batch, np.int32)
        self._top_p = np.ones(batch, np.float32)
        self._seeds = np.zeros(batch, np.int32)
        self._index = np.zeros(batch, np.int32)

    # -- the queue ---------------------------------------------------------------------

    def submit(self, request: SlotRequest) -> SlotRequest:
        """Queues `request` (it is admitted by a later `step`); returns it.

        Raises:
            ValueError: an empty prompt, an id outside the vocabulary, or a
                prompt plus `max_new_tokens` longer than `cache_length`.
        """
        prompt = [int(i) for i in request.prompt_ids]
        if not prompt:
            raise ValueError("A request needs at least one prompt token.")
        if min(prompt) < 0 or max(prompt) >= self.model.vocabulary_size:
            raise ValueError(f"Prompt ids must be in [0, {self.model.vocabulary_size}).")
        if request.max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be >= 1, got {request.max_new_tokens}.")
        if len(prompt) + request.max_new_tokens > self.cache_length:
            raise ValueError(
                f"{len(prompt)} prompt tokens + max_new_tokens={request.max_new_tokens} "
                f"do not fit in the cache ({self.cache_length} positions)."
            )
        RowSampler([request.temperature], [request.top_k], [request.top_p])  # checks them
        request.prompt_ids = prompt
        self._waiting.append(request)
        return request

    def cancel(self, request: SlotRequest) -> None:
        """Ends `request` (`"cancelled"`): dropped from the queue now, or its slot freed
        at the next `step` (which reports it)."""
        request.cancelled = True
        if request in self._waiting:
            self._waiting.remove(request)
            request.finish_reason = "cancelled"

    @property
    def busy(self) -> bool:
        """Whether any request is waiting or decoding."""
        return bool(self._waiting) or self.active > 0

    @property
    def active(self) -> int:
        """The number of slots decoding a request."""
        return sum(r is not None for r in self._slots)

    @property
    def waiting(self) -> int:
        """The number of requests queued."""
        return len(self._waiting)

    @property
    def program_keys(self) -> list[tuple]:
        """Keys of the compiled programs: `("slot_prefill", prompt bucket)` and
        `("slot_decode", sampler mode, lanes)` (lanes 0 for `"greedy"`); a fixed
        set (`warmup` compiles them all)."""
        return list(self._programs)

    # -- the step loop -----------------------------------------------------------------

    def step(self) -> list[SlotEvent]:
        """Ends cancelled and timed-out requests, admits waiting ones, decodes one token
        for every slot; returns what happened to each request, in slot order."""
        events = []
        now = time.monotonic()
        for slot, request in enumerate(self._slots):
            if request is None:
                continue
            reason = "cancelled" if request.cancelled else None
            if reason is None and request.deadline is not None and now > request.deadline:
                reason = "timeout"
            if reason is not None:
                self._end(request, reason)
                events.append(SlotEvent(request, None, reason))
        if self.scheduler == "continuous" or self.active == 0:
            while self._waiting and self.active < self.max_batch:
                request = self._waiting.popleft()
                if request.deadline is not None and now > request.deadline:
                    request.finish_reason = "timeout"
                    events.append(SlotEvent(request, None, "timeout"))
                    continue
                events.append(self._admit(request))
        if self.active:
            events.extend(self._decode())
        return events

    def run(self, requests: Iterable[SlotRequest]) -> list[SlotRequest]:
        """Submits `requests` and steps until every one has ended; returns them.

        Example:
        >>> engine = SlotEngine(model, max_batch=2)
        >>> done = engine.run([SlotRequest([1, 2], 8), SlotRequest([3], 4, temperature=1.0)])
        >>> [len(r.tokens) for r in done]
        [8, 4]
        """
        requests = [self.submit(r) for r in requests]
        while any(not r.finished for r in requests):
            self.step()
        return requests

    def warmup(self, decode_runs: int | None = None) -> int:
        """Compiles every program this engine can run (each prompt bucket's prefill and
        each sampler mode's decode step) by running it; returns how many it compiled.

        Call it before submitting requests (its runs write into free slots only).

        Args:
            decode_runs: runs of each decode step. Default 1, except on PyTorch:
                24, because the JIT profiles a traced program's first runs
                (about 20, each ~100x slower on a small model) before it
                optimizes it.
        """
        if decode_runs is None:
            decode_runs = 24 if keras.backend.backend() == "torch" else 1
        before = len(self._programs)
        self._ensure_cache()
        free = [s for s, r in enumerate(self._slots) if r is None]
        if not free:
            return 0
        for bucket in self.prefill_buckets():
            self._run_prefill([0], bucket, free[0], SlotRequest([0], 1))
        saved = [a.copy() for a in self._slot_arrays()]
        for mode, lanes in self.decode_programs():
            self._temperature[free] = 0.0 if mode == "greedy" else 1.0
            self._top_k[free] = 1 if mode == "filter" else 0
            rows = np.resize(np.asarray(free, np.int32), lanes)  # free slots, repeated
            for _ in range(decode_runs):
                self._run_decode(mode, rows)
        for array, old in zip(self._slot_arrays(), saved):
            array[...] = old
        return len(self._programs) - before

    def sample_lanes(self) -> list[int]:
        """The lane counts the sampled decode steps are compiled for: 1, 4, 16, ...
        below `max_batch`, then `max_batch`. A step with n sampled slots runs the
        smallest lane count >= n (the others take their greedy pick only)."""
        lanes = [1]
        while lanes[-1] * LANE_GROWTH < self.max_batch:
            lanes.append(lanes[-1] * LANE_GROWTH)
        return lanes if lanes[-1] == self.max_batch else lanes + [self.max_batch]

    def decode_programs(self) -> list[tuple[str, int]]:
        """(sampler mode, lanes) of every decode step: `("greedy", 0)`, then each
        sampled mode at each of `sample_lanes()`."""
        sampled = [(mode, lanes) for mode in MODES[1:] for lanes in self.sample_lanes()]
        return [("greedy", 0)] + sampled

    def prefill_buckets(self) -> list[int]:
        """The prompt lengths prefill is compiled for: powers of two from 16, up to the
        cache length (the last bucket is the cache length itself)."""
        buckets, length = [], MIN_BUCKET
        while True:
            bucket = bucket_length(length, self.cache_length - 1, per_doubling=1)
            if buckets and bucket <= buckets[-1]:
                return buckets
            buckets.append(bucket)
            length = bucket + 1

    # -- inside ------------------------------------------------------------------------

    def _slot_arrays(self):
        return (
            self._tokens,
            self._positions,
            self._temperature,
            self._top_k,
            self._top_p,
            self._seeds,
            self._index,
        )

    def _ensure_cache(self) -> None:
        if self._cache is None:
            self._cache = self.model.init_cache(self.max_batch, self.cache_length)
        if self.active == 0:  # read the weights again between busy periods
            self._values = weight_values(
                self.model.variables, getattr(self.model, "tied_embedding", None)
            )

    def _admit(self, request: SlotRequest) -> SlotEvent:
        self._ensure_cache()
        slot = self._slots.index(None)
        prompt = request.prompt_ids
        bucket = bucket_length(len(prompt), self.cache_length - 1, per_doubling=1)
        token = self._run_prefill(prompt, bucket, slot, request)
        self._slots[slot] = request
        request.slot = slot
        self._temperature[slot] = request.temperature
        self._top_k[slot] = request.top_k or 0
        self._top_p[slot] = 1.0 if request.top_p is None else request.top_p
        self._seeds[slot] = int(request.seed) % HASH_RANGE
        self._index[slot] = request.sample_index
        self._positions[slot] = len(prompt)
        return self._produced(request, token)

    def _produced(self, request: SlotRequest, token: int) -> SlotEvent:
        """Records `token` for `request` and ends it if it is done."""
        request.tokens.append(token)
        slot = request.slot
        self._tokens[slot] = token
        reason = None
        if token in self.stop_token_ids:
            reason = "stop"
        elif len(request.tokens) >= request.max_new_tokens:
            reason = "length"
        if reason is not None:
            self._end(request, reason)
        return SlotEvent(request, token, reason)

    def _end(self, request: SlotRequest, reason: str) -> None:
        request.finish_reason = reason
        if request.slot is not None:
            slot = request.slot
            self._slots[slot] = None
            self._tokens[slot] = 0
            self._positions[slot] = 0
            self._temperature[slot] = 0.0
            self._top_k[slot] = 0
            self._top_p[slot] = 1.0
            request.slot = None

    def _program(self, key: tuple, build: Callable[[], Callable]) -> Callable:
        if key not in self._programs:
            # Argument 0 is the cache: its buffers are reused for the new cache.
            self._programs[key] = compile_function(build(), self.model.variables, donate=(0,))
        return self._programs[key]

    def _run_prefill(self, prompt, bucket: int, slot: int, request: SlotRequest) -> int:
        model, cache_length = self.model, self.cache_length
        template = _template("filter")  # samples greedy and sampled rows exactly

        def build():
            def prefill(cache, tokens, length, slot, *settings):
                row = model.init_cache(1, cache_length)
                logits, row = model.call_with_cache(tokens, row, 0)
                last = ops.cast(ops.take(logits[0], length - 1, axis=0), "float32")
                token = template.bind(settings)(ops.expand_dims(last, 0), 0, length)
                cache = [
                    write_at(c, ops.cast(r, c.dtype), slot, axis=0) for c, r in zip(cache, row)
                ]
                return token, cache

            return prefill

        run = self._program(("slot_prefill", bucket), build)
        tokens = np.zeros((1, bucket), np.int32)
        tokens[0, : len(prompt)] = prompt
        settings = (
            np.array([request.temperature], np.float32),
            np.array([request.top_k or 0], np.int32),
            np.array([1.0 if request.top_p is None else request.top_p], np.float32),
            np.array([int(request.seed) % HASH_RANGE], np.int32),
            np.array([request.sample_index], np.int32),
        )
        token, self._cache = run(
            self._values,
            self._cache,
            _int32(tokens),
            _int32(len(prompt)),
            _int32(slot),
            *(ops.convert_to_tensor(a) for a in settings),
        )
        return int(np.asarray(ops.convert_to_numpy(token))[0])

    def _mode(self) -> tuple[str, np.ndarray]:
        """The sampler mode of the next step and its lanes: the sampled slots, the
        first repeated up to the lane count (empty when every slot is greedy)."""
        rows = [s for s, r in enumerate(self._slots) if r is not None]
        mode = RowSampler(
            self._temperature[rows], self._top_k[rows], self._top_p[rows], seeds=[0] * len(rows)
        ).mode
        if mode == "greedy":
            return mode, np.zeros(0, np.int32)
        sampled = [s for s in rows if self._temperature[s] > 0]
        lanes = min(n for n in self.sample_lanes() if n >= len(sampled))
        padding = [sampled[0]] * (lanes - len(sampled))
        return mode, np.asarray(sampled + padding, np.int32)

    def _run_decode(self, mode: str, lanes: np.ndarray) -> np.ndarray:
        """One decode step for every slot; the slots in `lanes` sample (by `mode`),
        the others take the argmax. A slot may fill several lanes (same pick)."""
        model, batch = self.model, self.max_batch
        template = _template(mode)

        def build():
            def decode(cache, tokens, positions, *inputs):
                logits, cache = model.call_with_cache(ops.expand_dims(tokens, 1), cache, positions)
                logits = ops.cast(logits[:, 0], "float32")
                greedy = ops.cast(ops.argmax(logits, axis=-1), "int32")
                if mode == "greedy":
                    return greedy, cache
                *settings, lane_rows = inputs
                # Each lane samples its slot's row exactly as the slot would in a
                # full batch: the sampler's work and noise are per row.
                lane = [ops.take(x, lane_rows, axis=0) for x in (logits, positions, *settings)]
                sampler = template.bind(lane[2:])
                picked = sampler(lane[0], 0, lane[1] + 1)
                # Back to the slots: a slot's lanes (a padded slot fills several)
                # all picked the same id; slots in no lane keep their argmax.
                slots = ops.expand_dims(ops.arange(0, batch, dtype="int32"), 1)
                hits = ops.equal(slots, ops.expand_dims(lane_rows, 0))  # (batch, lanes)
                lane_pick = ops.max(ops.where(hits, ops.expand_dims(picked, 0), -1), axis=1)
                return ops.where(lane_pick >= 0, lane_pick, greedy), cache

            return decode

        run = self._program(("slot_decode", mode, len(lanes)), build)
        arrays = [ops.convert_to_tensor(a) for a in self._slot_arrays()]
        if mode != "greedy":
            arrays.append(_int32(lanes))
        tokens, self._cache = run(self._values, self._cache, *arrays)
        return np.asarray(ops.convert_to_numpy(tokens))

    def _decode(self) -> list[SlotEvent]:
        tokens = self._run_decode(*self._mode())
        events = []
        for slot, request in enumerate(self._slots):
            if request is not None:
                self._positions[slot] += 1
                events.append(self._produced(request, int(tokens[slot])))
        return events


def _template(mode: str) -> RowSampler:
    """A `RowSampler` of `mode` with its own seeds: the programs bind its settings."""
    temperature = {"greedy": [0.0], "sample": [1.0], "filter": [1.0]}[mode]
    top_k = [1] if mode == "filter" else [0]
    return RowSampler(temperature, top_k, seeds=[0])


def _int32(value) -> Tensor:
    return ops.convert_to_tensor(np.asarray(value, np.int32), "int32")
