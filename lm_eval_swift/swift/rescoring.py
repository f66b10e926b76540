"""Scores of finished (prompt, response) token sequences by one teacher-forced pass: SWIFT heads' rewards, with the
same capture as generation (:class:`~lm_eval_swift.swift.capture.HeadProjector`), and the confidence scorers
(:mod:`lm_eval_swift.confidence`) from the same pass's logits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext

import torch
import torch.nn as nn
from tqdm import tqdm

from lm_eval_swift.confidence import ConfidenceParams
from lm_eval_swift.confidence.compute import Scores, confidence_scores
from lm_eval_swift.swift.capture import HeadProjector
from lm_eval_swift.swift.heads import SwiftHead, swift_reward
from lm_eval_swift.swift.teacher_forcing import forward_after_prompt, prompt_batches


@torch.no_grad()
def rescore(
    model: nn.Module,
    heads: Sequence[SwiftHead] | Mapping[str, SwiftHead],
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    batch_size: int = 8,
    disable_tqdm: bool = False,
) -> torch.Tensor:
    """R [n, H] (fp32, cpu) of each head (in order; a mapping's values) for response i after prompt i; see
    :func:`teacher_forced_scores`."""
    return teacher_forced_scores(
        model, heads, prompts, responses, batch_size, disable_tqdm=disable_tqdm
    )[0]


@torch.no_grad()
def teacher_forced_scores(
    model: nn.Module,
    heads: Sequence[SwiftHead] | Mapping[str, SwiftHead],
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    batch_size: int = 8,
    confidence: ConfidenceParams | None = None,
    disable_tqdm: bool = False,
) -> tuple[torch.Tensor, list[Scores] | None]:
    """(R [n, H] fp32 cpu of each head, and with ``confidence`` every confidence score of each response, else
    None) for response i after prompt i, from one pass.

    ``responses`` hold response tokens (see :mod:`lm_eval_swift.bon.samples`); the responses of one prompt are batched
    together and the prompt runs once (:mod:`~lm_eval_swift.swift.teacher_forcing`). The confidence scorers need the
    logits at every response position ([B, T, V] per batch, as a head that reads logits does).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    heads = list(heads.values() if isinstance(heads, Mapping) else heads)
    scores = torch.zeros(len(prompts), len(heads))
    conf: list[Scores] | None = None if confidence is None else [{}] * len(prompts)
    proj = HeadProjector(model, heads) if heads else None
    all_logits = confidence is not None or (proj is not None and proj.uses_logits)
    batches = prompt_batches(prompts, responses, batch_size)
    with proj if proj is not None else nullcontext():
        for batch in tqdm(batches, desc="Rescoring", disable=disable_tqdm):
            batch_responses = [responses[i] for i in batch]
            out, mask, prompt_logits = forward_after_prompt(
                model,
                prompts[batch[0]],
                batch_responses,
                prompt_context=proj.paused if proj is not None else nullcontext,
                logits_to_keep=0 if all_logits else 1,
            )
            if conf is not None and prompt_logits is not None:
                values = confidence_scores(
                    prompt_logits, out.logits, batch_responses, confidence
                )
                for i, v in zip(batch, values, strict=True):
                    conf[i] = v
            if proj is None:
                continue
            parts = proj.take()  # [B, T, H, 2]
            for h, head in enumerate(heads):
                scores[batch, h] = swift_reward(
                    parts[:, :, h], mask.to(parts.device), head.gate
                ).cpu()
    return scores, conf
