"""Limits and access: what the server checks before it reads, parses or queues a request.

- `ApiKeyMiddleware`: with an API key, `/v1/*` and `/metrics` need
  `Authorization: Bearer KEY` (compared in constant time, `hmac.compare_digest`);
  anything else there gets HTTP 401 with an OpenAI-style error object.
  `/health` stays open (load balancers probe it without a key).
- `read_json`: a POST body must be `Content-Type: application/json` (else 415:
  a web page can send a `text/plain` POST to a local server without a CORS
  preflight, never an `application/json` one), at most `max_body_bytes` long
  (413, from `Content-Length` before anything is read, and counted while the
  body streams in, for chunked bodies or a lying length), read completely
  within `body_timeout` seconds (408), and JSON nested at most `max_json_depth`
  deep (400; JSON deeper than Python's recursion limit stops the parser with
  a `RecursionError`, which is answered with the same 400).

Header read timeouts and the connection cap live in `keras_gpt.serving.server`
(uvicorn's settings, and a header timeout uvicorn does not have).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from dataclasses import dataclass

from starlette.requests import Request as HttpRequest

from keras_gpt.serving.params import ApiError, parse_json

#: Paths that need the API key when one is set (`/health` is always open).
PROTECTED_PREFIXES = ("/v1/", "/metrics")


@dataclass(frozen=True)
class Limits:
    """What the app accepts from a client.

    Args:
        api_key: the key `/v1/*` and `/metrics` require as `Authorization: Bearer KEY`;
            `None` leaves them open.
        max_body_bytes: largest request body (HTTP 413 beyond).
        max_json_depth: deepest nesting of arrays and objects in a body (HTTP 400 beyond).
        body_timeout: seconds a client has to send the whole body once its
            headers have arrived (HTTP 408 after).
        request_timeout: seconds a request may take from arrival to its last
            token, waiting in the queue included; past it the request is ended
            (HTTP 504 before any streamed text, an error event in a stream) and its
            rows are no longer decoded. `None`: no limit.
    """

    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    max_json_depth: int = 32
    body_timeout: float = 30.0
    request_timeout: float | None = 600.0

    def __post_init__(self):
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must be a non-empty string or None.")
        if self.max_body_bytes < 1 or self.max_json_depth < 1 or self.body_timeout <= 0:
            raise ValueError(
                "max_body_bytes, max_json_depth and body_timeout must be positive, got "
                f"{self.max_body_bytes}, {self.max_json_depth}, {self.body_timeout}."
            )
        if self.request_timeout is not None and self.request_timeout <= 0:
            raise ValueError(f"request_timeout must be positive, got {self.request_timeout}.")


def error_body(error: ApiError) -> bytes:
    return json.dumps(error.body()).encode()


class ApiKeyMiddleware:
    """ASGI middleware: `PROTECTED_PREFIXES` need `Authorization: Bearer API_KEY` (else 401).

    Args:
        app: the ASGI app it guards.
        api_key: the key.
    """

    def __init__(self, app, api_key: str):
        self.app = app
        self.expected = b"Bearer " + api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(PROTECTED_PREFIXES):
            given = b""
            for name, value in scope["headers"]:
                if name == b"authorization":
                    given = value
                    break
            # compare_digest's time does not depend on where the two differ.
            if not hmac.compare_digest(given, self.expected):
                await send_error(
                    send,
                    ApiError(
                        "Missing or wrong API key: send `Authorization: Bearer KEY` "
                        "with the key this server was started with (--api-key).",
                        status=401,
                        code="invalid_api_key",
                    ),
                    {b"www-authenticate": b"Bearer"},
                )
                return
        await self.app(scope, receive, send)


async def send_error(send, error: ApiError, headers: dict | None = None) -> None:
    """Sends `error` as a complete JSON response (raw ASGI)."""
    body = error_body(error)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += list((headers or {}).items())
    await send({"type": "http.response.start", "status": error.status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def is_json(content_type: str) -> bool:
    """Whether a `Content-Type` header names JSON (`application/json`, any parameters)."""
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


async def read_json(http: HttpRequest, limits: Limits) -> dict:
    """The body of `http` as a JSON object, within `limits` (or an `ApiError`).

    Args:
        http: the request.
        limits: the server's limits.
    """
    if not is_json(http.headers.get("content-type", "")):
        raise ApiError(
            "The request body must be JSON, sent with `Content-Type: application/json`.",
            status=415,
            code="unsupported_media_type",
        )
    too_large = ApiError(
        f"The request body is larger than this server's limit of {limits.max_body_bytes:,} bytes.",
        status=413,
        code="body_too_large",
    )
    length = http.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ApiError(f"Content-Length must be a number, got {length!r}.")
        if int(length) > limits.max_body_bytes:
            raise too_large

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in http.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        body = await asyncio.wait_for(read(), limits.body_timeout)
    except asyncio.TimeoutError:
        raise ApiError(
            f"The request body did not arrive within {limits.body_timeout:g} s.",
            status=408,
            code="body_timeout",
        ) from None
    too_deep = ApiError(
        f"The request body nests JSON more than {limits.max_json_depth} levels deep, this "
        "server's limit.",
        code="json_too_deep",
    )
    try:
        value = parse_json(body)
    except RecursionError:  # deeper than the parser's recursion allows (~1,000)
        raise too_deep from None
    if json_depth(value) > limits.max_json_depth:
        raise too_deep
    return value


def json_depth(value) -> int:
    """The deepest nesting of lists and dicts in a parsed JSON value (iterative: any depth).

    Example:
    >>> json_depth({"a": [[1], "]]]"]})
    3
    """
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in item)
    return deepest
