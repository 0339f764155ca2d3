"""Hugging Face and KerasHub GPT-2 checkpoints ↔ keras_gpt.GPT, checked against the real libraries.

The references are randomly initialised `transformers.GPT2LMHeadModel` and
`keras_hub.models.GPT2Backbone` models of small configs, saved the way each
library saves them (nothing is downloaded). Runs on every backend; the
PyTorch-based `transformers` side runs in the same process.

Tolerances: float32 logits of the same weights computed by different kernels
(PyTorch's vs the backend's) differ by ~1e-6; the issue's bound is 1e-4.
Weights are drawn with std 0.2 instead of GPT-2's 0.02 so that logits are far
apart and greedy decoding has no near-ties (each test checks the margin it
relies on). Both libraries initialise every bias to 0 and every LayerNorm to
(1, 0), under which swapped `ln_1`/`ln_2`, a dropped `ln_f` bias or a wrong q/k/v
bias split would go unseen: the reference models get every bias and LayerNorm
weight perturbed by hand (`perturb_hf`, `perturb_keras`).
"""

import json
import os

import numpy as np
import pytest
from conftest import to_numpy

import keras_gpt
from keras_gpt import GPT
from keras_gpt.presets import PresetError
from keras_gpt.tokenizers import BytePairTokenizer, ByteTokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ATOL = 1e-4
VOCAB, POSITIONS = 61, 32

HF_CONFIGS = {
    "gpt2_defaults": dict(),
    "untied_gelu_inner_eps": dict(
        activation_function="gelu", n_inner=48, layer_norm_epsilon=1e-6, tie_word_embeddings=False
    ),
    "relu": dict(activation_function="relu"),
}


def hf_model(**overrides):
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=POSITIONS,
        n_embd=32,
        n_layer=2,
        n_head=4,
        initializer_range=0.2,
        bos_token_id=None,
        eos_token_id=None,
        **overrides,
    )
    return perturb_hf(transformers.GPT2LMHeadModel(config).eval())


