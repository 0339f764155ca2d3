"""The Shakespeare-char recipe beside nanoGPT's procedure, with a wall-time breakdown.

For each backend, one pair of fresh processes in turn (the pair's order alternates
from one backend to the next, so a slow spell of the machine does not always hit the
same side):

- `nanogpt`: `benchmarks/nanogpt_reference.py`'s faithful nanoGPT run (plain PyTorch,
  eager; its estimates every 250 steps and its checkpoint saves), then its model
  scored over the whole validation split, as our recipe scores (that scoring is not
  part of nanoGPT's run, so its time is left out of nanoGPT's wall time);
- `keras_gpt`: `keras-gpt pretrain --config recipes/configs/shakespeare_char.toml`
  as a user runs it (same code path: `pretrain`), its phases timed by wrapping the
  functions the recipe calls.

Wall time is the parent's clock from spawning the process to its exit (interpreter
start and imports included). Prints one JSON object: per backend both sides'
breakdowns (start-up, data, train steps, evaluations, checkpoints, plot, sample) and
the ratios keras_gpt / nanoGPT of wall time and of time in training steps.

    python benchmarks/recipe.py                          # 2000 steps, all backends
    python benchmarks/recipe.py --backends torch --steps 500
    python benchmarks/recipe.py --set dtype=mixed_bfloat16   # any recipe setting
    python benchmarks/recipe.py --interleaved 20 --threads 1  # time per step only
    python benchmarks/recipe.py --backends tensorflow --swap 1   # keras_gpt first
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

_IMPORT_START = time.perf_counter()

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIG = ROOT / "recipes" / "configs" / "shakespeare_char.toml"


def _timed(seconds: dict, key: str, fn):
    """`fn`, adding its wall time to `seconds[key]` (and counting calls)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start
            seconds[key + "_calls"] = seconds.get(key + "_calls", 0) + 1

    return wrapper


def child_keras(args) -> dict:
    """Runs the recipe through `pretrain`, timing each phase."""
    import importlib

    import keras

    from keras_gpt.model.gpt import GPT

    # The modules (`keras_gpt.training.pretrain` is also the name of a function there).
    loop = importlib.import_module("keras_gpt.training.loop")
    pretrain = importlib.import_module("keras_gpt.training.pretrain")

    seconds: dict = {"import": time.perf_counter() - _IMPORT_START}
    for name in ("resolve_data", "make_tokenizer", "tokenize_corpus"):
        setattr(pretrain, name, _timed(seconds, "data", getattr(pretrain, name)))
    pretrain.probe_peak_flops = _timed(seconds, "peak_probe", pretrain.probe_peak_flops)
    pretrain._save_best = _timed(seconds, "best_model", pretrain._save_best)
    loop.save_checkpoint = _timed(seconds, "checkpoints", loop.save_checkpoint)
    loop.plot_loss_curve = _timed(seconds, "plot", loop.plot_loss_curve)
    GPT.evaluate = _timed(seconds, "evals", keras.Model.evaluate)
    GPT.generate = _timed(seconds, "sample", GPT.generate)
    fit = keras.Model.fit

    def timed_fit(self, *a, **k):
        # The process's first `fit` compiles the train step: counted on its own.
        key = "compile_step" if "compile_step" not in seconds else "train_steps"
        return _timed(seconds, key, fit)(self, *a, **k)

    GPT.fit = timed_fit
    overrides = {"out": args.out, "overwrite": True}
    if pathlib.Path(args.config).resolve() == CONFIG:
        overrides["max_steps"] = args.steps  # nanoGPT's recipe: both sides run --steps
    # Another recipe (e.g. the speedrun's) runs its own max_steps.
    if args.threads:
        overrides["threads"] = args.threads
    overrides.update(dict(item.split("=", 1) for item in args.set))
    config = pretrain.load_config(args.config, overrides)
    start = time.perf_counter()
    summary = pretrain.pretrain(config)
    seconds["pretrain"] = time.perf_counter() - start
    phases = [k for k in seconds if not k.endswith("_calls") and k not in ("import", "pretrain")]
    # What no wrapper caught: building and compiling the model, logging, the loop itself.
    seconds["other"] = seconds["pretrain"] - sum(seconds[k] for k in phases)
    return {
        "backend": keras.backend.backend(),
        "config": str(args.config),
        "steps": summary["steps"],
        "val_loss": summary["val_loss"],
        "tokens_per_second": summary["tokens_per_second"],
        "seconds": seconds,
        "settings": overrides,
    }


