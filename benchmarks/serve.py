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

`--trace` runs the comparison of issue 29 instead, on a bench-small model
with a 512-token context: a trace of `--requests` (use 64) Poisson arrivals,
half asking 8 tokens and half 256 (16-token prompts, streamed, greedy),
sent to `keras-gpt serve --scheduler static` and then `--scheduler
continuous` (each warmed up, `--max-batch` slots). The arrival rate is
`--load` (0.8) times the static server's capacity, measured first as full
batches of the same mix sent at once (requests/s). Reported per run: time to
first token (p50, p99), short requests' p50 latency, p50/p99 latency,
throughput (completion tokens / span of the trace), and the compiled
programs before and after; then the same trace on the continuous server with
every request at temperature 0.8, and with every request at its own
temperature (each seeded), to show that new values compile nothing.

    python benchmarks/serve.py --trace --requests 64 --max-batch 16

`--neighbours` measures what noisy clients cost a well-behaved one (issue
29's goal: each ratio <= 1.5). A greedy client sends `--requests`
non-streamed completions one after another (`--prompt-tokens` prompt,
`--max-tokens` new tokens) to a warmed-up `keras-gpt serve` (bench-small,
`--max-batch` slots); its p50 latency is measured alone, then beside each
neighbour in turn, then alone again (`unloaded_again`, to see the machine
drift). The neighbours, each stopped when the greedy client finishes and
bounded in requests and time:

- `temperatures`: one client sending the same kind of request, each at the
  next of 100 temperatures (0.50, 0.51, ... 1.49, seeded), at most 100;
- `body_50mb`: one client sending 50 MB bodies (alternately with
  `Content-Length` and chunked), at most 20 (the server's limit is 1 MB);
- `half_sent`: 20 connections that send complete headers and the start of a
  body, then nothing;
- `abandoned`: 10 non-streamed requests for the whole context, spread over the
  greedy client's run, each closed by its client 1 s after it was sent.

Reported per neighbour: the greedy p50/p99, `p50_vs_unloaded`, what the
neighbour did (requests, statuses) and the server's counters: compiled
programs before and after, and tokens decoded beyond the greedy client's
(`other_tokens_decoded`: for `abandoned`, what the abandoned rows cost).

    python benchmarks/serve.py --neighbours --requests 30 --max-tokens 32 --max-batch 16

`--sigterm` starts `keras-gpt serve --shutdown-timeout S` (bench-small with a
512-token context, `--max-batch` slots), puts `--streams` (40) streamed
requests in flight (each for the rest of the context, so the grace period
cannot finish them all), sends SIGTERM once every stream has its first text,
and reports the exit code, the seconds from SIGTERM to exit against S + 2
(issue 29's goal: exit 0 within it), how each stream ended (finished,
an error event naming the shutdown, or cut without one), and whether the
log was flushed (its last line, "stopped", and one line for each request).

    python benchmarks/serve.py --sigterm --shutdown-timeout 20 --max-batch 16

`--sampled` also runs every level twice more, sampled, each request with its
own seed: every request at temperature 0.8 (`sampled: "one"`), then each at a
temperature no earlier request had (`sampled: "each"`). It reports the
programs the server's generation engine had compiled before and after each
timed run (`programs_before` / `programs_after`: equal when no value compiled
anything) and the p50 of "each" over that of "one" (`p50_vs_one_temperature`).
`--server-args` passes flags to
`keras-gpt serve` (e.g. `--scheduler static`).

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
import urllib.error
import urllib.request

import numpy as np
from machine import cpu_name

SHAPE = dict(
    vocabulary_size=8192, num_layers=4, num_heads=4, hidden_dim=256, max_sequence_length=256
)
FIRST_CHARACTER = 0x4E00  # CJK ideographs: 8192 printable one-character tokens


_TEMPERATURES = itertools.count()


def make_preset(directory: str, backend: str, shape: dict | None = None) -> None:
    """A random bench-small preset with a CharTokenizer (in a subprocess on `backend`)."""
    shape = shape or SHAPE
    code = (
        "import sys; from keras_gpt.model import GPT; from keras_gpt.tokenizers import "
        "CharTokenizer\n"
        f"first, size = {FIRST_CHARACTER}, {shape['vocabulary_size']}\n"
        "t = CharTokenizer([chr(first + i) for i in range(size)])\n"
        f"GPT(**{shape!r}, seed=0).save_to_preset(sys.argv[1], tokenizer=t)\n"
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
    parser.add_argument(
        "--trace",
        action="store_true",
        help="instead: continuous vs static batching on a Poisson trace (see the docstring)",
    )
    parser.add_argument(
        "--load", type=float, default=0.8, help="--trace: arrival rate / static capacity"
    )
    parser.add_argument(
        "--neighbours",
        action="store_true",
        help="instead: a greedy client's p50 beside four noisy neighbours (see the docstring)",
    )
    parser.add_argument(
        "--sigterm",
        action="store_true",
        help="instead: SIGTERM with --streams streamed requests in flight (see the docstring)",
    )
    parser.add_argument(
        "--streams", type=int, default=40, help="--sigterm: streamed requests in flight"
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=20.0,
        help="--sigterm: the server's grace period (keras-gpt serve --shutdown-timeout)",
    )
    args = parser.parse_args()
    if args.trace:
        return trace_main(args)
    if args.neighbours:
        return neighbours_main(args)
    if args.sigterm:
        return sigterm_main(args)

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


# -- --trace: continuous vs static batching on a Poisson trace ---------------------------

#: The trace's model: bench-small with room for a 16-token prompt + 256 new tokens.
TRACE_SHAPE = dict(SHAPE, max_sequence_length=512)


def stream_request(url: str, body: dict, timeout: float) -> dict:
    """Sends a streamed completion; its time to first text, latency and token count."""
    import http.client
    from urllib.parse import urlparse

    address = urlparse(url)
    start = time.perf_counter()
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=timeout)
    connection.request(
        "POST",
        "/v1/completions",
        json.dumps(dict(body, stream=True, stream_options={"include_usage": True})),
        {"Content-Type": "application/json"},
    )
    response = connection.getresponse()
    first, tokens = None, 0
    for line in response:
        line = line.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        payload = json.loads(line[6:])
        if "error" in payload:
            raise RuntimeError(payload["error"])
        if payload.get("usage"):
            tokens = payload["usage"]["completion_tokens"]
        elif first is None and payload["choices"][0]["text"]:
            first = time.perf_counter() - start
    connection.close()
    return {"ttft_s": first, "latency_s": time.perf_counter() - start, "tokens": tokens}


def run_trace(url: str, trace: list[dict], timeout: float) -> dict:
    """Sends each request of `trace` at its `at` second (threads); the summary figures."""
    results = [None] * len(trace)
    start = time.perf_counter()

    def send(i):
        delay = trace[i]["at"] - (time.perf_counter() - start)
        if delay > 0:
            time.sleep(delay)
        results[i] = stream_request(url, trace[i]["body"], timeout)
        results[i]["done_at"] = time.perf_counter() - start

    with concurrent.futures.ThreadPoolExecutor(len(trace)) as pool:
        list(pool.map(send, range(len(trace))))
    short = [r for r, t in zip(results, trace) if t["body"]["max_tokens"] <= 8]
    ttfts = [r["ttft_s"] for r in results if r["ttft_s"] is not None]
    tokens = sum(r["tokens"] for r in results)
    span = max(r["done_at"] for r in results) - trace[0]["at"]
    return {
        "p50_ttft_s": round(percentile(ttfts, 50), 4),
        "p99_ttft_s": round(percentile(ttfts, 99), 4),
        "short_p50_latency_s": round(percentile([r["latency_s"] for r in short], 50), 4),
        "p50_latency_s": round(percentile([r["latency_s"] for r in results], 50), 4),
        "p99_latency_s": round(percentile([r["latency_s"] for r in results], 99), 4),
        "tokens_per_s": round(tokens / span, 1),
        "tokens": tokens,
        "span_s": round(span, 2),
    }


def start_server(preset: str, backend: str, flags: list[str], log) -> tuple:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "keras_gpt.cli", "serve", preset, "--port", str(port)] + flags,
        env=dict(os.environ, KERAS_BACKEND=backend),
        stdout=log,
        stderr=log,
    )
    deadline = time.monotonic() + 600
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=5).read()
            return server, url
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise SystemExit("the server did not start:\n" + log.read()[-3000:])
            time.sleep(0.5)


