"""keras_gpt.evaluation and `keras-gpt evaluate`, checked against transformers computed here.

The reference is a `transformers.GPT2LMHeadModel` of an odd shape (3 layers,
3 heads of width 12, 45 positions, 263 tokens) whose every bias and LayerNorm
weight is perturbed by hand, so that a conversion that dropped or swapped one
would show. It is saved with `save_pretrained` and loaded with
`GPT.from_preset`; the reference figures are computed from transformers'
own logits in this file, with the definitions the field uses (Hugging Face's
sliding-window perplexity, lm-evaluation-harness' log-likelihood requests).

Tolerances: the same float32 weights run by PyTorch's kernels and by the
backend's give log-probabilities that differ by ~1e-6 (test_conversion.py
measures logits to ~1e-6); a perplexity is exp of a mean of them, so it
agrees to ~1e-6 relative. The bounds are the issue's: 1e-5 relative for
perplexity and bits per byte, 1e-4 for log-likelihoods.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from helpers import run_job, tiny_gpt

from keras_gpt import GPT
from keras_gpt.cli import main
from keras_gpt.evaluation import (
    Row,
    encode_request,
    last_word,
    loglikelihoods,
    multiple_choice,
    perplexity,
    score_rows,
    sliding_windows,
    token_byte_lengths,
)
from keras_gpt.tokenizers import (
    BytePairTokenizer,
    ByteTokenizer,
    CharTokenizer,
    bytes_to_unicode,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

POSITIONS = 45
TOKENIZER = ByteTokenizer()  # 257 ids (bytes + <|endoftext|>); the model has 263

DOCUMENTS = [
    "It was the best of times, it was the worst of times, it was the age of wisdom, "
    "it was the age of foolishness, it was the epoch of belief.",
    "Call me Ishmael. Some years ago, never mind how long precisely, having little money "
    "in my purse, I thought I would sail about a little and see the watery part of the world.",
    "Short one.",
    "é ü — unicode bytes count as bytes.",
]

ITEMS = [
    dict(context="The cat sat on the", endings=["mat.", "moon, singing", "a"], label=0),
    dict(context="She opened the door and ", endings=["left.", "the door left her."], label=1),
    dict(context="Numbers: one, two,", endings=["three", "seven", "ninety-nine", "ten"], label=0),
]

PASSAGES = [
    "He poured the coffee into his favourite mug",
    "The children ran down to the river",
    "At the end of the day she finally went home",
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(the transformers model, the keras_gpt model loaded from its save_pretrained dir)."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=263,
        n_positions=POSITIONS,
        n_embd=36,
        n_layer=3,
        n_head=3,
        initializer_range=0.08,
        bos_token_id=None,
        eos_token_id=None,
    )
    hf = transformers.GPT2LMHeadModel(config).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        perturbed = 0
        for name, parameter in hf.named_parameters():
            if name.endswith("bias") or ".ln_" in name or name.startswith("transformer.ln_f"):
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
                perturbed += 1
    # Per block: ln_1 and ln_2 (weight, bias), 4 Dense biases; ln_f weight, bias.
    assert perturbed == 3 * 8 + 2
    directory = tmp_path_factory.mktemp("hf_gpt2")
    hf.save_pretrained(directory)
    return hf, GPT.from_preset(str(directory))


def token_logprobs(hf, ids: list[int]) -> np.ndarray:
    """transformers' log P(ids[i] | ids[:i]) for i >= 1, in float64."""
    with torch.no_grad():
        logits = hf(torch.tensor([ids[:-1]])).logits[0].double()
    return torch.log_softmax(logits, -1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()


def hf_guide_nll(hf, ids: list[int], max_length: int, stride: int) -> tuple[float, int]:
    """The transformers perplexity guide's loop, with transformers' own loss.

    The guide adds `loss * (num_valid_tokens - batch_size)`; the exact count of
    tokens a window's loss averages over is the number of labels left after
    the shift, which is what is used here (the guide's subtraction is exact
    for the first window and one token short for later overlapping ones).
    """
    input_ids = torch.tensor([ids])
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + max_length, len(ids))
        trg_len = end - prev_end
        window = input_ids[:, begin:end]
        targets = window.clone()
        targets[:, :-trg_len] = -100
        valid = int((targets[:, 1:] != -100).sum())
        if valid:
            with torch.no_grad():
                loss = hf(window, labels=targets).loss.double().item()
            nll_sum += loss * valid
            n_tokens += valid
        prev_end = end
        if end == len(ids):
            break
    return nll_sum, n_tokens


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# -- sliding windows -----------------------------------------------------------


@pytest.mark.parametrize("n, context, stride", [(10, 6, 3), (100, 16, 5), (7, 8, 8), (50, 10, 10)])
def test_sliding_windows_score_what_the_guide_scores(n, context, stride):
    scored = [
        p for begin, end, first in sliding_windows(n, context, stride) for p in range(first, end)
    ]
    # The guide's labels: positions [end - trg_len, end) of each window, minus
    # its first position (no logits predict it).
    expected, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + context, n)
        expected += [p for p in range(prev_end, end) if p > begin]
        prev_end = end
        if end == n:
            break
    assert scored == expected
    assert len(set(scored)) == len(scored)  # each token at most once
    if stride < context:
        assert scored == list(range(1, n))  # every token but the first


# -- encode_request --------------------------------------------------------------

BYTES = ByteTokenizer()  # <|endoftext|> is 256
WOW = 93  # the id word_bpe gives " wow" below; " w" is 256, " wo" 257


@pytest.mark.parametrize(
    "tokenizer, context, continuation, expected",
    [
        # The context's trailing space moves into the continuation.
        (BYTES, "The cat ", "sat", ([84, 104, 101, 32, 99, 97, 116], [32, 115, 97, 116])),
        # An empty context is the start token, unless the continuation starts with it.
        (BYTES, "", "hi", ([256], [104, 105])),
        (BYTES, "", "<|endoftext|>hi", ([256], [104, 105])),
        # BPE: the space moves and " wow" is one token.
        (None, "ABC ", "wow", ([65, 66, 67], [WOW])),
        # BPE, a merge across the boundary: the context keeps its own tokens
        # (" w" = 256), the continuation is the pair's tokens after four.
        (None, "ABC w", "ow wow", ([65, 66, 67, 256], [WOW])),
    ],
)
def test_encode_request_gives_these_ids(tokenizer, context, continuation, expected):
    tokenizer = tokenizer or word_bpe(WOW)
    assert encode_request(tokenizer, context, continuation) == expected
    assert encode_request(tokenizer, context, continuation) == lm_eval_split(
        tokenizer, context, continuation
    )


def test_encode_request_splits_as_lm_eval():
    pairs = [
        ("The cat sat on the", " mat."),
        ("She opened the door and ", "left."),
        ("Trailing spaces   ", " and more"),
        ("é ü —", " unicode"),
        ("", "An empty context"),
        ("ABC w", "ow wow woe"),
        ("ABC wo", "w"),
    ]
    for tokenizer in (BYTES, word_bpe(WOW), word_bpe(7)):
        for context, continuation in pairs:
            split = lm_eval_split(tokenizer, context, continuation)
            assert encode_request(tokenizer, context, continuation) == split, (context, tokenizer)
    with pytest.raises(ValueError, match="needs a start token"):
        encode_request(ByteTokenizer(special_tokens=()), "", "x")


def lm_eval_split(tokenizer, context: str, continuation: str) -> tuple[list, list]:
    """lm-evaluation-harness' own split, from its `TemplateLM.loglikelihood`."""
    from lm_eval.api.model import TemplateLM

    eot = "<|endoftext|>"

    class Split(TemplateLM):
        eot_token_id = tokenizer.token_to_id(eot) if eot in tokenizer.special_tokens else None

        def tok_encode(self, string, **kwargs):
            return tokenizer.encode(string)

        def _loglikelihood_tokens(self, requests, **kwargs):
            return [
                (context_ids, continuation_ids) for _, context_ids, continuation_ids in requests
            ]

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise NotImplementedError

        def generate_until(self, requests, disable_tqdm=False):
            raise NotImplementedError

    ((context_ids, continuation_ids),) = Split().loglikelihood(
        [Request(context, continuation)], disable_tqdm=True
    )
    return list(context_ids), list(continuation_ids)