def child_nanogpt(args) -> dict:
    """nanoGPT's run (`nanogpt_reference.run`), checkpoints included, in this process."""
    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    import nanogpt_reference as ref

    torch.set_num_threads(args.threads or os.cpu_count())
    seconds: dict = {"import": time.perf_counter() - _IMPORT_START}
    start = time.perf_counter()
    text = open(ref.TEXT, encoding="utf-8").read()
    index = {c: i for i, c in enumerate(sorted(set(text)))}
    ids = np.array([index[c] for c in text], dtype=np.uint16)
    train, val = ids[: int(len(ids) * 0.9)], ids[int(len(ids) * 0.9) :]
    seconds["data"] = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        result = ref.run(args.seed, train, val, len(index), args.steps, tmp, score=False)
    seconds.update(
        train_steps=result["seconds"]["train"],
        evals=result["seconds"]["eval"],
        checkpoints=result["seconds"]["checkpoint"],
        score=result["seconds"]["score"],
    )
    return {
        "steps": args.steps,
        "val_loss": result["whole_split_val_loss"],
        "nanogpt_printed_val": result["nanogpt_log"][-1]["val"],
        "seconds": seconds,
    }


def child_interleaved(args) -> dict:
    """Time per training step, nanoGPT's against the recipe's, in one process.

    Alternating rounds of `--interleaved` steps of each (nanoGPT's model, AdamW and
    clipping in eager PyTorch; the recipe's compiled `GPT` through `fit`, as the
    recipe trains it), so that the machine's load changes hit both alike: the
    ratio of medians holds where whole runs minutes apart do not.
    """
    import importlib
    import statistics

    import keras
    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    import nanogpt_reference as ref

    from keras_gpt.backend import fit_input
    from keras_gpt.training.loop import StepBatches

    pretrain = importlib.import_module("keras_gpt.training.pretrain")
    overrides = {"out": args.out, "overwrite": True, "threads": args.threads}
    overrides.update(dict(item.split("=", 1) for item in args.set))
    config = pretrain.load_config(args.config, overrides)
    pretrain.set_threads(config.threads)
    torch.set_num_threads(args.threads or os.cpu_count())
    rng = np.random.default_rng(0)
    data = rng.integers(0, 65, 1_000_000).astype("int32")

    def batch_at(i: int, batch: int = 12):
        starts = np.random.default_rng([0, i]).integers(0, len(data) - 65, batch)
        rows = np.stack([data[s : s + 65] for s in starts])
        return rows[:, :-1], rows[:, 1:]

    from keras_gpt.model.metrics import Perplexity

    # The recipe's model and optimizer, as `pretrain` builds them (batch: the config's).
    model = pretrain.build_model(config, 65)
    model.compile(
        optimizer=pretrain.build_optimizer(config),
        metrics=[Perplexity()],
        jit_compile=pretrain.jit_compile(config),
    )
    torch.manual_seed(0)
    nano = ref.GPT(65)
    optimizer = torch.optim.AdamW(nano.parameters(), lr=1e-3, betas=(0.9, 0.99))

    def nano_steps(first: int, count: int) -> None:
        for i in range(first, first + count):
            x, y = (torch.from_numpy(a.astype(np.int64)) for a in batch_at(i))
            loss = nano(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(nano.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss.item()

    def ours_batch(i: int):
        return batch_at(i, config.batch_size)

    def ours_steps(first: int, count: int) -> None:
        model.fit(fit_input(StepBatches(ours_batch, first, count)), verbose=0, shuffle=False)

    n = args.interleaved
    ours_steps(0, 2)  # compiles
    nano_steps(0, 2)
    times: dict = {"nanogpt": [], "keras_gpt": []}
    for r in range(args.rounds):
        sides = [("nanogpt", nano_steps), ("keras_gpt", ours_steps)]
        for name, fn in sides if r % 2 == 0 else sides[::-1]:
            start = time.perf_counter()
            fn(2 + r * n, n)
            times[name].append((time.perf_counter() - start) / n)
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {
        "backend": keras.backend.backend(),
        "steps_per_round": n,
        "batch_size": {"nanogpt": 12, "keras_gpt": config.batch_size},
        "step_seconds": times,
        "median_step_seconds": medians,
        "step_ratio": medians["keras_gpt"] / medians["nanogpt"],
        "load_average": load_average(),
    }


def spawn(kind: str, backend: str, args, log: pathlib.Path) -> dict:
    """Runs one side in a fresh process; its JSON plus the parent's wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--child", kind, "--steps", str(args.steps)]
        cmd += ["--seed", str(args.seed), "--out", tmp + "/run", "--threads", str(args.threads)]
        cmd += ["--interleaved", str(args.interleaved), "--rounds", str(args.rounds)]
        cmd += ["--config", str(args.config)]
        for item in args.set:
            cmd += ["--set", item]
        env = {**os.environ, "KERAS_BACKEND": backend}
        start = time.perf_counter()
        with open(log, "a") as f:
            f.write(f"\n=== {kind} {backend}: {' '.join(cmd)}\n")
            f.flush()
            proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=f, text=True)
        wall = time.perf_counter() - start
        with open(log, "a") as f:
            f.write(proc.stdout)
    lines = [s for s in proc.stdout.splitlines() if s.startswith("RESULT ")]
    if not lines:
        return {"error": f"exit {proc.returncode}, see {log}"}
    result = json.loads(lines[-1][len("RESULT ") :])
    # nanoGPT's own run ends at its last step: our whole-split scoring is not part of it.
    result["wall_seconds"] = wall - result.get("seconds", {}).get("score", 0.0)
    return result


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", nargs="+", default=["torch", "jax", "tensorflow"])
    p.add_argument("--steps", type=int, default=2000, help="training steps (both sides)")
    p.add_argument("--seed", type=int, default=0, help="both sides' seed")
    p.add_argument(
        "--threads", type=int, default=0, help="both sides' CPU threads (0: the defaults)"
    )
    p.add_argument("--set", action="append", default=[], help="recipe setting key=value")
    p.add_argument(
        "--config",
        default=str(CONFIG),
        help="keras_gpt's recipe (default: shakespeare_char.toml, which runs --steps; "
        "another config runs its own max_steps)",
    )
    p.add_argument("--log", default="/tmp/recipe_bench.log", help="children's output")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument(
        "--interleaved",
        type=int,
        default=0,
        help="instead: time N-step rounds of both in one process per backend (step ratio)",
    )
    p.add_argument("--rounds", type=int, default=6, help="with --interleaved")
    p.add_argument(
        "--swap",
        type=int,
        default=0,
        choices=[0, 1],
        help="1: the first backend's pair starts with keras_gpt (to alternate between runs)",
    )
    p.add_argument("--child", choices=["keras_gpt", "nanogpt", "both"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        fn = {"keras_gpt": child_keras, "nanogpt": child_nanogpt, "both": child_interleaved}
        print("RESULT " + json.dumps(fn[args.child](args)), flush=True)
        return

    sys.path.insert(0, str(HERE))
    from machine import machine_report

    report = {
        **machine_report("shakespeare_char recipe vs nanoGPT procedure"),
        "steps": args.steps,
        "settings": args.set,
        "backends": {},
    }
    log = pathlib.Path(args.log)
    if args.interleaved:
        report["benchmark"] = "time per training step, recipe vs nanoGPT, interleaved"
        for backend in args.backends:
            report["backends"][backend] = spawn("both", backend, args, log)
        report["load_average_end"] = load_average()
        print(json.dumps(report, indent=2))
        if args.out:
            pathlib.Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        return
    for i, backend in enumerate(args.backends):
        order = ["nanogpt", "keras_gpt"] if (i + args.swap) % 2 == 0 else ["keras_gpt", "nanogpt"]
        pair = {"order": order}
        for kind in order:
            pair[kind] = spawn(kind, backend, args, log)
            pair[kind]["load_average_after"] = load_average()
            print(json.dumps({backend: {kind: pair[kind]}}), file=sys.stderr, flush=True)
        ours, ref = pair["keras_gpt"], pair["nanogpt"]
        if "error" not in ours and "error" not in ref:
            pair["wall_ratio"] = ours["wall_seconds"] / ref["wall_seconds"]
            pair["train_steps_ratio"] = (
                ours["seconds"]["train_steps"] + ours["seconds"]["compile_step"]
            ) / ref["seconds"]["train_steps"]
        report["backends"][backend] = pair
    report["load_average_end"] = load_average()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
