"""Text generation: prefill once, then a compiled loop over a fixed-size KV cache.

How `generate` works:

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

The step is written once with `keras.ops`; how it runs depends on the backend
(see `compile_function` and `decode_loop`): on JAX the whole loop is one
`jax.jit` with `lax.while_loop`, on TensorFlow one `tf.function(jit_compile=True)`
with a while loop, on PyTorch a Python loop over the step (see
`TORCH_STEP`). Compiled programs are cached per model and per
(batch size, cache length, prefill length, sampler, number of stop tokens).
"""

from __future__ import annotations

import warnings
import weakref
from typing import Callable, Sequence

import keras
import numpy as np
from keras import ops

from keras_gpt.backend import Tensor, write_at
from keras_gpt.layers.portable_dropout import HASH_RANGE
from keras_gpt.samplers import Sampler, get_sampler

#: How the per-token step runs on PyTorch: `"trace"` (`torch.jit.trace` of the
#: step, traced once per compiled-program key: no Python or Keras overhead per
#: step), `"eager"` (a plain Python loop over Keras layers) or `"compile"`
#: (`torch.compile` of the step). Measured on CPU with benchmarks/generate.py
#: (bench-small, batch 1, under load): trace 2-3× faster than eager; compile
#: took minutes to compile and ran slower than eager.
TORCH_STEP = "trace"

#: Smallest cache / prefill bucket: tiny prompts share one compiled program.
MIN_BUCKET = 16

#: The stepwise loop (PyTorch, or a callback) reads the done flags back from
#: the device every this many steps when there is no callback.
DONE_CHECK_EVERY = 8

# model -> {key: compiled program}; weak so that deleting a model frees them.
_PROGRAMS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


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


def new_tokens(token_ids: np.ndarray, prompt_lengths: Sequence[int],
               lengths: Sequence[int]) -> list[np.ndarray]:
    """Only the generated part of each row of `generate`'s output.

    Args:
        token_ids: `(batch, width)` output of `generate`.
        prompt_lengths: each row's prompt length.
        lengths: each row's total length (`generate(..., return_lengths=True)`).

    Returns:
        One 1-D int32 array per row (rows may differ in length).

    Example:
    >>> ids, lengths = model.generate([[1, 2, 3], [4]], 5, return_lengths=True)
    >>> new_tokens(ids, [3, 1], lengths)     # [array of ≤ 5 ids, array of ≤ 5 ids]
    """
    return [np.asarray(row[p:n]) for row, p, n in zip(token_ids, prompt_lengths, lengths)]


def compiled_programs(model: keras.Model) -> list[tuple]:
    """Keys of the compiled programs cached for `model` (to check for recompilation).

    Each key is `(kind, batch, cache_length, prefill_length, sampler config,
    number of stop ids)`; a call whose shapes fall in known buckets adds none.

    Args:
        model: a model `generate` has run on.

    Example:
    >>> model.generate([[1, 2, 3]], 4); model.generate([[1, 2]], 5)
    >>> len(compiled_programs(model))     # 1 on JAX and TensorFlow (whole loop)
    """
    return list(_PROGRAMS.get(model, {}))


