"""Learning curves (``lm-eval-swift train --curve``): nested subsets, one feature pass for every fit, determinism,
resuming from the recorded fits, the outputs and one-line errors for bad sizes."""

from __future__ import annotations

import csv
import json
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from helpers import make_rollouts

import lm_eval_swift.swift.features as features_module
from lm_eval_swift.bon.rollouts import read_rollouts
from lm_eval_swift.cli import main
from lm_eval_swift.swift.curve import (
    FITS,
    check_sizes,
    mixed_questions,
    nested_subsets,
)
from lm_eval_swift.swift.training import TrainingData, split_questions


@pytest.fixture(scope="module")
def model(tiny_model_factory) -> str:
    return str(tiny_model_factory("llama"))


@pytest.fixture(scope="module")
def rollouts(tmp_path_factory) -> Path:
    return make_rollouts(tmp_path_factory.mktemp("rollouts") / "toy.jsonl", n=8)


def curve_argv(rollouts, model, out, cache, *sizes, seeds=2) -> list[str]:
    return ["train", str(rollouts), "--base-model", model, "--out", str(out), "--cache-dir", str(cache),
            "--device", "cpu", "--epochs", "3", "--lr", "1e-2", "--curve", *map(str, sizes),
            "--curve-seeds", str(seeds)]  # fmt: skip


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def count_forwards(monkeypatch) -> list[int]:
    """Patch the base model's teacher-forced forward to record how many responses each call feeds."""
    fed: list[int] = []
    real = features_module.forward_after_prompt

    def counted(model, prompt, responses, *args, **kwargs):
        fed.append(len(responses))
        return real(model, prompt, responses, *args, **kwargs)

    monkeypatch.setattr(features_module, "forward_after_prompt", counted)
    return fed


def test_subsets_are_nested_seeded_and_keep_a_question_whole():
    keys = [("t", q % 30) for q in range(45)]  # 15 questions appear twice (two files)
    train, val = split_questions(keys, 0.2, seed=0)
    sizes = [3, 6, 12, 24]
    subsets = nested_subsets(keys, train, sizes, seed=1)
    questions = {n: {keys[i] for i in subsets[n]} for n in sizes}
    assert [len(questions[n]) for n in sizes] == sizes
    assert all(questions[a] < questions[b] for a, b in pairwise(sizes))
    assert all(
        set(subsets[n]) == {i for i in train if keys[i] in questions[n]} for n in sizes
    )  # every item of a chosen question, and only training items
    assert not questions[24] & {keys[i] for i in val}
    assert subsets == nested_subsets(keys, train, sizes, seed=1)
    assert (
        subsets[3] != nested_subsets(keys, train, sizes, seed=2)[3]
        or subsets[3] != nested_subsets(keys, train, sizes, seed=3)[3]
    )


