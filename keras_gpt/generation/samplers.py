"""Samplers: pick the next token id from logits, inside a compiled decode loop.

A sampler maps float logits `(batch, vocabulary)` to int32 ids `(batch,)` with
`keras.ops` only, so the same code runs traced under `jax.jit`, `tf.function`
and `torch.compile`. Randomness comes from a counter-based integer hash keyed
by `(seed, position)` (the one `PortableDropout` uses) turned into Gumbel
noise: sampling needs no random-generator state, is reproducible for a given
seed, and draws the same noise on every backend.

Sampling is Gumbel-max: `argmax(logits / temperature + g)` with
`g = -log(-log(u))`, `u` uniform, picks token i with probability
`softmax(logits / temperature)[i]`; tokens a filter removed get `-inf`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from keras import ops

from keras_gpt.backend import Tensor
from keras_gpt.random import _P1, _P2, HASH_RANGE, _rounds, _split, hash_ints

# hash_ints gives ints below HASH_RANGE (~1.07e9); dropping 6 bits leaves values
# below 2**24, exactly representable in float32, so u stays strictly inside (0, 1).
_UNIFORM_SHIFT = 64
_UNIFORM_RANGE = HASH_RANGE // _UNIFORM_SHIFT


def gumbel_noise(shape: tuple, seed: int | Tensor, position: int | Tensor) -> Tensor:
    """Standard Gumbel noise, float32, from a hash of `(seed, position)`.

    Args:
        shape: output shape, e.g. `(batch, candidates)`.
        seed: integer seed in [0, 2**30) (a Python int or an int32 scalar tensor).
        position: the sequence position being sampled (int32 scalar); each
            position gets fresh noise.

    Returns:
        float32 tensor of `shape`.

    Example:
    >>> g = gumbel_noise((2, 5), seed=0, position=3)      # same on every backend
    """
    bits = hash_ints(shape, seed, position) // _UNIFORM_SHIFT
    uniform = (ops.cast(bits, "float32") + 0.5) / float(_UNIFORM_RANGE)
    return -ops.log(-ops.log(uniform))


class Sampler:
    """Base class: turns logits `(batch, vocabulary)` into ids `(batch,)`.

    Subclasses implement `__call__` with `keras.ops` only (it is traced inside
    the compiled decode loop) and `config` (hashable: the generation code keys
    its compiled functions on it, so equal configs share one compilation).

    Example:
    >>> class ArgMin(Sampler):          # a (silly) custom sampler
    ...     def __call__(self, logits, seed, position):
    ...         return ops.cast(ops.argmin(logits, axis=-1), "int32")
    >>> ids = model.generate([[72, 105]], max_new_tokens=4, sampler=ArgMin())
    """

    def __call__(self, logits: Tensor, seed: int | Tensor, position: int | Tensor) -> Tensor:
        """Next ids (batch,) int32 for float32 `logits` (batch, vocabulary).

        Args:
            logits: float32 next-token logits, `(batch, vocabulary)`.
            seed: int32 scalar seed of this `generate` call.
            position: int32 scalar position of the token being sampled.
        """
        raise NotImplementedError

    @property
    def config(self) -> tuple:
        """Hashable description; samplers with equal configs behave the same."""
        return (type(self).__name__, tuple(sorted(vars(self).items())))

    def inputs(self) -> tuple:
        """Arrays the compiled programs take as inputs for this sampler (none by
        default: a sampler's settings are constants of the program)."""
        return ()

    def bind(self, tensors: Sequence[Tensor]) -> Sampler:
        """This sampler reading `tensors` (`inputs()` as the program sees them)."""
        return self


class GreedySampler(Sampler):
    """Always the most likely token (ties: the lowest id).

    Example:
    >>> ops.convert_to_numpy(GreedySampler()(ops.convert_to_tensor([[0.1, 2.0, 0.3]]), 0, 0))
    array([1], dtype=int32)
    """

    def __call__(self, logits: Tensor, seed: int | Tensor, position: int | Tensor) -> Tensor:
        return ops.cast(ops.argmax(logits, axis=-1), "int32")


class RandomSampler(Sampler):
    """Samples from softmax(logits / temperature), optionally filtered.

    With `top_k`, only the k most likely tokens can be drawn; with `top_p`
    (nucleus sampling), only the smallest set of most likely tokens whose
    probability mass reaches p (after `top_k`, when both are set). A
    temperature of 0 is greedy decoding.

    Args:
        temperature: divides the logits; < 1 sharpens, > 1 flattens, 0 = greedy.
        top_k: keep the k most likely tokens (k ≥ 1); `None` keeps all.
        top_p: keep the smallest most-likely set with mass ≥ p, p in (0, 1];
            `None` keeps all.

    Example:
    >>> logits = ops.convert_to_tensor(np.random.default_rng(0).normal(size=(2, 50)), "float32")
    >>> sampler = RandomSampler(temperature=0.8, top_k=20)
    >>> tuple(sampler(logits, seed=0, position=5).shape)    # one id a row
    (2,)
    """

    def __init__(
        self, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
    ):
        if not temperature >= 0:
            raise ValueError(f"`temperature` must be >= 0, got {temperature!r}.")
        if top_k is not None and (int(top_k) != top_k or top_k < 1):
            raise ValueError(f"`top_k` must be a positive integer, got {top_k!r}.")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"`top_p` must be in (0, 1], got {top_p!r}.")
        self.temperature = float(temperature)
        self.top_k = None if top_k is None else int(top_k)
        self.top_p = None if top_p is None else float(top_p)

    def __call__(self, logits: Tensor, seed: int | Tensor, position: int | Tensor) -> Tensor:
        if self.temperature == 0:
            return GreedySampler()(logits, seed, position)
        logits = ops.cast(logits, "float32") / self.temperature
        if self.top_k is None and self.top_p is None:
            noise = gumbel_noise(ops.shape(logits), seed, position)
            return ops.cast(ops.argmax(logits + noise, axis=-1), "int32")
        # Work on the candidates sorted by likelihood: top-k is a prefix of
        # them, and so is the top-p nucleus.
        vocabulary = ops.shape(logits)[-1]
        k = vocabulary if self.top_k is None else min(self.top_k, vocabulary)
        values, indices = ops.top_k(logits, k, sorted=True)
        if self.top_p is not None:
            probs = ops.softmax(values, axis=-1)
            mass_before = ops.cumsum(probs, axis=-1) - probs
            # The first candidate always stays (its mass_before is 0).
            values = ops.where(mass_before < self.top_p, values, float("-inf"))
        noise = gumbel_noise(ops.shape(values), seed, position)
        choice = ops.argmax(values + noise, axis=-1)
        picked = ops.take_along_axis(indices, ops.expand_dims(choice, -1), axis=-1)
        return ops.cast(picked[:, 0], "int32")


