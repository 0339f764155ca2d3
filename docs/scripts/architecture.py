"""Draws docs/img/architecture.svg: the GPT from token ids to logits.

Run from the repository root (needs the `docs` extra for matplotlib):

    .venv/bin/python docs/scripts/architecture.py

The output is deterministic (fixed hash salt, no date), so re-running it only
changes the file when the drawing changes.
"""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parent.parent / "img" / "architecture.svg"

COLORS = {
    "io": "#eceff1",
    "embed": "#c8e6c9",
    "norm": "#fff9c4",
    "attn": "#bbdefb",
    "mlp": "#ffe0b2",
    "drop": "#f8bbd0",
    "head": "#d1c4e9",
}


def box(ax, x, y, w, h, text, color, fontsize=9.5, weight="normal"):
    """A rounded box centred at (x, y)."""
    ax.add_patch(
        FancyBboxPatch(
            (x - w / 2, y - h / 2),
            w,
            h,
            boxstyle="round,pad=0.02,rounding_size=0.12",
            facecolor=color,
            edgecolor="#37474f",
            linewidth=1.1,
        )
    )
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, weight=weight)


def arrow(ax, start, end, style="-|>", connection="arc3", color="#37474f"):
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle=style,
            mutation_scale=12,
            connectionstyle=connection,
            color=color,
            linewidth=1.2,
        )
    )


def residual(ax, x, y_from, y_to, x_side):
    """The skip connection: left from the trunk, down, and into the ⊕ at y_to."""
    ax.plot([x, x_side, x_side], [y_from, y_from, y_to], color="#37474f", lw=1.2)
    arrow(ax, (x_side, y_to), (x - 0.17, y_to))


def plus(ax, x, y):
    ax.add_patch(plt.Circle((x, y), 0.17, facecolor="white", edgecolor="#37474f", lw=1.1))
    ax.text(x, y, "+", ha="center", va="center", fontsize=12, weight="bold")


def draw() -> plt.Figure:
    fig, ax = plt.subplots(figsize=(8.4, 10.4))
    ax.set_xlim(0, 11.5)
    ax.set_ylim(0, 14.6)
    ax.axis("off")
    cx, w = 5.2, 6.6

    # Top to bottom, as data flows.
    box(ax, cx, 14.0, w, 0.6, "token ids  (batch, seq)", COLORS["io"])
    box(
        ax,
        cx,
        12.95,
        w,
        0.9,
        "E[ids]  +  P[0 … seq)\ntoken + position embeddings (learned or sinusoidal)",
        COLORS["embed"],
    )
    box(ax, cx, 11.95, w, 0.5, "dropout", COLORS["drop"])
    arrow(ax, (cx, 13.7), (cx, 13.4))
    arrow(ax, (cx, 12.5), (cx, 12.2))

    # The repeated block.
    top, bottom = 11.45, 3.25
    ax.add_patch(
        FancyBboxPatch(
            (cx - w / 2 - 0.55, bottom),
            w + 1.1,
            top - bottom,
            boxstyle="round,pad=0.02,rounding_size=0.2",
            facecolor="#fafafa",
            edgecolor="#78909c",
            linestyle="--",
            linewidth=1.2,
        )
    )
    ax.text(
        cx + w / 2 + 0.4,
        top - 0.12,
        "TransformerBlock × num_layers",
        ha="right",
        va="top",
        fontsize=10,
        weight="bold",
        color="#455a64",
    )
    arrow(ax, (cx, 11.7), (cx, 10.75))

    # Attention half: x + Attention(LN(x)).
    box(ax, cx, 10.45, 3.2, 0.5, "LayerNorm (ε = 1e-5)", COLORS["norm"])
    box(
        ax,
        cx,
        9.0,
        w - 0.4,
        1.9,
        "CausalSelfAttention\n"
        "fused QKV Dense  →  num_heads heads\n"
        "softmax(QKᵀ/√d + mask) V\n"
        "(causal mask, optional padding mask)\n"
        "output Dense  →  dropout",
        COLORS["attn"],
    )
    plus(ax, cx, 7.55)
    arrow(ax, (cx, 10.2), (cx, 10.0))
    arrow(ax, (cx, 8.1), (cx, 7.72))
    residual(ax, cx, 10.95, 7.55, cx - w / 2 - 0.2)
    ax.text(
        cx - w / 2 - 0.4,
        9.2,
        "residual",
        rotation=90,
        ha="center",
        va="center",
        fontsize=9,
        color="#546e7a",
    )

    # MLP half: x + MLP(LN(x)).
    box(ax, cx, 6.55, 3.2, 0.5, "LayerNorm (ε = 1e-5)", COLORS["norm"])
    box(
        ax,
        cx,
        5.15,
        w - 0.4,
        1.7,
        "MLP\nDense (intermediate_dim = 4·hidden_dim)\n"
        "GELU (tanh approximation; or exact GELU, ReLU)\n"
        "Dense (hidden_dim)  →  dropout",
        COLORS["mlp"],
    )
    plus(ax, cx, 3.8)
    arrow(ax, (cx, 7.38), (cx, 6.8))
    arrow(ax, (cx, 6.3), (cx, 6.0))
    arrow(ax, (cx, 4.3), (cx, 3.97))
    residual(ax, cx, 7.1, 3.8, cx - w / 2 - 0.2)
    ax.text(
        cx - w / 2 - 0.4,
        5.3,
        "residual",
        rotation=90,
        ha="center",
        va="center",
        fontsize=9,
        color="#546e7a",
    )

    # Output.
    arrow(ax, (cx, 3.63), (cx, 2.75))
    box(ax, cx, 2.5, 3.2, 0.5, "final LayerNorm", COLORS["norm"])
    arrow(ax, (cx, 2.25), (cx, 1.95))
    box(
        ax,
        cx,
        1.6,
        w,
        0.7,
        "tied output projection:  logits = h · Eᵀ\n(or a separate Dense with tie_embeddings=False)",
        COLORS["head"],
    )
    arrow(ax, (cx, 1.25), (cx, 0.95))
    box(ax, cx, 0.65, w, 0.55, "logits  (batch, seq, vocabulary_size)", COLORS["io"])

    # The shared matrix E: used at the bottom and at the top.
    arrow(
        ax,
        (cx + w / 2, 12.95),
        (cx + w / 2, 1.6),
        style="-|>",
        connection="arc3,rad=-0.18",
        color="#7e57c2",
    )
    ax.text(
        10.3,
        7.3,
        "same matrix E\n(tied embeddings)",
        ha="center",
        va="center",
        fontsize=9,
        color="#5e35b1",
        rotation=90,
    )
    return fig


def main() -> None:
    matplotlib.rcParams["svg.hashsalt"] = "keras_gpt"
    fig = draw()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    # White background: the site has a dark mode.
    fig.savefig(OUT, format="svg", bbox_inches="tight", facecolor="white", metadata={"Date": None})
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
