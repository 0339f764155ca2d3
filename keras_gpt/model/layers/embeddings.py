"""Token plus position embeddings, and the tied output projection."""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from keras_gpt.backend import dense_gradient, int8_matmul
from keras_gpt.backend.layers import WithoutCollectOnDelete
from keras_gpt.model.layers.dense import check_quantization_mode
from keras_gpt.random import SeededNormal, derive_seed, fresh_seed

POSITION_EMBEDDINGS = ("learned", "sinusoidal", "none")


def sinusoidal_positions(positions, hidden_dim: int, dtype: str = "float32"):
    """The fixed sin/cos table of "Attention Is All You Need" at `positions`.

    Args:
        positions: integer tensor of positions, any shape.
        hidden_dim: even embedding width.
        dtype: output dtype.
    """
    half = hidden_dim // 2
    freqs = ops.exp(ops.arange(0, half, dtype="float32") * (-math.log(10000.0) / half))
    angles = ops.expand_dims(ops.cast(positions, "float32"), -1) * freqs
    table = ops.concatenate([ops.sin(angles), ops.cos(angles)], axis=-1)
    return ops.cast(table, dtype)


@keras.saving.register_keras_serializable(package="keras_gpt")
class TokenAndPositionEmbedding(WithoutCollectOnDelete, keras.layers.Layer):
    """Sums token and position embeddings; `project` maps back to the vocabulary.

    Positions are gathered with `ops.take` (never sliced from the table), so the
    layer traces and exports with a symbolic sequence length.

    Args:
        vocabulary_size: number of token ids.
        max_sequence_length: number of positions (learned table size).
        hidden_dim: embedding width.
        position_embedding: `"learned"` (GPT-2), `"sinusoidal"` (fixed) or
            `"none"` (no additive positions: a RoPE model rotates queries and
            keys in attention instead).
        init_stddev: standard deviation of the N(0, σ) initial weights.
        seed: integer seed for the initial weights; `None` picks one.

    Example:
    >>> layer = TokenAndPositionEmbedding(100, 16, 8, seed=0)
    >>> h = layer(keras.ops.zeros((2, 5), "int32"))      # (2, 5, 8)
    >>> logits = layer.project(h)                        # (2, 5, 100)
    """

    def __init__(
        self,
        vocabulary_size: int,
        max_sequence_length: int,
        hidden_dim: int,
        position_embedding: str = "learned",
        init_stddev: float = 0.02,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(
                f"`position_embedding` must be one of {POSITION_EMBEDDINGS}, "
                f"got {position_embedding!r}."
            )
        if position_embedding == "sinusoidal" and hidden_dim % 2:
            raise ValueError(f"Sinusoidal positions need an even `hidden_dim`, got {hidden_dim}.")
        self.vocabulary_size = int(vocabulary_size)
        self.max_sequence_length = int(max_sequence_length)
        self.hidden_dim = int(hidden_dim)
        self.position_embedding = position_embedding
        self.init_stddev = float(init_stddev)
        self.seed = fresh_seed() if seed is None else int(seed)

    def build(self, input_shape=None):
        self.token_embeddings = self.add_weight(
            shape=(self.vocabulary_size, self.hidden_dim),
            initializer=SeededNormal(self.init_stddev, derive_seed(self.seed, 0)),
            name="token_embeddings",
        )
        if self.position_embedding == "learned":
            self.position_embeddings = self.add_weight(
                shape=(self.max_sequence_length, self.hidden_dim),
                initializer=SeededNormal(self.init_stddev, derive_seed(self.seed, 1)),
                name="position_embeddings",
            )
        self.built = True

    def call(self, token_ids, start_index=0):
        """Embeds `token_ids` (batch, seq) placed at positions start_index + [0, seq).

        `start_index` is an int scalar or a `(batch,)` vector (one start per row).
        """
        if self.quantization_mode == "int8":
            rows = ops.take(self.token_embeddings, token_ids, axis=0)
            scale = ops.take(self.token_embeddings_scale, token_ids, axis=0)
            tokens = ops.cast(rows, self.compute_dtype) / ops.expand_dims(
                ops.cast(scale, self.compute_dtype), -1
            )
        else:
            tokens = ops.take(dense_gradient(self.token_embeddings), token_ids, axis=0)
        if self.position_embedding == "none":
            return tokens
        positions = ops.arange(0, ops.shape(token_ids)[-1], dtype="int32")
        if getattr(start_index, "shape", None) is not None and len(start_index.shape) == 1:
            # One start per row (continuous batching): positions (batch, seq).
            positions = positions[None, :] + ops.expand_dims(ops.cast(start_index, "int32"), 1)
        else:
            positions = positions + ops.cast(start_index, "int32")
        if self.position_embedding == "learned":
            pos = ops.take(dense_gradient(self.position_embeddings), positions, axis=0)
        else:
            pos = sinusoidal_positions(positions, self.hidden_dim, tokens.dtype)
        return tokens + ops.cast(pos, tokens.dtype)

    def position_table(self):
        """The `(max_sequence_length, hidden_dim)` position embeddings, learned or sinusoidal."""
        if self.position_embedding == "none":
            raise ValueError("This embedding adds no positions (position_embedding='none').")
        if self.position_embedding == "learned":
            return self.position_embeddings
        return sinusoidal_positions(
            ops.arange(0, self.max_sequence_length, dtype="int32"), self.hidden_dim
        )

    def project(self, hidden):
        """Tied output projection: logits = hidden · Eᵀ."""
        if self.quantization_mode == "int8":
            return int8_matmul(
                hidden,
                ops.convert_to_tensor(self.token_embeddings),
                ops.convert_to_tensor(self.token_embeddings_scale),
                transposed=True,
            )
        kernel = ops.cast(self.token_embeddings, hidden.dtype)
        return ops.matmul(hidden, ops.transpose(kernel))

    def quantize(self, mode: str | None = None, type_check: bool = True, config: Any = None):
        """Stores the token embedding E as int8 rows with one scale per token.

        One scale per row serves both uses of E: a lookup reads row t
        (`int8_row / scale_t`), and the tied projection's output t is
        `h · int8_row_t / scale_t`, so its scales are per output as in an
        int8 Dense. Keras' convention: `int8 = round(E · scale)`,
        `scale = 127 / max|row|`. Position embeddings stay float: they are
        read one row per token, never streamed whole.

        Args:
            mode: `"int8"`.
            type_check: unused (Keras' signature).
            config: unused (Keras' signature).
        """
        check_quantization_mode(mode)
        # Keras' own quantizer, as its int8 Dense uses (one scale per row here).
        quantized, scale = keras.quantizers.abs_max_quantize(
            ops.cast(self.token_embeddings, "float32"), axis=-1, to_numpy=True
        )
        scale = ops.squeeze(scale, -1)
        del self.token_embeddings
        self.token_embeddings = self.add_weight(
            shape=quantized.shape,
            initializer="zeros",
            dtype="int8",
            trainable=False,
            name="token_embeddings",
        )
        self.token_embeddings_scale = self.add_weight(
            shape=scale.shape, initializer="ones", trainable=False, name="token_embeddings_scale"
        )
        self.token_embeddings.assign(quantized)
        self.token_embeddings_scale.assign(ops.cast(scale, self.variable_dtype))
        self._is_quantized = True
        self.dtype_policy = keras.dtype_policies.get(f"{mode}_from_{self.dtype_policy.name}")

    def _int8_call(self, *args, **kwargs):
        # Keras sends a quantized layer's __call__ here; `call` handles int8.
        return self.call(*args, **kwargs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.hidden_dim,)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "vocabulary_size": self.vocabulary_size,
            "max_sequence_length": self.max_sequence_length,
            "hidden_dim": self.hidden_dim,
            "position_embedding": self.position_embedding,
            "init_stddev": self.init_stddev,
            "seed": self.seed,
        }
