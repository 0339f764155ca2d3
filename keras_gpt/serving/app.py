"""The ASGI app: OpenAI-compatible endpoints over a `Batcher` (Starlette).

- `GET /health`: status, backend, model and the batcher's counters
  (`peak_batch`, `batches`, `waiting`, ...).
- `GET /v1/models`: the one served model.
- `POST /v1/completions`: `prompt` (a string or a list of strings),
  `max_tokens`, `temperature`, `top_p`, `top_k` (an extension), `n`, `stop`,
  `seed`, `stream` (+ `stream_options.include_usage`).
- `POST /v1/chat/completions`: `messages`, with the same settings, for models
  that have a chat template (see `keras_gpt.serving.chat`).

Handlers check and tokenize a request, queue it, and await the worker's
events; they never touch the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid

import keras
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from keras_gpt.data.instructions import END_OF_TEXT
from keras_gpt.serving import chat
from keras_gpt.serving.batcher import Batcher, Choice, QueueFull, Request
from keras_gpt.serving.params import (
    ApiError,
    Sampling,
    check_model,
    fit_max_tokens,
    parse_json,
    parse_prompts,
    parse_sampling,
)
from keras_gpt.tokenizers import TextStream, Tokenizer

logger = logging.getLogger("keras_gpt.serving")

#: Seconds a client is told to wait (`Retry-After`) when the queue is full.
RETRY_AFTER_SECONDS = 1


def end_of_text_id(tokenizer: Tokenizer) -> int | None:
    """The tokenizer's `<|endoftext|>` id (every row stops there), or None."""
    if END_OF_TEXT not in getattr(tokenizer, "special_tokens", ()):
        return None
    return int(tokenizer.token_to_id(END_OF_TEXT))


