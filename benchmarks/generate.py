"""Generation speed: keras_gpt vs KerasHub GPT2CausalLM.generate vs Hugging Face.

Runs one subprocess per backend; inside each, keras_gpt's `GPT.generate` and
KerasHub's `GPT2CausalLM.generate` (and, in the PyTorch process, Hugging Face
`GPT2LMHeadModel.generate`) decode greedily from the same random prompt with
randomly initialised models of the same shape. Prints one JSON object.

    python benchmarks/generate.py                         # all backends
    python benchmarks/generate.py --backends torch --repeats 2 --threads 1
    python benchmarks/generate.py --gpt2-small            # also 124M, batch 1, ours only
    python benchmarks/generate.py --libraries keras_gpt --dtype float32 bfloat16 int8 \
        --shape gpt2-small --batches 1                    # quantized decoding, 124M

bench-small: vocabulary 8192, 4 layers, 4 heads, hidden 256, context 256,
float32; prompt 32 tokens, 128 new tokens, batch 1 and 8. `matmul_floor` is
not a library: it runs only the step's weight products (see `matmul_floor`), a
rough bound for any float32 decoder of this shape. `first_call_s` is
the first call's wall time (compilation included), `tokens_per_s` is
batch · new tokens / median wall time of the following calls, timed in
rounds that take every library and batch in turn (in reverse order every
other round, so no library always runs first). Stop tokens are
off in every library so that each row decodes all 128 tokens.

`--dtype` runs keras_gpt once per weight format, side by side in the same
rounds: `float32`, `bfloat16` (`GPT(dtype="bfloat16")`: weights and
arithmetic in bfloat16) and `int8` (`GPT.quantize("int8")`: int8 matrices,
float32 activations); results are keyed `keras_gpt/...`, `keras_gpt_bfloat16/...`,
`keras_gpt_int8/...`. `--shape gpt2-small` times the GPT-2 small (124M) shape
instead of bench-small. `--quality` measures instead how far int8 and
bfloat16 greedy decoding stray from float32 (16 prompts x 128 tokens from the
validation split of `--data`), the validation loss of each format and the
presets' sizes (see `quality`), for a random model of `--shape` or, with
`--preset`, a trained one:

    python benchmarks/generate.py --quality --preset runs/shakespeare_char/best --threads 1
    python benchmarks/generate.py --quality --shape gpt2-small --val-tokens 8192 --threads 1

Side by side at 124M, batch 1, 8 and 32 (KerasHub runs on every backend,
Hugging Face in the PyTorch process):

    python benchmarks/generate.py --shape gpt2-small --dtype float32 bfloat16 int8 \
        --libraries keras_gpt keras_hub huggingface matmul_floor --batches 1 8 32 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from machine import cpu_name
from peers import hugging_face_gpt2

SHAPE = dict(
    vocabulary_size=8192, num_layers=4, num_heads=4, hidden_dim=256, max_sequence_length=256
)
GPT2_SMALL = dict(
    vocabulary_size=50257, num_layers=12, num_heads=12, hidden_dim=768, max_sequence_length=1024
)
PROMPT, NEW = 32, 128
#: tinyshakespeare on the project machines (a clone does not have it: pass --data).
SHAKESPEARE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "tinyshakespeare.txt"
)


def cpu_details() -> dict:
    """`lscpu`'s model, family and the flags that decide int8 and bfloat16 speed."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")
    info = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return info
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("Model name", "CPU family", "Model", "CPU(s)"):
            info[key.strip()] = value.strip()
        elif key.strip() == "Flags":
            info["flags"] = [f for f in wanted if f in value.split()]
    return info


def keras_gpt_generate(shape, dtype="float32"):
    import keras_gpt

    model = keras_gpt.GPT(**shape, seed=0, dtype="bfloat16" if dtype == "bfloat16" else None)
    if dtype == "int8":
        model.quantize("int8")
    return lambda prompt, new: model.generate(prompt, max_new_tokens=new)


def keras_hub_generate(shape):
    import keras_hub
    import numpy as np

    backbone = keras_hub.models.GPT2Backbone(
        **shape, intermediate_dim=4 * shape["hidden_dim"], dropout=0.0
    )
    model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    model.compile(sampler="greedy")

    def run(prompt, new):
        # Without a preprocessor, KerasHub generates into the padded positions.
        batch, length = prompt.shape
        ids = np.zeros((batch, length + new), "int32")
        ids[:, :length] = prompt
        mask = np.zeros_like(ids)
        mask[:, :length] = 1
        return model.generate({"token_ids": ids, "padding_mask": mask}, stop_token_ids=None)

    return run


