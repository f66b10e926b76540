"""Grading worker: runs Math-Verify's ``parse``/``verify`` in its own process.

``lm_eval_swift.grading`` starts ``python -m lm_eval_swift.grading.worker`` and talks to it over pipes: the
worker prints ``ready``, then answers each JSON request line (the keyword arguments of :func:`verify_now`) with
``1`` or ``0``. Math-Verify's own SIGALRM timeouts are switched off here; the parent enforces the time limit: it
sends SIGUSR1 (the comparison is abandoned and answered ``0``), and kills this process when no answer follows.
"""

from __future__ import annotations

import cmath
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from itertools import product

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify.grader import is_atomic_or_pct_atomic
from sympy import Expr, Float, Number


# The extraction targets of Math-Verify's test helper ``compare_strings``: a boxed answer has top priority.
TARGETS = {
    "latex": LatexExtractionConfig(boxed_match_priority=0),
    "expr": ExprExtractionConfig(),
}
_RELATIVE_TOLERANCE = 1e-20
_POINTS = [
    (0.3719, 1.2183, 2.0377),
    (-0.8413, 0.6127, -1.5298),
    (1.7311, -2.2459, 0.4421),
    (-2.6533, -0.2917, 3.1187),
    (0.9377, 2.7109, -0.7741),
]  # values for up to 3 symbols (repeated beyond)


def _exactly_different(gold: object, pred: object) -> bool:
    """True when both sides are exact numbers (no floats, no symbols) that are not equal.

    Math-Verify compares numbers that are not plain (percent) numbers with ``(a - b).evalf(chop=True) == 0``,
    which calls any two tiny numbers equal (``1/2^{99}`` and ``1/2^{98}``); this check vetoes such matches.
    """
    if not all(
        isinstance(x, Expr) and x.is_number and not x.has(Float) for x in (gold, pred)
    ):
        return False
    if is_atomic_or_pct_atomic(gold, Number) or is_atomic_or_pct_atomic(pred, Number):
        return (
            False  # Math-Verify compared these exactly already (and lets 28\% equal 28)
        )
    try:
        diff = (gold - pred).doit()
        if diff.is_Rational:
            return diff != 0
        scale = max(abs(gold.evalf(30)), abs(pred.evalf(30)))
        return bool(abs(diff.evalf(30)) > scale * _RELATIVE_TOLERANCE)
    except Exception:  # noqa: BLE001 - undecidable here: keep Math-Verify's verdict
        return False


def verify_now(
    gold: str,
    pred: str,
    match_types: Sequence[str],
    precision: int,
    strict: bool,
    allow_set_relation_comp: bool,
    rel_tol: float = 0.0,
    identities: bool = False,
) -> bool:
    """Math-Verify's ``compare_strings``: parse both (gold first); true when any extracted pair verifies,
    with exact numbers compared exactly. ``rel_tol`` > 0 also accepts numbers within that relative difference;
    ``identities`` also accepts expressions that agree at random points (``\\cos(\\frac{\\pi}{2} - x)``, ``\\sin x``)."""
    targets = tuple(TARGETS[m] for m in match_types)
    gold_items = parse(gold, targets, parsing_timeout=None)
    pred_items = parse(pred, targets, parsing_timeout=None)
    if any(
        verify(
            g,
            p,
            float_rounding=precision,
            strict=strict,
            allow_set_relation_comp=allow_set_relation_comp,
            timeout_seconds=None,
        )
        and not _exactly_different(g, p)
        for g, p in product(gold_items, pred_items)
    ):
        return True
    g, p = (gold_items[0], pred_items[0]) if gold_items and pred_items else (None, None)
    return (rel_tol > 0 and _close(g, p, rel_tol)) or (
        identities and _same_function(g, p)
    )


def _close(gold: object, pred: object, rel_tol: float) -> bool:
    """Both are numbers (no symbols) within ``rel_tol`` relative difference."""
    if not all(isinstance(x, Expr) and x.is_number for x in (gold, pred)):
        return False
    try:
        a, b = complex(gold.evalf(20)), complex(pred.evalf(20))
    except (TypeError, ValueError):
        return False
    return abs(a - b) <= rel_tol * max(abs(a), abs(b))


