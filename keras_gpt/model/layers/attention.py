"""Multi-head causal self-attention with a fused QKV projection and a KV cache."""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_gpt.backend import (
    Tensor,
    call_sublayer,
    dense_gradient,
    has_accelerator,
    write_at,
    write_rows,
)
from keras_gpt.model.layers.dense import Dense
from keras_gpt.model.layers.dropout import PortableDropout
from keras_gpt.model.layers.normalization import rms_normalize
from keras_gpt.model.layers.rotary import is_row_index, rotary_embedding
from keras_gpt.random import SeededNormal, derive_seed, fresh_seed

_IMPLEMENTATIONS = ("auto", "fused", "plain")

#: How many leading channels of the attention input drive the value-embedding gate
#: (nanochat's `ve_gate_channels`).
VALUE_GATE_CHANNELS = 32


def attention_mask(
    query_length: int | Tensor,
    key_length: int | Tensor,
    start_index: int | Tensor = 0,
    padding_mask: Tensor | None = None,
) -> Tensor:
    """Boolean mask (batch or 1, 1, query, key): True where a query may attend.

    Query i sits at absolute position start_index + i and sees keys at
    positions <= its own; `padding_mask` (batch, key) removes padded keys.
    `start_index` may be a `(batch,)` vector, one start per row (continuous
    batching: every slot at its own position).
    """
    key_pos = ops.arange(0, key_length, dtype="int32")
    if is_row_index(start_index):  # one start per row: (batch, 1, query, key)
        query_pos = ops.arange(0, query_length, dtype="int32")[None, :] + ops.expand_dims(
            ops.cast(start_index, "int32"), 1
        )
        mask = key_pos[None, None, :] <= ops.expand_dims(query_pos, 2)
        mask = ops.expand_dims(mask, 1)
    else:
        query_pos = ops.arange(0, query_length, dtype="int32") + ops.cast(start_index, "int32")
        mask = ops.expand_dims(key_pos, 0) <= ops.expand_dims(query_pos, 1)
        mask = mask[None, None, :, :]
    if padding_mask is not None:
        keys = ops.cast(padding_mask, "bool")[:, None, None, :]
        mask = ops.logical_and(mask, keys)
    return mask


