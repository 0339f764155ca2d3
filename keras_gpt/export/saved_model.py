"""Export for serving: a TensorFlow SavedModel with `logits` and `generate` signatures.

`export(model, path)` writes a SavedModel that plain TensorFlow (and TensorFlow
Serving) loads without keras_gpt. Its two serving signatures:

- `logits(token_ids, padding_mask)` → `{"logits"}`: int32 `[batch, seq]`
  inputs (dynamic batch and length) → float32 `[batch, seq, vocabulary]`.
- `generate(token_ids, padding_mask, max_new_tokens, temperature, top_k, top_p,
  seed)` → `{"token_ids", "lengths"}`: the whole decode loop (prefill, KV
  cache, sampling, stop tokens) inside the graph; the same loop and sampler
  code as `GPT.generate` (`keras_gpt.generation.decode_loop`,
  `keras_gpt.generation.samplers.DynamicSampler`), so greedy and seeded sampled ids match it.

How it is built, per backend:

1. The serving computations are written once with `keras.ops`
   (`logits_function`, `generate_function`) and registered as endpoints of a
   `keras.export.ExportArchive`; TensorFlow traces them directly, JAX converts
   them with `jax2tf` (with a shared symbolic `seq` dimension).
2. Thin TensorFlow wrappers (`_serving_signatures`) check the request (clear
   `InvalidArgument` errors instead of silent clamping), slice the output to
   its true width and name the outputs; these are the saved signatures.
3. PyTorch cannot trace into a SavedModel (Keras needs `torch_xla`): the model
   is saved as a preset and exported by a TensorFlow child process
   (`_export_in_child`). Weights are backend-independent, so the result is the same.
   `backend="tensorflow"` takes this route from JAX too.

`export_onnx` writes the `logits` computation as ONNX (through TensorFlow's
`tf2onnx`, in a child process from JAX and PyTorch).

Quantized (`GPT.quantize("int8")`) and bfloat16 models export the same way:
the graphs read their int8 (or bfloat16) variables, so the SavedModel keeps
their smaller size, and both signatures still return float32 logits and
int32 ids. From PyTorch the temporary preset records the quantization, so the
TensorFlow child rebuilds the model quantized.

The SavedModel is written to a temporary directory beside `path` and renamed
into place only when complete: a failed export never leaves a directory that
looks like a valid SavedModel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence

import keras
import numpy as np
from keras import ops

from keras_gpt.backend import Tensor
from keras_gpt.files import atomic_directory
from keras_gpt.generation import check_stop_ids, decode_loop
from keras_gpt.generation.samplers import DynamicSampler
from keras_gpt.model import GPT
from keras_gpt.presets.handles import resolve
from keras_gpt.random import HASH_RANGE

#: The signature names, in the order they are registered (`logits` is also
#: `serving_default`).
SIGNATURES = ("logits", "generate")


#: Inputs of the `generate` signature: name -> (dtype, shape; None = dynamic).
GENERATE_INPUTS = {
    "token_ids": ("int32", (None, None)),
    "padding_mask": ("int32", (None, None)),
    "max_new_tokens": ("int32", ()),
    "temperature": ("float32", ()),
    "top_k": ("int32", ()),
    "top_p": ("float32", ()),
    "seed": ("int32", ()),
}


#: Inputs of the `logits` signature.
LOGITS_INPUTS = {
    "token_ids": ("int32", (None, None)),
    "padding_mask": ("int32", (None, None)),
}


#: Written inside the SavedModel (TensorFlow ignores `assets.extra/`).
METADATA_FILE = os.path.join("assets.extra", "keras_gpt_export.json")


def export(
    model_or_preset: keras.Model | str | os.PathLike,
    path: str | os.PathLike,
    max_new_tokens: int | None = None,
    stop_token_ids: Sequence[int] | None = None,
    pad_token_id: int = 0,
    overwrite: bool = False,
    backend: str | None = None,
    verbose: bool = False,
) -> str:
    """Writes a SavedModel with `logits` and `generate` signatures for serving.

    Works under every backend: TensorFlow and JAX export directly; PyTorch
    saves a temporary preset and exports it in a TensorFlow child process.
    The SavedModel needs only TensorFlow to load (`tf.saved_model.load(path)`
    or TensorFlow Serving); see docs/guides/export.md for the inputs and outputs.

    Args:
        model_or_preset: a built `keras_gpt.GPT`, or a preset handle or
            directory for `GPT.from_preset`.
        path: output directory; must not exist unless `overwrite`.
        max_new_tokens: the largest `max_new_tokens` a `generate` request may
            ask for, at most `max_sequence_length - 1`; defaults to that.
        stop_token_ids: ids that end a row in `generate` (the stop token is
            kept), fixed at export time, e.g. the end-of-text id.
        pad_token_id: id written after each row's last token.
        overwrite: replace an existing `path`.
        backend: the backend that traces the graphs. Default: the current one
            if it can export (TensorFlow, JAX), else `"tensorflow"` in a child
            process. `"tensorflow"` from JAX gives plain TensorFlow ops instead
            of JAX's StableHLO (`XlaCallModule`), which an older TensorFlow
            Serving cannot read.
        verbose: print Keras' endpoint summary.

    Returns:
        `path`, as a string.

    Example:
    >>> model = keras_gpt.GPT(vocabulary_size=256, num_layers=2, num_heads=2,
    ...                       hidden_dim=32, max_sequence_length=64, seed=0)
    >>> keras_gpt.export(model, "served/gpt/1", max_new_tokens=32)
    'served/gpt/1'
    >>> import tensorflow as tf                   # elsewhere, without keras_gpt
    >>> served = tf.saved_model.load("served/gpt/1")
    >>> out = served.signatures["generate"](token_ids=tf.constant([[1, 2, 3]]),
    ...     padding_mask=tf.ones((1, 3), tf.int32), max_new_tokens=8,
    ...     temperature=0.0, top_k=0, top_p=1.0, seed=0)["token_ids"]
    """
    path = os.path.normpath(os.fspath(path))
    _check_path(path, overwrite)
    if isinstance(stop_token_ids, (int, np.integer)):
        raise ValueError(
            f"`stop_token_ids` must be a list of ids, got the int "
            f"{stop_token_ids}; write [{stop_token_ids}]."
        )
    current = keras.backend.backend()
    if backend not in (None, "tensorflow", "jax"):
        raise ValueError(f"`backend` must be None, 'tensorflow' or 'jax', got {backend!r}.")
    target = backend or ("tensorflow" if current == "torch" else current)
    if target == "jax" and current != "jax":
        raise ValueError(
            f"backend='jax' needs KERAS_BACKEND=jax (the current backend is {current!r})."
        )
    if target != current:
        if not isinstance(model_or_preset, (str, os.PathLike)):
            model = _resolve_model(model_or_preset)  # check here, not in the child
            _check_max_new_tokens(model, max_new_tokens)
            _check_stop_ids(model, stop_token_ids)
            _check_pad_id(model, pad_token_id)
        arguments = ["--pad-token-id", str(int(pad_token_id))]
        if max_new_tokens is not None:
            arguments += ["--max-new-tokens", str(max_new_tokens)]
        if stop_token_ids is not None:
            arguments += ["--stop-token-ids", ",".join(str(int(i)) for i in stop_token_ids)]
        return _export_in_child(model_or_preset, path, arguments, overwrite)
    model = _resolve_model(model_or_preset)
    max_new_tokens = _check_max_new_tokens(model, max_new_tokens)
    stops = _check_stop_ids(model, stop_token_ids)
    _check_pad_id(model, pad_token_id)

    # Overwrite was checked above: an existing `path` here is to be replaced.
    with atomic_directory(path, overwrite=True) as staging:
        staging = str(staging)
        archive = keras.export.ExportArchive()
        _add_endpoints(archive, model, max_new_tokens, stops, int(pad_token_id))
        archive.write_out(staging, options=_save_options(), verbose=verbose)
        metadata = dict(
            signatures=list(SIGNATURES),
            max_new_tokens=max_new_tokens,
            max_sequence_length=model.max_sequence_length,
            vocabulary_size=model.vocabulary_size,
            stop_token_ids=[int(i) for i in stops],
            pad_token_id=int(pad_token_id),
            exported_with_backend=keras.backend.backend(),
            model_config=model.get_config(),
        )
        os.makedirs(os.path.join(staging, "assets.extra"), exist_ok=True)
        with open(os.path.join(staging, METADATA_FILE), "w") as f:
            json.dump(metadata, f, indent=2, default=str)
    return path


def logits_function(model: keras.Model) -> Callable[[Tensor, Tensor], Tensor]:
    """`logits(token_ids, padding_mask)`: float32 logits, as `model(...)` gives.

    Args:
        model: the GPT.

    Example:
    >>> fn = logits_function(model)
    >>> tuple(fn(np.ones((1, 4), "int32"), np.ones((1, 4), "int32")).shape)
    (1, 4, 257)
    """

    def logits(token_ids, padding_mask):
        out = model({"token_ids": token_ids, "padding_mask": padding_mask}, training=False)
        return ops.cast(out, "float32")

    return logits


def generate_function(
    model: keras.Model, max_new_tokens: int, stop_ids: np.ndarray, pad_token_id: int
) -> Callable[..., dict[str, Tensor]]:
    """The traceable generation behind the `generate` signature.

    Prompts may be left- or right-padded (`padding_mask` marks real tokens):
    each row's real tokens are moved to the front, then `decode_loop` runs
    over a cache of `max_sequence_length` positions (a static size, so one
    graph serves every prompt length). Out-of-range requests are clamped here;
    the TensorFlow signature in front of it rejects them with a clear error.

    Args:
        model: the GPT.
        max_new_tokens: the export-time maximum.
        stop_ids: int32 stop ids (may be empty).
        pad_token_id: id after each row's last token.

    Returns:
        `generate(token_ids, padding_mask, max_new_tokens, temperature, top_k,
        top_p, seed)` → dict with `token_ids` (batch, max_sequence_length),
        `lengths` (batch,) and `width` (scalar: longest prompt + new tokens).

    Example:
    >>> fn = generate_function(model, 16, np.array([], "int32"), 0)
    """
    cache_length = model.max_sequence_length
    limit = int(max_new_tokens)
    stops = np.asarray(stop_ids, "int32")

    def generate(token_ids, padding_mask, max_new_tokens, temperature, top_k, top_p, seed):
        token_ids = ops.cast(token_ids, "int32")
        mask = ops.cast(padding_mask, "bool")
        batch, seq = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
        index = ops.expand_dims(ops.arange(0, seq, dtype="int32"), 0)
        # Real tokens first, in order (left padding becomes right padding).
        order = ops.argsort(ops.where(mask, index, index + seq), axis=1)
        prompts = ops.take_along_axis(token_ids, order, axis=1)
        lengths = ops.clip(ops.sum(ops.cast(mask, "int32"), axis=1), 1, cache_length)
        prompts = ops.where(index < ops.expand_dims(lengths, 1), prompts, pad_token_id)
        padding = ops.full((batch, cache_length), pad_token_id, dtype="int32")
        buffer = ops.concatenate([prompts, padding], axis=1)[:, :cache_length]

        longest = ops.max(lengths)
        new = ops.clip(
            ops.cast(max_new_tokens, "int32"), 0, ops.minimum(limit, cache_length - longest)
        )
        limits = lengths + new
        start = ops.minimum(ops.min(lengths), cache_length - 1)
        sampler = DynamicSampler(temperature, top_k, top_p)
        # Prefill the prompt width only (symbolic on JAX, known to fit the cache).
        run = decode_loop(model, sampler, cache_length, seq)
        tokens = run(
            buffer,
            start,
            lengths,
            limits,
            ops.convert_to_tensor(_padded_stops(stops)),
            ops.cast(seed, "int32") % HASH_RANGE,
            ops.convert_to_tensor(pad_token_id, "int32"),
        )

        positions = ops.expand_dims(ops.arange(0, cache_length, dtype="int32"), 0)
        row_lengths = limits
        if stops.size:
            generated = ops.logical_and(
                positions >= ops.expand_dims(lengths, 1), positions < ops.expand_dims(limits, 1)
            )
            is_stop = ops.any(ops.expand_dims(tokens, -1) == stops, axis=-1)
            is_stop = ops.logical_and(is_stop, generated)
            first = ops.cast(ops.argmax(ops.cast(is_stop, "int32"), axis=1), "int32")
            row_lengths = ops.where(ops.any(is_stop, axis=1), first + 1, limits)
        tokens = ops.where(positions < ops.expand_dims(row_lengths, 1), tokens, pad_token_id)
        return {"token_ids": tokens, "lengths": row_lengths, "width": longest + new}

    return generate


def _padded_stops(stops: np.ndarray) -> np.ndarray:
    # decode_loop compares with a non-empty list; -1 never matches a sampled id.
    return stops if stops.size else np.array([-1], "int32")


def _add_endpoints(archive, model, max_new_tokens, stops, pad_token_id) -> None:
    """Traces the keras.ops functions, then adds TensorFlow wrappers as the signatures.

    The traced functions are endpoints of a second archive that only traces:
    the saved one holds just the two signatures (and the variables they use).
    """
    tracer = keras.export.ExportArchive()
    tracer.track(model)
    raw_logits = tracer.add_endpoint(
        "logits",
        logits_function(model),
        _input_specs(LOGITS_INPUTS),
        **_backend_endpoint_kwargs(model, LOGITS_INPUTS),
    )
    raw_generate = tracer.add_endpoint(
        "generate",
        generate_function(model, max_new_tokens, stops, pad_token_id),
        _input_specs(GENERATE_INPUTS),
        **_backend_endpoint_kwargs(model, GENERATE_INPUTS),
    )
    for name, fn in zip(
        SIGNATURES, _serving_signatures(model, raw_logits, raw_generate, max_new_tokens)
    ):
        fn.get_concrete_function()
        archive.add_endpoint(name, fn)


def _save_options():
    import tensorflow as tf

    # Serving needs no gradients, and jax2tf's custom gradients fail to trace
    # when the converted function is called from another tf.function.
    return tf.saved_model.SaveOptions(experimental_custom_gradients=False)


def _input_specs(inputs: dict) -> list:
    return [
        keras.InputSpec(shape=shape, dtype=dtype, name=name)
        for name, (dtype, shape) in inputs.items()
    ]


def _backend_endpoint_kwargs(model, inputs: dict) -> dict:
    """JAX: one symbolic `seq` for token_ids and padding_mask (Keras would give
    each input its own symbol, and the two could not be combined), known to fit
    the context (the model checks it; the signature asserts it at run time)."""
    if keras.backend.backend() != "jax":
        return {}
    shapes = [{(None, None): "(batch, seq)", (): "()"}[shape] for _, shape in inputs.values()]
    return {
        "jax2tf_kwargs": {
            "polymorphic_shapes": shapes,
            "polymorphic_constraints": (f"seq <= {model.max_sequence_length}",),
        }
    }


def _serving_signatures(model, raw_logits, raw_generate, limit):
    """TensorFlow functions in front of the traced graphs: request checks, output names."""
    import tensorflow as tf

    vocabulary = model.vocabulary_size
    context = model.max_sequence_length

    def check_ids(token_ids, padding_mask):
        return [
            tf.debugging.assert_equal(
                tf.shape(token_ids),
                tf.shape(padding_mask),
                message="token_ids and padding_mask must have the same shape",
            ),
            tf.debugging.assert_less_equal(
                tf.shape(token_ids)[1],
                context,
                message=f"sequence longer than the model's max_sequence_length ({context})",
            ),
            tf.debugging.assert_non_negative(token_ids, message="token ids must be >= 0"),
            tf.debugging.assert_less(
                token_ids, vocabulary, message=f"token ids must be < vocabulary_size ({vocabulary})"
            ),
        ]

    specs = {
        name: tf.TensorSpec(shape, dtype, name=name)
        for name, (dtype, shape) in GENERATE_INPUTS.items()
    }

    @tf.function(input_signature=[specs["token_ids"], specs["padding_mask"]])
    def logits(token_ids, padding_mask):
        with tf.control_dependencies(check_ids(token_ids, padding_mask)):
            return {"logits": raw_logits(token_ids, padding_mask)}

    @tf.function(input_signature=[specs[name] for name in GENERATE_INPUTS])
    def generate(token_ids, padding_mask, max_new_tokens, temperature, top_k, top_p, seed):
        prompt_lengths = tf.reduce_sum(tf.cast(padding_mask != 0, tf.int32), axis=1)
        checks = check_ids(token_ids, padding_mask) + [
            tf.debugging.assert_positive(
                prompt_lengths, message="every prompt needs at least one real token"
            ),
            tf.debugging.assert_non_negative(max_new_tokens, message="max_new_tokens must be >= 0"),
            tf.debugging.assert_less_equal(
                max_new_tokens,
                limit,
                message=f"max_new_tokens must be <= {limit} (the maximum fixed at export)",
            ),
            tf.debugging.assert_less_equal(
                tf.reduce_max(prompt_lengths) + max_new_tokens,
                context,
                message=f"longest prompt + max_new_tokens exceeds max_sequence_length ({context})",
            ),
            tf.debugging.assert_non_negative(temperature, message="temperature must be >= 0"),
            tf.debugging.assert_non_negative(top_k, message="top_k must be >= 0 (0 = off)"),
            tf.debugging.assert_positive(top_p, message="top_p must be in (0, 1]"),
            tf.debugging.assert_less_equal(top_p, 1.0, message="top_p must be in (0, 1]"),
        ]
        with tf.control_dependencies(checks):
            out = raw_generate(
                token_ids, padding_mask, max_new_tokens, temperature, top_k, top_p, seed
            )
        return {"token_ids": out["token_ids"][:, : out["width"]], "lengths": out["lengths"]}

    return logits, generate


def _check_path(path: str, overwrite: bool) -> None:
    if os.path.exists(path) and not overwrite:
        raise ValueError(
            f"Export path {path!r} already exists; choose a new directory or pass overwrite=True."
        )
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"Export path {path!r} is a file, not a directory.")


def _resolve_model(model_or_preset) -> keras.Model:
    if isinstance(model_or_preset, (str, os.PathLike)):
        return GPT.from_preset(os.fspath(model_or_preset))
    model = model_or_preset
    if isinstance(model, keras.Model) and not model.built:
        raise ValueError(
            f"The model {model.name!r} is not built: call it on a batch of "
            "token ids (or build() it) before exporting."
        )
    if not isinstance(model, keras.Model) or not all(
        hasattr(model, a) for a in ("call_with_cache", "init_cache", "max_sequence_length")
    ):
        raise ValueError(
            f"Expected a keras_gpt.GPT or a preset handle, got {type(model).__name__}."
        )
    return model


def _check_max_new_tokens(model, max_new_tokens) -> int:
    context = model.max_sequence_length
    if max_new_tokens is None:
        return context - 1
    if int(max_new_tokens) != max_new_tokens or not 1 <= max_new_tokens < context:
        raise ValueError(
            f"`max_new_tokens` ({max_new_tokens!r}) must be an integer in [1, {context - 1}]: "
            f"a prompt of at least one token plus the new tokens must fit in the model's "
            f"max_sequence_length ({context})."
        )
    return int(max_new_tokens)


def _check_pad_id(model, pad_token_id) -> None:
    if int(pad_token_id) != pad_token_id or not 0 <= pad_token_id < model.vocabulary_size:
        raise ValueError(
            f"`pad_token_id` ({pad_token_id!r}) must be a token id in [0, {model.vocabulary_size})."
        )


def _check_stop_ids(model, stop_token_ids) -> np.ndarray:
    return np.array(check_stop_ids(model, stop_token_ids), "int32")


def _export_in_child(model_or_preset, path, arguments: list[str], overwrite: bool) -> str:
    """Saves the model as a preset (if needed) and runs `keras-gpt export` under TensorFlow.

    Weights are backend-independent, so the TensorFlow model is the same model.
    """
    with tempfile.TemporaryDirectory(prefix="keras_gpt_export_") as scratch:
        if isinstance(model_or_preset, (str, os.PathLike)):
            preset = os.fspath(model_or_preset)
            # A handle that names no preset is refused here, as on the other commands
            # (a PresetError), not as a failed child process.
            resolve(preset)
        else:
            preset = os.path.join(scratch, "preset")
            _resolve_model(model_or_preset).save_to_preset(preset)
        command = [sys.executable, "-m", "keras_gpt.cli", "export", preset, path, *arguments]
        if overwrite:
            command.append("--overwrite")
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
        if message.startswith("ValueError: "):
            raise ValueError(message[len("ValueError: ") :])
        raise RuntimeError(
            "Exporting through TensorFlow in a child process failed:\n" + proc.stderr[-4000:]
        )
    return path
