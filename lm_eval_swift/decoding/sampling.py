"""How the next token is picked (:class:`Sampling`: greedy, or inverse-CDF sampling after HF's warpers from a
uniform the caller draws), the seed of each sample (:func:`sample_seed`) and when a sample stops (:class:`StopCheck`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


# transformers' GenerationConfig defaults, used where neither the request nor the model's generation_config says
HF_SAMPLING_DEFAULTS = {
    "do_sample": False,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "min_p": None,
}


class Sampling:
    """How the next token is picked: greedy, or sampled after HF's warpers (temperature, top-k, top-p, min-p)."""

    def __init__(
        self,
        do_sample: bool,
        temperature: float = 1.0,
        top_k: int | None = 50,
        top_p: float = 1.0,
        min_p: float | None = None,
    ):
        if do_sample and not temperature > 0:
            raise ValueError(f"do_sample=True needs temperature > 0, got {temperature}")
        self.do_sample = do_sample
        self.warpers = (
            LogitsProcessorList()
        )  # HF's order: temperature, top-k, top-p, min-p
        if do_sample and temperature != 1.0:
            self.warpers.append(TemperatureLogitsWarper(temperature))
        if do_sample and top_k:
            self.warpers.append(TopKLogitsWarper(top_k))
        if do_sample and top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))
        if do_sample and min_p is not None:
            self.warpers.append(MinPLogitsWarper(min_p))

    @classmethod
    def from_gen_kwargs(cls, kwargs: dict, generation_config) -> Sampling:
        """From normalized lm-eval gen_kwargs (until / max_gen_toks removed) over ``generation_config``, as HF's
        ``generate`` merges them."""
        return cls(**cls.resolve(kwargs, generation_config))

    @staticmethod
    def resolve(kwargs: dict, generation_config) -> dict:
        """The effective ``__init__`` arguments for normalized lm-eval gen_kwargs over ``generation_config``."""
        unknown = set(kwargs) - set(HF_SAMPLING_DEFAULTS)
        if unknown:
            raise ValueError(
                f"hf-swift does not support generation kwargs {sorted(unknown)}"
            )

        def get(key):
            for value in (
                kwargs.get(key),
                getattr(generation_config, key, None),
                HF_SAMPLING_DEFAULTS[key],
            ):
                if value is not None:
                    return value

        min_p = get("min_p")
        return {
            "do_sample": bool(get("do_sample")),
            "temperature": float(get("temperature")),
            "top_k": get("top_k"),
            "top_p": float(get("top_p")),
            "min_p": None if min_p is None else float(min_p),
        }

    def pick(self, logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """logits [rows, V] fp32, u [rows] uniforms in [0, 1) -> token ids [rows]: inverse CDF of the warped softmax."""
        if not self.do_sample:
            return logits.argmax(-1)
        cdf = self.warpers(None, logits).softmax(-1).double().cumsum(-1)
        target = (u.to(cdf.device, torch.float64) * cdf[:, -1]).unsqueeze(-1)
        return (
            torch.searchsorted(cdf, target, right=True)
            .squeeze(-1)
            .clamp_max(cdf.shape[-1] - 1)
        )


def sample_seed(seed: int, context: str, gen_kwargs: dict, i: int) -> int:
    """The seed of sample i of a question: a stable hash of (seed, prompt text, gen kwargs, i)."""
    key = json.dumps([seed, context, gen_kwargs, i], sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1


class StopCheck:
    """``stop(generated_ids) -> bool``: the last token is an EOS id, or a stop string ends in the decoded tail."""

    def __init__(self, tokenizer, until: Sequence[str], eos_token_ids: Collection[int]):
        self.tokenizer, self.eos = tokenizer, set(eos_token_ids)
        self.until = [s for s in until if s]
        # like lm-eval: look back as many tokens as the longest stop string encodes to, plus 2
        self.window = (
            max(
                (
                    len(tokenizer.encode(s, add_special_tokens=False))
                    for s in self.until
                ),
                default=0,
            )
            + 2
        )

    def __call__(self, ids: Sequence[int]) -> bool:
        if ids[-1] in self.eos:
            return True
        tail = (
            self.tokenizer.decode(ids[-self.window :], skip_special_tokens=True)
            if self.until
            else ""
        )
        return any(s in tail for s in self.until)
