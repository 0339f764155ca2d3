"""`keras-gpt serve`'s limits and access, each against a real server on 127.0.0.1.

Four servers of a tiny random model start once for the module: `guarded` (an API
key from the environment, a small body limit, short header and body timeouts, a
connection cap), `hurried` (a request time limit no request can meet), `drained`
(stopped with SIGTERM) and `impatient` (a grace period too short for its queue,
also stopped). Raw sockets send what the `openai` client never would: half-sent
headers and bodies, lying or chunked lengths. Every wait is bounded; nothing
asserts on timing. HTTP limits and access do not depend on the Keras backend, so
the module runs once (`backend_independent`).
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from helpers import ServeProcess  # noqa: E402

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from keras_gpt.model import GPT  # noqa: E402
from keras_gpt.tokenizers import ByteTokenizer  # noqa: E402

pytestmark = pytest.mark.backend_independent

KEY = "test-key-123"
MAX_BODY = 300_000  # room for JSON nested 100,000 deep (200 kB), not for 300 kB more
WAIT = 60  # the most any single answer may take


def request(url: str, body=None, headers: dict | None = None, method: str | None = None):
    """(status, headers, parsed JSON or text); HTTP errors are returned, not raised."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    headers = dict(
        {"Content-Type": "application/json"} if data is not None else {}, **(headers or {})
    )
    req = urllib.request.Request(url, data, headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=WAIT) as response:
            status, head, text = response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        status, head, text = error.code, error.headers, error.read().decode()
    try:
        return status, head, json.loads(text)
    except ValueError:
        return status, head, text


