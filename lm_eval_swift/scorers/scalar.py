"""Scalar reward models with a custom value head: Eurus-RM-7B, UltraRM-13B, Starling-RM-7B-alpha.

Their authors ship ``trust_remote_code`` classes (or a snippet in the model card).  Each is just
a transformers backbone plus a bias-free ``Linear(hidden, 1)`` read at the last real token, so
they are re-implemented here and loaded by state dict with strict key checks.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaModel,
    MistralConfig,
    MistralModel,
)

from .base import Encoded, Scorer, register_scorer
from .weights import (
    checkpoint_dir,
    find_weight_files,
    load_state_dict_files,
    load_strict,
)


__all__ = [
    "EurusRewardModel",
    "EurusScorer",
    "StarlingRewardModel",
    "StarlingScorer",
    "UltraRMRewardModel",
    "UltraRMScorer",
    "ValueHeadScorer",
]


class _ValueHeadModel(nn.Module):
    """Backbone + bias-free scalar head; attribute names follow each checkpoint's keys."""

    backbone_attr = "model"
    head_attr = "regression_head"
    backbone_cls: type[nn.Module] = LlamaModel

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        setattr(self, self.backbone_attr, self.backbone_cls(config))
        setattr(self, self.head_attr, nn.Linear(config.hidden_size, 1, bias=False))

    @property
    def backbone(self) -> nn.Module:
        return getattr(self, self.backbone_attr)

    @property
    def head(self) -> nn.Linear:
        return getattr(self, self.head_attr)

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Reward per row, read at its last non-padding token (either padding side)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state
        idx = torch.arange(input_ids.shape[1], device=input_ids.device)
        last = (idx * attention_mask.to(idx.dtype)).argmax(-1)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        return self.head(hidden[rows, last]).squeeze(-1)


class EurusRewardModel(_ValueHeadModel):
    """openbmb/Eurus-RM-7b: ``model`` (MistralModel) + ``regression_head``."""

    backbone_cls = MistralModel


class UltraRMRewardModel(_ValueHeadModel):
    """openbmb/UltraRM-13b: ``model`` (LlamaModel) + ``regression_head``."""

    backbone_cls = LlamaModel


class StarlingRewardModel(_ValueHeadModel):
    """berkeley-nest/Starling-RM-7B-alpha: ``transformer`` (LlamaModel) + ``v_head``."""

    backbone_attr = "transformer"
    head_attr = "v_head"
    backbone_cls = LlamaModel


