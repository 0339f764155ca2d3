"""The generation engine: prefill once, then a compiled loop over a fixed-size KV cache.

How `GenerationEngine.generate` works:

1. The prompts (ragged: each row has its own length) are right-padded into a
   `(batch, cache_length)` buffer. `cache_length` is the prompt length plus
   `max_new_tokens` rounded up to a bucket (four per power of two, capped at
   `max_sequence_length`; see `bucket_length`), so nearby lengths share one
   compiled program.
2. Prefill: one `call_with_cache` over the first `prefill_length` positions
   (the shortest prompt, rounded up to a power of two). Positions past a row's
   prompt get overwritten before any later query can attend to them.
3. Decode: one token per step from position `min(prompt lengths)` on. A row
   still inside its own prompt is fed its prompt token, otherwise the sampled
   one (this keeps one scalar cache index for the whole batch). A row is done
   after a stop token or `max_new_tokens` new tokens; the loop ends when every
   row is done.

The step is written once with `keras.ops` (`prefill`, `decode_step`,
`decode_loop`); `keras_gpt.backend.compile_function` compiles it. On JAX and
TensorFlow the whole loop is one compiled program (`lax.while_loop` /
`tf.while_loop`); on PyTorch, and with a streaming callback on any backend, a
Python loop runs a compiled step. Programs are kept by the engine, one per
(kind, batch size, cache length, prefill length, sampler, number of stop ids).

The engine is indifferent to the weights' format: a bfloat16 model
(`GPT(dtype="bfloat16")`) and an int8 one (`GPT.quantize("int8")`) run in the
same compiled programs, reading their own variables.

The model contract — all the engine reads from a model, through public API:

- `vocabulary_size`, `max_sequence_length`: ints.
- `init_cache(batch_size, cache_length)`: a list of zero cache tensors.
- `call_with_cache(token_ids, cache, cache_index)` → `(logits, cache)`. The
  cache passed in is consumed: only the returned cache is used afterwards (on
  PyTorch it is written in place, and compiled JAX steps donate its buffers).
- `variables`: every variable those two methods read (Keras' own list).
- optionally `tied_embedding`: a variable multiplied transposed for the logits
  (a tied token embedding), or `None`; see `keras_gpt.backend.weight_values`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import keras
import numpy as np
from keras import ops

from keras_gpt.backend import Tensor, compile_function, weight_values, write_at
from keras_gpt.generation.prompts import (
    padded_stop_ids,
    prompt_rows,
    row_lengths,
    validate,
)
from keras_gpt.generation.samplers import Sampler, get_sampler
from keras_gpt.random import HASH_RANGE

#: Smallest cache / prefill bucket: tiny prompts share one compiled program.
MIN_BUCKET = 16

#: The stepwise loop reads the done flags back from the device every this many
#: steps when there is no callback (each read waits for the device).
DONE_CHECK_EVERY = 8


class CachedModel(Protocol):
    """The model contract: everything the engine reads from a model (`keras_gpt.GPT` meets it).

    `call_with_cache` consumes the cache it is given: only the returned cache
    is used afterwards (PyTorch writes it in place; compiled JAX steps donate
    its buffers), the same rule on every backend.
    """

    vocabulary_size: int
    max_sequence_length: int

    @property
    def variables(self) -> list[keras.Variable]:
        """Every variable `init_cache` and `call_with_cache` read."""

    def init_cache(self, batch_size: int, cache_length: int) -> list[Tensor]:
        """An all-zero cache for `batch_size` sequences of `cache_length` positions."""

    def call_with_cache(
        self, token_ids: Tensor, cache: list[Tensor], cache_index: int | Tensor
    ) -> tuple[Tensor, list[Tensor]]:
        """Logits for `token_ids` placed at `cache_index + [0, seq)`, and the new cache."""


class DecodeState(NamedTuple):
    """What changes from one decoding step to the next."""

    position: Tensor  #: int32 scalar: the position this step fills.
    tokens: Tensor  #: int32 `(batch, cache_length)` token buffer.
    cache: list  #: the KV cache, filled below `position`.
    logits: Tensor  #: float32 `(batch, vocabulary)` predictions for `position`.
    done: Tensor  #: bool `(batch,)`: rows that have finished.


class DecodeInputs(NamedTuple):
    """What stays fixed during one `generate` call (int32 tensors)."""

    lengths: Tensor  #: `(batch,)` prompt lengths.
    limits: Tensor  #: `(batch,)` prompt lengths + max_new_tokens.
    stop_ids: Tensor  #: `(n,)` stop token ids; -1 entries never match.
    seed: Tensor  #: scalar sampling seed.
    pad: Tensor  #: scalar id written after a row's last token.


def bucket_length(length: int, cap: int, per_doubling: int = 4) -> int:
    """`length` rounded up to a bucket (at least `MIN_BUCKET`), at most `cap`.

    With `per_doubling=4` (cache lengths), a length in (P/2, P], P a power of
    two, is rounded up to a multiple of P/8 (5P/8, 6P/8, 7P/8 or P): attention
    runs over the whole cache, so a cache at most 25% longer than needed
    decodes faster than a power of two (up to 2× longer), for at most four
    compiled programs per doubling of the length. `per_doubling=1` (prefill
    lengths) rounds up to a power of two.

    Args:
        length: the positions needed.
        cap: the largest allowed bucket (the model's `max_sequence_length`).
        per_doubling: buckets per doubling of the length, a power of two.

    Example:
    >>> bucket_length(160, 1024), bucket_length(161, 1024), bucket_length(10, 1024)
    (160, 192, 16)
    >>> bucket_length(161, 1024, per_doubling=1)
    256
    """
    length = max(MIN_BUCKET, int(length))
    step = max(1, (1 << (length - 1).bit_length()) // (2 * per_doubling))
    return min(-(-length // step) * step, cap)


# -- the decode step, written once with keras.ops --------------------------------


def prefill(
    model: CachedModel, tokens: Tensor, start: Tensor, cache_length: int, prefill_length: int
) -> DecodeState:
    """Runs the first `prefill_length` positions: the state of the first decoding step.

    Args:
        model: a model that meets the contract (`CachedModel`).
        tokens: int32 `(batch, cache_length)` right-padded prompts.
        start: int32 scalar, the shortest prompt length (first decoded position).
        cache_length: static cache size.
        prefill_length: static number of positions to run, ≥ `start`.
    """
    cache = model.init_cache(ops.shape(tokens)[0], cache_length)
    logits, cache = model.call_with_cache(tokens[:, :prefill_length], cache, 0)
    logits = ops.cast(ops.take(logits, start - 1, axis=1), "float32")
    done = ops.zeros_like(tokens[:, 0]) > 0
    return DecodeState(start, tokens, cache, logits, done)


def decode_step(
    model: CachedModel, sampler: Sampler, state: DecodeState, inputs: DecodeInputs
) -> DecodeState:
    """Fills `state.position`, runs the model on it; the state of the next position.

    A row inside its prompt keeps its prompt token; a done row gets `pad`;
    others get the sampled token. A row becomes done after a stop token or
    when it reaches its limit (prompt length + max_new_tokens).

    Args:
        model: a model that meets the contract (`CachedModel`).
        sampler: picks ids from `state.logits`.
        state: this step's state.
        inputs: the call's constants.
    """
    position, tokens, cache, logits, done = state
    in_prompt = position < inputs.lengths
    sampled = sampler(logits, inputs.seed, position)
    prompt_token = ops.take(tokens, position, axis=1)
    token = ops.where(in_prompt, prompt_token, ops.where(done, inputs.pad, sampled))
    tokens = write_at(tokens, ops.expand_dims(token, 1), position, axis=1)
    stopped = ops.any(ops.expand_dims(sampled, 1) == ops.expand_dims(inputs.stop_ids, 0), axis=1)
    generating = ops.logical_and(ops.logical_not(in_prompt), ops.logical_not(done))
    done = ops.logical_or(
        ops.logical_or(done, ops.logical_and(generating, stopped)),
        position + 1 >= inputs.limits,
    )
    logits, cache = model.call_with_cache(ops.expand_dims(token, 1), cache, position)
    return DecodeState(position + 1, tokens, cache, ops.cast(logits[:, 0], "float32"), done)


def decode_loop(
    model: CachedModel, sampler: Sampler, cache_length: int, prefill_length: int
) -> Callable[..., Tensor]:
    """The whole generation as one traceable function (JAX, TensorFlow, SavedModel export).

    Args:
        model: a model that meets the contract (`CachedModel`).
        sampler: the sampler.
        cache_length: static cache size.
        prefill_length: static prefill size.

    Returns:
        `run(tokens, start, lengths, limits, stop_ids, seed, pad, *sampler_inputs)
        -> tokens`, using `keras.ops.while_loop` (`lax.while_loop` /
        `tf.while_loop`); `sampler_inputs` are the tensors of `sampler.inputs()`
        (none for samplers whose settings are constants).
    """

    def run(tokens, start, *constants):
        inputs = DecodeInputs(*constants[: len(DecodeInputs._fields)])
        bound = sampler.bind(constants[len(DecodeInputs._fields) :])
        state = prefill(model, tokens, start, cache_length, prefill_length)

        def cond(*state):
            return ops.logical_not(ops.all(DecodeState(*state).done))

        def body(*state):
            return tuple(decode_step(model, bound, DecodeState(*state), inputs))

        return DecodeState(*ops.while_loop(cond, body, tuple(state))).tokens

    return run


# -- the engine: one per model, owning its compiled programs -----------------------


class GenerationEngine:
    """Generation for one model: its compiled programs and decoding loop.

    `GPT.generate` uses the engine the model owns (`GPT.generation_engine`);
    any model that meets the contract in this module's docstring can have one.

    Args:
        model: the model to generate with.

    Example:
    >>> engine = GenerationEngine(model)
    >>> ids = engine.generate([[1, 2, 3]], max_new_tokens=8)
    >>> len(engine.program_keys) > 0      # what has been compiled so far
    True
    """

    def __init__(self, model: CachedModel):
        self.model = model
        self._programs: dict[tuple, Callable] = {}

    @property
    def program_keys(self) -> list[tuple]:
        """Keys of the compiled programs: `(kind, batch, cache_length, prefill_length,
        sampler config, number of stop ids)`; a call whose shapes fall in known
        buckets adds none."""
        return list(self._programs)

    def generate(
        self,
        prompt_ids: Tensor | Sequence[Sequence[int]],
        max_new_tokens: int,
        sampler: str | Sampler = "greedy",
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop_token_ids: Sequence[int] | None = None,
        seed: int | None = None,
        padding_mask: Tensor | None = None,
        pad_token_id: int = 0,
        return_lengths: bool = False,
        callback: Callable[[np.ndarray, np.ndarray], None] | None = None,
        num_samples: int = 1,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Continues each prompt by up to `max_new_tokens` tokens.

        The prompt is run once (prefill), then one token per step is decoded
        from a fixed-size key/value cache inside a loop compiled for the
        backend (see `keras_gpt.generation`). Compiled programs are cached per
        batch size and bucketed cache length: repeated calls with similar
        shapes do not recompile. `GPT.generate` is this method on the engine
        the model owns.

        Args:
            prompt_ids: the prompts: an int array `(batch, length)` or
                `(length,)`, or a list of lists of ids whose lengths may differ
                (ragged). A padded array may come with `padding_mask`.
            max_new_tokens: tokens to add to each row; the longest prompt +
                `max_new_tokens` must fit in `max_sequence_length`.
            sampler: `"greedy"` (most likely token), `"temperature"` (sample
                from all tokens), `"top_k"`, `"top_p"`, or a
                `keras_gpt.generation.samplers.Sampler` instance.
            temperature: divides the logits before sampling (0 = greedy).
            top_k: with `"top_k"` (or `"top_p"`): sample among the k most likely
                tokens.
            top_p: with `"top_p"`: sample among the smallest set of most likely
                tokens whose probability mass reaches p.
            stop_token_ids: a row stops right after generating one of these ids
                (the stop token is kept); its later positions hold `pad_token_id`.
            seed: sampling seed: the same seed gives the same tokens on a
                backend (and, with the hash-based sampler noise, usually the
                same tokens on every backend). `None` draws one.
            padding_mask: with a `(batch, length)` array: 1/True marks each
                row's real prompt tokens (left or right padding).
            pad_token_id: id written after a row's last token.
            return_lengths: also return each row's length (prompt + generated
                tokens, through the stop token); row r's new tokens are
                `ids[r, prompt_length_r:lengths[r]]`
                (`keras_gpt.generation.new_tokens` slices them all).
            callback: streaming: called after every decoding step as
                `callback(token_ids, is_new)` with two `(batch,)` NumPy arrays,
                the ids written at this step's position and which rows
                generated a new token there (rows still inside a longer
                prompt, or already stopped, did not). Runs a Python loop over
                the compiled step, so it is a little slower.
            num_samples: continuations per prompt (Hugging Face's
                `num_return_sequences`): the output has `batch * num_samples`
                rows in prompt order, prompt 0's samples first. Each sample
                draws its own noise, so sampled continuations are independent
                (greedy ones are equal); the same as passing each prompt
                `num_samples` times.

        Returns:
            int32 NumPy array `(batch * num_samples, longest_prompt +
            max_new_tokens)`: each row's prompt followed by its continuation,
            then `pad_token_id`. With `return_lengths`, a tuple
            `(token_ids, lengths)`.

        Example:
        >>> engine = GenerationEngine(model)
        >>> engine.generate(np.array([[1, 2, 3]]), max_new_tokens=5).shape
        (1, 8)
        >>> ids, lengths = engine.generate([[1, 2, 3], [4]], 5, sampler="top_k",
        ...                                top_k=10, seed=0, stop_token_ids=[0],
        ...                                return_lengths=True)
        >>> engine.generate([[1, 2, 3]], 5, sampler="temperature", seed=0,
        ...                 num_samples=4).shape
        (4, 8)
        """
        model = self.model
        prompts = prompt_rows(prompt_ids, padding_mask)
        if (
            not isinstance(num_samples, (int, np.integer))
            or isinstance(num_samples, bool)
            or num_samples < 1
        ):
            raise ValueError(f"`num_samples` must be a positive integer, got {num_samples!r}.")
        # K samples of a prompt are K rows of it: every row of a batch draws its
        # own noise (the hash covers the whole (batch, vocabulary) noise tensor),
        # so the samples are independent, and rows stay in prompt order.
        prompts = [row for row in prompts for _ in range(int(num_samples))]
        validate(model, prompts, max_new_tokens, pad_token_id)
        sampler = get_sampler(sampler, temperature, top_k, top_p)
        stops = padded_stop_ids(model, stop_token_ids)
        if seed is None:
            seed = int(np.random.default_rng().integers(HASH_RANGE))

        lengths = np.array([len(p) for p in prompts], "int32")
        batch, longest, shortest = len(prompts), int(lengths.max()), int(lengths.min())
        width = longest + max_new_tokens
        cache_length = bucket_length(width, model.max_sequence_length)
        prefill_length = bucket_length(shortest, cache_length, per_doubling=1)
        buffer = np.full((batch, cache_length), pad_token_id, "int32")
        for row, prompt in zip(buffer, prompts):
            row[: len(prompt)] = prompt
        if max_new_tokens == 0:
            out = buffer[:, :width]
            return (out, lengths) if return_lengths else out

        def int32(value):
            return ops.convert_to_tensor(value, "int32")

        inputs = DecodeInputs(
            lengths=int32(lengths),
            limits=int32(lengths + np.int32(max_new_tokens)),
            stop_ids=int32(stops),
            seed=int32(np.int32(int(seed) % HASH_RANGE)),
            pad=int32(np.int32(pad_token_id)),
        )
        # A sampler's settings held in tensors (RowSampler): program inputs, so
        # new values compile nothing.
        settings = tuple(ops.convert_to_tensor(a) for a in sampler.inputs())
        key = (batch, cache_length, prefill_length, sampler.config, len(stops))
        values = weight_values(model.variables, getattr(model, "tied_embedding", None))
        if callback is None and keras.backend.backend() in ("jax", "tensorflow"):
            program = self._program(
                ("loop",) + key, lambda: decode_loop(model, sampler, cache_length, prefill_length)
            )
            tokens = program(values, int32(buffer), int32(shortest), *inputs, *settings)
        else:
            tokens = self._stepwise(
                sampler,
                key,
                values,
                int32(buffer),
                int32(shortest),
                inputs,
                cache_length,
                prefill_length,
                callback,
                settings,
            )
        out = np.asarray(ops.convert_to_numpy(tokens))[:, :width]
        if not return_lengths:
            return out
        return out, row_lengths(out, lengths, max_new_tokens, stops)

    def _program(self, key: tuple, build: Callable[[], Callable], donate=()) -> Callable:
        """The compiled `build()` for `key`, compiled on first use."""
        if key not in self._programs:
            self._programs[key] = compile_function(build(), self.model.variables, donate)
        return self._programs[key]

    def _stepwise(
        self,
        sampler,
        key,
        values,
        tokens,
        start,
        inputs,
        cache_length,
        prefill_length,
        callback,
        settings=(),
    ):
        """A Python loop over a compiled step (PyTorch, and any backend with a callback)."""
        model = self.model
        run_prefill = self._program(
            ("prefill",) + key,
            lambda: (
                lambda tokens, start: tuple(
                    prefill(model, tokens, start, cache_length, prefill_length)
                )
            ),
        )

        def step(*flat):
            state, constants = DecodeState(*flat[:5]), DecodeInputs(*flat[5:10])
            return tuple(decode_step(model, sampler.bind(flat[10:]), state, constants))

        # Argument 2 is the cache: its buffers are reused for the new cache.
        run_step = self._program(("step",) + key, lambda: step, donate=(2,))
        state = DecodeState(*run_prefill(values, tokens, start))
        lengths = np.asarray(ops.convert_to_numpy(inputs.lengths))
        position = int(ops.convert_to_numpy(start))
        final = int(np.max(ops.convert_to_numpy(inputs.limits)))  # every row done there
        done_before = np.zeros(len(lengths), bool)
        while True:
            state = DecodeState(*run_step(values, *state, *inputs, *settings))
            position += 1
            # Without a callback, look every few steps (steps after every row
            # is done only write padding).
            if callback is None and position % DONE_CHECK_EVERY and position < final:
                continue
            done_now = np.asarray(ops.convert_to_numpy(state.done))
            if callback is not None:
                produced = np.asarray(ops.convert_to_numpy(state.tokens[:, position - 1]))
                callback(produced, (position - 1 >= lengths) & ~done_before)
                done_before = done_now
            if done_now.all():
                return state.tokens


def compiled_programs(model: keras.Model) -> list[tuple]:
    """Keys of the programs `model`'s generation engine has compiled (to check for recompilation).

    Args:
        model: a `keras_gpt.GPT` `generate` has run on.

    Example:
    >>> _ = model.generate([[1, 2, 3]], 4)
    >>> programs = len(compiled_programs(model))
    >>> _ = model.generate([[1, 2]], 5)     # lengths in the same buckets: nothing compiles
    >>> len(compiled_programs(model)) == programs
    True
    """
    return model.generation_engine.program_keys
