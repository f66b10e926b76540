"""Best-of-N selectors: pick one response (or summarise) from the first k of a question's N samples.

Each selector is a plain function over a list of graded :class:`~lm_eval_swift.bon.rollouts.Response`, registered
here once (:func:`register_selector`) under its row name and the names of the lm-eval filters that apply it
(:mod:`lm_eval_swift.harness.filters` registers those from :data:`SELECTORS` in one loop); ``lm-eval-swift report``
calls the same functions on saved rollouts. A new selector is one function here with its decorator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

from lm_eval_swift.bon.rollouts import Response


Selector = Callable[..., Response]

SELECTORS: dict[str, Selector] = {}
"""Selector name (as the rows name it) -> the selector."""
FILTER_NAMES: dict[str, tuple[str, ...]] = {}
"""Selector name -> the names of the lm-eval filters that apply it; the first is the one the rows use."""


def register_selector(name: str, *filter_names: str) -> Callable[[Selector], Selector]:
    """Register a selector as ``name`` (its rows' name), applied in lm-eval by the filters ``filter_names``."""

    def register(fn: Selector) -> Selector:
        if name in SELECTORS:
            raise ValueError(f"selector {name!r} is already registered")
        SELECTORS[name], FILTER_NAMES[name] = fn, filter_names
        return fn

    return register


@register_selector("first", "bon_first")
def first(rs: Sequence[Response]) -> Response:
    """The first sample."""
    return rs[0]


@register_selector("mean", "bon_mean")
def mean(rs: Sequence[Response]) -> Response:
    """Not a selection: the mean correctness over all samples, carried by a copy of the first response."""
    return replace(rs[0], correct=sum(r.correct for r in rs) / len(rs))


def _vote(rs: Sequence[Response], weights: Sequence[float]) -> Response:
    """The first response of the answer class with the largest total weight; ties go to the earliest class."""
    totals: dict[int, float] = {}
    for r, w in zip(rs, weights, strict=True):
        if r.answer_class >= 0:
            totals[r.answer_class] = totals.get(r.answer_class, 0.0) + w
    if not totals:
        return rs[0]
    best = max(totals, key=lambda c: (totals[c], -c))
    return next(r for r in rs if r.answer_class == best)


@register_selector("maj", "bon_majority")
def majority(rs: Sequence[Response]) -> Response:
    """Majority vote over equivalence classes of extracted answers (``1/2`` and ``0.5`` vote together)."""
    return _vote(rs, [1.0] * len(rs))


@register_selector("oracle", "bon_oracle")
def oracle(rs: Sequence[Response]) -> Response:
    """pass@k: the first correct response, else the first one."""
    return next((r for r in rs if r.correct), rs[0])


def _score(r: Response, score: str) -> float:
    value = r.scores.get(score)
    if value is None or math.isnan(value):
        return -math.inf
    return value


@register_selector("argmax", "argmax_score", "swift")
def argmax(rs: Sequence[Response], score: str = "swift") -> Response:
    """The response with the highest value of the named score; ties go to the lowest index."""
    values = [_score(r, score) for r in rs]
    return rs[max(range(len(rs)), key=lambda i: (values[i], -i))]


@register_selector("vote", "weighted_vote")
def weighted_vote(
    rs: Sequence[Response], score: str = "swift", weight: str = "sigmoid"
) -> Response:
    """Vote with each response weighted by its score: ``sigmoid`` of it (SWIFT's R is a logit), its
    per-question ``minmax``-normalised value in [0, 1] (a constant set maps to 1.0), ``exp`` of it (a mean
    log-probability becomes a geometric-mean probability) or its ``value`` (a score >= 0, negatives count 0). A
    missing score weighs 0."""
    values = [_score(r, score) for r in rs]
    if weight == "minmax":
        return _vote(rs, minmax(values))
    if weight not in VOTE_WEIGHTS:
        raise ValueError(
            f"unknown vote weight {weight!r}: use 'minmax' or {', '.join(map(repr, VOTE_WEIGHTS))}"
        )
    fn = VOTE_WEIGHTS[weight]
    return _vote(rs, [0.0 if v == -math.inf else fn(v) for v in values])


VOTE_WEIGHTS: dict[str, Callable[[float], float]] = {
    "sigmoid": lambda v: 1.0 / (1.0 + math.exp(-max(min(v, 50.0), -50.0))),
    "exp": lambda v: math.exp(min(v, 50.0)),
    "value": lambda v: max(v, 0.0),
}
"""Per-response vote weights of a score value (``minmax`` is per question, in :func:`weighted_vote`)."""


@register_selector("top", "filter_vote")
def filter_vote(
    rs: Sequence[Response], score: str = "swift", eta: float = 10
) -> Response:
    """Filter, then vote (DeepConf's offline filtering): majority vote over the ``eta`` percent of the responses
    with the highest score, ``max(1, round(eta * k / 100))`` of the k (ties in score go to the lower index;
    a missing score ranks last)."""
    keep = max(1, math.floor(eta * len(rs) / 100 + 0.5))
    values = [_score(r, score) for r in rs]
    kept = sorted(sorted(range(len(rs)), key=lambda i: (-values[i], i))[:keep])
    return majority([rs[i] for i in kept])


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


@register_selector("combined", "combined_score")
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