def perturb_hf(model):
    """Every bias and LayerNorm weight of a transformers GPT-2 moved off its default."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".bias") or ".ln_" in name:
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    return model


def perturb_keras(model):
    """The same for a keras_gpt model: biases, LayerNorm scales (gamma) and offsets (beta)."""
    rng = np.random.default_rng(1)
    for weight in model.weights:
        if weight.path.rsplit("/", 1)[-1] in ("bias", "gamma", "beta"):
            noise = 0.3 * rng.standard_normal(tuple(weight.shape)).astype("float32")
            weight.assign(to_numpy(weight) + noise)
    return model


def hf_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids.astype("int64"))).logits.numpy()


@pytest.fixture(scope="module")
def token_ids() -> np.ndarray:
    return np.random.default_rng(0).integers(0, VOCAB, (2, 20)).astype("int32")


@pytest.fixture(scope="module", params=sorted(HF_CONFIGS))
def hf_checkpoint(request, tmp_path_factory):
    """(directory written by save_pretrained, the transformers model)."""
    model = hf_model(**HF_CONFIGS[request.param])
    directory = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(directory)
    assert os.path.exists(directory / "model.safetensors")
    return directory, model


def test_huggingface_logits_match(hf_checkpoint, token_ids):
    directory, reference = hf_checkpoint
    model = GPT.from_preset(str(directory))
    assert keras_gpt.presets.preset_format(str(directory)) == "huggingface"
    np.testing.assert_allclose(
        to_numpy(model(token_ids)), hf_logits(reference, token_ids), rtol=0, atol=ATOL
    )


def test_huggingface_config_is_converted(hf_checkpoint):
    directory, reference = hf_checkpoint
    model = GPT.from_preset(str(directory))
    hf = reference.config
    assert model.intermediate_dim == (hf.n_inner or 4 * hf.n_embd)
    assert model.layer_norm_epsilon == hf.layer_norm_epsilon
    assert model.tie_embeddings == hf.tie_word_embeddings
    assert (
        model.activation
        == {"gelu_new": "gelu_approximate", "gelu": "gelu", "relu": "relu"}[hf.activation_function]
    )


def test_export_loads_in_transformers(hf_checkpoint, token_ids, tmp_path):
    directory, reference = hf_checkpoint
    GPT.from_preset(str(directory)).save_to_preset(str(tmp_path), format="huggingface")
    exported = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    np.testing.assert_allclose(
        hf_logits(exported, token_ids), hf_logits(reference, token_ids), rtol=0, atol=ATOL
    )


@pytest.mark.parametrize(
    "variant",
    [
        dict(tie_embeddings=False, activation="relu", intermediate_dim=40),
        dict(position_embedding="sinusoidal", activation="gelu"),
        dict(use_bias=False),  # nanoGPT's bias=False: written as GPT-2's zero biases
    ],
)
def test_native_model_exports_to_transformers(variant, token_ids, tmp_path):
    model = GPT(
        vocabulary_size=VOCAB,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        max_sequence_length=POSITIONS,
        seed=3,
        **variant,
    )
    perturb_keras(model)
    model.save_to_preset(str(tmp_path), format="huggingface")
    exported = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    np.testing.assert_allclose(
        hf_logits(exported, token_ids), to_numpy(model(token_ids)), rtol=0, atol=ATOL
    )


def test_greedy_generation_matches_transformers(tmp_path):
    reference = hf_model()
    reference.save_pretrained(tmp_path)
    prompt = np.random.default_rng(1).integers(0, VOCAB, (2, 6)).astype("int32")
    steps = 10
    with torch.no_grad():
        out = reference.generate(
            torch.from_numpy(prompt.astype("int64")),
            attention_mask=torch.ones(prompt.shape),
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            pad_token_id=0,
            output_scores=True,
            return_dict_in_generate=True,
        )
    # Greedy is only comparable if no step had a near-tie between the top two.
    for scores in out.scores:
        top2 = torch.topk(scores, 2).values
        assert (top2[:, 0] - top2[:, 1]).min() > 100 * ATOL
    ours = GPT.from_preset(str(tmp_path)).generate(prompt, max_new_tokens=steps, sampler="greedy")
    np.testing.assert_array_equal(np.asarray(ours), out.sequences.numpy())


def test_pickled_checkpoint_without_prefix(hf_checkpoint, token_ids, tmp_path):
    """pytorch_model.bin, keys without `transformer.` (as `model.transformer` saves them)."""
    directory, reference = hf_checkpoint
    state = dict(reference.transformer.state_dict())
    if not reference.config.tie_word_embeddings:
        state["lm_head.weight"] = reference.lm_head.weight.detach()
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    model = GPT.from_preset(str(tmp_path))
    np.testing.assert_allclose(
        to_numpy(model(token_ids)), hf_logits(reference, token_ids), rtol=0, atol=ATOL
    )


class _RunsCode:
    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    payload = _RunsCode()
    payload.marker = str(marker)
    # torch.save pickles the call `os.mkdir(marker)`; an unsafe torch.load would run it.
    torch.save({"transformer.wte.weight": payload}, tmp_path / "pytorch_model.bin")
    assert not marker.exists()
    hf_model().config.to_json_file(tmp_path / "config.json")
    with pytest.raises(PresetError, match="weights_only=True"):
        GPT.from_preset(str(tmp_path))
    assert not marker.exists()


def test_padded_vocabulary(token_ids, tmp_path):
    """A checkpoint whose embedding has extra rows past `vocab_size` loads its first rows;
    a model with a padded vocabulary exports trimmed to its tokenizer's size."""
    from safetensors.numpy import save_file

    reference = hf_model()
    tensors = {
        k: v.numpy().copy() for k, v in reference.state_dict().items() if k != "lm_head.weight"
    }
    wte = tensors["transformer.wte.weight"]
    tensors["transformer.wte.weight"] = np.concatenate([wte, np.ones((3, wte.shape[1]), "float32")])
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    reference.config.to_json_file(tmp_path / "config.json")
    model = GPT.from_preset(str(tmp_path))
    assert model.vocabulary_size == VOCAB
    np.testing.assert_allclose(
        to_numpy(model(token_ids)), hf_logits(reference, token_ids), rtol=0, atol=ATOL
    )

    padded = GPT(
        vocabulary_size=264,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        max_sequence_length=POSITIONS,
        seed=0,
    )
    tokenizer = ByteTokenizer()  # 257 ids
    padded.save_to_preset(str(tmp_path / "export"), format="huggingface", tokenizer=tokenizer)
    exported = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "export").eval()
    assert exported.config.vocab_size == 257
    np.testing.assert_allclose(
        hf_logits(exported, token_ids), to_numpy(padded(token_ids))[..., :257], rtol=0, atol=ATOL
    )


