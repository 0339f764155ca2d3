"""Generation: the engine that owns a model's compiled decoding programs, and samplers.

`GPT.generate` is the front door; `GenerationEngine` is what runs it.
`SlotEngine` is continuous batching: requests join and leave a fixed set of
slots of one KV cache at every step (what `keras-gpt serve` decodes with). The
engine and the samplers are written against a small model contract (see
`keras_gpt.generation.engine`) and import no model code, so the model can own
an engine without an import circle.
"""

from keras_gpt.generation.engine import (
    CachedModel,
    DecodeInputs,
    DecodeState,
    GenerationEngine,
    bucket_length,
    compiled_programs,
    decode_loop,
    decode_step,
    prefill,
)
from keras_gpt.generation.prompts import check_stop_ids, new_tokens
from keras_gpt.generation.samplers import (
    DynamicSampler,
    GreedySampler,
    RandomSampler,
    RowSampler,
    Sampler,
    get_sampler,
)
from keras_gpt.generation.slots import SCHEDULERS, SlotEngine, SlotEvent, SlotRequest

__all__ = [
    "CachedModel",
    "DecodeInputs",
    "DecodeState",
    "DynamicSampler",
    "GenerationEngine",
    "GreedySampler",
    "RandomSampler",
    "RowSampler",
    "SCHEDULERS",
    "Sampler",
    "SlotEngine",
    "SlotEvent",
    "SlotRequest",
    "bucket_length",
    "check_stop_ids",
    "compiled_programs",
    "decode_loop",
    "decode_step",
    "get_sampler",
    "new_tokens",
    "prefill",
]