class ValueHeadScorer(Scorer):
    """Shared machinery: format text, tokenize, read the head at the last real token.

    Extra options: ``max_length`` (truncate longer inputs; ``None`` = never) and
    ``truncation_side`` (``"left"`` keeps the end, where the reward is read).  Ids come from the reference
    tokenizer (:attr:`encoder`), truncated as transformers 4's ``truncation=True`` does: the special tokens it
    adds (BOS) are kept.
    """

    model_cls: type[_ValueHeadModel] = _ValueHeadModel
    config_cls: type = LlamaConfig
    #: decoder layer class kept whole on one device by ``device_map="auto"``.
    no_split_modules: tuple[str, ...] = ("LlamaDecoderLayer",)
    add_special_tokens = (
        True  # every author tokenizes the formatted string with the defaults
    )

    def __init__(
        self,
        *,
        max_length: int | None = None,
        truncation_side: str = "left",
        **common: Any,
    ) -> None:
        super().__init__(**common)
        if truncation_side not in ("left", "right"):
            raise ValueError(
                f"truncation_side must be 'left' or 'right', not {truncation_side!r}"
            )
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1 or None, got {max_length}")
        self.max_length = max_length
        self.truncation_side = truncation_side

    def format(
        self, question: str, response: str
    ) -> str:  # pragma: no cover - abstract
        """The exact string the reward model reads."""
        raise NotImplementedError

    # ---- loading
    def _config_source(self, ckpt: Any) -> Any:
        return ckpt

    def _tokenizer_source(self, ckpt: Any) -> Any:
        return self.tokenizer_id or ckpt

    def _remap(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return state

    def _load(self) -> tuple[nn.Module, Any]:
        from accelerate import init_empty_weights

        ckpt = checkpoint_dir(self.model_id)
        config = self.config_cls.from_pretrained(self._config_source(ckpt))
        if self.attn_implementation is not None:
            config._attn_implementation = self.attn_implementation
        with init_empty_weights():  # parameters on meta, buffers (rotary) real
            model = self.model_cls(config)
        state = self._remap(load_state_dict_files(find_weight_files(ckpt), self.dtype))
        load_strict(model, state, source=f"{self.model_id}")
        if self.device_map is not None:
            from accelerate import dispatch_model, infer_auto_device_map

            device_map = self.device_map
            if isinstance(device_map, str):
                device_map = infer_auto_device_map(
                    model,
                    no_split_module_classes=list(self.no_split_modules),
                    dtype=self.dtype,
                )
            model = dispatch_model(model, device_map=device_map)
        else:
            model.to(self.device)
        self._tokenizer_src = self._tokenizer_source(ckpt)
        return model, AutoTokenizer.from_pretrained(self._tokenizer_src)

    def _tokenizer_location(self) -> Any:
        return self._tokenizer_src

    # ---- scoring
    def _token_ids(self, question: str, response: str) -> list[int]:
        """The formatted pair's token ids, at most ``max_length`` of them (special tokens kept)."""
        return self.encoder.encode(
            self.format(question, response),
            add_special_tokens=self.add_special_tokens,
            max_length=self.max_length,
            truncation_side=self.truncation_side,
        )

    def _encode(self, question: str, response: str) -> Encoded:
        ids = self._token_ids(question, response)
        return Encoded(ids, [len(ids) - 1])

    def _forward(self, input_ids, attention_mask, position_ids, rows, cols):
        hidden = self.model.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state
        return self.model.head(self._gather(hidden, rows, cols)).squeeze(-1)


@register_scorer("eurus")
class EurusScorer(ValueHeadScorer):
    """openbmb/Eurus-RM-7b: Mistral backbone + ``regression_head`` (no bias), last real token.

    Input: ``f"[INST] {question} {inst_close} {response}"`` tokenized with the checkpoint's
    tokenizer defaults (one BOS added, no EOS), as in the model card (``AutoTokenizer`` of transformers 4: the
    repository ships only ``tokenizer.model``, so these are SentencePiece's ids, as the slow tokenizer gives them).

    ``inst_close`` defaults to ``"[/INST]"``.  The card's example writes ``[\\INST]``, but the
    same snippet's comment says "we use the same template as Mistral-Instruct-v0.2", whose
    closing tag is ``[/INST]``, and Eurus-RM is initialised from Eurus-7B-SFT, trained on the
    Mistral ``[INST] ... [/INST]`` format; so the backslash is taken for a typo (an assumption:
    the training data format is not published with the checkpoint).  Pass
    ``inst_close="[\\INST]"`` to reproduce the card's string verbatim.  The SWIFT paper's script
    (``eval/get_baseline_rewards.py``) writes ``[/INST]`` too; its protocol adds the instruction and runs the
    authors' class, which uses eager attention (``attn_implementation="eager"``; sdpa differs by 1-4 bf16 steps).
    """

    default_model = "openbmb/Eurus-RM-7b"
    model_cls = EurusRewardModel
    config_cls = MistralConfig
    no_split_modules = ("MistralDecoderLayer",)
    paper_options: ClassVar[dict[str, Any]] = {"attn_implementation": "eager"}

    def __init__(self, *, inst_close: str = "[/INST]", **common: Any) -> None:
        super().__init__(**common)
        self.inst_close = inst_close

    def format(self, question: str, response: str) -> str:
        return f"[INST] {question} {self.inst_close} {response}"


@register_scorer("ultrarm")
class UltraRMScorer(ValueHeadScorer):
    """openbmb/UltraRM-13b: Llama backbone + ``regression_head`` (no bias), last real token.

    Input: ``template.format(question=..., response=...)`` tokenized with the tokenizer's
    defaults (BOS added, no EOS).  The card's template is ``"Human: {question}\\nAssistant: {response}"``;
    the SWIFT paper's (``eval/get_baseline_rewards.py``, a triple-quoted f-string) has a blank line
    and eight spaces before ``Assistant:``: ``"Human: {question}\\n\\n        Assistant: {response}"``.
    The card and that script load the tokenizer with ``LlamaTokenizer``, transformers 4's slow SentencePiece
    class, so ids come from ``tokenizer.model`` as that class encodes it (``tokenizer.json`` only when the
    checkpoint has no ``tokenizer.model``).  ``paper`` also runs eager attention, as the authors' class does.
    """

    default_model = "openbmb/UltraRM-13b"
    model_cls = UltraRMRewardModel
    reference_tokenizer = "tokenizer.model"
    card_template = "Human: {question}\nAssistant: {response}"
    paper_options: ClassVar[dict[str, Any]] = {
        "template": "Human: {question}\n\n        Assistant: {response}",
        "attn_implementation": "eager",
    }

    def __init__(self, *, template: str | None = None, **common: Any) -> None:
        super().__init__(**common)
        self.template = template or self.card_template
        if "{question}" not in self.template or "{response}" not in self.template:
            raise ValueError("template must contain {question} and {response}")

    def format(self, question: str, response: str) -> str:
        return self.template.format(question=question, response=response)


@register_scorer("starling")
class StarlingScorer(ValueHeadScorer):
    """berkeley-nest/Starling-RM-7B-alpha: Llama-2-7b-chat backbone + ``v_head`` (no bias).

    Model card (``get_reward``): ``f"<s>[INST] {question} </s> [/INST] {response}</s>"`` tokenized
    with ``add_special_tokens=True`` (so the Llama-2 tokenizer puts its own BOS before the literal
    ``<s>``: two BOS; ``add_special_tokens=False`` gives one), ``truncation=True, max_length=2048``
    from the left (the tokenizer keeps its BOS) and ``padding="max_length"`` with ``<unk>`` (its
    ``pad_token = unk_token``; the Llama-2 tokenizer config pads on the right, masked).  The card's
    ``GPTRewardModel`` reads ``rewards[i, c_ind - 1]`` where ``c_ind`` is the first position of
    ``PAD_ID = tokenizer(pad_token)["input_ids"][0]``: that is the BOS the tokenizer puts before
    ``<unk>``, not ``<unk>``, so ``c_ind`` is 0 and the value is read at the LAST slot of the
    2048-token row -- a padding ``<unk>`` at position 2047 (attending to the real tokens) whenever the
    input is shorter.  All of this is reproduced: every row is ``max_length`` tokens and the read
    position follows the same rule (``max_length=None``: no truncation, no padding).

    ``paper`` protocol (SWIFT ``eval/get_baseline_rewards.py``, same class and tokenizer): one
    unpadded, untruncated sequence, so the rule reads its last token (``</s>``); float32 weights
    (its ``AutoModelForCausalLM.from_pretrained`` without a dtype).

    Weights: the card loads the repo's single ``.pt``/``*model.bin`` file into ``GPTRewardModel``
    with ``strict=False`` (as do RewardBench and the SWIFT script); that module registers the
    backbone twice (``model.model.*`` and ``transformer.*``) beside an unused LM head
    (``model.lm_head.weight``).  Here ``transformer.*`` + ``v_head.weight`` are loaded,
    ``model.model.*`` only when ``transformer.*`` is absent, and the LM head is dropped; any other
    key, or any missing one, is an error (strict, unlike ``strict=False``, which would leave a
    missing weight at Llama-2-chat's value or at random).  Config and tokenizer come from the
    checkpoint dir when it has them, else from ``base_model`` (``meta-llama/Llama-2-7b-chat-hf``,
    as in the card; a gated repo).  Ids: that ``tokenizer.json`` as the file states it (``AutoTokenizer`` of
    transformers 4): its legacy normalizer ``Prepend("▁")`` + ``Replace(" ", "▁")`` runs on each segment between
    special tokens, so ``"</s> [/INST]"`` is ``</s>``, ``▁``, ``▁[`` (transformers 5's own Llama tokenizer drops
    the normalizer and gives ``</s>``, ``▁[``).
    """

    default_model = "berkeley-nest/Starling-RM-7B-alpha"
    model_cls = StarlingRewardModel
    paper_options: ClassVar[dict[str, Any]] = {"dtype": "float32", "max_length": None}

    def __init__(
        self,
        *,
        base_model: str = "meta-llama/Llama-2-7b-chat-hf",
        max_length: int | None = 2048,
        add_special_tokens: bool = True,
        **common: Any,
    ) -> None:
        super().__init__(max_length=max_length, **common)
        self.base_model = base_model
        self.add_special_tokens = add_special_tokens

    def format(self, question: str, response: str) -> str:
        return f"<s>[INST] {question} </s> [/INST] {response}</s>"

    def _setup(self) -> None:
        super()._setup()
        enc = self.encoder
        if enc.unk_id is None or enc.unk_token is None:
            raise ValueError(
                f"{self.model_id}: the tokenizer has no <unk> token (the card pads with it)"
            )
        self.fill_id = enc.unk_id  # the card's pad_token = unk_token
        # the card's PAD_ID = tokenizer(pad_token)["input_ids"][0]: BOS for Llama-2's tokenizer
        self.stop_id = enc.encode(enc.unk_token)[0]

    def _encode(self, question: str, response: str) -> Encoded:
        ids = self._token_ids(question, response)
        fill = self.max_length - len(ids) if self.max_length is not None else 0
        row = ids + [self.fill_id] * fill
        stop = row.index(self.stop_id) if self.stop_id in row else len(row)
        return Encoded(row, [(stop - 1) % len(row)] if row else [], pad_tail=fill)

    def _config_source(self, ckpt):
        return ckpt if (ckpt / "config.json").is_file() else self.base_model

    def _tokenizer_source(self, ckpt):
        if self.tokenizer_id:
            return self.tokenizer_id
        has_tok = any(
            (ckpt / f).is_file()
            for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
        )
        return ckpt if has_tok else self.base_model

    def _remap(self, state):
        has_transformer = any(k.startswith("transformer.") for k in state)
        out = {}
        for k, v in state.items():
            if k.startswith("model.model."):
                if not has_transformer:
                    out["transformer." + k[len("model.model.") :]] = v
            elif k != "model.lm_head.weight":
                out[k] = v
        return out
