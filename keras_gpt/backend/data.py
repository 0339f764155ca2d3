"""Feeding a `keras.utils.PyDataset` to `fit` and `evaluate` without TensorFlow's stall."""

from __future__ import annotations

import keras
import numpy as np


def tf_dataset(dataset: keras.utils.PyDataset, parallel_calls: int | None = None):
    """The batches of a `PyDataset` (tuples of arrays) as a `tf.data.Dataset`, in order.

    tf.data's autotuning is off: with it on, deleting the iterator waits for the
    autotuner's next wake-up, whose period doubles (…, 5.12 s, 10.24 s, 20.48 s),
    so a `fit` or `evaluate` over Keras' own adapter (a generator with
    `prefetch(AUTOTUNE)`) returned seconds after its last step: rounds of the
    Shakespeare recipe took 20.5 s where their steps took 11-13 s
    (TensorFlow 2.21).

    Args:
        dataset: a `PyDataset` whose items are nests (tuples, dicts) of NumPy
            arrays with the same structure, dtypes and trailing shapes (the
            first dimension may vary).
        parallel_calls: batches built at once (default 2).

    Example:
    >>> from keras_gpt.data import RandomWindows
    >>> tokens = np.arange(10_000) % 257
    >>> model.compile(optimizer="adamw", loss="sparse_categorical_crossentropy")
    >>> history = model.fit(tf_dataset(RandomWindows(tokens, 64, 12, steps=4)), verbose=0)
    """
    import tensorflow as tf

    first = dataset[0]  # any nest of arrays: (x, y), ({"token_ids": ..}, y, weights), ...
    flat = [np.asarray(a) for a in tf.nest.flatten(first)]
    dtypes = tuple(tf.as_dtype(a.dtype) for a in flat)
    shapes = tuple((None,) + a.shape[1:] for a in flat)

    def load(index):
        return tuple(np.asarray(a) for a in tf.nest.flatten(dataset[int(index)]))

    def fetch(index):
        arrays = tf.numpy_function(load, [index], dtypes, stateful=False)
        for array, shape in zip(arrays, shapes):
            array.set_shape(shape)
        return tf.nest.pack_sequence_as(first, list(arrays))

    options = tf.data.Options()
    options.autotune.enabled = False
    calls = parallel_calls or 2
    data = tf.data.Dataset.range(len(dataset)).map(
        fetch, num_parallel_calls=calls, deterministic=True
    )
    return data.prefetch(calls).with_options(options)


def fit_input(dataset: keras.utils.PyDataset):
    """What to give `fit`/`evaluate` for a `PyDataset`: on TensorFlow its `tf_dataset`
    (see there why), on JAX and PyTorch the dataset itself."""
    if keras.backend.backend() == "tensorflow":
        return tf_dataset(dataset)
    return dataset
