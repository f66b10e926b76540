"""``lm-eval-swift eval``: lm-eval's own ``run`` command with our models, filters and tasks registered, then the
rollouts of our tasks written beside lm-eval's results file."""

from __future__ import annotations

import argparse
import difflib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from lm_eval_swift.errors import UsageError
from lm_eval_swift.harness import lm_eval_private
from lm_eval_swift.paths import tasks_dir


def run_lm_eval(argv: Sequence[str]) -> None:
    """Run lm-eval's own ``run`` command with ``argv`` (lm_eval's flags), with our models and filters registered
    and our task directory among those lm-eval searches (after any ``--include_path`` given); then write the
    rollouts of our tasks beside lm-eval's results file (:func:`~lm_eval_swift.harness.tasks.save_rollouts`).

    lm-eval 0.4.13 reads no plugin entry points, so this is the one place that joins the two: lm-eval's parser
    with an argument list (never ``sys.argv``), its ``include_path`` (a list, as its TaskManager takes), and a
    step after its run."""
    import lm_eval_swift.harness.models  # noqa: F401  (registers hf-swift)
    from lm_eval_swift.harness.tasks import save_rollouts  # (registers the filters)

    parser = argparse.ArgumentParser(prog="lm-eval-swift eval")
    lm_eval_private.add_run_command(parser)
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
        missing = lm_eval_private.unknown_tasks(e)
        if missing is None:
            raise
        raise UsageError(_unknown_tasks(missing)) from e
    if args.output_path:
        results = lm_eval_private.results_file(Path(args.output_path), started)
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


def _log_like_lm_eval() -> None:
    """Our modules' log lines (which head ``heads=auto`` picked, where the sample cache is, ...) go where lm-eval's
    go, at its level (``LMEVAL_LOG_LEVEL``, default INFO)."""
    from lm_eval.utils import setup_logging

    setup_logging()
    theirs, ours = logging.getLogger("lm_eval"), logging.getLogger("lm_eval_swift")
    ours.setLevel(theirs.level)
    ours.handlers = list(theirs.handlers)
    ours.propagate = False
