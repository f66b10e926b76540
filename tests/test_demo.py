"""The offline demo at a reduced size: the real lm_eval run through ``lm-eval-swift demo`` with the shipped
model and head, checking the table's rows and that the numbers are sane."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from lm_eval_swift.demo.build import LM_TRAINING
from lm_eval_swift.demo.run import HEAD_DIR, MODEL_DIR
from lm_eval_swift.demo.train_lm import RUN_RECORD, hparams, parse_args
from lm_eval_swift.swift.heads import SwiftHead


def test_shipped_demo_model_and_head_fit_together():
    from transformers import AutoConfig

    head = SwiftHead.from_pretrained(HEAD_DIR)
    head.check_compatible(AutoConfig.from_pretrained(MODEL_DIR), str(MODEL_DIR))
    assert (
        head.training_info["metrics"]["within_auroc"] > 0.6
    )  # ranks answers to the same question (DPO head)
    size = sum(p.stat().st_size for d in (MODEL_DIR, HEAD_DIR) for p in d.iterdir())
    assert size < 20e6


def test_shipped_model_is_what_the_build_script_trains():
    record = json.loads((MODEL_DIR / RUN_RECORD).read_text())
    assert record["hparams"] == hparams(parse_args(["--out", "unused", *LM_TRAINING]))
    assert (
        0.3 <= record["eval"]["mean_acc"] <= 0.7
    )  # per-sample accuracy at T=1 on 100 test questions x 8


def test_lm_training_is_bitwise_reproducible(tmp_path):
    """Same arguments, same bytes; and with a constant learning rate the step-2 snapshot of a longer run is the
    model that --steps 2 trains (how the shipped model's step count was chosen)."""
    tiny = [
        "--layers",
        "1",
        "--hidden",
        "32",
        "--intermediate",
        "64",
        "--heads",
        "2",
        "--batch-size",
        "4",
        "--warmup",
        "1",
        "--n-train",
        "12",
        "--min-lr-ratio",
        "1",
        "--eval-questions",
        "2",
        "--eval-k",
        "2",
        "--speed-calls",
        "0",
    ]
    runs = {
        "a": ["--steps", "3", "--save-every", "2"],
        "a2": ["--steps", "3"],
        "b": ["--steps", "2"],
    }
    for run, extra in runs.items():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "lm_eval_swift.demo.train_lm",
                "--out",
                str(tmp_path / run),
                *tiny,
                *extra,
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
    a, a2 = (
        json.loads((tmp_path / run / RUN_RECORD).read_text()) for run in ("a", "a2")
    )
    assert (
        a["final_loss_ema"] == a2["final_loss_ema"]
        and a["eval"]["mean_acc"] == a2["eval"]["mean_acc"]
    )

    def weights(path):
        return (path / "model.safetensors").read_bytes()

    assert (
        weights(tmp_path / "a") == weights(tmp_path / "a2") != weights(tmp_path / "b")
    )
    assert weights(tmp_path / "a" / "step-2") == weights(tmp_path / "b")


def test_demo_prints_the_table(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lm_eval_swift",
            "demo",
            "--questions",
            "12",
            "--n",
            "4",
            "--output",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    table = proc.stdout[proc.stdout.index("SWIFT demo: 12 questions, N=4") :]
    rows = dict(re.findall(r"^\| (\S+) \| (.*) \|$", table, re.M))
    assert {"first", "mean", "maj", "oracle", "swift", "swift_vote"} <= set(rows)
    # the confidence scorers captured while sampling, and filter-then-vote rows for every score
    assert {"logprob", "neg_entropy_vote", "deepconf_tail_top10", "swift_top90"} <= set(
        rows
    )
    values = {
        row: [float(v) for v in re.findall(r"\d\.\d{4}", cells)]
        for row, cells in rows.items()
    }
    assert all(0.0 <= v <= 1.0 for vs in values.values() for v in vs)
    # oracle@k is an upper bound of every selector at the same k (columns k = 1, 2, 4)
    for row in ("maj", "swift", "swift_vote"):
        assert all(
            v <= o + 1e-9 for v, o in zip(values[row], values["oracle"], strict=True)
        )
    assert values["oracle"][0] == pytest.approx(values["first"][0])


def test_the_demo_lm_evaluation_gives_no_answer_to_a_cut_off_response(monkeypatch):
    """The demo LM's accuracy is graded as every other path grades: a response cut off at the token limit states
    no answer unless it stated one (its last number is not read)."""
    from lm_eval_swift.demo import train_lm

    texts = ["2 + 2 = 4", "2 + 2 = 4"]
    monkeypatch.setattr(
        train_lm, "sample", lambda *args, **kwargs: (texts, 10, [False, True])
    )
    result = train_lm.evaluate(
        None, None, [{"question": "2 + 2?", "answer": "#### 4"}], k=2
    )
    assert result["mean_acc"] == 0.5 and result["pass@2"] == 1.0
