"""Named GPT architectures: GPT-2's four sizes and small configs for CPU work."""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field

from keras_gpt.presets.errors import PresetError

# GPT-2's byte-pair vocabulary; the small configs use the 256 bytes plus
# <|endoftext|> of `keras_gpt.tokenizers.ByteTokenizer`.
_GPT2_VOCABULARY = 50257
_BYTE_VOCABULARY = 257


@dataclass(frozen=True)
class PresetInfo:
    """One registry entry, as listed by `keras_gpt.presets.list_presets()`.

    Args:
        name: the built-in name, usable as a `from_preset` handle.
        config: keyword arguments of `keras_gpt.GPT`.
        weights: handle of published weights (e.g. `"hf://openai-community/gpt2"`),
            or `None` for an architecture only.
        description: one line about the preset.

    Example:
    >>> info = keras_gpt.presets.get("gpt2_small")
    >>> keras_gpt.count_parameters(info.config)
    124439808
    """

    name: str
    config: dict = field(repr=False)
    weights: str | None = None
    description: str = ""

    @property
    def has_weights(self) -> bool:
        """Whether `from_preset(name)` loads trained weights."""
        return self.weights is not None

    def __str__(self) -> str:
        c = self.config
        shape = f"{c['num_layers']}L {c['num_heads']}H {c['hidden_dim']}d"
        weights = self.weights or "no weights (architecture only)"
        return f"{self.name:<12} {shape:<14} {weights}"


def _gpt2(layers: int, heads: int, width: int) -> dict:
    return dict(
        vocabulary_size=_GPT2_VOCABULARY,
        num_layers=layers,
        num_heads=heads,
        hidden_dim=width,
        max_sequence_length=1024,
    )


def _small(layers: int, heads: int, width: int) -> dict:
    return dict(
        vocabulary_size=_BYTE_VOCABULARY,
        num_layers=layers,
        num_heads=heads,
        hidden_dim=width,
        max_sequence_length=256,
    )


_REGISTRY: dict[str, PresetInfo] = {}


def register(
    name: str, config: dict, weights: str | None = None, description: str = ""
) -> PresetInfo:
    """Adds a named preset, so that `GPT.from_preset(name)` finds it.

    Args:
        name: the new name; must not shadow an existing one.
        config: keyword arguments of `keras_gpt.GPT` (checked by building nothing:
            only the required keys are validated here).
        weights: a handle (local directory, `hf://`, `kaggle://`) holding
            weights for this config, or `None`.
        description: one line shown by `list()`.

    Returns:
        The new `PresetInfo`.

    Example:
    >>> keras_gpt.presets.register("my_tiny", dict(vocabulary_size=257,
    ...     num_layers=2, num_heads=2, hidden_dim=64, max_sequence_length=128))
    PresetInfo(name='my_tiny', weights=None, description='')
    """
    if name in _REGISTRY:
        raise ValueError(f"A preset named {name!r} is already registered.")
    missing = {"vocabulary_size", "num_layers", "num_heads", "hidden_dim"} - set(config)
    if missing:
        raise ValueError(f"Preset {name!r}: config lacks {sorted(missing)}.")
    info = PresetInfo(name, dict(config), weights, description)
    _REGISTRY[name] = info
    return info


def get(name: str) -> PresetInfo:
    """The registry entry called `name`.

    Args:
        name: a built-in or registered preset name.

    Example:
    >>> model = keras_gpt.GPT(**keras_gpt.presets.get("gpt_nano").config, seed=0)
    """
    if name not in _REGISTRY:
        raise PresetError(
            f"Unknown preset {name!r}: not a registered name, an existing local "
            "directory, an `hf://owner/name` or a `kaggle://owner/model/framework/"
            f"variation` handle. Registered names: {sorted(_REGISTRY)}."
        )
    return _REGISTRY[name]


def list_presets() -> builtins.list[PresetInfo]:
    """All named presets: name, shape, and where their weights are (if any).

    Also available under its former name `keras_gpt.presets.list`.

    Returns:
        `PresetInfo` entries in registration order; `print` one for a table row.

    Example:
    >>> for info in keras_gpt.presets.list_presets():
    ...     print(info)
    gpt2_small   12L 12H 768d   hf://openai-community/gpt2
    ...
    """
    return builtins.list(_REGISTRY.values())


for _name, _config, _weights, _description in (
    (
        "gpt2_small",
        _gpt2(12, 12, 768),
        "hf://openai-community/gpt2",
        "GPT-2 124M (OpenAI weights via Hugging Face)",
    ),
    ("gpt2_medium", _gpt2(24, 16, 1024), "hf://openai-community/gpt2-medium", "GPT-2 355M"),
    ("gpt2_large", _gpt2(36, 20, 1280), "hf://openai-community/gpt2-large", "GPT-2 774M"),
    ("gpt2_xl", _gpt2(48, 25, 1600), "hf://openai-community/gpt2-xl", "GPT-2 1.5B"),
    ("gpt_nano", _small(3, 3, 48), None, "byte-level, trains in minutes on a CPU"),
    ("gpt_micro", _small(4, 4, 128), None, "byte-level, small CPU experiments"),
    ("gpt_mini", _small(6, 6, 192), None, "byte-level, larger CPU experiments"),
):
    register(_name, _config, _weights, _description)