def test_unsupported_huggingface_configs_name_the_problem(tmp_path):
    reference = hf_model()
    reference.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for change, message in (
        ({"activation_function": "silu"}, "activation_function='silu'"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
        ({"model_type": "llama"}, "'llama'"),
    ):
        (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(PresetError, match=message):
            GPT.from_preset(str(tmp_path))


def test_truncated_safetensors_names_the_handle(tmp_path):
    hf_model().save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(PresetError, match=f"{tmp_path}.*model.safetensors"):
        GPT.from_preset(str(tmp_path))


def test_bpe_tokenizer_exports_for_transformers(tmp_path):
    """A BytePairTokenizer saved with the checkpoint is read the same by
    `transformers.GPT2TokenizerFast` and by `keras_gpt.presets.load_tokenizer`."""
    texts = [
        "To be, or not to be, that is the question:",
        "Whether 'tis nobler in the mind to suffer",
    ] * 20
    tokenizer = BytePairTokenizer.train(texts, vocabulary_size=300, min_frequency=1)
    model = GPT(
        vocabulary_size=tokenizer.vocabulary_size,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        max_sequence_length=POSITIONS,
        seed=0,
    )
    model.save_to_preset(str(tmp_path), format="huggingface", tokenizer=tokenizer)
    text = "To suffer the question, or not: that is nobler.<|endoftext|>"
    reference = transformers.GPT2TokenizerFast.from_pretrained(tmp_path)
    loaded = keras_gpt.presets.load_tokenizer(str(tmp_path))
    assert loaded.encode(text) == reference(text)["input_ids"] == tokenizer.encode(text)
    assert (
        transformers.GPT2LMHeadModel.from_pretrained(tmp_path).config.vocab_size
        == tokenizer.vocabulary_size
    )


# -- KerasHub ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras_hub_preset(tmp_path_factory):
    """(directory written by GPT2CausalLM.save_to_preset, its backbone)."""
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCAB,
        num_layers=2,
        num_heads=4,
        hidden_dim=32,
        intermediate_dim=48,
        max_sequence_length=POSITIONS,
        dropout=0.0,
    )
    # NumPy-drawn weights: the same model on every backend (KerasHub's own init
    # draws from the backend's generator), larger than GPT-2's (module docstring).
    rng = np.random.default_rng(0)
    for weight in backbone.weights:
        scale = 0.2 if len(weight.shape) > 1 else 0.05
        offset = 1.0 if weight.path.endswith("gamma") else 0.0
        weight.assign(offset + scale * rng.standard_normal(weight.shape).astype("float32"))
    vocabulary = {"<|endoftext|>": 0, **{chr(97 + i): i + 1 for i in range(26)}}
    vocabulary.update({"Ġ": 27, "ab": 28, "Ġa": 29})
    vocabulary.update({f"t{i}": 30 + i for i in range(VOCAB - len(vocabulary))})
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=["a b", "Ġ a"])
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=16)
    causal_lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor)
    directory = tmp_path_factory.mktemp("keras_hub_gpt2")
    causal_lm.save_to_preset(str(directory))
    return directory, backbone, tokenizer


def keras_hub_logits(backbone, ids: np.ndarray) -> np.ndarray:
    hidden = backbone({"token_ids": ids, "padding_mask": np.ones_like(ids)})
    return to_numpy(backbone.token_embedding(hidden, reverse=True))


def test_keras_hub_logits_match(keras_hub_preset, token_ids):
    directory, backbone, _ = keras_hub_preset
    assert keras_gpt.presets.preset_format(str(directory)) == "keras_hub"
    model = GPT.from_preset(str(directory))
    np.testing.assert_allclose(
        to_numpy(model(token_ids)), keras_hub_logits(backbone, token_ids), rtol=0, atol=ATOL
    )


def test_keras_hub_greedy_generation_matches(keras_hub_preset):
    directory, backbone, _ = keras_hub_preset
    prompt = np.random.default_rng(2).integers(0, VOCAB, (2, 5)).astype("int32")
    steps = 8
    # Reference: greedy decoding by full forward passes of the KerasHub backbone,
    # over one fixed-length buffer (causal, so later slots do not matter).
    sequence = np.zeros((2, prompt.shape[1] + steps), "int32")
    sequence[:, : prompt.shape[1]] = prompt
    for position in range(prompt.shape[1], sequence.shape[1]):
        logits = keras_hub_logits(backbone, sequence)[:, position - 1]
        top2 = np.sort(logits, axis=-1)[:, -2:]
        assert (top2[:, 1] - top2[:, 0]).min() > 100 * ATOL
        sequence[:, position] = logits.argmax(-1)
    ours = GPT.from_preset(str(directory)).generate(prompt, max_new_tokens=steps, sampler="greedy")
    np.testing.assert_array_equal(np.asarray(ours), sequence)


def test_keras_hub_tokenizer_loads(keras_hub_preset):
    directory, _, reference = keras_hub_preset
    tokenizer = keras_gpt.presets.load_tokenizer(str(directory))
    text = "ab a ba cab"
    assert tokenizer.encode(text) == to_numpy(reference(text)).tolist()
