"""Throughput, MFU and the recipe's validation passes."""

from __future__ import annotations

import numpy as np
import pytest

from keras_gpt import GPT
from keras_gpt.data import SequentialWindows
from keras_gpt.training import throughput
from keras_gpt.training.config import PretrainConfig
from keras_gpt.training.pretrain import even_batch_size, validation_windows
from keras_gpt.training.throughput import cpu_bfloat16, device_peak_flops, flops_per_token, mfu


def test_mfu_is_never_reported_above_the_peak():
    assert mfu(1000.0, 1e6, 1e10) == 0.1
    # Achieved FLOP/s above the (probed) peak: the peak was under-measured.
    assert mfu(1000.0, 1e6, 1e8) is None
    assert mfu(1000.0, 1e6, 0.0) is None


def test_device_peaks_by_name():
    assert device_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert device_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert device_peak_flops("NVIDIA A100-SXM4-80GB", "float32") == 19.5e12
    assert device_peak_flops("Tesla T4") == 65e12  # no bfloat16: its float16 peak
    assert device_peak_flops("Some Future Accelerator") is None


def test_flops_per_token_counts_six_per_parameter_plus_attention():
    # Counted by hand (PaLM's 6·N + 12·L·d·T, N every parameter), not from the model;
    # dropout=0.1: the dropout layers' counters are not parameters.
    V, P, L, d, T = 50, 16, 2, 8, 12
    layer_norm = 2 * d  # scale and offset
    qkv = d * 3 * d + 3 * d  # the fused query/key/value projection, kernel and bias
    projection = d * d + d
    mlp = d * 4 * d + 4 * d + 4 * d * d + d
    block = layer_norm + qkv + projection + layer_norm + mlp
    n = V * d + P * d + L * block + 2 * d  # tied token embedding, positions, final LayerNorm
    # Attention per token and layer: q·k over T keys and the weighted sum of T
    # values, 2·d·T multiply-adds each forward; training is 3x the forward pass.
    attention = L * 3 * (2 * 2 * d * T)
    model = GPT(
        vocabulary_size=V,
        num_layers=L,
        num_heads=2,
        hidden_dim=d,
        max_sequence_length=P,
        dropout=0.1,
    )
    assert flops_per_token(model, T) == 6 * n + attention
    assert flops_per_token(model) == 6 * n + L * 3 * (2 * 2 * d * P)  # default: T = P
    untied = GPT(
        vocabulary_size=V,
        num_layers=L,
        num_heads=2,
        hidden_dim=d,
        max_sequence_length=P,
        tie_embeddings=False,
    )
    # The separate head: a d x V kernel, no bias.
    assert flops_per_token(untied, T) - flops_per_token(model, T) == 6 * d * V


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse2 avx2 avx512f {flags} avx512_vnni
bugs\t\t: sysret_ss_attrs

processor\t: 1
flags\t\t: fpu sse2 avx2 avx512f {flags} avx512_vnni
"""


@pytest.mark.parametrize(
    "flags, expected",
    [
        ("avx512_bf16", ["avx512_bf16"]),
        ("amx_bf16 amx_tile avx512_bf16", ["avx512_bf16", "amx_bf16"]),
        ("avx512_fp16 avx_vnni", []),  # other 16-bit instructions are not bfloat16
        ("avx512_bf16x amx_bf16_old", []),  # whole flags, not parts of names
    ],
)
def test_cpu_bfloat16_names_only_native_instructions(tmp_path, monkeypatch, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(flags=flags))
    real_open = open

    def fake_open(path, *args, **kwargs):
        assert path == "/proc/cpuinfo"
        return real_open(cpuinfo, *args, **kwargs)

    monkeypatch.setattr(throughput, "open", fake_open, raising=False)
    assert cpu_bfloat16() == expected


def test_cpu_bfloat16_without_cpuinfo_is_empty(monkeypatch):
    def missing(path, *args, **kwargs):
        raise FileNotFoundError(path)

    monkeypatch.setattr(throughput, "open", missing, raising=False)
    assert cpu_bfloat16() == []


def test_validation_passes_cover_the_same_windows():
    tokens = np.arange(5000) % 97
    config = PretrainConfig(sequence_length=16, batch_size=3, eval_batches=20)
    big = validation_windows(tokens, config)
    # 20 batches of 3 windows, spread over the split, read 3 at a time.
    small = SequentialWindows(tokens, 16, 3, spread=20 * 3)
    assert big.batch_size > 3 and len(big) < len(small) == 20

    def rows(windows):
        return np.concatenate([windows[i][0] for i in range(len(windows))])

    np.testing.assert_array_equal(rows(big), rows(small))
    config = PretrainConfig(sequence_length=16, batch_size=3, eval_batches=0)
    assert len(rows(validation_windows(tokens, config))) == (len(tokens) - 1) // 16


def test_whole_split_passes_have_one_size():
    # 1742 = 2 * 13 * 67 windows (tinyshakespeare's validation split at context 64):
    # 134 is the largest divisor in [128, 256]; a prime count keeps the target.
    assert even_batch_size(1742, 256) == 134
    assert even_batch_size(1743, 256) == 249
    assert even_batch_size(1741, 256) == 256
    assert even_batch_size(100, 256) == 256  # one pass
    assert even_batch_size(512, 256) == 256
    tokens = np.arange(1742 * 64 + 1) % 65
    windows = validation_windows(
        tokens, PretrainConfig(sequence_length=64, batch_size=24, eval_batches=0)
    )
    sizes = {len(windows[i][0]) for i in range(len(windows))}
    assert sizes == {134} and len(windows) == 13
