"""The `keras-gpt` command: `keras-gpt pretrain | finetune | generate ...`."""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import sys


def _overrides(extra: list[str]) -> dict:
    """`--key value` pairs (and bare `--flag` for true) left over by argparse."""
    values, i = {}, 0
    while i < len(extra):
        key = extra[i]
        if not key.startswith("--"):
            raise ValueError(f"expected --key value, got {key!r}")
        if i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            values[key[2:]] = extra[i + 1]
            i += 2
        else:
            values[key[2:]] = "true"
            i += 1
    return values


def pretrain_command(argv: list[str]) -> dict:
    from keras_gpt.training.config import PretrainConfig

    parser = argparse.ArgumentParser(
        prog="keras-gpt pretrain",
        description="Pretrain a GPT on a corpus. Every setting below can be given as "
        "--key value or in a TOML file (--config); the command line wins.",
        epilog=PretrainConfig.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="TOML file of settings")
    parser.add_argument(
        "--resume", action="store_true", help="continue from OUT/checkpoints if present"
    )
    args, extra = parser.parse_known_args(argv)
    config = PretrainConfig.load(args.config, _overrides(extra))
    from keras_gpt.training.pretrain import pretrain  # imports Keras and the backend

    return _run_recipe(pretrain, config, args.resume)


def finetune_command(argv: list[str]) -> dict:
    from keras_gpt.training.config import FinetuneConfig

    parser = argparse.ArgumentParser(
        prog="keras-gpt finetune",
        description="Fine-tune a preset, fully or with LoRA, on instruction JSONL or on plain "
        "text (continued pretraining; --format auto|instructions|text). Every setting below "
        "can be given as --key value or in a TOML file (--config).",
        epilog=FinetuneConfig.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="TOML file of settings")
    parser.add_argument(
        "--resume", action="store_true", help="continue from OUT/checkpoints if present"
    )
    args, extra = parser.parse_known_args(argv)
    config = FinetuneConfig.load(args.config, _overrides(extra))
    from keras_gpt.training.finetune import finetune  # imports Keras and the backend

    return _run_recipe(finetune, config, args.resume)


def _run_recipe(recipe, config, resume: bool) -> dict:
    """`recipe(config, resume=resume)`; a run that fails on its inputs (a missing data
    file or preset: ValueError, OSError) leaves no half-made output directory."""
    out = pathlib.Path(config.out).absolute()
    made = None  # the highest folder of `out` this call creates
    if not out.exists():
        made = out
        while not made.parent.exists():
            made = made.parent
    try:
        return recipe(config, resume=resume)
    except (ValueError, OSError):
        # Only folders this call made, and only while they hold no run: a failure
        # after training logged something keeps what it wrote.
        logged = (out / "metrics.jsonl").exists() or (out / "best").exists()
        if made is not None and not logged and not any(out.glob("checkpoints/*")):
            shutil.rmtree(made, ignore_errors=True)
        raise


