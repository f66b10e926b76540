"""Best-of-N tables from rollouts: the same selectors as the lm-eval rows, recomputed without sampling."""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict
from collections.abc import Collection, Sequence

from lm_eval_swift.errors import UsageError
from lm_eval_swift.rollouts import QuestionRollout, read_rollouts
from lm_eval_swift.selectors import SELECTORS, Row, score_rows

log = logging.getLogger(__name__)

DEFAULT_KS = (1, 4, 16, 64)


def selector_rows(score_names: Sequence[str], reward_models: Collection[str] = ()) -> dict[str, Row]:
    """Row name -> (selector name, selector kwargs): the classic rows, then the rows of each score (SWIFT heads
    first, then reward models, which also combine with ``swift`` when it is present)."""
    rows: dict[str, Row] = {
        "first": ("first", {}),
        "mean": ("mean", {}),
        "maj": ("maj", {}),
        "oracle": ("oracle", {}),
    }
    for name in sorted(score_names, key=lambda s: (s in reward_models, s != "swift", s)):
        rm = name in reward_models
        rows.update({row: spec for row, spec in score_rows(name, rm).items()
                     if not (rm and spec[0] == "combined" and "swift" not in score_names)})
    return rows


def sample_counts(rollouts: Sequence[QuestionRollout]) -> tuple[int, int]:
    """(smallest, largest) N over the questions."""
    sizes = [len(r.responses) for r in rollouts]
    return min(sizes), max(sizes)


def bon_table(
    rollouts: Sequence[QuestionRollout], ks: Sequence[int] = DEFAULT_KS, *, warn: bool = True
) -> dict[str, dict[int, float]]:
    """Accuracy of each row at each k (first k of the N samples); ``first`` at k=1 and ``mean`` at k=N only.

    When the questions' N differ, each question's own N is used: ``mean`` averages all of a question's samples
    (its column is the largest N), and the other rows keep only the k every question has. With ``warn``, that and
    responses lacking a score that others carry are logged as warnings.
    """
    if not rollouts:
        raise UsageError("no rollouts to report on")
    n_min, n = sample_counts(rollouts)
    if warn and n_min != n:
        short = sum(len(r.responses) < n for r in rollouts)
        log.warning(
            "%s: N differs between questions (%d of %d have fewer than %d samples, the fewest %d): mean@N uses each "
            "question's own N; the other rows keep only k <= %d", rollouts[0].task, short, len(rollouts), n, n_min,
            n_min,
        )
    ks = [k for k in ks if k <= n_min]
    scores = sorted({s for r in rollouts for resp in r.responses for s in resp.scores})
    total = sum(len(r.responses) for r in rollouts)
    for name in scores if warn else ():
        if missing := sum(name not in resp.scores for r in rollouts for resp in r.responses):
            log.warning("%s: %d of %d responses have no %r score; they rank below every scored response in its rows",
                        rollouts[0].task, missing, total, name)
    reward_models = {s for r in rollouts for s in r.costs}
    table: dict[str, dict[int, float]] = {}
    for row, (selector, kwargs) in selector_rows(scores, reward_models).items():
        row_ks = {"first": [1], "mean": [n]}.get(row, ks)
        fn = SELECTORS[selector]
        table[row] = {
            k: sum(fn(r.responses[:k], **kwargs).correct for r in rollouts) / len(rollouts) for k in row_ks
        }
    return table


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
    parser.add_argument("rollouts", nargs="+", help="rollouts_*.jsonl files written next to lm_eval's results")
    parser.add_argument("--k", type=int, nargs="+", default=list(DEFAULT_KS), help="values of k (default 1 4 16 64)")


def cmd_report(args: argparse.Namespace) -> None:
    """``lm-eval-swift report``: one table per task found in the files."""
    by_task: dict[str, list[QuestionRollout]] = defaultdict(list)
    for path in args.rollouts:
        for r in read_rollouts(path):
            by_task[r.task].append(r)
    for task, rollouts in by_task.items():
        n_min, n = sample_counts(rollouts)
        sizes = f"N={n}" if n_min == n else f"N={n_min}..{n}"
        print(format_table(bon_table(rollouts, args.k), f"{task}: {len(rollouts)} questions, {sizes}"))
        print()
