"""Presets: named architectures, `from_preset` / `save_to_preset`, and conversion
from Hugging Face and KerasHub GPT-2 checkpoints.

Example:
>>> for info in keras_gpt.presets.list_presets():
...     print(info)
gpt2_small   12L 12H 768d   hf://openai-community/gpt2
...
gpt_mini     6L 6H 192d     no weights (architecture only)
>>> model = keras_gpt.GPT.from_preset("my_preset")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keras_gpt.presets.errors import PresetError
from keras_gpt.presets.handles import preset_path, resolve
from keras_gpt.presets.registry import PresetInfo, get, list_presets, register

if TYPE_CHECKING:  # for type checkers and the API docs; at run time, __getattr__
    from keras_gpt.presets.loading import (
        from_preset,
        load_tokenizer,
        preset_format,
        save_to_preset,
    )

#: Imported on first use (PEP 562): they need Keras and a backend, which naming,
#: listing and resolving presets do not (`keras-gpt generate missing/` fails at once).
_LOADING = ("from_preset", "load_tokenizer", "preset_format", "save_to_preset")

#: The former name of `list_presets`, kept so that existing code runs; it shadows the
#: builtin `list` inside this namespace, so new code should call `list_presets`.
list = list_presets  # noqa: A001

__all__ = [
    "PresetError",
    "PresetInfo",
    "from_preset",
    "get",
    "list",
    "list_presets",
    "load_tokenizer",
    "preset_format",
    "register",
    "preset_path",
    "resolve",
    "save_to_preset",
]


def __getattr__(name: str):
    if name in _LOADING:
        from keras_gpt.presets import loading

        return getattr(loading, name)
    raise AttributeError(f"module 'keras_gpt.presets' has no attribute {name!r}")
