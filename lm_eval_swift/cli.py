"""The ``lm-eval-swift`` command: ``eval`` (lm_eval with our models, filters and tasks), ``report``, ..."""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path


def tasks_dir() -> Path:
    """Where the task YAML lives: shipped in the package, or ``tasks/`` of a source checkout."""
    shipped = Path(__file__).parent / "task_configs"
    return shipped if shipped.is_dir() else Path(__file__).resolve().parents[1] / "tasks"


def register_all() -> None:
    """Import the modules that register our lm-eval models and filters."""
    import lm_eval_swift.models  # noqa: F401  (hf-swift)
    import lm_eval_swift.selectors  # noqa: F401  (bon_* and swift filters)
    import lm_eval_swift.tasks  # noqa: F401  (rollouts writer)


def run_lm_eval(argv: Sequence[str]) -> None:
    """Run lm-eval's own CLI with ``argv`` after registering everything and adding our task directory."""
    import lm_eval.tasks
    from lm_eval.__main__ import cli_evaluate

    register_all()
    ours = str(tasks_dir())

    class TaskManager(lm_eval.tasks.TaskManager):
        def __init__(self, *args, include_path=None, **kwargs):
            paths = [] if include_path is None else list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]
            super().__init__(*args, include_path=[*paths, ours], **kwargs)

    lm_eval.tasks.TaskManager = TaskManager
    sys.argv = ["lm-eval-swift eval", "run", *argv]
    cli_evaluate()


def cmd_report(args: argparse.Namespace) -> None:
    from lm_eval_swift.report import bon_table, format_table
    from lm_eval_swift.rollouts import read_rollouts

    by_task = defaultdict(list)
    for path in args.rollouts:
        for r in read_rollouts(path):
            by_task[r.task].append(r)
    for task, rollouts in by_task.items():
        n = min(len(r.responses) for r in rollouts)
        print(format_table(bon_table(rollouts, args.k), f"{task}: {len(rollouts)} questions, N={n}"))
        print()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lm-eval-swift", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "eval",
        help="run lm_eval with hf-swift, our filters and tasks registered (takes lm_eval's flags)",
        add_help=False,
    )
    report = sub.add_parser("report", help="recompute the best-of-N table from rollouts files")
    report.add_argument("rollouts", nargs="+", help="rollouts_*.jsonl files written next to lm_eval's results")
    report.add_argument("--k", type=int, nargs="+", default=[1, 4, 16, 64], help="values of k (default 1 4 16 64)")
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "eval":
        run_lm_eval(argv[1:])
        return
    args = build_parser().parse_args(argv)
    args.func(args)