def generate_command(argv: list[str]) -> None:
    """`keras-gpt generate PRESET [--prompt TEXT] ...`: sample text from a preset or a run.

    Args:
        argv: the command-line arguments after `generate`, as in
            `keras-gpt generate runs/shakespeare_char --prompt "ROMEO:" --top-k 20`.
    """
    parser = argparse.ArgumentParser(
        prog="keras-gpt generate",
        description="Generate text from a preset (or a recipe's run directory, through its "
        "best/ preset).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "preset", nargs="?", default=None, help="preset handle or directory, or a run directory"
    )
    parser.add_argument(
        "--preset", dest="preset_option", default=None, help="the same, as an option"
    )
    parser.add_argument("--prompt", default="\n", help="text to continue (default: %(default)r)")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="tokens to add")
    parser.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=None, help="sample from the k likeliest")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed")
    parser.add_argument(
        "--num-samples", type=int, default=1, help="continuations of the prompt (one batch)"
    )
    parser.add_argument("--interactive", action="store_true", help="prompt loop")
    args = parser.parse_args(argv)
    handle = _generate_settings(parser, args)

    import numpy as np

    from keras_gpt.model import GPT
    from keras_gpt.presets import load_tokenizer
    from keras_gpt.tokenizers import TextStream

    model = GPT.from_preset(handle)
    tokenizer = load_tokenizer(handle)
    sampler = "top_p" if args.top_p else "top_k" if args.top_k else "temperature"
    if args.temperature == 0:
        sampler = "greedy"

    def run(prompt: str) -> None:
        ids = tokenizer.encode(prompt) or [0]
        room = model.max_sequence_length - len(ids)
        if room <= 0:
            raise SystemExit(
                f"the prompt has {len(ids)} tokens; the model's context is "
                f"{model.max_sequence_length}"
            )
        kwargs = dict(
            max_new_tokens=min(args.max_new_tokens, room),
            sampler=sampler,
            temperature=args.temperature or 1.0,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
        )
        if args.num_samples == 1:
            # Text is written only at whole characters: a byte-level token can hold
            # part of one, which decoded alone would print as U+FFFD.
            text = TextStream(tokenizer, max_tokens=kwargs["max_new_tokens"])

            def stream(tokens, is_new):
                if is_new[0]:
                    sys.stdout.write(text.feed(int(tokens[0])))
                    sys.stdout.flush()

            sys.stdout.write(prompt)
            model.generate(np.array([ids]), callback=stream, **kwargs)
            sys.stdout.write(text.close() + "\n")
            return
        # Several samples: one batched call (independent noise per sample), then
        # each sample printed whole.
        out, lengths = model.generate(
            np.array([ids]), num_samples=args.num_samples, return_lengths=True, **kwargs
        )
        for row, length in zip(out, lengths):
            sys.stdout.write(prompt + tokenizer.decode(row[len(ids) : length].tolist()))
            sys.stdout.write("\n" + "-" * 40 + "\n")

    if args.interactive:
        while True:
            try:
                prompt = input("prompt> ")
            except EOFError:
                break
            run(prompt)
    else:
        run(args.prompt)


