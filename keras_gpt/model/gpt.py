"""The GPT model: embeddings → transformer blocks → final LayerNorm → logits."""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_gpt import presets
from keras_gpt.backend import (
    Tensor,
    call_sublayer,
    in_distribution_strategy,
    is_concrete,
    replica_scaled,
)
from keras_gpt.generation import GenerationEngine
from keras_gpt.model import lora
from keras_gpt.model.layers import (
    PortableDropout,
    TokenAndPositionEmbedding,
    TransformerBlock,
)
from keras_gpt.model.layers.dense import Dense, check_quantization_mode
from keras_gpt.model.layers.normalization import make_normalization
from keras_gpt.model.layout import layout_map
from keras_gpt.model.losses import causal_lm_loss
from keras_gpt.random import SeededNormal, derive_seed, fresh_seed

#: The options beyond GPT-2 (the speedrun recipe's modern block) and their
#: defaults, which leave the model GPT-2's. `get_config` records an option only
#: when it differs from its default, so GPT-2 configs and presets stay as they were.
MODERN_DEFAULTS = {
    "rope_base": 10000.0,
    "normalization": "layernorm",
    "norm_scale": True,
    "qk_norm": False,
    "embedding_norm": False,
    "head_init_stddev": None,
    "residual_init_stddev": None,
    "logit_soft_cap": None,
    "value_embeddings": None,
}

#: The `value_embeddings` settings: which blocks get a value-embedding table.
VALUE_EMBEDDINGS = ("alternate", "all")

#: Models with at least this many parameters compile with XLA on TensorFlow's
#: CPU under `jit_compile="auto"` (see `GPT.compile`).
XLA_MIN_PARAMETERS = 2**20


_INIT_STDDEV = 0.02  # GPT-2's initializer scale for every weight matrix


def _check_architecture(
    *,
    vocabulary_size: int,
    num_layers: int,
    num_heads: int,
    hidden_dim: int,
    max_sequence_length: int,
    position_embedding: str,
) -> None:
    """Raises a `ValueError` naming the first argument of `GPT` that cannot build a model."""
    for name, value in (
        ("vocabulary_size", vocabulary_size),
        ("num_layers", num_layers),
        ("num_heads", num_heads),
        ("hidden_dim", hidden_dim),
        ("max_sequence_length", max_sequence_length),
    ):
        if int(value) != value or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    if hidden_dim % num_heads:
        raise ValueError(
            f"`hidden_dim` ({hidden_dim}) must be divisible by `num_heads` ({num_heads})."
        )
    if position_embedding not in ("learned", "sinusoidal", "rope"):
        raise ValueError(
            "`position_embedding` must be 'learned', 'sinusoidal' or 'rope', "
            f"got {position_embedding!r}."
        )