def _same_function(gold: object, pred: object) -> bool:
    """Both are expressions in the same symbols whose values agree (to 1e-9 relative) at a few fixed points,
    positive and negative, and are finite at some; an identity that sympy's simplification missed."""
    if (
        not all(isinstance(x, Expr) and not x.is_number for x in (gold, pred))
        or gold.free_symbols != pred.free_symbols
    ):
        return False
    symbols = sorted(gold.free_symbols, key=str)
    finite = 0
    for point in _POINTS:
        subs = {
            s: point[i % len(point)] + 0.1 * (i // len(point))
            for i, s in enumerate(symbols)
        }
        try:
            a, b = (
                complex(gold.evalf(20, subs=subs)),
                complex(pred.evalf(20, subs=subs)),
            )
        except (TypeError, ValueError, ZeroDivisionError):
            continue  # a pole or a non-number (e.g. zoo) at this point
        if not (cmath.isfinite(a) and cmath.isfinite(b)):
            continue
        if abs(a - b) > 1e-9 * max(1.0, abs(a), abs(b)):
            return False
        finite += 1
    return finite >= 3


# One comparison of each common shape: sympy and Math-Verify set up each kind of object on first use (0.1-0.5 s
# apiece), which belongs to the worker's start, not to the first comparison that needs it (nor to its time limit).
_WARM_UP = [
    (r"\boxed{\frac{1}{2}}", r"\boxed{0.5}"),
    (r"\boxed{\begin{pmatrix}1\\2\end{pmatrix}}", r"\boxed{(1,2)}"),
    (r"\boxed{[0,1)}", r"\boxed{x^2+1}"),
    (r"\boxed{\text{(A)}}", r"\boxed{A}"),
    (r"\boxed{x=1, y=2}", r"\boxed{3\sqrt{2}}"),
    (r"\boxed{\{1,2\}}", r"\boxed{(-\infty, 3]\cup[4,5)}"),
    (r"\boxed{2+3i}", r"\boxed{\sin x}"),
    (r"\boxed{45^\circ}", r"\boxed{10\%}"),
    (r"\boxed{\cos(\frac{\pi}{2} - x)}", r"\boxed{\sin x}"),
    (r"\boxed{y = 2x + 3}", r"\boxed{\frac{x+1}{x-1}}"),
    (r"\boxed{x^2 + y^2 = 13}", r"\boxed{x=x^2-10x+41}"),
    (r"\boxed{(-\infty,-2)\cup (-2,3)}", r"\boxed{25\%}"),
    (
        r"\boxed{( \frac{7}{45}, \frac{4}{45} )}",
        r"\boxed{\begin{pmatrix} ( \frac{7}{45}, \frac{4}{45} ) &}",
    ),
    (r"\boxed{6x-5}", r"\boxed{( 6x-5 ]}"),
    (r"\boxed{8\pi}", r"(2\sqrt{2})^2\pi = \boxed{}"),
]


def _warm_up() -> None:
    for gold, pred in _WARM_UP:
        verify_now(gold, pred, list(TARGETS), 6, True, False, 1e-4, True)


def _exit_with_parent() -> None:
    """Exit once the parent is gone (it may die without closing our stdin, e.g. a terminated pool worker)."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


class _Abandoned(BaseException):
    """Raised in the comparison under way when the parent gives up on it (a BaseException: libraries' ``except
    Exception`` clauses must not swallow it)."""


_busy = False  # a comparison is under way (only then does SIGUSR1 abandon it)


def _abandon(signum: int, frame: object) -> None:
    if _busy:
        raise _Abandoned


def _serve(line: bytes) -> bool:
    global _busy
    _busy = True
    try:
        return verify_now(**json.loads(line))
    except (Exception, _Abandoned):  # noqa: BLE001 - a grading failure is a "not equal", never a dead worker
        return False
    finally:
        _busy = False


def main() -> None:
    """Serve requests from stdin until EOF. SIGUSR1 abandons the comparison under way (it is answered ``0``), so
    a comparison past its time limit costs the worker nothing when the Python code it runs can be interrupted."""
    # Keep the protocol channel private: anything a library prints goes to stderr.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    logging.getLogger("math_verify").setLevel(
        logging.ERROR
    )  # "timeout is disabled" warnings: we enforce it
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    signal.signal(signal.SIGUSR1, _abandon)
    _warm_up()
    replies.write(b"ready\n")
    for line in sys.stdin.buffer:
        replies.write(b"1\n" if _serve(line) else b"0\n")


if __name__ == "__main__":
    main()
