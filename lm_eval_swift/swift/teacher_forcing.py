"""One teacher-forced pass over finished responses, as rescoring and training read them.

A response's tokens (:mod:`lm_eval_swift.bon.samples`) are fed after its prompt, and what counts is the model's output
at the positions where a response token is the input. The responses of one prompt (best-of-N draws N of them) go
through together: the prompt runs once and its keys and values are repeated for each response, so a batch costs its
response tokens plus one prompt, not one prompt per response.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import NamedTuple

import torch
from torch import nn
from transformers import DynamicCache


Ids = Sequence[int]


def by_prompt(prompts: Sequence[Ids], indices: Sequence[int]) -> list[list[int]]:
    """``indices`` grouped by identical prompt, each group in the order given, groups in order of first appearance."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in indices:
        groups.setdefault(tuple(prompts[i]), []).append(i)
    return list(groups.values())


def prompt_batches(
    prompts: Sequence[Ids], responses: Sequence[Ids], batch_size: int
) -> list[list[int]]:
    """Indices of every response in batches of at most ``batch_size`` that share one prompt; within a prompt the
    longest responses first (less padding), and the longest prompt + response batches first (a batch too large for
    memory fails at once, not at the end)."""
    batches = []
    for group in by_prompt(prompts, range(len(prompts))):
        group.sort(key=lambda i: -len(responses[i]))
        batches += [group[s : s + batch_size] for s in range(0, len(group), batch_size)]
    return sorted(batches, key=lambda b: -(len(prompts[b[0]]) + len(responses[b[0]])))


class TeacherForced(NamedTuple):
    """The outputs of :func:`forward_after_prompt`: the model's ``out`` at the response positions, ``mask`` [B, T]
    of the response tokens, and ``prompt_logits`` [V] at the prompt's last position (None for an empty prompt)."""

    out: object
    mask: torch.Tensor
    prompt_logits: torch.Tensor | None


@torch.no_grad()
def forward_after_prompt(
    model: nn.Module,
    prompt: Ids,
    responses: Sequence[Ids],
    pad_token_id: int = 0,
    prompt_context: Callable[[], AbstractContextManager] = nullcontext,
    **kwargs,
) -> TeacherForced:
    """``model``'s outputs for ``responses`` (B of them) fed after the one shared ``prompt``, the mask [B, T] and
    the prompt's last logits.

    The outputs cover the response positions only: ``hidden_states[e]`` [B, T, D] and, with ``logits_to_keep=0`` in
    ``kwargs``, ``logits`` [B, T, V]; T is the longest response (at least 1) and rows are right-padded. The prompt's
    forward runs inside ``prompt_context()`` (e.g. a capture paused) and its cache is repeated B times.
    """
    device = model.get_input_embeddings().weight.device
    lengths = torch.tensor([len(r) for r in responses])
    width = max(int(lengths.max()), 1)
    ids = torch.full((len(responses), width), int(pad_token_id), dtype=torch.long)
    for b, r in enumerate(responses):
        ids[b, : len(r)] = torch.tensor(list(r), dtype=torch.long)
    mask = torch.arange(width) < lengths[:, None]
    cache, prompt_logits = None, None
    if len(prompt):
        cache = DynamicCache(config=model.config)
        with prompt_context():
            prompt_logits = model(
                input_ids=torch.tensor([list(prompt)], device=device),
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits[0, -1]
        cache.batch_repeat_interleave(len(responses))
    attn = torch.cat(
        [torch.ones(len(responses), len(prompt), dtype=torch.long), mask.long()], dim=1
    )
    out = model(
        input_ids=ids.to(device),
        attention_mask=attn.to(device),
        cache=cache,
        use_cache=cache is not None,
        **kwargs,
    )
    return TeacherForced(out, mask.to(device), prompt_logits)
