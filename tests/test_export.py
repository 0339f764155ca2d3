"""Export for serving, checked from the serving side.

A tiny seeded GPT is exported once per backend (TensorFlow and JAX directly,
PyTorch through the TensorFlow child process), then a fresh process running
plain TensorFlow (tests/export_worker.py, which never imports keras_gpt)
loads the SavedModel and calls both signatures.

Tolerances: logits within 1e-4 of the source model (measured ~3e-8: the same
float32 ops, summed in a slightly different order). Generated ids must match
`GPT.generate` token for token, greedy and sampled: the decode loop and the
sampler noise are the same code, and the tiny model's top logit gaps are far
larger than the rounding differences.
"""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers import run_job

import keras_gpt
from keras_gpt.backend import compile_function, weight_values
from keras_gpt.export import GENERATE_INPUTS, LOGITS_INPUTS, SIGNATURES, export, export_onnx
from keras_gpt.generation.samplers import DynamicSampler, get_sampler

CONFIG = dict(
    vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16, max_sequence_length=24, seed=0
)
LIMIT = 8  # the export-time maximum of max_new_tokens
STOPS = [7]
PROMPTS = [[5, 9, 2, 33, 17, 8], [40, 1], [12, 12, 3]]
WORKER = os.path.join(os.path.dirname(__file__), "export_worker.py")

# Keras-side settings of each sampled request: (generate kwargs, signature settings).
SAMPLED = {
    "top_k_top_p": (
        dict(sampler="top_p", temperature=0.7, top_k=5, top_p=0.9, seed=6),
        dict(temperature=0.7, top_k=5, top_p=0.9, seed=6),
    ),
}
GREEDY = dict(temperature=0.0, top_k=0, top_p=1.0, seed=0)


def padded(prompts, left=False):
    width = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), width), "int32")
    mask = np.zeros((len(prompts), width), "int32")
    for row, prompt in enumerate(prompts):
        cols = slice(width - len(prompt), width) if left else slice(0, len(prompt))
        ids[row, cols], mask[row, cols] = prompt, 1
    return ids, mask


def requests() -> dict:
    ids, mask = padded(PROMPTS)
    left_ids, left_mask = padded(PROMPTS, left=True)
    full = np.arange(CONFIG["max_sequence_length"])[None] % CONFIG["vocabulary_size"]

    def gen(ids, mask, max_new_tokens=LIMIT, **settings):
        return {
            "signature": "generate",
            "inputs": dict(
                token_ids=ids.tolist(),
                padding_mask=mask.tolist(),
                max_new_tokens=max_new_tokens,
                **(settings or GREEDY),
            ),
        }

    out = {
        "logits": {
            "signature": "logits",
            "inputs": dict(token_ids=ids.tolist(), padding_mask=mask.tolist()),
        },
        "logits_full": {
            "signature": "logits",
            "inputs": dict(token_ids=full.tolist(), padding_mask=np.ones_like(full).tolist()),
        },
        "greedy": gen(ids, mask),
        "greedy_left_padded": gen(left_ids, left_mask),
        "greedy_3": gen(ids, mask, max_new_tokens=3),
        "greedy_0": gen(ids, mask, max_new_tokens=0),
        "too_many": gen(ids, mask, max_new_tokens=LIMIT + 1),
        "bad_id": gen(ids + 50, mask),
        "empty_row": gen(ids, mask * np.array([[1], [0], [1]], "int32")),
    }
    for name, (_, settings) in SAMPLED.items():
        out[name] = gen(ids, mask, **{**GREEDY, **settings})
    return out


@pytest.fixture(scope="module")
def model():
    return keras_gpt.GPT(**CONFIG)


@pytest.fixture(scope="module")
def served(model, tmp_path_factory):
    """Exports `model`, then runs every request in a plain-TensorFlow process."""
    root = tmp_path_factory.mktemp("export")
    path = str(root / "gpt" / "1")
    assert export(model, path, max_new_tokens=LIMIT, stop_token_ids=STOPS) == path
    with open(root / "requests.json", "w") as f:
        json.dump(requests(), f)
    # Plain TensorFlow, without keras_gpt's backend choice.
    run_job([WORKER, path, root / "requests.json", root / "results.npz"], backend=None)
    return path, dict(np.load(root / "results.npz"))


def test_signatures_listed(served):
    path, results = served
    assert set(results["signatures"]) == {*SIGNATURES, "serving_default"}
    assert not [p for p in os.listdir(os.path.dirname(path)) if "partial" in p]
    with open(os.path.join(path, "assets.extra", "keras_gpt_export.json")) as f:
        metadata = json.load(f)
    assert metadata["max_new_tokens"] == LIMIT and metadata["stop_token_ids"] == STOPS


