"""Data: reading corpora, `prepare` (streaming, split, skip, atomicity) and window batches."""

import json
import pathlib
import pickle

import keras
import numpy as np
import pytest
from conftest import TINY
from helpers import SHAKESPEARE, corpus_text, shakespeare_text

import keras_gpt
from keras_gpt.data import (
    RandomWindows,
    SequentialWindows,
    TokenStream,
    input_files,
    prepare,
    read_documents,
    read_metadata,
)
from keras_gpt.data.documents import stream_pieces
from keras_gpt.tokenizers import BytePairTokenizer, ByteTokenizer, CharTokenizer

HOSTILE = (
    "emoji 🤖👩‍👩‍👧 e\u0301 中文字 \t\n\n" + " " * 40 + "x\x00\x07\u2028 <|endoftext|> it's "
    "a\u00a0b  \r\n end"
)


@pytest.fixture(scope="module")
def bpe() -> BytePairTokenizer:
    return BytePairTokenizer.train([corpus_text()[:30_000], HOSTILE], vocabulary_size=300)


@pytest.fixture
def corpus(tmp_path) -> pathlib.Path:
    """A folder with two text files (one in a subfolder), a JSONL file and a hidden file."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text(corpus_text()[:20_000], encoding="utf-8")
    (root / "sub" / "b.md").write_text(HOSTILE * 30, encoding="utf-8")
    records = [{"text": "first record\n"}, {"text": HOSTILE, "id": 2}, {"text": ""}]
    (root / "c.jsonl").write_text(
        "\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8"
    )
    (root / ".hidden").write_text("not read", encoding="utf-8")
    return root


def expected_ids(tokenizer, documents, end_of_text="<|endoftext|>") -> np.ndarray:
    ids = []
    for text in documents:
        ids += tokenizer.encode(text)
        if end_of_text is not None:
            ids.append(tokenizer.token_to_id(end_of_text))
    return np.array(ids)


def all_tokens(directory) -> np.ndarray:
    train = TokenStream.from_directory(directory, "train")
    val = TokenStream.from_directory(directory, "val")
    return np.concatenate([train.read(0, len(train)), val.read(0, len(val))])


# --- reading inputs ----------------------------------------------------------------------


def test_inputs_files_folders_globs_and_jsonl(corpus):
    files = input_files(corpus)
    assert [f.relative_to(corpus).as_posix() for f in files] == ["a.txt", "c.jsonl", "sub/b.md"]
    assert input_files([str(corpus / "**" / "*.md"), corpus / "a.txt"]) == [
        corpus / "sub" / "b.md",
        corpus / "a.txt",
    ]
    documents = list(read_documents(corpus))
    assert documents == [corpus_text()[:20_000], "first record\n", HOSTILE, "", HOSTILE * 30]


def test_large_files_stream_in_bounded_pieces(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text(corpus_text() * 2, encoding="utf-8")  # 2.2 MB
    pieces = list(stream_pieces(path, max_chars=4096))
    texts = [text for text, _, _ in pieces]
    assert "".join(texts) == corpus_text() * 2
    assert max(map(len, texts)) <= 4096  # memory per step does not grow with the file
    assert sum(read for _, _, read in pieces) == path.stat().st_size
    assert [ends for _, ends, _ in pieces].count(True) == 1 and pieces[-1][1]


def test_input_errors_name_the_input(tmp_path):
    with pytest.raises(ValueError, match="nothing-here"):
        input_files(tmp_path / "nothing-here*.txt")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text field"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        list(read_documents(bad))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt"):
        list(read_documents(latin1))


# --- prepare -------------------------------------------------------------------------------


def test_prepare_char_shakespeare_matches_nanogpt(tmp_path):
    text = shakespeare_text()
    tokenizer = CharTokenizer.from_text(text)
    metadata = prepare(SHAKESPEARE, tmp_path / "out", tokenizer, end_of_text=None, progress=False)
    # nanoGPT's data/shakespeare_char/prepare.py: 90/10 split of the characters.
    assert metadata["splits"]["train"]["tokens"] == 1_003_854
    assert metadata["splits"]["val"]["tokens"] == 111_540
    assert metadata["dtype"] == "uint16" and metadata["tokens"] == len(text)
    train = np.fromfile(tmp_path / "out" / "train_00000.bin", dtype=np.uint16)
    np.testing.assert_array_equal(train, tokenizer.encode(text[:1_003_854]))
    assert keras_gpt.tokenizers.Tokenizer.load(tmp_path / "out" / "tokenizer").encode(
        "hi"
    ) == tokenizer.encode("hi")


@pytest.mark.parametrize("kind", ["bpe", "byte"])
def test_prepare_streams_in_pieces_and_shards_without_changing_tokens(tmp_path, corpus, bpe, kind):
    tokenizer = bpe if kind == "bpe" else ByteTokenizer()
    # Tiny pieces and shards: the streamed result must equal encoding each whole document.
    metadata = prepare(
        corpus, tmp_path / "out", tokenizer, shard_tokens=997, chunk_chars=64, progress=False
    )
    expected = expected_ids(tokenizer, read_documents(corpus))
    np.testing.assert_array_equal(all_tokens(tmp_path / "out"), expected)
    assert metadata["documents"] == 5 and metadata["tokens"] == len(expected)
    assert len(metadata["splits"]["train"]["shards"]) > 3
    assert metadata["splits"]["val"]["tokens"] == len(expected) - int(len(expected) * 0.9)


def test_prepare_uses_uint32_for_large_vocabularies(tmp_path):
    characters = [chr(0x10000 + i) for i in range(70_000)]
    tokenizer = CharTokenizer(characters)
    text = "".join(characters[::-997]) * 3
    (tmp_path / "wide.txt").write_text(text, encoding="utf-8")
    metadata = prepare(
        tmp_path / "wide.txt",
        tmp_path / "out",
        tokenizer,
        end_of_text=None,
        validation_fraction=0.0,
        progress=False,
    )
    assert metadata["dtype"] == "uint32"
    np.testing.assert_array_equal(all_tokens(tmp_path / "out"), tokenizer.encode(text))
    assert all_tokens(tmp_path / "out").max() > 65_535


def test_second_run_is_skipped_unless_inputs_change(tmp_path, corpus):
    out = tmp_path / "out"
    first = prepare(corpus, out, ByteTokenizer(), progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.bin")}
    assert prepare(corpus, out, ByteTokenizer(), progress=False) == first
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.bin")} == stamps
    with open(corpus / "a.txt", "a", encoding="utf-8") as f:
        f.write("one more line\n")
    second = prepare(corpus, out, ByteTokenizer(), progress=False)
    assert second["fingerprint"] != first["fingerprint"]
    assert second["tokens"] == first["tokens"] + len("one more line\n")
    # Another tokenizer or split is another dataset too.
    third = prepare(corpus, out, ByteTokenizer(), validation_fraction=0.2, progress=False)
    assert third["fingerprint"] != second["fingerprint"]


def test_interrupted_run_leaves_nothing_that_reads_as_valid(tmp_path, corpus):
    out = tmp_path / "out"
    prepare(corpus, out, ByteTokenizer(), progress=False)
    # A file that is not UTF-8 stops the next run halfway through its inputs.
    (corpus / "z.txt").write_bytes(b"fine text " * 1000 + b"\xff\xfe broken")
    with pytest.raises(ValueError, match="z.txt"):
        prepare(corpus, out, ByteTokenizer(), shard_tokens=500, chunk_chars=100, progress=False)
    assert not (out / "metadata.json").exists()
    assert not list(out.glob("*.bin")) and not list(out.glob("*.tmp"))
    with pytest.raises(ValueError, match="interrupted"):
        TokenStream.from_directory(out)
    # A killed run leaves parts under temporary names; the next run removes them.
    (out / "part_00000.bin.tmp").write_bytes(b"half")
    (corpus / "z.txt").unlink()
    prepare(corpus, out, ByteTokenizer(), progress=False)
    assert not list(out.glob("*.tmp"))


def test_truncated_shard_is_detected(tmp_path, corpus):
    out = tmp_path / "out"
    prepare(corpus, out, ByteTokenizer(), progress=False)
    shard = out / "train_00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(ValueError, match="train_00000.bin"):
        read_metadata(out)


def test_prepare_argument_errors(tmp_path, corpus):
    with pytest.raises(ValueError, match="validation_fraction"):
        prepare(corpus, tmp_path / "o", ByteTokenizer(), validation_fraction=1.0)
    with pytest.raises(ValueError, match="end_of_text='<|eos|>'"):
        prepare(corpus, tmp_path / "o", ByteTokenizer(), end_of_text="<|eos|>")


# --- batches -------------------------------------------------------------------------------


def test_random_windows_are_seeded_and_backend_independent():
    tokens = np.arange(1000)
    ds = RandomWindows(tokens, sequence_length=4, batch_size=3, steps=10, seed=7)
    x, y = ds[2]
    # NumPy's generator seeded by (seed, batch index): fixed numbers on every backend.
    starts = np.random.default_rng([7, 2]).integers(0, 996, 3)
    np.testing.assert_array_equal(x, np.stack([tokens[s : s + 4] for s in starts]))
    np.testing.assert_array_equal(y, x + 1)
    assert x.dtype == np.int32 and x.shape == (3, 4)
    np.testing.assert_array_equal(RandomWindows(tokens, 4, 3, 10, seed=7)[2][0], x)
    assert not np.array_equal(RandomWindows(tokens, 4, 3, 10, seed=8)[2][0], x)
    # Shards are one sequence: the same windows however the tokens are cut.
    sharded = RandomWindows([tokens[:333], tokens[333:334], tokens[334:]], 4, 3, 10, seed=7)
    for i in range(10):
        np.testing.assert_array_equal(sharded[i][0], ds[i][0])


def test_sequential_windows_walk_the_split_once(tmp_path):
    tokens = np.arange(103)
    ds = SequentialWindows([tokens[:50], tokens[50:]], sequence_length=10, batch_size=4)
    assert len(ds) == 3  # 10 windows: batches of 4, 4, 2
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    np.testing.assert_array_equal(np.concatenate(ys).ravel(), tokens[1:101])
    np.testing.assert_array_equal(np.concatenate(xs).ravel(), tokens[0:100])
    assert len(SequentialWindows(tokens, 10, 4, max_batches=2)) == 2
    with pytest.raises(IndexError):
        ds[3]


def test_spread_windows_sample_the_whole_split_evenly():
    tokens = np.arange(1001)  # 100 windows of 10
    ds = SequentialWindows(tokens, sequence_length=10, batch_size=4, spread=7)
    assert ds.windows == 7 and len(ds) == 2  # batches of 4 and 3
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    starts = np.concatenate(xs)[:, 0]
    # Whole windows of the unspread walk (starts on multiples of 10), each read whole ...
    assert all(s % 10 == 0 for s in starts)
    np.testing.assert_array_equal(np.concatenate(ys), np.concatenate(xs) + 1)
    # ... from the start to the end of the split, never two from one stretch.
    assert starts[0] == 0 and starts[-1] >= 10 * (100 - 100 // 7 - 1)  # within a gap of the end
    gaps = np.diff(starts)
    assert gaps.min() >= 10 * (100 // 7) and gaps.max() <= 10 * (100 // 7 + 1)
    # Asking for at least every window reads them all, in order.
    all_of_them = SequentialWindows(tokens, 10, 4, spread=500)
    assert all_of_them.windows == 100 and all_of_them[0][0][0, 0] == 0


def test_windows_reject_short_token_arrays():
    with pytest.raises(ValueError, match="sequence_length=8"):
        RandomWindows(np.arange(8), sequence_length=8, batch_size=2, steps=1)


def test_token_stream_pickles_as_paths(tmp_path, corpus):
    prepare(corpus, tmp_path / "out", ByteTokenizer(), progress=False)
    stream = TokenStream.from_directory(tmp_path / "out")
    payload = pickle.dumps(stream)
    assert len(payload) < 1000 < len(stream)
    copy = pickle.loads(payload)
    np.testing.assert_array_equal(copy.read(0, len(copy)), stream.read(0, len(stream)))


def test_fit_and_evaluate_from_prepared_shards(tmp_path, corpus):
    tokenizer = CharTokenizer.from_text(read_documents(corpus))
    prepare(corpus, tmp_path / "out", tokenizer, end_of_text=None, progress=False)
    length = TINY["max_sequence_length"]
    train = RandomWindows(TokenStream.from_directory(tmp_path / "out"), length, 4, steps=2, seed=0)
    val = SequentialWindows(
        TokenStream.from_directory(tmp_path / "out", "val"), length, 4, max_batches=1
    )
    model = keras_gpt.GPT(**{**TINY, "vocabulary_size": tokenizer.vocabulary_size})
    model.compile(optimizer="adamw")
    history = model.fit(train, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert np.isfinite(model.evaluate(val, verbose=0))


def test_as_tf_dataset_gives_the_same_batches():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.data is checked in the TensorFlow pass")
    pytest.importorskip("tensorflow")
    tokens = np.arange(500)
    for ds in (RandomWindows(tokens, 8, 4, steps=5, seed=3), SequentialWindows(tokens, 8, 4)):
        batches = list(ds.as_tf_dataset().as_numpy_iterator())
        assert len(batches) == len(ds)
        for i, (x, y) in enumerate(batches):
            np.testing.assert_array_equal(x, ds[i][0])
            np.testing.assert_array_equal(y, ds[i][1])


class _NestedBatches(keras.utils.PyDataset):
    """Instruction-style batches: ({"token_ids", "padding_mask"}, labels, weights)."""

    def __len__(self):
        return 3

    def __getitem__(self, i):
        x = np.arange(12, dtype="int32").reshape(3, 4) + i
        return {"token_ids": x, "padding_mask": x > 2}, x + 1, np.ones((3, 4), "float32") * i


def test_fit_input_on_tensorflow_keeps_batches_and_turns_autotuning_off():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.data is checked in the TensorFlow pass")
    from keras_gpt.backend import fit_input

    data = _NestedBatches()
    ds = fit_input(data)
    # Autotuning made each fit/evaluate end at the autotuner's next wake-up
    # (keras_gpt.backend.tf_dataset): the pipeline must not use it.
    assert ds.options().autotune.enabled is False
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == len(data)
    for i, (inputs, labels, weights) in enumerate(batches):
        expected = data[i]
        np.testing.assert_array_equal(inputs["token_ids"], expected[0]["token_ids"])
        np.testing.assert_array_equal(inputs["padding_mask"], expected[0]["padding_mask"])
        np.testing.assert_array_equal(labels, expected[1])
        np.testing.assert_array_equal(weights, expected[2])
