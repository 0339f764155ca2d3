"""Training on several devices or hosts with each backend's own distributed engine.

keras_gpt adds no engine of its own; it prepares the model for the one each
backend already has:

- JAX: `keras.distribution` (`DataParallel`, `ModelParallel` with the layout map
  of `layout_map` / `GPT.get_layout_map`); `configure` sets it up in one call and
  `initialize` joins several processes or hosts.
- PyTorch: `torch.distributed` with `DistributedDataParallel`, driven by
  `ddp_fit`, a training loop that keeps the model's loss, metrics and Keras
  optimizer; launched with `torchrun`.
- TensorFlow: `tf.distribute.MirroredStrategy` / `MultiWorkerMirroredStrategy`
  from `tf_strategy`; build and compile the model in `strategy.scope()`, then
  call `fit` as usual.

The guide `docs/guides/distributed.md` gives the launch commands.

One module per backend: `jax.py`, `torch.py`, `tensorflow.py`; the layout map
of model parallelism belongs to the model (`keras_gpt.model.layout`).
"""

from keras_gpt.backend import replica_scaled
from keras_gpt.distribution.jax import (
    check_model_parallel,
    configure,
    initialize,
    variable_layouts,
)
from keras_gpt.distribution.tensorflow import tf_strategy
from keras_gpt.distribution.torch import ddp_fit, torch_init_process_group
from keras_gpt.model.layout import BATCH_AXIS, MODEL_AXIS, layout_map

__all__ = [
    "BATCH_AXIS",
    "MODEL_AXIS",
    "check_model_parallel",
    "configure",
    "ddp_fit",
    "initialize",
    "layout_map",
    "replica_scaled",
    "tf_strategy",
    "torch_init_process_group",
    "variable_layouts",
]