@keras.saving.register_keras_serializable(package="keras_gpt")
class CausalSelfAttention(keras.layers.Layer):
    """Multi-head causal self-attention, as in GPT-2.

    One Dense layer projects to queries, keys and values together (GPT-2's
    `c_attn`), a second projects the heads back (`c_proj`). With `cache` and
    `cache_index` the layer attends over a fixed-size key/value cache, writes
    this call's keys and values into it and returns the updated cache: one
    compiled shape serves every decoding step.

    Args:
        num_heads: number of attention heads.
        hidden_dim: model width; must be divisible by `num_heads`.
        dropout: dropout on the output projection (GPT-2's `resid_pdrop`).
        attention_dropout: dropout on attention probabilities (`attn_pdrop`);
            defaults to `dropout`.
        attention_implementation: `"fused"` uses `keras.ops.dot_product_attention`,
            `"plain"` an explicit softmax(QKᵀ/√d)V; `"auto"` picks the one
            measured fastest on the backend (fused on PyTorch and on
            accelerators, plain on TensorFlow and JAX CPU). With attention
            dropout the plain path is used.
        init_stddev: standard deviation of the QKV kernel initializer.
        output_init_stddev: standard deviation of the output kernel; GPT
            scales it by 1/√(2·num_layers). Defaults to `init_stddev`.
        use_bias: add biases to both projections (GPT-2); nanoGPT's
            `bias=False` models leave them out.
        rope: rotate queries and keys by their absolute positions
            (`rotary_embedding`); keys enter the cache already rotated.
        rope_base: RoPE's frequency base θ.
        qk_norm: RMS-normalize each head's queries and keys (no learned
            scale) before RoPE, as modded-nanogpt and nanochat do: it bounds
            the attention logits, which lets the model train at higher
            learning rates.
        value_embedding_vocabulary_size: with a vocabulary size (0: off),
            value embeddings as in nanochat and modded-nanogpt: the layer's
            own table of `hidden_dim`-wide rows, drawn from
            N(0, `init_stddev`·√hidden_dim) (the values' own scale); the row
            of each input token is added to that position's attention
            values, per head times a gate 2·sigmoid(x[:32]·G) of the layer's
            input (G starts at zero, so the gate at 1). `call` then needs
            the `token_ids`; the cache holds the mixed values.
        seed: integer seed for weights and dropout; `None` picks one.

    Example:
    >>> attn = CausalSelfAttention(num_heads=2, hidden_dim=8, seed=0)
    >>> y = attn(keras.ops.ones((1, 4, 8)))               # (1, 4, 8)
    """

    def __init__(
        self,
        num_heads: int,
        hidden_dim: int,
        dropout: float = 0.0,
        attention_dropout: float | None = None,
        attention_implementation: str = "auto",
        init_stddev: float = 0.02,
        output_init_stddev: float | None = None,
        use_bias: bool = True,
        rope: bool = False,
        rope_base: float = 10000.0,
        qk_norm: bool = False,
        value_embedding_vocabulary_size: int = 0,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if hidden_dim % num_heads:
            raise ValueError(
                f"`hidden_dim` ({hidden_dim}) must be divisible by `num_heads` ({num_heads})."
            )
        if attention_implementation not in _IMPLEMENTATIONS:
            raise ValueError(
                f"`attention_implementation` must be one of {_IMPLEMENTATIONS}, "
                f"got {attention_implementation!r}."
            )
        self.num_heads = int(num_heads)
        self.hidden_dim = int(hidden_dim)
        self.head_dim = self.hidden_dim // self.num_heads
        self.dropout = float(dropout)
        self.attention_dropout = (
            self.dropout if attention_dropout is None else float(attention_dropout)
        )
        self.attention_implementation = attention_implementation
        self.init_stddev = float(init_stddev)
        self.output_init_stddev = (
            self.init_stddev if output_init_stddev is None else float(output_init_stddev)
        )
        self.use_bias = bool(use_bias)
        self.rope = bool(rope)
        self.rope_base = float(rope_base)
        self.qk_norm = bool(qk_norm)
        self.value_embedding_vocabulary_size = int(value_embedding_vocabulary_size or 0)
        if self.rope and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {self.head_dim}.")
        self.seed = fresh_seed() if seed is None else int(seed)

        self.qkv = Dense(
            3 * self.hidden_dim,
            use_bias=self.use_bias,
            kernel_initializer=SeededNormal(self.init_stddev, derive_seed(self.seed, 0)),
            dtype=self.dtype_policy,
            name="qkv",
        )
        # The layer (and its variables' paths, which checkpoints and presets key
        # on) is named "output"; the attribute cannot be, as Keras' `Layer.output`
        # is a read-only property.
        self.output_dense = Dense(
            self.hidden_dim,
            use_bias=self.use_bias,
            kernel_initializer=SeededNormal(self.output_init_stddev, derive_seed(self.seed, 1)),
            dtype=self.dtype_policy,
            name="output",
        )
        # Named, so that variable paths (and checkpoints keyed by them) do not
        # depend on how many layers the process created before.
        self.probs_dropout = PortableDropout(
            self.attention_dropout,
            seed=derive_seed(self.seed, 2),
            dtype=self.dtype_policy,
            name="probs_dropout",
        )
        self.output_dropout = PortableDropout(
            self.dropout,
            seed=derive_seed(self.seed, 3),
            dtype=self.dtype_policy,
            name="output_dropout",
        )

    def build(self, input_shape):
        if self.value_embedding_vocabulary_size:
            # Not named "*kernel" nor "embeddings/token_embeddings": the speedrun
            # optimizer gives both to AdamW (its "scalar" group), not to Muon.
            # Rows start at the scale of the values they join (unit-RMS inputs
            # times a kernel of std init_stddev): on the speedrun recipe rows of
            # std 0.02 instead gained a third as much by step 150.
            self.value_embeddings = self.add_weight(
                shape=(self.value_embedding_vocabulary_size, self.hidden_dim),
                initializer=SeededNormal(
                    self.init_stddev * math.sqrt(self.hidden_dim), derive_seed(self.seed, 4)
                ),
                name="value_embeddings",
            )
            self.value_gate = self.add_weight(
                shape=(min(VALUE_GATE_CHANNELS, self.hidden_dim), self.num_heads),
                initializer="zeros",
                name="value_gate",
            )
        self.qkv.build(input_shape)
        self.output_dense.build(tuple(input_shape[:-1]) + (self.hidden_dim,))
        self.probs_dropout.build()
        self.output_dropout.build()
        self.built = True

    def _use_fused(self, training) -> bool:
        if training and self.attention_dropout > 0:
            return False
        if self.attention_implementation == "auto":
            return keras.backend.backend() == "torch" or has_accelerator()
        return self.attention_implementation == "fused"

    def call(
        self,
        inputs: Tensor,
        padding_mask: Tensor | None = None,
        cache: Tensor | None = None,
        cache_index: int | Tensor | None = None,
        training: bool | None = None,
        token_ids: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Attends causally over `inputs` (batch, seq, hidden).

        Args:
            inputs: hidden states, (batch, seq, hidden).
            padding_mask: (batch, keys) with 1/True for real tokens; keys are the
                `seq` positions, or the cache positions when decoding.
            cache: optional (batch, 2, num_heads, cache_length, head_dim) keys
                and values of earlier positions (updated in place on PyTorch).
            cache_index: position of `inputs[:, 0]` in the cache: an int
                scalar, or a `(batch,)` int vector with one position per row
                when `inputs` holds one token per row (each row attends to
                the cache positions up to its own).
            training: enables dropout.
            token_ids: the (batch, seq) ids of `inputs`' tokens; needed, and
                only read, with value embeddings.

        Returns:
            The output (batch, seq, hidden), or `(output, cache)` when a cache
            was given.
        """
        shape = ops.shape(inputs)
        qkv = call_sublayer(self.qkv, inputs)
        qkv = ops.reshape(qkv, (shape[0], shape[1], 3, self.num_heads, self.head_dim))
        query, key, value = ops.unstack(qkv, 3, axis=2)
        if self.value_embedding_vocabulary_size:
            value = value + self._value_embedding(inputs, token_ids)

        start_index = 0
        if cache is not None:
            if cache_index is None:
                raise ValueError("`cache_index` is required with `cache`.")
            start_index = cache_index
        if self.qk_norm:
            query, key = rms_normalize(query), rms_normalize(key)
        if self.rope:
            query = rotary_embedding(query, start_index, self.rope_base)
            key = rotary_embedding(key, start_index, self.rope_base)
        if cache is not None:
            # Heads-first cache: attention reads each head's keys and values
            # contiguously, with no transposed copy of the cache per step.
            if self.qk_norm or self.rope or self.value_embedding_vocabulary_size:
                new = ops.stack([key, value], axis=2)  # keys as attention uses them
            else:
                new = qkv[:, :, 1:]  # this call's keys and values, as projected
            new = ops.transpose(new, (0, 2, 3, 1, 4))
            if is_row_index(cache_index):
                cache = write_rows(cache, ops.cast(new, cache.dtype), cache_index, axis=3)
            else:
                cache = write_at(cache, ops.cast(new, cache.dtype), cache_index, axis=3)
            key = ops.cast(cache[:, 0], query.dtype)  # (batch, heads, cache_length, head_dim)
            value = ops.cast(cache[:, 1], query.dtype)

        if cache is None and padding_mask is None:
            mask = None  # plain causal: let the kernel use its causal fast path
        else:
            keys = ops.shape(key)[2 if cache is not None else 1]
            mask = attention_mask(ops.shape(query)[1], keys, start_index, padding_mask)

        if self._use_fused(training):
            if cache is not None:  # the kernel takes (batch, seq, heads, head_dim)
                key = ops.transpose(key, (0, 2, 1, 3))
                value = ops.transpose(value, (0, 2, 1, 3))
            out = ops.dot_product_attention(query, key, value, mask=mask, is_causal=mask is None)
        else:
            out = self._plain_attention(
                query, key, value, mask, training, heads_first=cache is not None
            )
        out = ops.reshape(out, (shape[0], shape[1], self.hidden_dim))
        out = call_sublayer(self.output_dense, out)
        if self.dropout:  # the identity at rate 0: skip the layer call (see TransformerBlock)
            out = call_sublayer(self.output_dropout, out, training=training)
        return out if cache is None else (out, cache)

    def _value_embedding(self, inputs, token_ids):
        """Each token's value-embedding row times its head's gate: (batch, seq, heads, head_dim)."""
        if token_ids is None:
            raise ValueError("Value embeddings need the `token_ids` of the inputs.")
        shape = ops.shape(inputs)
        rows = ops.take(dense_gradient(self.value_embeddings), token_ids, axis=0)
        rows = ops.cast(rows, inputs.dtype)
        rows = ops.reshape(rows, (shape[0], shape[1], self.num_heads, self.head_dim))
        channels = int(self.value_gate.shape[0])
        gate = 2.0 * ops.sigmoid(
            ops.matmul(inputs[..., :channels], ops.cast(self.value_gate, inputs.dtype))
        )
        return ops.expand_dims(gate, -1) * rows

    def _plain_attention(self, query, key, value, mask, training, heads_first=False):
        # Keys and values read from the cache stay heads-first (b, h, k, d):
        # transposing them to (b, k, h, d), or leaving the query in (b, q, h, d),
        # made XLA copy the cache transposed at every decoding step (14 % of
        # the decode's kernel time in `benchmarks/profile_jax.py generate`).
        scale = 1.0 / math.sqrt(self.head_dim)
        query = query * ops.cast(scale, query.dtype)
        if heads_first:
            kv = "bhkd"
            scores = ops.einsum("bhqd,bhkd->bhqk", ops.transpose(query, (0, 2, 1, 3)), key)
        else:
            kv = "bkhd"
            scores = ops.einsum("bqhd,bkhd->bhqk", query, key)
        if mask is None:
            mask = attention_mask(ops.shape(query)[1], ops.shape(key)[1])
        # Softmax in float32: half-precision logits overflow and lose mass.
        scores = ops.where(mask, ops.cast(scores, "float32"), -1e9)
        probs = ops.cast(ops.softmax(scores, axis=-1), query.dtype)
        probs = call_sublayer(self.probs_dropout, probs, training=training)
        return ops.einsum(f"bhqk,{kv}->bqhd", probs, value)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim,
            "dropout": self.dropout,
            "attention_dropout": self.attention_dropout,
            "attention_implementation": self.attention_implementation,
            "init_stddev": self.init_stddev,
            "output_init_stddev": self.output_init_stddev,
            "use_bias": self.use_bias,
            "rope": self.rope,
            "rope_base": self.rope_base,
            "qk_norm": self.qk_norm,
            # Only when on: the configs of layers without them stay as they were.
            **(
                {"value_embedding_vocabulary_size": self.value_embedding_vocabulary_size}
                if self.value_embedding_vocabulary_size
                else {}
            ),
            "seed": self.seed,
        }
