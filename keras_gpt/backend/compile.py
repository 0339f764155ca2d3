"""Compiling a function of a model's weights: how each backend runs a decode program.

A program here is a Python function of tensors that reads Keras variables
(a decode step, a whole decode loop). `compile_function` turns it into a
callable `program(values, *args)`, where `values` comes from `weight_values`
and is read once per `generate` call, not once per step:

- JAX: `jax.jit`, with the variables' values passed as arguments under a
  `keras.StatelessScope` (not captured as constants: later weight updates are
  seen, and nothing recompiles).
- TensorFlow: `tf.function(jit_compile=True)`; variables are read live, so
  `values` is `None` and ignored.
- PyTorch: `torch.jit.trace` of the function, traced once per program (its
  shapes are fixed), run under `torch.inference_mode`. Measured on CPU with
  `benchmarks/generate.py` (bench-small, batch 1): 2-3x faster than a Python
  loop over Keras layers; `torch.compile` took minutes to compile and ran
  slower than eager.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Sequence

import keras

from keras_gpt.backend.ops import Tensor


def weight_values(variables: Sequence[keras.Variable], column_major: keras.Variable | None = None):
    """The values a compiled program takes for `variables` (read once per call).

    Args:
        variables: the variables the program reads, in a fixed order.
        column_major: PyTorch on CPU: a `(rows, columns)` variable that is
            multiplied transposed (a tied embedding projecting to logits) is
            passed as the `(rows, columns)` view of a column-major copy, so
            that product runs as a plain row-major matmul: MKL's transposed
            matrix-vector product was much slower at batch 1 (see the
            benchmark history in docs/changelog.md). Lookups still read rows of the same values.

    Returns:
        A list of arrays (JAX), a tuple of tensors (PyTorch), or `None`
        (TensorFlow, which reads variables live).
    """
    backend = keras.backend.backend()
    if backend == "jax":
        return [v.value for v in variables]
    if backend == "torch":
        import torch

        values = []
        for variable in variables:
            value = variable.value.detach()
            # An int8 (in, out) kernel goes column-major too: `int8_matmul`
            # reads its (out, in) view, which is then contiguous (no copy per
            # step). A tied int8 embedding is (out, in) already.
            transposed = variable is column_major
            if value.dtype == torch.int8 and value.ndim == 2:
                transposed = not transposed
            if transposed and value.device.type == "cpu":
                value = value.t().contiguous().t()
            values.append(value)
        return tuple(values)
    return None


def compile_function(
    fn: Callable[..., Tensor],
    variables: Sequence[keras.Variable],
    donate: Sequence[int] = (),
) -> Callable[..., Tensor]:
    """`fn` compiled for the backend, as `program(values, *args)`.

    Args:
        fn: a function of tensors (positional arguments) that reads `variables`.
        variables: every variable `fn` reads (`model.variables`).
        donate: JAX only: positions in `args` of arguments whose buffers the
            program may reuse for its outputs (the KV cache). A donated
            argument must not be used after the call.

    Returns:
        `program(values, *args)`, with `values = weight_values(variables)`.

    Example:
    >>> program = compile_function(step, model.variables, donate=(2,))
    >>> outputs = program(weight_values(model.variables), *inputs)
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        compiled = tf.function(fn, jit_compile=True)
        traced = []

        def call(values, *args):
            if traced:
                return compiled(*args)
            with _without_retracing_warning():
                result = compiled(*args)
            traced.append(True)
            return result

        return call
    variables = list(variables)

    def pure(values, *args):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return fn(*args)

    if backend == "jax":
        import jax

        return jax.jit(pure, donate_argnums=tuple(d + 1 for d in donate))
    if backend == "torch":
        return _torch_traced(pure)
    return lambda values, *args: fn(*args)


class _RetracingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def _without_retracing_warning():
    """TensorFlow: no "N out of the last N calls ... triggered tf.function retracing"
    warning while a program traces. Each program is a `tf.function` of its own that
    traces once (by design: one per prompt bucket and sampler mode), but TensorFlow
    counts the traces of functions defined at one line together and warns, during
    every server's warm-up, of a retracing loop that is not there."""
    logger = logging.getLogger("tensorflow")
    quiet = _RetracingFilter()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _torch_traced(pure: Callable) -> Callable:
    import torch

    traced = []

    def call(values, *args):
        # inference_mode, not no_grad: it skips autograd's per-op version and
        # view tracking, which a decode step of many small ops pays per op.
        with torch.inference_mode():
            if not traced:
                # The tracer warns about the model's eager-only input checks,
                # which run once here and are rightly left out of the trace.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    traced.append(torch.jit.trace(pure, (values, *args), check_trace=False))
            return traced[0](values, *args)

    return call
