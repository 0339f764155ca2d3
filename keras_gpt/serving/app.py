"""The ASGI app: OpenAI-compatible endpoints over a `Batcher` (Starlette).

- `GET /health`: status, backend, model and the batcher's counters
  (`peak_batch`, `batches`, `waiting`, ...); always open.
- `GET /metrics`: Prometheus text format (when `prometheus_client` is installed).
- `GET /v1/models`: the one served model.
- `POST /v1/completions`: `prompt` (a string or a list of strings),
  `max_tokens`, `temperature`, `top_p`, `top_k` (an extension), `n`, `stop`,
  `seed`, `stream` (+ `stream_options.include_usage`).
- `POST /v1/chat/completions`: `messages`, with the same settings, for models
  that have a chat template (see `keras_gpt.serving.chat`).

A request goes through four phases, one function each: `read_json` (the
limits of `keras_gpt.serving.limits`: media type, size, depth, body
timeout), parsing and tokenizing (`Service.completion_request` /
`chat_request`), queueing (`Service.submit`), and answering
(`Service.respond_json` or `respond_stream`, which enforce the request's time
limit and drop a request whose client went away). Handlers never touch the
model: the batcher's worker thread does.
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
from starlette.middleware import Middleware
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from keras_gpt.data.instructions import END_OF_TEXT
from keras_gpt.serving import chat
from keras_gpt.serving.batcher import Batcher, Choice, QueueFull, Request, ShuttingDown
from keras_gpt.serving.limits import ApiKeyMiddleware, Limits, read_json
from keras_gpt.serving.metrics import Metrics
from keras_gpt.serving.params import (
    ApiError,
    Sampling,
    check_model,
    fit_max_tokens,
    parse_prompts,
    parse_sampling,
)
from keras_gpt.tokenizers import TextStream, Tokenizer

logger = logging.getLogger("keras_gpt.serving")

#: Seconds a client is told to wait (`Retry-After`) when the queue is full.
RETRY_AFTER_SECONDS = 1


class _ClientGone(Exception):
    """The client of a non-streamed request disconnected."""


class _TimedOut(Exception):
    """The request ran past its time limit."""


def end_of_text_id(tokenizer: Tokenizer) -> int | None:
    """The tokenizer's `<|endoftext|>` id (every row stops there), or None."""
    if END_OF_TEXT not in getattr(tokenizer, "special_tokens", ()):
        return None
    return int(tokenizer.token_to_id(END_OF_TEXT))


def error_response(error: ApiError, headers: dict | None = None) -> JSONResponse:
    """The HTTP answer to `error`, with `headers` added (e.g. a 405's `Allow`)."""
    headers = dict(headers or {})
    if error.status in (429, 503):
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    if error.status in (408, 413):
        # The body was not read to its end: the connection cannot carry another request,
        # so say it closes (else a client that sent the whole body waits on keep-alive).
        headers["Connection"] = "close"
    return JSONResponse(error.body(), status_code=error.status, headers=headers or None)


def timeout_error(limits: Limits) -> ApiError:
    return ApiError(
        f"The request took longer than this server's limit of {limits.request_timeout:g} s "
        "(--request-timeout); ask for fewer tokens or retry later.",
        status=504,
        code="request_timeout",
        type="timeout_error",
    )


