"""nanoGPT's Shakespeare-char CPU run, re-done in plain PyTorch and scored as our recipe scores.

nanoGPT reports validation loss 1.88 for its CPU command

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False
        --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4
        --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

but measures it as the mean loss of 20 random batches of 12 windows, while our
recipe (recipes/configs/shakespeare_char.toml) evaluates the whole validation
split. This script follows nanoGPT's procedure (model, initialisation, AdamW
groups, schedule, clipping, batch sampling, and the order in which its global
RNG is drawn, so `--seeds 1337` should retrace nanoGPT's own run) and then
scores the trained model both ways: over the whole validation split, exactly as
`keras_gpt` does (`SequentialWindows`, mean over all tokens), and as ten
nanoGPT-style estimates. It also records the estimates nanoGPT itself would
print every 250 iterations. Written from a reading of nanoGPT; no code copied.

    python benchmarks/nanogpt_reference.py --seeds 0 1 2 3
    python benchmarks/nanogpt_reference.py --seeds 1337 \
        --out benchmarks/results/nanogpt_reference_1337.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from machine import cpu_name
from torch import nn

os.environ.setdefault("KERAS_BACKEND", "torch")
from keras_gpt.data.batches import SequentialWindows  # noqa: E402

# ../shared beside the repository, as the Shakespeare recipe looks for it.
TEXT = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
CONTEXT, BATCH, LAYERS, HEADS, WIDTH = 64, 12, 4, 4, 128
PEAK_LR, MIN_LR, WARMUP, WEIGHT_DECAY, BETAS, CLIP = 1e-3, 1e-4, 100, 0.1, (0.9, 0.99), 1.0
EVAL_EVERY, EVAL_ITERS = 250, 20


class Norm(nn.Module):
    """LayerNorm with a scale and no bias (nanoGPT's bias=False)."""

    def __init__(self, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.weight, None, 1e-5)


class Block(nn.Module):
    """Pre-LN block. Submodules are created in nanoGPT's order, so its RNG draws match."""

    def __init__(self):
        super().__init__()
        self.ln_1 = Norm(WIDTH)
        self.attn = nn.ModuleDict(
            dict(
                c_attn=nn.Linear(WIDTH, 3 * WIDTH, bias=False),
                c_proj=nn.Linear(WIDTH, WIDTH, bias=False),
            )
        )
        self.ln_2 = Norm(WIDTH)
        self.mlp = nn.ModuleDict(
            dict(
                c_fc=nn.Linear(WIDTH, 4 * WIDTH, bias=False),
                c_proj=nn.Linear(4 * WIDTH, WIDTH, bias=False),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (
            z.view(b, t, HEADS, -1).transpose(1, 2)
            for z in self.attn.c_attn(self.ln_1(x)).chunk(3, dim=-1)
        )
        heads = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn.c_proj(heads.transpose(1, 2).reshape(b, t, WIDTH))
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x))))  # exact (erf) GELU


