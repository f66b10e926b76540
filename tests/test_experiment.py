"""The committed SmolLM2 experiment (``experiments/smollm2_gsm8k``): ``lm-eval-swift report`` on its test rollouts,
run as its README writes it, reproduces the table of ``results.md`` without sampling."""

from __future__ import annotations

import json
import re
import sys

from conftest import REPO
from helpers import cells, run, table_rows

from lm_eval_swift.bon.rollouts import read_rollouts


EXPERIMENT = REPO / "experiments" / "smollm2_gsm8k"
KS = (1, 2, 4, 8, 16)


def results_md_means() -> dict[str, dict[int, float]]:
    """{row: {k: mean}} of results.md's first table (cells ``mean ± se``, empty where a row has no such k)."""
    text = (EXPERIMENT / "results.md").read_text()
    table = text.split("\n\n## ")[0]
    means: dict[str, dict[int, float]] = {}
    for line in table_rows(table)[2:]:
        row, values = cells(line)
        means[row] = {
            k: float(cell.split("±")[0])
            for k, cell in zip(KS, values, strict=False)
            if cell
        }
    return means


def test_report_on_committed_rollouts_reproduces_results_md():
    files = sorted((EXPERIMENT / "rollouts" / "test").glob("*.jsonl.gz"))
    proc = run(
        [sys.executable, "-m", "lm_eval_swift", "report", *map(str, files), "--k", *map(str, KS)],
        cwd=REPO,
    )  # fmt: skip
    reported: dict[str, dict[int, float]] = {}
    header, _, *body = table_rows(proc.stdout)
    ks = [int(k) for k in re.findall(r"k=(\d+)", header)]
    for line in body:
        row, values = cells(line)
        reported[row] = {k: float(c) for k, c in zip(ks, values, strict=False) if c}
    expected = results_md_means()
    assert reported.keys() == expected.keys()
    for row, cols in expected.items():
        assert reported[row].keys() == cols.keys(), row
        for k, mean in cols.items():
            assert abs(reported[row][k] - mean) <= 5e-4 + 1e-9, (row, k)

    settings = json.loads((EXPERIMENT / "rollouts" / "settings.json").read_text())
    test = settings["splits"]["test"]
    n_questions = test["questions"]
    questions = [q for f in files for q in read_rollouts(f)]
    assert sorted(q.doc_id for q in questions) == list(range(n_questions))
    assert {len(q.responses) for q in questions} == {test["n"]}
    assert f"first {n_questions} questions" in (EXPERIMENT / "results.md").read_text()