def create_app(
    model: keras.Model,
    tokenizer: Tokenizer,
    model_name: str = "keras_gpt",
    max_batch: int = 16,
    max_queue: int = 256,
    max_n: int | None = None,
    chat_template: str | None = None,
    batch_wait: float = 0.01,
    limits: Limits | None = None,
    scheduler: str = "continuous",
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
        limits: API key, body size and depth, body and request timeouts
            (`keras_gpt.serving.limits.Limits`; default: its defaults, no key).
        scheduler: `"continuous"` (continuous batching) or `"static"`; see `Batcher`.

    Returns:
        A Starlette app; `app.state.batcher` is its `Batcher`, `app.state.service`
        the `Service` its handlers share.

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
    limits = limits or Limits()
    eot = end_of_text_id(tokenizer)
    stop_ids = [] if eot is None or eot >= model.vocabulary_size else [eot]
    metrics = Metrics(model_name)
    batcher = Batcher(
        model,
        max_batch=max_batch,
        max_queue=max_queue,
        stop_token_ids=stop_ids,
        batch_wait=batch_wait,
        metrics=metrics,
        scheduler=scheduler,
    )
    service = Service(
        model, tokenizer, batcher, model_name, max_n, chat_template, stop_ids, limits, metrics
    )
    return build_app(service)


def build_app(service: Service) -> Starlette:
    """The Starlette app around `service`: routes, error handlers, the API key, the lifespan."""

    async def http_error(http: HttpRequest, error: HTTPException) -> Response:
        # Starlette's 405 carries `Allow` (the route's methods), which HTTP requires.
        return error_response(
            ApiError(f"{http.method} {http.url.path}: {error.detail}", status=error.status_code),
            error.headers,
        )

    async def server_error(http: HttpRequest, error: Exception) -> Response:
        logger.exception("%s %s failed", http.method, http.url.path)
        return error_response(ApiError(f"internal error: {error}", status=500, type="server_error"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        service.batcher.start()
        try:
            yield
        finally:
            service.batcher.stop()

    key = service.limits.api_key
    app = Starlette(
        routes=[
            Route("/health", service.health, methods=["GET"]),
            Route("/metrics", service.metrics_endpoint, methods=["GET"]),
            Route("/v1/models", service.models, methods=["GET"]),
            Route("/v1/completions", service.completions, methods=["POST"]),
            Route("/v1/chat/completions", service.chat_completions, methods=["POST"]),
        ],
        middleware=[Middleware(ApiKeyMiddleware, api_key=key)] if key else [],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.batcher = service.batcher
    app.state.service = service
    return app


class Service:
    """What the handlers share: the model's tokenizer, the batcher, the limits.

    Args:
        model: the served `keras_gpt.GPT` (read for its sizes only).
        tokenizer: its tokenizer.
        batcher: the `Batcher` that decodes.
        model_name: the served model's id.
        max_n: the largest `n`.
        chat_template: one of `chat.CHAT_TEMPLATES`, or None.
        stop_ids: token ids that end every row.
        limits: the `Limits`.
        metrics: the `Metrics`.
    """

    def __init__(
        self, model, tokenizer, batcher, model_name, max_n, chat_template, stop_ids, limits, metrics
    ):
        self.tokenizer = tokenizer
        self.vocabulary_size = int(model.vocabulary_size)
        self.context = int(model.max_sequence_length)
        self.batcher = batcher
        self.model_name = model_name
        self.max_n = max_n
        self.chat_template = chat_template
        self.stop_ids = stop_ids
        self.limits = limits
        self.metrics = metrics
        self.created = int(time.time())

    # -- phase 2: a checked, tokenized request -------------------------------------------

    def encode(self, text: str, param: str) -> list[int]:
        """Token ids of `text` (field `param`), each inside the model's vocabulary."""
        try:
            ids = [int(i) for i in self.tokenizer.encode(text)]
        except (ValueError, KeyError) as error:
            raise ApiError(f"`{param}` cannot be tokenized: {error}", param=param) from None
        if not ids:
            if not self.stop_ids:
                raise ApiError(f"`{param}` is empty; give at least one token.", param=param)
            ids = self.stop_ids[:1]  # as GPT-2 does: an empty prompt starts after <|endoftext|>
        bad = [i for i in ids if not 0 <= i < self.vocabulary_size]
        if bad:
            raise ApiError(
                f"`{param}` holds token id {bad[0]}, outside the model's vocabulary.",
                param=param,
            )
        return ids

    def completion_request(self, body: dict) -> Request:
        """A `/v1/completions` body as a queued `Request`."""
        check_model(body, self.model_name)
        sampling = parse_sampling(body, self.max_n)
        prompts = [self.encode(p, "prompt") for p in parse_prompts(body)]
        return self.submit("cmpl", prompts, sampling, sampling.stop, "prompt")

    def chat_request(self, body: dict) -> Request:
        """A `/v1/chat/completions` body as a queued `Request`."""
        check_model(body, self.model_name)
        template = self.chat_template
        if template is None:
            raise ApiError(
                f"The model {self.model_name!r} has no chat template: it was not fine-tuned "
                "with the instruction format. Use /v1/completions, or, if it was "
                "fine-tuned with it, start the server with --chat instruction "
                "(or --chat messages).",
                param="model",
                code="model_not_chat",
            )
        sampling = parse_sampling(body, self.max_n)
        prompt = self.encode(chat.render(chat.parse_messages(body), template), "messages")
        stop = sampling.stop + chat.TEMPLATE_STOPS[template]
        return self.submit("chatcmpl", [prompt], sampling, stop, "messages")

    # -- phase 3: queueing -----------------------------------------------------------------

    def submit(
        self, prefix: str, prompts: list[list[int]], sampling: Sampling, stop: list[str], param: str
    ) -> Request:
        """Queues the rows (prompts × n) of a request; 400, 429 or 503 if it cannot be."""
        max_tokens = fit_max_tokens(
            sampling.max_tokens, [len(p) for p in prompts], self.context, param
        )
        rows = len(prompts) * sampling.n
        if rows > self.batcher.max_batch:
            raise ApiError(
                f"{len(prompts)} prompts × n={sampling.n} = {rows} sequences; this server "
                f"decodes at most {self.batcher.max_batch} for one request.",
                param="n" if sampling.n > 1 else "prompt",
            )
        choices = [
            Choice(
                p * sampling.n + j,
                ids,
                TextStream(self.tokenizer, max_tokens, stop, self.stop_ids),
            )
            for p, ids in enumerate(prompts)
            for j in range(sampling.n)
        ]
        request = Request(
            f"{prefix}-{uuid.uuid4().hex[:24]}",
            choices,
            sampling,
            asyncio.get_running_loop(),
            prompt_tokens=sum(len(p) for p in prompts),
            timeout=self.limits.request_timeout,
        )
        try:
            self.batcher.submit(request)
        except ShuttingDown:
            raise ApiError(
                "The server is shutting down; retry on another replica or later.",
                status=503,
                code="shutting_down",
                type="server_error",
            ) from None
        except QueueFull as full:
            raise ApiError(
                f"The server is busy ({full}); retry after {RETRY_AFTER_SECONDS} s.",
                status=429,
                code="queue_full",
                type="rate_limit_error",
            ) from None
        return request

    # -- phase 4: answering ------------------------------------------------------------------

    async def next_event(self, request: Request, gone: asyncio.Future | None = None) -> tuple:
        """The worker's next event for `request`; `_TimedOut` past its deadline,
        `_ClientGone` if `gone` (the client's disconnect) completes first."""
        left = request.time_left()
        if left is not None and left <= 0:
            raise _TimedOut
        get = asyncio.ensure_future(request.events.get())
        waits = {get} if gone is None else {get, gone}
        done, _ = await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        if get in done:
            return get.result()
        get.cancel()
        raise _ClientGone if gone is not None and gone in done else _TimedOut

    def log(self, request: Request, tokens: dict, reasons: dict, outcome: str | None = None):
        logger.info(
            "%s: %d prompt + %d completion tokens, %.3f s, %s",
            request.id,
            request.prompt_tokens,
            sum(tokens.values()),
            time.monotonic() - request.started,
            outcome or "finish " + ",".join(reasons[i] for i in sorted(reasons)),
        )

    def usage(self, request: Request, tokens: dict) -> dict:
        completion = sum(tokens.values())
        return {
            "prompt_tokens": request.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": request.prompt_tokens + completion,
        }

    async def collect(self, http: HttpRequest, request: Request):
        """(texts, tokens, finish reasons) of a non-streamed request, by choice index, or
        the `ApiError` that ended it; a client that disconnects cancels its rows."""
        texts = {c.index: [] for c in request.choices}
        tokens, reasons = {}, {}
        gone = asyncio.ensure_future(wait_for_disconnect(http))
        try:
            while len(reasons) < len(texts):
                event = await self.next_event(request, gone)
                if event[0] == "error":
                    return texts, tokens, reasons, ApiError(event[1], **event[2])
                if event[0] == "text":
                    texts[event[1]].append(event[2])
                else:
                    reasons[event[1]], tokens[event[1]] = event[2], event[3]
        except _TimedOut:
            return texts, tokens, reasons, timeout_error(self.limits)
        finally:
            gone.cancel()
            if len(reasons) < len(texts):
                self.batcher.cancel(request)
        return texts, tokens, reasons, None

    async def respond_json(self, http: HttpRequest, request: Request, kind: str) -> Response:
        """The JSON response of a non-streamed request."""
        try:
            texts, tokens, reasons, error = await self.collect(http, request)
        except _ClientGone:
            self.log(request, {}, {}, "cancelled (the client went away)")
            self.metrics.finished(request, "abort", 499)
            return Response(status_code=499)  # nobody reads it
        if error is not None:
            self.log(request, tokens, reasons, "error: " + error.message)
            self.metrics.finished(request, "error", error.status)
            return error_response(error)
        self.log(request, tokens, reasons)
        self.metrics.finished(request, "ok", 200)
        choices = []
        for i in sorted(texts):
            text = "".join(texts[i])
            choice = {"index": i, "logprobs": None, "finish_reason": reasons[i]}
            if kind == "chat.completion":
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            choices.append(choice)
        return JSONResponse(
            {
                "id": request.id,
                "object": kind,
                "created": int(time.time()),
                "model": self.model_name,
                "choices": choices,
                "usage": self.usage(request, tokens),
            }
        )

    def respond_stream(self, request: Request, kind: str) -> Response:
        """The SSE stream of a streamed request (OpenAI's chunk format, ending with [DONE])."""
        is_chat = kind == "chat.completion"
        base = {
            "id": request.id,
            "object": kind + ".chunk" if is_chat else kind,
            "created": int(time.time()),
            "model": self.model_name,
        }

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

        async def events():
            tokens, reasons, outcome = {}, {}, None
            try:
                if is_chat:
                    for c in request.choices:
                        yield chunk(c.index, None, role=True)
                while len(reasons) < len(request.choices):
                    try:
                        event = await self.next_event(request)
                    except _TimedOut:
                        error = timeout_error(self.limits)
                        details = {"status": error.status, "code": error.code, "type": error.type}
                        event = ("error", error.message, details)
                    if event[0] == "error":
                        outcome = "error: " + event[1]
                        yield sse(ApiError(event[1], **event[2]).body())
                        break
                    if event[0] == "text":
                        yield chunk(event[1], event[2])
                    else:
                        reasons[event[1]], tokens[event[1]] = event[2], event[3]
                        yield chunk(event[1], None, event[2])
                else:
                    outcome = "ok"
                    if request.sampling.include_usage:
                        yield sse(dict(base, choices=[], usage=self.usage(request, tokens)))
                yield "data: [DONE]\n\n"
            finally:
                # A client that disconnects cancels this generator: free its rows now.
                if outcome != "ok":
                    self.batcher.cancel(request)
                if outcome is None:
                    self.log(request, tokens, reasons, "cancelled (the client went away)")
                else:
                    self.log(request, tokens, reasons, None if outcome == "ok" else outcome)
                self.metrics.finished(
                    request,
                    "abort" if outcome is None else outcome[:5],
                    499 if outcome is None else 200,
                )

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # -- the endpoints -----------------------------------------------------------------------

    async def completions(self, http: HttpRequest) -> Response:
        return await self.handle(http, self.completion_request, "text_completion")

    async def chat_completions(self, http: HttpRequest) -> Response:
        return await self.handle(http, self.chat_request, "chat.completion")

    async def handle(self, http: HttpRequest, make, kind: str) -> Response:
        """Reads, checks and queues a request, then answers it."""
        try:
            request = make(await read_json(http, self.limits))
        except ApiError as error:
            self.metrics.refused(error.status)
            return error_response(error)
        if request.sampling.stream:
            return self.respond_stream(request, kind)
        return await self.respond_json(http, request, kind)

    async def health(self, http: HttpRequest) -> Response:
        return JSONResponse(
            {
                "status": "draining" if self.batcher.draining else "ok",
                "model": self.model_name,
                "backend": keras.backend.backend(),
                "max_sequence_length": self.context,
                "chat_template": self.chat_template,
                **self.batcher.stats,
            }
        )

    async def models(self, http: HttpRequest) -> Response:
        model = {
            "id": self.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "keras_gpt",
            "max_model_len": self.context,
        }
        return JSONResponse({"object": "list", "data": [model]})

    async def metrics_endpoint(self, http: HttpRequest) -> Response:
        if not self.metrics.enabled:
            return error_response(
                ApiError(
                    "/metrics needs prometheus_client: pip install prometheus-client.",
                    status=404,
                    code="metrics_unavailable",
                )
            )
        self.metrics.observe_batcher(self.batcher.stats)
        body, content_type = self.metrics.exposition()
        return Response(body, media_type=content_type)


async def wait_for_disconnect(http: HttpRequest) -> None:
    """Returns when the client of `http` (whose body has been read) disconnects."""
    while (await http.receive())["type"] != "http.disconnect":
        pass


def sse(payload: dict) -> str:
    """One server-sent event carrying `payload` as JSON."""
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