def raw(port: int, data: bytes, close_after: bool = False) -> bytes:
    """Sends `data` on a new connection and returns all it gets back until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        s.sendall(data)
        if close_after:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


AUTH = {"Authorization": f"Bearer {KEY}"}
COMPLETION = {"prompt": "hi", "max_tokens": 4, "temperature": 0}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving_limits")
    tokenizer = ByteTokenizer()
    model = GPT(
        vocabulary_size=tokenizer.vocabulary_size,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        max_sequence_length=64,
        seed=0,
    )
    preset = str(root / "tiny")
    model.save_to_preset(preset, tokenizer=tokenizer)
    started = {
        "guarded": ServeProcess(
            preset,
            str(root / "guarded.log"),
            *("--max-body-bytes", str(MAX_BODY), "--max-json-depth", "8"),
            *("--header-timeout", "2", "--body-timeout", "2", "--max-connections", "6"),
            "--no-warmup",
            env={"KERAS_GPT_API_KEY": KEY},
        ),
        "hurried": ServeProcess(
            preset, str(root / "hurried.log"), "--request-timeout", "0.001", "--no-warmup"
        ),
        "drained": ServeProcess(
            preset, str(root / "drained.log"), "--shutdown-timeout", "20", "--no-warmup"
        ),
        "impatient": ServeProcess(
            preset,
            str(root / "impatient.log"),
            *("--shutdown-timeout", "0.2", "--max-batch", "1", "--no-warmup"),
        ),
    }
    try:
        for server in started.values():
            server.wait()
        yield started
    finally:
        for server in started.values():
            server.stop()


# -- the API key -------------------------------------------------------------------------


def test_api_key_guards_v1_and_metrics_but_not_health(servers):
    url = servers["guarded"].url
    assert request(url + "/health")[0] == 200
    for path in ("/v1/models", "/metrics"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            status, head, body = request(url + path, headers=headers)
            assert status == 401, (path, headers)
            assert body["error"]["code"] == "invalid_api_key"
            assert body["error"]["type"] == "invalid_request_error"
            assert head["WWW-Authenticate"] == "Bearer"
    status, _, body = request(url + "/v1/completions", COMPLETION)
    assert status == 401  # refused before the body is looked at
    assert request(url + "/v1/models", headers=AUTH)[0] == 200
    status, _, body = request(url + "/v1/completions", COMPLETION, AUTH)
    assert status == 200, body
    assert body["usage"]["completion_tokens"] == 4
    assert "API key required" in servers["guarded"].read_log()


def test_the_openai_client_sends_the_key(servers):
    openai = pytest.importorskip("openai")
    url = servers["guarded"].url + "/v1"
    client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=WAIT)
    assert client.completions.create(model="tiny", **COMPLETION).choices[0].text is not None
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()


# -- bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_only_json_bodies_are_read(servers, content_type):
    headers = dict(AUTH, **({"Content-Type": content_type} if content_type else {}))
    data = json.dumps(COMPLETION).encode()
    req = urllib.request.Request(servers["guarded"].url + "/v1/completions", data, headers)
    if content_type is None:
        req.remove_header("Content-type")  # urllib adds a form type by default
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=WAIT)
    assert refused.value.code == 415
    assert json.loads(refused.value.read())["error"]["code"] == "unsupported_media_type"
    # With a charset parameter it is JSON all the same.
    headers = dict(AUTH, **{"Content-Type": "application/json; charset=utf-8"})
    assert request(servers["guarded"].url + "/v1/completions", data, headers)[0] == 200


def http_head(port: int, headers: str) -> bytes:
    return (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n{headers}\r\n"
    ).encode()


def test_a_body_over_the_limit_is_a_413_before_it_is_read(servers):
    port = servers["guarded"].port
    # A Content-Length of 1 GB and no body at all: the answer comes without waiting for it.
    answer = raw(port, http_head(port, "Content-Length: 1000000000\r\n"))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"body_too_large" in answer
    # A chunked body has no length: it is counted as it arrives.
    chunk = b"x" * 100_000
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(4)) + b"0\r\n\r\n"
    answer = raw(port, http_head(port, "Transfer-Encoding: chunked\r\n") + body)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    status, _, body = request(servers["guarded"].url + "/health")
    assert status == 200


def test_a_client_that_sends_its_whole_oversized_body_reads_the_413(servers):
    """The 413 goes out before the body is read; a client still sending it must get
    that answer, not a connection reset (closing a socket with unread data makes
    the kernel send a reset, which can destroy the answer on its way: the server
    ends its side first and drops what still arrives)."""
    port = servers["guarded"].port
    for framing in (f"Content-Length: {4 * MAX_BODY}\r\n", "Transfer-Encoding: chunked\r\n"):
        body = b"x" * (4 * MAX_BODY)
        if framing.startswith("Transfer"):
            body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        answer = raw(port, http_head(port, framing) + body)
        assert answer.startswith(b"HTTP/1.1 413"), (framing, answer[:200])
        assert b"body_too_large" in answer


def test_deep_json_is_a_400(servers):
    url = servers["guarded"].url + "/v1/completions"
    for depth in (9, 100_000):
        body = b'{"prompt": "hi", "x": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
        status, _, answer = request(url, body, AUTH)
        assert status == 400, answer
        assert answer["error"]["code"] == "json_too_deep"
    nested = dict(COMPLETION, extra=[[[[[[1]]]]]])  # depth 7: within the limit of 8
    assert request(url, nested, AUTH)[0] == 200


# -- slow and many clients ------------------------------------------------------------------


def test_half_sent_headers_and_bodies_time_out(servers):
    port = servers["guarded"].port
    # Headers that never end: 408, and the connection is closed (the header timeout).
    answer = raw(port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
    assert answer.startswith(b"HTTP/1.1 408"), answer
    # A body shorter than its Content-Length: 408 once the body timeout passes.
    answer = raw(port, http_head(port, "Content-Length: 100\r\n") + b'{"prompt": ')
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"body_timeout" in answer
    assert request(servers["guarded"].url + "/health")[0] == 200


def test_connections_beyond_the_cap_get_503(servers):
    server = servers["guarded"]
    # Five idle connections and the request's own make six, the cap: uvicorn refuses it.
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) for _ in range(5)]
    try:
        status = request(server.url + "/health")[0]
    finally:
        for s in idle:
            s.close()
    assert status == 503
    # The idle connections are gone: served again (after uvicorn notices the closes).
    deadline = time.monotonic() + WAIT
    while request(server.url + "/health")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_an_abandoned_request_frees_its_rows(servers):
    server = servers["guarded"]
    # 40 new tokens need a program no earlier test compiled here: the client is
    # gone before the first step, and the batch ends at that step.
    body = json.dumps(dict(COMPLETION, max_tokens=40)).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as s:
        s.sendall(http_head(server.port, f"Content-Length: {len(body)}\r\n") + body)
    deadline = time.monotonic() + WAIT
    while "cancelled (the client went away)" not in server.read_log():
        assert time.monotonic() < deadline, server.read_log()
        time.sleep(0.2)
    while True:
        health = request(server.url + "/health")[2]
        if health["waiting"] == 0 and health["decoding"] == 0:
            break
        assert time.monotonic() < deadline, health
        time.sleep(0.2)


# -- the request time limit --------------------------------------------------------------


def test_a_request_past_its_time_limit_ends_and_frees_its_rows(servers):
    url = servers["hurried"].url
    status, _, body = request(url + "/v1/completions", dict(COMPLETION, max_tokens=40))
    assert status == 504, body
    assert body["error"]["code"] == "request_timeout"
    status, _, text = request(url + "/v1/completions", dict(COMPLETION, max_tokens=40, stream=True))
    assert status == 200
    events = [e[len("data: ") :] for e in text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "request_timeout"
    deadline = time.monotonic() + WAIT
    while True:  # the worker lets go of them (it may be decoding them as we look)
        health = request(url + "/health")[2]
        if health["waiting"] == 0 and health["decoding"] == 0:
            break
        assert time.monotonic() < deadline, health
        time.sleep(0.2)


# -- metrics and shutdown ------------------------------------------------------------------


def test_metrics_parse_and_count_what_was_sent(servers):
    parser = pytest.importorskip("prometheus_client.parser")
    url = servers["drained"].url
    for _ in range(2):
        assert request(url + "/v1/completions", COMPLETION)[0] == 200
    assert request(url + "/v1/completions", {"prompt": 5})[0] == 400
    status, head, text = request(url + "/metrics")
    assert status == 200 and head["Content-Type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parser.text_string_to_metric_families(text)
        for s in family.samples
    }
    model = ("model_name", "tiny")
    assert samples[("keras_gpt:request_success_total", (("finished_reason", "ok"), model))] == 2
    assert samples[("keras_gpt:http_requests_total", (model, ("status", "200")))] == 2
    assert samples[("keras_gpt:http_requests_total", (model, ("status", "400")))] == 1
    assert samples[("keras_gpt:generation_tokens_total", (model,))] == 8
    assert samples[("keras_gpt:prompt_tokens_total", (model,))] == 4
    assert samples[("keras_gpt:e2e_request_latency_seconds_count", (model,))] == 2
    assert samples[("keras_gpt:num_requests_waiting", (model,))] == 0


def start_streams(server: ServeProcess, count: int) -> tuple[list, list]:
    """`count` streamed requests of 40 tokens, each answered with at least its headers."""
    body = json.dumps(dict(COMPLETION, max_tokens=40, stream=True)).encode()
    streams = [
        socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) for _ in range(count)
    ]
    for s in streams:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
    answers = [s.recv(65536) for s in streams]  # every stream has started
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers)
    return streams, answers


def read_to_the_end(streams: list, answers: list) -> None:
    def read_rest(i):
        while chunk := streams[i].recv(65536):
            answers[i] += chunk
        streams[i].close()

    readers = [threading.Thread(target=read_rest, args=(i,)) for i in range(len(streams))]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(WAIT)


def test_sigterm_lets_streams_finish_and_exits_0(servers):
    server = servers["drained"]
    streams, answers = start_streams(server, 4)
    server.process.send_signal(signal.SIGTERM)
    read_to_the_end(streams, answers)
    assert server.process.wait(WAIT) == 0, server.read_log()
    for answer in answers:
        assert b'"finish_reason":"length"' in answer.replace(b" ", b""), answer[-300:]
        assert answer.rstrip(b"\r\n0").endswith(b"data: [DONE]"), answer[-100:]
    log = server.read_log()
    assert "shutting down" in log and "stopped" in log
    assert "Traceback" not in log


def test_sigterm_ends_what_the_grace_period_cannot_finish_and_exits_0(servers):
    server = servers["impatient"]
    # One row a batch and a 0.2 s grace period: some of the 12 streams may finish,
    # the rest must end with a shutting_down error event; none is cut off.
    streams, answers = start_streams(server, 12)
    server.process.send_signal(signal.SIGTERM)
    read_to_the_end(streams, answers)
    assert server.process.wait(WAIT) == 0, server.read_log()
    for answer in answers:
        text = answer.replace(b" ", b"")
        assert b'"finish_reason":"length"' in text or b'"code":"shutting_down"' in text, text
        assert answer.rstrip(b"\r\n0").endswith(b"data: [DONE]"), answer[-100:]
    assert "Traceback" not in server.read_log()
