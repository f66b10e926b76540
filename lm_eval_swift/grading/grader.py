"""Grading a response: the answer it states (``extract``) compared with the gold (``compare``)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from lm_eval_swift.grading.compare import check_mode, is_equivalent
from lm_eval_swift.grading.extract import check_kind, extract_answer
from lm_eval_swift.grading.pool import max_workers


__all__ = ["grade", "grade_all"]


def grade(response: str, gold: str, kind: str, mode: str = "default") -> bool:
    """Whether the answer extracted from ``response`` is equivalent to ``gold`` (False when none is found)."""
    pred = extract_answer(response, kind)
    return pred is not None and is_equivalent(pred, gold, kind, mode=mode)


def grade_all(
    responses: Sequence[str], golds: Sequence[str], kind: str, mode: str = "default"
) -> list[bool]:
    """``grade`` for each (response, gold) pair, in order. The pairs are graded by ``2 x`` as many threads as
    there are grading workers, so every worker stays busy while the threads extract and compare in-process."""
    if len(responses) != len(golds):
        raise ValueError(f"{len(responses)} responses but {len(golds)} golds")
    check_kind(kind)
    check_mode(mode)
    if len(responses) < 2:
        return [grade(r, g, kind, mode) for r, g in zip(responses, golds, strict=True)]
    with ThreadPoolExecutor(
        min(len(responses), 2 * max_workers()), thread_name_prefix="grade"
    ) as pool:
        return list(pool.map(lambda r, g: grade(r, g, kind, mode), responses, golds))