def hugging_face_generate(shape):
    import torch

    model = hugging_face_gpt2(shape).eval()

    def run(prompt, new):
        with torch.no_grad():
            return model.generate(
                torch.as_tensor(prompt, dtype=torch.long),
                attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=0,
            )

    return run


def matmul_floor(shape):
    """Only the matrix products of each decode step, compiled as tightly as the backend allows.

    Per step and layer the four weight products (QKV, attention output, MLP up
    and down; `tanh` stands in for attention and GELU to keep values bounded),
    then the logits against the embedding table (stored transposed, the
    fastest layout) and the argmax's row as the next input: the same weights
    read in the same order as a real step, with no attention, norms or
    sampling. At batch 1 these matrix-vector products stream every weight
    once per token, so this roughly bounds a step's time for float32 weights
    (roughly: it measures memory bandwidth, which varies between runs, and a
    backend may schedule the real step better); it is not a library to beat.
    """
    import keras
    import numpy as np
    from keras import ops

    rng = np.random.default_rng(0)
    d, v = shape["hidden_dim"], shape["vocabulary_size"]

    def normal(*dims):
        return rng.normal(0, 0.02, dims).astype("float32")

    layers = [
        tuple(
            ops.convert_to_tensor(normal(*dims))
            for dims in ((d, 3 * d), (d, d), (d, 4 * d), (4 * d, d))
        )
        for _ in range(shape["num_layers"])
    ]
    table = normal(v, d)
    # The logits' matrix as a contiguous (hidden, vocabulary) copy: the fastest layout.
    table, table_t = ops.convert_to_tensor(table), ops.convert_to_tensor(table.T.copy())

    def steps(h, n):
        def body(_, h):
            for qkv, out, up, down in layers:
                h = h + ops.matmul(ops.tanh(ops.matmul(h, qkv)[:, :d]), out)
                h = h + ops.matmul(ops.tanh(ops.matmul(h, up)), down)
            return ops.take(table, ops.argmax(ops.matmul(h, table_t), axis=-1), axis=0)

        return ops.fori_loop(0, n, body, h)

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        steps = jax.jit(steps, static_argnums=1)
    elif backend == "tensorflow":
        import tensorflow as tf

        steps = tf.function(steps, jit_compile=True, reduce_retracing=True)
    else:
        import torch

        # Plain torch calls: Keras' per-op checks would dominate an eager loop.
        @torch.no_grad()
        def steps(h, n):
            for _ in range(n):
                for qkv, out, up, down in layers:
                    h = h + torch.tanh((h @ qkv)[:, :d]) @ out
                    h = h + torch.tanh(h @ up) @ down
                h = table[torch.argmax(h @ table_t, dim=-1)]
            return h

    def run(prompt, new):
        out = ops.convert_to_numpy(steps(ops.take(table, prompt[:, -1], axis=0), new))
        return np.zeros((prompt.shape[0], PROMPT + new)) + out[:, :1]

    return run


def measure(runs: dict, batches, new: int, repeats: int, vocabulary: int) -> dict:
    """First call, then `repeats` rounds timing every (library, batch) once per round.

    Interleaving the rounds spreads the machine's slow spells (other tenants,
    memory bandwidth) over all libraries alike, so ratios within one run hold
    better than with each library's repeats back to back.
    """
    import numpy as np

    results, times, prompts = {}, {}, {}
    for name, run in runs.items():
        for batch in batches:
            key = f"{name}/batch{batch}"
            prompts[key] = (
                np.random.default_rng(batch)
                .integers(0, vocabulary, (batch, PROMPT))
                .astype("int32")
            )
            try:
                start = time.perf_counter()
                out = run(prompts[key], new)
                first = time.perf_counter() - start
                if isinstance(out, dict):  # KerasHub without a preprocessor
                    out = out["token_ids"]
                assert tuple(out.shape) == (batch, PROMPT + new), tuple(out.shape)
                results[key], times[key] = {"first_call_s": round(first, 3)}, []
            except Exception as error:  # report it, keep measuring the others
                results[key] = {"error": repr(error)[-500:]}
    for round_ in range(repeats):
        keys = list(times)
        for key in keys[::-1] if round_ % 2 else keys:
            run = runs[key.split("/")[0]]
            try:
                start = time.perf_counter()
                run(prompts[key], new)
                times[key].append(time.perf_counter() - start)
            except Exception as error:
                results[key] = {"error": repr(error)[-500:]}
                del times[key]
    for key, spans in times.items():
        batch = prompts[key].shape[0]
        median = statistics.median(spans)
        results[key].update(steady_s=round(median, 4), tokens_per_s=round(batch * new / median, 1))
    return results