def test_logits_match_source_model(model, served):
    _, results = served
    ids, mask = padded(PROMPTS)
    expected = keras.ops.convert_to_numpy(model({"token_ids": ids, "padding_mask": mask}))
    assert results["logits/logits"].dtype == np.float32
    np.testing.assert_allclose(results["logits/logits"], expected, atol=1e-4, rtol=0)
    full = np.arange(CONFIG["max_sequence_length"])[None].astype("int32")
    np.testing.assert_allclose(
        results["logits_full/logits"], keras.ops.convert_to_numpy(model(full)), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize(
    "request_name,max_new_tokens",
    [("greedy", LIMIT), ("greedy_left_padded", LIMIT), ("greedy_3", 3), ("greedy_0", 0)],
)
def test_greedy_generate_matches_keras(model, served, request_name, max_new_tokens):
    _, results = served
    ids, lengths = model.generate(
        PROMPTS, max_new_tokens=max_new_tokens, stop_token_ids=STOPS, return_lengths=True
    )
    assert results[f"{request_name}/token_ids"].dtype == np.int32
    np.testing.assert_array_equal(results[f"{request_name}/token_ids"], ids)
    np.testing.assert_array_equal(results[f"{request_name}/lengths"], lengths)


@pytest.mark.parametrize("name", sorted(SAMPLED))
def test_sampled_generate_matches_keras(model, served, name):
    _, results = served
    kwargs, _ = SAMPLED[name]
    ids, lengths = model.generate(
        PROMPTS, max_new_tokens=LIMIT, stop_token_ids=STOPS, return_lengths=True, **kwargs
    )
    np.testing.assert_array_equal(results[f"{name}/token_ids"], ids)
    np.testing.assert_array_equal(results[f"{name}/lengths"], lengths)


@pytest.mark.parametrize(
    "name,message",
    [
        ("too_many", f"max_new_tokens must be <= {LIMIT}"),
        ("bad_id", "token ids must be < vocabulary_size (50)"),
        ("empty_row", "every prompt needs at least one real token"),
    ],
)
def test_served_graph_rejects_bad_requests(served, name, message):
    _, results = served
    assert f"{name}/error" in results, f"{name} was not rejected"
    assert message in str(results[f"{name}/error"])


def test_saved_model_cli_lists_signatures_and_dtypes(served):
    if keras.backend.backend() == "torch":
        pytest.skip("PyTorch exports through the TensorFlow path tested on TensorFlow")
    path, _ = served
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    proc = subprocess.run(
        [cli, "show", "--dir", path, "--all"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    blocks = dict(
        re.findall(r"signature_def\['(\w+)'\]:(.*?)(?=signature_def\[|\Z)", proc.stdout, re.S)
    )
    dtypes = {"int32": "DT_INT32", "float32": "DT_FLOAT"}
    for name, inputs, outputs in (
        ("logits", LOGITS_INPUTS, {"logits": ("float32", "(-1, -1, 50)")}),
        (
            "generate",
            GENERATE_INPUTS,
            {"token_ids": ("int32", "(-1, -1)"), "lengths": ("int32", "(-1)")},
        ),
    ):
        assert name in blocks, f"signature {name!r} missing from:\n{proc.stdout[:3000]}"
        given, returned = blocks[name].split("output(s):")[:2]
        for key, (dtype, shape) in inputs.items():
            shape = "(" + ", ".join("-1" for _ in shape) + ")"
            assert re.search(
                rf"\['{key}'\] tensor_info:\s+dtype: {dtypes[dtype]}\s+"
                rf"shape: {re.escape(shape)}",
                given,
            ), (name, key)
        for key, (dtype, shape) in outputs.items():
            assert re.search(
                rf"\['{key}'\] tensor_info:\s+dtype: {dtypes[dtype]}\s+"
                rf"shape: {re.escape(shape)}",
                returned,
            ), (name, key)


SAMPLER_SETTINGS = [
    ("greedy", 1.0, None, None),
    ("temperature", 0.7, None, None),
    ("top_k", 1.3, 5, None),
    ("top_k", 1.0, 100, None),
    ("top_p", 0.9, None, 0.8),
    ("top_p", 1.0, 4, 0.6),
]


def test_dynamic_sampler_picks_what_get_sampler_picks(model):
    """The signature's sampler takes its settings as tensors (0 = off) but must draw
    exactly like the sampler `GPT.generate` builds from the same settings."""
    logits = keras.ops.convert_to_tensor(
        np.random.default_rng(0).normal(size=(3, 37)).astype("float32") * 3
    )

    def both(logits, seed, position):
        ids = []
        for sampler, temperature, top_k, top_p in SAMPLER_SETTINGS:
            dynamic = DynamicSampler(
                0.0 if sampler == "greedy" else temperature, top_k or 0, top_p or 1.0
            )
            reference = get_sampler(sampler, temperature, top_k, top_p)
            ids += [dynamic(logits, seed, position), reference(logits, seed, position)]
        return ids

    # One compiled program for all settings: eager JAX would compile op by op.
    run = compile_function(both, model.variables)
    for position in (0, 5):
        ids = run(
            weight_values(model.variables),
            logits,
            keras.ops.convert_to_tensor(3, "int32"),
            keras.ops.convert_to_tensor(position, "int32"),
        )
        for settings, dynamic, reference in zip(SAMPLER_SETTINGS, ids[::2], ids[1::2]):
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(dynamic),
                keras.ops.convert_to_numpy(reference),
                err_msg=str(settings),
            )


def test_onnx_logits_match_source_model(model, tmp_path):
    """TensorFlow converts directly; JAX and PyTorch through a TensorFlow child process.
    Dynamic batch and length: two shapes through one file. Tolerance as above."""
    for module in ("onnx", "onnxruntime", "tf2onnx"):
        pytest.importorskip(module)
    if keras.backend.backend() == "jax":
        pytest.skip(
            "JAX converts through the same TensorFlow child process as "
            "PyTorch, tested there (saves ~30 s)"
        )
    import onnxruntime

    path = export_onnx(model, tmp_path / "gpt.onnx")
    session = onnxruntime.InferenceSession(path)
    assert [i.name for i in session.get_inputs()] == ["token_ids", "padding_mask"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    for ids, mask in (padded(PROMPTS), padded([list(range(24))])):
        (logits,) = session.run(None, {"token_ids": ids, "padding_mask": mask})
        expected = keras.ops.convert_to_numpy(model({"token_ids": ids, "padding_mask": mask}))
        np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
    assert os.listdir(tmp_path) == ["gpt.onnx"]


# -- bad arguments: clear errors before anything is written ---------------------------


def test_existing_path_is_refused(model, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(ValueError, match="already exists"):
        export(model, tmp_path / "taken")


@pytest.mark.parametrize("max_new_tokens", [0, 24, 100, 2.5])
def test_max_new_tokens_beyond_context_is_refused(model, tmp_path, max_new_tokens):
    with pytest.raises(ValueError, match=r"max_new_tokens.*\[1, 23\]"):
        export(model, tmp_path / "out", max_new_tokens=max_new_tokens)
    assert not os.listdir(tmp_path)


def test_unbuilt_model_is_refused(tmp_path):
    unbuilt = keras.Sequential([keras.layers.Dense(4)])
    with pytest.raises(ValueError, match="not built"):
        export(unbuilt, tmp_path / "out")
    assert not os.listdir(tmp_path)


def test_bad_stop_ids_are_refused(model, tmp_path):
    with pytest.raises(ValueError, match="Stop token id 50"):
        export(model, tmp_path / "out", stop_token_ids=[50])
    with pytest.raises(ValueError, match="list of ids"):
        export(model, tmp_path / "out", stop_token_ids=7)


def test_modern_block_exports_logits_and_generate(tmp_path):
    """A RoPE / RMSNorm / QK-norm / soft-capped model (the speedrun recipe's block) served by
    plain TensorFlow: logits as the model's, greedy and left-padded generation as
    `GPT.generate`'s (RoPE at each row's own positions)."""
    model = keras_gpt.GPT(
        **CONFIG, position_embedding="rope", normalization="rmsnorm", norm_scale=False,
        qk_norm=True, activation="relu2", tie_embeddings=False, head_init_stddev=0.5,
        residual_init_stddev=0.1, logit_soft_cap=15.0, use_bias=False,
    )  # fmt: skip
    path = str(tmp_path / "modern" / "1")
    export(model, path, max_new_tokens=LIMIT, stop_token_ids=STOPS)
    batch = {name: requests()[name] for name in ("logits", "greedy", "greedy_left_padded")}
    with open(tmp_path / "requests.json", "w") as f:
        json.dump(batch, f)
    run_job([WORKER, path, tmp_path / "requests.json", tmp_path / "results.npz"], backend=None)
    results = dict(np.load(tmp_path / "results.npz"))
    ids, mask = padded(PROMPTS)
    expected = keras.ops.convert_to_numpy(model({"token_ids": ids, "padding_mask": mask}))
    np.testing.assert_allclose(results["logits/logits"], expected, atol=1e-4, rtol=0)
    tokens, lengths = model.generate(
        PROMPTS, max_new_tokens=LIMIT, stop_token_ids=STOPS, return_lengths=True
    )
    for name in ("greedy", "greedy_left_padded"):
        np.testing.assert_array_equal(results[f"{name}/lengths"], lengths)
        for row, length in enumerate(lengths):
            np.testing.assert_array_equal(
                results[f"{name}/token_ids"][row, :length], tokens[row, :length]
            )
