"""The committed learning curves (``experiments/learning_curves``): each ``curve.csv`` is the summary of its
``curve_seeds.csv``, and every figure the READMEs quote from a curve is that curve's."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from conftest import REPO
from helpers import cells, table_rows

from lm_eval_swift.swift.curve import summarize


CURVES = REPO / "experiments" / "learning_curves"
FOLDERS = sorted(p.parent.name for p in CURVES.glob("*/curve.csv"))
# README column headers -> curve.csv metrics (``swift@k`` and ``swift_vote@k`` are their own names)
HEADERS = {
    "within-question AUROC": "within_auroc",
    "global AUROC": "auroc",
    "val BCE": "val_bce",
    "best epoch": "best_epoch",
}
NUMBER = r"[-+]?\d+(?:\.\d+)?"


def read_csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [
            {k: (float(v) if v else None) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]


def close(quoted: str, value: float) -> bool:
    """Whether ``quoted`` (a number as written, with d decimals) is ``value`` rounded to d decimals."""
    decimals = len(quoted.split(".")[1]) if "." in quoted else 0
    return abs(float(quoted) - value) <= 0.5 * 10**-decimals + 1e-4


def quoted_tables() -> list[tuple[str, str]]:
    """(curve folder, markdown table) for every table of the curves' READMEs: a section of the top README names its
    folder in its heading (``## `demo/`: ...``), a folder's own README is about that folder."""
    out = []
    for section in (CURVES / "README.md").read_text().split("\n## ")[1:]:
        folder = re.match(r"`(\w+)/`", section)
        if folder:
            out += [(folder.group(1), t) for t in tables(section)]
    for readme in CURVES.glob("*/README.md"):
        out += [(readme.parent.name, t) for t in tables(readme.read_text())]
    return out


def tables(text: str) -> list[str]:
    blocks = re.findall(r"(?:^\|.*\n?)+", text, flags=re.M)
    return [b for b in blocks if b.count("\n") >= 2]


def test_the_curves_and_their_tables_are_there():
    assert {"demo", "demo_bce", "smollm2"} <= set(FOLDERS)
    assert {folder for folder, _ in quoted_tables()} >= {"demo", "demo_bce", "smollm2"}


@pytest.mark.parametrize("folder", FOLDERS)
def test_curve_csv_summarizes_the_seeds(folder):
    fits = read_csv(CURVES / folder / "curve_seeds.csv")
    expected = read_csv(CURVES / folder / "curve.csv")
    summary = summarize(fits)
    assert [r["questions"] for r in summary] == [r["questions"] for r in expected]
    for got, want in zip(summary, expected, strict=True):
        for key, value in want.items():
            if value is None:
                assert got.get(key) is None, key
            else:
                assert got[key] == pytest.approx(value, abs=2e-4), key
    assert (CURVES / folder / "curve.png").stat().st_size > 10_000


def test_the_readmes_quote_the_curves():
    checked = 0
    for folder, table in quoted_tables():
        summary = {
            int(r["questions"]): r for r in read_csv(CURVES / folder / "curve.csv")
        }
        (first, header), _, *rows = [cells(line) for line in table_rows(table)]
        assert first == "training questions", table
        for questions, values in rows:
            if questions.isdigit():
                row = summary[int(questions)]
                for name, cell in zip(header, values, strict=True):
                    metric = HEADERS.get(name, name)
                    mean, _, sd = cell.partition(" ± ")
                    where = (folder, questions, name, cell)
                    assert close(mean, row[f"{metric}_mean"]), where
                    assert not sd or close(sd, row[f"{metric}_std"]), where
                    checked += 1
            else:  # the references that do not depend on the head: "maj@4 0.438", "oracle@8 0.706, mean@8 0.427"
                any_row = next(iter(summary.values()))
                for metric, value in re.findall(
                    rf"([\w@]+@\d+) ({NUMBER})", " ".join(values)
                ):
                    assert close(value, any_row[f"{metric}_mean"]), (
                        folder,
                        metric,
                        value,
                    )
                    checked += 1
    assert checked > 50
