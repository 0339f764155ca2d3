"""Pretraining settings that change what a run does, each seen in what the run leaves:
`data = "shakespeare"` as the shipped recipes use it, `dtype = "mixed_bfloat16"`
and `tokenizer` naming a saved BPE tokenizer's directory.

The runs are tiny (a 1-block, 16-wide model, a few steps): what is checked is where
the settings lead, not what the model learns.
"""

import numpy as np
import pytest
from helpers import ROOT, SHAKESPEARE, corpus_text, tiny_config, tiny_text

from keras_gpt.data import TokenStream
from keras_gpt.model import GPT
from keras_gpt.presets import load_tokenizer
from keras_gpt.tokenizers import BytePairTokenizer
from keras_gpt.training import read_metrics
from keras_gpt.training.pretrain import load_config, pretrain

# What each run checks is where a setting leads, which no backend changes: run once.
pytestmark = pytest.mark.backend_independent

TINY_MODEL = dict(
    num_layers=1, num_heads=2, hidden_dim=16, sequence_length=16, batch_size=4, max_steps=4,
    eval_interval=2, eval_batches=2, final_eval_batches=2, warmup_steps=1, peak_flops=1e9,
    sample_tokens=0, verbose=0,
)  # fmt: skip


def test_shakespeare_recipe_in_mixed_bfloat16(tmp_path, monkeypatch):
    """The shipped nanoGPT config, shrunk: `data = "shakespeare"` reads the file
    KERAS_GPT_SHAKESPEARE names (tinyshakespeare here, a stand-in of the same size
    where it is missing), and the model trains in mixed bfloat16."""
    if SHAKESPEARE.is_file():
        corpus = SHAKESPEARE
    else:
        corpus = tmp_path / "stand_in.txt"
        corpus.write_text(corpus_text(), encoding="utf-8")
    monkeypatch.setenv("KERAS_GPT_SHAKESPEARE", str(corpus))
    config = load_config(ROOT / "recipes" / "configs" / "shakespeare_char.toml")
    assert (config.data, config.tokenizer) == ("shakespeare", "char")
    out = tmp_path / "run"
    overrides = dict(TINY_MODEL, out=str(out), dtype="mixed_bfloat16")
    summary = pretrain(config.update(overrides))

    text = corpus.read_text(encoding="utf-8")
    tokens = out / "data" / "tokens"
    split = [len(TokenStream.from_directory(tokens, s)) for s in ("train", "val")]
    assert sum(split) == len(text)  # every character of the file, one token each
    tokenizer = load_tokenizer(str(out / "best"))
    assert tokenizer.vocabulary_size == len(set(text))
    assert (
        tokenizer.decode(TokenStream.from_directory(tokens, "train").read(0, 40).tolist())
        == text[:40]
    )

    model = GPT.from_preset(str(out / "best"))
    assert model.dtype_policy.name == "mixed_bfloat16"
    assert {str(w.dtype) for w in model.trainable_weights} == {"float32"}
    logits = model(np.array([[1, 2, 3]], "int32"), training=False)
    assert "bfloat16" in str(logits.dtype)

    assert [r["step"] for r in read_metrics(out)] == [2, 4] and summary["steps"] == 4


def test_a_saved_bpe_tokenizer_directory(tmp_path):
    """`tokenizer = DIRECTORY`: the run tokenises with that BPE (documents ended by its
    <|endoftext|>), sizes the model to its vocabulary and ships it in best/."""
    bpe = BytePairTokenizer.train([tiny_text()], vocabulary_size=300)
    bpe.save(tmp_path / "bpe")
    out = tmp_path / "run"
    config = tiny_config(tmp_path, tokenizer=str(tmp_path / "bpe"), max_steps=2)
    pretrain(config)

    text = tiny_text()
    train = TokenStream.from_directory(out / "data" / "tokens", "train")
    val = TokenStream.from_directory(out / "data" / "tokens", "val")
    stream = np.concatenate([train.read(0, len(train)), val.read(0, len(val))]).tolist()
    assert stream == bpe.encode(text) + [bpe.token_to_id("<|endoftext|>")]
    assert GPT.from_preset(str(out / "best")).vocabulary_size == bpe.vocabulary_size > 257
    shipped = load_tokenizer(str(out / "best"))
    assert isinstance(shipped, BytePairTokenizer) and shipped.encode(text) == bpe.encode(text)


def test_tensorboard_logs_the_loss(tmp_path):
    """`tensorboard = true`: Keras' TensorBoard callback writes event files under
    out/tensorboard whose last training loss is the last round's in metrics.jsonl."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    out = tmp_path / "run"
    pretrain(tiny_config(tmp_path, tensorboard=True, max_steps=4, eval_interval=2))
    events = EventAccumulator(str(out / "tensorboard" / "train"), size_guidance={"tensors": 0})
    events.Reload()
    logged = [float(make_ndarray(e.tensor_proto)) for e in events.Tensors("epoch_loss")]
    assert logged, events.Tags()
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [2, 4]
    # The second round is one `fit` call: its logged epoch loss is the row's train loss.
    np.testing.assert_allclose(logged[-1], rows[-1]["train_loss"], rtol=1e-6)
