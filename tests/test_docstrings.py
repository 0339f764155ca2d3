"""Every `>>>` example in keras_gpt's docstrings runs, and shows what it says it shows.

Each docstring with examples is one test: `doctest` runs it in a fresh temporary
working directory, with its module's names and a few a reader would have in hand
(`np`, `keras`, `keras_gpt`; `model`, a tiny GPT on bytes; `tokenizer`, its
`ByteTokenizer`; `ids` and `mask`, a batch of two prompts; `text`; a saved preset
`my_preset` and a `corpus.txt` in the directory). An example without output must
run without error; one with output must print it (ellipsis and whitespace are
lenient, as usual for doctests).

`ILLUSTRATIVE` lists the docstrings whose examples cannot run here, each with why:
they need the network, a GPU or several processes, a long training run, or files
of a user's own. A new example runs unless it is added there.

Backend-independent (an example's output does not depend on the backend, or it
would not be a good example): each runs once, in the PyTorch pass, except the examples
that export (`TENSORFLOW_PASS`).
"""

from __future__ import annotations

import doctest
import importlib
import json
import pkgutil
import shutil

import keras
import numpy as np
import pytest
from helpers import corpus_text, tiny_gpt, tiny_text

import keras_gpt
from keras_gpt.tokenizers import ByteTokenizer

#: Docstring (qualified name) -> why its examples do not run in this test.
FRAGMENT = "a fragment of a layer's or a step's body (names from its surroundings)"
ILLUSTRATIVE: dict[str, str] = {
    "keras_gpt.backend.compile.compile_function": FRAGMENT,
    "keras_gpt.backend.layers.call_sublayer": FRAGMENT,
    "keras_gpt.backend.ops.dense_gradient": FRAGMENT,
    "keras_gpt.backend.ops.int8_matmul": FRAGMENT,
    "keras_gpt.backend.ops.write_at": FRAGMENT,
    "keras_gpt.backend.replicas.replica_index": FRAGMENT,
    "keras_gpt.backend.replicas.replica_scaled": FRAGMENT,
    "keras_gpt.distribution.jax.configure": "JAX with 8 devices",
    "keras_gpt.distribution.jax.initialize": "several JAX hosts",
    "keras_gpt.distribution.jax.variable_layouts": "JAX with a device mesh",
    "keras_gpt.distribution.tensorflow.tf_strategy": "a user's tf.distribute setup",
    "keras_gpt.distribution.torch.ddp_fit": "torchrun (several processes)",
    "keras_gpt.distribution.torch.torch_init_process_group": "torchrun (several processes)",
    "keras_gpt.model.gpt.GPT.get_layout_map": "8 devices",
    "keras_gpt.model.layout.layout_map": "8 devices",
    "keras_gpt.evaluation": "GPT-2 from the Hugging Face Hub (network)",
    "keras_gpt.evaluation.harness.KerasGPTLM": "GPT-2 from the Hub and an lm-eval task download",
    "keras_gpt.model.gpt.GPT.from_preset": "its second line downloads GPT-2 (network)",
    "keras_gpt.presets.formats.keras_hub.load_keras_hub": "a downloaded KerasHub preset",
    "keras_gpt.tokenizers.byte_pair_tokenizer.BytePairTokenizer": "GPT-2's vocab.json/merges.txt",
    "keras_gpt.tokenizers.byte_pair_tokenizer.BytePairTokenizer.from_files": "GPT-2's files",
    "keras_gpt.cli.evaluate_command": "a pretraining run directory",
    "keras_gpt.cli.export_command": "a TensorFlow child process (slow); tests/test_cli.py runs it",
    "keras_gpt.cli.serve_command": "a server that blocks",
    "keras_gpt.serving": "a server that blocks",
    "keras_gpt.serving.app.create_app": "a server that blocks",
    "keras_gpt.serving.server.serve": "a server that blocks",
    "keras_gpt.training.checkpoints.latest_checkpoint": "a training run's checkpoints",
    "keras_gpt.training.finetune.finetune": "two fine-tuning runs (minutes)",
    "keras_gpt.training.pretrain.pretrain": "a full pretraining run (minutes)",
}


