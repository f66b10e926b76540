"""SWIFT rewards of finished (prompt, response) token sequences by one teacher-forced pass, with the same capture
as generation (:class:`~lm_eval_swift.swift.capture.HeadProjector`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
from tqdm import tqdm

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
    """R [n, H] (fp32, cpu) of each head (in order; a mapping's values) for response i after prompt i.

    ``responses`` hold response tokens (see :mod:`lm_eval_swift.bon.samples`); the responses of one prompt are batched
    together and the prompt runs once (:mod:`~lm_eval_swift.swift.teacher_forcing`).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    heads = list(heads.values() if isinstance(heads, Mapping) else heads)
    scores = torch.zeros(len(prompts), len(heads))
    batches = prompt_batches(prompts, responses, batch_size)
    with HeadProjector(model, heads) as proj:
        for batch in tqdm(batches, desc="SWIFT rescoring", disable=disable_tqdm):
            _, mask = forward_after_prompt(
                model,
                prompts[batch[0]],
                [responses[i] for i in batch],
                prompt_context=proj.paused,
                logits_to_keep=0 if proj.uses_logits else 1,
            )
            parts = proj.take()  # [B, T, H, 2]
            for h, head in enumerate(heads):
                scores[batch, h] = swift_reward(
                    parts[:, :, h], mask.to(parts.device), head.gate
                ).cpu()
    return scores
