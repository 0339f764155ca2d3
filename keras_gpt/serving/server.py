"""Loading a preset (or a training run) and serving it with uvicorn.

What `serve` adds around the app (`create_app`):

- uvicorn's own limits: `timeout_keep_alive` (idle keep-alive connections),
  `limit_concurrency` (connections and tasks; beyond it uvicorn answers 503),
  `h11_max_incomplete_event_size` (headers larger than 16 KiB are refused).
- A header timeout uvicorn does not have: a connection whose request headers
  are not complete `header_timeout` seconds after it opened (or after its
  previous response) gets 408 and is closed, so half-sent requests do not hold
  connections open.
- A graceful shutdown on SIGTERM or Ctrl-C: new requests get 503 and `/health`
  says `draining`; queued and decoding requests go on for up to
  `shutdown_timeout` seconds, those still running a second before it ends get
  a 503 error ("shutting down"); then the logs are flushed and the process
  exits with status 0 at once (uvicorn alone re-raises the signal, which exits
  with -15). "At once": the exit handlers run, then `os._exit`, skipping the
  interpreter's teardown of the Keras backends' modules, which takes seconds
  on a busy machine (more on PyTorch than on JAX) and would push the exit past
  the grace period.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ipaddress
import logging
import os
import signal
import sys
import threading

import keras

from keras_gpt.model import GPT
from keras_gpt.presets import load_tokenizer, preset_path, resolve
from keras_gpt.serving.app import create_app
from keras_gpt.serving.batcher import Batcher
from keras_gpt.serving.chat import chat_template_of
from keras_gpt.serving.limits import Limits

logger = logging.getLogger("keras_gpt.serving")

#: The environment variable read for the API key when none is given.
API_KEY_VARIABLE = "KERAS_GPT_API_KEY"


def is_loopback(host: str) -> bool:
    """Whether `host` listens on this machine only (`127.0.0.1`, `::1`, `localhost`)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: assume it reaches beyond this machine
        return False


def serve(
    handle: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 16,
    max_queue: int = 256,
    max_n: int | None = None,
    chat: str | None = None,
    model_name: str | None = None,
    log_level: str = "info",
    batch_wait: float = 0.01,
    limits: Limits | None = None,
    header_timeout: float = 10.0,
    keep_alive_timeout: int = 5,
    max_connections: int = 512,
    shutdown_timeout: float = 20.0,
    scheduler: str = "continuous",
    warmup: bool = True,
) -> None:
    """Serves a preset or training run over HTTP until SIGTERM or Ctrl-C (`keras-gpt serve`).

    Args:
        handle: a preset handle or directory, or a training run directory
            (its `best/` preset is served).
        host: the address to listen on; the default is reachable from this machine only.
        port: the TCP port.
        max_batch: most rows (prompts × n) decoded together.
        max_queue: most rows waiting; more get HTTP 429.
        max_n: largest `n` of one request (default `max_batch`).
        chat: the chat template (`"instruction"` or `"messages"`), overriding the
            preset's `metadata.json`; `None` reads it from there.
        model_name: the model id clients use (default: `handle`).
        log_level: uvicorn's and the request log's level.
        batch_wait: seconds a free worker waits for more requests before
            starting a batch that is not full (see `Batcher`).
        limits: the API key, body and time limits (`Limits`); without an API key
            there, the `KERAS_GPT_API_KEY` environment variable's, if set.
        header_timeout: seconds a connection has to send complete request headers.
        keep_alive_timeout: seconds an idle keep-alive connection stays open.
        max_connections: most connections (and requests) at once; more get 503.
        shutdown_timeout: seconds requests in flight may take to finish after
            SIGTERM before they are ended with an error.
        scheduler: `"continuous"` (requests join free slots at every decoding
            step) or `"static"` (a batch is admitted when the last has ended);
            see `keras_gpt.serving.batcher`.
        warmup: compile every decoding program before listening (logs how
            many and how long), so no request waits for a compile.

    After SIGTERM or Ctrl-C (when it runs in the main thread) the process exits
    with status 0 once the server has drained, without returning: see the
    module's docstring.

    Example:
    >>> serve("runs/shakespeare", port=8000)      # blocks; SIGTERM or Ctrl-C stops it
    """
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logger.setLevel(log_level.upper())
    limits = limits or Limits()
    if limits.api_key is None and os.environ.get(API_KEY_VARIABLE):
        limits = Limits(**dict(vars(limits), api_key=os.environ[API_KEY_VARIABLE]))
    for name, value in [("header_timeout", header_timeout), ("shutdown_timeout", shutdown_timeout)]:
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}.")
    app = load_app(
        handle,
        chat,
        model_name,
        max_batch=max_batch,
        max_queue=max_queue,
        max_n=max_n,
        batch_wait=batch_wait,
        limits=limits,
        scheduler=scheduler,
    )
    if warmup:
        programs, seconds = app.state.batcher.warmup()
        logger.info(
            "warm-up: compiled %d programs in %.1f s (%s scheduler, %d slots)",
            programs,
            seconds,
            scheduler,
            app.state.batcher.max_batch,
        )
    logger.info("listening at http://%s:%d", host, port)
    if limits.api_key is None and not is_loopback(host):
        logger.warning(
            "listening on %s without an API key: anyone who can reach this address can "
            "generate with the model; set %s or pass --api-key.",
            host,
            API_KEY_VARIABLE,
        )
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        http=header_timeout_protocol(header_timeout),
        timeout_keep_alive=keep_alive_timeout,
        limit_concurrency=max_connections,
        timeout_graceful_shutdown=int(shutdown_timeout + 1),
    )
    server = graceful_server(config, app.state.batcher, shutdown_timeout)
    server.run()
    logger.info("stopped")
    if server.signalled:
        # SIGTERM ends the process, as its default action would. The exit handlers
        # run (logging's flush, the CLI's stderr filter: every log line reaches its
        # file), the modules' teardown does not (that is what takes seconds).
        sys.stdout.flush()
        sys.stderr.flush()
        atexit._run_exitfuncs()
        os._exit(0)
    for handler in logging.getLogger().handlers:
        handler.flush()


