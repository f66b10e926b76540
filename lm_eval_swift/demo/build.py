"""Rebuild the demo from scratch with fixed seeds: the language model, its rollouts on the synthetic
``train_head`` split, and its SWIFT head trained with ``lm-eval-swift train`` (run from the repository root)::

    python -m lm_eval_swift.demo.build [--skip-lm]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from lm_eval_swift.demo.run import DEMO_DIR, HEAD_DIR, MODEL_DIR

# Pairwise DPO loss with early stopping on within-question AUROC: on this model it ranked the responses to the same
# question better (held-out within-question AUROC 0.65 vs 0.58) than the paper's BCE default, which learns what
# makes a question easy more than what makes an answer right (see README, "The demo").
HEAD_TRAINING = {"loss": "dpo", "early_stop": "within_auroc", "lr": 1e-3, "weight_decay": 1e-5, "epochs": 40,
                 "patience": 3, "batch_size": 16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-lm", action="store_true", help="keep the trained language model, redo the head")
    parser.add_argument("--questions", type=int, default=800, help="train_head questions to sample (8 each)")
    args = parser.parse_args()
    if not args.skip_lm:
        subprocess.run([sys.executable, "-m", "lm_eval_swift.demo.train_lm", "--out", str(MODEL_DIR), "--seed", "0",
                        "--steps", "2000"], check=True)
    out = tempfile.mkdtemp(prefix="demo-rollouts-")
    subprocess.run(
        [sys.executable, "-m", "lm_eval_swift", "eval", "--model", "hf-swift",
         "--model_args", f"pretrained={MODEL_DIR},dtype=float32,heads=none,sample_cache=none",
         "--tasks", "demo_train_rollouts", "--apply_chat_template", "--device", "cpu", "--batch_size", "16",
         "--output_path", out, "--metadata", json.dumps({"questions": args.questions})],
        check=True,
    )
    rollouts = max(Path(out).rglob("rollouts_demo_train_rollouts_*.jsonl"))
    import torch

    from lm_eval_swift.training import train_head

    torch.set_num_threads(1)
    os.chdir(DEMO_DIR)  # so the head records its base model as "swift-demo-llama", not a local absolute path
    train_head([rollouts], MODEL_DIR.name, HEAD_DIR.name, device="cpu", dtype="float32", max_gen_toks=160,
               **HEAD_TRAINING)


if __name__ == "__main__":
    main()
