"""The ``lm-eval-swift`` command. ``eval`` is lm_eval itself with our models, filters and tasks registered;
every other subcommand lives beside its concept and is imported only when it runs. Their arguments and help are
in :mod:`lm_eval_swift.commands`, which imports nothing heavy, so that ``--help`` and argument errors answer at once.

A user's mistake (:class:`~lm_eval_swift.errors.UsageError`) is one line on stderr and exit status 2, Ctrl-C
exit status 130, in every subcommand; ``--debug`` (anywhere in the arguments) or ``LM_EVAL_SWIFT_DEBUG=1`` shows
the traceback instead."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from lm_eval_swift.commands import ARGUMENTS, WORKFLOW, command_help
from lm_eval_swift.errors import UsageError
from lm_eval_swift.paths import tasks_dir


DEBUG_FLAG = "--debug"
DEBUG_ENV = "LM_EVAL_SWIFT_DEBUG"

# name -> (module, function running it); the arguments and help are in lm_eval_swift.commands
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "report": ("lm_eval_swift.reports.report", "cmd_report"),
    "regrade": ("lm_eval_swift.regrade", "cmd_regrade"),
    "rescore": ("lm_eval_swift.scores", "cmd_rescore"),
    "train": ("lm_eval_swift.swift.training", "cmd_train"),
    "import-official": ("lm_eval_swift.swift.official", "cmd_import"),
    "leaderboard": ("lm_eval_swift.reports.leaderboard", "cmd_leaderboard"),
    "plot": ("lm_eval_swift.reports.plot", "cmd_plot"),
    "smollm2": ("lm_eval_swift.smollm2", "cmd_smollm2"),
    "demo": ("lm_eval_swift.demo.run", "cmd_demo"),
    "tasks-dir": ("lm_eval_swift.cli", "cmd_tasks_dir"),
}


def cmd_tasks_dir(args: argparse.Namespace) -> None:
    """``lm-eval-swift tasks-dir``: print :func:`tasks_dir`, for plain lm_eval's ``--include_path``."""
    print(tasks_dir())


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command but ``eval`` (lm_eval's, see :func:`~lm_eval_swift.harness.eval_command.lm_eval_parser`); building it imports only
    :mod:`lm_eval_swift.commands`, so ``--help`` answers at once."""
    parser = argparse.ArgumentParser(
        prog="lm-eval-swift",
        description=WORKFLOW,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "eval",
        help="lm_eval with hf-swift and our filters and tasks registered (takes lm_eval's flags; see eval --help)",
        add_help=False,
    )
    for name, (module, run) in SUBCOMMANDS.items():
        summary, description = command_help(name)
        p = sub.add_parser(
            name,
            help=summary,
            description=description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name in ARGUMENTS:
            ARGUMENTS[name](p)
        p.set_defaults(module=module, run=run)
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
            from lm_eval_swift.harness.eval_command import run_lm_eval

            run_lm_eval(argv[1:])
            return
        args = build_parser().parse_args(argv)
        getattr(importlib.import_module(args.module), args.run)(args)
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