def test_docstring_examples_with_outputs_hold():
    import doctest

    from keras_gpt.evaluation import tasks

    for function in (tasks.encode_request, tasks.sliding_windows, tasks.token_byte_lengths):
        runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
        for test in doctest.DocTestFinder().find(
            function, globs={"ByteTokenizer": ByteTokenizer, **vars(tasks)}
        ):
            runner.run(test)
        assert runner.tries >= 1 and runner.failures == 0, function.__name__


# -- parity with transformers ------------------------------------------------


@pytest.mark.parametrize("stride", [POSITIONS, 17])
def test_perplexity_equals_transformers(reference, tmp_path, stride):
    hf, model = reference
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text(DOCUMENTS[0])
    write_jsonl(tmp_path / "docs" / "b.jsonl", [{"text": t} for t in DOCUMENTS[1:]])
    # batch_size 3 leaves a partial last batch; the shortest document is one window.
    result = perplexity(model, TOKENIZER, tmp_path / "docs", stride=stride, batch_size=3)

    nll, tokens = 0.0, 0
    for text in DOCUMENTS:
        doc_nll, doc_tokens = hf_guide_nll(hf, TOKENIZER.encode(text), POSITIONS, stride)
        nll += doc_nll
        tokens += doc_tokens
    # Bits per byte count the bytes of the scored tokens, one a token here: every
    # byte but the first of a document, and with disjoint windows (stride ==
    # context) but the first of each window, which nothing predicts either.
    sizes = [len(t.encode("utf-8")) for t in DOCUMENTS]
    unscored = len(sizes) if stride < POSITIONS else sum(-(-n // POSITIONS) for n in sizes)
    num_bytes = sum(sizes) - unscored
    assert result["tokens"] == tokens
    assert result["bytes"] == num_bytes and result["documents"] == len(DOCUMENTS)
    assert result["context"] == POSITIONS and result["stride"] == stride
    np.testing.assert_allclose(result["perplexity"], math.exp(nll / tokens), rtol=1e-5)
    np.testing.assert_allclose(result["mean_loss"], nll / tokens, rtol=1e-5)
    np.testing.assert_allclose(result["bits_per_byte"], nll / math.log(2) / num_bytes, rtol=1e-5)


# Characters of one, two, three and four bytes, and a special token in the text.
HOSTILE = "Zoë's café — naïve 日本語 🙂 text.<|endoftext|>Second: ü€𝄞 end. "


@pytest.fixture(scope="module")
def bpe():
    # Few merges: multi-byte characters stay split across byte tokens.
    return BytePairTokenizer.train([HOSTILE * 4], vocabulary_size=290, min_frequency=1)


def test_token_byte_lengths_sum_to_the_texts_bytes(bpe):
    chars = CharTokenizer.from_text(HOSTILE.replace("<|endoftext|>", ""), ["<|endoftext|>"])
    for tokenizer in (ByteTokenizer(), bpe, chars):
        lengths = token_byte_lengths(tokenizer)
        assert lengths.shape == (tokenizer.vocabulary_size,)
        ids = tokenizer.encode(HOSTILE)
        assert int(lengths[ids].sum()) == len(HOSTILE.encode("utf-8")), tokenizer
    # The BPE splits characters: some of its tokens are not whole characters.
    assert any("\ufffd" in bpe.decode([i]) for i in bpe.encode(HOSTILE))


def test_bits_per_byte_divide_by_the_bytes_of_the_scored_tokens(bpe, tmp_path):
    model = tiny_gpt(vocabulary_size=bpe.vocabulary_size, max_sequence_length=8)
    text = HOSTILE * 3
    (tmp_path / "doc.txt").write_text(text)
    result = perplexity(model, bpe, tmp_path / "doc.txt", context=8, stride=4)
    # Counted here from the text: all its bytes but those of the first token,
    # which nothing predicts; it is ASCII, so decoding it alone is exact. The
    # scored tokens include pieces of split characters (one or two bytes each).
    ids = bpe.encode(text)
    first = bpe.decode(ids[:1])
    assert first.isascii() and any("\ufffd" in bpe.decode([i]) for i in ids[1:])
    expected = len(text.encode("utf-8")) - len(first)
    assert result["tokens"] == len(ids) - 1
    assert result["bytes"] == expected
    nll = result["mean_loss"] * result["tokens"]
    assert result["bits_per_byte"] == pytest.approx(nll / math.log(2) / expected, rel=1e-12)


def test_multiple_choice_loglikelihoods_equal_transformers(reference, tmp_path):
    hf, model = reference
    requests = [(item["context"], " " + e) for item in ITEMS for e in item["endings"]]
    scores = loglikelihoods(model, TOKENIZER, requests, batch_size=4)
    expected = []
    for context, continuation in requests:
        # Bytes: the pair's bytes, scored after those of the context without
        # its trailing spaces (the harness moves them to the continuation).
        ids = list((context + continuation).encode("utf-8"))
        scored = len(context.rstrip().encode("utf-8"))
        expected.append(token_logprobs(hf, ids)[scored - 1 :].sum())
        assert scores[len(expected) - 1].tokens == len(ids) - scored
    np.testing.assert_allclose([s.loglikelihood for s in scores], expected, rtol=1e-4)

    # acc / acc_norm as lm-evaluation-harness computes them from those scores.
    # The same batch size: the same compiled programs (compiling dominates here).
    result = multiple_choice(model, TOKENIZER, write_jsonl(tmp_path / "mc.jsonl", ITEMS), 4)
    acc = acc_norm = 0
    start = 0
    for item in ITEMS:
        lls = np.array(expected[start : start + len(item["endings"])])
        start += len(item["endings"])
        lengths = np.array([len(e) for e in item["endings"]], float)
        acc += int(np.argmax(lls) == item["label"])
        acc_norm += int(np.argmax(lls / lengths) == item["label"])
    assert result == {
        "task": "multiple_choice",
        "acc": acc / len(ITEMS),
        "acc_norm": acc_norm / len(ITEMS),
        "items": len(ITEMS),
    }


def test_last_word_equals_transformers(reference, tmp_path):
    hf, model = reference
    path = tmp_path / "lambada.txt"
    path.write_text("\n".join(PASSAGES) + "\n")
    result = last_word(model, TOKENIZER, path, batch_size=2)

    lls, hits = [], []
    for text in PASSAGES:
        # Bytes: the passage's, the final word's (after the last space) scored.
        row = list(text.encode("utf-8"))
        scored = len(text.rpartition(" ")[0].encode("utf-8"))
        lls.append(token_logprobs(hf, row)[scored - 1 :].sum())
        with torch.no_grad():
            argmax = hf(torch.tensor([row[:-1]])).logits[0].argmax(-1).numpy()
        hits.append(bool((argmax[scored - 1 :] == row[scored:]).all()))
    assert result["items"] == len(PASSAGES)
    assert result["acc"] == sum(hits) / len(PASSAGES)
    np.testing.assert_allclose(result["perplexity"], math.exp(-np.mean(lls)), rtol=1e-5)


def word_bpe(word_id: int) -> BytePairTokenizer:
    """A byte-level BPE whose one merged word, `" wow"`, is the token `word_id`
    (the byte that had that id moves to the end): 256 bytes, " w", " wo", " wow",
    `<|endoftext|>`."""
    characters = bytes_to_unicode()
    tokens = [characters[b] for b in range(256)] + ["Ġw", "Ġwo", "Ġwow"]
    tokens[word_id], tokens[-1] = tokens[-1], tokens[word_id]
    return BytePairTokenizer(
        {t: i for i, t in enumerate(tokens)},
        [("Ġ", "w"), ("Ġw", "o"), ("Ġwo", "w")],
        special_tokens=["<|endoftext|>"],
    )


@pytest.fixture(scope="module")
def greedy_case(reference):
    """(tokenizer, prompt): a tokenizer in which the reference model's greedy
    continuation of `prompt` is `" wow wow wow wow"`.

    transformers decodes 4 tokens greedily after "ABCDE": this untrained model
    repeats one token, which the tokenizer then spells " wow" (a word, with
    its space, in one token), whatever id the model chose.
    """
    hf, _ = reference
    prompt = list(b"ABCDE")
    ids = list(prompt)
    for _ in range(4):
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0, -1]
        top = torch.topk(logits, 2).values
        assert top[0] - top[1] > 1e-3  # a clear argmax, the same in float32 on any backend
        ids.append(int(logits.argmax()))
    word = ids[-1]
    assert ids[len(prompt) :] == [word] * 4 and word not in prompt + list(b" wo") and word < 256
    tokenizer = word_bpe(word)
    assert tokenizer.encode("ABCDE wow wow wow wow") == ids  # the text is the greedy ids
    return tokenizer, "ABCDE"


def test_last_word_counts_the_greedy_word_as_a_hit(reference, greedy_case, tmp_path):
    _, model = reference
    tokenizer, prompt = greedy_case
    path = tmp_path / "passages.txt"
    # " wow" is the greedy next token after the prompt and after each " wow";
    # " woe" is " wo" + "e", whose first token is not.
    path.write_text(f"{prompt} wow\n{prompt} wow wow wow\n{prompt} woe\n")
    result = last_word(model, tokenizer, path, batch_size=2)
    assert result["items"] == 3 and result["acc"] == pytest.approx(2 / 3)


def test_is_greedy_marks_what_greedy_decoding_produces(reference, greedy_case):
    _, model = reference
    tokenizer, prompt = greedy_case
    greedy, last_changed, tail = loglikelihoods(
        model,
        tokenizer,
        [(prompt, " wow wow wow wow"), (prompt, " wow wow wow woe"), (prompt + " wow", " wow wow")],
    )
    assert greedy.is_greedy and tail.is_greedy and not last_changed.is_greedy
    assert (greedy.tokens, last_changed.tokens, tail.tokens) == (4, 5, 2)
    assert greedy.loglikelihood > last_changed.loglikelihood


# -- bad input -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return tiny_gpt(vocabulary_size=TOKENIZER.vocabulary_size)  # 1 block, 8 wide, 32 positions


GOOD = dict(context="a b", endings=["c", "d"], label=1)


@pytest.mark.parametrize(
    "records, message",
    [
        ([GOOD, {"context": "x", "label": 0}], "line 2 has no field 'endings'"),
        ([GOOD, GOOD, {**GOOD, "label": 2}], "line 3: label 2 is out of range for 2 endings"),
        ([{**GOOD, "label": "1"}], "line 1: 'label' must be a int, got str"),
        ([{**GOOD, "context": "x" * 40}], "line 1: context \\+ ending is 42 tokens"),
        ([{**GOOD, "endings": []}], "line 1: 'endings' must be non-empty strings"),
    ],
)
def test_multiple_choice_bad_input_names_the_line(tiny, tmp_path, records, message):
    path = write_jsonl(tmp_path / "mc.jsonl", records)
    with pytest.raises(ValueError, match=message) as error:
        multiple_choice(tiny, TOKENIZER, path)
    assert "mc.jsonl" in str(error.value)


def test_bad_files_name_the_problem(tiny, tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl' is empty"):
        multiple_choice(tiny, TOKENIZER, tmp_path / "empty.jsonl")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt' is empty"):
        perplexity(tiny, TOKENIZER, tmp_path / "empty.txt")
    (tmp_path / "broken.jsonl").write_text('{"text": "a b"}\n{"text": \n')
    with pytest.raises(ValueError, match="broken.jsonl' line 2 is not JSON"):
        last_word(tiny, TOKENIZER, tmp_path / "broken.jsonl")
    (tmp_path / "words.txt").write_text("two words\noneword\n")
    with pytest.raises(ValueError, match="words.txt' line 2 has no final word"):
        last_word(tiny, TOKENIZER, tmp_path / "words.txt")
    (tmp_path / "long.txt").write_text("x" * 40 + " end\n")
    with pytest.raises(ValueError, match="long.txt' line 1: the passage is 44 tokens"):
        last_word(tiny, TOKENIZER, tmp_path / "long.txt")
    (tmp_path / "ok.txt").write_text("some text")
    with pytest.raises(ValueError, match="`context` must be in \\[2, 33\\]"):
        perplexity(tiny, TOKENIZER, tmp_path / "ok.txt", context=34)
    with pytest.raises(ValueError, match="`stride` must be in \\[1, context=32\\]"):
        perplexity(tiny, TOKENIZER, tmp_path / "ok.txt", stride=33)


# -- the command -----------------------------------------------------------------


@pytest.fixture(scope="module")
def preset(tiny, tmp_path_factory):
    directory = tmp_path_factory.mktemp("preset")
    tiny.save_to_preset(str(directory), tokenizer=TOKENIZER)
    return directory


# The command line's plumbing: its figures are compared with the functions' on the
# same backend, whose own parity with transformers runs on every pass.
@pytest.mark.backend_independent
def test_cli_writes_the_figures(tiny, preset, tmp_path, capsys):
    data = tmp_path / "valid.txt"
    data.write_text(DOCUMENTS[1])
    out = tmp_path / "ppl.json"
    main(["evaluate", str(preset), "--data", str(data), "--stride", "8", "--json", str(out)])
    written = json.loads(out.read_text())
    capsys.readouterr()
    main(["evaluate", str(preset), "--data", str(data), "--stride", "8", "--no-progress"])
    assert json.loads(capsys.readouterr().out) == written  # stdout: the same JSON, alone
    expected = perplexity(tiny, TOKENIZER, data, stride=8)
    assert written["task"] == "perplexity" and written["data"] == [str(data)]
    for key, value in expected.items():
        # The same model and program; only the process differs.
        assert written[key] == (
            pytest.approx(value, rel=1e-6) if isinstance(value, float) else value
        )

    # A run directory evaluates its best/ preset.
    run = tmp_path / "run"
    shutil.copytree(preset, run / "best")
    mc = write_jsonl(tmp_path / "mc.jsonl", [GOOD, GOOD])
    main(["evaluate", str(run), "--data", str(mc), "--task", "multiple_choice", "--json", str(out)])
    written = json.loads(out.read_text())
    assert written["preset"] == str(run / "best")
    assert written["acc"] == multiple_choice(tiny, TOKENIZER, mc)["acc"]


@pytest.mark.backend_independent
def test_cli_last_word_and_context(tiny, preset, tmp_path, capsys):
    passages = tmp_path / "passages.txt"
    passages.write_text("The cat sat on the mat\nShe went home\nIt was the best of times\n")
    main(["evaluate", str(preset), "--data", str(passages), "--task", "last_word"])
    written = json.loads(capsys.readouterr().out)
    expected = last_word(tiny, TOKENIZER, passages)
    assert written["task"] == "last_word" and written["items"] == 3
    assert written["acc"] == expected["acc"]
    assert written["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-6)

    text = tmp_path / "valid.txt"
    text.write_text(DOCUMENTS[1])
    main(["evaluate", str(preset), "--data", str(text), "--context", "12", "--stride", "5"])
    written = json.loads(capsys.readouterr().out)
    assert (written["context"], written["stride"]) == (12, 5)
    expected = perplexity(tiny, TOKENIZER, text, context=12, stride=5)
    assert written["tokens"] == expected["tokens"] == len(DOCUMENTS[1].encode()) - 1
    assert written["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-6)
    with pytest.raises(SystemExit) as error:
        main(
            ["evaluate", str(preset), "--data", str(passages), "--task", "last_word"]
            + ["--context", "12"]
        )
    assert error.value.code == 2 and "apply to perplexity only" in capsys.readouterr().err


def test_cli_error_is_one_line(preset, tmp_path, capsys):
    mc = write_jsonl(tmp_path / "mc.jsonl", [GOOD, {**GOOD, "label": 5}])
    with pytest.raises(SystemExit) as error:
        main(["evaluate", str(preset), "--data", str(mc), "--task", "multiple_choice"])
    message = capsys.readouterr().err
    assert error.value.code == 2
    assert message.startswith("keras-gpt: error: ") and message.count("\n") == 1
    assert "mc.jsonl' line 2: label 5 is out of range" in message


# -- every backend ---------------------------------------------------------------


@pytest.mark.cross_backend
def test_same_scores_on_every_backend(tmp_path):
    preset = tmp_path / "preset"
    model = tiny_gpt(num_layers=2, hidden_dim=16, max_sequence_length=64)
    model.save_to_preset(str(preset), tokenizer=TOKENIZER)
    text = tmp_path / "valid.txt"
    text.write_text(" ".join(DOCUMENTS))
    mc = write_jsonl(tmp_path / "mc.jsonl", ITEMS)
    lw = tmp_path / "lw.txt"
    lw.write_text("\n".join(PASSAGES))
    tasks = {
        "perplexity": dict(data=str(text), stride=12, batch_size=3),
        "multiple_choice": dict(data=str(mc)),
        "last_word": dict(data=str(lw), batch_size=2),
    }
    code = (
        "import json, sys\n"
        "from keras_gpt.evaluation import evaluate\n"
        "from keras_gpt.model import GPT\n"
        "from keras_gpt.presets import load_tokenizer\n"
        "preset, tasks, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]\n"
        "model, tokenizer = GPT.from_preset(preset), load_tokenizer(preset)\n"
        "results = {t: evaluate(model, tokenizer, task=t, **o) for t, o in tasks.items()}\n"
        "open(out, 'w').write(json.dumps(results))\n"
    )
    results = {}
    for backend in ("tensorflow", "jax", "torch"):
        out = tmp_path / f"{backend}.json"
        run_job(["-c", code, preset, json.dumps(tasks), out], backend=backend)
        for task, result in json.loads(out.read_text()).items():
            results[backend, task] = result
    for task in tasks:
        ours = results["tensorflow", task]
        for backend in ("jax", "torch"):
            theirs = results[backend, task]
            for key, value in ours.items():
                if isinstance(value, float):
                    # float32 kernels of different backends: ~1e-7 relative here.
                    assert theirs[key] == pytest.approx(value, rel=1e-5), (backend, task, key)
                else:
                    assert theirs[key] == value, (backend, task, key)


# -- lm-evaluation-harness -------------------------------------------------------

TASK_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: {output_type}
{fields}
"""


def rolling_rows(ids: list[int], eot: int, length: int) -> list[Row]:
    """lm_eval's rolling windows as its docstring draws them: the first predicts
    the first `length` tokens after `eot`, later ones `length` each with one
    token of context, the last one the rest with a full-length context."""
    rows = [Row([eot] + ids[:length], 1)]
    done = min(length, len(ids))
    while done < len(ids):
        end = done + min(len(ids) - done, length)
        start = end - length - 1
        rows.append(Row(ids[start:end], done - start))
        done = end
    return rows


# Once: lm_eval's command path through the adapter. The adapter's answers on each
# backend are test_harness_adapter_answers_each_request_type's (every pass).
@pytest.mark.backend_independent
def test_lm_eval_runs_a_local_task_through_the_adapter(tmp_path, monkeypatch):
    # The lm_eval extra is part of the test environment (the Makefile): no skip.
    import lm_eval
    from lm_eval.tasks import TaskManager

    import keras_gpt.evaluation.harness  # noqa: F401  (registers "keras_gpt")

    # No network: the "json" dataset builder reads the local file.
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tiny_gpt(num_layers=2, hidden_dim=16, max_sequence_length=64, seed=4)
    preset = tmp_path / "preset"
    model.save_to_preset(str(preset), tokenizer=TOKENIZER)
    rng = np.random.default_rng(0)
    words = "red blue green cat dog sat ran the a on under over quickly".split()
    items = [
        dict(
            context=" ".join(rng.choice(words, 5)),
            endings=[" ".join(rng.choice(words, int(rng.integers(1, 4)))) for _ in range(4)],
            label=int(rng.integers(4)),
        )
        for _ in range(16)
    ]
    mc = write_jsonl(tmp_path / "mc.jsonl", items)
    documents = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in DOCUMENTS])
    (tmp_path / "kg_mc.yaml").write_text(
        TASK_YAML.format(
            name="kg_mc",
            path=mc,
            output_type="multiple_choice",
            fields='doc_to_text: "{{context}}"\ndoc_to_choice: "{{endings}}"\n'
            'doc_to_target: "{{label}}"\nmetric_list:\n  - metric: acc\n  - metric: acc_norm',
        )
    )
    (tmp_path / "kg_text.yaml").write_text(
        TASK_YAML.format(
            name="kg_text",
            path=documents,
            output_type="loglikelihood_rolling",
            fields='doc_to_text: ""\ndoc_to_target: "{{text}}"\n'
            "metric_list:\n  - metric: bits_per_byte",
        )
    )
    results = lm_eval.simple_evaluate(
        model="keras_gpt",
        model_args=f"preset={preset},batch_size=5",
        tasks=["kg_mc", "kg_text"],
        # Only the two tasks here: indexing lm_eval's thousands of built-in task files
        # took seconds.
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
    )["results"]

    ours = multiple_choice(model, TOKENIZER, mc)
    assert 0 < ours["acc"] < 1  # a check that could fail either way
    # Counts of items out of 16: exact.
    assert results["kg_mc"]["acc,none"] == pytest.approx(ours["acc"], abs=1e-12)
    assert results["kg_mc"]["acc_norm,none"] == pytest.approx(ours["acc_norm"], abs=1e-12)

    eot = TOKENIZER.token_to_id("<|endoftext|>")
    rows = [row for text in DOCUMENTS for row in rolling_rows(TOKENIZER.encode(text), eot, 64)]
    assert len(rows) > len(DOCUMENTS)  # some documents span several windows
    nll = -sum(s.loglikelihood for s in score_rows(model, rows))
    num_bytes = sum(len(t.encode("utf-8")) for t in DOCUMENTS)
    expected = nll / math.log(2) / num_bytes
    # The same rows, batched differently: float32 sums in another order.
    assert results["kg_text"]["bits_per_byte,none"] == pytest.approx(expected, rel=1e-5)


class Request:
    """What the adapter reads from an lm_eval `Instance`: its `args`."""

    def __init__(self, *args):
        self.args = args


@pytest.mark.backend_independent  # the adapter's requests: scoring per backend is the parity tests'
def test_harness_adapter_answers_each_request_type(tiny):
    from keras_gpt.evaluation.harness import KerasGPTLM

    lm = KerasGPTLM(model=tiny, tokenizer=TOKENIZER)  # batch 8, as the checks below
    pairs = [("a b", " c"), ("", "hello"), ("x" * 40, " y")]  # empty, and truncated context
    scores = lm.loglikelihood([Request(*p) for p in pairs])
    expected = loglikelihoods(tiny, TOKENIZER, pairs[:2])
    assert [s[0] for s in scores[:2]] == pytest.approx([e.loglikelihood for e in expected])
    # Too long for the model: lm_eval keeps the last max_length + 1 tokens.
    ids = TOKENIZER.encode("x" * 40 + " y")[-33:]
    (kept,) = score_rows(tiny, [Row(ids, 31)])
    assert scores[2] == (pytest.approx(kept.loglikelihood), kept.is_greedy)

    (rolling,) = lm.loglikelihood_rolling([Request("some words " * 8)])
    rows = rolling_rows(
        TOKENIZER.encode("some words " * 8), TOKENIZER.token_to_id("<|endoftext|>"), 32
    )
    assert [len(r.ids) - r.first for r in rows] == [32, 32, 24]
    assert rolling == pytest.approx(sum(s.loglikelihood for s in score_rows(tiny, rows)), rel=1e-6)

    (text,) = lm.generate_until([Request("ab", {"until": ["q"], "max_gen_toks": 6})])
    prompt, eot = TOKENIZER.encode("ab"), TOKENIZER.token_to_id("<|endoftext|>")
    tokens = tiny.generate([prompt], max_new_tokens=6, sampler="greedy", stop_token_ids=[eot])
    full = TOKENIZER.decode([t for t in tokens[0, len(prompt) :] if t != eot])
    assert text == full.split("q")[0]
