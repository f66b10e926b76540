"""Best-of-N tables from rollouts: the rows of the lm-eval run (:func:`~lm_eval_swift.bon.rows.bon_table`),
recomputed without sampling."""

from __future__ import annotations

import argparse
import random
from collections import defaultdict

from lm_eval_swift.bon.metrics import MIN_DISCORDANT, mcnemar
from lm_eval_swift.bon.rollouts import QuestionRollout, read_rollouts
from lm_eval_swift.bon.rows import BON_KS as DEFAULT_KS
from lm_eval_swift.bon.rows import bon_table, sample_counts


__all__ = [
    "DEFAULT_KS",
    "add_report_arguments",
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


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "rollouts",
        nargs="+",
        help="rollouts_*.jsonl files written next to lm_eval's results",
    )
    parser.add_argument(
        "--k",
        type=int,
        nargs="+",
        default=list(DEFAULT_KS),
        help="values of k (default 1 4 16 64)",
    )
    parser.add_argument(
        "--paired",
        action="store_true",
        help="also compare every row with maj@k, paired over questions: difference, 95%% bootstrap interval, "
        "discordant questions and the exact McNemar p-value",
    )
    parser.add_argument(
        "--resamples",
        type=int,
        default=2000,
        help="bootstrap resamples for --paired (default 2000)",
    )


def cmd_report(args: argparse.Namespace) -> None:
    """``lm-eval-swift report``: one table per task found in the files."""
    by_task: dict[str, list[QuestionRollout]] = defaultdict(list)
    for path in args.rollouts:
        for r in read_rollouts(path):
            by_task[r.task].append(r)
    for task, rollouts in by_task.items():
        n_min, n = sample_counts(rollouts)
        sizes = f"N={n}" if n_min == n else f"N={n_min}..{n}"
        print(
            format_table(
                bon_table(rollouts, args.k),
                f"{task}: {len(rollouts)} questions, {sizes}",
            )
        )
        print()
        if args.paired:
            print(format_paired(rollouts, args.k, args.resamples))
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
    rng = random.Random(seed)
    n = len(rollouts)
    draws = [[rng.randrange(n) for _ in range(n)] for _ in range(max(resamples, 1))]
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
            diff = [x - y for x, y in zip(a, b, strict=True)]
            means = sorted(sum(diff[i] for i in draw) / n for draw in draws)
            lo, hi = (means[round(q * (len(means) - 1))] for q in (0.025, 0.975))
            only_row, only_maj, p = mcnemar(a, b)
            flag = (
                "" if only_row + only_maj >= MIN_DISCORDANT else " (too few to judge)"
            )
            lines.append(f"| {row} | {k} | {sum(diff) / n:+.4f} | [{lo:+.4f}, {hi:+.4f}] | {only_row} / {only_maj} "
                         f"| {p:.3g}{flag} |")  # fmt: skip
    return "\n".join(lines)
