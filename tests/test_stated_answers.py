"""The answer a response states, on real model output: SmolLM2-135M-Instruct's GSM8K responses labelled by hand
(tests/data/smollm2_gsm8k_labels.jsonl, its rule at the top), truncated responses, and the "no answer" class."""

from __future__ import annotations

import gzip
import json
from fractions import Fraction
from pathlib import Path

import pytest

from lm_eval_swift.bon.rollouts import build_rollout, is_truncated
from lm_eval_swift.bon.selectors import majority
from lm_eval_swift.grading import extract_answer, grade, grade_all


ROOT = Path(__file__).resolve().parents[1]
LABELS = ROOT / "tests" / "data" / "smollm2_gsm8k_labels.jsonl"
ROLLOUTS = ROOT / "experiments" / "smollm2_gsm8k" / "rollouts"


def _labels() -> list[dict]:
    lines = LABELS.read_text().splitlines()
    return [json.loads(line) for line in lines if line and not line.startswith("#")]


def _texts() -> dict[tuple[str, int, int], str]:
    texts = {}
    for split in ("train", "test"):
        for path in sorted((ROLLOUTS / split).glob("*.jsonl.gz")):
            with gzip.open(path, "rt") as f:
                for line in f:
                    q = json.loads(line)
                    for i, r in enumerate(q["responses"]):
                        texts[(split, q["doc_id"], i)] = r["text"]
    return texts


@pytest.fixture(scope="module")
def labelled() -> list[tuple[dict, str]]:
    texts = _texts()
    return [(r, texts[(r["split"], r["doc_id"], r["sample"])]) for r in _labels()]


def _number(text: str | None) -> Fraction | str | None:
    try:
        return Fraction(text.replace(",", "")) if text is not None else None
    except ValueError:
        return text


def test_label_file_covers_the_issue(labelled):
    """At least 150 responses, from both splits, truncated and not, with the rule written at the top."""
    assert LABELS.read_text().startswith("#")
    assert len(labelled) >= 150
    assert {r["split"] for r, _ in labelled} == {"train", "test"}
    assert {r["finish"] for r, _ in labelled} == {"eos", "length"}


def test_grader_agrees_with_hand_labels(labelled):
    verdicts = grade_all(
        [text for _, text in labelled],
        [r["gold"] for r, _ in labelled],
        "gsm8k",
        truncated=[r["finish"] == "length" for r, _ in labelled],
    )
    disagree = [
        (r, v)
        for (r, _), v in zip(labelled, verdicts, strict=True)
        if v != r["correct"]
    ]
    assert 1 - len(disagree) / len(labelled) >= 0.97, disagree


def test_stated_answers_agree_with_hand_labels(labelled):
    wrong = [
        (r, got)
        for r, text in labelled
        if _number(got := extract_answer(text, "gsm8k", r["finish"] == "length"))
        != _number(r["stated"])
    ]
    assert 1 - len(wrong) / len(labelled) >= 0.97, wrong


def test_no_truncated_response_is_credited_for_a_number_it_never_stated(labelled):
    credited = [
        r
        for r, text in labelled
        if r["finish"] == "length"
        and not r["correct"]
        and grade(text, r["gold"], "gsm8k", truncated=True)
    ]
    assert not credited


@pytest.mark.parametrize(
    "response, truncated, expected",
    [
        ("Total: 3 * 4 = 12 apples.\n\nThe final answer is 3 * 4 = 12.", False, "12"),
        ("She has 18 + 2 = 20 miles.\n\nSo the answer is 18 + 2 = ", True, None),
        ("So the answer is 6 + 2 = 8 gallons of water in total.", False, "8"),
        ("The final answer is 60 miles / 2 weeks / 3 weeks * 2 = 10.", False, "10"),
        (
            "5. Then 2 * 3 = 6.\n6. We subtract this value from the total of all the",
            True,
            None,
        ),
        (
            "Then 2 * 3 = 6.\n6. We subtract this value from the total of 7 - 1 = 6",
            False,
            "6",
        ),
        ("So the answer is \\boxed{6.", True, None),
        ("The answer is \\boxed{Your Answer}.\nThe answer is 32.", False, "32"),
        ("\\boxed{Step 3: Display your answer}\nFinal Answer: 4", False, "4"),
        ("So, \\boxed{The answer is 9}", False, "9"),
        ("The final answer is 42 dollars, which is 700 - 42 = 658.", False, "42"),
        ("So the answer is 18 / 20", False, "0.9"),
        ("Simplify your answer: 3 * 2 = 6. Then 4 + 3 = 7", True, None),
        (
            "#### 400\nThe answer is 4",
            True,
            "400",
        ),  # the last statement may go on: 4, 40, 400, ...
        ("Therefore, the answer is 16 gallons", True, "16"),
        ("So, 24 * 1/50 = 0.75 is the answer.\n\nThat is 50% of them.", False, "0.75"),
        (
            "So the answer is x hours. \\boxed{x}",
            False,
            "x",
        ),  # boxed, not a number: wrong
    ],
)
def test_stated_answer(response, truncated, expected):
    assert extract_answer(response, "gsm8k", truncated) == expected


def test_truncation_is_an_input_of_grade():
    text = "First 4 + 4 = 8 cups. Then we add the 8 cups to the"
    assert grade(text, "8", "gsm8k") is True  # ended by itself: its last number
    assert grade(text, "8", "gsm8k", truncated=True) is False  # cut off: no answer
    assert grade("So the answer is \\boxed{x}", "8", "gsm8k") is False


