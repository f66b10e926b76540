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
import time
from pathlib import Path


DEMO_DIR = Path(__file__).resolve().parent
MODEL_DIR = DEMO_DIR / "swift-demo-llama"
HEAD_DIR = DEMO_DIR / "swift-demo-llama-head"


def idle_cores(seconds: float = 0.5) -> int:
    """CPU cores (of those this process may use) that other processes left idle over the next ``seconds``, rounded
    down, at least 1: from /proc/stat where there is one, else cores minus the 1-minute load average.

    One torch thread per idle core: a thread more than the idle cores waits for a core at every operation, and the
    demo's operations are short, so one CPU-bound process beside it made 2 threads on 2 cores 15 times slower."""
    cores = len(os.sched_getaffinity(0))
    try:
        before = _cpu_times()
        time.sleep(seconds)
        after = _cpu_times()
        busy, total = (after[0] - before[0]), (after[1] - before[1])
        idle = (os.cpu_count() or cores) * (1 - busy / total) if total else cores
    except (OSError, ValueError, IndexError):
        idle = cores - os.getloadavg()[0]
    return max(1, min(cores, int(idle + 0.25)))


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from the first line of /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


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

    threads = idle_cores() if args.threads == "auto" else args.threads
    torch.set_num_threads(max(1, min(threads, len(os.sched_getaffinity(0)))))
    print(f"torch threads: {torch.get_num_threads()} (--threads {args.threads})")
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
