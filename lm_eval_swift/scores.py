"""Adding scores to rollouts after sampling (the "scored" step of prompt -> samples -> graded -> scored ->
selected -> rows): :func:`add_scores`, the one function that does it, for the best-of-N task and for
``lm-eval-swift rescore``. SWIFT heads and confidence scorers score by rescoring (one teacher-forced pass of the
generating model, :mod:`~lm_eval_swift.swift.rescoring`), reward models by their scorers
(:mod:`~lm_eval_swift.scorers`), one model loaded at a time, each freed before the next."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lm_eval_swift.bon.rollouts import QuestionRollout
from lm_eval_swift.bon.samples import prompt_tokens, response_tokens_from_text
from lm_eval_swift.confidence import ConfidenceParams, parse_confidence
from lm_eval_swift.errors import UsageError
from lm_eval_swift.scorers import check_protocol, get_scorer, load_scorer
from lm_eval_swift.swift.heads import SwiftHead, resolve_heads
from lm_eval_swift.swift.rescoring import teacher_forced_scores


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


@dataclass
class Rescoring:
    """SWIFT heads (by alias) and confidence scorers (by name) to add by rescoring, and how to get their base model.

    ``load()`` -> (model, tokenizer, ``encode``): called only when there is something to rescore, and the model is
    freed after; ``encode(prompt) -> ids`` encodes prompts of rollouts stored without prompt ids (None: as lm-eval's
    HF backend would, :func:`~lm_eval_swift.bon.samples.prompt_tokens`). ``max_gen_toks``: the run's generation
    limit, for responses stored without token ids. ``confidence``: names of
    :data:`~lm_eval_swift.confidence.CONFIDENCE_SCORERS` to add, with ``confidence_params``."""

    heads: Mapping[str, SwiftHead]
    load: Callable[[], tuple[Any, Any, Callable[[str], list[int]] | None]]
    max_gen_toks: int
    batch_size: int = 8
    confidence: Sequence[str] = ()
    confidence_params: ConfidenceParams = ConfidenceParams()


def add_scores(
    rollouts: Sequence[QuestionRollout],
    rescoring: Rescoring | None = None,
    reward_models: ScorerSpecs | None = None,
) -> None:
    """Add scores in place to every response: each SWIFT head's and confidence scorer's (``rescoring``), then each
    reward model's
    (``reward_models``: scorer name -> load options, as :func:`parse_scorer_specs` gives them), one loaded at a
    time; a reward model's cost per sample goes into each rollout's ``costs``."""
    if rescoring is not None and (rescoring.heads or rescoring.confidence) and rollouts:
        _add_rescored_scores(rollouts, rescoring)
    if reward_models:
        _add_reward_model_scores(rollouts, reward_models)


def _add_reward_model_scores(
    rollouts: Sequence[QuestionRollout], specs: ScorerSpecs
) -> None:
    """Score every response with each reward model (question text + response text) and record its cost per
    sample in each rollout's ``costs``."""
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


def _add_rescored_scores(
    rollouts: Sequence[QuestionRollout], rescoring: Rescoring
) -> None:
    """Add each head's SWIFT reward (under its alias) and each confidence score to every response by one
    teacher-forced pass.

    Tokens come from the rollouts when they carry them (``hf-swift``); otherwise the prompt is encoded with
    ``encode`` (default: as lm-eval's HF backend would) and the response by the one response-token rule for text,
    and the rollouts keep those tokens.
    """
    model, tokenizer, encode = rescoring.load()
    encode = encode or (lambda prompt: prompt_tokens(tokenizer, prompt))
    prompts, responses, targets = [], [], []
    for r in rollouts:
        r.prompt_token_ids = r.prompt_token_ids or encode(r.prompt)
        for resp in r.responses:
            if not resp.token_ids:
                resp.token_ids = response_tokens_from_text(
                    resp.text, tokenizer, rescoring.max_gen_toks
                )
                resp.num_tokens = len(resp.token_ids)
            prompts.append(r.prompt_token_ids)
            responses.append(resp.token_ids)
            targets.append(resp)
    heads = rescoring.heads
    rewards, confidence = teacher_forced_scores(
        model,
        list(heads.values()),
        prompts,
        responses,
        batch_size=rescoring.batch_size,
        confidence=rescoring.confidence_params if rescoring.confidence else None,
    )
    for i, (resp, row) in enumerate(zip(targets, rewards.tolist(), strict=True)):
        resp.scores.update(zip(heads, row, strict=True))
        if confidence is not None:
            resp.scores.update(
                {
                    n: confidence[i][n]
                    for n in rescoring.confidence
                    if n in confidence[i]
                }
            )


def cmd_rescore(args: argparse.Namespace) -> None:
    """``lm-eval-swift rescore``: add head and scorer scores to rollouts files, rewriting each atomically."""
    from lm_eval_swift.bon.rollouts import write_rollouts
    from lm_eval_swift.log_samples import read_rollouts_or_samples
    from lm_eval_swift.swift.features import load_base_model
    from lm_eval_swift.swift.heads import find_head, head_refs

    try:
        confidence = parse_confidence(args.confidence)
    except ValueError as err:
        raise UsageError(f"rescore: {err}") from None
    if not args.head and not args.scorer and not confidence:
        raise UsageError("rescore: give at least one --head, --scorer or --confidence")
    if confidence and not args.head and not args.model:
        raise UsageError(
            "rescore: --confidence needs the generating model: give --model"
        )
    specs = parse_scorer_specs(",".join(args.scorer), protocol=args.rm_protocol)
    files = {
        _rescored_path(path): read_rollouts_or_samples(path) for path in args.rollouts
    }
    rollouts = [r for rs in files.values() for r in rs]
    if args.head or confidence:
        model_id = args.model or (
            SwiftHead.from_pretrained(
                find_head(head_refs(args.head)[0][1])
            ).base.name_or_path
        )
        model, tokenizer = load_base_model(
            model_id, device=args.device, dtype=args.dtype, parallelize=args.parallelize
        )
        heads = (
            resolve_heads(args.head, model_id, model.config, model=model)
            if args.head
            else {}
        )
        add_scores(
            rollouts,
            Rescoring(
                heads,
                lambda: (model, tokenizer, None),
                args.max_gen_toks,
                args.batch_size,
                confidence,
            ),
        )
        del model  # freed before the reward models load
    add_scores(rollouts, reward_models=specs)
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