def greedy(model, prompts, new: int):
    """`new` greedy tokens after each prompt, with `model.generate` (the compiled decode loop).

    When prompt + `new` exceed the model's context (the shakespeare_char
    model's is 64), decoding goes on in chunks: each chunk's prompt is the
    last `prompts.shape[1]` tokens so far, and it fills the context. Every
    weight format decodes the same way, so their tokens compare.
    """
    import numpy as np

    width = prompts.shape[1]
    tokens = np.asarray(prompts)
    while tokens.shape[1] - width < new:
        step = min(new - (tokens.shape[1] - width), model.max_sequence_length - width)
        out = np.asarray(model.generate(tokens[:, -width:], max_new_tokens=step))
        tokens = np.concatenate([tokens, out[:, width:]], axis=1)
    return tokens[:, width:]


def teacher_forced(model, prompts, tokens):
    """The model's argmax at each position of given continuations (`tokens`, after `prompts`).

    Each position sees the context it had in `greedy` (the same chunks), but
    with `tokens` before it instead of the model's own choices: one forward
    pass per chunk, no decode loop. Two formats' argmaxes then differ only
    where their logits order the top tokens differently at that very step,
    not because an earlier difference sent a row elsewhere.
    """
    import numpy as np
    from keras import ops

    width, new = prompts.shape[1], tokens.shape[1]
    full = np.concatenate([prompts, tokens], axis=1).astype("int32")
    picks, done = [], 0
    while done < new:
        step = min(new - done, model.max_sequence_length - width)
        logits = model(full[:, done : done + width + step - 1])
        picks.append(ops.convert_to_numpy(ops.argmax(logits[:, width - 1 :], axis=-1)))
        done += step
    return np.concatenate(picks, axis=1)