def generate(
    model: keras.Model,
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
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Continues each prompt by up to `max_new_tokens` tokens; see `GPT.generate`.

    Args:
        model: a `keras_gpt.GPT` (anything with `call_with_cache`,
            `init_cache`, `vocabulary_size` and `max_sequence_length`).
        prompt_ids: see `GPT.generate`.
        max_new_tokens: see `GPT.generate`.
        sampler: see `GPT.generate`.
        temperature: see `GPT.generate`.
        top_k: see `GPT.generate`.
        top_p: see `GPT.generate`.
        stop_token_ids: see `GPT.generate`.
        seed: see `GPT.generate`.
        padding_mask: see `GPT.generate`.
        pad_token_id: see `GPT.generate`.
        return_lengths: see `GPT.generate`.
        callback: see `GPT.generate`.

    Returns:
        See `GPT.generate`.

    Example:
    >>> generate(model, [[5, 6, 7]], max_new_tokens=4)    # (1, 7) int32
    """
    prompts = _prompt_rows(prompt_ids, padding_mask)
    _validate(model, prompts, max_new_tokens, pad_token_id)
    sampler = get_sampler(sampler, temperature, top_k, top_p)
    stops = _stop_ids(model, stop_token_ids)
    seed = int(np.random.default_rng().integers(HASH_RANGE)) if seed is None else int(seed)

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

    inputs = dict(
        tokens=buffer,
        lengths=lengths,
        limits=lengths + np.int32(max_new_tokens),
        start=np.int32(shortest),
        stop_ids=stops,
        seed=np.int32(seed % HASH_RANGE),
        pad=np.int32(pad_token_id),
    )
    inputs = {k: ops.convert_to_tensor(v, "int32") for k, v in inputs.items()}
    key = (batch, cache_length, prefill_length, sampler.config, len(stops))
    if callback is None and keras.backend.backend() in ("jax", "tensorflow"):
        program = _program(model, ("loop",) + key,
                           lambda m: decode_loop(m, sampler, cache_length, prefill_length))
        tokens = program(**inputs)
    else:
        tokens = _stepwise_loop(model, sampler, key, inputs, cache_length,
                                prefill_length, callback)

    out = np.asarray(ops.convert_to_numpy(tokens))[:, :width]
    if not return_lengths:
        return out
    return out, _row_lengths(out, lengths, max_new_tokens, stops)


# -- the decode step, written once with keras.ops --------------------------------


def prefill(model: keras.Model, tokens: Tensor, start: Tensor, cache_length: int,
            prefill_length: int) -> tuple[Tensor, list[Tensor]]:
    """Runs the first `prefill_length` positions; returns logits at `start - 1` and the cache.

    Args:
        model: the GPT.
        tokens: int32 `(batch, cache_length)` right-padded prompts.
        start: int32 scalar, the shortest prompt length (first decoded position).
        cache_length: static cache size.
        prefill_length: static number of positions to run, ≥ `start`.
    """
    cache = model.init_cache(ops.shape(tokens)[0], cache_length)
    logits, cache = model.call_with_cache(tokens[:, :prefill_length], cache, 0)
    return ops.cast(ops.take(logits, start - 1, axis=1), "float32"), cache


def decode_step(model: keras.Model, sampler: Sampler, position: int | Tensor,
                tokens: Tensor, cache: list[Tensor], logits: Tensor, done: Tensor,
                lengths: Tensor, limits: Tensor, stop_ids: Tensor, seed: Tensor,
                pad: Tensor) -> tuple[Tensor, list[Tensor], Tensor, Tensor]:
    """Fills `position` of every row, then runs the model on it.

    A row still inside its prompt keeps its prompt token, a done row gets
    `pad`, others get the sampled token. A row becomes done after a stop token
    or when it reaches its limit (prompt length + max_new_tokens).

    Args:
        model: the GPT.
        sampler: picks ids from `logits`.
        position: int scalar, the position to fill.
        tokens: int32 `(batch, cache_length)` token buffer.
        cache: the KV cache, filled below `position`.
        logits: float32 `(batch, vocabulary)` predictions for `position`.
        done: bool `(batch,)` rows that finished before this step.
        lengths: int32 `(batch,)` prompt lengths.
        limits: int32 `(batch,)` prompt lengths + max_new_tokens.
        stop_ids: int32 `(n,)` stop token ids (-1 entries never match).
        seed: int32 scalar sampling seed.
        pad: int32 scalar padding id.

    Returns:
        `(tokens, cache, logits, done)` for the next position.
    """
    in_prompt = position < lengths
    sampled = sampler(logits, seed, position)
    prompt_token = ops.take(tokens, position, axis=1)
    token = ops.where(in_prompt, prompt_token, ops.where(done, pad, sampled))
    tokens = write_at(tokens, ops.expand_dims(token, 1), position, axis=1)
    stopped = ops.any(ops.expand_dims(sampled, 1) == ops.expand_dims(stop_ids, 0), axis=1)
    generating = ops.logical_and(ops.logical_not(in_prompt), ops.logical_not(done))
    done = ops.logical_or(
        ops.logical_or(done, ops.logical_and(generating, stopped)), position + 1 >= limits
    )
    logits, cache = model.call_with_cache(ops.expand_dims(token, 1), cache, position)
    return tokens, cache, ops.cast(logits[:, 0], "float32"), done


def decode_loop(model: keras.Model, sampler: Sampler, cache_length: int,
                prefill_length: int) -> Callable[..., Tensor]:
    """The whole generation as one traceable function (for JAX and TensorFlow).

    Args:
        model: the GPT.
        sampler: the sampler.
        cache_length: static cache size.
        prefill_length: static prefill size.

    Returns:
        `run(tokens, lengths, limits, start, stop_ids, seed, pad) -> tokens`,
        using `keras.ops.while_loop` (`lax.while_loop` / `tf.while_loop`).
    """

    def run(tokens, lengths, limits, start, stop_ids, seed, pad):
        logits, cache = prefill(model, tokens, start, cache_length, prefill_length)
        done = ops.zeros_like(lengths) > 0

        def cond(position, tokens, cache, logits, done):
            return ops.logical_not(ops.all(done))

        def body(position, tokens, cache, logits, done):
            tokens, cache, logits, done = decode_step(
                model, sampler, position, tokens, cache, logits, done,
                lengths, limits, stop_ids, seed, pad)
            return position + 1, tokens, cache, logits, done

        state = ops.while_loop(cond, body, (start, tokens, cache, logits, done))
        return state[1]

    return run


# -- running it on each backend --------------------------------------------------


def compile_function(model: keras.Model, fn: Callable, donate: Sequence[int] = ()) -> Callable:
    """`fn` (a function of tensors that calls `model`) compiled for the backend.

    JAX: `jax.jit`, with the model's variable values passed as arguments under
    a `keras.StatelessScope` (not captured as constants: later weight updates
    are seen and no recompilation happens). TensorFlow:
    `tf.function(jit_compile=True)` (variables are read live). PyTorch:
    see `TORCH_STEP`; traced programs also take the variable values as
    arguments.

    Args:
        model: the model whose variables `fn` reads.
        fn: the function to compile.
        donate: JAX only: positions of arguments whose buffers may be reused
            (the KV cache).
    """
    backend = keras.backend.backend()
    if backend == "jax":
        return _jax_compile(model, fn, donate)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    if backend == "torch":
        return _torch_compile(model, fn)
    return fn


def _jax_compile(model, fn, donate):
    import jax

    variables = model.variables

    def pure(values, *args, **kwargs):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return fn(*args, **kwargs)

    jitted = jax.jit(pure, donate_argnums=tuple(d + 1 for d in donate))

    def call(*args, **kwargs):
        return jitted([v.value for v in variables], *args, **kwargs)

    return call


def _torch_compile(model, fn):
    import torch

    if TORCH_STEP == "compile":
        compiled = torch.compile(fn, dynamic=False)
    elif TORCH_STEP == "trace":
        variables = model.variables

        def pure(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return fn(*args)

        traced = []

        def compiled(*args, values=None):
            values = torch_weight_values(model) if values is None else values
            if not traced:
                # Shapes are fixed per program key, so one trace serves every call.
                # The tracer warns about the model's eager-only input checks,
                # which run once here and are rightly left out of the trace.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    traced.append(torch.jit.trace(pure, (values, *args), check_trace=False))
            return traced[0](values, *args)
    elif TORCH_STEP == "eager":
        compiled = fn
    else:
        raise ValueError(f"TORCH_STEP must be 'trace', 'eager' or 'compile', got {TORCH_STEP!r}.")

    def call(*args, values=None):
        # inference_mode, not no_grad: it skips autograd's per-op version and
        # view tracking, which a decode step of many small ops pays per op.
        # Its tensors stay inside `generate`, which returns NumPy.
        with torch.inference_mode():
            if TORCH_STEP == "trace":
                return compiled(*args, values=values)
            return compiled(*args)

    return call


def torch_weight_values(model: keras.Model) -> tuple:
    """The model's variable values as a traced PyTorch program takes them.

    `generate` reads them once per call, not once per step. The tied token
    embedding `(vocabulary, hidden)` is multiplied transposed for the logits;
    on CPU it is passed as the `(vocabulary, hidden)` view of a column-major
    copy, so that product runs as a plain row-major matmul: MKL's transposed
    matrix-vector product was much slower at batch 1 (see docs/benchmarks.md).
    Lookups still read rows of the same values.

    Args:
        model: the model whose `variables` the program takes.

    Example:
    >>> values = torch_weight_values(model)     # one tensor per model.variables entry
    """
    table = None
    if getattr(model, "tie_embeddings", False):
        table = model.embeddings.token_embeddings
    values = []
    for variable in model.variables:
        value = variable.value.detach()
        if variable is table and value.device.type == "cpu":
            value = value.t().contiguous().t()
        values.append(value)
    return tuple(values)


def _program(model, key, build, donate=()):
    """The compiled `build(model)` for `key`, compiled on first use.

    Programs see the model through a weak proxy: they are values of a
    WeakKeyDictionary keyed by the model, so a strong reference would keep
    every model (and its programs) alive forever.
    """
    programs = _PROGRAMS.setdefault(model, {})
    if key not in programs:
        proxy = weakref.proxy(model)
        programs[key] = compile_function(proxy, build(proxy), donate=donate)
    return programs[key]


def _stepwise_loop(model, sampler, key, inputs, cache_length, prefill_length, callback):
    """A Python loop over a compiled step: PyTorch's path, and every backend's with a callback."""
    backend = keras.backend.backend()
    run_prefill = _program(
        model, ("prefill",) + key,
        lambda m: lambda tokens, start: prefill(m, tokens, start, cache_length, prefill_length))

    def build_step(m):
        def step(position, tokens, cache, logits, done, lengths, limits, stop_ids, seed, pad):
            return decode_step(m, sampler, position, tokens, cache, logits, done,
                               lengths, limits, stop_ids, seed, pad)

        return step

    run_step = _program(model, ("step",) + key, build_step, donate=(2,))

    tokens = inputs["tokens"]
    consts = [inputs[k] for k in ("lengths", "limits", "stop_ids", "seed", "pad")]
    lengths = np.asarray(ops.convert_to_numpy(inputs["lengths"]))
    # Traced PyTorch programs take the weights as inputs: read them once per call.
    weights = {}
    if backend == "torch" and TORCH_STEP == "trace":
        weights = {"values": torch_weight_values(model)}
    logits, cache = run_prefill(tokens, inputs["start"], **weights)
    done = ops.zeros_like(inputs["lengths"]) > 0
    done_before = np.zeros(len(lengths), bool)
    # Eager PyTorch takes the position as a Python int (Keras' fast slicing
    # path); compiled programs take a tensor so one trace serves every step.
    tensor_position = backend != "torch" or TORCH_STEP != "eager"
    position = int(ops.convert_to_numpy(inputs["start"]))
    # Every row is done once `position` reaches its limit.
    final = int(np.max(ops.convert_to_numpy(inputs["limits"])))
    while True:
        pos = ops.convert_to_tensor(position, "int32") if tensor_position else position
        tokens, cache, logits, done = run_step(pos, tokens, cache, logits, done, *consts,
                                               **weights)
        position += 1
        # Reading `done` waits for the device: without a callback, look every
        # few steps (steps after every row is done only write padding).
        if callback is None and position % DONE_CHECK_EVERY and position < final:
            continue
        done_now = np.asarray(ops.convert_to_numpy(done))
        if callback is not None:
            produced = np.asarray(ops.convert_to_numpy(tokens[:, position - 1]))
            callback(produced, (position - 1 >= lengths) & ~done_before)
            done_before = done_now
        if done_now.all():
            return tokens


# -- input handling ------------------------------------------------------------------


def _prompt_rows(prompt_ids, padding_mask) -> list[np.ndarray]:
    """The prompts as a list of 1-D int arrays (one per row, ragged allowed)."""
    if isinstance(prompt_ids, (list, tuple)) and prompt_ids and all(
        isinstance(row, (list, tuple, np.ndarray)) for row in prompt_ids
    ):
        if padding_mask is not None:
            raise ValueError("`padding_mask` is only for a padded array of prompts, "
                             "not a list of rows (a list may be ragged already).")
        rows = [np.asarray(row) for row in prompt_ids]
    else:
        array = np.asarray(ops.convert_to_numpy(prompt_ids) if not isinstance(
            prompt_ids, (list, tuple, np.ndarray)) else prompt_ids)
        if array.ndim == 1:
            array = array[None]
        if array.ndim != 2:
            raise ValueError(
                f"`prompt_ids` must be (batch, length), (length,) or a list of rows; "
                f"got shape {array.shape}."
            )
        if padding_mask is None:
            rows = list(array)
        else:
            mask = np.asarray(ops.convert_to_numpy(padding_mask)).astype(bool)
            if mask.ndim == 1:
                mask = mask[None]
            if mask.shape != array.shape:
                raise ValueError(f"`padding_mask` shape {mask.shape} does not match "
                                 f"`prompt_ids` shape {array.shape}.")
            rows = [row[m] for row, m in zip(array, mask)]
    if not rows:
        raise ValueError("`prompt_ids` is empty: give at least one prompt.")
    for i, row in enumerate(rows):
        if row.ndim != 1:
            raise ValueError(f"Prompt {i} must be a flat list of ids, got shape {row.shape}.")
        if row.size == 0:
            raise ValueError(f"Prompt {i} is empty: every prompt needs at least one token.")
        if row.dtype.kind not in "iu":
            raise ValueError(f"Prompt {i} must hold integer ids, got dtype {row.dtype}.")
    return rows


def _validate(model, prompts, max_new_tokens, pad_token_id) -> None:
    if int(max_new_tokens) != max_new_tokens or max_new_tokens < 0:
        raise ValueError(f"`max_new_tokens` must be a non-negative integer, got {max_new_tokens!r}.")
    vocabulary = model.vocabulary_size
    for i, row in enumerate(prompts):
        bad = row[(row < 0) | (row >= vocabulary)]
        if bad.size:
            raise ValueError(f"Prompt {i} holds token id {int(bad[0])}, outside "
                             f"[0, {vocabulary}) (the model's `vocabulary_size`).")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > model.max_sequence_length:
        raise ValueError(
            f"The longest prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) "
            f"= {longest + max_new_tokens} exceeds the model's max_sequence_length "
            f"({model.max_sequence_length}). Shorten the prompt (e.g. keep its last "
            f"{model.max_sequence_length - max_new_tokens} tokens) or ask for fewer tokens."
        )
    if not 0 <= pad_token_id < 2**31:
        raise ValueError(f"`pad_token_id` must be a non-negative int32, got {pad_token_id!r}.")


def check_stop_ids(model, stop_token_ids) -> list[int]:
    """`stop_token_ids` as a list of ints, each checked to be in the vocabulary."""
    if stop_token_ids is None:
        return []
    if isinstance(stop_token_ids, (int, np.integer)):
        raise ValueError(f"`stop_token_ids` must be a list of ids, got the int "
                         f"{stop_token_ids}; write [{stop_token_ids}].")
    ids = [int(i) for i in stop_token_ids]
    for i in ids:
        if not 0 <= i < model.vocabulary_size:
            raise ValueError(f"Stop token id {i} is outside [0, {model.vocabulary_size}).")
    return ids


def _stop_ids(model, stop_token_ids) -> np.ndarray:
    """Stop ids padded with -1 (never sampled) to a power-of-two count."""
    ids = check_stop_ids(model, stop_token_ids)
    size = 1 << max(0, len(ids) - 1).bit_length()
    return np.array(ids + [-1] * (size - len(ids)), "int32")


def _row_lengths(out, prompt_lengths, max_new_tokens, stops) -> np.ndarray:
    """Each row's length: through its first generated stop token, or prompt + max_new_tokens."""
    lengths = prompt_lengths + max_new_tokens
    stop_set = stops[stops >= 0]
    for r, start in enumerate(prompt_lengths):
        hits = np.flatnonzero(np.isin(out[r, start : start + max_new_tokens], stop_set))
        if hits.size:
            lengths[r] = start + hits[0] + 1
    return lengths.astype("int32")
