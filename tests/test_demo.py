"""`make demo`'s data path: Python's own standard-library source as the corpus, bytes as
tokens, and a few steps of the demo config on it through `keras-gpt pretrain`."""

import ast
import io
import json
import tokenize

import keras
import pytest
from helpers import ROOT

from keras_gpt.cli import main
from keras_gpt.data.corpus import stdlib_corpus
from keras_gpt.training import read_metrics
from keras_gpt.training.pretrain import load_config

DEMO = ROOT / "recipes" / "configs" / "demo.toml"


@pytest.mark.backend_independent  # plain Python: the corpus is text
def test_stdlib_corpus_is_python_source_and_the_same_each_time():
    text = stdlib_corpus(max_bytes=200_000)
    assert len(text.encode("utf-8")) >= 200_000
    ast.parse(text)  # whole modules of Python, one after another
    assert "def " in text and "class " in text
    assert stdlib_corpus(max_bytes=200_000) == text


@pytest.mark.backend_independent  # plain Python: the corpus is text
def test_code_only_corpus_keeps_the_code_and_drops_docstrings_and_comments():
    full = stdlib_corpus(max_bytes=200_000)
    code = stdlib_corpus(max_bytes=200_000, code_only=True)
    tree = ast.parse(code)
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    assert len(functions) > 100
    # No module, class or function starts with a string statement any more ...
    for node in [tree, *functions, *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef))]:
        first = node.body[0]
        assert not (
            isinstance(first, ast.Expr) and isinstance(getattr(first.value, "value", None), str)
        )
    tokens = tokenize.generate_tokens(io.StringIO(code).readline)
    assert not any(t.type == tokenize.COMMENT for t in tokens)
    # ... while the full corpus has comments, and no function of it is lost (the code
    # of the same 200 kB spans more files).
    assert any(
        t.type == tokenize.COMMENT for t in tokenize.generate_tokens(io.StringIO(full).readline)
    )
    full_names = {n.name for n in ast.walk(ast.parse(full)) if isinstance(n, ast.FunctionDef)}
    assert full_names <= {f.name for f in functions}


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the data path does not depend on the backend: the TensorFlow pass (make demo's "
    "default BACKEND, with the config's XLA setting) runs the demo config once",
)
def test_demo_config_trains_on_the_stdlib_and_writes_its_outputs(tmp_path, capsys):
    config = load_config(DEMO)
    assert (config.data, config.tokenizer) == ("stdlib-code", "byte")
    # make demo runs on TensorFlow unless BACKEND says otherwise: this pass.
    assert "BACKEND ?= tensorflow" in (ROOT / "Makefile").read_text()
    out = tmp_path / "demo"
    # The demo's data settings as they are; a smaller model and two steps.
    main(
        ["pretrain", "--config", str(DEMO), "--out", str(out), "--overwrite"]
        + "--num-layers 1 --num-heads 2 --hidden-dim 16 --sequence-length 32 --batch-size 2 "
        "--max-steps 2 --eval-interval 2 --eval-batches 1 --sample-tokens 8 "
        "--peak-flops 1e9".split()
    )
    corpus = (out / "data" / "stdlib-code.txt").read_bytes()
    # The code-only corpus at its default size (up to 8 MB of whole modules; the code of
    # Python 3.11's whole standard library is 6.4 MB): it opens with the first module's
    # code (building the corpus again here took ~20 s).
    assert corpus.startswith(stdlib_corpus(max_bytes=1, code_only=True).encode("utf-8"))
    assert 4_000_000 < len(corpus) < 9_000_000
    metadata = json.loads((out / "data" / "tokens" / "metadata.json").read_text())
    # Byte tokens: one a byte, and the end-of-text token after the one document.
    assert metadata["tokens"] == len(corpus) + 1
    assert [row["step"] for row in read_metrics(out)] == [2]
    assert load_config(out / "config.toml").data == "stdlib-code"
    assert (out / "best" / "config.json").is_file()
    assert "sample:\ndef " in capsys.readouterr().out  # the demo's prompt, continued
