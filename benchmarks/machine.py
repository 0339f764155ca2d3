"""What the benchmark scripts record about the machine they ran on."""

import platform


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (or the platform's answer elsewhere)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_report(benchmark: str) -> dict:
    """The head of a benchmark's JSON: what ran, when, and on which CPU (its model,
    cores and the instruction-set flags that change the figures)."""
    import os
    import time

    flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else []
    return {
        "benchmark": benchmark,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "cpu_flags": sorted(
            {f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")}
        ),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }
