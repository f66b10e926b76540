"""``lm-eval-swift demo``: the whole method offline on CPU, through the real lm_eval evaluation.

The small character-level Llama shipped in this folder (trained by :mod:`lm_eval_swift.demo.build`) samples 16
answers to each of a few hundred synthetic GSM8K-format word problems with ``hf-swift``; its SWIFT head (trained
on the model's own rollouts of a separate split) scores them while they are sampled; the table compares first,
mean, majority, oracle, SWIFT argmax, the SWIFT-weighted vote and filter-then-vote, and the same rows for the
confidence scorers captured while sampling (:mod:`lm_eval_swift.confidence`).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path


DEMO_DIR = Path(__file__).resolve().parent
MODEL_DIR = DEMO_DIR / "swift-demo-llama"
HEAD_DIR = DEMO_DIR / "swift-demo-llama-head"


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--questions",
        type=int,
        default=300,
        help="synthetic test questions (default 300)",
    )
    parser.add_argument(
        "--n", type=int, default=16, help="samples per question (default 16)"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads (default 2: on 2 idle cores 30%% faster than 1; the 1M-parameter model "
        "gains little from more)",
    )
    parser.add_argument("--output", help="output folder (default: a temporary one)")
    parser.add_argument(
        "--model",
        default=str(MODEL_DIR),
        help="model dir (default: the shipped demo model)",
    )
    parser.add_argument(
        "--head",
        default=str(HEAD_DIR),
        help="head dir (default: the shipped demo head)",
    )


def demo_argv(args: argparse.Namespace, output: str) -> list[str]:
    """The lm_eval command line the demo runs (printed, so it can be rerun by hand)."""
    return [
        "--model",
        "hf-swift",
        "--model_args",
        f"pretrained={args.model},dtype=float32,heads={args.head},confidence=all,sample_cache=none",
        "--tasks",
        "demo_bon_swift",
        "--apply_chat_template",
        "--device",
        "cpu",
        "--batch_size",
        str(args.batch_size),
        "--output_path",
        output,
        "--metadata",
        json.dumps({"n": args.n, "questions": args.questions}),
    ]


def cmd_demo(args: argparse.Namespace) -> None:
    import torch

    from lm_eval_swift.bon.rollouts import read_rollouts
    from lm_eval_swift.bon.rows import ETAS
    from lm_eval_swift.harness.eval_command import run_lm_eval
    from lm_eval_swift.reports.report import bon_table, format_table

    torch.set_num_threads(max(1, min(args.threads, os.cpu_count() or 1)))
    output = args.output or tempfile.mkdtemp(prefix="lm-eval-swift-demo-")
    argv = demo_argv(args, output)
    print(
        "lm-eval-swift eval "
        + " ".join(f"'{a}'" if " " in a or "{" in a else a for a in argv)
    )
    run_lm_eval(argv)
    rollouts = list(
        read_rollouts(max(Path(output).rglob("rollouts_demo_bon_swift_*.jsonl")))
    )
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= args.n]
    print()
    print(
        format_table(
            bon_table(rollouts, ks, etas=ETAS),
            f"SWIFT demo: {len(rollouts)} questions, N={args.n}",
        )
    )
    print(f"\nRollouts and lm-eval results: {output}")
