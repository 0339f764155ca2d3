"""Tokenizer and data-pipeline throughput on tinyshakespeare. Prints one JSON object.

Tokenizers, all built from the same byte-level BPE files (vocabulary 8192,
trained here on the corpus) and checked to give the same ids first:

- keras_gpt `BytePairTokenizer.encode` with its default engine (tiktoken,
  when installed: the `text` extra installs it), and with
  `engine="tokenizers"` (Hugging Face `tokenizers` underneath); both cut a
  long text at safe points and encode the pieces on several threads,
- Hugging Face `tokenizers` used directly (`ByteLevelBPETokenizer.encode`),
- `tiktoken` (OpenAI's Rust BPE) used directly, `encode_ordinary` on the whole
  text (one thread), given the same ranks and GPT-2's regex,
- KerasHub `BytePairTokenizer`, TensorFlow path (GPT-2's regex), on a slice
  because it is slow; and its default Python path (Llama 3's regex, so its
  ids differ slightly: reported, not compared).

Rounds alternate the tokenizers so that load on the machine affects all alike;
the median MB/s (UTF-8 bytes of input per second) is reported. Then the data
pipeline: `prepare` MB/s and the batches/s of `RandomWindows` and
`SequentialWindows` over its memory-mapped shards at bench-small's shape
(batch 8, context 256).

    python benchmarks/tokenization.py
    python benchmarks/tokenization.py --rounds 5 --keras-hub-bytes 20000
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

from machine import cpu_name

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def bytes_to_ranks(vocabulary: dict[str, int], special: str) -> dict[bytes, int]:
    from keras_gpt.tokenizers import bytes_to_unicode

    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    return {
        bytes(to_byte[c] for c in token): i for token, i in vocabulary.items() if token != special
    }


def timed(function, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        function()
    return (time.perf_counter() - start) / repeat


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--vocabulary-size", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--keras-hub-bytes",
        type=int,
        default=20_000,
        help="size of the slice KerasHub's TensorFlow path tokenizes",
    )
    parser.add_argument("--batches", type=int, default=2000, help="batches timed per batch source")
    args = parser.parse_args(argv)

    import numpy as np

    from keras_gpt.data import RandomWindows, SequentialWindows, TokenStream, prepare
    from keras_gpt.tokenizers import BytePairTokenizer

    text = pathlib.Path(args.data).read_text(encoding="utf-8")
    size = len(text.encode("utf-8"))
    work = pathlib.Path(tempfile.mkdtemp(prefix="keras_gpt_bench_"))
    start = time.perf_counter()
    ours = BytePairTokenizer.train([text], args.vocabulary_size)
    train_seconds = time.perf_counter() - start
    ours.save(work / "bpe")
    reference_ids = ours.encode(text)

    from tokenizers.implementations import ByteLevelBPETokenizer

    hf = ByteLevelBPETokenizer.from_file(
        str(work / "bpe" / "vocab.json"), str(work / "bpe" / "merges.txt"), add_prefix_space=False
    )
    hf.add_special_tokens(["<|endoftext|>"])
    ours_hf = BytePairTokenizer(
        ours.vocabulary, ours.merges, ours.special_tokens, engine="tokenizers"
    )
    contenders = {
        "keras_gpt BytePairTokenizer": lambda t: ours.encode(t),
        "keras_gpt BytePairTokenizer (engine='tokenizers')": lambda t: ours_hf.encode(t),
        "huggingface tokenizers": lambda t: hf.encode(t).ids,
    }
    threads = min(8, os.cpu_count() or 1)
    notes = {
        "keras_gpt BytePairTokenizer": f"engine={ours.engine!r}, pieces on up to {threads} threads"
    }
    try:
        import tiktoken

        encoding = tiktoken.Encoding(
            "bench",
            mergeable_ranks=bytes_to_ranks(ours.vocabulary, "<|endoftext|>"),
            pat_str=r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",  # noqa: E501 (GPT-2's split regex)
            special_tokens={"<|endoftext|>": ours.token_to_id("<|endoftext|>")},
        )
        contenders["tiktoken"] = lambda t: encoding.encode_ordinary(t)
        notes["tiktoken"] = f"tiktoken {tiktoken.__version__}"
    except ImportError:
        notes["tiktoken"] = 'not installed (pip install "keras-gpt[text]")'

    for name, encode in contenders.items():
        if encode(text) != reference_ids:
            raise SystemExit(f"{name} gives different ids")

    samples = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, encode in contenders.items():
            samples[name].append(size / timed(lambda: encode(text)) / 1e6)
    results = {name: round(statistics.median(v), 3) for name, v in samples.items()}

    # KerasHub: slow, so a slice in lines (its fastest form), fewer rounds.
    try:
        import keras_hub
        import tensorflow  # noqa: F401  (its GPT-2 path runs in TensorFlow)

        piece = text[: args.keras_hub_bytes]
        lines = piece.splitlines(keepends=True)
        piece_size = len(piece.encode("utf-8"))
        for label, python_path in (
            ("keras_hub BytePairTokenizer (TF path)", False),
            ("keras_hub BytePairTokenizer (Python path)", True),
        ):
            kh = keras_hub.tokenizers.BytePairTokenizer(
                str(work / "bpe" / "vocab.json"),
                str(work / "bpe" / "merges.txt"),
                unsplittable_tokens=["<|endoftext|>"],
                _allow_python_workflow=python_path,
            )
            kh.tokenize(lines[:10])  # trace / build outside the timing
            ids = [np.asarray(r).tolist() for r in kh.tokenize(lines)]
            same = ids == ours.encode_batch(lines)
            speeds = [
                piece_size / timed(lambda: kh.tokenize(lines)) / 1e6
                for _ in range(max(1, args.rounds - 1))
            ]
            results[label] = round(statistics.median(speeds), 4)
            notes[label] = (
                f"keras-hub {keras_hub.__version__}, first {piece_size:,} bytes as "
                f"{len(lines):,} lines; ids equal to ours: {same}"
            )
    except ImportError as error:
        notes["keras_hub"] = f"skipped: {error}"

    fastest_other = max(results[k] for k in contenders if not k.startswith("keras_gpt"))
    ours_speed = results["keras_gpt BytePairTokenizer"]
    kh_speed = results.get("keras_hub BytePairTokenizer (TF path)")

    # Data pipeline: prepare, then batch sources over the shards.
    with open(os.devnull, "w") as quiet:
        stderr, sys.stderr = sys.stderr, quiet
        try:
            prepare_seconds = timed(lambda: prepare(args.data, work / "shards", ours))
        finally:
            sys.stderr = stderr
    train = TokenStream.from_directory(work / "shards", "train")
    val = TokenStream.from_directory(work / "shards", "val")
    random_windows = RandomWindows(train, 256, 8, steps=args.batches, seed=0)
    sequential = SequentialWindows(val, 256, 8)
    random_rate = args.batches / timed(lambda: [random_windows[i] for i in range(args.batches)])
    sequential_rate = len(sequential) / timed(
        lambda: [sequential[i] for i in range(len(sequential))]
    )

    report = {
        "benchmark": "tokenize",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
        "python": platform.python_version(),
        "corpus": f"{pathlib.Path(args.data).name}, {size:,} bytes",
        "vocabulary_size": ours.vocabulary_size,
        "bpe_training_seconds": round(train_seconds, 2),
        "encode_MB_per_s": results,
        "ours_vs_keras_hub_tf": round(ours_speed / kh_speed, 1) if kh_speed else None,
        "fastest_other_vs_ours": round(fastest_other / ours_speed, 2),
        "notes": notes,
        "prepare_MB_per_s": round(size / prepare_seconds / 1e6, 3),
        "batches_per_s (batch 8, context 256)": {
            "RandomWindows": round(random_rate),
            "SequentialWindows": round(sequential_rate),
        },
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
