"""Best-of-N tables from rollouts: the rows of the lm-eval run (:func:`~lm_eval_swift.bon.rows.bon_table`),
recomputed without sampling."""

from __future__ import annotations

import argparse
from collections import defaultdict

from lm_eval_swift.bon.rollouts import QuestionRollout, read_rollouts
from lm_eval_swift.bon.rows import BON_KS as DEFAULT_KS
from lm_eval_swift.bon.rows import ETAS, bon_table, sample_counts


__all__ = [
    "DEFAULT_KS",
    "add_report_arguments",
    "bon_table",
    "cmd_report",
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
        "--eta",
        type=float,
        nargs="*",
        default=list(ETAS),
        help="percentages kept by the filter-then-vote rows <score>_top<eta> (default 10 90)",
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
                bon_table(rollouts, args.k, etas=args.eta),
                f"{task}: {len(rollouts)} questions, {sizes}",
            )
        )
        print()
