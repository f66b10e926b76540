"""Grade rollouts files again with the current grader, without sampling: ``lm-eval-swift regrade FILES``.

Each response gets the answer it states, its verdict and its answer class anew (truncated responses, ``finish`` =
``"length"``, or at ``--max_gen_toks`` where the model did not say, as the grader reads them); the labels it had
before its first regrade are kept beside them in ``regraded_from``. Files are rewritten in place, atomically, and
SWIFT heads or reward models trained on them see the new labels. Needs neither lm-eval nor torch.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

from lm_eval_swift.bon.rollouts import (
    QuestionRollout,
    grade_samples,
    is_truncated,
    read_rollouts,
    write_rollouts,
)


__all__ = ["Movement", "cmd_regrade", "regrade_rollout"]


@dataclass
class Movement:
    """How labels moved in a regrade: responses, those credited before and after, and those whose verdict
    changed either way."""

    responses: int = 0
    credited_before: int = 0
    credited_after: int = 0
    gained: int = 0
    lost: int = 0

    def add(self, before: float, after: float) -> None:
        self.responses += 1
        self.credited_before += before > 0.5
        self.credited_after += after > 0.5
        self.gained += after > before
        self.lost += after < before


def regrade_rollout(
    rollout: QuestionRollout,
    grading: str = "default",
    max_gen_toks: int | None = None,
    movement: Movement | None = None,
) -> QuestionRollout:
    """``rollout`` graded again under grading mode ``grading``; each response keeps the labels it was first
    graded with in ``regraded_from``. ``movement``, when given, counts how the verdicts moved."""
    responses = rollout.responses
    cut = [is_truncated(r.finish, r.num_tokens, max_gen_toks) for r in responses]
    answers, correct, classes = grade_samples(
        [r.text for r in responses], rollout.gold, rollout.kind, grading, cut
    )
    regraded = []
    for r, answer, ok, cls in zip(responses, answers, correct, classes, strict=True):
        first = r.regraded_from or {
            "answer": r.answer,
            "correct": r.correct,
            "answer_class": r.answer_class,
        }
        if movement is not None:
            movement.add(float(first["correct"]), float(ok))
        regraded.append(
            replace(
                r,
                answer=answer,
                correct=float(ok),
                answer_class=cls,
                regraded_from=first,
            )
        )
    return replace(rollout, responses=regraded)


def cmd_regrade(args: argparse.Namespace) -> None:
    """``lm-eval-swift regrade``: regrade each file in place and print how its labels moved."""
    total = Movement()
    print("| file | responses | credited before | credited after | gained | lost |")
    print("|---|---:|---:|---:|---:|---:|")
    for path in args.rollouts:
        moved = Movement()
        rollouts = [
            regrade_rollout(q, args.grading, args.max_gen_toks, moved)
            for q in read_rollouts(path)
        ]
        write_rollouts(rollouts, path)
        _print_row(str(path), moved)
        for name in vars(total):
            setattr(total, name, getattr(total, name) + getattr(moved, name))
    if len(args.rollouts) > 1:
        _print_row("all", total)


def _print_row(name: str, m: Movement) -> None:
    print(
        f"| {name} | {m.responses} | {m.credited_before} | {m.credited_after} | {m.gained} | {m.lost} |"
    )
