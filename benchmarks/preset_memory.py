"""Peak memory of loading a GPT-2 124M-shaped preset, per format. Prints JSON.

Saves a randomly initialised `gpt2_small`-shaped model (no download) as a
keras_gpt preset and as a Hugging Face checkpoint, then, each in a fresh
process, measures the peak resident memory (`ru_maxrss`) of
(a) building the model alone (one copy of the weights plus the framework) and
(b) `GPT.from_preset` of each directory (which builds the model, then fills
it). Peaks are the process's VmHWM, reset after imports; the difference
(b) - (a) is what loading costs beyond building the model; one extra full
copy of the weights would be ~475 MiB.

    KERAS_BACKEND=jax python benchmarks/preset_memory.py --dir /tmp/gpt2_presets
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(field)


def child(mode: str, directory: str) -> None:
    import keras_gpt

    config = keras_gpt.presets.get("gpt2_small").config
    before = _status_mb("VmRSS")
    # Reset the peak (VmHWM) so that import-time peaks do not count (Linux).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    # VmHWM counts file pages mapped by safetensors/h5py as well as memory the
    # process allocated; a sampling thread tells the two apart (RssAnon = allocated).
    peaks = {"RssAnon": 0.0, "RssFile": 0.0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            for field in peaks:
                peaks[field] = max(peaks[field], _status_mb(field))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if mode == "build":
        model = keras_gpt.GPT(**config, seed=0)
    else:
        model = keras_gpt.GPT.from_preset(os.path.join(directory, mode))
    done.set()
    sampler.join()
    print(
        json.dumps(
            {
                "rss_before_mb": round(before),
                "peak_rss_mb": round(_status_mb("VmHWM")),
                "peak_rss_anonymous_mb_sampled": round(peaks["RssAnon"]),
                "peak_rss_file_mb_sampled": round(peaks["RssFile"]),
                "rss_after_mb": round(_status_mb("VmRSS")),
                "parameters": sum(_size(w) for w in model.trainable_weights),
            }
        )
    )


def _size(weight) -> int:
    size = 1
    for dim in weight.shape:
        size *= dim
    return size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", default="/tmp/gpt2_small_presets")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.dir)
        return

    import keras

    import keras_gpt

    if not os.path.exists(os.path.join(args.dir, "huggingface", "model.safetensors")):
        model = keras_gpt.GPT(**keras_gpt.presets.get("gpt2_small").config, seed=0)
        model.save_to_preset(os.path.join(args.dir, "keras_gpt"))
        model.save_to_preset(os.path.join(args.dir, "huggingface"), format="huggingface")
        del model
    results = {"backend": keras.backend.backend(), "weights_mb": round(124_439_808 * 4 / 2**20)}
    for mode in ("build", "keras_gpt", "huggingface"):
        proc = subprocess.run(
            [sys.executable, __file__, "--dir", args.dir, "--child", mode],
            capture_output=True,
            text=True,
            check=True,
        )
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    for mode in ("keras_gpt", "huggingface"):
        results[f"{mode}_load_overhead_mb"] = (
            results[mode]["peak_rss_mb"] - results["build"]["peak_rss_mb"]
        )
        results[f"{mode}_load_overhead_anonymous_mb"] = (
            results[mode]["peak_rss_anonymous_mb_sampled"]
            - results["build"]["peak_rss_anonymous_mb_sampled"]
        )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
