"""Serving: an OpenAI-compatible HTTP server with streaming and batched decoding.

`keras-gpt serve PRESET_OR_RUN_DIR` runs `serve`; `create_app` builds the
ASGI app for embedding. Requests in flight are decoded together by a worker
thread (`Batcher`) with continuous batching (`keras_gpt.generation.SlotEngine`);
each row's text is released by `keras_gpt.tokenizers.TextStream`; `Limits` holds the API
key, body and time limits the app enforces; see the Serving guide.
Needs the `serve` extra (Starlette and uvicorn).

Example:
>>> from keras_gpt.serving import create_app
>>> app = create_app(model, tokenizer, model_name="shakespeare")
>>> uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from keras_gpt.serving.app import create_app
from keras_gpt.serving.batcher import Batcher
from keras_gpt.serving.chat import CHAT_TEMPLATES, chat_template_of
from keras_gpt.serving.limits import Limits
from keras_gpt.serving.params import ApiError
from keras_gpt.serving.server import preset_path, serve
from keras_gpt.tokenizers import TextStream  # the streamed text of a row (also used by the CLI)

#: The same class as `TextStream` (serving's own copy until both were merged).
IncrementalText = TextStream

__all__ = [
    "CHAT_TEMPLATES",
    "ApiError",
    "Batcher",
    "IncrementalText",
    "Limits",
    "TextStream",
    "chat_template_of",
    "create_app",
    "preset_path",
    "serve",
]