class GPT(nn.Module):
    """Token + learned position embeddings, blocks, final norm, head tied to the embedding."""

    def __init__(self, vocab: int):
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab, WIDTH),
                wpe=nn.Embedding(CONTEXT, WIDTH),
                h=nn.ModuleList(Block() for _ in range(LAYERS)),
                ln_f=Norm(WIDTH),
            )
        )
        self.lm_head = nn.Linear(WIDTH, vocab, bias=False)
        self.transformer.wte.weight = self.lm_head.weight
        for module in self.modules_children_first():  # GPT-2 init, in nanoGPT's order
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, 0.02)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * LAYERS))

    def modules_children_first(self) -> list[nn.Module]:
        found: list[nn.Module] = []
        self.apply(found.append)  # nn.Module.apply visits children before the parent
        return found

    def forward(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.transformer.wte(ids) + self.transformer.wpe(torch.arange(ids.shape[1]))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def learning_rate(it: int, total: int) -> float:
    """nanoGPT's get_lr: warmup (it+1)/(warmup+1), then cosine to MIN_LR at `total`."""
    if it < WARMUP:
        return PEAK_LR * (it + 1) / (WARMUP + 1)
    ratio = min(1.0, (it - WARMUP) / (total - WARMUP))
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (PEAK_LR - MIN_LR)


def random_batch(data: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Like nanoGPT's get_batch: BATCH windows at starts drawn from torch's global RNG."""
    starts = torch.randint(len(data) - CONTEXT, (BATCH,)).tolist()
    x = np.stack([data[s : s + CONTEXT] for s in starts]).astype(np.int64)
    y = np.stack([data[s + 1 : s + 1 + CONTEXT] for s in starts]).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


@torch.no_grad()
def estimate(model: GPT, data: np.ndarray) -> float:
    """nanoGPT's estimate_loss for one split: mean loss of EVAL_ITERS random batches."""
    return float(np.mean([model(*random_batch(data)).item() for _ in range(EVAL_ITERS)]))


@torch.no_grad()
def whole_split(model: GPT, data: np.ndarray) -> float:
    """Our recipe's validation loss: all consecutive windows, mean over every token."""
    windows = SequentialWindows(data, CONTEXT, BATCH, max_batches=200)
    total, count = 0.0, 0
    for i in range(len(windows)):
        x, y = (torch.from_numpy(a).long() for a in windows[i])
        total += model(x, y).item() * y.numel()  # Keras weights each batch mean by its size
        count += y.numel()
    return total / count


def run(
    seed: int,
    train: np.ndarray,
    val: np.ndarray,
    vocab: int,
    iters: int,
    checkpoint_dir: str | None = None,
    score: bool = True,
) -> dict:
    """nanoGPT's training run; with `checkpoint_dir`, also its checkpoint saves (the
    model and optimizer, whenever the estimated validation loss improves after step 0),
    so that its wall time compares with a recipe run's. Times each phase."""
    torch.manual_seed(seed)
    start = time.time()
    seconds = {"train": 0.0, "eval": 0.0, "checkpoint": 0.0}
    model = GPT(vocab)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=PEAK_LR,
        betas=BETAS,
    )
    log = []
    best = math.inf
    x, y = random_batch(train)
    # nanoGPT's loop runs it = 0..max_iters: at each `it` it evaluates (when it % 250 == 0),
    # then steps; so it takes max_iters + 1 = 2001 steps, but its last printed (reported)
    # val loss, at "step 2000", comes after 2000 steps. We stop right after that evaluation.
    for it in range(iters + 1):
        if it % EVAL_EVERY == 0 or it == iters:
            tick = time.perf_counter()
            model.eval()
            log.append({"step": it, "train": estimate(model, train), "val": estimate(model, val)})
            model.train()
            seconds["eval"] += time.perf_counter() - tick
            if checkpoint_dir and log[-1]["val"] < best:
                best = log[-1]["val"]
                if it > 0:
                    tick = time.perf_counter()
                    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
                    torch.save(state, os.path.join(checkpoint_dir, "ckpt.pt"))
                    seconds["checkpoint"] += time.perf_counter() - tick
        if it == iters:
            break
        tick = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(it, iters)
        loss = model(x, y)
        x, y = random_batch(train)  # drawn before backward, as nanoGPT prefetches
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # nanoGPT prints the loss of every step (log_interval=1)
        seconds["train"] += time.perf_counter() - tick
    wall = time.time() - start
    model.eval()
    tick = time.perf_counter()
    whole = whole_split(model, val)
    seconds["score"] = time.perf_counter() - tick
    if not score:
        return {
            "seed": seed,
            "steps": iters,
            "whole_split_val_loss": whole,
            "nanogpt_log": log,
            "wall_seconds": wall,
            "seconds": seconds,
        }
    estimates = [estimate(model, val) for _ in range(10)]
    return {
        "seed": seed,
        "steps": iters,
        "whole_split_val_loss": whole,
        "estimates": estimates,
        "estimates_mean": statistics.mean(estimates),
        "estimates_min": min(estimates),
        "estimates_max": max(estimates),
        "nanogpt_log": log,
        "wall_seconds": round(wall, 1),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--text", default=TEXT)
    parser.add_argument("--out", default="benchmarks/results/nanogpt_reference.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    text = open(args.text, encoding="utf-8").read()
    index = {c: i for i, c in enumerate(sorted(set(text)))}
    ids = np.array([index[c] for c in text], dtype=np.uint16)
    train, val = ids[: int(len(ids) * 0.9)], ids[int(len(ids) * 0.9) :]

    runs = []
    for seed in args.seeds:
        runs.append(run(seed, train, val, len(index), args.iters))
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "nanogpt_log"}), flush=True)
    losses = [r["whole_split_val_loss"] for r in runs]
    summary = {
        "whole_split_mean": statistics.mean(losses),
        "whole_split_sd": statistics.stdev(losses) if len(losses) > 1 else 0.0,
        "estimates_mean": statistics.mean(e for r in runs for e in r["estimates"]),
        "nanogpt_printed_final_val_mean": statistics.mean(
            r["nanogpt_log"][-1]["val"] for r in runs
        ),
    }
    print(json.dumps(summary))
    report = {
        "benchmark": "nanoGPT shakespeare_char CPU procedure, plain PyTorch",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, threads {args.threads}",
        "torch": torch.__version__,
        "iters": args.iters,
        "vocab": len(index),
        "train_tokens": len(train),
        "val_tokens": len(val),
        "summary": summary,
        "runs": runs,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
