"""Draws the benchmarks' bar charts (docs/benchmarks.md, its history in the changelog).

Each script in `benchmarks/` prints JSON; the latest runs are kept in
`benchmarks/results/` (see docs/benchmarks.md for the commands). This script
reads those files and writes one SVG per benchmark into docs/img/:

    benchmarks/results/train.json         -> docs/img/bench_train.svg
    benchmarks/results/generate.json      -> docs/img/bench_generate.svg
    benchmarks/results/tokenization.json  -> docs/img/bench_tokenization.svg

Run from the repository root (needs matplotlib, in the `docs` extra):

    .venv/bin/python docs/scripts/benchmark_charts.py

A missing result file is skipped with a message. The SVGs carry no date or hash
salt, so re-running only changes a file when its numbers change.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.hashsalt"] = "keras_gpt"
import matplotlib.pyplot as plt  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
IMG = ROOT / "docs" / "img"
BACKENDS = ("tensorflow", "jax", "torch")
COLORS = {
    "keras_gpt": "#1e88e5",
    "keras_hub": "#ef6c00",
    "hugging_face": "#8e24aa",
    "tiktoken": "#43a047",
    "tokenizers": "#8e24aa",
}
LABELS = {
    "keras_gpt": "keras_gpt",
    "keras_hub": "KerasHub GPT-2",
    "hugging_face": "Hugging Face GPT-2 (eager)",
}


def grouped_bars(
    ax, groups: list[str], series: dict[str, list[float | None]], legend: bool = True
) -> None:
    """Bars for each series side by side within each group, value on top.

    The legend goes below the axes so it never covers a bar.
    """
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        for j, value in enumerate(values):
            if value is None:
                continue
            x = j + (i - (len(series) - 1) / 2) * width
            ax.bar(
                x,
                value,
                width,
                color=COLORS.get(name, "#90a4ae"),
                label=LABELS.get(name, name)
                if j == min(k for k, v in enumerate(values) if v is not None)
                else None,
            )
            ax.text(x, value, f"{value:,.0f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)), groups)
    ax.spines[["top", "right"]].set_visible(False)
    top = max(v for values in series.values() for v in values if v is not None)
    ax.set_ylim(0, top * 1.1)  # room for the value labels
    if legend:
        ax.legend(
            frameon=False,
            fontsize=8,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.12),
            ncol=len(series),
        )


def train_chart(result: dict) -> plt.Figure:
    backends = [b for b in BACKENDS if "error" not in result["backends"].get(b, {"error": 1})]
    series = {
        lib: [result["backends"][b][lib]["tokens_per_second"] for b in backends]
        for lib in ("keras_gpt", "keras_hub")
    }
    fig, ax = plt.subplots(figsize=(6, 3.2))
    grouped_bars(ax, backends, series)
    ax.set_ylabel("training tokens/s (higher is better)")
    ax.set_title(f"Training throughput, {result['date']}", fontsize=10)
    return fig


def generate_chart(result: dict) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
    for ax, batch in zip(axes, (1, 8)):
        backends = [b for b in BACKENDS if "error" not in result["results"].get(b, {"error": 1})]
        series = {}
        for lib in ("keras_gpt", "keras_hub", "hugging_face"):
            values = [
                result["results"][b].get(f"{lib}/batch{batch}", {}).get("tokens_per_s")
                for b in backends
            ]
            if any(v is not None for v in values):
                series[lib] = values
        grouped_bars(ax, backends, series, legend=False)
        ax.set_title(f"batch {batch}", fontsize=10)
    axes[0].set_ylabel("generated tokens/s (higher is better)")
    handles, labels = axes[-1].get_legend_handles_labels()
    fig.legend(
        handles, labels, frameon=False, fontsize=8, loc="outside lower center", ncol=len(labels)
    )
    fig.suptitle(f"Generation, steady state, {result['date']}", fontsize=10)
    return fig


def tokenization_chart(result: dict) -> plt.Figure:
    rates = {
        name: value
        for name, value in result["encode_MB_per_s"].items()
        if isinstance(value, (int, float))
    }
    names = sorted(rates, key=rates.get)
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(names) + 1))
    colors = ["#1e88e5" if name.startswith("keras_gpt") else "#90a4ae" for name in names]
    ax.barh(names, [rates[n] for n in names], color=colors)
    for i, name in enumerate(names):
        ax.text(rates[name], i, f" {rates[name]:.2f}", va="center", fontsize=8)
    ax.set_xlabel("BPE encode MB/s (higher is better)")
    ax.set_title(f"Tokenization, {result['date']}", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


CHARTS = {"train": train_chart, "generate": generate_chart, "tokenization": tokenization_chart}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=pathlib.Path, default=RESULTS)
    parser.add_argument("--out", type=pathlib.Path, default=IMG)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, draw in CHARTS.items():
        path = args.results / f"{name}.json"
        if not path.exists():
            print(f"skipped {name}: no {path}")
            continue
        figure = draw(json.loads(path.read_text()))
        out = args.out / f"bench_{name}.svg"
        # "tight" keeps long tick labels and the legends below the axes in the picture.
        figure.savefig(out, metadata={"Date": None}, bbox_inches="tight")
        plt.close(figure)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