def _generate_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The preset handle `generate` loads, once its settings are checked (before any model
    is loaded: a mistake costs no start-up)."""
    if args.preset and args.preset_option and args.preset != args.preset_option:
        parser.error("give the preset once (as PRESET or --preset)")
    handle = args.preset or args.preset_option
    if handle is None:
        parser.error("the preset is missing: keras-gpt generate PRESET [--prompt TEXT]")
    checks = [
        (
            args.max_new_tokens >= 1,
            f"--max-new-tokens must be at least 1, got {args.max_new_tokens}",
        ),
        (args.temperature >= 0, f"--temperature must be 0 or more, got {args.temperature}"),
        (args.top_k is None or args.top_k >= 1, f"--top-k must be at least 1, got {args.top_k}"),
        (
            args.top_p is None or 0 < args.top_p <= 1,
            f"--top-p must be in (0, 1], got {args.top_p}",
        ),
        (args.num_samples >= 1, f"--num-samples must be at least 1, got {args.num_samples}"),
    ]
    for ok, message in checks:
        if not ok:
            parser.error(message)
    return _found_preset(handle)


def _found_preset(handle: str) -> str:
    """`handle` as a preset directory's handle (a recipe's run directory: its best/ preset),
    once it is found: a missing directory or misspelt name fails here, before Keras and a
    backend are imported (10-15 s), so a mistake costs no start-up."""
    from keras_gpt.presets import preset_path, resolve  # the half of presets without Keras

    handle = preset_path(handle)
    resolve(handle)
    return handle


def export_command(argv: list[str]) -> None:
    """`keras-gpt export PRESET PATH [--max-new-tokens N] ...` (see `keras_gpt.export`).

    Args:
        argv: the command-line arguments after `export`.

    Example:
    >>> export_command(["my_preset", "served/gpt/1", "--max-new-tokens", "64"])
    """
    import argparse

    parser = argparse.ArgumentParser(
        prog="keras-gpt export",
        description="Export a preset as a TensorFlow SavedModel with `logits` and "
        "`generate` signatures (for TensorFlow Serving), or its logits "
        "graph as ONNX.",
    )
    parser.add_argument("preset", help="preset handle or directory")
    parser.add_argument("path", help="output directory (file for ONNX); must not exist")
    parser.add_argument("--format", choices=("tf_saved_model", "onnx"), default="tf_saved_model")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="largest max_new_tokens a request may ask for (default: max_sequence_length - 1)",
    )
    parser.add_argument(
        "--stop-token-ids", default="", help="comma-separated ids that end a row, e.g. 50256"
    )
    parser.add_argument(
        "--pad-token-id", type=int, default=None, help="id after each row's end (default 0)"
    )
    parser.add_argument(
        "--backend",
        choices=("tensorflow", "jax"),
        default=None,
        help="backend that traces the graphs (default: the current "
        "one if it can, else tensorflow in a child process)",
    )
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    _found_preset(args.preset)
    from keras_gpt.export import export, export_onnx

    if args.format == "onnx":
        # The ONNX file is the logits graph alone: the generate settings have no home there.
        given = [
            flag
            for flag, value in (
                ("--max-new-tokens", args.max_new_tokens),
                ("--stop-token-ids", args.stop_token_ids),
                ("--pad-token-id", args.pad_token_id),
            )
            if value not in (None, "")
        ]
        if given:
            raise ValueError(
                f"{', '.join(given)} apply to the SavedModel's generate signature only; "
                "an ONNX export holds the logits graph alone."
            )
        export_onnx(args.preset, args.path, overwrite=args.overwrite, backend=args.backend)
    else:
        stops = [int(s) for s in args.stop_token_ids.split(",") if s.strip()]
        export(
            args.preset,
            args.path,
            max_new_tokens=args.max_new_tokens,
            stop_token_ids=stops or None,
            pad_token_id=0 if args.pad_token_id is None else args.pad_token_id,
            overwrite=args.overwrite,
            backend=args.backend,
        )
    print(args.path)


def evaluate_command(argv: list[str]) -> dict:
    """`keras-gpt evaluate PRESET_OR_RUN_DIR --data FILE_OR_DIR [--task ...]` (see
    `keras_gpt.evaluation`).

    Args:
        argv: the command-line arguments after `evaluate`.

    Returns:
        The task's figures, also printed as JSON (and written to `--json`).

    Example:
    >>> evaluate_command(["runs/pretrain", "--data", "valid.txt", "--stride", "512"])
    """
    import json

    parser = argparse.ArgumentParser(
        prog="keras-gpt evaluate",
        description="Score a preset (or a recipe's run directory, through its best/ preset) "
        "on text: perplexity, mean loss and bits per byte (sliding windows), multiple-choice "
        "accuracy (JSONL with context, endings, label) or last-word accuracy and perplexity.",
    )
    parser.add_argument("preset", help="preset handle or directory, or a run directory")
    parser.add_argument("--data", required=True, nargs="+", help="files, folders or globs")
    parser.add_argument(
        "--task", choices=("perplexity", "multiple_choice", "last_word"), default="perplexity"
    )
    parser.add_argument("--context", type=int, default=None, help="perplexity window (tokens)")
    parser.add_argument("--stride", type=int, default=None, help="perplexity window step")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per forward pass")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (there is none when stdout is not a terminal: stdout is the JSON)",
    )
    args = parser.parse_args(argv)

    handle = _found_preset(args.preset)
    from keras_gpt.evaluation import evaluate_preset

    results = evaluate_preset(
        handle,
        args.data,
        task=args.task,
        batch_size=args.batch_size,
        context=args.context,
        stride=args.stride,
        # The figures are JSON on stdout: a bar there would corrupt a redirected file.
        progress=not args.no_progress and sys.stdout.isatty(),
    )
    results = {"preset": handle, "data": args.data, **results}
    text = json.dumps(results, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)
    return results


def serve_command(argv: list[str]) -> None:
    """`keras-gpt serve PRESET_OR_RUN_DIR [--host H] [--port P] ...` (see `keras_gpt.serving`).

    Args:
        argv: the command-line arguments after `serve`.

    Example:
    >>> serve_command(["runs/shakespeare", "--port", "8000", "--max-batch", "16"])
    """
    args = _serve_parser().parse_args(argv)
    _found_preset(args.preset)
    try:
        from keras_gpt.serving import Limits, serve
    except ImportError as error:
        raise SystemExit(
            f"keras-gpt serve: {error}; install the serve extra: pip install 'keras-gpt[serve]'"
        ) from None
    serve(
        args.preset,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_n=args.max_n,
        chat=args.chat,
        model_name=args.model_name,
        log_level=args.log_level,
        batch_wait=args.batch_wait_ms / 1000,
        scheduler=args.scheduler,
        warmup=args.warmup,
        limits=Limits(
            api_key=args.api_key,
            max_body_bytes=args.max_body_bytes,
            max_json_depth=args.max_json_depth,
            body_timeout=args.body_timeout,
            request_timeout=args.request_timeout or None,
        ),
        header_timeout=args.header_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
        max_connections=args.max_connections,
        shutdown_timeout=args.shutdown_timeout,
    )


def _serve_parser() -> argparse.ArgumentParser:
    """`keras-gpt serve`'s options: the model, batching, then the limits and access group."""
    parser = argparse.ArgumentParser(
        prog="keras-gpt serve",
        description="Serve a preset (or a run directory, through its best/ preset) over an "
        "OpenAI-compatible HTTP API: /v1/completions, /v1/chat/completions, /v1/models, "
        "/health; streaming and batched decoding.",
    )
    parser.add_argument("preset", help="preset handle or directory, or a run directory")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch", type=int, default=16, help="rows decoded together")
    parser.add_argument("--max-queue", type=int, default=256, help="rows waiting; more get 429")
    parser.add_argument("--max-n", type=int, default=None, help="largest n (default max-batch)")
    parser.add_argument(
        "--chat",
        choices=("instruction", "messages"),
        default=None,
        help="chat template of a fine-tuned model (default: the preset's metadata.json)",
    )
    parser.add_argument("--model-name", default=None, help="model id (default: the preset)")
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=10.0,
        help="how long a free worker waits for more requests before a batch that is not full",
    )
    parser.add_argument(
        "--scheduler",
        choices=("continuous", "static"),
        default="continuous",
        help="continuous: requests join free slots at every step; static: a batch is "
        "admitted only when the previous one has ended (default: continuous)",
    )
    parser.add_argument(
        "--warmup",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compile every decoding program before listening (default: on)",
    )
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning"))
    limits = parser.add_argument_group("limits and access")
    limits.add_argument(
        "--api-key",
        default=None,
        help="require `Authorization: Bearer KEY` on /v1/* and /metrics (default: the "
        "KERAS_GPT_API_KEY environment variable, which keeps the key out of `ps`; none: open)",
    )
    limits.add_argument(
        "--max-body-bytes", type=int, default=1 << 20, help="largest request body (413 beyond)"
    )
    limits.add_argument(
        "--max-json-depth", type=int, default=32, help="deepest JSON nesting (400 beyond)"
    )
    limits.add_argument(
        "--request-timeout",
        type=float,
        default=600.0,
        help="seconds a request may take, queue included (504 / an error event after); 0: none",
    )
    limits.add_argument(
        "--body-timeout", type=float, default=30.0, help="seconds to send the body (408 after)"
    )
    limits.add_argument(
        "--header-timeout", type=float, default=10.0, help="seconds to send the headers"
    )
    limits.add_argument(
        "--keep-alive-timeout", type=int, default=5, help="seconds an idle connection stays open"
    )
    limits.add_argument(
        "--max-connections", type=int, default=512, help="connections at once (503 beyond)"
    )
    limits.add_argument(
        "--shutdown-timeout",
        type=float,
        default=20.0,
        help="seconds requests in flight get to finish after SIGTERM",
    )
    return parser


