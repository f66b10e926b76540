"""Whether two answers are equivalent: in-process on canonical forms and exact arithmetic, which settle most
comparisons; everything else with Math-Verify in a grading worker (``lm_eval_swift.grading.pool``).

Results are cached per pair of canonical answers, so the N samples of a question that repeat an answer are compared
once. Grading modes (``MODES``): ``"default"`` (Math-Verify's rules: decimals agree with exact answers to 6 places)
and ``"paper"`` (also any two numbers within 1e-4 relative difference, the SWIFT authors' grader's tolerance).
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache

from lm_eval_swift.grading import pool
from lm_eval_swift.grading.canonical import (
    DEGREE_SIGN,
    INNER_SPACE,
    SYMBOLIC,
    as_latex,
    cannot_be_a_number,
    canonical_form,
    gsm8k_number,
    label_rhs,
    mixed_number,
    plain_number,
    split_unit,
    time_of_day,
    tuple_items,
    vector_items,
)
from lm_eval_swift.grading.extract import check_kind
from lm_eval_swift.grading.numeric import Value, evaluate
from lm_eval_swift.grading.pool import GradingFailed


__all__ = ["MATCH_TYPES", "MODES", "check_mode", "is_equivalent", "verify_strings"]

MODES = {
    "default": 0.0,
    "paper": 1e-4,
}  # grading mode -> relative tolerance for numbers (see the README)
MATCH_TYPES = ("latex", "expr")


_PLAIN_VALUE = r"-?(?:\d+(?:\.\d+)?|\\frac\{\d+\}\{\d+\})"
_TRUNCATED = re.compile(
    rf"\(\s*({_PLAIN_VALUE})\s*\]|\\begin\{{pmatrix\}}\s*({_PLAIN_VALUE})\s*&"
)


def _truncated_reading(answer: str) -> str | None:
    """The number Math-Verify reads in a broken bracket or matrix around a plain number (``( 37 ]``,
    ``\\begin{pmatrix} 37 &`` -> ``37``)."""
    m = _TRUNCATED.fullmatch(answer)
    return None if m is None else m[1] or m[2]


_RATIO = re.compile(r"(\d+):(\d+)")
_DIGITS = re.compile(r"\d")


def _ratio(compact: str) -> Value | None:
    """``a:b`` as Math-Verify reads it, the number a/b."""
    m = _RATIO.fullmatch(compact)
    if m is None or int(m[2]) == 0:
        return None
    value = Fraction(int(m[1]), int(m[2]))
    return Value(value, float(value))


def _rounded_verdict(
    x: Fraction | tuple[Fraction, str], y: Fraction | tuple[Fraction, str]
) -> bool | None:
    """Math-Verify's rule for a decimal number (given as ``(value, text)``) against a fraction or another decimal:
    equal when both round to the same 6 decimal places. None at a rounding tie, or for a decimal with more
    digits than a float holds (its float, not its digits, is what gets rounded)."""
    rounded = []
    for v in (x, y):
        if isinstance(v, tuple):
            v, text = v
            if len(_DIGITS.findall(text)) > 15:
                return None
        scaled = v * 10**6
        if scaled.denominator == 2:
            return None
        rounded.append(round(scaled))
    return rounded[0] == rounded[1]


def _percent_differs(number: Value | None, other: str) -> bool:
    """``other`` is ``X\\%`` and ``number`` is far from both X and X/100 (Math-Verify may take either)."""
    if number is None or not other.endswith("\\%"):
        return False
    x = evaluate(other[:-2])
    return x is not None and all(
        _numeric_verdict(number, v, 0.0) is False
        for v in (
            x,
            Value(
                x.exact / 100 if x.exact is not None else None,
                x.approx / 100,
                x.decimal,
            ),
        )
    )


# Rational points at which two expressions in one-letter variables are evaluated exactly
_POINTS = [
    {
        c: Fraction(37 + 7 * j + 29 * k, 53 + 2 * k) * (-1) ** (j + k)
        for j, c in enumerate(string.ascii_lowercase)
    }
    for k in range(3)
]


def _differ_somewhere(pred: str, gold: str, p: str, g: str) -> bool:
    """Both are expressions in one-letter variables (``x^2 - 10x + 41``, ``6x``) whose exact rational values
    differ at some rational point: no identity, so Math-Verify cannot equate them."""
    if not (SYMBOLIC.fullmatch(pred) and SYMBOLIC.fullmatch(gold)):
        return False
    for point in _POINTS:
        a, b = evaluate(p, point), evaluate(g, point)
        if a is None or b is None:
            return False
        if a.exact is not None and b.exact is not None and a.exact != b.exact:
            return True
    return False


def _numeric_verdict(p: Value, g: Value, rel_tol: float) -> bool | None:
    """True/False when the two values settle it; None when Math-Verify must decide (close values written
    inexactly, whose rounding rules it owns). ``rel_tol`` > 0 also accepts a relative difference up to it."""
    if p.exact is not None and g.exact is not None:
        if p.exact == g.exact:
            return True
        if not (p.decimal or g.decimal):
            return False
    a, b = p.approx, g.approx
    if _within(a, b, rel_tol):
        return True
    if math.isinf(a) or math.isinf(b):
        return None if a == b else False
    diff = abs(a - b)
    return False if diff > 1e-5 and diff > 1e-9 * max(abs(a), abs(b)) else None


def _verify(
    gold: str,
    pred: str,
    match_types: Sequence[str],
    precision: int,
    strict: bool,
    allow_set_relation_comp: bool,
    timeout: float,
    rel_tol: float = 0.0,
    identities: bool = False,
) -> bool:
    """Ask a grading worker (``rel_tol``, ``identities``: see ``_grading_worker.verify_now``); raises
    GradingFailed on timeout."""
    if (
        not timeout > 0
    ):  # also NaN: nothing can finish, and no worker should be killed for it
        raise GradingFailed("no time to grade")
    request = {
        "gold": gold,
        "pred": pred,
        "match_types": list(match_types),
        "precision": precision,
        "strict": strict,
        "allow_set_relation_comp": allow_set_relation_comp,
        "rel_tol": rel_tol,
        "identities": identities,
    }
    return pool.ask(json.dumps(request).encode() + b"\n", timeout)


def verify_strings(
    gold: str,
    pred: str,
    match_types: Sequence[str] = MATCH_TYPES,
    precision: int = 6,
    strict: bool = True,
    allow_set_relation_comp: bool = False,
    timeout: float | None = None,
) -> bool:
    """Math-Verify on two texts, as its tests' ``compare_strings`` does (gold first; ``precision`` is
    ``float_rounding``), plus exact comparison of exact numbers. Runs in a grading worker; False on timeout.
    """
    unknown = set(match_types) - set(MATCH_TYPES)
    if unknown:
        raise ValueError(f"unknown match types {sorted(unknown)}; use {MATCH_TYPES}")
    try:
        return _verify(
            gold,
            pred,
            match_types,
            precision,
            strict,
            allow_set_relation_comp,
            _timeout(timeout),
        )
    except GradingFailed:
        return False


def _timeout(timeout: float | None) -> float:
    return (
        pool.env_number(pool.TIMEOUT_ENV, pool.DEFAULT_TIMEOUT)
        if timeout is None
        else timeout
    )


def check_mode(mode: str) -> float:
    """The relative tolerance of grading ``mode``."""
    try:
        return MODES[mode]
    except KeyError:
        raise ValueError(
            f"grading mode must be one of {tuple(MODES)}, not {mode!r}"
        ) from None


@lru_cache(maxsize=65536)
def _equivalent(
    pred: str, gold: str, kind: str, timeout: float, mode: str = "default"
) -> bool:
    """Equivalence of two canonical answers (see ``canonical_form``); cached, so the N samples of a question that
    repeat an answer, in any of its canonical spellings, are compared once."""
    p, g = INNER_SPACE.sub("", pred), INNER_SPACE.sub("", gold)
    if not p or not g:
        return False
    if p == g:
        return True
    rel_tol = MODES[mode]
    if kind == "gsm8k":
        a, b = gsm8k_number(p), gsm8k_number(g)
        return (
            a is not None
            and b is not None
            and (a == b or _within(float(a), float(b), rel_tol))
        )
    if _math_verdict(pred, gold, p, g, timeout, mode):
        return True
    if (
        rel_tol
    ):  # paper: a number within the tolerance of the other, whatever Math-Verify said
        a, b = _value(pred, p), _value(gold, g)
        return a is not None and b is not None and _within(a.approx, b.approx, rel_tol)
    return False


def _value(answer: str, compact: str) -> Value | None:
    """The number an answer is, read in-process (mixed numbers, ratios, arithmetic), else None."""
    if (
        "," in compact and plain_number(compact) is not None
    ):  # 1,000: thousands separators
        compact = compact.replace(",", "")
    return (
        mixed_number(answer)
        or _ratio(compact)
        or evaluate(DEGREE_SIGN.sub("", compact))
    )


def _within(a: float, b: float, rel_tol: float) -> bool:
    return (
        rel_tol > 0
        and math.isfinite(a)
        and math.isfinite(b)
        and math.isclose(a, b, rel_tol=rel_tol)
    )


def _math_verdict(
    pred: str, gold: str, p: str, g: str, timeout: float, mode: str
) -> bool:
    """``_equivalent`` for MATH answers under the default rules (``p``, ``g``: the answers without spaces)."""
    rel_tol = MODES[mode]
    verdict = _structural_verdict(pred, gold, "math", timeout, mode)
    if verdict is not None:
        return verdict
    if (
        "\\ldots" in p or "\\ldots" in g
    ):  # sequences: Math-Verify reads "1, 2, \ldots, n" as 2
        return False
    for broken, other in ((pred, g), (gold, p)):
        reading = _truncated_reading(broken)
        value = evaluate(INNER_SPACE.sub("", reading)) if reading is not None else None
        other_value = evaluate(other) if value is not None else None
        verdict = (
            _numeric_verdict(value, other_value, rel_tol)
            if other_value is not None
            else None
        )
        if verdict is not None:
            return verdict
    mixed_p, mixed_g = (
        mixed_number(pred),
        mixed_number(gold),
    )  # before "2 3/4" is compacted to 23/4
    x, y = plain_number(p), plain_number(g)
    if x is not None and y is not None and mixed_p is None and mixed_g is None:
        if x[0] == y[0]:
            return True
        if x[1] and y[1]:
            return False
        verdict = _rounded_verdict(
            x[0] if x[1] else (x[0], p), y[0] if y[1] else (y[0], g)
        )
        if verdict is not None:
            return verdict
    a, b = _value(pred, p), _value(gold, g)
    if a is not None and b is not None:
        verdict = _numeric_verdict(a, b, rel_tol)
        if verdict is not None:
            return verdict
    elif (
        (a is not None and cannot_be_a_number(gold))
        or (b is not None and cannot_be_a_number(pred))
        or _percent_differs(a, g)
        or _percent_differs(b, p)
        or (a is None and b is None and _differ_somewhere(pred, gold, p, g))
    ):
        return False
    return _verify(
        as_latex(gold),
        as_latex(pred),
        MATCH_TYPES,
        6,
        True,
        False,
        timeout,
        rel_tol,
        True,
    )


def _structural_verdict(
    pred: str, gold: str, kind: str, timeout: float, mode: str
) -> bool | None:
    """Verdicts settled by an answer's shape: units, times of day, labelled equations, vectors against tuples;
    None when no shape applies."""
    tp, tg = time_of_day(pred), time_of_day(gold)
    if tp is not None and tg is not None and (tp[1] or tg[1]):
        return tp[0] == tg[0]
    (p, unit_p), (g, unit_g) = split_unit(pred), split_unit(gold)
    if unit_p and unit_g and unit_p != unit_g:
        return False  # 5 cm is not 5 mm
    if unit_p or unit_g:
        return _equivalent(p, g, kind, timeout, mode)
    rp, rg = label_rhs(pred), label_rhs(gold)
    if (
        (rp is not None or rg is not None)
        and (rp is not None or "=" not in pred)
        and (rg is not None or "=" not in gold)
    ):
        return _equivalent(
            rp or pred, rg or gold, kind, timeout, mode
        )  # y = 5t - 1 and g(t) = 5t - 1 name 5t - 1
    vp, vg = vector_items(pred), vector_items(gold)
    tp_items, tg_items = tuple_items(pred), tuple_items(gold)
    for vector, items in ((vp, tg_items), (tp_items, vg)):
        if vector is not None and items is not None:
            return len(vector) == len(items) and all(
                _equivalent(canonical_form(a), canonical_form(b), kind, timeout, mode)
                for a, b in zip(vector, items, strict=True)
            )
    return None


def is_equivalent(
    pred: str, gold: str, kind: str, timeout: float | None = None, mode: str = "default"
) -> bool:
    """Whether answer ``pred`` equals answer ``gold`` (``kind`` ``"math"`` or ``"gsm8k"``) under grading ``mode``
    (``"default"``, or ``"paper"``: also a relative difference up to 1e-4, as the SWIFT authors' grader).

    Never raises for any text; gives up (False) after ``timeout`` seconds of grading (None:
    ``LM_EVAL_SWIFT_GRADE_TIMEOUT``, default 2). Not counted: starting a grading worker (once, about half a
    second) and waiting for one that other threads keep busy. Thread- and process-safe; results are cached.
    """
    check_kind(kind)
    check_mode(mode)
    try:
        return _equivalent(
            canonical_form(pred), canonical_form(gold), kind, _timeout(timeout), mode
        )
    except Exception:  # noqa: BLE001 - timeouts, lost workers and odd inputs all grade as "not equal"
        return False
