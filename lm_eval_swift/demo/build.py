"""Rebuild the demo from scratch with fixed seeds: the language model, its rollouts on the synthetic
``train_head`` split, and its SWIFT head trained with ``lm-eval-swift train`` (run from the repository root)::

    python -m lm_eval_swift.demo.build [--skip-lm] [--rollouts FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from lm_eval_swift.demo.run import DEMO_DIR, HEAD_DIR, MODEL_DIR


# The language model's training run (train_lm's arguments besides --out); its record, training_run.json, is shipped
# beside the weights, and a test checks that it matches these arguments.
# Constant learning rate over a fixed problem set, so that a longer run's snapshots (--save-every) are the models of
# the shorter runs. In a 3200-step run the per-sample accuracy (60 test questions x 8, T=1) was 1-5% up to step 1600,
# then 8% (1800), 28% (2000), 39% (2400), 46% (2600); a 4000-step run with cosine decay reached 96%. Step 2600 is
# the snapshot nearest the middle of the 30-70% the demo aims for.
LM_TRAINING = [
    "--seed",
    "0",
    "--steps",
    "2600",
    "--batch-size",
    "16",
    "--lr",
    "1.5e-3",
    "--min-lr-ratio",
    "1",
    "--n-train",
    "64000",
]

# Pairwise DPO loss with early stopping on within-question AUROC: on this model's rollouts it ranked the responses to
# the same question best (held-out within-question AUROC 0.66, vs 0.59 for the paper's BCE default with early stopping
# on the loss and 0.63 for BCE stopped on within-question AUROC); BCE learns which questions are easy (global AUROC
# 0.77 vs 0.42) more than which answer is right (see README, "The demo").
HEAD_TRAINING = {
    "loss": "dpo",
    "early_stop": "within_auroc",
    "lr": 1e-3,
    "weight_decay": 1e-5,
    "epochs": 40,
    "patience": 3,
    "batch_size": 16,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--skip-lm",
        action="store_true",
        help="keep the trained language model, redo the head",
    )
    parser.add_argument(
        "--questions",
        type=int,
        default=800,
        help="train_head questions to sample (8 each)",
    )
    parser.add_argument(
        "--rollouts",
        type=Path,
        help="reuse this demo_train_rollouts file instead of sampling",
    )
    args = parser.parse_args()
    if not args.skip_lm:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "lm_eval_swift.demo.train_lm",
                "--out",
                str(MODEL_DIR),
                *LM_TRAINING,
            ],
            check=True,
        )
    work = Path(tempfile.mkdtemp(prefix="demo-build-"))
    rollouts = (
        args.rollouts.resolve()
        if args.rollouts
        else sample_rollouts(args.questions, work)
    )
    import torch

    from lm_eval_swift.swift.training import TrainConfig, train_head

    torch.set_num_threads(1)
    os.chdir(
        DEMO_DIR
    )  # so the head records its base model as "swift-demo-llama", not a local absolute path
    config = TrainConfig(
        device="cpu",
        dtype="float32",
        max_gen_toks=160,
        cache_dir=work / "features",
        **HEAD_TRAINING,
    )
    train_head([rollouts], MODEL_DIR.name, HEAD_DIR.name, config)
    shutil.rmtree(
        HEAD_DIR / "checkpoints", ignore_errors=True
    )  # resume state of the finished run: not shipped
    print(f"rollouts: {rollouts}")


def sample_rollouts(questions: int, work: Path) -> Path:
    """Sample 8 answers to each of ``questions`` train_head questions with the demo model; the rollouts file."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "lm_eval_swift",
            "eval",
            "--model",
            "hf-swift",
            "--model_args",
            f"pretrained={MODEL_DIR},dtype=float32,heads=none,sample_cache=none",
            "--tasks",
            "demo_train_rollouts",
            "--apply_chat_template",
            "--device",
            "cpu",
            "--batch_size",
            "16",
            "--output_path",
            str(work),
            "--metadata",
            json.dumps({"questions": questions}),
        ],
        check=True,
    )
    return max(work.rglob("rollouts_demo_train_rollouts_*.jsonl"))


if __name__ == "__main__":
    main()
