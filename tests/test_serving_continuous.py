"""Continuous batching in `keras-gpt serve`: a real server on 127.0.0.1, a tiny model.

Order, not time: the tests look at which event came first, never at durations.
Marked `backend_independent` (run once): the scheduler's order is the server's; the
engine's exactness on each backend is test_slots.py's, run in every pass.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.request

import pytest

from tests.helpers import ServeProcess, tiny_gpt

pytestmark = pytest.mark.backend_independent

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

#: The long request's tokens: hundreds of decoding steps, each a full step of the server.
LONG = 400
TIMEOUT = 120


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from keras_gpt.tokenizers import ByteTokenizer

    root = tmp_path_factory.mktemp("serving_continuous")
    # A byte vocabulary without <|endoftext|> among its ids: rows end at max_tokens only.
    tiny_gpt(vocabulary_size=256, max_sequence_length=512).save_to_preset(
        str(root / "tiny"), tokenizer=ByteTokenizer()
    )
    process = ServeProcess(
        str(root / "tiny"), str(root / "server.log"), "--max-batch", "4", "--no-warmup"
    )
    try:
        process.wait()
        yield process
    finally:
        process.stop()


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "/health", timeout=TIMEOUT) as response:
        return json.loads(response.read())


def stream(port: int, body: dict):
    """(connection, response) of a streamed completion; iterate `response` for SSE lines."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    connection.request(
        "POST",
        "/v1/completions",
        json.dumps(dict(body, stream=True)),
        {"Content-Type": "application/json"},
    )
    response = connection.getresponse()
    assert response.status == 200
    return connection, response


def chunks(response):
    """The text chunks of an SSE completion stream, as they arrive."""
    for line in response:
        line = line.decode().strip()
        if line == "data: [DONE]":
            return
        if line.startswith("data: "):
            payload = json.loads(line[6:])
            assert "error" not in payload, payload
            yield payload["choices"][0]


def test_a_short_request_starts_while_a_long_one_decodes(server):
    """The short request's first token arrives before the long stream's last one."""
    order, lock = [], threading.Lock()
    started = threading.Event()

    def read_long():
        connection, response = stream(server.port, {"prompt": "a", "max_tokens": LONG})
        for choice in chunks(response):
            with lock:
                order.append("long-end" if choice["finish_reason"] else "long")
            started.set()
        connection.close()

    reader = threading.Thread(target=read_long)
    reader.start()
    assert started.wait(TIMEOUT)
    connection, response = stream(server.port, {"prompt": "b", "max_tokens": 2})
    texts = [c["text"] for c in chunks(response) if not c["finish_reason"]]
    with lock:
        order.append("short-first")
    connection.close()
    reader.join(TIMEOUT)
    assert texts and order[-1] == "long-end"
    assert order.index("short-first") < order.index("long-end")
    assert health(server.url)["scheduler"] == "continuous"


def test_an_abandoned_request_frees_its_slot(server):
    """A non-streamed request whose client disconnects mid-decode stops decoding."""
    before = health(server.url)
    body = json.dumps({"prompt": "z", "max_tokens": LONG}).encode()
    client = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    client.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    deadline = time.monotonic() + TIMEOUT
    while health(server.url)["decoding"] == 0:  # admitted and decoding
        assert time.monotonic() < deadline
    client.close()
    while (now := health(server.url))["decoding"] > 0:
        assert time.monotonic() < deadline
    assert now["decoded"] - before["decoded"] < LONG  # it stopped early
    assert now["tokens"] == before["tokens"]  # and answered nobody
