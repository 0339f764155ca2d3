"""The speedrun recipe beside nanoGPT's procedure: time to nanoGPT's validation loss.

For each backend, fresh processes in turn (`benchmarks/recipe.py`'s `spawn`; the
order alternates from one backend to the next):

- `nanogpt`: `benchmarks/nanogpt_reference.py`'s faithful nanoGPT run (2,000 steps
  of 12 windows, plain eager PyTorch), its model scored over the whole validation
  split (that scoring is left out of its wall time);
- `speedrun`: `keras-gpt pretrain --config recipes/configs/shakespeare_char_speedrun.toml`
  as a user runs it: start-up, data, training, its whole-split evaluation, checkpoint,
  best model and sample all inside the wall time;
- with `--long`, also `shakespeare_char_speedrun_long.toml`: the same recipe run
  as long as nanoGPT's (the loss at equal wall time). It runs last, and its training
  budget (`max_seconds`, 125 s in the config) is set from this run's own figures:
  nanoGPT's wall time less the speedrun's time outside training (start-up, data,
  compile, evaluation, saving), so that its wall time matches nanoGPT's on whatever
  machine this runs (`--long-budget S` fixes it instead).

Prints one JSON object: per backend each side's wall time (the parent's clock from
spawning the process to its exit), time in training steps, whole-split validation
loss, and the ratios speedrun / nanoGPT; `reached` says whether the speedrun's loss
is at or below nanoGPT's from the same run.

    python benchmarks/speedrun.py                          # all backends
    python benchmarks/speedrun.py --backends jax --long --threads 1
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import recipe  # noqa: E402  (benchmarks/recipe.py: spawn, child processes)
from machine import machine_report  # noqa: E402

CONFIGS = HERE.parent / "recipes" / "configs"
SPEEDRUN = CONFIGS / "shakespeare_char_speedrun.toml"
LONG = CONFIGS / "shakespeare_char_speedrun_long.toml"


def side(kind: str, backend: str, config: pathlib.Path, args, log: pathlib.Path) -> dict:
    child = argparse.Namespace(**{**vars(args), "config": str(config)})
    result = recipe.spawn(kind, backend, child, log)
    result["load_average_after"] = recipe.load_average()
    print(json.dumps({backend: {kind: result}}), file=sys.stderr, flush=True)
    return result


def long_budget(nanogpt: dict, speedrun: dict) -> int:
    """Seconds of training that make the long config's wall time equal nanoGPT's.

    Everything but the training steps (start-up, data, compile, evaluations, saving)
    is taken from the short speedrun run of the same backend; the long config's
    periodic evaluations of 20 batches add ~1 %.
    """
    overhead = speedrun["wall_seconds"] - speedrun["seconds"]["train_steps"]
    return max(1, int(nanogpt["wall_seconds"] - overhead))


def train_seconds(result: dict) -> float:
    seconds = result["seconds"]
    return seconds["train_steps"] + seconds.get("compile_step", 0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", nargs="+", default=["torch", "jax", "tensorflow"])
    p.add_argument("--long", action="store_true", help="also the equal-time config")
    p.add_argument(
        "--long-budget",
        type=int,
        default=0,
        help="the long config's max_seconds (0: nanoGPT's wall less the speedrun's overhead)",
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads, both sides (0: default)")
    p.add_argument("--seed", type=int, default=0, help="both sides' seed")
    p.add_argument("--set", action="append", default=[], help="speedrun setting key=value")
    p.add_argument("--swap", type=int, default=0, choices=[0, 1], help="1: start with ours")
    p.add_argument("--log", default="/tmp/speedrun_bench.log", help="children's output")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--steps", type=int, default=2000, help="nanoGPT's steps (a smoke test: fewer)")
    args = p.parse_args()
    # What recipe.spawn passes on to its children.
    args.interleaved, args.rounds = 0, 0

    report = {
        **machine_report("speedrun recipe vs nanoGPT procedure (shakespeare_char)"),
        "threads": args.threads,
        "settings": args.set,
        "backends": {},
    }
    log = pathlib.Path(args.log)
    ours = [("speedrun", SPEEDRUN)] + ([("speedrun_long", LONG)] if args.long else [])
    for i, backend in enumerate(args.backends):
        # nanoGPT and the speedrun alternate in order; the long run goes last (it needs both).
        runs = [("nanogpt", recipe.CONFIG), ("speedrun", SPEEDRUN)]
        if (i + args.swap) % 2:
            runs.reverse()
        runs += ours[1:]
        results = {"order": [name for name, _ in runs]}
        for name, config in runs:
            kind = "nanogpt" if name == "nanogpt" else "keras_gpt"
            child = args
            if name == "speedrun_long":
                budget = args.long_budget
                if not budget and "error" not in results["nanogpt"] | results["speedrun"]:
                    budget = long_budget(results["nanogpt"], results["speedrun"])
                if budget:
                    results["long_budget_seconds"] = budget
                    child = argparse.Namespace(
                        **{**vars(args), "set": [*args.set, f"max_seconds={budget}"]}
                    )
            results[name] = side(kind, backend, config, child, log)
        ref = results["nanogpt"]
        for name, _ in ours:
            run = results[name]
            if "error" in run or "error" in ref:
                continue
            run["wall_ratio"] = run["wall_seconds"] / ref["wall_seconds"]
            run["train_steps_ratio"] = train_seconds(run) / ref["seconds"]["train_steps"]
            run["reached"] = run["val_loss"] <= ref["val_loss"]
        report["backends"][backend] = results
    report["load_average_end"] = recipe.load_average()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