def _docstrings() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    found = {}
    for info in pkgutil.walk_packages(keras_gpt.__path__, "keras_gpt."):
        module = importlib.import_module(info.name)
        for test in finder.find(module, info.name):
            # A function re-exported by a package is found twice: keep it at home.
            if test.examples and getattr(test, "filename", None) == module.__file__:
                found.setdefault(test.name, test)
    return [found[name] for name in sorted(found)]


DOCSTRINGS = _docstrings()

#: Examples that export a model run in the TensorFlow pass: there export runs in the
#: process, where JAX and PyTorch hand the model to a TensorFlow child process (~20 s
#: more an example on this suite's machines; that route is test_export.py's).
TENSORFLOW_PASS = {"keras_gpt.export.saved_model.export", "keras_gpt.export.onnx.export_onnx"}


def _example(test: doctest.DocTest):
    if test.name in TENSORFLOW_PASS:
        runs_here = keras.backend.backend() == "tensorflow"
        mark = pytest.mark.skipif(not runs_here, reason="an export example: TensorFlow pass")
    else:
        mark = pytest.mark.backend_independent
    return pytest.param(test, marks=mark, id=test.name)


@pytest.mark.backend_independent
def test_every_illustrative_docstring_exists():
    names = {test.name for test in DOCSTRINGS}
    assert not set(ILLUSTRATIVE) - names, "remove these from ILLUSTRATIVE"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The files the examples name, made once; each test gets a copy."""
    from keras_gpt.data import prepare

    root = tmp_path_factory.mktemp("docstrings")
    reader_model().save_to_preset(str(root / "my_preset"), tokenizer=ByteTokenizer())
    files = {
        "corpus.txt": tiny_text(),
        "valid.txt": tiny_text(30),
        "input.txt": corpus_text(),  # tinyshakespeare, or a stand-in of its length
        "train.jsonl": "".join(
            json.dumps({"prompt": f"say {w}", "response": w}) + "\n" for w in ("hi", "bye") * 8
        ),
        "books/a.txt": "A book.\n",
        "books/b.txt": "Another book.\n",
        "extra/web.jsonl": json.dumps({"text": "A web page."}) + "\n",
        "corpus/a.txt": "a" * 119 + "\n",
        "corpus/b.txt": "b" * 56 + "\n",
        "hellaswag_val.jsonl": json.dumps(
            {"context": "The fox", "endings": [" jumps.", " sleeps."], "label": 0}
        )
        + "\n",
        "lambada_test.jsonl": json.dumps({"text": "the quick brown fox jumps over the dog"}) + "\n",
    }
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content, encoding="utf-8")
    prepare(str(root / "corpus.txt"), str(root / "data" / "tiny"), ByteTokenizer(), progress=False)
    return root


def reader_model():
    """The `model` examples use: small, on bytes, with GPT-2's context (for strides of 512)."""
    return tiny_gpt(hidden_dim=64, max_sequence_length=1024)


@pytest.fixture
def reader(workspace, tmp_path, monkeypatch):
    """A copy of the workspace as the working directory, and the names examples use."""
    root = tmp_path / "work"
    shutil.copytree(workspace, root)
    monkeypatch.chdir(root)
    return dict(
        np=np,
        keras=keras,
        keras_gpt=keras_gpt,
        model=reader_model(),
        tokenizer=ByteTokenizer(),
        ids=np.array([[72, 105, 32, 116], [0, 0, 72, 105]], "int32"),
        mask=np.array([[1, 1, 1, 1], [0, 0, 1, 1]], "int32"),
        text=tiny_text(3),
    )


@pytest.mark.parametrize("test", [_example(t) for t in DOCSTRINGS if t.name not in ILLUSTRATIVE])
def test_docstring_examples_run(test, reader):
    test.globs = {**test.globs, **reader}
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    report = []
    runner.run(test, out=report.append, clear_globs=False)
    assert runner.failures == 0, "".join(report)[-3000:]
