"""Generative "+"/"-" reward models: RLHFlow PRM/ORM (chat turns) and Math-Shepherd-style tag PRMs.

Both read a causal LM's next-token distribution restricted to the ``good``/``bad`` tokens
(``softmax([logit_good, logit_bad])[0]`` = probability of ``good``) at one position per step,
all steps of a response in ONE forward pass: causal attention makes the logits at a step's
position independent of the later steps.  Only the hidden states at those positions go through
the LM head, so no ``(batch, length, vocab)`` tensor is built.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers import AutoModelForCausalLM

from .base import AGGREGATIONS, Encoded, Scorer, aggregate, register_scorer


__all__ = [
    "CausalLMStepScorer",
    "MathShepherdScorer",
    "RLHFlowORMScorer",
    "RLHFlowPRMScorer",
    "TokenPRMScorer",
]


class CausalLMStepScorer(Scorer):
    """Shared loading and read-out; a reward is the ``aggregation`` of its step probabilities.

    The LM head is applied to the gathered hidden states (plus ``final_logit_softcapping`` when
    the config has one), which equals the model's own logits for Llama/Mistral/Qwen-style LMs.

    ``softmax_dtype``: ``"float32"`` (``card``, default) takes the softmax of the two logits in float32;
    ``"model"`` (``paper``) in the logits' own dtype, as the authors' ``logits.softmax(dim=-1)`` on a bfloat16 model
    does: a probability is then one of the bfloat16 values (129 of them in [0.5, 1]), so ties are common.
    """

    default_aggregation = "mean"
    paper_options: ClassVar[dict[str, Any]] = {"softmax_dtype": "model"}

    def __init__(
        self,
        *,
        aggregation: str | None = None,
        good_token: str = "+",
        bad_token: str = "-",
        step_separator: str = "\n\n",
        softmax_dtype: str = "float32",
        **common: Any,
    ) -> None:
        super().__init__(**common)
        if softmax_dtype not in ("float32", "model"):
            raise ValueError(
                f"softmax_dtype must be 'float32' or 'model', not {softmax_dtype!r}"
            )
        self.softmax_dtype = softmax_dtype
        aggregation = aggregation or self.default_aggregation
        if aggregation not in AGGREGATIONS:
            raise ValueError(
                f"unknown aggregation {aggregation!r}; choose from {sorted(AGGREGATIONS)}"
            )
        if not step_separator:
            raise ValueError("step_separator must be a non-empty string")
        self.aggregation = aggregation
        self.good_token = good_token
        self.bad_token = bad_token
        self.step_separator = step_separator
        self.candidate_ids: tuple[int, int] = (-1, -1)

    def _load(self):
        return self._load_auto(AutoModelForCausalLM)

    def _setup(self) -> None:
        self._lm_head = self.model.get_output_embeddings()
        if self._lm_head is None:
            raise ValueError(
                f"{self.model_id}: causal LM without an output embedding (LM head)"
            )
        self._softcap = getattr(self.model.config, "final_logit_softcapping", None)
        vocab = self._lm_head.weight.shape[0]
        for t in self.candidate_ids:
            if not 0 <= t < vocab:
                raise ValueError(
                    f"candidate token id {t} outside the vocabulary of {vocab}"
                )

    def split_steps(self, response: str) -> list[str]:
        return [s.strip() for s in response.split(self.step_separator)]

    def _forward(self, input_ids, attention_mask, position_ids, rows, cols):
        hidden = self.model.base_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state
        h = self._gather(hidden, rows, cols)
        logits = self._lm_head(h)[:, list(self.candidate_ids)]
        if self.softmax_dtype == "float32":
            logits = logits.float()
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits.softmax(dim=-1)[:, 0]

    def score_steps(
        self, questions: list[str], responses: list[str]
    ) -> list[list[float]]:
        """Per-step probabilities of ``good_token`` for each pair (the values ``score`` aggregates)."""
        return self._read_values(questions, responses)

    def _finalize(self, values: list[float]) -> float:
        return aggregate(values, self.aggregation)


@register_scorer("rlhflow-prm")
class RLHFlowPRMScorer(CausalLMStepScorer):
    """RLHFlow/Llama3.1-8B-PRM-Deepseek-Data (math-rm/prm_evaluate.py of RLHFlow/RLHF-Reward-Modeling).

    Steps: ``response.split("\\n\\n")``, each ``strip()``-ed (empty steps kept, as in the
    script).  Conversation: ``user(question + " " + step_1), assistant("+"), user(step_2),
    assistant("+"), ...`` rendered by the tokenizer's chat template without generation prompt
    (single BOS, from the template).  Step score: ``softmax(logits[["+", "-"]])[0]`` at the
    position predicting each assistant ``"+"`` -- the script's ``logits[:, -3]`` of each prefix
    conversation for the Llama-3.1 template (``... \\n\\n + <|eot_id|>``).  Here the position
    is located as (index of that turn's ``"+"`` token) - 1, in one forward pass over the full
    conversation; every prefix conversation is checked to tokenize to a prefix of it.
    Token ids: ``encode("+")[-1]`` / ``encode("-")[-1]`` (the script's rule).  Aggregation:
    ``mean`` (the script's rule); ``min``/``max``/``last``/``prod`` selectable.
    """

    default_model = "RLHFlow/Llama3.1-8B-PRM-Deepseek-Data"

    def _setup(self) -> None:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"{self.model_id}: tokenizer has no chat template")
        enc = self.encoder.encode
        self.candidate_ids = (
            enc(self.good_token, add_special_tokens=False)[-1],
            enc(self.bad_token, add_special_tokens=False)[-1],
        )
        super()._setup()

    def conversation(self, question: str, steps: list[str]) -> list[dict[str, str]]:
        conv: list[dict[str, str]] = []
        for k, step in enumerate(steps):
            conv.append(
                {"role": "user", "content": f"{question} {step}" if k == 0 else step}
            )
            conv.append({"role": "assistant", "content": self.good_token})
        return conv

    def _tokenize(self, conv: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(conv, tokenize=False)
        return self.encoder.encode(text, add_special_tokens=False)

    def _encode(self, question: str, response: str) -> Encoded:
        conv = self.conversation(question, self.split_steps(response))
        good = self.candidate_ids[0]
        prefixes, positions, prev = [], [], 0
        for end in range(2, len(conv) + 1, 2):
            ids = self._tokenize(conv[:end])
            j = next(
                (i for i in range(len(ids) - 1, prev - 1, -1) if ids[i] == good), None
            )
            if j is None or j == 0:
                raise ValueError(
                    f"{self.name}: no {self.good_token!r} token (id {good}) found in assistant turn {end // 2}; "
                    "the chat template or tokenizer merges it with its neighbours"
                )
            positions.append(j - 1)
            prefixes.append(ids)
            prev = len(ids)
        full = prefixes[-1]
        for ids in prefixes[:-1]:
            if full[: len(ids)] != ids:
                raise ValueError(
                    f"{self.name}: chat template output is not prefix-stable across turns"
                )
        return Encoded(full, positions)


@register_scorer("rlhflow-orm")
class RLHFlowORMScorer(RLHFlowPRMScorer):
    """RLHFlow/Llama3.1-8B-ORM-Deepseek-Data: the PRM recipe with the whole response as one step.

    Conversation ``user(question + " " + response), assistant("+")``; score = P("+").  The SWIFT
    paper's "Deepseek" baseline (``eval/get_baseline_rewards.py``, checkpoint named in
    ``script/train_and_eval.sh``) is this model with this conversation, read at ``logits[:, -3]``;
    its protocol only adds the instruction.
    """

    default_model = "RLHFlow/Llama3.1-8B-ORM-Deepseek-Data"

    def split_steps(self, response: str) -> list[str]:
        return [response]


@register_scorer("token-prm")
class TokenPRMScorer(CausalLMStepScorer):
    """Math-Shepherd-style PRM: a step tag after every step, "+"/"-" read at the tags.

    Text: ``input_format.format(question=q, response=body)`` (default ``"{question} {response}"``)
    where ``body = step_join.join(f"{step} {step_tag}" for step in steps)`` and steps are
    ``response.split(step_separator)``, stripped, empty ones dropped -- so every step, the last
    included, ends in ``" " + step_tag``.  Tokenized with the tokenizer defaults (BOS added),
    like the authors' ``tokenizer.encode``.  Step scores are read AT every position holding the
    step-tag id (the authors' ``scores[input_id == step_tag_id]``: the logits there predict the
    token after the tag).

    Token ids (overridable with ``step_tag_id`` / ``candidate_token_ids``), derived as the
    authors do: ``encode(step_tag)[-1]`` and ``encode(f"{good} {bad}")`` minus a leading BOS
    (and whitespace-only tokens, for tokenizers that keep the space as its own token).
    Options: ``step_tag`` (required here), ``good_token``/``bad_token`` (``"+"``/``"-"``),
    ``step_separator`` (``"\\n\\n"``), ``step_join`` (``"\\n"``), ``input_format``,
    ``aggregation`` (``"min"``), ``outcome`` (``False``; ``True`` scores the response as one
    step, as is, unsplit and unstripped: ``input_format`` with ``response = f"{response} {step_tag}"``,
    one value read at that final tag, which must be the last token apart from special tokens).
    """

    default_aggregation = "min"
    default_step_tag: str | None = None

    def __init__(
        self,
        *,
        step_tag: str | None = None,
        step_join: str = "\n",
        input_format: str = "{question} {response}",
        step_tag_id: int | None = None,
        candidate_token_ids: tuple[int, int] | None = None,
        outcome: bool = False,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.outcome = bool(outcome)
        self.step_tag = step_tag or self.default_step_tag
        if not self.step_tag:
            raise ValueError(
                "token-prm needs step_tag=... (the token appended after every step)"
            )
        if "{question}" not in input_format or "{response}" not in input_format:
            raise ValueError("input_format must contain {question} and {response}")
        self.step_join = step_join
        self.input_format = input_format
        self.step_tag_id = step_tag_id
        if candidate_token_ids is not None:
            if len(candidate_token_ids) != 2:
                raise ValueError("candidate_token_ids must be (good_id, bad_id)")
            self.candidate_ids = (
                int(candidate_token_ids[0]),
                int(candidate_token_ids[1]),
            )

    def _setup(self) -> None:
        enc = self.encoder
        if self.step_tag_id is None:
            self.step_tag_id = enc.encode(self.step_tag, add_special_tokens=False)[-1]
        if self.candidate_ids == (-1, -1):
            ids = enc.encode(f"{self.good_token} {self.bad_token}")
            if ids and enc.bos_id is not None and ids[0] == enc.bos_id:
                ids = ids[1:]
            if enc.eos_id is not None and ids and ids[-1] == enc.eos_id:
                ids = ids[:-1]
            ids = [t for t in ids if self.tokenizer.decode([t]).strip()]
            if len(ids) != 2:
                raise ValueError(
                    f"cannot derive single-token ids for {self.good_token!r}/{self.bad_token!r} "
                    f"(got {ids}); pass candidate_token_ids=(good_id, bad_id)"
                )
            self.candidate_ids = (ids[0], ids[1])
        super()._setup()

    def split_steps(self, response: str) -> list[str]:
        return [s for s in super().split_steps(response) if s] or [""]

    def format(self, question: str, response: str) -> str:
        steps = [response] if self.outcome else self.split_steps(response)
        body = self.step_join.join(f"{s} {self.step_tag}" for s in steps)
        return self.input_format.format(question=question, response=body)

    def _encode(self, question: str, response: str) -> Encoded:
        ids = self.encoder.encode(self.format(question, response))
        positions = [i for i, t in enumerate(ids) if t == self.step_tag_id]
        if self.outcome:
            special = self.encoder.special_ids
            if not positions or any(t not in special for t in ids[positions[-1] + 1 :]):
                raise ValueError(
                    f"{self.name}: the final step tag (id {self.step_tag_id}) is not the last token; "
                    "the tokenizer merges the tag with its neighbours"
                )
            return Encoded(ids, positions[-1:])
        n_steps = len(self.split_steps(response))
        if len(positions) < n_steps:
            raise ValueError(
                f"{self.name}: found {len(positions)} step tag(s) (id {self.step_tag_id}) for {n_steps} step(s); "
                "the tokenizer merges the tag with its neighbours"
            )
        return Encoded(ids, positions)


@register_scorer("math-shepherd")
class MathShepherdScorer(TokenPRMScorer):
    """peiyi9979/math-shepherd-mistral-7b-prm (model card recipe).

    ``f"{question} {response}"`` with every step (split on ``"\\n\\n"``) ending in ``" ки"`` and
    steps joined by ``"\\n"`` as in Math-Shepherd's data (``"... ки\\nStep 2: ... ки"``); step
    score = P("+") over the ``"+"``/``"-"`` candidates at the tag positions; aggregated by
    ``min`` (the paper's rule).  With the checkpoint's tokenizer the derived ids are the card's
    ``[648, 387]`` (``▁+``, ``▁-``) and step tag ``12902``.  The repository ships only ``tokenizer.model``:
    ids are SentencePiece's, as transformers 4's slow tokenizer (and its conversion) gives them.

    ``paper`` protocol: the SWIFT paper's script (``eval/get_baseline_rewards.py``) uses it as an
    outcome model, ``tokenizer.encode(f"{prompt} {response} ки")`` with one score read at that tag
    (``outcome=True``).  Its ``candidate_tokens`` and ``final_tag_id`` are not defined in the
    published script (nor in its ``utils.py``); the card's values, derived as above, are assumed.
    Where the response itself holds the tag the script's ``.item()`` would fail; the final tag is read.  P(+) comes
    from a softmax in the model's dtype (bf16), as the script's does (``softmax_dtype="model"``).
    """

    default_model = "peiyi9979/math-shepherd-mistral-7b-prm"
    default_step_tag = "ки"
    paper_options: ClassVar[dict[str, Any]] = {
        **CausalLMStepScorer.paper_options,
        "outcome": True,
    }
