"""Grading a response: the answer it states (``extract``) compared with the gold (``compare``)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from lm_eval_swift.grading.compare import check_mode, is_equivalent
from lm_eval_swift.grading.extract import check_kind, extract_answer, is_number
from lm_eval_swift.grading.pool import max_workers


__all__ = ["grade", "grade_all"]


def grade(
    response: str, gold: str, kind: str, mode: str = "default", truncated: bool = False
) -> bool:
    """Whether the answer ``response`` states is equivalent to ``gold`` (False when it states none, and for GSM8K
    when it is not a number). ``truncated``: the response was cut off at the token limit (see ``extract_answer``).
    """
    pred = extract_answer(response, kind, truncated)
    if pred is None or (kind == "gsm8k" and not is_number(pred)):
        return False
    return is_equivalent(pred, gold, kind, mode=mode)


def grade_all(
    responses: Sequence[str],
    golds: Sequence[str],
    kind: str,
    mode: str = "default",
    truncated: Sequence[bool] | None = None,
) -> list[bool]:
    """``grade`` for each (response, gold[, truncated]) triple, in order (``truncated`` None: none was cut off). The
    triples are graded by ``2 x`` as many threads as there are grading workers, so every worker stays busy while the
    threads extract and compare in-process."""
    if len(responses) != len(golds):
        raise ValueError(f"{len(responses)} responses but {len(golds)} golds")
    cut = (
        [False] * len(responses) if truncated is None else [bool(c) for c in truncated]
    )
    if len(cut) != len(responses):
        raise ValueError(f"{len(responses)} responses but {len(cut)} truncation flags")
    check_kind(kind)
    check_mode(mode)
    triples = list(zip(responses, golds, cut, strict=True))
    if len(triples) < 2:
        return [grade(r, g, kind, mode, c) for r, g, c in triples]
    with ThreadPoolExecutor(
        min(len(triples), 2 * max_workers()), thread_name_prefix="grade"
    ) as pool:
        return list(pool.map(lambda t: grade(t[0], t[1], kind, mode, t[2]), triples))
