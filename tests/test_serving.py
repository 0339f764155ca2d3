"""`keras-gpt serve`: the OpenAI-compatible server, run as a subprocess on this backend.

Two servers start once for the module, on 127.0.0.1 and a free port, on the
backend of this pass (KERAS_BACKEND is inherited): `base` serves a tiny
preset fine-tuned here for a few steps (so its greedy continuations vary), and
`chat` serves the same weights as a fine-tuning run directory (`RUN/best`)
whose metadata names the instruction template, with a small queue. They are
driven with the official `openai` client and with raw HTTP (urllib).

Greedy answers are compared with `model.generate` on the prompt alone, in this
process, on the same backend: exactly (ids, hence text), as the ragged-batch
tests of test_generation.py compare a batch with its rows alone.

Marked `backend_independent` (run once, on PyTorch): these are the HTTP API's
semantics. What a backend decides under them is tested in every pass: the slot
engine's exactness under churn (test_slots.py) and a real server per backend that
samples without compiling and keeps greedy rows exact (test_serving_sampling.py).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import threading
import urllib.error
import urllib.request

import keras
import numpy as np
import pytest
from helpers import ServeProcess  # noqa: E402

pytestmark = pytest.mark.backend_independent

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from keras_gpt.data.instructions import (  # noqa: E402
    END_OF_TEXT,
    InstructionBatches,
    format_prompt,
)
from keras_gpt.model import GPT  # noqa: E402
from keras_gpt.presets import load_tokenizer  # noqa: E402
from keras_gpt.serving import TextStream, chat_template_of, preset_path  # noqa: E402
from keras_gpt.serving.batcher import Batcher, Choice, QueueFull, Request  # noqa: E402
from keras_gpt.serving.params import Sampling  # noqa: E402
from keras_gpt.tokenizers import ByteTokenizer  # noqa: E402

CONTEXT = 64
#: New tokens of the instruction-prompt tests: each prompt (38-40 bytes) + NEW
#: falls in generate's largest cache bucket (64), so they share compiled programs.
NEW = 24
MAX_N = 4
#: Hard limits: a server that does not answer fails the test instead of hanging it.
REQUEST_TIMEOUT = 120
RECORDS = [
    {"prompt": "say hi", "response": "hi there"},
    {"prompt": "say bye", "response": "bye now"},
    {"prompt": "count", "response": "one two three"},
    {"prompt": "colour?", "response": "blue"},
] * 2


def get(url: str):
    with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT) as response:
        return response.status, json.loads(response.read())


def post(url: str, body, raw: bool = False):
    """(status, headers, parsed JSON or raw text); errors are returned, not raised."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            status, headers, text = response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        status, headers, text = error.code, error.headers, error.read().decode()
    return status, headers, text if raw else json.loads(text)


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """A tiny model fine-tuned a few steps on instruction records: `base` preset and `run/`."""
    root = tmp_path_factory.mktemp("serving")
    tokenizer = ByteTokenizer()
    model = GPT(
        vocabulary_size=tokenizer.vocabulary_size,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        max_sequence_length=CONTEXT,
        seed=0,
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(InstructionBatches(RECORDS, tokenizer, 32, 4, seed=0), epochs=10, verbose=0)
    model.save_to_preset(str(root / "base"), tokenizer=tokenizer)
    best = root / "run" / "best"
    model.save_to_preset(str(best), tokenizer=tokenizer)
    # What a fine-tuning recipe records (see keras_gpt.serving.chat): the template.
    metadata = json.loads((best / "metadata.json").read_text())
    (best / "metadata.json").write_text(json.dumps(dict(metadata, chat_template="instruction")))
    return root


@pytest.fixture(scope="module")
def servers(presets, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    # No warm-up: these tests compile only the few programs they use.
    base = ServeProcess(
        str(presets / "base"), str(logs / "base.log"), "--max-n", str(MAX_N), "--no-warmup"
    )
    chat = ServeProcess(
        str(presets / "run"),
        str(logs / "chat.log"),
        *("--max-batch", "4", "--max-queue", "2", "--no-warmup"),
    )
    try:
        base.wait()
        chat.wait()
        yield {"base": base, "chat": chat}
    finally:
        base.stop()
        chat.stop()


@pytest.fixture(scope="module")
def reference(presets):
    """The served model and tokenizer, loaded here, and its greedy continuation as text."""
    path = str(presets / "base")
    model, tokenizer = GPT.from_preset(path), load_tokenizer(path)
    eot = tokenizer.token_to_id(END_OF_TEXT)

    def greedy(text: str, max_tokens: int, stop=()) -> tuple[str, str, int]:
        ids = tokenizer.encode(text)
        out, lengths = model.generate([ids], max_tokens, stop_token_ids=[eot], return_lengths=True)
        new = out[0, len(ids) : lengths[0]].tolist()
        reason = "stop" if new and new[-1] == eot else "length"
        text = tokenizer.decode([i for i in new if i != eot])
        for s in stop:
            if s in text:
                text, reason = text[: text.index(s)], "stop"
        return text, reason, len(new)

    return model, tokenizer, greedy


def client(server: ServeProcess):
    return openai.OpenAI(
        base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT
    )


# -- the endpoints -------------------------------------------------------------------


def test_health_and_models(servers):
    status, health = get(servers["base"].url + "/health")
    assert status == 200 and health["status"] == "ok"
    assert health["backend"] == keras.backend.backend()
    assert health["chat_template"] is None
    assert get(servers["chat"].url + "/health")[1]["chat_template"] == "instruction"
    models = client(servers["base"]).models.list()
    assert [m.id for m in models.data] == ["tiny"]


def test_completion_equals_generate_alone(servers, reference):
    _, tokenizer, greedy = reference
    prompt = format_prompt("say hi")
    response = client(servers["base"]).completions.create(
        model="tiny", prompt=prompt, max_tokens=NEW, temperature=0
    )
    expected, reason, tokens = greedy(prompt, NEW)
    assert response.choices[0].text == expected
    assert response.choices[0].finish_reason == reason
    usage = response.usage
    assert usage.prompt_tokens == len(tokenizer.encode(prompt))
    assert usage.completion_tokens == tokens  # the end-of-text token counts, as generated
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streamed_completion_reassembles_the_same_text(servers, reference):
    _, _, greedy = reference
    prompt = format_prompt("say bye")
    stream = client(servers["base"]).completions.create(
        model="tiny", prompt=prompt, max_tokens=NEW, temperature=0, stream=True
    )
    pieces, reasons = [], []
    for chunk in stream:
        pieces.append(chunk.choices[0].text)
        reasons.append(chunk.choices[0].finish_reason)
    expected, reason, _ = greedy(prompt, NEW)
    assert "".join(pieces) == expected
    assert reasons[-1] == reason and set(reasons[:-1]) == {None}
    # Raw SSE: `data:` lines of JSON chunks, ending with [DONE].
    status, headers, text = post(
        servers["base"].url + "/v1/completions",
        {"prompt": prompt, "max_tokens": NEW, "temperature": 0, "stream": True},
        raw=True,
    )
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = [line[len("data: ") :] for line in text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == expected


def test_n_choices_with_a_seed_repeat_and_equal_generate(servers, reference):
    model, tokenizer, _ = reference
    prompt = "say "
    base = client(servers["base"])

    def texts():
        response = base.completions.create(
            model="tiny",
            prompt=prompt,
            max_tokens=12,
            temperature=0.9,
            n=3,
            seed=7,
            extra_body={"top_k": 20},  # an extension: not in the client's signature
        )
        assert [c.index for c in response.choices] == [0, 1, 2]
        return [c.text for c in response.choices]

    first = texts()
    assert texts() == first
    # A seeded request is its own batch: rows 0..n-1 of generate with that seed.
    ids = tokenizer.encode(prompt)
    eot = tokenizer.token_to_id(END_OF_TEXT)
    out, lengths = model.generate(
        [ids] * 3,
        12,
        sampler="top_k",
        temperature=0.9,
        top_k=20,
        seed=7,
        stop_token_ids=[eot],
        return_lengths=True,
    )
    expected = [
        tokenizer.decode([i for i in row[len(ids) : n].tolist() if i != eot])
        for row, n in zip(out, lengths)
    ]
    assert first == expected


def test_stop_strings_end_the_text(servers, reference):
    _, _, greedy = reference
    prompt = format_prompt("count")
    full = greedy(prompt, NEW)[0]
    stop = full[3:5]  # a piece of what the model writes: the text must end before it
    expected, reason, _ = greedy(prompt, NEW, stop=[stop])
    assert reason == "stop"
    base = client(servers["base"])
    response = base.completions.create(
        model="tiny", prompt=prompt, max_tokens=NEW, temperature=0, stop=[stop, "zzz"]
    )
    assert (response.choices[0].text, response.choices[0].finish_reason) == (expected, "stop")
    stream = base.completions.create(
        model="tiny", prompt=prompt, max_tokens=NEW, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in stream) == expected


def test_a_list_of_prompts(servers, reference):
    _, _, greedy = reference
    prompts = ["say hi", "bye"]
    status, _, body = post(
        servers["base"].url + "/v1/completions",
        {"model": "tiny", "prompt": prompts, "max_tokens": 8, "temperature": 0, "n": 2},
    )
    assert status == 200
    texts = [c["text"] for c in sorted(body["choices"], key=lambda c: c["index"])]
    assert texts == [greedy(p, 8)[0] for p in prompts for _ in range(2)]


# -- bad input -------------------------------------------------------------------------

LONG = "x" * (CONTEXT + 1)
BAD_REQUESTS = [
    (b"{not json", None),
    (b"[1, 2]", None),
    ({"max_tokens": 4}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": "hi", "max_tokens": "8"}, "max_tokens"),
    ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "hi", "max_tokens": CONTEXT}, "max_tokens"),
    ({"prompt": LONG}, "prompt"),
    ({"prompt": "hi", "temperature": -0.5}, "temperature"),
    ({"prompt": "hi", "temperature": "hot"}, "temperature"),
    ({"prompt": "hi", "top_p": 0}, "top_p"),
    ({"prompt": "hi", "top_p": 1.5}, "top_p"),
    ({"prompt": "hi", "top_k": 0}, "top_k"),
    ({"prompt": "hi", "n": MAX_N + 1}, "n"),
    ({"prompt": "hi", "n": True}, "n"),
    ({"prompt": "hi", "stop": 3}, "stop"),
    ({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "hi", "seed": 1.5}, "seed"),
    ({"prompt": "hi", "stream": "yes"}, "stream"),
    ({"prompt": "hi", "echo": True}, "echo"),
]


@pytest.mark.parametrize("body,param", BAD_REQUESTS, ids=[str(p) for _, p in BAD_REQUESTS])
def test_bad_input_is_a_400_naming_the_field(servers, body, param):
    status, _, answer = post(servers["base"].url + "/v1/completions", body)
    assert status == 400, answer
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["param"] == param
    assert answer["error"]["message"]


def test_other_refusals(servers):
    url = servers["base"].url
    status, _, answer = post(url + "/v1/completions", {"model": "gpt-4", "prompt": "hi"})
    assert (status, answer["error"]["param"]) == (404, "model")
    # No chat template: chat completions are refused, naming the model.
    status, _, answer = post(
        url + "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}
    )
    assert (status, answer["error"]["code"]) == (400, "model_not_chat")
    status, _, answer = post(servers["chat"].url + "/v1/chat/completions", {"messages": "hi"})
    assert (status, answer["error"]["param"]) == (400, "messages")
    assert get(url + "/health")[0] == 200  # still serving


# -- batching under load -----------------------------------------------------------------


def test_load_32_clients_are_batched_and_equal_generate(servers, reference):
    _, _, greedy = reference
    url = servers["base"].url
    rng = np.random.default_rng(0)
    words = ["say", "hi", "bye", "count", "blue", "one", "two"]
    # 32 clients x 4 requests, prompts of 2-8 bytes and 2, 5 or 8 new tokens:
    # all in generate's smallest cache bucket (16), so the server compiles one
    # program a batch size, and this process one.
    jobs = [
        (" ".join(rng.choice(words, rng.integers(1, 3)))[:8], int(rng.choice([2, 5, 8])))
        for _ in range(32 * 4)
    ]
    barrier = threading.Barrier(32, timeout=REQUEST_TIMEOUT)

    def run_client(k: int):
        barrier.wait()  # all clients start together
        answers = []
        for prompt, max_tokens in jobs[4 * k : 4 * k + 4]:
            status, _, body = post(
                url + "/v1/completions",
                {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
            )
            assert status == 200, body
            answers.append(body["choices"][0]["text"])
        return answers

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(run_client, range(32), timeout=4 * REQUEST_TIMEOUT))
    answers = [a for client_answers in results for a in client_answers]
    expected = {job: greedy(*job)[0] for job in set(jobs)}
    assert answers == [expected[job] for job in jobs]
    health = get(url + "/health")[1]
    assert 1 < health["peak_batch"] <= 16  # requests were decoded together
    assert health["batches"] < health["requests"]


def test_full_queue_is_a_429_with_retry_after(servers):
    # The chat server queues at most 2 rows and decodes 4: 24 simultaneous
    # requests of 24 streamed tokens cannot all be admitted. Every answer is
    # a success or a 429; none is lost or malformed.
    url = servers["chat"].url
    barrier = threading.Barrier(24, timeout=REQUEST_TIMEOUT)

    def one(_):
        barrier.wait()
        body = {"prompt": format_prompt("hi"), "max_tokens": NEW, "temperature": 0, "stream": True}
        return post(url + "/v1/completions", body, raw=True)

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(one, range(24), timeout=4 * REQUEST_TIMEOUT))
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {200, 429} and 200 in statuses and 429 in statuses
    for status, headers, text in answers:
        if status == 429:
            assert int(headers["Retry-After"]) >= 1
            assert json.loads(text)["error"]["code"] == "queue_full"
        else:
            assert text.endswith("data: [DONE]\n\n")
    assert get(url + "/health")[0] == 200


# -- chat ------------------------------------------------------------------------------


def test_chat_completion_uses_the_instruction_template(servers, reference):
    _, _, greedy = reference
    question = "colour?"
    chat = client(servers["chat"]).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": question}],
        max_tokens=NEW,
        temperature=0,
    )
    expected, reason, _ = greedy(format_prompt(question), NEW, stop=["### Instruction:"])
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == expected
    assert chat.choices[0].finish_reason == reason
    stream = client(servers["chat"]).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": question}],
        max_tokens=NEW,
        temperature=0,
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == expected


