"""Serving throughput and latency: `keras-gpt serve` at concurrency 1, 8 and 32.

Starts `keras-gpt serve` on 127.0.0.1 (a subprocess, one backend) with a
randomly initialised bench-small model, then sends the same requests at each
concurrency: `--requests` greedy, non-streamed completions of a
`--prompt-tokens` prompt and exactly `--max-tokens` new tokens (the tokenizer
has no end-of-text token, so every row decodes all of them). Concurrency 1 is
the requests served one at a time; at 8 and 32 the server batches the
requests in flight. Prints one JSON object.

    python benchmarks/serve.py                          # JAX, 48 requests a level
    python benchmarks/serve.py --backend torch --requests 32 --max-tokens 32
    python benchmarks/serve.py --sampled --server-args="--request-timeout 0"

`--sampled` also runs every level twice more, sampled, each request with its
own seed: every request at temperature 0.8 (`sampled: "one"`), then each at a
temperature no earlier request had (`sampled: "each"`). It reports the
programs the server's generation engine had compiled before and after each
timed run (`programs_before` / `programs_after`: equal when no value compiled
anything) and the p50 of "each" over that of "one" (`p50_vs_one_temperature`).
`--server-args` passes flags to
`keras-gpt serve` (e.g. `--request-timeout 0`, which lets batches without
streaming run the whole decoding loop as one program on JAX and TensorFlow).

bench-small: vocabulary 8192, 4 layers, 4 heads, hidden 256, context 256,
float32. A `CharTokenizer` of 8192 characters (CJK ideographs) makes every
id a character, so prompts are exactly `--prompt-tokens` tokens.
`tokens_per_s` is generated tokens / wall time of a level;
`p50_s`/`p99_s` are request latencies (send to last byte); `speedup` is
`tokens_per_s` over concurrency 1's, `p50_vs_lone` is `p50_s` over
concurrency 1's. Before any level is timed, every power-of-two batch size up to
the largest concurrency is formed once (that many requests sent together), so
no timed request waits for `generate` to compile (it compiles one program a
power-of-two batch size and cache bucket; a single compile of a few seconds
inside a timed level once made its p99 ten times its p50). Each level then
runs twice and the second run is timed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
from machine import cpu_name

SHAPE = dict(
    vocabulary_size=8192, num_layers=4, num_heads=4, hidden_dim=256, max_sequence_length=256
)
FIRST_CHARACTER = 0x4E00  # CJK ideographs: 8192 printable one-character tokens


_TEMPERATURES = itertools.count()


def make_preset(directory: str, backend: str) -> None:
    """A random bench-small preset with a CharTokenizer (in a subprocess on `backend`)."""
    code = (
        "import sys; from keras_gpt.model import GPT; from keras_gpt.tokenizers import "
        "CharTokenizer\n"
        f"first, size = {FIRST_CHARACTER}, {SHAPE['vocabulary_size']}\n"
        "t = CharTokenizer([chr(first + i) for i in range(size)])\n"
        f"GPT(**{SHAPE!r}, seed=0).save_to_preset(sys.argv[1], tokenizer=t)\n"
    )
    env = dict(os.environ, KERAS_BACKEND=backend)
    subprocess.run([sys.executable, "-c", code, directory], check=True, env=env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict, timeout: float) -> tuple[float, dict]:
    """(latency in s, JSON answer)."""
    start = time.perf_counter()
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.loads(response.read())
    return time.perf_counter() - start, answer


def run_level(
    url: str,
    prompts: list[str],
    max_tokens: int,
    concurrency: int,
    timeout: float,
    sampled: str | None = None,
):
    """Sends every prompt, `concurrency` at a time; (wall s, latencies, completion tokens).
    Greedy; or request i with seed i at temperature 0.8 (`sampled="one"`) or
    at a temperature no earlier request had (`"each"`)."""

    def one(i):
        body = {"prompt": prompts[i], "max_tokens": max_tokens, "temperature": 0}
        if sampled:
            fresh = 0.5 + next(_TEMPERATURES) / 1000  # never sent before
            body.update(temperature=0.8 if sampled == "one" else fresh, seed=i)
        return post(url + "/v1/completions", body, timeout)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(one, range(len(prompts))))
    wall = time.perf_counter() - start
    latencies = [latency for latency, _ in answers]
    tokens = sum(answer["usage"]["completion_tokens"] for _, answer in answers)
    return wall, latencies, tokens


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "/health", timeout=30) as response:
        return json.loads(response.read())


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "jax"))
    parser.add_argument("--requests", type=int, default=48, help="requests a level")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=600, help="seconds a request may take")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument(
        "--sampled", action="store_true", help="also time each level at a temperature a request"
    )
    parser.add_argument("--server-args", default="", help="more flags for keras-gpt serve")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    prompts = [
        "".join(
            chr(FIRST_CHARACTER + int(i))
            for i in rng.integers(0, SHAPE["vocabulary_size"], args.prompt_tokens)
        )
        for _ in range(args.requests)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        preset = os.path.join(tmp, "bench_small")
        make_preset(preset, args.backend)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(os.path.join(tmp, "server.log"), "w+")
        server = subprocess.Popen(
            [sys.executable, "-m", "keras_gpt.cli", "serve", preset, "--port", str(port)]
            + ["--max-batch", str(args.max_batch), "--max-queue", str(4 * args.requests)]
            + ["--log-level", "warning"]
            + args.server_args.split(),
            env=dict(os.environ, KERAS_BACKEND=args.backend),
            stdout=log,
            stderr=log,
        )
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    urllib.request.urlopen(url + "/health", timeout=5).read()
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise SystemExit("the server did not start:\n" + log.read()[-3000:])
                    time.sleep(0.5)
            modes = [None, "one", "each"] if args.sampled else [None]
            size = 1
            while size <= min(max(args.concurrency), args.max_batch):
                for sampled in modes:
                    run_level(url, prompts[:size], args.max_tokens, size, args.timeout, sampled)
                size *= 2
            levels = []
            for concurrency in args.concurrency:
                for sampled in modes:
                    run = (url, prompts, args.max_tokens, concurrency, args.timeout, sampled)
                    run_level(*run)
                    before = health(url).get("programs")
                    wall, latencies, tokens = run_level(*run)
                    level = {
                        "concurrency": concurrency,
                        "sampled": sampled,
                        "wall_s": round(wall, 3),
                        "tokens_per_s": round(tokens / wall, 1),
                        "p50_s": round(statistics.median(latencies), 4),
                        "p99_s": round(percentile(latencies, 99), 4),
                    }
                    if sampled:
                        level.update(
                            programs_before=before, programs_after=health(url).get("programs")
                        )
                    if sampled == "each":
                        ratio = level["p50_s"] / levels[-1]["p50_s"]
                        level["p50_vs_one_temperature"] = round(ratio, 2)
                    levels.append(level)
            final = health(url)
        finally:
            server.terminate()
            server.wait(60)
    alone = levels[0]
    for level in levels:
        if not level["sampled"]:
            level["speedup"] = round(level["tokens_per_s"] / alone["tokens_per_s"], 2)
            level["p50_vs_lone"] = round(level["p50_s"] / alone["p50_s"], 2)
    results = {
        "benchmark": "serve bench-small",
        "backend": args.backend,
        "cpu": cpu_name(),
        "shape": SHAPE,
        "requests_per_level": args.requests,
        "prompt_tokens": args.prompt_tokens,
        "max_tokens": args.max_tokens,
        "max_batch": args.max_batch,
        "server_args": args.server_args,
        "peak_batch": final["peak_batch"],
        "levels": levels,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    text = json.dumps(results, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
