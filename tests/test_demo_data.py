"""The demo's synthetic GSM8K-format problems: disjoint splits, correct worked solutions, determinism."""

from __future__ import annotations

import json
import re

import pytest

from lm_eval_swift.demo.synthetic import (
    MAX_STEPS,
    MAX_VALUE,
    MIN_STEPS,
    SPLITS,
    final_answer,
    make_problems,
    split_of,
    write_jsonl,
)
from lm_eval_swift.grading import extract_answer, grade


def is_correct(response: str, answer: str) -> bool:
    """The library's grading of ``response`` against the gold ``#### N`` of a synthetic answer."""
    return grade(response, final_answer(answer), "gsm8k")


STEP = re.compile(r"^([A-Z][a-z]+(?: [a-z]+)?): (\d+) ([-+*/]) (\d+) = (\d+)$")
OPS = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
}


@pytest.fixture(scope="module")
def problems() -> dict[str, list[dict]]:
    return {split: make_problems(split, 400, seed=0) for split in SPLITS}


def test_splits_are_disjoint_and_deduplicated(problems):
    questions = {s: [p["question"] for p in ps] for s, ps in problems.items()}
    for s, qs in questions.items():
        assert len(qs) == 400 and len(set(qs)) == 400
        assert all(split_of(q) == s for q in qs)
    # other seeds never reach into another split either
    other = {s: {p["question"] for p in make_problems(s, 200, seed=7)} for s in SPLITS}
    for a in SPLITS:
        for b in SPLITS:
            if a != b:
                assert not set(questions[a]) & set(questions[b])
                assert not other[a] & set(questions[b])


def test_answers_are_gsm8k_format_with_correct_arithmetic(problems):
    for p in (p for ps in problems.values() for p in ps):
        q, ans = p["question"], p["answer"]
        assert set(p) == {"question", "answer"}
        assert q.isascii() and ans.isascii() and q.isprintable() and "\n" not in q
        assert q.endswith("?")
        *steps, last = ans.split("\n")
        assert re.fullmatch(r"#### \d+", last), ans
        assert MIN_STEPS <= len(steps) <= MAX_STEPS, ans
        prev, labels, operands = None, [], []
        for line in steps:
            m = STEP.match(line)
            assert m, line
            label, a, op, b, c = (
                m.group(1),
                int(m.group(2)),
                m.group(3),
                int(m.group(4)),
                int(m.group(5)),
            )
            assert OPS[op](a, b) == c, line  # recompute (division must be exact)
            assert 1 <= c <= MAX_VALUE and 1 <= a <= MAX_VALUE
            assert prev is None or a == prev, (
                ans
            )  # each step starts from the previous result
            prev = c
            labels.append(label)
            if (
                op != "*"
            ):  # factors are words ("doubles"); every other operand is written in the question
                operands.append(b)
            if op == "/":
                assert line is steps[-1]
        assert len(set(labels)) == len(
            labels
        )  # no repeated action: each label names one sentence
        assert final_answer(ans) == str(prev)
        first = int(STEP.match(steps[0]).group(2))
        assert [int(x) for x in re.findall(r"\d+", q)] == [first, *operands], (q, ans)


def test_deterministic_for_a_seed():
    a = make_problems("test", 50, seed=3)
    assert a == make_problems("test", 50, seed=3)
    assert a[:20] == make_problems("test", 20, seed=3)
    assert a != make_problems("test", 50, seed=4)
    with pytest.raises(ValueError):
        make_problems("validation", 1)


def test_varied(problems):
    ps = problems["train_lm"]
    n_steps = {p["answer"].count("\n") for p in ps}
    assert n_steps == set(range(MIN_STEPS, MAX_STEPS + 1))
    ops = {
        m.group(3)
        for p in ps
        for line in p["answer"].split("\n")[:-1]
        if (m := STEP.match(line))
    }
    assert ops == {"+", "-", "*", "/"}
    assert len({final_answer(p["answer"]) for p in ps}) > 50


def test_library_grading_of_synthetic_answers_and_jsonl(tmp_path):
    gold = "Buying: 3 + 4 = 7\nSelling: 7 - 2 = 5\n#### 5"
    assert extract_answer(gold, "gsm8k") == "5" and is_correct(gold, gold)
    assert is_correct("so the answer is \\boxed{5}", gold)
    assert is_correct("7 - 2 = 5", gold)
    assert not is_correct("Selling: 7 - 2 = 6\n#### 6", gold)
    assert not is_correct("no number here", gold)
    recs = make_problems("train_head", 5)
    path = write_jsonl(recs, tmp_path / "sub" / "x.jsonl")
    assert [json.loads(line) for line in path.read_text().splitlines()] == recs
