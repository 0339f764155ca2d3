"""`/metrics`: the server's counters in Prometheus' text format (`prometheus_client`).

Names follow vLLM's where the meaning is the same, with the prefix
`keras_gpt:` for `vllm:` (every series has the label `model_name`):

| metric | type | what |
| --- | --- | --- |
| `keras_gpt:request_success_total{finished_reason}` | counter | queued requests' ends (1) |
| `keras_gpt:http_requests_total{status}` | counter | completion requests by status (2) |
| `keras_gpt:prompt_tokens_total` | counter | prompt tokens of queued requests |
| `keras_gpt:generation_tokens_total` | counter | tokens generated |
| `keras_gpt:num_requests_running` | gauge | rows in the batch being decoded |
| `keras_gpt:num_requests_waiting` | gauge | rows waiting for a batch |
| `keras_gpt:time_to_first_token_seconds` | histogram | arrival to first text |
| `keras_gpt:e2e_request_latency_seconds` | histogram | arrival to the end of the answer |

(1) `finished_reason` is `ok`, `error` or `abort` (the client went away).
(2) Refusals before queueing (4xx) included; 499: the client went away.

Without `prometheus_client` the counters are not kept and `/metrics` answers
404 saying what to install.
"""

from __future__ import annotations

import threading
import time

try:
    import prometheus_client
except ImportError:  # optional: /metrics then answers 404
    prometheus_client = None

PREFIX = "keras_gpt:"

#: vLLM's time-to-first-token buckets (seconds).
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
#: vLLM's end-to-end latency buckets (seconds).
LATENCY_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
)


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (one per app).

    Args:
        model_name: the `model_name` label.

    Example:
    >>> metrics = Metrics("tiny")
    >>> metrics.generated(5)
    >>> body, content_type = metrics.exposition()
    """

    def __init__(self, model_name: str):
        self.enabled = prometheus_client is not None
        if not self.enabled:
            return
        p = prometheus_client
        self.registry = registry = p.CollectorRegistry()
        labels = ["model_name"]
        self.model_name = model_name

        def make(kind, name, doc, extra=(), **kwargs):
            return kind(PREFIX + name, doc, labels + list(extra), registry=registry, **kwargs)

        self.success = make(p.Counter, "request_success", "Requests answered.", ["finished_reason"])
        self.http = make(p.Counter, "http_requests", "Completion requests by status.", ["status"])
        self.prompt_tokens = make(p.Counter, "prompt_tokens", "Prompt tokens queued.")
        self.generation_tokens = make(p.Counter, "generation_tokens", "Tokens generated.")
        self.running = make(p.Gauge, "num_requests_running", "Rows being decoded.")
        self.waiting = make(p.Gauge, "num_requests_waiting", "Rows waiting for a batch.")
        self.ttft = make(
            p.Histogram,
            "time_to_first_token_seconds",
            "Arrival to first text.",
            buckets=TTFT_BUCKETS,
        )
        self.latency = make(
            p.Histogram,
            "e2e_request_latency_seconds",
            "Arrival to the end of the answer.",
            buckets=LATENCY_BUCKETS,
        )
        self._lock = threading.Lock()

    def refused(self, status: int) -> None:
        """A request answered with an error before it was queued."""
        if self.enabled:
            self.http.labels(self.model_name, str(status)).inc()

    def finished(self, request, outcome: str, status: int) -> None:
        """A queued request's end: `outcome` is `"ok"`, `"error"` or `"abort"`, `status`
        its HTTP status (499 when the client went away, as nginx logs it)."""
        if not self.enabled:
            return
        name = self.model_name
        self.success.labels(name, outcome).inc()
        self.http.labels(name, str(status)).inc()
        self.prompt_tokens.labels(name).inc(request.prompt_tokens)
        now = time.monotonic()
        if request.first_text_at is not None:
            self.ttft.labels(name).observe(request.first_text_at - request.started)
        self.latency.labels(name).observe(now - request.started)

    def generated(self, tokens: int) -> None:
        """`tokens` more tokens generated (called from the worker thread)."""
        if self.enabled:
            self.generation_tokens.labels(self.model_name).inc(tokens)

    def observe_batcher(self, stats: dict) -> None:
        """Sets the gauges from `Batcher.stats`."""
        if self.enabled:
            self.running.labels(self.model_name).set(stats["decoding"])
            self.waiting.labels(self.model_name).set(stats["waiting"])

    def exposition(self) -> tuple[bytes, str]:
        """The text format, and its content type."""
        return prometheus_client.generate_latest(
            self.registry
        ), prometheus_client.CONTENT_TYPE_LATEST
