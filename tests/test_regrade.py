"""``lm-eval-swift regrade``: committed rollouts graded again without sampling, the old labels kept beside the new;
and the exact McNemar test and paired bootstrap interval that ``report --paired`` and the experiment's report print."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO
from helpers import run

from lm_eval_swift.bon.metrics import mcnemar, paired_bootstrap
from lm_eval_swift.bon.rollouts import (
    QuestionRollout,
    Response,
    read_rollouts,
    write_rollouts,
)


def _response(text: str, finish: str | None, num_tokens: int = 10) -> Response:
    """A response as the first grader labelled it: credited for a 12 somewhere in its text."""
    return Response(text, "12", 1.0, 0, num_tokens, [], finish)


def _file(tmp_path):
    responses = [
        _response(
            "Step 1: 3 * 4 = 12 eggs. Step 2: we add the 12 eggs to the", "length"
        ),
        _response("The final answer is 3 * 4 = 12.", "eos"),
        _response("So the answer is 12 - 2 = 10 eggs.", "eos"),
        _response("First 3 * 4 = 12 eggs, then 12 +", None, num_tokens=256),
    ]
    path = tmp_path / "rollouts.jsonl.gz"
    write_rollouts(
        [QuestionRollout("gsm8k_bon", 0, "gsm8k", "q", "p", "12", responses)], path
    )
    return path


def test_regrade_command_keeps_the_old_labels(tmp_path):
    path = _file(tmp_path)
    proc = run(
        [sys.executable, "-m", "lm_eval_swift", "regrade", str(path), "--max_gen_toks", "256"],
        cwd=REPO,
    )  # fmt: skip
    assert f"| {path} | 4 | 4 | 1 | 0 | 3 |" in proc.stdout
    (q,) = read_rollouts(path)
    assert [r.correct for r in q.responses] == [0.0, 1.0, 0.0, 0.0]
    assert [r.answer for r in q.responses] == [None, "12", "10", None]
    assert [r.answer_class for r in q.responses] == [-1, 1, 2, -1]
    assert all(
        r.regraded_from == {"answer": "12", "correct": 1.0, "answer_class": 0}
        for r in q.responses
    )
    run([sys.executable, "-m", "lm_eval_swift", "regrade", str(path)], cwd=REPO)
    (again,) = read_rollouts(path)
    assert (
        again.responses[0].regraded_from == q.responses[0].regraded_from
    )  # the first labels stay
    # without --max_gen_toks the plain-hf response is taken to have ended by itself: its last number, 12
    assert (again.responses[3].answer, again.responses[3].correct) == ("12", 1.0)


def test_unregraded_records_are_written_as_before(tmp_path):
    path = _file(tmp_path)
    (q,) = read_rollouts(path)
    assert "regraded_from" not in q.to_json()


def test_regrade_of_a_missing_file_is_a_usage_error(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lm_eval_swift",
            "regrade",
            str(tmp_path / "nope.jsonl"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("lm-eval-swift: error:")


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([1, 1, 1, 0], [0, 0, 0, 0], (3, 0, 0.25)),
        (
            [1] * 8 + [0] * 2,
            [0] * 8 + [1] * 2,
            (8, 2, 0.109375),
        ),  # scipy.stats.binomtest(2, 10)
        ([1, 0, 1], [1, 0, 1], (0, 0, 1.0)),
        ([1] * 3 + [0] * 3, [0] * 3 + [1] * 3, (3, 3, 1.0)),
    ],
)
def test_mcnemar_exact(a, b, expected):
    assert mcnemar(a, b) == pytest.approx(expected)


def test_paired_bootstrap_interval():
    """Identical outcomes differ by exactly 0; a constant difference has no spread; otherwise the 95% interval holds
    the mean and is about +-1.96 standard errors wide (here 30 of 100 questions: se 0.046); same draws, same
    interval."""
    assert paired_bootstrap([1, 0, 1], [1, 0, 1]) == (0.0, 0.0, 0.0)
    assert paired_bootstrap([1, 1], [0, 0]) == (1.0, 1.0, 1.0)
    a, b = [1] * 30 + [0] * 70, [0] * 100
    diff, lo, hi = paired_bootstrap(a, b, resamples=4000, seed=1)
    assert diff == 0.3 and lo < diff < hi
    assert (hi - lo) / 2 == pytest.approx(1.96 * (0.3 * 0.7 / 100) ** 0.5, rel=0.15)
    assert paired_bootstrap(a, b, resamples=4000, seed=1) == (diff, lo, hi)
    with pytest.raises(ValueError, match="3 outcomes against 2"):
        paired_bootstrap([1, 0, 1], [1, 0])


def _question(doc_id: int) -> QuestionRollout:
    """Two samples, the wrong one first: maj@2 keeps the first class (wrong), the score picks the right one."""
    wrong = Response("The answer is 1.", "1", 0.0, 0, 5, [], "eos", {"s": 0.0})
    right = Response("The answer is 2.", "2", 1.0, 1, 5, [], "eos", {"s": 1.0})
    return QuestionRollout("t", doc_id, "gsm8k", "q", "p", "2", [wrong, right])


@pytest.mark.parametrize("questions, flagged", [(12, False), (4, True)])
def test_report_paired_prints_discordant_counts_and_mcnemar(
    tmp_path, questions, flagged
):
    path = tmp_path / "r.jsonl"
    write_rollouts([_question(i) for i in range(questions)], path)
    proc = run(
        [sys.executable, "-m", "lm_eval_swift", "report", str(path), "--k", "1", "2", "--paired"],
        cwd=REPO,
    )  # fmt: skip
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("| s | 2 |")]
    p = 2 * 0.5**questions
    assert f"| {questions} / 0 | {p:.3g}" in line
    assert ("too few to judge" in line) is flagged
    assert "[+1.0000, +1.0000]" in line  # every resample: s right, maj wrong
