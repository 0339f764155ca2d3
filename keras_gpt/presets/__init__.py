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

from keras_gpt.presets.errors import PresetError
from keras_gpt.presets.handles import preset_path, resolve
from keras_gpt.presets.loading import (
    from_preset,
    load_tokenizer,
    preset_format,
    save_to_preset,
)
from keras_gpt.presets.registry import PresetInfo, get, list_presets, register

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
