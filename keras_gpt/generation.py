"""Text generation with a key/value cache.

First version: prefill once, then an eager loop of one-token `call_with_cache`
steps with NumPy sampling. The compiled per-backend loop, ragged prompts and
streaming arrive with the generation issue.
"""

from __future__ import annotations

import numpy as np
from keras import ops


def sample_next(logits: np.ndarray, rng: np.random.Generator, sampler: str = "greedy",
                temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None) -> np.ndarray:
    """Picks one id per row from float logits (batch, vocabulary)."""
    if sampler == "greedy" or temperature == 0:
        return logits.argmax(-1)
    logits = logits.astype("float64") / temperature
    if top_k is not None:
        kth = np.sort(logits, axis=-1)[:, -top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if top_p is not None:
        order = np.argsort(-probs, axis=-1)
        sorted_probs = np.take_along_axis(probs, order, -1)
        # Keep the smallest prefix whose mass reaches top_p.
        drop = np.cumsum(sorted_probs, -1) - sorted_probs >= top_p
        sorted_probs[drop] = 0
        probs = np.zeros_like(probs)
        np.put_along_axis(probs, order, sorted_probs, -1)
        probs /= probs.sum(-1, keepdims=True)
    return np.array([rng.choice(len(p), p=p) for p in probs])


def generate(model, prompt_ids, max_new_tokens: int, sampler: str = "greedy",
             temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, stop_token_ids=None,
             seed: int | None = None) -> np.ndarray:
    """See `GPT.generate`."""
    prompt = np.asarray(prompt_ids)
    if prompt.ndim == 1:
        prompt = prompt[None]
    if prompt.ndim != 2 or prompt.shape[1] == 0:
        raise ValueError(f"`prompt_ids` must be a non-empty (batch, length) array, got {prompt.shape}.")
    batch, length = prompt.shape
    total = length + max_new_tokens
    if total > model.max_sequence_length:
        raise ValueError(
            f"prompt length {length} + max_new_tokens {max_new_tokens} = {total} exceeds "
            f"the model's max_sequence_length ({model.max_sequence_length})."
        )
    rng = np.random.default_rng(seed)
    stops = set(stop_token_ids or ())
    out = np.zeros((batch, total), "int32")
    out[:, :length] = prompt
    done = np.zeros(batch, bool)
    cache = model.init_cache(batch, total)
    logits, cache = model.call_with_cache(ops.convert_to_tensor(prompt, "int32"), cache, 0)
    for step in range(max_new_tokens):
        last = ops.convert_to_numpy(ops.cast(logits[:, -1], "float32"))
        next_ids = sample_next(last, rng, sampler, temperature, top_k, top_p)
        next_ids = np.where(done, 0, next_ids)
        out[:, length + step] = next_ids
        done |= np.isin(next_ids, list(stops))
        if done.all() or step == max_new_tokens - 1:
            break
        logits, cache = model.call_with_cache(
            ops.convert_to_tensor(next_ids[:, None], "int32"), cache, length + step
        )
    return out