SAMPLERS = ("greedy", "temperature", "top_k", "top_p")


def get_sampler(
    sampler: str | Sampler = "greedy",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Sampler:
    """The `Sampler` that `GPT.generate`'s sampler arguments describe.

    Args:
        sampler: `"greedy"`, `"temperature"` (sample from all tokens),
            `"top_k"`, `"top_p"`, or a `Sampler` instance (then the other
            arguments must keep their defaults).
        temperature: divides the logits before sampling; 0 = greedy.
        top_k: required with `"top_k"`; optional with `"top_p"` (applied first).
        top_p: required with `"top_p"`.

    Returns:
        A `Sampler`.

    Example:
    >>> type(get_sampler("top_k", temperature=0.8, top_k=20)).__name__
    'RandomSampler'
    """
    if isinstance(sampler, Sampler):
        if (temperature, top_k, top_p) != (1.0, None, None):
            raise ValueError(
                "Pass `temperature`, `top_k` and `top_p` to the sampler object, "
                f"not to generate (got a {type(sampler).__name__} and "
                f"temperature={temperature}, top_k={top_k}, top_p={top_p})."
            )
        return sampler
    if sampler not in SAMPLERS:
        raise ValueError(
            f"`sampler` must be one of {SAMPLERS} or a Sampler instance, got {sampler!r}."
        )
    if sampler == "greedy":
        if (temperature, top_k, top_p) != (1.0, None, None):
            raise ValueError(
                "sampler='greedy' ignores temperature, top_k and top_p; use "
                "sampler='temperature', 'top_k' or 'top_p' to sample (got "
                f"temperature={temperature}, top_k={top_k}, top_p={top_p})."
            )
        return GreedySampler()
    if sampler == "top_k" and top_k is None:
        raise ValueError("sampler='top_k' needs `top_k`, e.g. top_k=20.")
    if sampler == "top_p" and top_p is None:
        raise ValueError("sampler='top_p' needs `top_p`, e.g. top_p=0.9.")
    if sampler == "temperature" and (top_k, top_p) != (None, None):
        raise ValueError(
            "sampler='temperature' samples from all tokens; use sampler='top_k' "
            f"or 'top_p' to filter (got top_k={top_k}, top_p={top_p})."
        )
    if sampler == "top_k" and top_p is not None:
        raise ValueError(
            "sampler='top_k' takes no `top_p`; use sampler='top_p' "
            "with both `top_k` and `top_p` to apply both."
        )
    if temperature == 0:
        return GreedySampler()
    return RandomSampler(temperature=temperature, top_k=top_k, top_p=top_p)


class DynamicSampler(Sampler):
    """Greedy, temperature, top-k and top-p sampling with settings held in tensors.

    The samplers above fix their settings when the decode loop is traced; an
    exported serving graph (`keras_gpt.export`) takes them as inputs instead.
    For the same settings and seed this picks the same ids as the sampler
    `get_sampler` returns (the same Gumbel noise, laid out the same way), so a
    served model continues a prompt exactly like `GPT.generate`.

    Args:
        temperature: float scalar (tensor); 0 = greedy.
        top_k: int scalar (tensor); k ≥ 1 keeps the k most likely tokens, 0 keeps all.
        top_p: float scalar (tensor) in (0, 1]; p < 1 keeps the most likely tokens
            whose mass reaches p (after `top_k`), 1 keeps all.

    Example:
    >>> logits = ops.convert_to_tensor(np.random.default_rng(0).normal(size=(2, 50)), "float32")
    >>> sampler = DynamicSampler(temperature=0.8, top_k=20, top_p=1.0)
    >>> tuple(sampler(logits, seed=0, position=5).shape)    # one id a row
    (2,)
    """

    def __init__(self, temperature: float | Tensor, top_k: int | Tensor, top_p: float | Tensor):
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p

    @property
    def config(self) -> tuple:
        # The settings are runtime values: every DynamicSampler traces the same.
        return ("DynamicSampler",)

    def __call__(self, logits: Tensor, seed: int | Tensor, position: int | Tensor) -> Tensor:
        logits = ops.cast(logits, "float32")
        temperature = ops.cast(self.temperature, "float32")
        top_k = ops.cast(self.top_k, "int32")
        top_p = ops.cast(self.top_p, "float32")
        return ops.cond(
            temperature > 0,
            lambda: self._sample(logits, temperature, top_k, top_p, seed, position),
            lambda: ops.cast(ops.argmax(logits, axis=-1), "int32"),
        )

    @staticmethod
    def _sample(logits, temperature, top_k, top_p, seed, position):
        vocabulary = logits.shape[-1]
        logits = logits / temperature
        # A full sort, not ops.top_k: JAX exports lax.top_k as a StableHLO
        # composite that TensorFlow 2.21 cannot deserialize.
        indices = ops.cast(ops.argsort(-logits, axis=-1), "int32")
        values = ops.take_along_axis(logits, indices, axis=-1)
        ranks = ops.expand_dims(ops.arange(0, vocabulary, dtype="int32"), 0)
        use_k = top_k > 0
        k = ops.where(use_k, ops.minimum(top_k, vocabulary), vocabulary)
        values = ops.where(ranks < k, values, float("-inf"))
        probs = ops.softmax(values, axis=-1)
        mass_before = ops.cumsum(probs, axis=-1) - probs
        values = ops.where(ops.logical_or(top_p >= 1, mass_before < top_p), values, float("-inf"))
        # RandomSampler draws noise of shape (batch, k) over the sorted candidates
        # when filtering, else (batch, vocabulary) over token ids: index the same
        # flat noise the same way.
        filtered = ops.logical_or(use_k, top_p < 1)
        stride = ops.where(use_k, k, vocabulary)
        column = ops.where(filtered, ranks, indices)
        rows = ops.expand_dims(ops.arange(0, ops.shape(logits)[0], dtype="int32"), 1)
        flat = ops.reshape(gumbel_noise(ops.shape(logits), seed, position), (-1,))
        noise = ops.take(flat, rows * stride + column, axis=0)
        choice = ops.argmax(values + noise, axis=-1)
        picked = ops.take_along_axis(indices, ops.expand_dims(choice, -1), axis=-1)
        return ops.cast(picked[:, 0], "int32")


def row_gumbel_noise(index: Tensor, seeds: Tensor, position: int | Tensor) -> Tensor:
    """Gumbel noise at explicit element indices, each row keyed by its own seed.

    Element `[r, c]` is the noise `gumbel_noise` draws at flat index
    `index[r, c]` with seed `seeds[r]`: row r of `gumbel_noise((n, w), s, p)`
    is `row_gumbel_noise(r * w + arange(w), s, p)`. So a row can be given the
    noise it would get as row r of a batch seeded s, wherever it sits.

    Args:
        index: int32 `(batch, width)` flat element indices (below `HASH_RANGE`).
        seeds: int32 `(batch,)` seeds in [0, HASH_RANGE).
        position: int32 scalar, the position being sampled, or `(batch,)`
            positions, one per row (each slot of a `SlotEngine` samples at
            its own position).
    """
    seeds = ops.expand_dims(ops.cast(seeds, "int32"), 1)
    counter = ops.cast(position, "int32")
    if len(counter.shape) == 1:  # one position per row (continuous batching)
        counter = ops.expand_dims(counter, 1)
    # hash_ints, with a seed per row: the same int32 arithmetic, broadcast.
    key1, key2 = _rounds(*_split(counter), *_split(seeds), rounds=2)
    a, b = _rounds(index % _P1, index % _P2, key1, key2)
    bits = (a * _P2 + b) // _UNIFORM_SHIFT
    uniform = (ops.cast(bits, "float32") + 0.5) / float(_UNIFORM_RANGE)
    return -ops.log(-ops.log(uniform))


class RowSampler(Sampler):
    """Greedy and sampled rows in one batch, each with its own settings, held in tensors.

    The settings are inputs of the compiled decoding programs (`inputs`), not
    constants: batches with any temperatures, top-k, top-p and seeds run the
    same program. Only `mode`, derived from the settings, is part of the
    program (`config`): `"greedy"` (every row greedy: argmax only), `"sample"`
    (some rows sampled, none filtered: Gumbel noise over the vocabulary) or
    `"filter"` (some row has top-k or top-p: candidates sorted), so a program
    has at most three variants of each shape. (`SlotEngine` gives it only the
    sampled rows, gathered into lanes: the greedy rows need only the argmax.)

    Each row draws the noise it would draw as row `sample_index[r]` of a
    `generate` call seeded `seeds[r]` with that row's settings alone: a row
    with seed s and index j picks what row j of
    `GPT.generate(prompts, seed=s, sampler=...)` picks, whatever else is in
    the batch. Greedy rows (temperature 0) pick exactly `GreedySampler`'s ids.

    Args:
        temperature: `(batch,)` temperatures; 0 = greedy.
        top_k: `(batch,)` k ≥ 1 to keep the k most likely tokens, 0 or None for all.
        top_p: `(batch,)` p in (0, 1]; 1 or None keeps all (as `top_p=None` does
            in `RandomSampler`).
        seeds: `(batch,)` seeds in [0, 2**30); None: every row uses the call's seed.
        sample_index: `(batch,)` each row's index in its seeded call; None: its
            row in this batch (then with uniform settings and no `seeds` this is
            `RandomSampler` exactly).

    Example:
    >>> sampler = RowSampler(temperature=[0.0, 0.8], top_k=[0, 20], seeds=[0, 7])
    >>> ids = model.generate([[1, 2], [3]], 8, sampler=sampler)   # greedy row, sampled row
    """

    def __init__(
        self,
        temperature: Sequence[float],
        top_k: Sequence[int | None] | None = None,
        top_p: Sequence[float | None] | None = None,
        seeds: Sequence[int] | None = None,
        sample_index: Sequence[int] | None = None,
    ):
        self.temperature = np.asarray(temperature, np.float32).reshape(-1)
        batch = len(self.temperature)

        def column(values, default, dtype):
            if values is None:
                return np.full(batch, default, dtype)
            values = [default if v is None else v for v in values]
            array = np.asarray(values, dtype).reshape(-1)
            if len(array) != batch:
                raise ValueError(f"RowSampler: {len(array)} settings for {batch} rows.")
            return array

        self.top_k = column(top_k, 0, np.int32)
        self.top_p = column(top_p, 1.0, np.float32)
        if not (np.all(self.temperature >= 0) and np.all(self.top_k >= 0)):
            raise ValueError("RowSampler: temperatures and top_k must be >= 0.")
        if not np.all((self.top_p > 0) & (self.top_p <= 1)):
            raise ValueError("RowSampler: top_p must be in (0, 1].")
        self.use_call_seed = seeds is None
        self.seeds = column(seeds, 0, np.int64) % HASH_RANGE
        self.sample_index = column(sample_index, 0, np.int32)
        if sample_index is None:
            self.sample_index = np.arange(batch, dtype=np.int32)
        sampled = self.temperature > 0
        filtered = sampled & ((self.top_k > 0) | (self.top_p < 1))
        self.mode = "filter" if filtered.any() else "sample" if sampled.any() else "greedy"
        self._tensors = None

    @property
    def config(self) -> tuple:
        return ("RowSampler", self.mode, self.use_call_seed)

    def inputs(self) -> tuple:
        return (
            self.temperature,
            self.top_k,
            self.top_p,
            self.seeds.astype(np.int32),
            self.sample_index,
        )

    def bind(self, tensors: Sequence[Tensor]) -> RowSampler:
        bound = object.__new__(RowSampler)
        bound.__dict__.update(self.__dict__, _tensors=tuple(tensors))
        return bound

    def __call__(self, logits: Tensor, seed: int | Tensor, position: int | Tensor) -> Tensor:
        logits = ops.cast(logits, "float32")
        greedy = ops.cast(ops.argmax(logits, axis=-1), "int32")
        if self.mode == "greedy":
            return greedy
        tensors = self._tensors
        if tensors is None:  # called outside a compiled program
            tensors = [ops.convert_to_tensor(a) for a in self.inputs()]
        temperature, top_k, top_p, seeds, index = tensors
        if self.use_call_seed:
            seeds = ops.zeros_like(index) + ops.cast(seed, "int32")
        sampled = temperature > 0
        # Greedy rows divide by 1 (their sampled id is discarded).
        divisor = ops.expand_dims(ops.where(sampled, temperature, 1.0), 1)
        logits = logits / divisor
        vocabulary = logits.shape[-1]
        ranks = ops.expand_dims(ops.arange(0, vocabulary, dtype="int32"), 0)
        index = ops.expand_dims(ops.cast(index, "int32"), 1)
        if self.mode == "sample":
            noise = row_gumbel_noise(index * vocabulary + ranks, seeds, position)
            picked = ops.cast(ops.argmax(logits + noise, axis=-1), "int32")
            return ops.where(sampled, picked, greedy)
        # As DynamicSampler, a row at a time: sorted candidates; unfiltered rows
        # draw their noise by token id, filtered ones by rank over k candidates.
        order = ops.cast(ops.argsort(-logits, axis=-1), "int32")
        values = ops.take_along_axis(logits, order, axis=-1)
        use_k = ops.expand_dims(top_k > 0, 1)
        k = ops.where(use_k, ops.minimum(ops.expand_dims(top_k, 1), vocabulary), vocabulary)
        values = ops.where(ranks < k, values, float("-inf"))
        probs = ops.softmax(values, axis=-1)
        mass_before = ops.cumsum(probs, axis=-1) - probs
        p = ops.expand_dims(top_p, 1)
        values = ops.where(ops.logical_or(p >= 1, mass_before < p), values, float("-inf"))
        filtered = ops.logical_or(use_k, p < 1)
        stride = ops.where(use_k, k, vocabulary)
        noise = row_gumbel_noise(
            index * stride + ops.where(filtered, ranks, order), seeds, position
        )
        choice = ops.argmax(values + noise, axis=-1)
        picked = ops.take_along_axis(order, ops.expand_dims(choice, -1), axis=-1)[:, 0]
        return ops.where(sampled, ops.cast(picked, "int32"), greedy)
