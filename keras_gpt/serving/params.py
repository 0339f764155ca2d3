"""Request bodies of the OpenAI-style endpoints, checked field by field.

Every problem becomes an `ApiError` naming the field (`param`), which the app
answers with HTTP 400 (or the status it carries) and an OpenAI-style error
object: `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

#: Most stop strings a request may give (OpenAI's limit).
MAX_STOP_STRINGS = 4

#: `max_tokens` when a request gives none (OpenAI's default for completions),
#: cut to the room the prompt leaves.
DEFAULT_MAX_TOKENS = 16

#: Fields OpenAI defines that this server does not implement: a request that
#: sets one to anything but its default is refused rather than silently ignored.
UNSUPPORTED = {
    "echo": (None, False),
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "suffix": (None, ""),
    "best_of": (None, 1),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "tools": (None, []),
    "functions": (None, []),
    "response_format": (None, {"type": "text"}),
}


class ApiError(Exception):
    """A request the server refuses: an HTTP status and an OpenAI-style error object.

    Args:
        message: one sentence saying what is wrong and what to do.
        param: the request field at fault (`None` when there is none).
        status: the HTTP status (400 unless said otherwise).
        code: a short machine-readable code.
        type: OpenAI's error type.

    Example:
    >>> ApiError("`top_p` must be in (0, 1], got 0.", param="top_p").body()["error"]["param"]
    'top_p'
    """

    def __init__(
        self,
        message: str,
        param: str | None = None,
        status: int = 400,
        code: str | None = None,
        type: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.code = code
        self.type = type

    def body(self) -> dict:
        """The JSON error object."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass
class Sampling:
    """What a request asks for, shared by every choice of it (`top_p` of 1 is None)."""

    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    n: int = 1
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False


def parse_json(body: bytes) -> dict:
    """The request body as a JSON object, or an `ApiError`.

    Args:
        body: the raw request body.
    """
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(
            f"The request body is not valid JSON ({error}).", code="invalid_json"
        ) from None
    if not isinstance(value, dict):
        raise ApiError(
            f"The request body must be a JSON object, got {type(value).__name__}.",
            code="invalid_json",
        )
    return value


def _number(body: dict, name: str, default, kind: type, nullable: bool = True):
    value = body.get(name, default)
    if value is None and nullable:
        return default
    # bool is an int in Python, not in JSON.
    ok = (
        isinstance(value, int) and not isinstance(value, bool)
        if kind is int
        else isinstance(value, (int, float)) and not isinstance(value, bool)
    )
    if not ok or (kind is float and not math.isfinite(value)):
        wanted = "an integer" if kind is int else "a number"
        raise ApiError(f"`{name}` must be {wanted}, got {value!r}.", param=name)
    return kind(value)


def parse_sampling(body: dict, max_n: int) -> Sampling:
    """The sampling fields of a completion or chat request.

    Args:
        body: the request object.
        max_n: the server's largest `n`.

    Returns:
        The checked settings (`max_tokens` still unchecked against the prompt).
    """
    for name, defaults in UNSUPPORTED.items():
        if name in body and body[name] not in defaults:
            raise ApiError(
                f"`{name}` is not supported by this server; leave it out.",
                param=name,
                code="unsupported_parameter",
            )
    temperature = _number(body, "temperature", 1.0, float)
    if temperature < 0:
        raise ApiError(f"`temperature` must be >= 0, got {temperature!r}.", param="temperature")
    top_p = _number(body, "top_p", None, float)
    if top_p is not None and not 0 < top_p <= 1:
        raise ApiError(f"`top_p` must be in (0, 1], got {top_p!r}.", param="top_p")
    top_k = _number(body, "top_k", None, int)
    if top_k is not None and top_k < 1:
        raise ApiError(
            f"`top_k` must be a positive integer (or null for all tokens), got {top_k!r}.",
            param="top_k",
        )
    n = _number(body, "n", 1, int)
    if not 1 <= n <= max_n:
        raise ApiError(
            f"`n` must be between 1 and {max_n} (this server's limit), got {n}.", param="n"
        )
    seed = _number(body, "seed", None, int)
    max_tokens = _number(body, "max_tokens", None, int)
    if "max_completion_tokens" in body and max_tokens is None:  # the chat API's newer name
        max_tokens = _number(body, "max_completion_tokens", None, int)
    if max_tokens is not None and max_tokens < 1:
        raise ApiError(f"`max_tokens` must be at least 1, got {max_tokens}.", param="max_tokens")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not (isinstance(stop, list) and all(isinstance(s, str) and s for s in stop)):
        raise ApiError(
            f"`stop` must be a non-empty string or a list of them, got {body.get('stop')!r}.",
            param="stop",
        )
    if len(stop) > MAX_STOP_STRINGS:
        raise ApiError(
            f"`stop` may hold at most {MAX_STOP_STRINGS} strings, got {len(stop)}.", param="stop"
        )
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ApiError(f"`stream` must be true or false, got {stream!r}.", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise ApiError(
            '`stream_options` must be an object like {"include_usage": true}.',
            param="stream_options",
        )
    # With top_p = 1 nothing is filtered: the unfiltered sampling mode.
    return Sampling(
        temperature=temperature,
        top_p=None if top_p == 1 else top_p,
        top_k=top_k,
        seed=seed,
        n=n,
        max_tokens=max_tokens,
        stop=stop,
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
    )


def parse_prompts(body: dict) -> list[str]:
    """`prompt`: a string or a non-empty list of strings."""
    if "prompt" not in body:
        raise ApiError("`prompt` is required (a string or a list of strings).", param="prompt")
    prompt = body["prompt"]
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not (isinstance(prompts, list) and prompts and all(isinstance(p, str) for p in prompts)):
        raise ApiError(
            f"`prompt` must be a string or a non-empty list of strings, got {prompt!r:.80}.",
            param="prompt",
        )
    return prompts


def check_model(body: dict, model_name: str) -> None:
    """`model`, if given, must name the served model (404 otherwise, as OpenAI answers)."""
    name = body.get("model")
    if name is None:
        return
    if not isinstance(name, str):
        raise ApiError(f"`model` must be a string, got {name!r}.", param="model")
    if name != model_name:
        raise ApiError(
            f"The model {name!r} is not served here; this server serves {model_name!r}.",
            param="model",
            status=404,
            code="model_not_found",
        )


def fit_max_tokens(
    requested: int | None, prompt_lengths: list[int], context: int, param: str = "prompt"
) -> int:
    """The `max_tokens` to decode: checked against the context the longest prompt leaves.

    Args:
        requested: the request's `max_tokens` (None: `DEFAULT_MAX_TOKENS`, cut to fit).
        prompt_lengths: token counts of the request's prompts.
        context: the model's `max_sequence_length`.
        param: the field holding the prompt (`"prompt"` or `"messages"`).
    """
    longest = max(prompt_lengths)
    room = context - longest
    if room < 1:
        raise ApiError(
            f"The prompt is {longest} tokens; this model's context is {context} tokens, "
            "which leaves no room to generate. Shorten the prompt.",
            param=param,
            code="context_length_exceeded",
        )
    if requested is None:
        return min(DEFAULT_MAX_TOKENS, room)
    if requested > room:
        raise ApiError(
            f"`max_tokens` ({requested}) + the prompt ({longest} tokens) = "
            f"{requested + longest} exceeds this model's context of {context} tokens; "
            f"ask for at most {room}.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return requested
