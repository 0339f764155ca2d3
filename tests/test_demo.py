"""`make demo`'s data path: Python's own standard-library source as the corpus, bytes as
tokens, and a few steps of the demo config on it through `keras-gpt pretrain`."""

import ast
import json

import keras
import pytest
from helpers import ROOT

from keras_gpt.cli import main
from keras_gpt.data.corpus import stdlib_corpus
from keras_gpt.training import read_metrics
from keras_gpt.training.pretrain import load_config

DEMO = ROOT / "recipes" / "configs" / "demo.toml"


def test_stdlib_corpus_is_python_source_and_the_same_each_time():
    text = stdlib_corpus(max_bytes=200_000)
    assert len(text.encode("utf-8")) >= 200_000
    ast.parse(text)  # whole modules of Python, one after another
    assert "def " in text and "class " in text
    assert stdlib_corpus(max_bytes=200_000) == text


@pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="the data path does not depend on the backend: the torch pass (make demo's "
    "default) runs the demo config once",
)
def test_demo_config_trains_on_the_stdlib_and_writes_its_outputs(tmp_path, capsys):
    config = load_config(DEMO)
    assert (config.data, config.tokenizer) == ("stdlib", "byte")
    out = tmp_path / "demo"
    # The demo's data settings as they are; a smaller model and two steps.
    main(
        ["pretrain", "--config", str(DEMO), "--out", str(out), "--overwrite"]
        + "--num-layers 1 --num-heads 2 --hidden-dim 16 --sequence-length 32 --batch-size 2 "
        "--max-steps 2 --eval-interval 2 --eval-batches 1 --sample-tokens 8 "
        "--peak-flops 1e9".split()
    )
    corpus = (out / "data" / "stdlib.txt").read_bytes()
    assert corpus == stdlib_corpus().encode("utf-8")
    metadata = json.loads((out / "data" / "tokens" / "metadata.json").read_text())
    # Byte tokens: one a byte, and the end-of-text token after the one document.
    assert metadata["tokens"] == len(corpus) + 1
    assert [row["step"] for row in read_metrics(out)] == [2]
    assert load_config(out / "config.toml").data == "stdlib"
    assert (out / "best" / "config.json").is_file()
    assert "sample:\ndef " in capsys.readouterr().out  # the demo's prompt, continued
