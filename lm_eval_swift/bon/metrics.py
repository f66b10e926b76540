"""Ranking diagnostics of a score against correctness: global AUROC and within-question AUROC."""

from __future__ import annotations

import math
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
