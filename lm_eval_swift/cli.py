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


def load_causal_lm(name_or_path: str, device: str | None, dtype: str, parallelize: bool):
    """A HF causal LM and its tokenizer, placed like lm-eval's ``hf`` model (``parallelize``: accelerate's
    ``device_map="auto"`` across the visible GPUs)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs = {"device_map": "auto"} if parallelize else {}
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, **kwargs)
    if not parallelize:
        model.to(device)
    return model.eval(), AutoTokenizer.from_pretrained(name_or_path)


def cmd_rescore(args: argparse.Namespace) -> None:
    from lm_eval_swift.heads import resolve_heads
    from lm_eval_swift.rollouts import read_rollouts, write_rollouts
    from lm_eval_swift.scoring import add_head_scores, add_scorer_scores, parse_scorer_specs

    if not args.head and not args.scorer:
        raise SystemExit("rescore: give at least one --head or --scorer")
    files = {path: list(read_rollouts(path)) for path in args.rollouts}
    rollouts = [r for rs in files.values() for r in rs]
    if args.head:
        from lm_eval_swift.heads import SwiftHead, find_head

        first_ref = args.head.split(",")[0].split("=")[-1]
        model_id = args.model or SwiftHead.from_pretrained(find_head(first_ref)).base.name_or_path
        model, tokenizer = load_causal_lm(model_id, args.device, args.dtype, args.parallelize)
        heads = resolve_heads(args.head, model_id, model.config)
        add_head_scores(rollouts, model, tokenizer, heads, max_gen_toks=args.max_gen_toks, batch_size=args.batch_size)
        del model
    add_scorer_scores(rollouts, parse_scorer_specs(",".join(args.scorer)))
    for path, rs in files.items():
        write_rollouts(rs, path)
        print(f"Rescored {len(rs)} questions in {path}")


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

    rescore = sub.add_parser("rescore", help="add SWIFT-head and reward-model scores to rollouts files, in place")
    rescore.add_argument("rollouts", nargs="+")
    rescore.add_argument("--head", help="head spec: [alias=]path_or_name[,...] (alias defaults to the head's name)")
    rescore.add_argument("--model", help="base model for the heads (default: the first head's base model)")
    rescore.add_argument("--scorer", action="append", default=[], help="reward-model scorer name (repeatable)")
    rescore.add_argument("--device", default=None)
    rescore.add_argument("--dtype", default="auto")
    rescore.add_argument("--parallelize", action="store_true", help="shard the model across GPUs (accelerate)")
    rescore.add_argument("--batch-size", type=int, default=8)
    rescore.add_argument("--max-gen-toks", type=int, default=1024,
                         help="the generation limit of the run, for responses stored without token ids")
    rescore.set_defaults(func=cmd_rescore)

    from lm_eval_swift.leaderboard import add_leaderboard_arguments, cmd_leaderboard
    from lm_eval_swift.plot import add_plot_arguments, cmd_plot

    board = sub.add_parser("leaderboard", help="best-of-N table over models from results JSON and/or rollouts files")
    add_leaderboard_arguments(board)
    board.set_defaults(func=cmd_leaderboard)
    plot = sub.add_parser("plot", help="accuracy-vs-N curves per selector, one panel per model")
    add_plot_arguments(plot)
    plot.set_defaults(func=cmd_plot)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "eval":
        run_lm_eval(argv[1:])
        return
    args = build_parser().parse_args(argv)
    args.func(args)