def validation_loss(model, tokens, batch: int = 16) -> float:
    """Mean next-token loss (nats) over consecutive windows of the model's context.

    The windows of `keras_gpt.data.SequentialWindows` (window k holds tokens
    k·L ... k·L + L): every token after the first is a label once, as in
    `pretrain`'s validation loss; scored by `keras_gpt.evaluation`'s
    `score_rows` (float32 log-softmax, so a bfloat16 model's loss is not
    rounded again).
    """
    from keras_gpt.evaluation.scoring import Row, score_rows

    length = model.max_sequence_length
    rows = [
        Row(tokens[k * length : k * length + length + 1], 1)
        for k in range((len(tokens) - 1) // length)
    ]
    scores = score_rows(model, rows, batch)
    return -sum(s.loglikelihood for s in scores) / sum(s.tokens for s in scores)


def round_weights_to_bfloat16(model) -> None:
    """Stores every float32 weight rounded to bfloat16 (and back): bfloat16 weights,
    float32 arithmetic. Tells the rounding of the weights from that of the arithmetic."""
    from keras import ops

    for variable in model.weights:
        if "float" in str(variable.dtype):
            variable.assign(ops.cast(ops.cast(variable, "bfloat16"), variable.dtype))


def quality(
    shape,
    preset: str | None = None,
    data: str | None = None,
    prompts: int = 16,
    new: int = NEW,
    val_tokens: int = 0,
) -> dict:
    """How far int8 and bfloat16 decoding move from float32, and the preset sizes.

    The model: the preset at `preset` (e.g. a trained shakespeare_char run's
    `best/`, with its tokenizer), else one seeded model of `shape` (GPT-2's
    N(0, 0.02) initialisation: random, not trained) with the byte tokenizer.
    The text: `data`'s validation split, as `pretrain` makes it (the last 10 %
    of its tokens, `keras_gpt.data.corpus.tokenize_corpus`). `prompts` prompts
    of 32 tokens evenly spaced over that split, `new` greedy tokens each (see
    `greedy`). `agreement` is the fraction of generated positions whose token
    equals float32's (after a first difference a row continues from its own
    tokens, so this counts the divergence too); `rows_identical` the rows
    equal throughout; `logits_relative_error` the largest logit difference
    over float32's largest logit, on 4 prompts; `val_loss` the loss over the
    whole split (or its first `val_tokens` tokens, if set; see
    `validation_loss`). Formats: `int8` (`quantize("int8")`), `bfloat16`
    (`dtype="bfloat16"`: bfloat16 weights and arithmetic) and
    `bfloat16_weights` (float32 arithmetic on weights rounded to bfloat16, a
    diagnostic). `teacher_forced_agreement`: the same positions, each
    decided on float32's tokens so far (see `teacher_forced`), i.e. how often
    a single step's choice flips; `first_difference_median`: the median
    position of a row's first difference (`new` if none). Preset bytes are
    the `model.weights.h5` of `save_to_preset`. `float32_tokens` (the greedy
    tokens) lets `main` compare float32 across backends, then is dropped.
    """
    import tempfile

    import keras
    import numpy as np

    import keras_gpt
    from keras_gpt.data.corpus import tokenize_corpus
    from keras_gpt.presets import load_tokenizer
    from keras_gpt.tokenizers import ByteTokenizer

    if preset:
        reference = keras_gpt.GPT.from_preset(preset)
        tokenizer = load_tokenizer(preset)
    else:
        reference = keras_gpt.GPT(**shape, seed=0)
        tokenizer = ByteTokenizer()
    out = {"model": preset or "random, seed 0", "data": data, "prompts": prompts, "new_tokens": new}
    with tempfile.TemporaryDirectory() as scratch:
        _, split = tokenize_corpus([data], os.path.join(scratch, "tokens"), tokenizer)
        size = len(split) if not val_tokens else min(len(split), val_tokens + 1)
        val = split.read(0, size).astype("int32")
        starts = np.linspace(0, len(val) - PROMPT - 1, prompts).astype(int)
        ids = np.stack([val[s : s + PROMPT] for s in starts])
        expected = keras.ops.convert_to_numpy(reference(ids[:4]))
        tokens = greedy(reference, ids, new)
        forced = teacher_forced(reference, ids, tokens)
        out["float32_tokens"] = tokens.tolist()
        out["float32"] = {"val_loss": round(validation_loss(reference, val), 5)}
        out["val_tokens"] = (
            (len(val) - 1) // reference.max_sequence_length * (reference.max_sequence_length)
        )
        reference.save_to_preset(os.path.join(scratch, "float32"))
        sizes = {"float32": os.path.getsize(os.path.join(scratch, "float32", "model.weights.h5"))}
        out["float32_preset_bytes"] = sizes["float32"]
        del reference
        for dtype in ("int8", "bfloat16", "bfloat16_weights"):
            model = keras_gpt.GPT.from_preset(
                os.path.join(scratch, "float32"),
                **({"dtype": "bfloat16"} if dtype == "bfloat16" else {}),
            )
            if dtype == "int8":
                model.quantize("int8")
            if dtype == "bfloat16_weights":
                round_weights_to_bfloat16(model)
            logits = keras.ops.convert_to_numpy(keras.ops.cast(model(ids[:4]), "float32"))
            got = greedy(model, ids, new)
            loss = validation_loss(model, val)
            out[dtype] = {
                "agreement": round(float(np.mean(got == tokens)), 4),
                "rows_identical": int(np.sum(np.all(got == tokens, axis=1))),
                "teacher_forced_agreement": round(
                    float(np.mean(teacher_forced(model, ids, tokens) == forced)), 4
                ),
                "first_difference_median": int(
                    np.median([np.argmin(row) if not row.all() else new for row in got == tokens])
                ),
                "logits_relative_error": round(
                    float(np.max(np.abs(logits - expected)) / np.max(np.abs(expected))), 5
                ),
                "val_loss": round(loss, 5),
                "val_loss_minus_float32": round(loss - out["float32"]["val_loss"], 5),
            }
            if dtype != "bfloat16_weights":
                model.save_to_preset(os.path.join(scratch, dtype))
                sizes[dtype] = os.path.getsize(os.path.join(scratch, dtype, "model.weights.h5"))
                out[dtype]["preset_bytes"] = sizes[dtype]
                out[dtype]["preset_ratio_to_float32"] = round(sizes[dtype] / sizes["float32"], 4)
            del model
    return out


def float32_across_backends(results: dict) -> None:
    """Greedy float32 tokens of each pair of backends: the agreement that float32's own
    summation-order differences leave (a floor for the formats' figures)."""
    import numpy as np

    tokens = {
        backend: np.array(result["quality"].pop("float32_tokens"))
        for backend, result in results.items()
        if "quality" in result
    }
    names = sorted(tokens)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            results[f"float32_agreement_{a}_vs_{b}"] = round(
                float(np.mean(tokens[a] == tokens[b])), 4
            )


def worker(args) -> dict:
    import keras

    backend = keras.backend.backend()
    if args.threads and backend == "torch":
        import torch

        torch.set_num_threads(args.threads)
    if args.quality:
        return {
            "quality": quality(
                GPT2_SMALL if args.shape == "gpt2-small" else SHAPE,
                preset=args.preset,
                data=args.data,
                val_tokens=args.val_tokens,
            )
        }
    libraries = {
        "keras_gpt": keras_gpt_generate,
        "keras_hub": keras_hub_generate,
        "matmul_floor": matmul_floor,
    }
    if backend == "torch":
        libraries["hugging_face"] = hugging_face_generate
    shape = GPT2_SMALL if args.shape == "gpt2-small" else SHAPE
    runs = {}
    for name, make in libraries.items():
        if name not in args.libraries:
            continue
        if name != "keras_gpt":
            runs[name] = make(shape)
            continue
        for dtype in args.dtype:
            key = name if dtype == "float32" else f"{name}_{dtype}"
            runs[key] = make(shape, dtype)
    results = measure(runs, args.batches, NEW, args.repeats, shape["vocabulary_size"])
    if args.gpt2_small:
        run = {"keras_gpt": keras_gpt_generate(GPT2_SMALL)}
        small = measure(
            run,
            [1],
            args.gpt2_small_tokens,
            max(1, args.repeats - 1),
            GPT2_SMALL["vocabulary_size"],
        )
        results["keras_gpt/gpt2_small/batch1"] = small["keras_gpt/batch1"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument(
        "--libraries",
        nargs="+",
        default=["keras_gpt", "keras_hub", "hugging_face", "matmul_floor"],
        choices=["keras_gpt", "keras_hub", "hugging_face", "huggingface", "matmul_floor"],
        help="hugging_face (or huggingface) runs in the PyTorch process only",
    )
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the first")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch.set_num_threads in the PyTorch process (0: default)",
    )
    parser.add_argument(
        "--gpt2-small",
        action="store_true",
        help="also time keras_gpt at the GPT-2 small (124M) shape, batch 1",
    )
    parser.add_argument("--gpt2-small-tokens", type=int, default=64)
    parser.add_argument(
        "--dtype",
        nargs="+",
        default=["float32"],
        choices=["float32", "bfloat16", "int8"],
        help="keras_gpt weight formats to time side by side",
    )
    parser.add_argument("--shape", default="bench-small", choices=["bench-small", "gpt2-small"])
    parser.add_argument(
        "--quality",
        action="store_true",
        help="instead of timing: int8/bfloat16 greedy agreement with float32, validation "
        "loss and preset sizes",
    )
    parser.add_argument(
        "--preset",
        default=None,
        help="with --quality: this keras_gpt preset (e.g. a pretrain run's best/) instead of "
        "a random model of --shape",
    )
    parser.add_argument(
        "--data",
        default=os.environ.get("KERAS_GPT_SHAKESPEARE", SHAKESPEARE),
        help="with --quality: text whose validation split (last 10 %% of tokens) gives the "
        "prompts and the validation loss (default: tinyshakespeare)",
    )
    parser.add_argument(
        "--val-tokens",
        type=int,
        default=0,
        help="with --quality: score only the split's first this many tokens (0: all of it)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.libraries = ["hugging_face" if n == "huggingface" else n for n in args.libraries]
    if args.worker:
        print(json.dumps(worker(args)))
        return
    report = {
        "cpu": cpu_name(),
        "lscpu": cpu_details(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/generate.py " + " ".join(sys.argv[1:]),
        "shape": "the preset's"
        if args.quality and args.preset
        else GPT2_SMALL
        if args.shape == "gpt2-small"
        else SHAPE,
        "dtypes": args.dtype,
        "prompt": PROMPT,
        "new_tokens": NEW,
        "results": {},
    }
    for backend in args.backends:
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        command = [sys.executable, __file__, "--worker", *sys.argv[1:]]
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        if proc.returncode:
            report["results"][backend] = {"error": proc.stderr[-2000:]}
        else:
            report["results"][backend] = json.loads(proc.stdout.strip().splitlines()[-1])
    if args.quality:
        float32_across_backends(report["results"])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
