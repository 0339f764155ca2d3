"""An lm-evaluation-harness model for keras_gpt (needs the `lm_eval` extra).

Importing this module registers the model name `keras_gpt` with
lm-evaluation-harness. lm_eval's own command does not import third-party
models, so run it through this module, which registers the model and then
hands its arguments to lm_eval's command line unchanged:

    python -m keras_gpt.evaluation.harness --model keras_gpt \\
        --model_args preset=hf://openai-community/gpt2 --batch_size 16 --tasks hellaswag

From Python, pass an instance: `lm_eval.simple_evaluate(model=KerasGPTLM(...))`.
The three request types run on any backend: `loglikelihood` and
`loglikelihood_rolling` through `keras_gpt.evaluation`'s batched scoring
(one forward pass per row), `generate_until` through `GPT.generate`.
"""

from __future__ import annotations

from typing import Any

import keras

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"{error}; keras_gpt.evaluation.harness needs lm-evaluation-harness: "
        "pip install 'keras-gpt[lm_eval]'"
    ) from None

from keras_gpt.evaluation.scoring import Row, score_rows
from keras_gpt.evaluation.tasks import encode_request
from keras_gpt.model import GPT
from keras_gpt.presets import load_tokenizer
from keras_gpt.tokenizers import END_OF_TEXT, Tokenizer


@register_model("keras_gpt")
class KerasGPTLM(LM):
    """A keras_gpt model as an lm-evaluation-harness `LM`.

    Args:
        preset: a preset handle (what `GPT.from_preset` takes); or give
            `model` and `tokenizer`.
        model: a `keras_gpt.GPT`.
        tokenizer: its tokenizer.
        batch_size: rows per forward pass (lm_eval passes `--batch_size`).
        max_gen_toks: default largest number of new tokens in `generate_until`.
        **kwargs: other arguments lm_eval passes (`device`, ...), ignored:
            the Keras backend places the model.

    Example:
    >>> import lm_eval
    >>> lm = KerasGPTLM(preset="hf://openai-community/gpt2", batch_size=16)
    >>> lm_eval.simple_evaluate(model=lm, tasks=["lambada_openai"])
    """

    def __init__(
        self,
        preset: str | None = None,
        model: keras.Model | None = None,
        tokenizer: Tokenizer | None = None,
        batch_size: int | str = 8,
        max_gen_toks: int = 256,
        **kwargs: Any,
    ):
        super().__init__()
        if (preset is None) == (model is None):
            raise ValueError("Give either `preset` or `model` (with `tokenizer`).")
        self.model = GPT.from_preset(preset) if preset is not None else model
        self.tokenizer = load_tokenizer(preset) if preset is not None else tokenizer
        if self.tokenizer is None:
            raise ValueError("`model` needs its `tokenizer`.")
        # lm_eval's "auto" batch size probes memory with its own models; a fixed size here.
        self.batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self.max_length = int(self.model.max_sequence_length)
        self.eot_token_id = self.tokenizer.end_of_text_id

    @property
    def tokenizer_name(self) -> str:
        return type(self.tokenizer).__name__

    def _score(self, rows: list[Row], groups: list[int] | None = None):
        return score_rows(self.model, rows, self.batch_size, groups)

    def _fit(self, ids: list[int], first: int) -> Row:
        # As lm_eval's Hugging Face model: keep the last max_length + 1 tokens.
        cut = max(0, len(ids) - (self.max_length + 1))
        return Row(ids[cut:], max(1, first - cut))

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """`(log P(continuation | context), is_greedy)` for each request's `args`."""
        rows = []
        for request in requests:
            context_ids, continuation_ids = encode_request(self.tokenizer, *request.args)
            rows.append(self._fit(context_ids + continuation_ids, len(context_ids)))
        return [(s.loglikelihood, s.is_greedy) for s in self._score(rows)]

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Each text's total log-likelihood, in lm_eval's disjoint rolling windows
        after the `<|endoftext|>` prefix token."""
        if self.eot_token_id is None:
            raise ValueError("loglikelihood_rolling needs a tokenizer with <|endoftext|>.")
        rows, groups = [], []
        for number, request in enumerate(requests):
            (text,) = request.args
            windows = get_rolling_token_windows(
                self.tokenizer.encode(text), self.eot_token_id, self.max_length, 1
            )
            for context, predicted in map(make_disjoint_window, windows):
                # Row: context then the predicted tokens; context[0] predicts predicted[0].
                rows.append(Row(context + predicted, len(context)))
                groups.append(number)
        totals = [0.0] * len(requests)
        for group, score in zip(groups, self._score(rows)):
            totals[group] += score.loglikelihood
        return totals

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuation of each context, cut before the first stop string."""
        outputs = []
        for request in requests:
            context, options = request.args
            options = dict(options or {})
            until = options.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            if self.eot_token_id is not None and END_OF_TEXT not in until:
                until.append(END_OF_TEXT)
            # Leave room for the new tokens: keep the context's last tokens.
            new_tokens = min(
                int(options.get("max_gen_toks", self.max_gen_toks)), self.max_length - 1
            )
            ids = self.tokenizer.encode(context) or [self.eot_token_id or 0]
            ids = ids[-(self.max_length - new_tokens) :]
            generated = self.model.generate(
                [ids],
                max_new_tokens=new_tokens,
                sampler="greedy",
                stop_token_ids=None if self.eot_token_id is None else [self.eot_token_id],
                pad_token_id=self.eot_token_id or 0,
                return_lengths=True,
            )
            tokens, lengths = generated
            text = self.tokenizer.decode(tokens[0, len(ids) : int(lengths[0])])
            for stop in until:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            outputs.append(text)
        return outputs


def main(argv: list[str] | None = None) -> None:
    """lm_eval's command line, with the `keras_gpt` model registered.

    Args:
        argv: the arguments (default `sys.argv[1:]`).
    """
    import sys

    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