def test_curve_needs_one_feature_pass_and_is_deterministic(
    model, rollouts, tmp_path, monkeypatch, capsys, caplog
):
    fed = count_forwards(monkeypatch)
    cache, first, second = tmp_path / "cache", tmp_path / "a", tmp_path / "b"
    n_responses = sum(len(q.responses) for q in read_rollouts(rollouts))
    main(curve_argv(rollouts, model, first, cache, 4, 8, 16))
    # the toy split's 4 validation questions are too few to rank sizes by selection: the user is told
    assert (
        "of the 4 validation questions have both right and wrong responses"
        in caplog.text
    )
    assert (
        sum(fed) == n_responses
    )  # one pass: each response through the model once, for 2 seeds x 3 sizes
    printed = capsys.readouterr().out
    assert "16 questions: within_auroc" in printed

    fits = read_csv(first / "curve_seeds.csv")
    assert [(f["seed"], f["questions"]) for f in fits] == [
        (s, n) for s in "01" for n in ("4", "8", "16")
    ]
    assert [int(f["responses"]) for f in fits] == [
        8 * int(f["questions"]) for f in fits
    ]
    assert len({f["maj@8"] for f in fits}) == 1  # one validation split for every fit
    assert len({f["within_auroc"] for f in fits}) > 1
    summary = read_csv(first / "curve.csv")
    assert [r["questions"] for r in summary] == ["4", "8", "16"]
    assert all(r["seeds"] == "2" and r["within_auroc_std"] for r in summary)
    for column in ("val_loss_mean", "auroc_mean", "within_auroc_mean", "swift@4_mean",
                   "swift_vote@8_mean", "maj@8_mean", "swift@8_std"):  # fmt: skip
        assert column in summary[0]
    assert (first / "curve.png").stat().st_size > 10_000

    # the same curve from scratch (features from the cache: no model pass) gives the same fits
    fed.clear()
    main(curve_argv(rollouts, model, second, cache, 4, 8, 16))
    assert not fed
    assert read_csv(second / "curve_seeds.csv") == fits

    # a stopped curve resumes: recorded fits are read, the missing ones fitted again, to the same figures
    lines = (second / FITS).read_text().splitlines()
    (second / FITS).write_text("\n".join(lines[:4]) + "\n")
    main(curve_argv(rollouts, model, second, cache, 4, 8, 16))
    assert read_csv(second / "curve_seeds.csv") == fits
    assert len((second / FITS).read_text().splitlines()) == 6

    # more sizes: only their fits are added
    main(curve_argv(rollouts, model, second, cache, 4, 8, 12, 16))
    assert len((second / FITS).read_text().splitlines()) == 8
    extended = read_csv(second / "curve_seeds.csv")
    assert [f for f in extended if f["questions"] != "12"] == fits


def test_curve_with_other_settings_does_not_reuse_fits(model, rollouts, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    main(curve_argv(rollouts, model, out, cache, 4, 8, seeds=1))
    main([*curve_argv(rollouts, model, out, cache, 4, 8, seeds=1), "--lr", "1e-3"])
    settings = [
        json.loads(x)["settings"]["lr"] for x in (out / FITS).read_text().splitlines()
    ]
    assert settings == [1e-2, 1e-2, 1e-3, 1e-3]


@pytest.mark.parametrize(
    "sizes, message",
    [
        (["8", "4"], "strictly increasing"),
        (["4", "4"], "strictly increasing"),
        (["0", "4"], "positive"),
        (["4", "17"], "more than the 16 training questions"),
    ],
)
def test_bad_sizes_are_one_line_errors(
    model, rollouts, tmp_path, capsys, sizes, message
):
    with pytest.raises(SystemExit) as exit_:
        main(curve_argv(rollouts, model, tmp_path / "out", tmp_path / "cache", *sizes))
    last = capsys.readouterr().err.splitlines()[-1]  # (after the model's loading bar)
    assert exit_.value.code == 2 and last.startswith("lm-eval-swift: error: ")
    assert message in last
    assert not (tmp_path / "cache").exists()  # refused before any feature was computed


def test_too_few_questions_for_a_validation_split(model, tmp_path, capsys):
    one = make_rollouts(tmp_path / "one.jsonl", n_questions=1)
    with pytest.raises(SystemExit):
        main(curve_argv(one, model, tmp_path / "out", tmp_path / "cache", 1))
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("lm-eval-swift: error: need at least 2 distinct questions")


def test_check_sizes():
    assert check_sizes([1, 5, 9], 9) == [1, 5, 9]
    with pytest.raises(ValueError, match="--curve size 10 is more than the 9"):
        check_sizes([5, 10], 9)


def test_mixed_questions_counts_those_with_right_and_wrong_responses():
    labels = [
        1,
        0,
        0,
        0,
        1,
        1,
        0,
        1,
    ]  # questions: mixed, all wrong, all right, mixed (2 responses each)
    spans = [range(i, i + 2) for i in range(0, 8, 2)]
    data = TrainingData(
        [],
        [],
        [],
        torch.tensor(labels, dtype=torch.float32),
        [i // 2 for i in range(8)],
        spans,
    )
    assert mixed_questions(data, [0, 1, 2, 3]) == 2
    assert mixed_questions(data, [1, 2]) == 0
