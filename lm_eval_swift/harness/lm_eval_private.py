"""Every use of a private lm-eval surface, fenced in one module: lm-eval 0.4.13 offers no public way to do these.
``tests/test_lm_eval_private.py`` checks each against the installed lm-eval, so a release that changes one fails
there, not in a user's run; pyproject pins the lm-eval versions that are tested.

- :func:`add_run_command`: lm-eval's own ``run`` command (``lm_eval._cli.run.Run``), so ``lm-eval-swift eval``
  takes exactly lm_eval's flags (lm-eval reads no plugin entry points; its CLI entry point reads ``sys.argv``).
- :func:`unknown_tasks`: the task names of lm-eval's ``ValueError("Tasks not found: ...")``.
- :func:`results_file`: the results JSON a run wrote (its file name holds a date lm-eval keeps to itself).
- :func:`leave_out_filters`: removing filter pipelines from a built task (``ConfigurableTask._filters``).
"""

from __future__ import annotations

import argparse
from collections.abc import Collection
from pathlib import Path


TASKS_NOT_FOUND = "Tasks not found:"  # lm_eval/config/evaluate_config.py


def add_run_command(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add lm-eval's ``run`` subcommand (all of lm_eval's flags; it sets ``func``) to ``parser``; returns its
    parser. Imports lm-eval's CLI only, no model code."""
    from lm_eval._cli.run import Run

    sub = parser.add_subparsers(dest="command")
    Run.create(sub)
    return sub.choices["run"]


def unknown_tasks(error: ValueError) -> list[str] | None:
    """The task names of lm-eval's error for unknown tasks, else None (another ``ValueError``)."""
    missing = str(error).removeprefix(TASKS_NOT_FOUND)
    if missing == str(error):
        return None
    return [t.strip() for t in missing.split(",")]


def results_file(output_path: Path, since: float) -> Path | None:
    """The results JSON lm-eval wrote under ``output_path`` after ``since`` (epoch seconds), if any: ``<output>/
    <model>/results_<date>.json``, or ``<name>_<date>.json`` beside an ``--output_path`` ending in .json."""
    if output_path.suffix == ".json":
        candidates = output_path.parent.glob(f"{output_path.stem}_*.json")
    else:
        candidates = output_path.glob("*/results_*.json")
    fresh = [p for p in candidates if p.stat().st_mtime >= since]
    return max(fresh, key=lambda p: p.stat().st_mtime, default=None)


def leave_out_filters(task, names: Collection[str]) -> None:
    """Remove the filter pipelines named ``names`` from a built lm-eval task, so no results row is made for them."""
    task._filters = [f for f in task._filters if f.name not in names]


def filter_names(task) -> list[str]:
    """The names of a built lm-eval task's filter pipelines (its results rows)."""
    return [f.name for f in task._filters]
