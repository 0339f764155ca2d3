"""Smoke tests of the benchmark scripts on a tiny shape: they run and report; no timings checked."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import keras
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_json(*args: str, timeout: float = 600) -> dict:
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_gpu_benchmark_runs_tiny_on_cpu():
    backend = keras.backend.backend()
    if backend == "tensorflow":
        pytest.skip("benchmarks/gpu.py measures JAX and PyTorch")
    jobs = [backend]
    if backend == "torch":
        pytest.importorskip("transformers")
        jobs.append("hf")
    report = run_json(
        "benchmarks/gpu.py",
        "--tiny",
        "--jobs",
        *jobs,
        "--rounds",
        "1",
        "--warmup",
        "1",
        "--steps",
        "1",
        "--gen-batches",
        "1",
        "--new-tokens",
        "4",
    )
    for job in jobs:
        result = report["jobs"][job]
        assert "error" not in result, result.get("error")
        assert result["train"]["tokens_per_second"] > 0
        mfu = result["train"]["mfu"]
        assert mfu is None or 0 < mfu <= 1  # never above the peak it is measured against
        assert result["generate"]["1"] > 0
    if backend == "torch":
        assert "train torch / hf" in report["ratios"]