# -- the parts, in this process ----------------------------------------------------------


def test_text_is_released_at_whole_utf8_characters_and_stop_prefixes_are_held():
    tokenizer = ByteTokenizer()
    stream = TextStream(tokenizer, max_tokens=100, stop=["\u20acX"])
    released = [stream.feed(b) for b in "a\u00e9\u20ac".encode()]
    # 'a', then é (2 bytes) only once whole; € (3 bytes) is also a stop string's start.
    assert released == ["a", "", "\u00e9", "", "", ""]
    assert stream.feed(ord("Y")) == "\u20acY"
    assert stream.feed("\u20ac".encode()[0]) == ""
    assert stream.close() == "\ufffd" and stream.finish_reason == "length"
    assert stream.text == "a\u00e9\u20acY\ufffd"


def test_chat_template_and_run_directory_resolution(presets):
    run = str(presets / "run")
    assert preset_path(run) == os.path.join(run, "best")
    assert preset_path(str(presets / "base")) == str(presets / "base")
    assert chat_template_of(preset_path(run)) == "instruction"
    assert chat_template_of(str(presets / "base")) is None
    assert chat_template_of(str(presets / "base"), override="messages") == "messages"
    with pytest.raises(ValueError, match="chat template"):
        chat_template_of(None, override="alpaca")


