"""Sampler settings as data: `RowSampler` in `generate`, and the server that batches with it.

In this process: a `RowSampler` whose rows share settings picks what the
samplers of `get_sampler` pick, and a batch of rows with different settings
and seeds picks, row by row, what each row's own `generate` call picks. Then
a real server (127.0.0.1, a subprocess on this backend): requests with new
temperatures, top-k, top-p and seeds compile no new program (the engine's
count, read from `/health`), greedy answers equal `model.generate` alone, and
a seeded request gives the same text alone and batched with others.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from helpers import free_port

import keras_gpt
from keras_gpt.generation import compiled_programs
from keras_gpt.generation.samplers import RowSampler

PROMPTS = [[1, 2, 3], [4, 5], [6], [7, 8, 9, 10]]
NEW = 8


@pytest.fixture(scope="module")
def model():
    return keras_gpt.GPT(
        vocabulary_size=61, num_layers=1, num_heads=2, hidden_dim=16, max_sequence_length=32, seed=0
    )


@pytest.mark.parametrize(
    "kwargs,row",
    [
        (dict(), dict(temperature=[0.0] * 4)),
        (dict(sampler="temperature", temperature=0.7), dict(temperature=[0.7] * 4)),
        (
            dict(sampler="top_k", temperature=0.9, top_k=5),
            dict(temperature=[0.9] * 4, top_k=[5] * 4),
        ),
        (
            dict(sampler="top_p", temperature=1.1, top_p=0.8),
            dict(temperature=[1.1] * 4, top_p=[0.8] * 4),
        ),
        (
            dict(sampler="top_p", temperature=1.1, top_p=0.8, top_k=7),
            dict(temperature=[1.1] * 4, top_k=[7] * 4, top_p=[0.8] * 4),
        ),
    ],
    ids=["greedy", "temperature", "top_k", "top_p", "top_k_top_p"],
)
def test_row_sampler_with_shared_settings_equals_the_samplers(model, kwargs, row):
    expected = model.generate(PROMPTS, NEW, seed=5, **kwargs)
    np.testing.assert_array_equal(
        model.generate(PROMPTS, NEW, seed=5, sampler=RowSampler(**row)), expected
    )


def generate_alone(model, prompt, temperature, top_k, top_p, seed):
    if temperature == 0:
        kwargs = {}
    elif top_p is not None:
        kwargs = dict(sampler="top_p", temperature=temperature, top_p=top_p, top_k=top_k)
    elif top_k is not None:
        kwargs = dict(sampler="top_k", temperature=temperature, top_k=top_k)
    else:
        kwargs = dict(sampler="temperature", temperature=temperature)
    return model.generate([prompt], NEW, seed=seed, **kwargs)[0]


def test_each_row_picks_what_its_own_call_picks_and_values_compile_nothing(model):
    rows = [(0.0, None, None, 0), (0.8, None, None, 11), (0.9, 4, None, 12), (1.0, None, 0.7, 13)]

    def batch(rows, **kwargs):
        temperature, top_k, top_p, seeds = zip(*rows)
        sampler = RowSampler(temperature, top_k, top_p, seeds, sample_index=[0] * len(rows))
        return model.generate(PROMPTS, NEW, sampler=sampler, **kwargs)

    out = batch(rows)
    for prompt, setting, got in zip(PROMPTS, rows, out):
        alone = generate_alone(model, prompt, *setting)
        np.testing.assert_array_equal(got[: len(alone)], alone)
    # New values of every setting: the same programs (stepwise, as the server decodes).
    batch(rows, callback=lambda *_: None)
    before = len(compiled_programs(model))
    for k in range(3):
        new = [(0.0, None, None, 0)] + [(0.3 + k, 2 + k, 0.5 + k / 10, 100 + k)] * 3
        batch(new, callback=lambda *_: None)
    assert len(compiled_programs(model)) == before


# -- the server ------------------------------------------------------------------------------


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "/health", timeout=120) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    from keras_gpt.tokenizers import ByteTokenizer

    root = tmp_path_factory.mktemp("serving_sampling")
    tokenizer = ByteTokenizer()
    served = keras_gpt.GPT(
        vocabulary_size=tokenizer.vocabulary_size,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        max_sequence_length=64,
        seed=0,
    )
    served.save_to_preset(str(root / "tiny"), tokenizer=tokenizer)
    port = free_port()
    log = open(root / "server.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "keras_gpt.cli", "serve", str(root / "tiny"), "--port", str(port)]
        # The first requests compile what they use (see the test); 4 slots keep the lanes
        # (1 and 4 rows) and the decode step small.
        + ["--no-warmup", "--max-batch", "4"],
        stdout=log,
        stderr=log,
        env=dict(os.environ),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                health(url)
                break
            except OSError:
                log.seek(0)
                assert process.poll() is None and time.monotonic() < deadline, log.read()[-3000:]
                time.sleep(0.5)
        yield url, served, tokenizer
    finally:
        process.kill()
        process.wait()
        log.close()


def test_new_temperatures_compile_nothing_and_greedy_is_unchanged(server):
    url, served, tokenizer = server
    prompt = "hello"
    body = {"prompt": prompt, "max_tokens": NEW}
    # One request of each mode (greedy, sampled, filtered), one at a time: batch size 1.
    first = post(url + "/v1/completions", dict(body, temperature=0))
    post(url + "/v1/completions", dict(body, temperature=0.5, seed=1))
    post(url + "/v1/completions", dict(body, temperature=0.5, top_k=3, seed=1))
    programs = health(url)["programs"]
    assert programs > 0
    for k in range(6):
        post(url + "/v1/completions", dict(body, temperature=0.2 + 0.3 * k, seed=k))
        post(url + "/v1/completions", dict(body, temperature=1.5 - 0.2 * k, top_p=0.5 + k / 20))
        post(url + "/v1/completions", dict(body, temperature=0.7 + k / 7, top_k=k + 1))
    assert health(url)["programs"] == programs
    ids = tokenizer.encode(prompt)
    expected = tokenizer.decode(served.generate([ids], NEW)[0, len(ids) :].tolist())
    assert first["choices"][0]["text"] == expected
    assert (
        post(url + "/v1/completions", dict(body, temperature=0))["choices"][0]["text"] == expected
    )


def test_a_seeded_request_gives_the_same_text_alone_and_batched(server):
    url, _, _ = server
    seeded = {"prompt": "abc", "max_tokens": NEW, "temperature": 0.9, "seed": 42, "n": 2}
    alone = [c["text"] for c in post(url + "/v1/completions", seeded)["choices"]]
    others = [
        {"prompt": "x" * (k + 1), "max_tokens": NEW, "temperature": 0.3 * k, "top_k": k + 1}
        for k in range(5)
    ]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda b: post(url + "/v1/completions", b), [seeded] + others))
    assert [c["text"] for c in answers[0]["choices"]] == alone
    assert health(url)["peak_batch"] > 2  # it did share a batch
