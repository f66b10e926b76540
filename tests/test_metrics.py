"""AUROC diagnostics against brute-force pair counting."""

from __future__ import annotations

import math
import random

from lm_eval_swift.bon.metrics import auroc, within_question_auroc


def brute(scores, labels):
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    return sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg) / (
        len(pos) * len(neg)
    )


def test_auroc_matches_pair_counting_with_ties():
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(2, 40)
        scores = [rng.choice([0.0, 0.5, 1.0, rng.random()]) for _ in range(n)]
        labels = [rng.random() < 0.4 for _ in range(n)]
        if any(labels) and not all(labels):
            assert math.isclose(auroc(scores, labels), brute(scores, labels))


def test_auroc_edge_cases():
    assert auroc([1, 2, 3], [1, 1, 1]) != auroc([1, 2, 3], [1, 1, 1])  # NaN
    assert auroc([0, 1], [0, 1]) == 1.0 and auroc([1, 0], [0, 1]) == 0.0


def test_within_question_ignores_cross_question_pairs():
    # globally the scores separate nothing, but within each question the correct answer wins
    groups = [([10.0, 9.0], [1, 0]), ([1.0, 0.0], [1, 0]), ([5.0, 5.0], [1, 1])]
    assert within_question_auroc(groups) == 1.0
    assert auroc([10, 9, 1, 0], [1, 0, 1, 0]) == 0.75
    assert math.isnan(within_question_auroc([([1.0], [1])]))
