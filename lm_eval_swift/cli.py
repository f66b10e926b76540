"""The ``lm-eval-swift`` command. ``eval`` is lm_eval itself with our models, filters and tasks registered;
every other subcommand lives beside its concept and is imported only when it runs. Their arguments and help are
in :mod:`lm_eval_swift.commands`, which imports nothing heavy, so that ``--help`` and argument errors answer at once.

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

from lm_eval_swift.commands import ARGUMENTS, WORKFLOW, command_help, eval_epilog
from lm_eval_swift.errors import UsageError


DEBUG_FLAG = "--debug"
DEBUG_ENV = "LM_EVAL_SWIFT_DEBUG"

# name -> (module, function running it); the arguments and help are in lm_eval_swift.commands
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "report": ("lm_eval_swift.reports.report", "cmd_report"),
    "rescore": ("lm_eval_swift.scoring", "cmd_rescore"),
    "train": ("lm_eval_swift.swift.training", "cmd_train"),
    "import-official": ("lm_eval_swift.swift.official", "cmd_import"),
    "leaderboard": ("lm_eval_swift.reports.leaderboard", "cmd_leaderboard"),
    "plot": ("lm_eval_swift.reports.plot", "cmd_plot"),
    "smollm2": ("lm_eval_swift.smollm2", "cmd_smollm2"),
    "demo": ("lm_eval_swift.demo.run", "cmd_demo"),
    "tasks-dir": ("lm_eval_swift.cli", "cmd_tasks_dir"),
}


def tasks_dir() -> Path:
    """Where the task YAML lives: shipped in the package, or ``tasks/`` of a source checkout."""
    shipped = Path(__file__).parent / "task_configs"
    return (
        shipped if shipped.is_dir() else Path(__file__).resolve().parents[1] / "tasks"
    )


def cmd_tasks_dir(args: argparse.Namespace) -> None:
    """``lm-eval-swift tasks-dir``: print :func:`tasks_dir`, for plain lm_eval's ``--include_path``."""
    print(tasks_dir())


def lm_eval_parser() -> argparse.ArgumentParser:
    """lm-eval's ``run`` parser, its help extended with what is ours (:func:`~lm_eval_swift.commands.eval_epilog`);
    it imports no model code, so ``eval --help`` and mistakes in lm_eval's flags answer at once."""
    from lm_eval._cli.run import Run

    parser = argparse.ArgumentParser(prog="lm-eval-swift")
    sub = parser.add_subparsers(dest="command")
    Run.create(sub)
    run = sub.choices["run"]
    run.prog = "lm-eval-swift eval"
    run.usage = "lm-eval-swift eval --model hf-swift --model_args pretrained=MODEL --tasks TASK [options]"
    run.description = "lm_eval with hf-swift and our filters and tasks registered (takes lm_eval's flags)."
    run.epilog = eval_epilog(tasks_dir())
    return parser


def run_lm_eval(argv: Sequence[str]) -> None:
    """Run lm-eval's own ``run`` command with ``argv`` (lm_eval's flags), with our models and filters registered
    and our task directory among those lm-eval searches (after any ``--include_path`` given); then write the
    rollouts of our tasks beside lm-eval's results file (:func:`~lm_eval_swift.harness.tasks.save_rollouts`).

    lm-eval 0.4.13 reads no plugin entry points, so this is the one place that joins the two: lm-eval's parser
    with an argument list (never ``sys.argv``), its ``include_path`` (a list, as its TaskManager takes), and a
    step after its run."""
    args = lm_eval_parser().parse_args(["run", *argv])
    check_before_start_up(args)
    import lm_eval_swift.harness.models  # noqa: F401  (registers hf-swift)
    from lm_eval_swift.harness.tasks import save_rollouts  # (registers the filters)

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


def check_before_start_up(args: argparse.Namespace) -> None:
    """The user's mistakes that can be seen in lm_eval's parsed arguments, as a :class:`UsageError` before lm-eval
    starts (imports, logging, model loading): a task name like ours (its ending, or a close spelling) that is not
    ours, a local model or head path that does not exist, and a metadata ``n`` that is not a whole number >= 1.
    The rest is checked where it is met (the task checks the data, the heads against the model, the context
    length)."""
    ours = {p.stem for p in tasks_dir().glob("*.yaml")}
    suffixes = tuple({"_" + name.split("_", 1)[1] for name in ours if "_" in name})
    unknown = [
        t
        for t in args.tasks or []
        if t not in ours
        and (t.endswith(suffixes) or difflib.get_close_matches(t, ours, cutoff=0.85))
    ]  # lm-eval's own task names are neither
    if unknown:
        raise UsageError(_unknown_tasks(unknown))
    model_args = args.model_args if isinstance(args.model_args, dict) else {}
    metadata = args.metadata if isinstance(args.metadata, dict) else {}
    pretrained = str(model_args.get("pretrained", ""))
    if _local(pretrained) and not Path(pretrained).expanduser().exists():
        raise UsageError(
            f"--model_args pretrained={pretrained}: no such model directory"
        )
    for spec in (model_args.get("heads"), metadata.get("heads")):
        for ref in (part.split("=", 1)[-1] for part in str(spec or "").split(",")):
            if _local(ref) and not Path(ref).expanduser().exists():
                raise UsageError(f"SWIFT head {ref!r} not found (no such directory)")
    n = metadata.get("n", model_args.get("n", 1))
    if isinstance(n, bool) or not str(n).isdigit() or int(n) < 1:
        raise UsageError(f"--metadata n must be a whole number >= 1, got {n!r}")


def _local(path: str) -> bool:
    """Whether a model or head reference is a local path (else a name or Hub id, checked where it is loaded)."""
    return path.startswith(("/", "./", "../", "~"))


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


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command but ``eval`` (lm_eval's, see :func:`lm_eval_parser`); building it imports only
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
