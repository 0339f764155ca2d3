"""Continuous batching (`keras_gpt.generation.SlotEngine`): exactness under churn, no compiles.

Runs on the current backend (the suite runs per backend). One tiny RoPE model
and one engine are shared by the module, so each program compiles once.
"""

from __future__ import annotations

import numpy as np
import pytest
from keras import ops

from keras_gpt.generation import RowSampler, SlotEngine, SlotRequest
from tests.helpers import tiny_gpt

#: Every request's prompt + max_new_tokens fits generate's smallest cache bucket (16),
#: so the references `model.generate` computes alone share one compiled program.
WIDTH = 16


@pytest.fixture(scope="module")
def model():
    return tiny_gpt(position_embedding="rope", qk_norm=True)


@pytest.fixture(scope="module")
def engine(model):
    return SlotEngine(model, max_batch=3)


def numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def test_greedy_requests_under_churn_equal_generate_alone(model, engine):
    """Requests join while others decode and some leave mid-decode (cancelled, or done
    early): each finished one has the tokens `model.generate` gives its prompt alone."""
    rng = np.random.default_rng(1)
    requests = []
    for _ in range(7):
        length = int(rng.integers(1, 8))
        prompt = rng.integers(0, 257, length).tolist()
        requests.append(SlotRequest(prompt, int(rng.integers(1, WIDTH - length + 1))))
    doomed = requests[2]
    doomed.max_new_tokens = WIDTH - len(doomed.prompt_ids)
    pending, step, admitted = list(requests), 0, []
    while pending or engine.busy:
        if pending and step % 2 == 0:  # a new request every other step
            admitted.append(engine.submit(pending.pop(0)))
        if step == 5:
            assert doomed.slot is not None and not doomed.finished  # decoding now
            engine.cancel(doomed)
        engine.step()
        step += 1
    assert doomed.finish_reason == "cancelled"
    assert len(doomed.tokens) < doomed.max_new_tokens
    assert engine.active == 0
    for request in requests:
        if request is doomed:
            continue
        assert request.finish_reason == "length"
        prompt = request.prompt_ids
        alone = model.generate([prompt], request.max_new_tokens)[0, len(prompt) :]
        assert request.tokens == alone.tolist(), prompt


def test_a_stop_id_ends_a_request_and_frees_its_slot(model, engine):
    first, second = [5, 6, 7], [1, 2]
    tokens = model.generate([first], 8)[0, 3:].tolist()
    stop = tokens[2]
    engine.stop_token_ids = {stop}
    try:
        done = engine.run([SlotRequest(first, 8), SlotRequest(second, 3)])
    finally:
        engine.stop_token_ids = set()
    assert done[0].finish_reason == "stop" and done[0].tokens == tokens[: tokens.index(stop) + 1]
    alone = model.generate([second], 3)[0, 2:].tolist()
    expected = alone[: alone.index(stop) + 1] if stop in alone else alone
    assert done[1].tokens == expected and engine.active == 0


def test_seeded_sampled_requests_are_the_same_alone_and_under_load(model, engine):
    """A seeded request's tokens: those of row `sample_index` of `generate` with its seed,
    alone in the engine or among requests with other settings."""
    settings = [(0.9, None, None), (1.3, 5, None), (0.7, None, 0.8)]

    def sampled():
        return [
            SlotRequest([3, 1, 4], 10, t, k, p, seed=11, sample_index=i)
            for i, (t, k, p) in enumerate(settings)
        ]

    alone = [engine.run([r])[0].tokens for r in sampled()]
    crowd = [SlotRequest([9] * n, 12 - n, temperature=0.5 * n, seed=n) for n in range(1, 4)]
    loaded = sampled()
    engine.submit(crowd[0])
    engine.step()
    engine.run(loaded[:1] + crowd[1:] + loaded[1:])
    assert [r.tokens for r in loaded] == alone
    # Row i of a RowSampler call is row i of a generate call with row i's settings
    # for every row (tests/test_serving_sampling.py checks that part).
    t, k, p = zip(*settings)
    sampler = RowSampler(t, k, p, seeds=[11] * 3)
    reference = model.generate([[3, 1, 4]] * 3, 10, sampler=sampler)
    assert alone == reference[:, 3:].tolist()


def test_new_sampler_values_compile_nothing_after_warmup(engine):
    engine.warmup(decode_runs=1)
    programs = engine.program_keys
    assert len(programs) == len(engine.prefill_buckets()) + len(engine.decode_programs())
    rng = np.random.default_rng(2)
    requests = [
        SlotRequest(
            rng.integers(0, 257, int(rng.integers(1, 30))).tolist(),
            2,
            temperature=float(rng.uniform(0, 2)),
            top_k=[None, int(rng.integers(1, 50))][i % 2],
            top_p=[None, float(rng.uniform(0.1, 1))][i // 2 % 2],
            seed=i,
        )
        for i in range(8)
    ]
    engine.run(requests)
    assert engine.program_keys == programs


def test_static_scheduler_admits_only_into_an_empty_engine(engine):
    long, short = SlotRequest([1], 6), SlotRequest([2], 2)
    engine.scheduler = "static"
    try:
        engine.submit(long)
        engine.step()
        engine.submit(short)
        steps = 0
        while not short.tokens:
            engine.step()
            steps += 1
    finally:
        engine.scheduler = "continuous"
    assert long.finished and steps == 5  # it waited for the whole batch
    long, late = SlotRequest([1], 6), SlotRequest([3], 2)
    engine.submit(long)
    engine.step()
    engine.submit(late)
    engine.step()
    assert late.tokens and not long.finished  # it joined at the next step
    engine.run([])
    while engine.busy:
        engine.step()


def test_bad_requests_are_refused(model, engine):
    with pytest.raises(ValueError, match="fit"):
        engine.submit(SlotRequest([1] * 30, 3))
    with pytest.raises(ValueError, match="at least one"):
        engine.submit(SlotRequest([], 3))
    with pytest.raises(ValueError, match="scheduler"):
        SlotEngine(model, scheduler="fifo")


def test_greedy_requests_beside_sampled_ones_equal_generate_alone(model, engine):
    """Sampled slots run in lanes of the step (1 or 3 here): greedy requests beside
    them keep `model.generate`'s tokens, and each sampled one its tokens alone."""

    def sampled():
        return [SlotRequest([2, 7], 9, 0.8, seed=4), SlotRequest([6], 7, 1.1, 3, seed=5)]

    alone = [engine.run([r])[0].tokens for r in sampled()]
    # Three slots: greedy, sampled, sampled (two lanes used, the third padded), then
    # one sampled lane beside two greedy slots once the second sampled one ends.
    greedy = [SlotRequest([5, 3], 12), SlotRequest([8, 1, 1], 10)]
    both = sampled()
    engine.run([greedy[0], *both, greedy[1]])
    assert [r.tokens for r in both] == alone
    for request in greedy:
        prompt = request.prompt_ids
        expected = model.generate([prompt], request.max_new_tokens)[0, len(prompt) :]
        assert request.tokens == expected.tolist(), prompt
