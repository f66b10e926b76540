"""The Hugging Face model that generates a task's samples, as lm-eval describes it to the task.

lm-eval hands tasks no model object, but its CLI merges the run's ``--model_args`` into every task's metadata (its
documented ``--metadata`` behaviour). From them a task checks its SWIFT heads against the model when it is built,
before any sampling; counts the tokens of responses that come as plain text (lm-eval's ``hf``); and, when such
responses carry no SWIFT scores, rescores them after sampling with a model loaded from the same arguments (a
second copy of the weights: ``hf-swift`` scores while sampling instead).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any

from lm_eval_swift.scores import Rescoring
from lm_eval_swift.swift.heads import SwiftHead, resolve_heads


RESCORING_BATCH_SIZE = (
    8  # lm-eval's --batch_size is not among the model arguments a task sees
)


def _hflm_parameters() -> set[str]:
    from lm_eval.models.huggingface import HFLM

    return set(inspect.signature(HFLM.__init__).parameters) - {"self", "kwargs"}


@dataclass
class GeneratorModel:
    """A model given by HFLM keyword arguments (``pretrained`` a path or Hub id) and the SWIFT heads, by alias,
    resolved and checked against it."""

    model_args: dict[str, Any]
    heads: dict[str, SwiftHead]
    config: Any  # the model's transformers config

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> GeneratorModel | None:
        """The model of a task's metadata (None without a ``pretrained`` path or Hub id, e.g. when the caller
        passed a model object). ``heads`` (as in :func:`~lm_eval_swift.swift.heads.resolve_heads`) are loaded and
        checked against the model's config now: a wrong or misspelt head fails before any sampling."""
        from transformers import AutoConfig

        pretrained = metadata.get("pretrained")
        if not isinstance(pretrained, str):
            return None
        args = {k: v for k, v in metadata.items() if k in _hflm_parameters()}
        config = AutoConfig.from_pretrained(pretrained, **_hub_kwargs(args))
        return cls(
            args, resolve_heads(metadata.get("heads"), pretrained, config), config
        )

    @cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        tokenizer = self.model_args.get("tokenizer")
        source = (
            tokenizer if isinstance(tokenizer, str) else self.model_args["pretrained"]
        )
        return AutoTokenizer.from_pretrained(source, **_hub_kwargs(self.model_args))

    @property
    def max_length(self) -> int:
        """The context length HFLM gives the model: its ``max_length`` argument, else the config's
        ``n_positions``, ``max_position_embeddings`` or ``n_ctx``, else the tokenizer's (else 2048)."""
        if self.model_args.get("max_length"):
            return int(self.model_args["max_length"])
        text = (
            self.config.get_text_config()
            if hasattr(self.config, "get_text_config")
            else self.config
        )
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            if getattr(text, attr, None):
                return int(getattr(text, attr))
        limit = getattr(self.tokenizer, "model_max_length", None)
        return int(limit) if limit and limit < 1e29 else 2048

    def encode(self, context: str) -> list[int]:
        """The prompt ids HFLM feeds for ``context`` (before any truncation)."""
        from lm_eval_swift.bon.samples import prompt_tokens

        return prompt_tokens(self.tokenizer, context)

    def rescoring(self, max_gen_toks: int, confidence: Sequence[str] = ()) -> Rescoring:
        """The rescoring (:func:`~lm_eval_swift.scores.add_scores`) of the heads and the ``confidence`` scorers with
        this model, loaded only when it runs (as lm-eval's ``hf`` loads it, so prompts are encoded as it encoded
        them) and freed after."""
        return Rescoring(
            self.heads,
            partial(self._load_hflm, max_gen_toks),
            max_gen_toks,
            RESCORING_BATCH_SIZE,
            tuple(confidence),
        )

    def _load_hflm(self, max_gen_toks: int):
        import torch
        from lm_eval.models.huggingface import HFLM

        from lm_eval_swift.harness.models import encode_prompt

        device = self.model_args.get("device") or (
            "cuda" if torch.cuda.is_available() else "cpu"
        )
        lm = HFLM(
            **{**self.model_args, "device": device, "batch_size": RESCORING_BATCH_SIZE}
        )
        return (
            lm.model,
            lm.tokenizer,
            lambda prompt: encode_prompt(lm, prompt, max_gen_toks),
        )


def _hub_kwargs(model_args: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of ``from_pretrained`` among HFLM's that say which files to read."""
    keys = ("revision", "trust_remote_code", "gguf_file", "subfolder")
    return {k: model_args[k] for k in keys if model_args.get(k) is not None}
