"""Best-of-N selectors: pick one response (or summarise) from the first k of a question's N samples.

Each selector is a plain function over a list of graded :class:`~lm_eval_swift.rollouts.Response`; the lm-eval
filters below are one-line wrappers registered like lm-eval's own ``filters/selection.py``, and
``lm-eval-swift report`` calls the same functions on saved rollouts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

from lm_eval.api.filter import Filter
from lm_eval.api.registry import register_filter

from lm_eval_swift.rollouts import Response


Selector = Callable[..., Response]


def first(rs: Sequence[Response]) -> Response:
    """The first sample."""
    return rs[0]


def mean(rs: Sequence[Response]) -> Response:
    """Not a selection: the mean correctness over all samples, carried by a copy of the first response."""
    return replace(rs[0], correct=sum(r.correct for r in rs) / len(rs))


def _vote(rs: Sequence[Response], weights: Sequence[float]) -> Response:
    """The first response of the answer class with the largest total weight; ties go to the earliest class."""
    totals: dict[int, float] = {}
    for r, w in zip(rs, weights):
        if r.answer_class >= 0:
            totals[r.answer_class] = totals.get(r.answer_class, 0.0) + w
    if not totals:
        return rs[0]
    best = max(totals, key=lambda c: (totals[c], -c))
    return next(r for r in rs if r.answer_class == best)


def majority(rs: Sequence[Response]) -> Response:
    """Majority vote over equivalence classes of extracted answers (``1/2`` and ``0.5`` vote together)."""
    return _vote(rs, [1.0] * len(rs))


def oracle(rs: Sequence[Response]) -> Response:
    """pass@k: the first correct response, else the first one."""
    return next((r for r in rs if r.correct), rs[0])


def _score(r: Response, score: str) -> float:
    value = r.scores.get(score)
    if value is None or math.isnan(value):
        return -math.inf
    return value


def argmax(rs: Sequence[Response], score: str = "swift") -> Response:
    """The response with the highest value of the named score; ties go to the lowest index."""
    values = [_score(r, score) for r in rs]
    return rs[max(range(len(rs)), key=lambda i: (values[i], -i))]


def weighted_vote(
    rs: Sequence[Response], score: str = "swift", weight: str = "sigmoid"
) -> Response:
    """Vote with each response weighted by its score: ``sigmoid`` of it (SWIFT's R is a logit) or its
    per-question ``minmax``-normalised value in [0, 1] (a constant set maps to 1.0)."""
    values = [_score(r, score) for r in rs]
    if weight == "sigmoid":
        weights = [
            0.0 if v == -math.inf else 1.0 / (1.0 + math.exp(-max(min(v, 50.0), -50.0)))
            for v in values
        ]
    elif weight == "minmax":
        weights = minmax(values)
    else:
        raise ValueError(f"unknown vote weight {weight!r}: use 'sigmoid' or 'minmax'")
    return _vote(rs, weights)


def minmax(values: Sequence[float]) -> list[float]:
    """Min-max normalise to [0, 1]; a constant set maps to 1.0 and a missing value (-inf) to 0.0."""
    finite = [v for v in values if v != -math.inf]
    if not finite:
        return [0.0] * len(values)
    lo, hi = min(finite), max(finite)
    return [
        0.0 if v == -math.inf else (1.0 if hi == lo else (v - lo) / (hi - lo))
        for v in values
    ]


def _ranks(values: Sequence[float]) -> list[int]:
    """Rank 0 = best (highest); equal values share the best rank among them."""
    return [sum(1 for w in values if w > v) for v in values]


def combined(
    rs: Sequence[Response], scores: Sequence[str] = ("swift",), method: str = "scaling"
) -> Response:
    """Argmax of a combination of several scores over the same candidates (SWIFT + a reward model, say).

    ``scaling``: min-max normalise each score over the candidates and average. ``ranking``: each candidate's
    worst rank across the scores, lowest wins. Ties go to the lowest index either way.
    """
    columns = [[_score(r, name) for r in rs] for name in scores]
    if method == "scaling":
        normed = [minmax(col) for col in columns]
        key = [sum(col[i] for col in normed) / len(normed) for i in range(len(rs))]
    elif method == "ranking":
        ranks = [_ranks(col) for col in columns]
        key = [-max(col[i] for col in ranks) for i in range(len(rs))]
    else:
        raise ValueError(f"unknown combination {method!r}: use 'scaling' or 'ranking'")
    return rs[max(range(len(rs)), key=lambda i: (key[i], -i))]


SELECTORS: dict[str, Selector] = {
    "first": first,
    "mean": mean,
    "maj": majority,
    "oracle": oracle,
    "argmax": argmax,
    "vote": weighted_vote,
    "combined": combined,
}


class BestOfNFilter(Filter):
    """Applies ``selector`` to the first ``k`` responses of each document (all of them when k is None)."""

    selector: Selector

    def __init__(self, k: int | None = None, **selector_kwargs) -> None:
        self.k = None if k is None else int(k)
        self.selector_kwargs = selector_kwargs

    def apply(self, resps, docs):
        return [
            type(self).selector(list(rs)[: self.k], **self.selector_kwargs)
            for rs in resps
        ]


@register_filter("bon_first")
class FirstFilter(BestOfNFilter):
    selector = staticmethod(first)


@register_filter("bon_mean")
class MeanFilter(BestOfNFilter):
    selector = staticmethod(mean)


@register_filter("bon_majority")
class MajorityFilter(BestOfNFilter):
    selector = staticmethod(majority)


@register_filter("bon_oracle")
class OracleFilter(BestOfNFilter):
    selector = staticmethod(oracle)


@register_filter("argmax_score")
@register_filter("swift")
class ArgmaxFilter(BestOfNFilter):
    """``swift``: argmax of the ``swift`` score; as ``argmax_score`` name any score with ``score:``."""

    selector = staticmethod(argmax)


@register_filter("weighted_vote")
class WeightedVoteFilter(BestOfNFilter):
    selector = staticmethod(weighted_vote)


@register_filter("combined_score")
class CombinedFilter(BestOfNFilter):
    """Argmax of several scores combined (``scores: [swift, skywork]``, ``method: scaling | ranking``)."""

    selector = staticmethod(combined)


FILTER_NAMES = {
    "first": "bon_first",
    "mean": "bon_mean",
    "maj": "bon_majority",
    "oracle": "bon_oracle",
    "argmax": "argmax_score",
    "vote": "weighted_vote",
    "combined": "combined_score",
}  # selector -> the lm-eval filter that applies it
