"""Throughput, MFU and the recipe's validation passes."""

from __future__ import annotations

import numpy as np

from keras_gpt.data import SequentialWindows
from keras_gpt.training.config import PretrainConfig
from keras_gpt.training.pretrain import validation_windows
from keras_gpt.training.throughput import cpu_bfloat16, device_peak_flops, mfu


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


def test_cpu_bfloat16_names_only_native_instructions():
    assert set(cpu_bfloat16()) <= {"avx512_bf16", "amx_bf16"}


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