def error_response(error: ApiError) -> JSONResponse:
    """The HTTP answer to `error`."""
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if error.status in (429, 503) else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def create_app(
    model: keras.Model,
    tokenizer: Tokenizer,
    model_name: str = "keras_gpt",
    max_batch: int = 16,
    max_queue: int = 256,
    max_n: int | None = None,
    chat_template: str | None = None,
    batch_wait: float = 0.01,
) -> Starlette:
    """An OpenAI-compatible ASGI app serving `model` (run it with uvicorn or any ASGI server).

    The app's lifespan starts and stops the worker thread that decodes.

    Args:
        model: a `keras_gpt.GPT`.
        tokenizer: its tokenizer (`keras_gpt.presets.load_tokenizer`).
        model_name: the id clients pass as `model` (and `/v1/models` lists).
        max_batch: most rows (prompts × n) decoded together.
        max_queue: most rows waiting; more get HTTP 429 with `Retry-After`.
        max_n: largest `n` a request may ask for (default `max_batch`).
        chat_template: `"instruction"`, `"messages"` or `None` (chat completions
            refused); see `keras_gpt.serving.chat`.
        batch_wait: seconds a free worker waits for more requests before
            starting a batch that is not full (see `Batcher`).

    Returns:
        A Starlette app; `app.state.batcher` is its `Batcher`.

    Example:
    >>> app = create_app(GPT.from_preset("runs/shakespeare/best"),
    ...                  load_tokenizer("runs/shakespeare/best"), model_name="shakespeare")
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    max_n = max_batch if max_n is None else int(max_n)
    if not 1 <= max_n <= max_batch:
        raise ValueError(f"max_n must be between 1 and max_batch ({max_batch}), got {max_n}.")
    if chat_template is not None and chat_template not in chat.CHAT_TEMPLATES:
        raise ValueError(
            f"chat_template must be one of {chat.CHAT_TEMPLATES} or None, got {chat_template!r}."
        )
    eot = end_of_text_id(tokenizer)
    stop_ids = [] if eot is None or eot >= model.vocabulary_size else [eot]
    batcher = Batcher(
        model,
        max_batch=max_batch,
        max_queue=max_queue,
        stop_token_ids=stop_ids,
        batch_wait=batch_wait,
    )
    created = int(time.time())
    context = int(model.max_sequence_length)

    def encode(text: str, param: str) -> list[int]:
        try:
            ids = [int(i) for i in tokenizer.encode(text)]
        except (ValueError, KeyError) as error:
            raise ApiError(f"`{param}` cannot be tokenized: {error}", param=param) from None
        if not ids:
            if not stop_ids:
                raise ApiError(f"`{param}` is empty; give at least one token.", param=param)
            ids = stop_ids[:1]  # as GPT-2 does: an empty prompt starts after <|endoftext|>
        bad = [i for i in ids if not 0 <= i < model.vocabulary_size]
        if bad:
            raise ApiError(
                f"`{param}` holds token id {bad[0]}, outside the model's vocabulary.",
                param=param,
            )
        return ids

    def make_request(
        prefix: str, prompts: list[list[int]], sampling: Sampling, stop: list[str], param: str
    ) -> Request:
        max_tokens = fit_max_tokens(sampling.max_tokens, [len(p) for p in prompts], context, param)
        rows = len(prompts) * sampling.n
        if rows > max_batch:
            raise ApiError(
                f"{len(prompts)} prompts × n={sampling.n} = {rows} sequences; this server "
                f"decodes at most {max_batch} for one request.",
                param="n" if sampling.n > 1 else "prompt",
            )
        choices = [
            Choice(p * sampling.n + j, ids, TextStream(tokenizer, max_tokens, stop, stop_ids))
            for p, ids in enumerate(prompts)
            for j in range(sampling.n)
        ]
        request = Request(
            f"{prefix}-{uuid.uuid4().hex[:24]}",
            choices,
            sampling,
            asyncio.get_running_loop(),
            prompt_tokens=sum(len(p) for p in prompts),
        )
        try:
            batcher.submit(request)
        except QueueFull as full:
            raise ApiError(
                f"The server is busy ({full}); retry after {RETRY_AFTER_SECONDS} s.",
                status=429,
                code="queue_full",
                type="rate_limit_error",
            ) from None
        return request

    async def respond(request: Request, kind: str) -> Response:
        """The JSON response, or the SSE stream, of a queued request."""
        is_chat = kind == "chat.completion"

        def usage(tokens: dict) -> dict:
            completion = sum(tokens.values())
            return {
                "prompt_tokens": request.prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": request.prompt_tokens + completion,
            }

        def log(tokens: dict, reasons: dict, outcome: str | None = None) -> None:
            logger.info(
                "%s: %d prompt + %d completion tokens, %.3f s, %s",
                request.id,
                request.prompt_tokens,
                sum(tokens.values()),
                time.monotonic() - request.started,
                outcome or "finish " + ",".join(reasons[i] for i in sorted(reasons)),
            )

        if not request.sampling.stream:
            texts = {c.index: [] for c in request.choices}
            tokens, reasons = {}, {}
            try:
                while len(reasons) < len(texts):
                    event = await request.events.get()
                    if event[0] == "error":
                        log(tokens, reasons, "error: " + event[1])
                        return error_response(ApiError(event[1], status=500, type="server_error"))
                    if event[0] == "text":
                        texts[event[1]].append(event[2])
                    else:
                        reasons[event[1]], tokens[event[1]] = event[2], event[3]
            finally:
                if len(reasons) < len(texts):
                    batcher.cancel(request)
            log(tokens, reasons)
            choices = []
            for i in sorted(texts):
                text = "".join(texts[i])
                choice = {"index": i, "logprobs": None, "finish_reason": reasons[i]}
                if is_chat:
                    choice["message"] = {"role": "assistant", "content": text}
                else:
                    choice["text"] = text
                choices.append(choice)
            return JSONResponse(
                {
                    "id": request.id,
                    "object": kind,
                    "created": int(time.time()),
                    "model": model_name,
                    "choices": choices,
                    "usage": usage(tokens),
                }
            )

        def chunk(index: int, text: str | None, reason: str | None = None, role=False) -> str:
            if is_chat:
                delta = {"role": "assistant", "content": ""} if role else {}
                if text:
                    delta["content"] = text
                choice = {"index": index, "delta": delta}
            else:
                choice = {"index": index, "text": text or ""}
            choice.update(logprobs=None, finish_reason=reason)
            return sse(dict(base, choices=[choice]))

        base = {
            "id": request.id,
            "object": kind + ".chunk" if is_chat else kind,
            "created": int(time.time()),
            "model": model_name,
        }

        async def events():
            tokens, reasons, ended = {}, {}, False
            try:
                if is_chat:
                    for c in request.choices:
                        yield chunk(c.index, None, role=True)
                while len(reasons) < len(request.choices):
                    event = await request.events.get()
                    if event[0] == "error":
                        ended = True
                        log(tokens, reasons, "error: " + event[1])
                        yield sse(ApiError(event[1], status=500, type="server_error").body())
                        break
                    if event[0] == "text":
                        yield chunk(event[1], event[2])
                    else:
                        reasons[event[1]], tokens[event[1]] = event[2], event[3]
                        yield chunk(event[1], None, event[2])
                else:
                    ended = True
                    log(tokens, reasons)
                    if request.sampling.include_usage:
                        yield sse(dict(base, choices=[], usage=usage(tokens)))
                yield "data: [DONE]\n\n"
            finally:
                # A client that disconnects cancels this generator: free its rows now.
                if not ended:
                    batcher.cancel(request)
                    log(tokens, reasons, "cancelled (the client went away)")

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def completions(http: HttpRequest) -> Response:
        try:
            body = parse_json(await http.body())
            check_model(body, model_name)
            sampling = parse_sampling(body, max_n)
            prompts = [encode(p, "prompt") for p in parse_prompts(body)]
            request = make_request("cmpl", prompts, sampling, sampling.stop, "prompt")
        except ApiError as error:
            return error_response(error)
        return await respond(request, "text_completion")

    async def chat_completions(http: HttpRequest) -> Response:
        try:
            body = parse_json(await http.body())
            check_model(body, model_name)
            if chat_template is None:
                raise ApiError(
                    f"The model {model_name!r} has no chat template: it was not fine-tuned "
                    "with the instruction format. Use /v1/completions, or, if it was "
                    "fine-tuned with it, start the server with --chat instruction "
                    "(or --chat messages).",
                    param="model",
                    code="model_not_chat",
                )
            sampling = parse_sampling(body, max_n)
            text = chat.render(chat.parse_messages(body), chat_template)
            prompt = encode(text, "messages")
            stop = sampling.stop + chat.TEMPLATE_STOPS[chat_template]
            request = make_request("chatcmpl", [prompt], sampling, stop, "messages")
        except ApiError as error:
            return error_response(error)
        return await respond(request, "chat.completion")

    async def health(http: HttpRequest) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "model": model_name,
                "backend": keras.backend.backend(),
                "max_sequence_length": context,
                "chat_template": chat_template,
                **batcher.stats,
            }
        )

    async def models(http: HttpRequest) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": model_name,
                        "object": "model",
                        "created": created,
                        "owned_by": "keras_gpt",
                        "max_model_len": context,
                    }
                ],
            }
        )

    async def http_error(http: HttpRequest, error: HTTPException) -> Response:
        return error_response(
            ApiError(f"{http.method} {http.url.path}: {error.detail}", status=error.status_code)
        )

    async def server_error(http: HttpRequest, error: Exception) -> Response:
        logger.exception("%s %s failed", http.method, http.url.path)
        return error_response(ApiError(f"internal error: {error}", status=500, type="server_error"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    return app


def sse(payload: dict) -> str:
    """One server-sent event carrying `payload` as JSON."""
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
