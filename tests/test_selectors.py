"""Selectors on hand-made responses: tie-breaks, prefixes of k, votes over equivalence classes."""

from __future__ import annotations

import math

import pytest

from lm_eval_swift.bon.rollouts import Response
from lm_eval_swift.bon.selectors import (
    argmax,
    combined,
    majority,
    mean,
    minmax,
    oracle,
    weighted_vote,
)
from lm_eval_swift.harness.filters import FILTERS


ArgmaxFilter, MajorityFilter, MeanFilter, OracleFilter = (
    FILTERS[name] for name in ("argmax", "maj", "mean", "oracle")
)


def resp(cls: int, correct: bool, swift: float | None = None) -> Response:
    scores = {} if swift is None else {"swift": swift}
    return Response(f"answer {cls}", str(cls), float(correct), cls, 3, scores=scores)


def test_majority_ties_go_to_the_first_class():
    rs = [resp(0, False), resp(1, True), resp(1, True), resp(0, False)]
    assert majority(rs).answer_class == 0
    assert majority(rs[:3]).answer_class == 1


def test_majority_ignores_missing_answers():
    rs = [resp(-1, False), resp(-1, False), resp(2, True)]
    assert majority(rs).answer_class == 2
    assert majority([resp(-1, False)]).answer_class == -1


def test_oracle_and_mean():
    rs = [resp(0, False), resp(1, True), resp(2, False), resp(3, False)]
    assert oracle(rs).correct == 1.0
    assert oracle(rs[:1]).correct == 0.0
    assert mean(rs).correct == pytest.approx(0.25)


def test_argmax_tie_break_is_lowest_index():
    rs = [resp(0, False, 0.5), resp(1, True, 2.0), resp(2, False, 2.0)]
    assert argmax(rs) is rs[1]
    assert argmax(rs[:1]) is rs[0]


def test_argmax_missing_or_nan_scores_lose():
    rs = [resp(0, False, None), resp(1, True, float("nan")), resp(2, False, -5.0)]
    assert argmax(rs) is rs[2]


def test_weighted_vote_sigmoid_and_minmax():
    rs = [resp(0, False, 3.0), resp(1, True, 0.0), resp(1, True, 0.0)]
    # sigmoid(3)=0.95 < 2*sigmoid(0)=1.0: the class with two members wins
    assert weighted_vote(rs).answer_class == 1
    # min-max: 1.0 vs 0 + 0
    assert weighted_vote(rs, weight="minmax").answer_class == 0
    assert minmax([1.0, 1.0]) == [1.0, 1.0]
    assert minmax([-math.inf, 2.0, 4.0]) == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError):
        weighted_vote(rs, weight="softmax")


def test_filters_read_the_first_k():
    rs = [
        resp(0, False, 0.0),
        resp(1, True, 1.0),
        resp(1, True, 0.5),
        resp(2, False, 9.0),
    ]
    assert [r.answer_class for r in ArgmaxFilter(k=3).apply([rs], [{}])] == [1]
    assert [r.answer_class for r in ArgmaxFilter(k=4).apply([rs], [{}])] == [2]
    assert [
        r.answer_class for r in ArgmaxFilter(k=4, score="other").apply([rs], [{}])
    ] == [0]
    assert [r.answer_class for r in MajorityFilter(k=1).apply([rs], [{}])] == [0]
    assert [r.correct for r in OracleFilter(k=2).apply([rs], [{}])] == [1.0]
    assert [r.correct for r in MeanFilter().apply([rs], [{}])] == [0.5]


def test_filters_are_registered_in_lm_eval():
    from lm_eval.api.registry import get_filter

    assert get_filter("swift") is ArgmaxFilter
    assert get_filter("bon_majority") is MajorityFilter


def both(cls: int, swift: float, rm: float) -> Response:
    return Response(str(cls), str(cls), 0.0, cls, 1, scores={"swift": swift, "rm": rm})


def test_combination_scaling_and_ranking():
    rs = [both(0, 0.0, 10.0), both(1, 1.0, 0.0), both(2, 0.9, 9.0)]
    # scaling: (0+1)/2, (1+0)/2, (0.9+0.9)/2 -> candidate 2
    assert combined(rs, ["swift", "rm"], "scaling") is rs[2]
    # ranking: worst ranks 2, 2, 1 -> candidate 2
    assert combined(rs, ["swift", "rm"], "ranking") is rs[2]
    # ties go to the lowest index; a constant score maps to 1.0 and does not decide
    flat = [both(0, 1.0, 5.0), both(1, 1.0, 5.0)]
    assert combined(flat, ["swift", "rm"], "scaling") is flat[0]
    assert combined(flat, ["swift", "rm"], "ranking") is flat[0]
    with pytest.raises(ValueError):
        combined(rs, ["swift"], "product")
