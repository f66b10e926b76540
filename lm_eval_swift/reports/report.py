"""Best-of-N tables from rollouts: the rows of the lm-eval run (:func:`~lm_eval_swift.bon.rows.bon_table`),
recomputed without sampling."""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence

from lm_eval_swift.bon.metrics import MIN_DISCORDANT, mcnemar, paired_bootstrap
from lm_eval_swift.bon.rollouts import QuestionRollout
from lm_eval_swift.bon.rows import BON_KS as DEFAULT_KS
from lm_eval_swift.bon.rows import bon_table, sample_counts
from lm_eval_swift.errors import UsageError
from lm_eval_swift.log_samples import read_rollouts_or_samples


__all__ = [
    "DEFAULT_KS",
    "checked_ks",
    "bon_table",
    "cmd_report",
    "format_paired",
    "format_table",
]


def format_table(table: dict[str, dict[int, float]], title: str = "") -> str:
    """A Markdown table: rows = selectors, columns = k."""
    ks = sorted({k for cols in table.values() for k in cols})
    lines = [f"### {title}", ""] if title else []
    lines.append("| selector | " + " | ".join(f"k={k}" for k in ks) + " |")
    lines.append("|---|" + "---:|" * len(ks))
    for row, cols in table.items():
        cells = [f"{cols[k]:.4f}" if k in cols else "" for k in ks]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> None:
    """``lm-eval-swift report``: one table per task found in the files (rollouts or lm_eval samples files)."""
    by_task: dict[str, list[QuestionRollout]] = defaultdict(list)
    for path in args.rollouts:
        for r in read_rollouts_or_samples(path):
            by_task[r.task].append(r)
    for task, rollouts in by_task.items():
        n_min, n = sample_counts(rollouts)
        ks = checked_ks(args.k, n_min, task)
        sizes = f"N={n}" if n_min == n else f"N={n_min}..{n}"
        print(
            format_table(
                bon_table(rollouts, ks, etas=args.eta),
                f"{task}: {len(rollouts)} questions, {sizes}",
            )
        )
        print()
        if args.paired:
            print(format_paired(rollouts, ks, args.resamples))
            print()


def format_paired(
    rollouts: list[QuestionRollout], ks: list[int], resamples: int, seed: int = 0
) -> str:
    """A Markdown table of every selector row against ``maj`` at each k > 1, paired over the questions: the
    difference in accuracy with its 95% percentile bootstrap interval (``resamples`` resamplings of the questions),
    the discordant questions (only the row right / only maj right) and the exact McNemar p-value, flagged as too
    few to judge under ``MIN_DISCORDANT`` discordant questions."""
    per_question: dict[str, dict[int, list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for q in rollouts:
        for row, cols in bon_table([q], ks, warn=False).items():
            for k, value in cols.items():
                per_question[row][k].append(value)
    lines = [
        "### paired with maj@k",
        "",
        "| row | k | difference | 95% interval | discordant (row / maj) | McNemar p |",
        "|---|---:|---:|---|---:|---|",
    ]
    for row, cols in per_question.items():
        if row in ("first", "mean", "maj"):
            continue
        for k in sorted(k for k in cols if k > 1 and k in per_question["maj"]):
            a, b = cols[k], per_question["maj"][k]
            diff, lo, hi = paired_bootstrap(a, b, resamples, seed)
            only_row, only_maj, p = mcnemar(a, b)
            flag = (
                "" if only_row + only_maj >= MIN_DISCORDANT else " (too few to judge)"
            )
            lines.append(f"| {row} | {k} | {diff:+.4f} | [{lo:+.4f}, {hi:+.4f}] | {only_row} / {only_maj} "
                         f"| {p:.3g}{flag} |")  # fmt: skip
    return "\n".join(lines)


def checked_ks(ks: Sequence[int] | None, n: int, task: str) -> list[int]:
    """The k values of a table whose questions have at least ``n`` samples: ``ks`` (each >= 1), where a k above
    ``n`` is a :class:`UsageError`; without ``ks``, those of :data:`DEFAULT_KS` up to ``n``."""
    if ks is None:
        return [k for k in DEFAULT_KS if k <= n]
    if bad := [k for k in ks if k < 1]:
        raise UsageError(f"--k {bad[0]}: every k must be a whole number >= 1")
    if over := [k for k in ks if k > n]:
        raise UsageError(
            f"--k {' '.join(map(str, over))}: k can be at most {n}, the number of samples of each question "
            f"of {task}"
        )
    return list(ks)
