"""Ranking diagnostics of a score against correctness (global AUROC, within-question AUROC), and two selectors
compared over the same questions: the paired bootstrap interval of their difference and the exact McNemar test."""

from __future__ import annotations

import functools
import math
import random
from array import array
from collections.abc import Sequence


def auroc(scores: Sequence[float], labels: Sequence[float]) -> float:
    """Probability that a random positive outscores a random negative (ties count 1/2); NaN without both classes.

    O(n log n) by ranking (average ranks for ties).
    """
    pairs = sorted(zip(scores, labels, strict=True), key=lambda p: p[0])
    n_pos = sum(1 for _, y in pairs if y > 0.5)
    n_neg = len(pairs) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        avg_rank = (i + 1 + j) / 2  # ranks i+1..j share their mean
        rank_sum += avg_rank * sum(1 for _, y in pairs[i:j] if y > 0.5)
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def within_question_auroc(
    groups: Sequence[tuple[Sequence[float], Sequence[float]]],
) -> float:
    """Over all pairs (a correct, an incorrect response to the SAME question), the share where the correct one
    scores higher (ties 1/2). ``groups``: one (scores, labels) per question. NaN when no question has a pair."""
    wins = pairs = 0.0
    for scores, labels in groups:
        pos = [s for s, y in zip(scores, labels, strict=True) if y > 0.5]
        neg = [s for s, y in zip(scores, labels, strict=True) if y <= 0.5]
        for p in pos:
            for q in neg:
                wins += 1.0 if p > q else 0.5 if p == q else 0.0
        pairs += len(pos) * len(neg)
    return wins / pairs if pairs else math.nan


MIN_DISCORDANT = (
    10  # fewer discordant questions than this: too few to judge a paired difference
)


def mcnemar(a: Sequence[float], b: Sequence[float]) -> tuple[int, int, float]:
    """Exact McNemar test of two 0/1 outcomes paired over the same questions: ``(only_a, only_b, p)``, the counts of
    questions only ``a`` / only ``b`` gets right (the discordant ones) and the two-sided exact binomial p-value of
    ``only_a`` among them at 1/2 (1.0 without discordant questions)."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} outcomes against {len(b)}")
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x > 0.5 >= y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y > 0.5 >= x)
    n = only_a + only_b
    if n == 0:
        return 0, 0, 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1))
    return only_a, only_b, min(1.0, 2 * tail / 2**n)


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean(a - b), lo, hi)``: the mean difference of two per-question outcomes and its 95% percentile interval
    over ``resamples`` resamplings of the questions with replacement (the same draws for every pair of the same
    length, ``resamples`` and ``seed``, so the intervals of several rows are comparable)."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} outcomes against {len(b)}")
    if not a:
        raise ValueError("a paired bootstrap needs at least one question")
    n = len(a)
    diff = [x - y for x, y in zip(a, b, strict=True)]
    means = sorted(
        sum(map(diff.__getitem__, draw)) / n
        for draw in _draws(n, max(resamples, 1), seed)
    )
    lo, hi = (means[round(q * (len(means) - 1))] for q in (0.025, 0.975))
    return sum(diff) / n, lo, hi


@functools.lru_cache(maxsize=4)
def _draws(n: int, resamples: int, seed: int) -> tuple[array, ...]:
    """``resamples`` draws of ``n`` question indices with replacement (kept: every row of a table reuses them)."""
    rng = random.Random(seed)
    return tuple(
        array("I", (rng.randrange(n) for _ in range(n))) for _ in range(resamples)
    )