@keras.saving.register_keras_serializable(package="keras_gpt")
class GPT(keras.Model):
    """A GPT-2 style decoder-only transformer.

    `model(token_ids)` returns next-token logits `(batch, seq, vocabulary_size)`.
    Inputs are an int tensor of token ids, or a dict with `"token_ids"` and an
    optional `"padding_mask"` (1 for real tokens). Compiled without a loss, the
    model trains on sparse cross-entropy from logits, ignoring padded positions
    (see `compute_loss`).

    Weights are initialised as in GPT-2 (N(0, 0.02), the two residual output
    projections of each block scaled by 1/√(2·num_layers), zero biases, unit
    LayerNorm scales) from NumPy generators: the same `seed` gives bit-identical
    initial weights on TensorFlow, JAX and PyTorch, and dropout masks are the
    same on all three too.

    Args:
        vocabulary_size: number of token ids.
        num_layers: number of transformer blocks.
        num_heads: attention heads per block.
        hidden_dim: model width; divisible by `num_heads`.
        intermediate_dim: MLP width; defaults to 4·hidden_dim.
        max_sequence_length: longest sequence (size of the position table).
        dropout: dropout on embeddings, attention probabilities and residuals.
        layer_norm_epsilon: the norms' epsilon (GPT-2: 1e-5).
        activation: `"gelu_approximate"`, `"gelu"`, `"relu"` or `"relu2"`
            (ReLU squared).
        position_embedding: `"learned"`, `"sinusoidal"` or `"rope"` (rotary:
            queries and keys rotated by their positions, no position table).
        tie_embeddings: project to logits with the token embedding matrix
            (logits = h · Eᵀ) instead of a separate output kernel.
        attention_implementation: `"auto"`, `"fused"` or `"plain"`; see
            `CausalSelfAttention`.
        use_bias: biases in the Dense layers and LayerNorms, as in GPT-2.
            `False` is nanoGPT's `bias=False` (a little faster and, in
            nanoGPT's experience, a little better); such a model exports to
            GPT-2 formats with zero biases.
        rope_base: RoPE's frequency base θ.
        normalization: `"layernorm"` (GPT-2) or `"rmsnorm"`, for the blocks'
            and the final norm.
        norm_scale: with `"rmsnorm"`, a learned per-channel scale (Llama's
            RMSNorm) or none (modded-nanogpt's and nanochat's).
        qk_norm: RMS-normalize each head's queries and keys before attention.
        embedding_norm: normalize the embeddings before the first block (as
            modded-nanogpt and nanochat do), with `normalization`.
        head_init_stddev: initial standard deviation of the untied head
            (`tie_embeddings=False`); 0 starts it at zero (nanochat), so the
            first logits are uniform. `None`: 0.02.
        residual_init_stddev: initial standard deviation of the two
            projections that write into the residual stream (attention
            output, MLP output); 0 starts each block as the identity
            (modded-nanogpt). `None`: GPT-2's 0.02/√(2·num_layers).
        logit_soft_cap: bounds the logits smoothly to (−c, c) with
            c·tanh(logits/c) (Gemma 2, modded-nanogpt); `None`: off.
        value_embeddings: `None` (off), `"alternate"` or `"all"`: blocks
            whose attention has its own token embedding table, whose row for
            each input token is added to the attention values under a
            learned per-head gate (nanochat, modded-nanogpt; see
            `CausalSelfAttention`). `"alternate"` is nanochat's choice:
            every other block, the last one included. Adds
            `vocabulary_size`·`hidden_dim` weights per such block.
        seed: integer seed for weights and dropout; `None` picks one (and
            records it in the config).
        dtype: Keras dtype policy, e.g. `"float32"`, `"bfloat16"` (weights
            and arithmetic in bfloat16, e.g. for generation) or
            `"mixed_bfloat16"`.
        quantization: `None`, or `"int8"` to build the model quantized (as
            `quantize` does); kept in the config, so quantized presets load
            quantized.

    Example:
    >>> model = GPT(vocabulary_size=256, num_layers=2, num_heads=2,
    ...             hidden_dim=32, max_sequence_length=64, seed=0)
    >>> logits = model(np.zeros((1, 8), "int32"))        # (1, 8, 256)
    >>> model.compile(optimizer="adamw")
    >>> tokens = np.random.default_rng(0).integers(0, 256, (16, 9))
    >>> history = model.fit(x=tokens[:, :-1], y=tokens[:, 1:], epochs=1, verbose=0)
    """

    def __new__(cls, *args, **kwargs):
        model = super().__new__(cls, *args, **kwargs)
        # Keras wraps every layer's `quantize` in a check of all its own modes
        # (GPTQ asks for a config, ...) that runs first; this model checks the
        # mode itself, with one message for every mode it cannot do. The
        # quantized layers keep Keras' wrapper.
        model.quantize = types.MethodType(cls.quantize, model)
        return model

    def __init__(
        self,
        vocabulary_size: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        intermediate_dim: int | None = None,
        max_sequence_length: int = 1024,
        dropout: float = 0.0,
        layer_norm_epsilon: float = 1e-5,
        activation: str = "gelu_approximate",
        position_embedding: str = "learned",
        tie_embeddings: bool = True,
        attention_implementation: str = "auto",
        use_bias: bool = True,
        rope_base: float = 10000.0,
        normalization: str = "layernorm",
        norm_scale: bool = True,
        qk_norm: bool = False,
        embedding_norm: bool = False,
        head_init_stddev: float | None = None,
        residual_init_stddev: float | None = None,
        logit_soft_cap: float | None = None,
        value_embeddings: str | None = None,
        seed: int | None = None,
        dtype: str | keras.DTypePolicy | None = None,
        quantization: str | None = None,
        **kwargs,
    ):
        super().__init__(dtype=dtype, **kwargs)
        if quantization is not None:
            check_quantization_mode(quantization)
        _check_architecture(
            vocabulary_size=vocabulary_size,
            num_layers=num_layers,
            num_heads=num_heads,
            hidden_dim=hidden_dim,
            max_sequence_length=max_sequence_length,
            position_embedding=position_embedding,
        )
        self.vocabulary_size = int(vocabulary_size)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.hidden_dim = int(hidden_dim)
        self.intermediate_dim = int(intermediate_dim or 4 * hidden_dim)
        self.max_sequence_length = int(max_sequence_length)
        self.dropout = float(dropout)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.activation = activation
        self.position_embedding = position_embedding
        self.tie_embeddings = bool(tie_embeddings)
        self.attention_implementation = attention_implementation
        self.use_bias = bool(use_bias)
        self.rope_base = float(rope_base)
        self.normalization = normalization
        self.norm_scale = bool(norm_scale)
        self.qk_norm = bool(qk_norm)
        self.embedding_norm = bool(embedding_norm)
        self.head_init_stddev = None if head_init_stddev is None else float(head_init_stddev)
        self.residual_init_stddev = (
            None if residual_init_stddev is None else float(residual_init_stddev)
        )
        self.logit_soft_cap = float(logit_soft_cap) if logit_soft_cap else None
        if value_embeddings not in (None, *VALUE_EMBEDDINGS):
            raise ValueError(
                f"`value_embeddings` must be None, 'alternate' or 'all', got {value_embeddings!r}."
            )
        self.value_embeddings = value_embeddings
        self.seed = fresh_seed() if seed is None else int(seed)
        self._create_layers()
        self.build()
        self.lora_config = None
        self.quantization = None
        if quantization is not None:
            self.quantize(quantization)

    def _create_layers(self) -> None:
        """Creates the layers from the config attributes, in the order that fixes the
        order of `model.weights` (and so of the optimizer's variables in a checkpoint)."""
        policy = self.dtype_policy
        rope = self.position_embedding == "rope"
        self.embeddings = TokenAndPositionEmbedding(
            self.vocabulary_size,
            self.max_sequence_length,
            self.hidden_dim,
            position_embedding="none" if rope else self.position_embedding,
            init_stddev=_INIT_STDDEV,
            seed=derive_seed(self.seed, 0),
            dtype=policy,
            name="embeddings",
        )
        self.embeddings_dropout = PortableDropout(
            self.dropout,
            seed=derive_seed(self.seed, 1),
            dtype=policy,
            name="embeddings_dropout",
        )
        self.embeddings_norm = None
        if self.embedding_norm:
            self.embeddings_norm = self._normalization("embeddings_norm")
        self.blocks = [self._transformer_block(i) for i in range(self.num_layers)]
        self.final_norm = self._normalization("final_norm")
        self.lm_head = None
        if not self.tie_embeddings:
            head_stddev = self.head_init_stddev
            if head_stddev is None:
                head_stddev = _INIT_STDDEV
            self.lm_head = Dense(
                self.vocabulary_size,
                use_bias=False,
                kernel_initializer=SeededNormal(head_stddev, derive_seed(self.seed, 3)),
                dtype=policy,
                name="lm_head",
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

    def _transformer_block(self, index: int) -> TransformerBlock:
        """Block `index`, its residual projections scaled by 1/sqrt(2 * num_layers) as
        GPT-2 does unless `residual_init_stddev` says otherwise."""
        residual_stddev = self.residual_init_stddev
        if residual_stddev is None:
            residual_stddev = _INIT_STDDEV / math.sqrt(2 * self.num_layers)
        return TransformerBlock(
            self.num_heads,
            self.hidden_dim,
            intermediate_dim=self.intermediate_dim,
            dropout=self.dropout,
            activation=self.activation,
            layer_norm_epsilon=self.layer_norm_epsilon,
            attention_implementation=self.attention_implementation,
            init_stddev=_INIT_STDDEV,
            residual_init_stddev=residual_stddev,
            use_bias=self.use_bias,
            normalization=self.normalization,
            norm_scale=self.norm_scale,
            rope=self.position_embedding == "rope",
            rope_base=self.rope_base,
            qk_norm=self.qk_norm,
            value_embedding_vocabulary_size=(
                self.vocabulary_size if self._has_value_embeddings(index) else 0
            ),
            seed=derive_seed(self.seed, 2, index),
            dtype=self.dtype_policy,
            name=f"block_{index}",
        )

    def _has_value_embeddings(self, index: int) -> bool:
        """Whether block `index` has a value-embedding table (see `value_embeddings`)."""
        if self.value_embeddings == "alternate":
            return index % 2 == (self.num_layers - 1) % 2
        return self.value_embeddings == "all"

    def build(self, input_shape=None):
        hidden_shape = (None, None, self.hidden_dim)
        self.embeddings.build((None, None))
        self.embeddings_dropout.build()
        if self.embeddings_norm is not None:
            self.embeddings_norm.build(hidden_shape)
        for block in self.blocks:
            block.build(hidden_shape)
        self.final_norm.build(hidden_shape)
        if self.lm_head is not None:
            self.lm_head.build(hidden_shape)
        self.built = True

    # -- forward -------------------------------------------------------------

    def call(
        self,
        inputs: Tensor | dict[str, Tensor],
        padding_mask: Tensor | None = None,
        training: bool | None = None,
    ) -> Tensor:
        """Logits (batch, seq, vocabulary_size) for `inputs`.

        Args:
            inputs: int token ids (batch, seq), or a dict with `"token_ids"` and
                optionally `"padding_mask"`.
            padding_mask: optional (batch, seq), 1/True for real tokens.
            training: enables dropout.
        """
        token_ids, padding_mask = self._unpack_inputs(inputs, padding_mask)
        x = call_sublayer(self.embeddings, token_ids)
        if self.dropout:  # the identity at rate 0: skip the layer call (see TransformerBlock)
            x = call_sublayer(self.embeddings_dropout, x, training=training)
        if self.embeddings_norm is not None:
            x = call_sublayer(self.embeddings_norm, x)
        extra = {"token_ids": token_ids} if self.value_embeddings else {}
        for block in self.blocks:
            x = call_sublayer(block, x, padding_mask=padding_mask, training=training, **extra)
        return self._logits(x)

    def call_with_cache(
        self,
        token_ids: Tensor,
        cache: list[Tensor],
        cache_index: int | Tensor,
        padding_mask: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """One decoding step over a key/value cache (inference only, no dropout).

        Args:
            token_ids: int (batch, seq) ids placed at positions
                cache_index + [0, seq).
            cache: list with one (batch, 2, num_heads, cache_length, head_dim)
                tensor per block, as made by `init_cache`. On PyTorch these
                tensors are updated in place (keep a `.clone()` to reuse an
                older cache).
            cache_index: int scalar, where `token_ids[:, 0]` goes in the cache;
                or, for one token per row (`seq` 1), a `(batch,)` int vector:
                row r's token goes at position `cache_index[r]` and attends to
                positions up to it (continuous batching, where every slot of
                the cache is at its own position; see
                `keras_gpt.generation.SlotEngine`).
            padding_mask: optional (batch, cache_length), 1 for real positions.

        Returns:
            `(logits, cache)`: logits (batch, seq, vocabulary_size) and the
            cache with this step's keys and values written in.
        """
        token_ids, padding_mask = self._unpack_inputs(token_ids, padding_mask)
        x = call_sublayer(self.embeddings, token_ids, start_index=cache_index)
        if self.embeddings_norm is not None:
            x = call_sublayer(self.embeddings_norm, x)
        new_cache = []
        extra = {"token_ids": token_ids} if self.value_embeddings else {}
        for block, block_cache in zip(self.blocks, cache):
            x, block_cache = call_sublayer(
                block,
                x,
                padding_mask=padding_mask,
                cache=block_cache,
                cache_index=cache_index,
                **extra,
            )
            new_cache.append(block_cache)
        return self._logits(x), new_cache

    def init_cache(
        self, batch_size: int, cache_length: int, dtype: str | None = None
    ) -> list[Tensor]:
        """An all-zero key/value cache for `call_with_cache`.

        Args:
            batch_size: number of sequences.
            cache_length: positions to hold; at most `max_sequence_length`.
            dtype: cache dtype; defaults to the model's compute dtype.
        """
        if cache_length > self.max_sequence_length:
            raise ValueError(
                f"`cache_length` ({cache_length}) exceeds the model's "
                f"`max_sequence_length` ({self.max_sequence_length})."
            )
        head_dim = self.hidden_dim // self.num_heads
        shape = (batch_size, 2, self.num_heads, cache_length, head_dim)
        dtype = dtype or self.compute_dtype
        return [ops.zeros(shape, dtype=dtype) for _ in range(self.num_layers)]

    def generate(
        self, prompt_ids: Tensor | list[list[int]], max_new_tokens: int, **options: Any
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Continues each prompt by up to `max_new_tokens` tokens.

        The prompt is run once (prefill), then one token per step is decoded
        from a fixed-size key/value cache inside a loop compiled for the
        backend. This is `GenerationEngine.generate` on the engine the model
        owns (`generation_engine`), where every argument is described.

        Args:
            prompt_ids: the prompts: an int array `(batch, length)` or
                `(length,)`, or a list of lists of ids whose lengths may differ.
            max_new_tokens: tokens to add to each row.
            **options: `sampler`, `temperature`, `top_k`, `top_p`,
                `stop_token_ids`, `seed`, `padding_mask`, `pad_token_id`,
                `return_lengths`, `callback`, `num_samples`: see
                `keras_gpt.generation.GenerationEngine.generate`.

        Returns:
            int32 NumPy array `(batch * num_samples, longest_prompt +
            max_new_tokens)`: each row's prompt followed by its continuation,
            then `pad_token_id`. With `return_lengths`, a tuple
            `(token_ids, lengths)`.

        Example:
        >>> model = GPT(vocabulary_size=256, num_layers=2, num_heads=2,
        ...             hidden_dim=32, max_sequence_length=64, seed=0)
        >>> ids = model.generate(np.array([[1, 2, 3]]), max_new_tokens=5)  # (1, 8)
        >>> ids, lengths = model.generate([[1, 2, 3], [4]], 5, sampler="top_k",
        ...                               top_k=10, seed=0, stop_token_ids=[0],
        ...                               return_lengths=True)
        >>> samples = model.generate([[1, 2, 3]], 5, sampler="temperature",
        ...                          seed=0, num_samples=4)             # (4, 8)
        """
        return self.generation_engine.generate(prompt_ids, max_new_tokens, **options)

    @property
    def generation_engine(self) -> GenerationEngine:
        """The engine that runs `generate`: it owns this model's compiled decoding programs."""
        engine = self.__dict__.get("_generation_engine")
        if engine is None:
            engine = GenerationEngine(self)
            # Not a Keras-tracked attribute: the engine holds no variables.
            object.__setattr__(self, "_generation_engine", engine)
        return engine

    @property
    def tied_embedding(self) -> keras.Variable | None:
        """The token embedding when it also projects to logits (`tie_embeddings`), else None."""
        return self.embeddings.token_embeddings if self.tie_embeddings else None

    # -- quantization ------------------------------------------------------------

    def quantize(
        self,
        mode: str | None = None,
        config: Any = None,
        filters: str | list[str] | Callable[[keras.layers.Layer], bool] | None = None,
        **kwargs: Any,
    ) -> None:
        """Stores the matrices as int8 for faster, smaller inference (Keras' `Model.quantize`).

        Quantizes what decoding streams from memory at every token: the four
        Dense kernels of each block (Keras' own int8 `Dense`: int8 kernel,
        one scale per output) and the token embedding, which also makes the
        tied logits product int8 (one scale per token row). LayerNorms,
        biases and position embeddings stay float. Activations stay float
        too (weight-only int8; see `keras_gpt.model.layers.dense.Dense`).
        The model then generates, saves to and loads from a keras_gpt preset,
        and exports as before; it no longer trains. Compiled generation
        programs are dropped and rebuilt for the new weights.

        Args:
            mode: `"int8"`; any other mode raises a one-line `ValueError`.
            config: Keras' `QuantizationConfig`; only its weight quantizer
                is used, by the Dense layers.
            filters: must be `None`: the model is quantized whole, so that
                its config (`quantization`) rebuilds it for loading.
            **kwargs: passed to `keras.Model.quantize`.

        Example:
        >>> model = GPT.from_preset("my_preset")       # e.g. "gpt2_small"
        >>> model.quantize("int8")
        >>> model.generate([[72, 105]], max_new_tokens=4).shape
        (1, 6)
        >>> model.save_to_preset("my_preset_int8")     # loads back quantized
        >>> GPT.from_preset("my_preset_int8").quantization
        'int8'
        """
        check_quantization_mode(mode)
        if self.quantization is not None:
            raise ValueError(f"The model is already quantized ({self.quantization!r}).")
        if self.lora_config:
            raise ValueError("Merge LoRA adapters (`merge_lora()`) before quantizing.")

        if filters is not None:
            # The config records one mode for the whole model, which is how a
            # preset rebuilds it: a partly quantized model would not load back.
            raise ValueError("GPT.quantize quantizes every matrix; `filters` is not supported.")

        def chosen(layer):
            return isinstance(layer, (Dense, TokenAndPositionEmbedding))

        super().quantize(mode, config=config, filters=chosen, **kwargs)
        self.quantization = mode
        # The engine's programs were compiled against the float variables.
        self.__dict__.pop("_generation_engine", None)

    # -- LoRA ------------------------------------------------------------------

    def enable_lora(
        self,
        rank: int,
        alpha: float | None = None,
        target: tuple[str, ...] = lora.DEFAULT_TARGETS,
        train_biases: bool = False,
        train_norms: bool = False,
    ) -> None:
        """Adds rank-`rank` adapters to the chosen projections and freezes the rest.

        Every other weight (embeddings, biases, LayerNorms unless asked) becomes
        non-trainable; adapters start with B = 0, so logits are unchanged until
        training. Compile (again) after calling this.

        Args:
            rank: adapter rank r.
            alpha: scale numerator (updates are scaled by alpha/r); default r.
            target: projections to adapt, named after their layers (as in the
                variable paths, `block_0/attention/output/kernel`): `"qkv"`,
                `"output"` (attention's output projection; `"attn_out"`, its
                earlier name, is accepted), `"mlp_in"`, `"mlp_out"`.
            train_biases: keep biases trainable.
            train_norms: keep LayerNorm scales and offsets trainable.

        Example:
        >>> model.enable_lora(rank=8, target=("qkv", "output"))
        >>> model.compile(optimizer="adamw")
        """
        if self.quantization:
            raise ValueError(f"LoRA needs float weights; this model is {self.quantization}.")
        lora.enable_lora(self, rank, alpha, target, train_biases, train_norms)

    def merge_lora(self) -> None:
        """Folds the adapters into the base kernels; the model becomes a plain GPT.

        Logits are unchanged. After merging, every weight is trainable again and
        the model saves, exports and loads like one that never had adapters.
        """
        lora.merge_lora(self)

    def save_lora(self, path: str) -> None:
        """Saves only the adapters (and their settings) to a small `.npz` file.

        Arrays are keyed by layer path inside the model (e.g.
        `block_0/attention/qkv/lora_kernel_a`), so they load onto any instance
        of the same architecture, such as a freshly loaded preset.

        Args:
            path: file name ending in `.npz`.
        """
        lora.save_lora(self, path)

    def load_lora(self, path: str) -> None:
        """Loads adapters saved by `save_lora`, enabling LoRA first if needed.

        Args:
            path: an adapter file written by `save_lora`.
        """
        lora.load_lora(self, path)

    def _logits(self, x):
        x = call_sublayer(self.final_norm, x)
        if self.lm_head is not None:
            logits = call_sublayer(self.lm_head, x)
        else:
            logits = self.embeddings.project(x)
        if self.logit_soft_cap:
            # In float32: tanh saturates early in bfloat16, and the loss wants float32.
            cap = self.logit_soft_cap
            logits = cap * ops.tanh(ops.cast(logits, "float32") / cap)
        return logits

    def modern_options(self) -> dict[str, Any]:
        """The options beyond GPT-2 this model uses (name → value); empty for a GPT-2.

        Hugging Face's `GPT2LMHeadModel` and KerasHub's GPT-2 have no place
        for them, so a model with any cannot be saved in those formats.
        """
        options = {
            name: getattr(self, name)
            for name, default in MODERN_DEFAULTS.items()
            if getattr(self, name) != default
        }
        options.pop("rope_base", None)  # meaningful only with RoPE, which is named below
        if self.position_embedding == "rope":
            options["position_embedding"] = "rope"
        if self.activation == "relu2":
            options["activation"] = "relu2"
        return options

    def _unpack_inputs(self, inputs, padding_mask):
        if isinstance(inputs, dict):
            unknown = set(inputs) - {"token_ids", "padding_mask"}
            if unknown or "token_ids" not in inputs:
                raise ValueError(
                    "GPT inputs as a dict need the key 'token_ids' and optionally "
                    f"'padding_mask'; got keys {sorted(inputs)}."
                )
            padding_mask = inputs.get("padding_mask", padding_mask)
            inputs = inputs["token_ids"]
        self._validate_token_ids(inputs)
        return inputs, padding_mask

    def _validate_token_ids(self, token_ids):
        dtype = keras.backend.standardize_dtype(token_ids.dtype)
        if "int" not in dtype:
            raise ValueError(
                f"`token_ids` must be integers, got dtype {dtype}. "
                "Convert with e.g. `np.asarray(ids, 'int32')`."
            )
        if len(token_ids.shape) != 2:
            raise ValueError(
                f"`token_ids` must have shape (batch, seq), got {tuple(token_ids.shape)}."
            )
        length = token_ids.shape[1]
        if length is not None and length > self.max_sequence_length:
            raise ValueError(
                f"Sequence length {length} exceeds the model's "
                f"`max_sequence_length` ({self.max_sequence_length})."
            )
        if is_concrete(token_ids) and length:
            low = int(ops.convert_to_numpy(ops.min(token_ids)))
            high = int(ops.convert_to_numpy(ops.max(token_ids)))
            if low < 0 or high >= self.vocabulary_size:
                bad = low if low < 0 else high
                raise ValueError(
                    f"Token id {bad} is outside [0, {self.vocabulary_size}) "
                    "(the model's `vocabulary_size`)."
                )

    # -- training --------------------------------------------------------------

    def compile(self, *args, jit_compile: bool | str = "auto", **kwargs) -> None:
        """`keras.Model.compile`, with XLA on TensorFlow's CPU for models that gain from it.

        Keras' `jit_compile="auto"` leaves XLA off for TensorFlow on machines
        without an accelerator. Every op of this model compiles with XLA, and
        for models of `XLA_MIN_PARAMETERS` or more the training step then runs
        ~1.25× faster on CPU (bench-small, 5.3M parameters:
        `benchmarks/train.py`), so there `"auto"` turns it on, unless the
        model was built under a `tf.distribute` strategy (Keras' own rule).
        Smaller models keep Keras' choice: their steps are short, and XLA's
        seconds of compiling per train/eval/predict function outweigh what it
        saves in short runs such as tests and demos. Pass `jit_compile=True`
        or `False` to decide yourself. Other arguments and backends are
        unchanged.
        """
        if jit_compile == "auto" and keras.backend.backend() == "tensorflow":
            big = self.count_params() >= XLA_MIN_PARAMETERS  # built in __init__
            if big and not in_distribution_strategy():
                jit_compile = True
        super().compile(*args, jit_compile=jit_compile, **kwargs)

    def compile_from_config(self, config: dict) -> None:
        """Recompiles a loaded model, as Keras does for models that keep its `compile`.

        XLA is chosen afresh (`jit_compile="auto"`): the file may come from
        another backend (a JAX model's `True` would mean `torch.compile` on
        PyTorch) or be loaded under a `tf.distribute` strategy.
        """
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**{**config, "jit_compile": "auto"})
        self.optimizer.build(self.trainable_variables)  # so saved optimizer state loads

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Without a compiled `loss`: mean token cross-entropy over unmasked tokens.

        The weights are the `padding_mask` of `x` times any `sample_weight`;
        see `keras_gpt.causal_lm_loss`.
        """
        if self.loss is not None:  # compiled with a loss of the user's
            return super().compute_loss(x, y, y_pred, sample_weight, training=training)
        loss = causal_lm_loss(y, y_pred, self._token_weights(x, sample_weight))
        for extra in self.losses:
            loss = loss + ops.cast(extra, loss.dtype)
        # tf.distribute sums the replicas' gradients (Keras' own losses scale too).
        return replica_scaled(loss)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(
            x, y, y_pred, sample_weight=self._token_weights(x, sample_weight)
        )

    @staticmethod
    def _token_weights(x, sample_weight):
        """Per-token weights: the padding mask times any sample weights."""
        mask = x.get("padding_mask") if isinstance(x, dict) else None
        if mask is None:
            return sample_weight
        mask = ops.cast(mask, "float32")
        if sample_weight is None:
            return mask
        weights = ops.cast(sample_weight, "float32")
        if len(weights.shape) == 1:
            weights = ops.expand_dims(weights, -1)
        return mask * weights

    @staticmethod
    def get_layout_map(device_mesh: keras.distribution.DeviceMesh) -> keras.distribution.LayoutMap:
        """The layout map for `keras.distribution.ModelParallel` (JAX).

        Shards embeddings and the QKV, attention-output and MLP kernels along the
        mesh's `"model"` axis; see `keras_gpt.distribution.layout_map`.

        Args:
            device_mesh: a mesh with a `"model"` axis (and usually `"batch"`).

        Example:
        >>> mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "model"),
        ...                                      keras.distribution.list_devices())
        >>> keras.distribution.set_distribution(keras.distribution.ModelParallel(
        ...     layout_map=GPT.get_layout_map(mesh), batch_dim_name="batch"))
        """
        return layout_map(device_mesh)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "vocabulary_size": self.vocabulary_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "max_sequence_length": self.max_sequence_length,
            "dropout": self.dropout,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "activation": self.activation,
            "position_embedding": self.position_embedding,
            "tie_embeddings": self.tie_embeddings,
            "attention_implementation": self.attention_implementation,
            "use_bias": self.use_bias,
            # The modern options only where they differ from GPT-2 (see MODERN_DEFAULTS).
            **{
                name: getattr(self, name)
                for name, default in MODERN_DEFAULTS.items()
                if getattr(self, name) != default
            },
            "seed": self.seed,
            # Only when set: float configs (and presets) stay as they were.
            **({"quantization": self.quantization} if self.quantization else {}),
        }

    @classmethod
    def from_config(cls, config: dict) -> GPT:
        return cls(**config)

    # -- presets (implemented in keras_gpt.presets) -----------------------------

    @classmethod
    def from_preset(cls, handle: str, **overrides: Any) -> GPT:
        """Loads a model from a preset: keras_gpt, Hugging Face GPT-2 or KerasHub GPT-2.

        Args:
            handle: a registered name (`keras_gpt.presets.list_presets()`), a local
                directory, `"hf://owner/name"` or
                `"kaggle://owner/model/framework/variation[/version]"`.
            **overrides: `GPT` arguments replacing the preset's, e.g.
                `dropout=0.1` or `dtype="mixed_bfloat16"`.

        Example:
        >>> model = GPT.from_preset("my_preset")
        >>> model = GPT.from_preset("hf://openai-community/gpt2")
        """
        return presets.from_preset(handle, model_class=cls, **overrides)

    def save_to_preset(self, directory: str, **options: Any) -> None:
        """Writes the model as a directory `GPT.from_preset` reads back.

        LoRA adapters, if enabled, are folded into a copy's kernels first, so the
        preset is a plain `GPT` (keep the adapters themselves with `save_lora`).

        Args:
            directory: output directory, created if needed.
            **options: `format` (`"keras_gpt"` or `"huggingface"`), `tokenizer`,
                `data_description`, `max_shard_size`: see
                `keras_gpt.presets.save_to_preset`.

        Example:
        >>> model.save_to_preset("my_preset", data_description="tinyshakespeare")
        """
        model = lora.merged_copy(self) if self.lora_config else self
        presets.save_to_preset(model, directory, **options)
