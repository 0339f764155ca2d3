"""FLOPs per token, the machine's peak FLOP/s and the tokens/s and MFU a run logs.

MFU (model FLOPs utilisation) is achieved FLOP/s over peak FLOP/s, so an
underestimated peak overstates it. The peak comes, in order, from the user
(`peak_flops`), from a table of accelerators' published dense peaks
(`DEVICE_PEAK_FLOPS`), or from a matmul probe on this machine; a probe can only
under-measure (a busy machine, a small matrix), so a run never logs an MFU
whose FLOP/s exceed the peak it measured (`mfu`).
"""

from __future__ import annotations

import re
import time

import keras
import numpy as np

#: Published dense peak FLOP/s (no sparsity) by device-name pattern and compute
#: dtype: the spec sheets' SXM/OAM figures (PCIe cards are slower: read yours).
DEVICE_PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    (r"H200|H100.*(SXM|HBM3)|GH200", {"bfloat16": 989e12, "float32": 67e12}),
    (r"H100 NVL", {"bfloat16": 835e12, "float32": 60e12}),
    (r"H100", {"bfloat16": 756e12, "float32": 51e12}),  # PCIe
    (r"A100", {"bfloat16": 312e12, "float32": 19.5e12}),
    (r"L40S", {"bfloat16": 362e12, "float32": 91.6e12}),
    (r"A10G?\b", {"bfloat16": 125e12, "float32": 31.2e12}),
    (r"L4\b", {"bfloat16": 121e12, "float32": 30.3e12}),
    (r"V100", {"float16": 125e12, "float32": 15.7e12}),
    (r"T4\b", {"float16": 65e12, "float32": 8.1e12}),
    (r"B200", {"bfloat16": 2250e12, "float32": 80e12}),
    (r"MI300X", {"bfloat16": 1307e12, "float32": 163.4e12}),
    (r"TPU v5 ?lite|v5e", {"bfloat16": 197e12}),
    (r"TPU v5p?", {"bfloat16": 459e12}),
    (r"TPU v4", {"bfloat16": 275e12}),
]


def device_peak_flops(name: str, dtype: str = "bfloat16") -> float | None:
    """The table's peak FLOP/s for a device name (e.g. `"NVIDIA H100 80GB HBM3"`), or None.

    Example:
    >>> device_peak_flops("NVIDIA A100-SXM4-40GB")
    312000000000000.0
    """
    for pattern, peaks in DEVICE_PEAK_FLOPS:
        if re.search(pattern, name, re.IGNORECASE):
            return peaks.get(dtype) or peaks.get("float16" if dtype == "bfloat16" else dtype)
    return None


def flops_per_token(model, sequence_length: int | None = None) -> float:
    """Training FLOPs per token: 6·N plus attention, as in the PaLM paper.

    Args:
        model: a `keras_gpt.GPT`.
        sequence_length: context length used in training (default: the
            model's `max_sequence_length`).
    """
    length = sequence_length or model.max_sequence_length
    # N counts the parameters: not the dropout layers' step counters (int32 scalars).
    params = sum(
        int(np.prod(v.shape)) for v in model.weights if len(v.shape) or "int" not in str(v.dtype)
    )
    attention = 12 * model.num_layers * model.hidden_dim * length
    return 6.0 * params + attention


def probe_peak_flops(
    size: int = 768, chain: int = 2, budget_seconds: float = 0.2, dtype: str = "float32"
) -> float:
    """An estimate of the peak matmul FLOP/s on the current backend, in `dtype`.

    The best of several timed runs of `chain` dependent `size`² matmuls, each run
    read back once: a single small product is dominated by dispatch and the copy
    back to NumPy, which underestimated the peak (and so overstated the MFU a run
    logged) several times over. Runs repeat for about `budget_seconds` (at least 3).
    768² products reach the FLOP/s of 1536² ones on a CPU in a tenth of the time
    (every run's start-up pays it). It is still a lower bound of the true peak (on a
    busy machine, much lower):
    `mfu` refuses figures above it, and a `peak_flops` setting replaces it.

    Args:
        size: matrix side.
        chain: matmuls per timed run.
        budget_seconds: how long to keep timing.
        dtype: the compute dtype (`"bfloat16"` for `mixed_bfloat16` runs).
    """
    rng = np.random.default_rng(0)
    # Scaled so that repeated products keep their magnitude (no overflow to inf).
    a = keras.ops.convert_to_tensor(rng.standard_normal((size, size)) / np.sqrt(size), dtype)

    def run():
        c = a
        for _ in range(chain):
            c = keras.ops.matmul(a, c)
        keras.ops.convert_to_numpy(c[:1, :1])  # waits for the chain, copies a few bytes

    run()  # warm up (and compile, where the backend does)
    best, spent, runs = float("inf"), 0.0, 0
    while runs < 3 or spent < budget_seconds:
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
        best, spent, runs = min(best, seconds), spent + seconds, runs + 1
    return 2.0 * size**3 * chain / best


def mfu(tokens_per_second: float, flops_per_token: float, peak_flops: float) -> float | None:
    """Model FLOPs utilisation, or None where the figures cannot support one.

    None without a peak, and None when the achieved FLOP/s exceed the peak: the
    peak was then under-measured (a probe on a busy machine), and any MFU
    computed from it would be overstated.
    """
    if not (peak_flops > 0 and flops_per_token > 0 and tokens_per_second > 0):
        return None
    achieved = tokens_per_second * flops_per_token
    return achieved / peak_flops if achieved <= peak_flops else None


class Throughput(keras.callbacks.Callback):
    """Adds `tokens_per_second` and `mfu` to each epoch's logs (and the History).

    Timed per round of steps (`fit` call epoch), not per batch: a callback with
    batch hooks makes Keras wait for every step's result before dispatching the
    next (no asynchronous dispatch), which costs small models time on every step.

    Args:
        tokens_per_step: batch size × sequence length.
        flops_per_token: from `flops_per_token`.
        peak_flops: the machine's peak FLOP/s (0: no `mfu`).
    """

    async_safe = True

    def __init__(self, tokens_per_step: int, flops_per_token: float, peak_flops: float):
        super().__init__()
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.tokens_per_second = 0.0
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        steps = (self.params or {}).get("steps") or 0
        if self.model is not None and getattr(self.model, "optimizer", None) is not None:
            # Dispatch runs ahead of the arithmetic (TensorFlow ran 100 steps' calls
            # in 4.5 s whose work ended at 5.2 s): read the step counter, which the
            # last step writes, so that the time counts the work, not its dispatch.
            keras.ops.convert_to_numpy(self.model.optimizer.iterations)
        seconds = time.perf_counter() - self._start
        self.tokens_per_second = steps * self.tokens_per_step / max(seconds, 1e-9)
        if logs is not None:
            logs["tokens_per_second"] = self.tokens_per_second
            value = mfu(self.tokens_per_second, self.flops_per_token, self.peak_flops)
            if value is not None:
                logs["mfu"] = value


def cpu_bfloat16() -> list[str]:
    """This CPU's native bfloat16 instructions, from /proc/cpuinfo (`avx512_bf16`,
    `amx_bf16`); empty where it has none (or on a system without /proc/cpuinfo).

    Without them, `mixed_bfloat16` emulates bfloat16 products in float32 with
    conversions around them: slower than float32, not faster.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(
                (line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []
            )
    except OSError:
        return []
    return [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags]