def test_queue_limit_counts_waiting_rows(presets):
    import asyncio

    model = GPT.from_preset(str(presets / "base"))
    batcher = Batcher(model, max_batch=4, max_queue=3)  # not started: nothing is taken
    loop = asyncio.new_event_loop()
    try:

        def request(rows: int) -> Request:
            choices = [Choice(i, [1, 2], TextStream(ByteTokenizer(), 4)) for i in range(rows)]
            return Request("r", choices, Sampling(temperature=0), loop)

        first = request(2)
        batcher.submit(first)
        with pytest.raises(QueueFull):
            batcher.submit(request(2))
        batcher.cancel(first)  # a client that goes away frees its rows at once
        batcher.submit(request(3))
        assert batcher.stats["waiting"] == 3
    finally:
        loop.close()


def test_chat_messages_are_written_in_the_fine_tuning_templates():
    from keras_gpt.data.instructions import segments
    from keras_gpt.serving import ApiError
    from keras_gpt.serving.chat import render

    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    # "messages": the text the fine-tuning data renders for these turns, then the reply's tag.
    trained = "".join(text for text, _ in segments({"messages": turns}))
    assert render(turns, "messages") == trained + "<|assistant|>\n"
    # "instruction": the prompt of a {"prompt", "response"} record.
    assert render(turns[1:2], "instruction") == format_prompt("Hi")
    assert render(turns[:2], "instruction") == format_prompt("Be brief.\n\nHi")
    with pytest.raises(ApiError) as refused:
        render(turns, "instruction")  # one user turn only: what the template was trained on
    assert refused.value.param == "messages"