def test_truncated_by_finish_or_by_the_token_limit():
    assert is_truncated("length", 10) and not is_truncated("eos", 256, 256)
    assert is_truncated(None, 256, 256) and not is_truncated(None, 255, 256)
    assert not is_truncated(None, 10_000)  # the limit unknown: not taken as cut off


class _Sample(str):
    """A sample as hf-swift returns it: its text, token ids and how it finished."""

    def __new__(cls, text: str, finish: str):
        s = super().__new__(cls, text)
        s.token_ids, s.finish, s.scores = [1, 2, 3], finish, {}
        return s


def test_no_answer_never_wins_a_vote():
    """Truncated samples without an answer form the no-answer class (-1), which majority voting never picks; with
    no answer anywhere, selection still returns a response, graded wrong."""
    cut = "Step 1: 2 + 2 = 4. Step 2: 4 * 3 ="
    samples = [_Sample(cut, "length")] * 3 + [_Sample("The answer is 12.", "eos")]
    q = build_rollout("t", 0, "gsm8k", "q", "p", "12", samples)
    assert [r.answer_class for r in q.responses] == [-1, -1, -1, 3]
    assert [r.correct for r in q.responses] == [0.0, 0.0, 0.0, 1.0]
    assert majority(q.responses).text == "The answer is 12."
    none = build_rollout("t", 0, "gsm8k", "q", "p", "4", [_Sample(cut, "length")] * 2)
    assert majority(none.responses).correct == 0.0


# ------------------------------------------------------------------------------------- the blind review's cases

_HUGE = " * ".join(["9" * 50] * 90)  # 4,500 digits: over int's 4,300-digit string limit


@pytest.mark.parametrize(
    "response",
    [
        f"The answer is {_HUGE}",
        f"The answer is {_HUGE}.\n",
        f"So the total is \\boxed{{{_HUGE}}}",
        f"#### {_HUGE}",
        f"The answer is 5.\nThe answer is {_HUGE} = {_HUGE}.",  # the last statement states it: not 5
        "The answer is \\frac{" + "1" * 5000 + "}{3}",
        "The answer is 9^999999",
        "The answer is 10^{700}",
        # longer than the 512 characters a statement is read for
        "The answer is " + "9" * 5000,
    ],
)
def test_a_result_too_large_to_write_is_no_answer(response):
    """One response never stops a grading run: no answer, graded wrong, a no-answer class."""
    for truncated in (False, True):
        assert extract_answer(response, "gsm8k", truncated) is None
    assert grade_all([response, "The answer is 3."], ["3", "3"], "gsm8k") == [
        False,
        True,
    ]


def test_large_results_are_written_exactly():
    assert extract_answer("The answer is 10^{600}", "gsm8k") == "1" + "0" * 600
    half = "123456789012345678901234567891"  # beyond Decimal's 28 digits: no rounding
    assert extract_answer(f"The answer is {half} / 2", "gsm8k") == (
        "61728394506172839450617283945.5"
    )
    assert extract_answer("The answer is -7 / 40", "gsm8k") == "-0.175"


@pytest.mark.parametrize(
    "response, truncated, expected",
    [
        ("The answer is 2^3.", False, "8"),
        ("The answer is 2^{10} = 1024 ways.", False, "1024"),
        ("The answer is 2^10.", False, "1024"),
        ("The answer is 3 * 2^2 + 1.", False, "13"),
        ("The answer is 2^0.5", False, None),  # not rational: no exact value
        ("\\boxed{x^2}", False, "x^2"),  # not the number 2
        ("Dish 4 = \\boxed{Dy^4}\nTotal = \\boxed", True, "Dy^4"),
        ("So, the answer is: 228 = 2 * 2^3 + 12 = 2 * 2^2 + 12 + 12 + ", True, None),
        ("\\boxed{3\\*4}", False, "12"),  # Markdown's escaped star
        ("So the answer is 6 \\* 2 = 12.", False, "12"),
        ("Since the limit is \\boxed\\$600. Then she pays $500", False, "500"),
        ("Since the limit is \\boxed\\$600. Then she pays $500 for", True, None),
        ("\\boxed{:}  4,000 / 4 = 1,0", True, None),
        ("So, the answer is 72.\n\n", True, "72"),
        ("So, the answer is 26.6667\n", True, "26.6667"),
        ("The answer is 10 x 10 = 100.\n", True, "100"),
        ("The answer is 10 x 10 = 100.", True, None),  # may go on: 100.5
        ("So the answer is 18 +\n", True, None),
        ("So the answer is 110ml.", False, "110"),
        ("The answer is 5.\nSo the answer is 18kg.", False, "18"),
        ("the final answer is 20m * 30m / 3 = 90m and more", False, "90"),
        ("The answer is 5.\nSo the answer is 2x.", False, "5"),  # 2x: a term, no value
        ("The answer is 3 days (9*2=18 hours).", False, "3"),
        ("The final answer is 200 (25 times 1000 = 2000)", False, "200"),
        ("The answer is (9*2=18).", False, "18"),
        ("So the answer is $42 + $160 = $240", False, "240"),
        ("So the answer is $42$.", False, "42"),
    ],
)
def test_review_cases(response, truncated, expected):
    assert extract_answer(response, "gsm8k", truncated) == expected


def test_review_cases_are_graded_wrong_for_the_number_they_never_state():
    assert not grade("\\boxed{x^2}", "2", "gsm8k")
    assert not grade("Total = \\boxed{Dy^4}", "4", "gsm8k", truncated=True)
    assert not grade("\\boxed{3\\*4}", "3", "gsm8k")
    assert not grade("The answer is 2^3.", "2", "gsm8k")
    assert grade("The answer is 2^3.", "8", "gsm8k")
