"""``lm-eval-swift eval``: lm-eval's own ``run`` command with our models, filters and tasks registered, then the
rollouts of our tasks written beside lm-eval's results file."""

from __future__ import annotations

import argparse
import difflib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from lm_eval_swift.commands import eval_epilog
from lm_eval_swift.errors import UsageError
from lm_eval_swift.harness import lm_eval_private
from lm_eval_swift.paths import tasks_dir


def run_lm_eval(argv: Sequence[str]) -> None:
    """Run lm-eval's own ``run`` command with ``argv`` (lm_eval's flags), with our models and filters registered
    and our task directory among those lm-eval searches (after any ``--include_path`` given); then write the
    rollouts of our tasks beside lm-eval's results file (:func:`~lm_eval_swift.harness.tasks.save_rollouts`).

    lm-eval 0.4.13 reads no plugin entry points, so this is the one place that joins the two: lm-eval's parser
    with an argument list (never ``sys.argv``), its ``include_path`` (a list, as its TaskManager takes), and a
    step after its run. The arguments are parsed and checked (:func:`check_before_start_up`) before any model code
    is imported, so ``--help`` and a user's mistakes answer at once."""
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
        missing = lm_eval_private.unknown_tasks(e)
        if missing is None:
            raise
        raise UsageError(_unknown_tasks(missing)) from e
    if args.output_path:
        results = lm_eval_private.results_file(Path(args.output_path), started)
        if results is not None:
            save_rollouts(results)


def lm_eval_parser() -> argparse.ArgumentParser:
    """lm-eval's ``run`` parser, its help extended with what is ours (:func:`~lm_eval_swift.commands.eval_epilog`);
    it imports no model code, so ``eval --help`` and mistakes in lm_eval's flags answer at once."""
    parser = argparse.ArgumentParser(prog="lm-eval-swift")
    run = lm_eval_private.add_run_command(parser)
    run.prog = "lm-eval-swift eval"
    run.usage = "lm-eval-swift eval --model hf-swift --model_args pretrained=MODEL --tasks TASK [options]"
    run.description = "lm_eval with hf-swift and our filters and tasks registered (takes lm_eval's flags)."
    run.epilog = eval_epilog(tasks_dir())
    return parser


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


def _log_like_lm_eval() -> None:
    """Our modules' log lines (which head ``heads=auto`` picked, where the sample cache is, ...) go where lm-eval's
    go, at its level (``LMEVAL_LOG_LEVEL``, default INFO)."""
    from lm_eval.utils import setup_logging

    setup_logging()
    theirs, ours = logging.getLogger("lm_eval"), logging.getLogger("lm_eval_swift")
    ours.setLevel(theirs.level)
    ours.handlers = list(theirs.handlers)
    ours.propagate = False
