"""`keras-gpt serve`'s API surface, through one real server: `--chat` on a preset whose
metadata names no template, `stream_options.include_usage`, requests of more rows
(prompts × n) than the server decodes, and unknown paths and methods.

One server, started once for the module with `--chat messages --max-batch 2`, serves
a tiny untrained model whose tokenizer has one token per character (so any output is
text, and every template character is in the vocabulary). Greedy answers are
compared with `model.generate` on the prompt text written out here, by hand.

What is checked is the HTTP contract, not decoding (tests/test_serving.py checks
that on every backend), so the module runs once (`backend_independent`).
"""

from __future__ import annotations

import json
import string
import urllib.error
import urllib.request

import pytest
from helpers import ServeProcess, tiny_gpt

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from keras_gpt.presets import load_tokenizer  # noqa: E402
from keras_gpt.tokenizers import CharTokenizer  # noqa: E402

pytestmark = pytest.mark.backend_independent

END_OF_TEXT = "<|endoftext|>"
MAX_TOKENS = 6
TIMEOUT = 120
MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hi"},
]
#: The `messages` template, written out: every turn as <|role|>\ncontent\n, then the reply's.
RENDERED = "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n"


def request(url: str, body: dict | None = None, method: str | None = None):
    """(status, headers, body text); HTTP errors are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    http = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(http, timeout=TIMEOUT) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode()


def events(text: str) -> list:
    """The payloads of a server-sent event stream, `[DONE]` as the string."""
    lines = [line[len("data: ") :] for line in text.split("\n\n") if line.startswith("data: ")]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving_api")
    characters = string.ascii_letters + string.digits + " \n<|>#:.,?!'"
    tokenizer = CharTokenizer(characters, special_tokens=[END_OF_TEXT])
    model = tiny_gpt(vocabulary_size=tokenizer.vocabulary_size, max_sequence_length=64)
    model.save_to_preset(str(root / "preset"), tokenizer=tokenizer)
    return root / "preset"


@pytest.fixture(scope="module")
def server(preset, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "server.log"
    process = ServeProcess(
        str(preset), str(log), "--chat", "messages", "--max-batch", "2", "--max-n", "2"
    )
    try:
        process.wait()
        yield process
    finally:
        process.stop()


def greedy(preset, text: str) -> tuple[str, str, int]:
    """The greedy answer to `text` (as the messages template ends it), its finish reason
    and the number of new tokens, from the model loaded in this process."""
    from keras_gpt.model import GPT

    model, tokenizer = GPT.from_preset(str(preset)), load_tokenizer(str(preset))
    eot = tokenizer.token_to_id(END_OF_TEXT)
    ids = tokenizer.encode(text)
    out, lengths = model.generate([ids], MAX_TOKENS, stop_token_ids=[eot], return_lengths=True)
    new = out[0, len(ids) : lengths[0]].tolist()
    answer = tokenizer.decode([i for i in new if i != eot])
    if "\n<|" in answer:  # the template's next turn
        return answer[: answer.index("\n<|")], "stop", len(new)
    return answer, "stop" if new[-1] == eot else "length", len(new)


def test_chat_flag_answers_in_the_messages_template(server, preset):
    status, _, health = request(server.url + "/health")
    assert status == 200 and json.loads(health)["chat_template"] == "messages"
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0}
    status, _, text = request(server.url + "/v1/chat/completions", body)
    assert status == 200, text
    answer = json.loads(text)
    expected, reason, _ = greedy(preset, RENDERED)
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": expected}
    assert answer["choices"][0]["finish_reason"] == reason
    prompt_tokens = len(load_tokenizer(str(preset)).encode(RENDERED))
    assert answer["usage"]["prompt_tokens"] == prompt_tokens


def test_include_usage_adds_a_last_chunk_with_the_counts(server):
    body = {"model": "tiny", "prompt": "hello", "max_tokens": MAX_TOKENS, "temperature": 0}
    status, _, text = request(server.url + "/v1/completions", body)
    assert status == 200, text
    usage = json.loads(text)["usage"]
    assert usage["prompt_tokens"] == 5  # one token a character
    assert usage["total_tokens"] == 5 + usage["completion_tokens"]

    status, _, text = request(server.url + "/v1/completions", dict(body, stream=True))
    assert status == 200 and events(text)[-1] == "[DONE]"
    assert not any("usage" in e and e["usage"] for e in events(text)[:-1])
    options = {"stream_options": {"include_usage": True}}
    status, _, text = request(server.url + "/v1/completions", dict(body, stream=True, **options))
    *chunks, usage_chunk, done = events(text)
    assert status == 200 and done == "[DONE]"
    # The last chunk before [DONE] carries the usage and no choices, as OpenAI sends it.
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == usage
    assert all(chunk["choices"] for chunk in chunks)


def test_more_rows_than_the_server_decodes_are_a_400(server):
    url = server.url + "/v1/completions"
    base = {"model": "tiny", "max_tokens": 2, "temperature": 0}
    status, _, text = request(url, dict(base, prompt=["a", "b"], n=2))  # 4 rows > 2
    error = json.loads(text)["error"]
    assert (status, error["param"]) == (400, "n") and "4 sequences" in error["message"]
    status, _, text = request(url, dict(base, prompt=["a", "b", "c"]))  # 3 rows > 2
    assert (status, json.loads(text)["error"]["param"]) == (400, "prompt")
    status, _, text = request(url, dict(base, prompt=["a", "b"]))  # 2 rows: served
    assert status == 200 and len(json.loads(text)["choices"]) == 2


def test_unknown_paths_and_methods_are_json_errors(server):
    status, headers, text = request(server.url + "/v1/nothing")
    error = json.loads(text)["error"]
    assert status == 404 and error["message"].startswith("GET /v1/nothing")
    assert "Allow" not in headers
    status, headers, text = request(server.url + "/v1/completions")  # GET, not POST
    error = json.loads(text)["error"]
    assert status == 405 and error["message"].startswith("GET /v1/completions")
    # RFC 9110: a 405 must list the methods the resource supports.
    assert headers["Allow"] == "POST"
    status, headers, text = request(server.url + "/health", {"x": 1}, method="POST")
    assert status == 405 and "error" in json.loads(text)
    assert sorted(m.strip() for m in headers["Allow"].split(",")) == ["GET", "HEAD"]