COMMANDS = {
    "pretrain": pretrain_command,
    "finetune": finetune_command,
    "generate": generate_command,
    "export": export_command,
    "evaluate": evaluate_command,
    "serve": serve_command,
}


USAGE = """usage: keras-gpt COMMAND [options]   (keras-gpt COMMAND --help for its options)

commands:
  pretrain   train a GPT from scratch on a corpus (a TOML config and/or --key value)
  finetune   fine-tune a preset, fully or with LoRA, on instructions or plain text
  generate   continue a prompt with a preset, streaming to the terminal
  export     write a preset as a TensorFlow SavedModel (or its logits graph as ONNX)
  evaluate   perplexity, bits per byte, multiple-choice and last-word accuracy
  serve      an OpenAI-compatible HTTP server for a preset

--debug (anywhere) shows the Python traceback of an error; --version prints the version."""


def main(argv: list[str] | None = None) -> None:
    """Runs `keras-gpt ARGV...`; a user mistake exits with status 2 and one line on stderr.

    Args:
        argv: the arguments after `keras-gpt` (default: `sys.argv[1:]`).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0 if argv else 2)
    if argv[0] in ("-V", "--version"):
        import importlib.metadata  # the installed distribution's version, as keras_gpt's

        print(f"keras-gpt {importlib.metadata.version('keras-gpt')}")
        raise SystemExit(0)
    if argv[0] not in COMMANDS:
        _fail(f"unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}")
    try:
        COMMANDS[argv[0]](argv[1:])
    except KeyboardInterrupt:
        print("\nkeras-gpt: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except (ValueError, OSError) as error:
        # Bad settings, values, files or presets: keras_gpt raises ValueError (PresetError
        # is one) or an OSError naming the file. One line, no traceback.
        if debug:
            raise
        _fail(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)


def _fail(message: str) -> None:
    print(f"keras-gpt: error: {message}", file=sys.stderr)
    raise SystemExit(2)


#: Lines the TensorFlow and XLA C++ runtimes write to stderr before their logging is
#: configured (so TF_CPP_MIN_LOG_LEVEL cannot silence them): absl's notice and info or
#: warning lines such as cudart's "Could not find cuda drivers".
_NATIVE_LOG = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
    r"STDERR|[IW]\d{4} [\d:.]+\s+\d+ \S+:\d+\] )"
)


def _filter_native_logs() -> None:
    """Routes file descriptor 2 through a thread that drops the C++ runtimes' start-up noise.

    Python's own warnings and errors, and native errors (`E...` lines), pass through.
    On a terminal, Python's `sys.stderr` writes to it directly: they need no
    filtering, and progress lines see a terminal (so redraw themselves) rather
    than the pipe.
    """
    import atexit
    import threading

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    terminal = os.isatty(2)
    real = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)
    if terminal:
        sys.stderr = open(
            os.dup(real), "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace"
        )

    def pump() -> None:
        with os.fdopen(read, "rb") as source, os.fdopen(real, "wb", buffering=0) as target:
            for line in source:
                if not _NATIVE_LOG.match(line.decode("utf-8", "replace")):
                    target.write(line)

    thread = threading.Thread(target=pump, daemon=True, name="keras-gpt-stderr")
    thread.start()

    def close() -> None:
        sys.stderr.flush()
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # end of input for the pump
        thread.join(timeout=5)

    atexit.register(close)


def run() -> None:
    """The `keras-gpt` console script: `main` with TensorFlow's start-up log lines hidden."""
    if os.environ.get("KERAS_GPT_FILTER_LOGS", "1") != "0":  # 0 shows them (debugging)
        _filter_native_logs()
    main()


if __name__ == "__main__":
    run()
