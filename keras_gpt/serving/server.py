"""Loading a preset (or a training run) and serving it with uvicorn."""

from __future__ import annotations

import logging
import os

import keras

from keras_gpt.model import GPT
from keras_gpt.presets import load_tokenizer, resolve
from keras_gpt.serving.app import create_app
from keras_gpt.serving.chat import chat_template_of

logger = logging.getLogger("keras_gpt.serving")


def preset_path(handle: str) -> str:
    """`handle`, or `handle/best` for a training run directory (which keeps its best model there).

    Args:
        handle: a preset handle or directory, or a `keras-gpt pretrain`/`finetune` output folder.

    Example:
    >>> preset_path("runs/shakespeare")
    'runs/shakespeare/best'
    """
    handle = os.fspath(handle)
    best = os.path.join(handle, "best")
    if (
        os.path.isdir(handle)
        and not os.path.exists(os.path.join(handle, "config.json"))
        and os.path.isdir(best)
    ):
        return best
    return handle


def serve(
    handle: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 16,
    max_queue: int = 256,
    max_n: int | None = None,
    chat: str | None = None,
    model_name: str | None = None,
    log_level: str = "info",
    batch_wait: float = 0.01,
) -> None:
    """Serves a preset or training run over HTTP until interrupted (`keras-gpt serve`).

    Args:
        handle: a preset handle or directory, or a training run directory
            (its `best/` preset is served).
        host: the address to listen on; the default is reachable from this machine only.
        port: the TCP port.
        max_batch: most rows (prompts × n) decoded together.
        max_queue: most rows waiting; more get HTTP 429.
        max_n: largest `n` of one request (default `max_batch`).
        chat: the chat template (`"instruction"` or `"messages"`), overriding the
            preset's `metadata.json`; `None` reads it from there.
        model_name: the model id clients use (default: `handle`).
        log_level: uvicorn's and the request log's level.
        batch_wait: seconds a free worker waits for more requests before
            starting a batch that is not full (see `Batcher`).

    Example:
    >>> serve("runs/shakespeare", port=8000)      # blocks; Ctrl-C stops it
    """
    import uvicorn

    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logger.setLevel(log_level.upper())
    path = preset_path(handle)
    model = GPT.from_preset(path)
    tokenizer = load_tokenizer(path)
    template = chat_template_of(resolve(path), chat)
    name = model_name or os.fspath(handle).rstrip("/") or os.fspath(handle)
    app = create_app(
        model,
        tokenizer,
        model_name=name,
        max_batch=max_batch,
        max_queue=max_queue,
        max_n=max_n,
        chat_template=template,
        batch_wait=batch_wait,
    )
    logger.info(
        "serving %s (%s, %s parameters, context %d, chat %s) on backend %s at http://%s:%d",
        name,
        path,
        f"{model.count_params():,}",
        model.max_sequence_length,
        template or "off",
        keras.backend.backend(),
        host,
        port,
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
