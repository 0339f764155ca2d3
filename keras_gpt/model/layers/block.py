"""The pre-LayerNorm transformer block of GPT-2."""

from __future__ import annotations

import keras

from keras_gpt.backend import call_sublayer, relu_squared
from keras_gpt.model.layers.attention import CausalSelfAttention
from keras_gpt.model.layers.dense import Dense
from keras_gpt.model.layers.dropout import PortableDropout
from keras_gpt.model.layers.normalization import make_normalization
from keras_gpt.random import SeededNormal, derive_seed, fresh_seed

ACTIVATIONS = {
    "gelu_approximate": lambda x: keras.activations.gelu(x, approximate=True),
    "gelu": lambda x: keras.activations.gelu(x, approximate=False),
    "relu": keras.activations.relu,
    # ReLU squared (Primer, So et al. 2021; modded-nanogpt, nanochat): as cheap
    # as ReLU and, at small scale, learns faster than GELU. Its PyTorch backward is
    # one product (`relu_squared`), not autograd's four passes.
    "relu2": relu_squared,
}


@keras.saving.register_keras_serializable(package="keras_gpt")
class TransformerBlock(keras.layers.Layer):
    """x + Attention(Norm(x)), then x + MLP(Norm(x)).

    Args:
        num_heads: number of attention heads.
        hidden_dim: model width.
        intermediate_dim: MLP width; defaults to 4·hidden_dim.
        dropout: residual and attention dropout rate.
        activation: `"gelu_approximate"` (GPT-2's tanh GELU), `"gelu"` (exact),
            `"relu"` or `"relu2"` (ReLU squared).
        layer_norm_epsilon: the norms' epsilon; GPT-2 uses 1e-5 (Keras'
            default 1e-3 would not match GPT-2 checkpoints).
        normalization: `"layernorm"` (GPT-2) or `"rmsnorm"`.
        norm_scale: with `"rmsnorm"`, learn a per-channel scale (Llama) or
            not (modded-nanogpt, nanochat).
        attention_implementation: see `CausalSelfAttention`.
        init_stddev: standard deviation of input-side kernels.
        residual_init_stddev: standard deviation of the two kernels that write
            into the residual stream; defaults to `init_stddev`.
        use_bias: biases in the Dense layers and LayerNorms (GPT-2); `False`
            is nanoGPT's `bias=False`.
        rope: rotary position embedding in attention (see `CausalSelfAttention`).
        rope_base: RoPE's frequency base.
        qk_norm: RMS-normalize queries and keys (see `CausalSelfAttention`).
        value_embedding_vocabulary_size: value embeddings in attention (0:
            off; see `CausalSelfAttention`); `call` then needs `token_ids`.
        seed: integer seed for weights and dropout; `None` picks one.

    Example:
    >>> block = TransformerBlock(num_heads=2, hidden_dim=8, seed=0)
    >>> y = block(keras.ops.ones((1, 4, 8)))               # (1, 4, 8)
    """

    def __init__(
        self,
        num_heads: int,
        hidden_dim: int,
        intermediate_dim: int | None = None,
        dropout: float = 0.0,
        activation: str = "gelu_approximate",
        layer_norm_epsilon: float = 1e-5,
        attention_implementation: str = "auto",
        init_stddev: float = 0.02,
        residual_init_stddev: float | None = None,
        use_bias: bool = True,
        normalization: str = "layernorm",
        norm_scale: bool = True,
        rope: bool = False,
        rope_base: float = 10000.0,
        qk_norm: bool = False,
        value_embedding_vocabulary_size: int = 0,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"`activation` must be one of {sorted(ACTIVATIONS)}, got {activation!r}."
            )
        self.num_heads = int(num_heads)
        self.hidden_dim = int(hidden_dim)
        self.intermediate_dim = int(intermediate_dim or 4 * hidden_dim)
        self.dropout = float(dropout)
        self.activation = activation
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.attention_implementation = attention_implementation
        self.init_stddev = float(init_stddev)
        self.residual_init_stddev = (
            self.init_stddev if residual_init_stddev is None else float(residual_init_stddev)
        )
        self.use_bias = bool(use_bias)
        self.normalization = normalization
        self.norm_scale = bool(norm_scale)
        self.rope = bool(rope)
        self.rope_base = float(rope_base)
        self.qk_norm = bool(qk_norm)
        self.value_embedding_vocabulary_size = int(value_embedding_vocabulary_size or 0)
        self.seed = fresh_seed() if seed is None else int(seed)
        self._create_attention_layers()
        self._create_mlp_layers()

    def _create_attention_layers(self) -> None:
        """The attention half: its pre-norm and `CausalSelfAttention` (whose output
        projection starts at `residual_init_stddev`)."""
        self.attention_norm = self._normalization("attention_norm")
        self.attention = CausalSelfAttention(
            self.num_heads,
            self.hidden_dim,
            dropout=self.dropout,
            attention_implementation=self.attention_implementation,
            init_stddev=self.init_stddev,
            output_init_stddev=self.residual_init_stddev,
            use_bias=self.use_bias,
            rope=self.rope,
            rope_base=self.rope_base,
            qk_norm=self.qk_norm,
            value_embedding_vocabulary_size=self.value_embedding_vocabulary_size,
            seed=derive_seed(self.seed, 0),
            dtype=self.dtype_policy,
            name="attention",
        )

    def _create_mlp_layers(self) -> None:
        """The MLP half: its pre-norm, the widening and narrowing projections (the
        latter at `residual_init_stddev`) and the dropout after them."""
        policy = self.dtype_policy
        self.mlp_norm = self._normalization("mlp_norm")
        self.mlp_in = Dense(
            self.intermediate_dim,
            use_bias=self.use_bias,
            kernel_initializer=SeededNormal(self.init_stddev, derive_seed(self.seed, 1)),
            dtype=policy,
            name="mlp_in",
        )
        self.mlp_out = Dense(
            self.hidden_dim,
            use_bias=self.use_bias,
            kernel_initializer=SeededNormal(self.residual_init_stddev, derive_seed(self.seed, 2)),
            dtype=policy,
            name="mlp_out",
        )
        self.mlp_dropout = PortableDropout(
            self.dropout, seed=derive_seed(self.seed, 3), dtype=policy, name="mlp_dropout"
        )

    def _normalization(self, name: str) -> keras.layers.Layer:
        return make_normalization(
            self.normalization,
            self.layer_norm_epsilon,
            self.use_bias,
            self.norm_scale,
            self.dtype_policy,
            name,
        )

    def build(self, input_shape):
        self.attention_norm.build(input_shape)
        self.attention.build(input_shape)
        self.mlp_norm.build(input_shape)
        self.mlp_in.build(input_shape)
        self.mlp_out.build(tuple(input_shape[:-1]) + (self.intermediate_dim,))
        self.mlp_dropout.build()
        self.built = True

    def call(
        self, inputs, padding_mask=None, cache=None, cache_index=None, training=None, token_ids=None
    ):
        """Applies the block; returns `(output, cache)` when `cache` is given.

        `token_ids` (batch, seq) are the inputs' tokens, read only by value
        embeddings.
        """
        extra = {"token_ids": token_ids} if self.value_embedding_vocabulary_size else {}
        attended = call_sublayer(
            self.attention,
            call_sublayer(self.attention_norm, inputs),
            padding_mask=padding_mask,
            cache=cache,
            cache_index=cache_index,
            training=training,
            **extra,
        )
        if cache is not None:
            attended, cache = attended
        x = inputs + attended
        h = call_sublayer(self.mlp_norm, x)
        h = call_sublayer(self.mlp_out, ACTIVATIONS[self.activation](call_sublayer(self.mlp_in, h)))
        if self.dropout:
            # Not called at rate 0, where it is the identity: each Keras layer call
            # costs Python on eager PyTorch.
            h = call_sublayer(self.mlp_dropout, h, training=training)
        x = x + h
        return x if cache is None else (x, cache)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "dropout": self.dropout,
            "activation": self.activation,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "attention_implementation": self.attention_implementation,
            "init_stddev": self.init_stddev,
            "residual_init_stddev": self.residual_init_stddev,
            "use_bias": self.use_bias,
            "normalization": self.normalization,
            "norm_scale": self.norm_scale,
            "rope": self.rope,
            "rope_base": self.rope_base,
            "qk_norm": self.qk_norm,
            **(
                {"value_embedding_vocabulary_size": self.value_embedding_vocabulary_size}
                if self.value_embedding_vocabulary_size
                else {}
            ),
            "seed": self.seed,
        }
