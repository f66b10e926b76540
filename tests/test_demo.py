"""The offline demo at a reduced size: the real lm_eval run through ``lm-eval-swift demo`` with the shipped
model and head, checking the table's rows and that the numbers are sane."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from lm_eval_swift.demo.run import HEAD_DIR, MODEL_DIR
from lm_eval_swift.heads import SwiftHead


def test_shipped_demo_model_and_head_fit_together():
    from transformers import AutoConfig

    head = SwiftHead.from_pretrained(HEAD_DIR)
    head.check_compatible(AutoConfig.from_pretrained(MODEL_DIR), str(MODEL_DIR))
    assert head.training_info["metrics"]["auroc"] > 0.5
    size = sum(p.stat().st_size for d in (MODEL_DIR, HEAD_DIR) for p in d.iterdir())
    assert size < 20e6


def test_demo_prints_the_table(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval_swift", "demo", "--questions", "12", "--n", "4", "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    table = proc.stdout[proc.stdout.index("SWIFT demo: 12 questions, N=4"):]
    rows = dict(re.findall(r"^\| (\S+) \| (.*) \|$", table, re.M))
    assert {"first", "mean", "maj", "oracle", "swift", "swift_vote"} <= set(rows)
    values = {row: [float(v) for v in re.findall(r"\d\.\d{4}", cells)] for row, cells in rows.items()}
    assert all(0.0 <= v <= 1.0 for vs in values.values() for v in vs)
    # oracle@k is an upper bound of every selector at the same k (columns k = 1, 2, 4)
    for row in ("maj", "swift", "swift_vote"):
        assert all(v <= o + 1e-9 for v, o in zip(values[row], values["oracle"]))
    assert values["oracle"][0] == pytest.approx(values["first"][0])