def trace_main(args) -> None:
    """Continuous vs static batching on one Poisson trace (see `--trace`)."""
    from machine import machine_report

    rng = np.random.default_rng(0)
    vocabulary = TRACE_SHAPE["vocabulary_size"]

    def prompt():
        ids = rng.integers(0, vocabulary, args.prompt_tokens)
        return "".join(chr(FIRST_CHARACTER + int(i)) for i in ids)

    lengths = [8] * (args.requests // 2) + [256] * (args.requests - args.requests // 2)
    lengths = [int(n) for n in rng.permutation(lengths)]
    prompts = [prompt() for _ in lengths]
    gaps = rng.exponential(1.0, len(lengths))  # scaled to the arrival rate below
    report = machine_report("serve trace: continuous vs static batching")
    report.update(
        backend=args.backend,
        shape=TRACE_SHAPE,
        requests=len(lengths),
        max_tokens="half 8, half 256 (shuffled)",
        prompt_tokens=args.prompt_tokens,
        max_batch=args.max_batch,
    )

    def trace(rate: float, temperature=None) -> list[dict]:
        at = np.cumsum(gaps / rate) - gaps[0] / rate
        out = []
        for i, (t, p, n) in enumerate(zip(at, prompts, lengths)):
            body = {"prompt": p, "max_tokens": n, "temperature": 0}
            if temperature == "one":
                body.update(temperature=0.8, seed=i)
            elif temperature == "each":
                body.update(temperature=round(0.5 + i / 100, 2), seed=i)
            out.append({"at": float(t), "body": body})
        return out

    flags = ["--max-batch", str(args.max_batch), "--max-queue", "1024", "--log-level", "info"]
    flags += args.server_args.split()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        preset = os.path.join(tmp, "bench_small")
        make_preset(preset, args.backend, TRACE_SHAPE)
        for scheduler in ("static", "continuous"):
            log = open(os.path.join(tmp, f"{scheduler}.log"), "w+")
            started = time.perf_counter()
            server, url = start_server(
                preset, args.backend, flags + ["--scheduler", scheduler], log
            )
            try:
                start_s = time.perf_counter() - started
                if scheduler == "static":
                    # Capacity: full batches of the same mix sent at once, in requests/s.
                    burst = [{"at": 0.0, "body": t["body"]} for t in trace(1.0)[: args.max_batch]]
                    run_trace(url, burst, args.timeout)  # first contact
                    timed = run_trace(url, burst, args.timeout)
                    capacity = len(burst) / timed["span_s"]
                    rate = args.load * capacity
                    report.update(
                        static_capacity_requests_per_s=round(capacity, 3),
                        arrival_rate_requests_per_s=round(rate, 3),
                    )
                kinds = [None] if scheduler == "static" else [None, "one", "each"]
                for kind in kinds:
                    before = health(url)["programs"]
                    result = run_trace(url, trace(rate, kind), args.timeout)
                    result.update(programs_before=before, programs_after=health(url)["programs"])
                    name = scheduler + {None: "", "one": "_t0.8", "each": "_each_t"}[kind]
                    runs[name] = result
                log.seek(0)
                warm = [line for line in log.read().splitlines() if "warm-up" in line]
                runs[scheduler]["server_start_s"] = round(start_s, 1)
                runs[scheduler]["warmup_log"] = warm[-1].split("INFO ")[-1] if warm else None
            finally:
                server.terminate()
                server.wait(60)
    c, s = runs["continuous"], runs["static"]
    report["runs"] = runs
    report["continuous_vs_static"] = {
        "p99_ttft": round(c["p99_ttft_s"] / s["p99_ttft_s"], 3),
        "short_p50_latency": round(c["short_p50_latency_s"] / s["short_p50_latency_s"], 3),
        "throughput": round(c["tokens_per_s"] / s["tokens_per_s"], 3),
    }
    one, each = runs["continuous_t0.8"], runs["continuous_each_t"]
    report["each_temperature_vs_one"] = {
        "p50_latency": round(each["p50_latency_s"] / one["p50_latency_s"], 3),
        "p99_latency": round(each["p99_latency_s"] / one["p99_latency_s"], 3),
        "programs_compiled_during_trace": each["programs_after"] - each["programs_before"],
    }
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(report, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)


# -- --neighbours: a greedy client beside noisy ones ----------------------------------------


def raw_connection(url: str, timeout: float) -> socket.socket:
    from urllib.parse import urlparse

    address = urlparse(url)
    return socket.create_connection((address.hostname, address.port), timeout=timeout)


def read_status(connection: socket.socket) -> int | None:
    """The status code of the response waiting on `connection` (None if none came)."""
    try:
        head = connection.recv(64)
    except OSError:
        return None
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def headers(path: str, fields: dict) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def neighbour_temperatures(url, stop, deadline, max_tokens, prompt) -> dict:
    """One client cycling through 100 temperatures, one request at a time."""
    sent, statuses = 0, {}
    while sent < 100 and not stop.is_set() and time.monotonic() < deadline:
        body = {"prompt": prompt, "max_tokens": max_tokens}
        body.update(temperature=round(0.5 + sent / 100, 2), seed=sent)
        try:
            post(url + "/v1/completions", body, max(1.0, deadline - time.monotonic()))
            statuses["200"] = statuses.get("200", 0) + 1
        except urllib.error.HTTPError as error:
            statuses[str(error.code)] = statuses.get(str(error.code), 0) + 1
        except OSError as error:  # a timeout, a refused connection
            statuses[type(error).__name__] = statuses.get(type(error).__name__, 0) + 1
        sent += 1
    return {"requests": sent, "statuses": statuses}


def neighbour_big_body(url, stop, deadline, max_tokens, prompt, size=50 << 20) -> dict:
    """One client sending `size`-byte bodies, alternately with Content-Length and chunked."""
    sent, statuses, piece = 0, {}, b"a" * (1 << 20)
    while sent < 20 and not stop.is_set() and time.monotonic() < deadline:
        chunked = sent % 2 == 1
        connection = raw_connection(url, 30)
        try:
            fields = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": size}
            connection.sendall(headers("/v1/completions", fields))
            connection.sendall(b'{"prompt": "' if not chunked else b'c\r\n{"prompt": "\r\n')
            for _ in range(size >> 20):
                if chunked:
                    connection.sendall(b"100000\r\n" + piece + b"\r\n")
                else:
                    connection.sendall(piece)
        except OSError:  # the server answered and closed the connection: expected
            pass
        status = read_status(connection)
        connection.close()
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        sent += 1
    return {"requests": sent, "statuses": statuses}


def neighbour_half_sent(url, stop, deadline, max_tokens, prompt, count=20) -> dict:
    """`count` connections that send their headers and part of the body, then nothing."""
    connections = []
    for _ in range(count):
        connection = raw_connection(url, 30)
        connection.sendall(headers("/v1/completions", {"Content-Length": 1000}))
        connection.sendall(b'{"prompt": "')
        connections.append(connection)
    stop.wait(max(0.0, deadline - time.monotonic()))
    statuses = {}
    for connection in connections:
        connection.settimeout(0.01)
        status = read_status(connection)  # 408 if the body timeout passed, else none
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        connection.close()
    return {"requests": count, "statuses_at_end": statuses}


def neighbour_abandoned(url, stop, deadline, max_tokens, prompt, spacing, count=10) -> dict:
    """`count` non-streamed requests for the whole context, `spacing` s apart, each
    closed by its client 1 s after it was sent (before its answer)."""
    context = SHAPE["max_sequence_length"]
    body = json.dumps({"prompt": prompt, "max_tokens": context - len(prompt), "temperature": 0})
    sent = 0
    start = time.monotonic()
    while sent < count and time.monotonic() < deadline:
        if stop.wait(max(0.0, start + sent * spacing - time.monotonic())):
            break
        connection = raw_connection(url, 30)
        connection.sendall(headers("/v1/completions", {"Content-Length": len(body.encode())}))
        connection.sendall(body.encode())
        time.sleep(1.0)
        connection.close()
        sent += 1
    return {"requests": sent}


NEIGHBOURS = {
    "temperatures": neighbour_temperatures,
    "body_50mb": neighbour_big_body,
    "half_sent": neighbour_half_sent,
    "abandoned": neighbour_abandoned,
}


def greedy_client(url: str, prompt: str, requests: int, max_tokens: int, timeout: float):
    """(latencies, completion tokens, distinct texts) of `requests` greedy requests in turn."""
    latencies, tokens, texts = [], 0, set()
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    for _ in range(requests):
        latency, answer = post(url + "/v1/completions", body, timeout)
        latencies.append(latency)
        tokens += answer["usage"]["completion_tokens"]
        texts.add(answer["choices"][0]["text"])
    return latencies, tokens, len(texts)


def neighbours_main(args) -> None:
    """A greedy client's p50 latency alone and beside each neighbour (see `--neighbours`)."""
    import threading

    from machine import machine_report

    rng = np.random.default_rng(0)

    def prompt() -> str:
        ids = rng.integers(0, SHAPE["vocabulary_size"], args.prompt_tokens)
        return "".join(chr(FIRST_CHARACTER + int(i)) for i in ids)

    greedy_prompt, other_prompt = prompt(), prompt()
    report = machine_report("serve neighbours: a greedy client beside noisy ones")
    report.update(
        backend=args.backend,
        shape=SHAPE,
        greedy_requests=args.requests,
        prompt_tokens=args.prompt_tokens,
        max_tokens=args.max_tokens,
        max_batch=args.max_batch,
        server_args=args.server_args,
    )
    flags = ["--max-batch", str(args.max_batch), "--log-level", "warning"]
    flags += args.server_args.split()
    phases = {}
    with tempfile.TemporaryDirectory() as tmp:
        preset = os.path.join(tmp, "bench_small")
        make_preset(preset, args.backend)
        log = open(os.path.join(tmp, "server.log"), "w+")
        server, url = start_server(preset, args.backend, flags, log)
        try:
            greedy_client(url, greedy_prompt, 3, args.max_tokens, args.timeout)  # first contact

            def phase(name: str | None) -> dict:
                before = health(url)
                stop = threading.Event()
                unloaded = phases.get("unloaded", {}).get("p50_s", 1.0)
                estimate = args.requests * unloaded
                deadline = time.monotonic() + max(60.0, 10 * estimate)
                result, thread = {}, None
                if name is not None:
                    extra = {"spacing": estimate / 10} if name == "abandoned" else {}

                    def run():
                        result.update(
                            NEIGHBOURS[name](
                                url, stop, deadline, args.max_tokens, other_prompt, **extra
                            )
                        )

                    thread = threading.Thread(target=run, daemon=True)
                    thread.start()
                    time.sleep(0.2)  # the neighbour is under way before the first request
                latencies, tokens, distinct = greedy_client(
                    url, greedy_prompt, args.requests, args.max_tokens, args.timeout
                )
                stop.set()
                if thread is not None:
                    thread.join(max(1.0, deadline - time.monotonic()))
                time.sleep(1.5)  # the last abandoned rows end (the server notices the close)
                after = health(url)
                return {
                    "p50_s": round(statistics.median(latencies), 4),
                    "p99_s": round(percentile(latencies, 99), 4),
                    "distinct_greedy_texts": distinct,
                    "neighbour": result or None,
                    "programs_before": before["programs"],
                    "programs_after": after["programs"],
                    "other_tokens_decoded": after["decoded"] - before["decoded"] - tokens,
                }

            phases["unloaded"] = phase(None)
            for name in NEIGHBOURS:
                phases[name] = phase(name)
                phases[name]["p50_vs_unloaded"] = round(
                    phases[name]["p50_s"] / phases["unloaded"]["p50_s"], 3
                )
            phases["unloaded_again"] = phase(None)
        finally:
            server.terminate()
            server.wait(60)
    report["phases"] = phases
    report["p50_vs_unloaded"] = {name: phases[name]["p50_vs_unloaded"] for name in NEIGHBOURS}
    report["goal"] = "each p50_vs_unloaded <= 1.5"
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(report, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)


# -- --sigterm: shutting down with streams in flight ----------------------------------------


def sigterm_main(args) -> None:
    """SIGTERM with `--streams` streamed requests in flight (see `--sigterm`)."""
    import http.client
    import signal
    import threading
    from urllib.parse import urlparse

    from machine import machine_report

    rng = np.random.default_rng(0)
    context = TRACE_SHAPE["max_sequence_length"]
    grace = args.shutdown_timeout
    report = machine_report("serve sigterm: shutdown with streams in flight")
    report.update(
        backend=args.backend,
        shape=TRACE_SHAPE,
        streams=args.streams,
        max_tokens=context - args.prompt_tokens,
        max_batch=args.max_batch,
        shutdown_timeout_s=grace,
    )
    flags = ["--max-batch", str(args.max_batch), "--max-queue", str(4 * args.streams)]
    flags += ["--log-level", "info", "--shutdown-timeout", str(grace)]
    flags += args.server_args.split()
    outcomes = [None] * args.streams
    first_text = [threading.Event() for _ in range(args.streams)]

    def stream(i: int, url: str, prompt: str) -> None:
        address = urlparse(url)
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
        body = {"prompt": prompt, "max_tokens": context - args.prompt_tokens}
        body.update(temperature=0, stream=True)
        outcome = {"status": None, "texts": 0, "done": False, "finish": None, "error": None}
        try:
            connection.request(
                "POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            outcome["status"] = response.status
            for line in response:
                line = line.decode().strip()
                if line == "data: [DONE]":
                    outcome["done"] = True
                elif line.startswith("data: "):
                    payload = json.loads(line[6:])
                    if "error" in payload:
                        outcome["error"] = payload["error"].get("code")
                    elif payload["choices"][0]["finish_reason"]:
                        outcome["finish"] = payload["choices"][0]["finish_reason"]
                    elif payload["choices"][0]["text"]:
                        outcome["texts"] += 1
                        first_text[i].set()
        except (OSError, http.client.HTTPException) as error:
            outcome["cut"] = type(error).__name__
        finally:
            first_text[i].set()  # also when it failed: nobody waits for it
            connection.close()
            outcomes[i] = outcome

    with tempfile.TemporaryDirectory() as tmp:
        preset = os.path.join(tmp, "bench_small")
        make_preset(preset, args.backend, TRACE_SHAPE)
        log_path = os.path.join(tmp, "server.log")
        log = open(log_path, "w+")
        server, url = start_server(preset, args.backend, flags, log)
        try:
            vocabulary = TRACE_SHAPE["vocabulary_size"]
            prompts = [
                "".join(
                    chr(FIRST_CHARACTER + int(i))
                    for i in rng.integers(0, vocabulary, args.prompt_tokens)
                )
                for _ in range(args.streams)
            ]
            threads = [
                threading.Thread(target=stream, args=(i, url, p), daemon=True)
                for i, p in enumerate(prompts)
            ]
            for thread in threads:
                thread.start()
            # In flight: every stream answered 200; the first max_batch decode, the rest
            # wait in the queue. Wait for the decoding ones' first text.
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                stats = health(url)
                if stats["requests"] >= args.streams and stats["decoding"] >= min(
                    args.max_batch, args.streams
                ):
                    break
                time.sleep(0.1)
            report["at_sigterm"] = {
                k: stats[k] for k in ("requests", "decoding", "waiting", "tokens", "decoded")
            }
            signalled, signalled_wall = time.monotonic(), time.time()
            server.send_signal(signal.SIGTERM)
            try:
                code = server.wait(grace + 60)
            except subprocess.TimeoutExpired:
                code = None
            exit_s = time.monotonic() - signalled
            for thread in threads:
                thread.join(30)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        log.close()
        lines = open(log_path).read().splitlines()
    ended = {"finished": 0, "shutdown_error": 0, "other_error": 0, "cut_without_error": 0}
    for outcome in outcomes:
        if outcome is None or outcome.get("cut") or not outcome["done"]:
            ended["cut_without_error"] += 1
        elif outcome["error"] == "shutting_down":
            ended["shutdown_error"] += 1
        elif outcome["error"]:
            ended["other_error"] += 1
        else:
            ended["finished"] += 1
    request_lines = [line for line in lines if " cmpl-" in line]
    # When the shutdown's steps were logged (the log's asctime), in s after SIGTERM.
    steps = {
        "draining": "shutting down: no new requests",
        "grace_ran_out": "requests still running at shutdown",
        "stopped": "INFO stopped",
    }
    logged = {}
    for name, needle in steps.items():
        for line in lines:
            if needle in line and line[:4].isdigit():  # keras_gpt's lines carry the time
                stamp = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
                stamp += int(line[20:23]) / 1000 if line[19:20] == "," else 0
                logged[name] = round(stamp - signalled_wall, 2)
                break
    report.update(
        exit_code=code,
        seconds_to_exit=round(exit_s, 2),
        limit_s=grace + 2,
        goal_met=code == 0 and exit_s <= grace + 2,
        streams_ended=ended,
        log_flushed=bool(lines) and lines[-1].endswith("stopped"),
        log_request_lines=len(request_lines),
        logged_s_after_sigterm=logged,
        log_tail=[line.split(" ", 2)[-1][:160] for line in lines[-6:]],
        load_average_end=[round(x, 2) for x in os.getloadavg()],
    )
    text = json.dumps(report, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
