"""SWIFT rewards of finished (prompt, response) token sequences by one teacher-forced pass, with the same capture
as generation (:class:`~lm_eval_swift.swift.capture.HeadProjector`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
from tqdm import tqdm

from lm_eval_swift.swift.capture import HeadProjector
from lm_eval_swift.swift.heads import SwiftHead, swift_reward


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

    ``responses`` hold response tokens (see :mod:`lm_eval_swift.responses`). Batches of prompt+response are
    right-padded; only the positions where response tokens are the input count.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    heads = list(heads.values() if isinstance(heads, Mapping) else heads)
    scores = torch.zeros(len(prompts), len(heads))
    order = sorted(
        range(len(prompts)), key=lambda i: -(len(prompts[i]) + len(responses[i]))
    )
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    device = model.device
    with HeadProjector(model, heads) as proj:
        for batch in tqdm(batches, desc="SWIFT rescoring", disable=disable_tqdm):
            seqs = [list(prompts[i]) + list(responses[i]) for i in batch]
            ids = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
            attn = torch.zeros_like(ids)
            for b, seq in enumerate(seqs):
                ids[b, : len(seq)], attn[b, : len(seq)] = torch.tensor(seq), 1
            model(
                input_ids=ids.to(device),
                attention_mask=attn.to(device),
                use_cache=False,
                logits_to_keep=0 if proj.uses_logits else 1,
            )
            parts = proj.take()  # [B, S, H, 2]
            starts = torch.tensor([len(prompts[i]) for i in batch])
            lengths = torch.tensor([len(responses[i]) for i in batch])
            t = torch.arange(int(lengths.max()))
            pos = (starts[:, None] + t).clamp_max(ids.shape[1] - 1)  # [B, T]
            mask = (t < lengths[:, None]).to(parts.device)
            picked = parts[
                torch.arange(len(batch))[:, None], pos.to(parts.device)
            ]  # [B, T, H, 2]
            for h, head in enumerate(heads):
                scores[batch, h] = swift_reward(picked[:, :, h], mask, head.gate).cpu()
    return scores
