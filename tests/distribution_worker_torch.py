"""PyTorch DDP worker: `torchrun --nproc_per_node 2 tests/distribution_worker_torch.py OUT`.

Run by tests/test_distribution.py. Each process builds the same GPT (dropout
0.1) and trains with `keras_gpt.distribution.ddp_fit` over gloo:

1. 20 steps from the seed, saving a checkpoint after step 10 and at the end;
2. 10 steps resumed from OUT/single_10.keras, a one-device checkpoint the test
   wrote before launching.

Rank 0 writes OUT/history.json (per-step global logs of both runs) and
OUT/resumed.keras.
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "torch"

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_gpt  # noqa: E402
from keras_gpt import distribution  # noqa: E402

CONFIG = dict(
    vocabulary_size=64,
    num_layers=2,
    num_heads=2,
    hidden_dim=16,
    max_sequence_length=12,
    dropout=0.1,
    seed=0,
)
STEPS, BATCH = 20, 8


def data():
    tokens = np.random.default_rng(0).integers(0, 64, (STEPS * BATCH, 13)).astype("int32")
    # Right padding of different lengths: the loss must be the mean over all
    # real tokens of the global batch, not a mean of the processes' means.
    lengths = np.random.default_rng(1).integers(3, 13, len(tokens))
    mask = (np.arange(12)[None, :] < lengths[:, None]).astype("int32")
    return {"token_ids": tokens[:, :-1], "padding_mask": mask}, tokens[:, 1:]


def compiled(model):
    model.compile(optimizer=keras.optimizers.AdamW(1e-2), metrics=[keras_gpt.Perplexity()])
    return model


def main(out):
    rank, world = distribution.torch_init_process_group()
    x, y = data()
    model = compiled(keras_gpt.GPT(**CONFIG))
    fresh = distribution.ddp_fit(
        model,
        x,
        y,
        batch_size=BATCH,
        steps=STEPS,
        checkpoint_path=os.path.join(out, "ddp.keras"),
        checkpoint_every=10,
        verbose=False,
    )

    resumed_model = keras.saving.load_model(os.path.join(out, "single_10.keras"))
    half = STEPS // 2 * BATCH
    second = {k: v[half:] for k, v in x.items()}
    resumed = distribution.ddp_fit(
        resumed_model,
        second,
        y[half:],
        batch_size=BATCH,
        checkpoint_path=os.path.join(out, "resumed.keras"),
        verbose=False,
    )
    if rank == 0:
        with open(os.path.join(out, "history.json"), "w") as f:
            json.dump({"world": world, "fresh": fresh, "resumed": resumed}, f)


if __name__ == "__main__":
    main(sys.argv[1])