def load_app(handle: str, chat: str | None, model_name: str | None, **settings):
    """The app (`create_app`) serving the preset or run `handle`; logs what it serves.

    Args:
        handle: a preset handle or directory, or a training run directory.
        chat: the chat template override (see `serve`).
        model_name: the model id (default: `handle`).
        **settings: `create_app`'s other arguments.
    """
    path = preset_path(handle)
    model = GPT.from_preset(path)
    tokenizer = load_tokenizer(path)
    template = chat_template_of(resolve(path), chat)
    name = model_name or os.fspath(handle).rstrip("/") or os.fspath(handle)
    app = create_app(model, tokenizer, model_name=name, chat_template=template, **settings)
    logger.info(
        "serving %s (%s, %s parameters, context %d, chat %s) on backend %s%s",
        name,
        path,
        f"{model.count_params():,}",
        model.max_sequence_length,
        template or "off",
        keras.backend.backend(),
        ", API key required" if settings["limits"].api_key else "",
    )
    return app


def graceful_server(config, batcher: Batcher, grace: float):
    """A uvicorn server that drains `batcher` on shutdown and does not re-raise the signal.

    Args:
        config: the `uvicorn.Config`.
        batcher: the app's `Batcher`.
        grace: seconds in-flight requests get after the signal.
    """
    import uvicorn

    class Server(uvicorn.Server):
        signalled = False  # whether SIGTERM or Ctrl-C stopped it

        def handle_exit(self, sig, frame):
            self.signalled = True
            super().handle_exit(sig, frame)

        async def shutdown(self, sockets=None):
            batcher.drain()
            logger.info("shutting down: no new requests; up to %g s for %s", grace, batcher.stats)
            margin = min(1.0, grace / 4)
            loop = asyncio.get_running_loop()
            timer = loop.call_later(grace - margin, self.abort_rest)
            try:
                await super().shutdown(sockets)
            finally:
                timer.cancel()

        def abort_rest(self):
            ended = batcher.abort(
                "the server is shutting down and its grace period (--shutdown-timeout) "
                "ran out; retry the request"
            )
            if ended:
                logger.warning("ended %d requests still running at shutdown", ended)

        @contextlib.contextmanager
        def capture_signals(self):
            # uvicorn's, without re-raising the signal afterwards: a drained
            # server exits with status 0.
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server(config)


def header_timeout_protocol(seconds: float):
    """uvicorn's h11 protocol with a deadline on request headers (408, then the
    connection is closed)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer = None
        _linger_timer = None
        _lingered = 0

        def connection_made(self, transport):
            super().connection_made(LingeringTransport(transport, self))
            self._arm()

        def linger(self, close) -> bool:
            """Closes the connection gracefully if the request's body was not read to
            its end (an early 413 or 408); returns False where a plain close will do.

            Closing a socket with unread data makes the kernel answer with a reset,
            which can destroy the answer on its way, so a client sees "connection
            reset" instead of the 413. As web servers do (nginx's lingering close):
            end our side (FIN after the answer), read and drop what the client
            still sends for up to LINGER_SECONDS or LINGER_BYTES, then close."""
            if self._linger_timer is not None:
                return False  # closed again while lingering (a shutdown): close now
            if self.conn.their_state is not h11.SEND_BODY:
                return False
            transport = self.transport.transport
            if transport.is_closing() or not transport.can_write_eof():
                return False
            self._linger_timer = self.loop.call_later(LINGER_SECONDS, close)
            transport.write_eof()
            transport.resume_reading()
            return True

        def eof_received(self):
            if self._linger_timer is not None:
                self.transport.transport.close()  # the client has sent everything

        def _arm(self):
            self._disarm()
            self._header_timer = self.loop.call_later(seconds, self._expired)

        def _disarm(self):
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def data_received(self, data):
            if self._linger_timer is not None:  # the answer is sent: drop the rest
                self._lingered += len(data)
                if self._lingered > LINGER_BYTES:
                    self.transport.transport.close()
                return
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the headers are complete
                self._disarm()

        def on_response_complete(self):
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()

        def connection_lost(self, exc):
            self._disarm()
            if self._linger_timer is not None:
                self._linger_timer.cancel()
            super().connection_lost(exc)

        def _expired(self):
            self._header_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            if self.conn.our_state is h11.IDLE:
                self.transport.write(
                    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n"
                    b"connection: close\r\n\r\n"
                )
            self.transport.close()

    return HeaderTimeoutProtocol


#: How long, and how many bytes, a connection answered before its body ended is read
#: and dropped before it is closed (see `header_timeout_protocol`'s `linger`).
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 << 20


class LingeringTransport:
    """An asyncio transport whose `close` lets `protocol.linger` close it gracefully."""

    def __init__(self, transport, protocol):
        self.transport = transport
        self.protocol = protocol

    def close(self):
        if not self.protocol.linger(self.transport.close):
            self.transport.close()

    def __getattr__(self, name):
        return getattr(self.transport, name)
