"""Adding scores to rollouts after sampling: SWIFT heads by rescoring, and reward-model scorers (one at a
time, each freed before the next); the scoring step of :mod:`~lm_eval_swift.pipeline` and ``lm-eval-swift
rescore``."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lm_eval_swift.commands import add_rescore_arguments  # noqa: F401  (re-exported)
from lm_eval_swift.errors import UsageError
from lm_eval_swift.responses import prompt_tokens, response_tokens_from_text
from lm_eval_swift.rollouts import QuestionRollout
from lm_eval_swift.scorers import check_protocol, get_scorer, load_scorer
from lm_eval_swift.swift.heads import SwiftHead, resolve_heads
from lm_eval_swift.swift.rescoring import rescore


ScorerSpecs = dict[str, dict[str, Any]]


def parse_scorer_specs(
    spec: str | Sequence[str] | Mapping[str, Any] | None, protocol: str | None = None
) -> ScorerSpecs:
    """``"skywork,eurus"``, ``["skywork"]``, a JSON object string or ``{"skywork": {"model": "/path", ...}}`` ->
    ``{name: load options}`` (``model`` overrides the scorer's default checkpoint). ``protocol`` (``"card"`` or
    ``"paper"``, the metadata's ``rm_protocol``) is the ``protocol`` option of every scorer that does not set its own.
    An unknown scorer name (:class:`~lm_eval_swift.scorers.UnknownScorerError`) or protocol (``ValueError``) fails
    here, before anything is loaded or sampled."""
    if not spec:
        return {}
    if isinstance(spec, str):
        spec = (
            json.loads(spec)
            if spec.lstrip().startswith("{")
            else [s.strip() for s in spec.split(",") if s.strip()]
        )
    if isinstance(spec, Mapping):
        specs = {str(name): dict(opts or {}) for name, opts in spec.items()}
    else:
        specs = {str(name): {} for name in spec}
    for name, options in specs.items():
        get_scorer(name)
        if protocol is not None:
            options.setdefault("protocol", protocol)
        check_protocol(options.get("protocol", "card"))
    return specs


def add_scorer_scores(rollouts: Sequence[QuestionRollout], specs: ScorerSpecs) -> None:
    """Score every response of ``rollouts`` with each scorer (question text + response text) and record the
    scorer's cost per sample in each rollout's ``costs``."""
    pairs = [(r.question, resp.text) for r in rollouts for resp in r.responses]
    if not pairs:
        return
    for name, options in specs.items():
        options = dict(options)
        with load_scorer(name, options.pop("model", None), **options) as scorer:
            start = time.perf_counter()
            values = iter(scorer.score([q for q, _ in pairs], [a for _, a in pairs]))
            cost = {
                "seconds_per_sample": (time.perf_counter() - start) / len(pairs),
                "parameters": float(scorer.num_parameters),
            }
        for r in rollouts:
            for resp in r.responses:
                resp.scores[name] = float(next(values))
            r.costs[name] = cost


def add_head_scores(
    rollouts: Sequence[QuestionRollout],
    model,
    tokenizer,
    heads: Mapping[str, SwiftHead],
    *,
    max_gen_toks: int,
    encode: Callable[[str], list[int]] | None = None,
    batch_size: int = 8,
) -> None:
    """Add each head's SWIFT reward (under its alias) to every response by one teacher-forced pass.

    Tokens come from the rollouts when they carry them (``hf-swift``); otherwise the prompt is encoded with
    ``encode`` (default: as lm-eval's HF backend would) and the response by the one response-token rule for text,
    and the rollouts keep those tokens.
    """
    if not heads:
        return
    encode = encode or (lambda prompt: prompt_tokens(tokenizer, prompt))
    prompts, responses, targets = [], [], []
    for r in rollouts:
        r.prompt_token_ids = r.prompt_token_ids or encode(r.prompt)
        for resp in r.responses:
            if not resp.token_ids:
                resp.token_ids = response_tokens_from_text(
                    resp.text, tokenizer, max_gen_toks
                )
                resp.num_tokens = len(resp.token_ids)
            prompts.append(r.prompt_token_ids)
            responses.append(resp.token_ids)
            targets.append(resp)
    rewards = rescore(
        model, list(heads.values()), prompts, responses, batch_size=batch_size
    )
    for resp, row in zip(targets, rewards.tolist(), strict=True):
        resp.scores.update(zip(heads, row, strict=True))


def cmd_rescore(args: argparse.Namespace) -> None:
    """``lm-eval-swift rescore``: add head and scorer scores to rollouts files, rewriting each atomically."""
    from lm_eval_swift.log_samples import read_rollouts_or_samples
    from lm_eval_swift.pipeline import score
    from lm_eval_swift.rollouts import write_rollouts
    from lm_eval_swift.swift.features import load_base_model
    from lm_eval_swift.swift.heads import find_head, head_refs

    if not args.head and not args.scorer:
        raise UsageError("rescore: give at least one --head or --scorer")
    specs = parse_scorer_specs(",".join(args.scorer), protocol=args.rm_protocol)
    files = {
        _rescored_path(path): read_rollouts_or_samples(path) for path in args.rollouts
    }
    rollouts = [r for rs in files.values() for r in rs]
    if args.head:
        first_ref = head_refs(args.head)[0][1]
        model_id = (
            args.model
            or SwiftHead.from_pretrained(find_head(first_ref)).base.name_or_path
        )
        model, tokenizer = load_base_model(
            model_id, device=args.device, dtype=args.dtype, parallelize=args.parallelize
        )
        heads = resolve_heads(args.head, model_id, model.config, model=model)
        score(
            rollouts,
            heads=lambda rs: add_head_scores(
                rs,
                model,
                tokenizer,
                heads,
                max_gen_toks=args.max_gen_toks,
                batch_size=args.batch_size,
            ),
        )
        del model  # freed before the reward models load
    score(rollouts, scorers=specs)
    for path, rs in files.items():
        write_rollouts(rs, path)
        print(f"Rescored {len(rs)} questions in {path}")


def _rescored_path(path: str) -> str:
    """Where rescore writes the rollouts of ``path``: the file itself, or for lm_eval's samples file the
    ``rollouts_<task>_<date>.jsonl`` beside it, which must not exist yet (rescore that one instead)."""
    from lm_eval_swift.log_samples import is_samples_file, rollouts_path

    if not is_samples_file(path):
        return path
    out = rollouts_path(path)
    if out.exists():
        raise UsageError(
            f"{out} already exists beside {path}: rescore it instead (it keeps the scores it has)"
        )
    return str(out)
