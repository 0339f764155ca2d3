"""The few functions whose code differs between TensorFlow, JAX and PyTorch.

Everything else in keras_gpt is written once with `keras.ops` and
`keras.layers`; code that must ask the backend directly lives here, in small
named functions:

- `ops.py`: is a tensor concrete, is there an accelerator (and its name), a dense embedding
  gradient on TensorFlow, in-place buffer writes on PyTorch (`write_at`), int8
  weight products (`int8_matmul`), ReLU² with a one-pass backward on PyTorch
  (`relu_squared`).
- `replicas.py`: this data-parallel replica's index, and a loss scaled for
  `tf.distribute`.
- `compile.py`: compiling a function of a model's weights (the decode
  programs): `jax.jit`, `tf.function(jit_compile=True)`, `torch.jit.trace`.
- `layers.py`: calling a sublayer from its parent's `call` (`call_sublayer`): on
  eager PyTorch without Keras' per-call bookkeeping, which costs ~6 % of a small
  model's step.
- `data.py`: a `PyDataset` as `fit` wants it (`fit_input`): on TensorFlow a
  `tf.data` pipeline without autotuning, which stalled the end of each `fit`.
"""

from keras_gpt.backend.compile import compile_function, weight_values
from keras_gpt.backend.data import fit_input, tf_dataset
from keras_gpt.backend.layers import call_sublayer
from keras_gpt.backend.ops import (
    Tensor,
    accelerator_name,
    dense_gradient,
    has_accelerator,
    in_distribution_strategy,
    int8_matmul,
    is_concrete,
    relu_squared,
    write_at,
    write_rows,
)
from keras_gpt.backend.replicas import replica_index, replica_scaled

__all__ = [
    "accelerator_name",
    "call_sublayer",
    "Tensor",
    "compile_function",
    "dense_gradient",
    "fit_input",
    "has_accelerator",
    "in_distribution_strategy",
    "int8_matmul",
    "relu_squared",
    "is_concrete",
    "replica_index",
    "replica_scaled",
    "tf_dataset",
    "weight_values",
    "write_at",
    "write_rows",
]
