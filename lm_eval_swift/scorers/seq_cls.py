"""Sequence-classification reward models scored through their own chat template (Skywork, ...)."""

from __future__ import annotations

from typing import Any

from transformers import AutoModelForSequenceClassification

from .base import Encoded, Scorer, register_scorer


__all__ = ["SeqClsScorer", "SkyworkScorer", "SkyworkV02Scorer"]


@register_scorer("seq-cls")
class SeqClsScorer(Scorer):
    """Any ``AutoModelForSequenceClassification`` reward model with a chat template.

    The conversation ``[user: question, assistant: response]`` is rendered with the tokenizer's
    chat template (``tokenize=False``) and tokenized with ``add_special_tokens=False``, which is
    exactly ``apply_chat_template(tokenize=True)``: the template's BOS is the only one.  The ids come from the
    checkpoint's ``tokenizer.json`` as the file states it (the reference encoder, :attr:`Scorer.encoder`).  The
    reward is ``logits[0][label_index]`` of an unpadded single-sequence forward, i.e. the
    ``score`` head read where transformers pools: the rightmost token that is not
    ``config.pad_token_id`` (the last token when there is no pad id).  That index is computed
    per sequence before padding, so batching and padding side never move it.  Models without a
    ``score`` head fall back to the model's own pooled logits.

    Options: ``chat_template`` (override the tokenizer's), ``label_index`` (default 0).
    """

    def __init__(
        self, *, chat_template: str | None = None, label_index: int = 0, **common: Any
    ) -> None:
        super().__init__(**common)
        self.chat_template = chat_template
        self.label_index = label_index

    def _load(self):
        return self._load_auto(AutoModelForSequenceClassification)

    def _setup(self) -> None:
        if self.chat_template is not None:
            self.tokenizer.chat_template = self.chat_template
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"{self.model_id}: tokenizer has no chat template (pass chat_template=...)"
            )
        num_labels = self.model.config.num_labels
        if not 0 <= self.label_index < num_labels:
            raise ValueError(
                f"label_index {self.label_index} out of range for {num_labels} label(s)"
            )
        self._pool_pad_id = self.model.config.get_text_config().pad_token_id
        self._head = getattr(self.model, "score", None)

    def messages(self, question: str, response: str) -> list[dict[str, str]]:
        return [
            {"role": "user", "content": question},
            {"role": "assistant", "content": response},
        ]

    def _encode(self, question: str, response: str) -> Encoded:
        text = self.tokenizer.apply_chat_template(
            self.messages(question, response), tokenize=False
        )
        ids = self.encoder.encode(text, add_special_tokens=False)
        pad = self._pool_pad_id
        pos = len(ids) - 1
        if pad is not None:  # transformers' pooling: rightmost non-pad token, 0 if none
            pos = next((i for i in range(len(ids) - 1, -1, -1) if ids[i] != pad), 0)
        return Encoded(ids, [pos])

    def _forward(self, input_ids, attention_mask, position_ids, rows, cols):
        if self._head is None:
            if self.padding_side != "right" and self._pool_pad_id is None:
                raise ValueError(
                    "this model pools at the last token: use padding_side='right'"
                )
            logits = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
            ).logits
            return logits[:, self.label_index]
        hidden = self.model.base_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state
        return self._head(self._gather(hidden, rows, cols))[:, self.label_index]


@register_scorer("skywork")
class SkyworkScorer(SeqClsScorer):
    """Skywork/Skywork-Reward-Llama-3.1-8B: ``LlamaForSequenceClassification`` (1 label).

    As in the model card: user+assistant turns through the tokenizer's own chat template,
    ``rm(ids).logits[0][0]``; single BOS (see :class:`SeqClsScorer`).  The config's pad id
    (128256, ``[PAD]``) never occurs in text, so the score is read at the final ``<|eot_id|>``.
    """

    default_model = "Skywork/Skywork-Reward-Llama-3.1-8B"


@register_scorer("skywork-v0.2")
class SkyworkV02Scorer(SkyworkScorer):
    """Skywork/Skywork-Reward-Llama-3.1-8B-v0.2: same architecture and recipe as ``skywork``.

    The SWIFT paper's "Skywork" baseline (checkpoint named in its ``script/train_and_eval.sh``): the
    same chat-template input (``eval/get_baseline_rewards.py``); its protocol only adds the
    instruction (the script also asks for ``attn_implementation="flash_attention_2"``, left to the user).
    """

    default_model = "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"
