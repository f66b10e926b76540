"""Answer extraction and equivalence for MATH and GSM8K, built on Math-Verify.

``extract_answer`` pulls the final answer out of a response (last ``\\boxed{}``/``\\fbox{}``, else the last
``#### N`` / ``The answer is N`` / ``Final Answer: ...``; for GSM8K, a number, falling back to the last number).
``is_equivalent`` compares two answers: first in-process, on canonical spellings (stray characters, braces,
units, mixed numbers, times of day, labelled equations, vectors as lists) and exact arithmetic
(``lm_eval_swift.grading.numeric``), which settle most comparisons; everything else with Math-Verify in a persistent
worker process (``lm_eval_swift.grading.worker``). A comparison past its time limit is abandoned (SIGUSR1), and
its worker killed and lazily restarted when it does not give up. That works off the main thread and inside
daemonic ``multiprocessing`` workers, where Math-Verify's own SIGALRM timeouts cannot. ``grade`` is extraction
followed by comparison; ``grade_all`` grades a batch with all workers busy. Results are cached per pair of
canonical answers, so the N samples of a question that repeat an answer are compared once.

Grading modes (``MODES``): ``"default"`` (Math-Verify's rules: decimals agree with exact answers to 6 places) and
``"paper"`` (also any two numbers within 1e-4 relative difference, the SWIFT authors' grader's tolerance).

Settings (environment): ``LM_EVAL_SWIFT_GRADE_TIMEOUT`` (seconds per comparison, default 2) and
``LM_EVAL_SWIFT_GRADE_WORKERS`` (worker processes, default ``min(4, cpu_count)``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import re
import select
import signal
import string
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from functools import lru_cache
from itertools import chain
from pathlib import Path

from lm_eval_swift.grading.numeric import Value, evaluate


__all__ = ["extract_answer", "grade", "grade_all", "is_equivalent", "verify_strings"]

logger = logging.getLogger(__name__)

KINDS = ("math", "gsm8k")
TIMEOUT_ENV = "LM_EVAL_SWIFT_GRADE_TIMEOUT"
WORKERS_ENV = "LM_EVAL_SWIFT_GRADE_WORKERS"
DEFAULT_TIMEOUT = 2.0
MODES = {
    "default": 0.0,
    "paper": 1e-4,
}  # grading mode -> relative tolerance for numbers (see the README)
MATCH_TYPES = ("latex", "expr")
_START_TIMEOUT = (
    60.0  # a worker's one-off start (importing sympy) is not charged to any comparison
)
_ABANDON_GRACE = 0.25  # seconds a worker past its time limit has to give up its comparison before it is killed
_SEGMENT_CHARS = 512  # how far past "The answer is" an answer may reach

# ---------------------------------------------------------------------------------------------- extraction

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*")
_BRACE_OR_ESCAPE = re.compile(r"\\.|[{}]", re.DOTALL)
_BOX_TOKEN = re.compile(r"[^\s${}]{1,64}")  # \boxed 5
_TEXT_ANCHOR = re.compile(r"####|\banswer(?:\s*:|\s+is\b)", re.IGNORECASE)
_MATH_SPAN = re.compile(
    r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL
)
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
_NUMBER = re.compile(
    r"(-?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+))"
    r"(?:[eE]([-+]?\d+)(?![\d.])|\s*(?:\\times|\\cdot|\u00d7)\s*10\s*\^\s*\{?\s*([-+]?\d+)\s*\}?)?"
)  # 1,234.5; 2.5e-3; 2.5\times 10^{-3}


def _closing_braces(text: str) -> dict[int, int]:
    """Index of each balanced ``{`` -> index of its ``}``; escaped braces (``\\{``) are not structure."""
    stack: list[int] = []
    pairs: dict[int, int] = {}
    for m in _BRACE_OR_ESCAPE.finditer(text):
        if m.group() == "{":
            stack.append(m.start())
        elif m.group() == "}" and stack:
            pairs[stack.pop()] = m.start()
    return pairs


def _matching_brace(text: str, start: int) -> int | None:
    """Index of the ``}`` that closes the ``{`` at ``start`` (None when it is never closed)."""
    depth = 0
    for m in _BRACE_OR_ESCAPE.finditer(text, start):
        if m.group() == "{":
            depth += 1
        elif m.group() == "}":
            depth -= 1
            if depth == 0:
                return m.start()
    return None


def _boxed_answers(text: str) -> Iterator[str]:
    """Contents of ``\\boxed{...}``, ``\\boxed X`` and ``\\fbox{...}``, last first; unbalanced ones are skipped."""
    boxes = list(_BOX.finditer(text))
    closing = None
    for i, m in enumerate(reversed(boxes)):
        start = m.end()
        if text.startswith("{", start):
            if (
                i == 0
            ):  # usually the answer: find its brace alone, without mapping the whole text
                end = _matching_brace(text, start)
            else:
                closing = closing if closing is not None else _closing_braces(text)
                end = closing.get(start)
            answer = text[start + 1 : end] if end is not None else ""
        else:
            token = _BOX_TOKEN.match(text, start)
            answer = token.group().rstrip(".,;") if token else ""
        if answer.strip():
            yield answer.strip()


def _anchored_answers(text: str) -> Iterator[str]:
    """What follows ``####``, ``answer is`` or ``answer:`` (up to the end of the sentence), last first."""
    anchors = list(_TEXT_ANCHOR.finditer(text))
    starts = [m.start() for m in anchors] + [
        len(text)
    ]  # a segment stops at the next anchor: linear time
    for m, end in zip(reversed(anchors), reversed(starts[1:]), strict=True):
        segment = text[m.end() : min(end, m.end() + _SEGMENT_CHARS)].lstrip(" \t\r\n:*")
        span = _MATH_SPAN.match(segment)
        if span:
            answer = next(g for g in span.groups() if g is not None)
        else:
            answer = _SENTENCE_END.split(segment.split("\n", 1)[0], maxsplit=1)[0]
        answer = answer.strip(" \t*").rstrip(".").strip()
        if answer:
            yield answer


def _numbers(text: str) -> list[str]:
    """The numbers in ``text`` without ``$`` or thousands separators: ``"$1,234.50 or 7"`` -> ``["1234.50", "7"]``;
    scientific notation is kept as ``e`` notation (``"2.5\\times10^{-3}"`` -> ``["2.5e-3"]``)."""
    text = text.replace("{,}", ",").replace("\\!", "")
    return [
        n.replace(",", "") + (f"e{e1 or e2}" if e1 or e2 else "")
        for n, e1, e2 in _NUMBER.findall(text)
    ]


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")


def extract_answer(response: str, kind: str) -> str | None:
    """The final answer in ``response`` (``kind`` is ``"math"`` or ``"gsm8k"``), or None when there is none.

    Boxed answers win over textual anchors; GSM8K answers are reduced to a plain number and fall back to the
    last number in the text. Linear time in the length of ``response``.
    """
    _check_kind(kind)
    candidates = chain(_boxed_answers(response), _anchored_answers(response))
    if kind == "math":
        return next(candidates, None)
    for candidate in candidates:
        numbers = _numbers(candidate)
        if numbers:
            return numbers[0]
    numbers = _numbers(response)
    return numbers[-1] if numbers else None


# ---------------------------------------------------------------------------------------------- normalisation

_REWRITES = [
    (
        re.compile(r"\\(?:left|right|displaystyle)(?![A-Za-z])|(?<!\\)\\\$"),
        "",
    ),  # sizing; \$ is a currency sign
    (
        re.compile(r"(?<!\\)\\[,!;: ]"),
        " ",
    ),  # spacing commands (not a line break "\\" before a space)
    (re.compile(r"\\[dtc]frac(?![A-Za-z])"), r"\\frac"),
    (re.compile(r"\{\s*,\s*\}"), ","),  # 12{,}000 and 12{, }000
    (
        re.compile(r"\\sqrt\(([^()]*)\)"),
        r"\\sqrt{\1}",
    ),  # \sqrt(2) means \sqrt{2}, not \sqrt{} times (2)
    (re.compile(r"\\(?:[lc]?dots|dotsc)(?![A-Za-z])"), r"\\ldots "),
]
_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
_MATH_MODE = re.compile(r"(?<!\\)\$|\\[(\[]|\\boxed|\\fbox|\n")
_INNER_SPACE = re.compile(
    r"(?<![A-Za-z])\s+|\s+(?![A-Za-z])"
)  # keeps the space in "\pi r"
_PLAIN_NUMBER = re.compile(
    r"(?P<sign>-?)\$?(?:(?P<decimal>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
    r"|\\frac\{(?P<num>\d+)\}\{(?P<den>\d+)\}|\\frac(?P<num1>\d)(?P<den1>\d)|(?P<num2>\d+)/(?P<den2>\d+))"
)


def _clean(answer: str) -> str:
    """Strip math delimiters, sizing/spacing commands and trailing periods; unify fraction and ellipsis spellings."""
    answer = answer.strip()
    for rule, replacement in _REWRITES:
        answer = rule.sub(replacement, answer)
    answer = answer.strip().rstrip(".").strip()
    for left, right in _DELIMITERS:
        inner = answer[len(left) : -len(right)]
        if (
            answer.startswith(left)
            and answer.endswith(right)
            and inner
            and not _UNESCAPED_DOLLAR.search(inner)
        ):
            return inner.strip().rstrip(".").strip()
    return answer


def _plain_number(compact: str) -> tuple[Fraction, bool] | None:
    """``(value, exact)`` for plain integers, decimals and integer fractions; exact means no decimal point."""
    m = _PLAIN_NUMBER.fullmatch(compact)
    if m is None:
        return None
    try:
        if m["decimal"]:
            value, exact = (
                Fraction(m["decimal"].replace(",", "")),
                "." not in m["decimal"],
            )
        else:
            num, den = (
                m[g]
                for g in ("num", "den", "num1", "den1", "num2", "den2")
                if m[g] is not None
            )
            value, exact = Fraction(int(num), int(den)), True
    except (ValueError, ZeroDivisionError):  # over int's digit limit, or x/0
        return None
    return (-value if m["sign"] else value), exact


def _gsm8k_number(compact: str) -> Fraction | None:
    """A plain number, else the first number in the text ("18dollars" -> 18)."""
    plain = _plain_number(compact)
    if plain is not None:
        return plain[0]
    numbers = _numbers(compact)
    value = evaluate(numbers[0]) if numbers else None
    return (
        value.exact if value is not None else None
    )  # None also for numbers too large to hold (1e1000000)


def _as_latex(answer: str) -> str:
    """A bare answer is boxed so Math-Verify parses all of it (not just its last number); text is left alone."""
    return answer if _MATH_MODE.search(answer) else f"\\boxed{{{answer}}}"


_STRAY_TAIL = re.compile(r"\s*\\+$")  # "42\": a backslash left at the end
_EMPTY_SCRIPT = re.compile(r"[\^_]\{\s*\}")
_LEADING_PLUS = re.compile(r"^\+\s*(?=[\d.\\({])")
_TRIG = re.compile(r"\\(?:sin|cos|tan|cot|sec|csc)(?![A-Za-z])")
_DEGREES = re.compile(r"(\d+(?:\.\d+)?)\s*\^\s*(?:\{\s*\\circ\s*\}|\\circ)")
_DEGREE_SIGN = re.compile(r"\^\{?\\circ\}?$")  # Math-Verify reads 54^\circ as 54
_SHORT_FORMS = 300  # units, times and labels are looked for in answers up to this long


def _strip_outer_braces(answer: str) -> str:
    """``{{5}}`` -> ``5`` and ``((1, 2))`` -> ``(1, 2)``: braces around the whole answer group nothing, nor do
    parentheses around a parenthesised answer."""
    if answer.startswith("((") and answer.endswith("))"):
        closing = _closing_parentheses(answer)
        start, end = 0, len(answer)
        while (
            answer[start + 1] == "("
            and closing.get(start) == end - 1
            and closing.get(start + 1) == end - 2
        ):
            start, end = start + 1, end - 1
        answer = answer[start:end]
    start, end, closing = 0, len(answer), None
    while end - start >= 2 and answer[start] == "{" and answer[end - 1] == "}":
        closing = closing or _closing_braces(answer)
        if closing.get(start) != end - 1:
            break
        start, end = start + 1, end - 1
        while start < end and answer[start].isspace():
            start += 1
        while end > start and answer[end - 1].isspace():
            end -= 1
    return answer[start:end]


def _closing_parentheses(text: str) -> dict[int, int]:
    """Index of each balanced ``(`` -> index of its ``)``."""
    stack: list[int] = []
    pairs: dict[int, int] = {}
    for i, ch in enumerate(text):
        if ch == "(":
            stack.append(i)
        elif ch == ")" and stack:
            pairs[stack.pop()] = i
    return pairs


@lru_cache(maxsize=65536)
def _canonical(answer: str) -> str:
    """``_clean`` plus spellings that mean the same: a stray trailing backslash, empty ``^{}``/``_{}``, a leading
    ``+``, braces around the whole answer, and degrees inside trigonometric functions written as radians."""
    answer = _EMPTY_SCRIPT.sub("", _STRAY_TAIL.sub("", _clean(answer)))
    answer = _LEADING_PLUS.sub("", _strip_outer_braces(answer.strip()))
    if _TRIG.search(
        answer
    ):  # Math-Verify reads \cos(90^\circ - x) as cos(90 - x), in radians
        answer = _DEGREES.sub(r"(\\frac{\1\\pi}{180})", answer)
    return answer


# Units and words after a number: 12 days, 7 m^2, 15\text{ dollars}, 864 \mbox{ inches}^2
_POWER = r"(?:\^\{?[23]\}?)?"
_TEXT_UNIT = re.compile(
    rf"(?:\\(?:text|textrm|mbox|mathrm|textnormal)\s*\{{[^{{}}]*\}}{_POWER}\s*)+$"
)
_WORD_UNIT = re.compile(
    rf"\s(?:[A-Za-z]{{2,}}|[mgsL]){_POWER}(?:\s+[A-Za-z]{{2,}}{_POWER})*$"
)
_UNIT_WORD = re.compile(r"[A-Za-z]+|\^\{?(\d)")
_UNIT_ALIASES = {
    "m": "meter",
    "metre": "meter",
    "cm": "centimeter",
    "mm": "millimeter",
    "km": "kilometer",
    "ft": "foot",
    "feet": "foot",
    "in": "inch",
    "yd": "yard",
    "mi": "mile",
    "s": "second",
    "sec": "second",
    "min": "minute",
    "hr": "hour",
    "h": "hour",
    "g": "gram",
    "kg": "kilogram",
    "lb": "pound",
    "lbs": "pound",
    "l": "liter",
    "litre": "liter",
    "sq": "square",
    "cents": "cent",
    "\u00a2": "cent",
}
_POWER_WORDS = {"square": "2", "cubic": "3"}


def _singular(word: str) -> str:
    if len(word) > 3 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "sses", "xes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _unit_key(unit: str) -> str:
    """A unit's spelling-independent name: ``\\text{ square inches}`` and ``inch^2`` -> ``inch^2``."""
    words, power = [], ""
    for m in _UNIT_WORD.finditer(re.sub(r"\\[A-Za-z]+", " ", unit)):
        if m[1]:
            power = m[1]
            continue
        word = _UNIT_ALIASES.get(m.group().lower(), m.group().lower())
        word = _UNIT_ALIASES.get(_singular(word), _singular(word))
        if word in _POWER_WORDS:
            power = _POWER_WORDS[word]
        else:
            words.append(word)
    return " ".join(words) + (f"^{power}" if power else "")


def _split_unit(answer: str) -> tuple[str, str]:
    """``(number, unit key)`` for a number followed by units or words (``"12 days"`` -> ``("12", "day")``);
    ``(answer, "")`` when there is no unit."""
    if len(answer) > _SHORT_FORMS:
        return answer, ""
    m = _TEXT_UNIT.search(answer)
    if m and any(ch.isdigit() for ch in answer[: m.start()]):
        return answer[: m.start()].strip(), _unit_key(m.group())
    m = _WORD_UNIT.search(answer)
    if m and evaluate(_INNER_SPACE.sub("", answer[: m.start()])) is not None:
        return answer[: m.start()].strip(), _unit_key(m.group())
    return answer, ""


# Mixed numbers: 2 3/4, 2\frac34, -1\frac{1}{2}
_MIXED = re.compile(
    r"(-?)(\d+)\s*(?:\\frac\s*(?:\{(\d+)\}|(\d))\s*(?:\{(\d+)\}|(\d))|\s(\d+)\s*/\s*(\d+))"
)


def _mixed_number(answer: str) -> Value | None:
    """The value of a mixed number (integer part and a proper fraction), else None."""
    m = _MIXED.fullmatch(answer)
    if m is None:
        return None
    num, den = (int(x) for x in m.groups()[2:] if x is not None)
    if not 0 < num < den:
        return None
    value = int(m[2]) + Fraction(num, den)
    value = -value if m[1] else value
    return Value(value, float(value))


# Times of day: 9:15, 09:15:00, 9:15 p.m.
_TIME = re.compile(
    r"(\d{1,2}):([0-5]\d)(?::([0-5]\d))?\s*(?:([ap])\.?\s*m\.?)?", re.IGNORECASE
)
_TEXT_WRAPPER = re.compile(r"\\(?:text|textrm|mbox|mathrm)\s*\{([^{}]*)\}")


def _time_of_day(answer: str) -> tuple[int, bool] | None:
    """``(seconds after midnight, unambiguous)``; unambiguous when it has seconds, a.m./p.m. or a two-digit hour
    (``3:15`` alone may be a ratio)."""
    if len(answer) > _SHORT_FORMS:
        return None
    text = _TEXT_WRAPPER.sub(r"\1", answer).strip()
    m = _TIME.fullmatch(text)
    if m is None or int(m[1]) > 23:
        return None
    hour = (
        int(m[1]) % 12 + (12 if m[4] and m[4].lower() == "p" else 0)
        if m[4]
        else int(m[1])
    )
    seconds = hour * 3600 + int(m[2]) * 60 + int(m[3] or 0)
    return seconds, bool(m[3] or m[4] or len(m[1]) == 2)


# Equations whose left side only names the answer: y = 5t - 1, g(t) = 5t - 1, a_n = 2n
_LABEL = re.compile(
    r"([A-Za-z](?:_\{?[A-Za-z0-9]+\}?)?'*)\s*(?:\(\s*[A-Za-z](?:\s*,\s*[A-Za-z])*\s*\))?\s*="
)


def _label_rhs(answer: str) -> str | None:
    """The right side of ``name = expression`` when ``name`` does not occur in it (else it is an equation to solve)."""
    m = _LABEL.match(answer)
    if m is None or len(answer) > _SHORT_FORMS:
        return None
    rhs = answer[m.end() :].strip()
    name = re.escape(m[1].split("_")[0].rstrip("'"))
    if (
        not rhs
        or re.search(r"[=<>]|\\[lg]eq?(?![A-Za-z])", rhs)
        or re.search(rf"(?<![A-Za-z\\]){name}(?![A-Za-z])", rhs)
    ):
        return None
    return rhs


# Vectors written as a one-column (or one-row) matrix, and tuples
_MATRIX = re.compile(r"\\begin\{([pbBvV]?matrix)\}(.*)\\end\{\1\}", re.DOTALL)
_PAIRS = {"(": ")", "[": "]", "{": "}"}


def _vector_items(answer: str) -> list[str] | None:
    m = _MATRIX.fullmatch(answer)
    if m is None or "\\begin" in m[2]:
        return None
    rows = [row.split("&") for row in re.split(r"\\\\", m[2]) if row.strip()]
    if len(rows) == 1:
        return [cell.strip() for cell in rows[0]]
    return (
        [row[0].strip() for row in rows] if all(len(row) == 1 for row in rows) else None
    )


def _top_level_split(text: str) -> list[str] | None:
    """``text`` split at the commas outside all brackets (stripped); None when the brackets do not balance."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                return None
        elif ch == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    items.append(text[start:].strip())
    return items if depth == 0 else None


def _tuple_items(answer: str) -> list[str] | None:
    """The items of ``(a, b, c)`` or ``[a, b]`` split at top-level commas; None for anything else."""
    answer = answer.strip()
    if len(answer) < 2 or answer[0] not in "([" or answer[-1] != _PAIRS[answer[0]]:
        return None
    items = _top_level_split(answer[1:-1])
    return items if items is not None and len(items) > 1 and all(items) else None


# Shapes that cannot equal a number: text, collections, expressions in a variable
_PLAIN_TEXT = re.compile(r"\(?\\text\{[^{}\d]*\}\)?")
_BASE_NUMBER = re.compile(
    r"\d+_\{?\d+\}?"
)  # 4210_7: Math-Verify equates it with no number
_SYMBOLIC = re.compile(
    r"(?:[0-9a-zA-Z+\-*/^_(){}. ]|\\(?:frac|sqrt|cdot|times|pi|sin|cos|tan|log|ln)(?![A-Za-z]))+"
)
_VARIABLE = re.compile(
    r"(?<![\\A-Za-z])(?:[a-df-zA-Z])(?![A-Za-z])"
)  # one-letter names, not e (Euler's number)
_PROSE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}\s+[A-Za-z]{2,}")
_COLLECTION = re.compile(r"\\cup(?![A-Za-z])")


def _top_level_comma(answer: str) -> bool | None:
    """Whether a comma sits outside all brackets; None when the brackets do not balance."""
    items = _top_level_split(answer)
    return None if items is None else len(items) > 1


def _cannot_be_a_number(answer: str) -> bool:
    """Text without digits (``\\text{Monday}``), a list, tuple or union, or an expression in a variable
    (``x^2 - 10x + 41``): Math-Verify never equates these with a number."""
    if "\n" in answer or _PROSE.search(
        answer
    ):  # a sentence: Math-Verify picks a number out of it
        return False
    if (
        _PLAIN_TEXT.fullmatch(answer)
        or _BASE_NUMBER.fullmatch(answer)
        or _COLLECTION.search(answer)
    ):
        return True
    if (
        _MATRIX.fullmatch(answer)
        and _top_level_comma(answer) is not None
        and re.search(r"&|\\\\", answer)
    ):
        return True  # a matrix or vector of two or more entries
    inner = answer[1:-1] if answer[:1] in "([" and answer[-1:] in ")]" else answer
    if "\\begin" in answer or "\\%" in answer or _top_level_comma(inner) is None:
        return False
    if _top_level_comma(inner):
        return True
    return bool(_SYMBOLIC.fullmatch(answer) and _VARIABLE.search(answer))


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
    if not (_SYMBOLIC.fullmatch(pred) and _SYMBOLIC.fullmatch(gold)):
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


# ---------------------------------------------------------------------------------------------- worker pool


class _GradingFailed(Exception):
    """A comparison ran out of time or lost its worker (never cached)."""


class _Worker:
    """One ``python -m lm_eval_swift.grading.worker`` process: a JSON line in, ``1``/``0`` out."""

    def __init__(self) -> None:
        package_root = str(
            Path(__file__).resolve().parents[2]
        )  # the folder holding lm_eval_swift/
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [package_root, os.environ.get("PYTHONPATH")])
            ),
        }
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "lm_eval_swift.grading.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        if self._reply(_START_TIMEOUT) != b"ready":
            self.close()
            raise RuntimeError("the grading worker did not start")

    def _reply(self, timeout: float) -> bytes:
        """The next reply line, or b"" on timeout or when the worker is gone."""
        poller = select.poll()
        poller.register(self._proc.stdout, select.POLLIN)
        if timeout <= 0 or not poller.poll(min(timeout, 1e6) * 1000):
            return b""
        return os.read(self._proc.stdout.fileno(), 64).strip()

    def ask(self, request: bytes, timeout: float) -> bool | None:
        """The worker's verdict, or None when it did not answer in time."""
        try:
            self._proc.stdin.write(request)
            self._proc.stdin.flush()
        except OSError:
            return None
        return {b"1": True, b"0": False}.get(self._reply(timeout))

    def abandon(self, grace: float) -> bool:
        """Make the worker give up its comparison; True when it answered within ``grace`` seconds (then it is
        idle again and reusable: its warm caches are kept)."""
        try:
            os.kill(self._proc.pid, signal.SIGUSR1)
        except OSError:
            return False
        return self._reply(grace) in (b"0", b"1")

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait()
        for pipe in (self._proc.stdin, self._proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()


class _Pool:
    """Up to ``LM_EVAL_SWIFT_GRADE_WORKERS`` workers, started on demand and shared by all threads."""

    def __init__(self) -> None:
        self._forget()

    def _forget(self) -> None:
        """Drop all workers without touching them (they belong to the parent after a fork)."""
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._workers: set[_Worker] = set()
        self._count = 0  # started or starting

    def ask(self, request: bytes, timeout: float) -> bool:
        """Run one request; waiting for a busy or starting worker is not charged to ``timeout``."""
        worker = self._acquire()
        verdict = reusable = None
        try:
            verdict = worker.ask(request, timeout)
            reusable = verdict is not None or worker.abandon(_ABANDON_GRACE)
        finally:  # a worker that neither answered nor gave up may still reply later: never reuse it
            with self._cond:
                if not reusable:
                    self._workers.discard(worker)
                    self._count -= 1
                else:
                    self._idle.append(worker)
                self._cond.notify()
            if not reusable:
                worker.close()
                self._start_spare()
        if verdict is None:
            raise _GradingFailed("grading timed out")
        return verdict

    def _start_spare(self) -> None:
        """Start a replacement worker in the background, so the call after a timeout does not wait ~1 s for one."""

        def start() -> None:
            try:
                worker = _Worker()
            except Exception:  # noqa: BLE001 - the next call starts one itself and reports the failure
                with self._cond:
                    self._count -= 1
                    self._cond.notify()
                return
            with self._cond:
                self._workers.add(worker)
                self._idle.append(worker)
                self._cond.notify()

        with self._cond:
            if self._count >= _max_workers():
                return
            self._count += 1
        threading.Thread(target=start, daemon=True, name="grading-worker-spare").start()

    def _acquire(self) -> _Worker:
        with self._cond:
            while not self._idle and self._count >= _max_workers():
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
            self._count += 1
        worker = None
        try:
            worker = _Worker()
        except Exception as exc:
            logger.exception("could not start a grading worker")
            raise _GradingFailed("no grading worker") from exc
        finally:
            with self._cond:
                if worker is None:
                    self._count -= 1
                    self._cond.notify()
                else:
                    self._workers.add(worker)
        return worker

    def close(self) -> None:
        """Kill every worker (at interpreter exit)."""
        with self._cond:
            workers, self._idle, self._workers, self._count = (
                list(self._workers),
                [],
                set(),
                0,
            )
        for worker in workers:
            worker.close()


def _env_number(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


def _max_workers() -> int:
    return int(_env_number(WORKERS_ENV, min(4, os.cpu_count() or 1)))


_POOL = _Pool()
atexit.register(_POOL.close)
os.register_at_fork(after_in_child=_POOL._forget)


# ---------------------------------------------------------------------------------------------- comparison


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
    _GradingFailed on timeout."""
    if (
        not timeout > 0
    ):  # also NaN: nothing can finish, and no worker should be killed for it
        raise _GradingFailed("no time to grade")
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
    return _POOL.ask(json.dumps(request).encode() + b"\n", timeout)


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
    except _GradingFailed:
        return False


def _timeout(timeout: float | None) -> float:
    return _env_number(TIMEOUT_ENV, DEFAULT_TIMEOUT) if timeout is None else timeout


def _check_mode(mode: str) -> float:
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
    """Equivalence of two canonical answers (see ``_canonical``); cached, so the N samples of a question that
    repeat an answer, in any of its canonical spellings, are compared once."""
    p, g = _INNER_SPACE.sub("", pred), _INNER_SPACE.sub("", gold)
    if not p or not g:
        return False
    if p == g:
        return True
    rel_tol = MODES[mode]
    if kind == "gsm8k":
        a, b = _gsm8k_number(p), _gsm8k_number(g)
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
        "," in compact and _plain_number(compact) is not None
    ):  # 1,000: thousands separators
        compact = compact.replace(",", "")
    return (
        _mixed_number(answer)
        or _ratio(compact)
        or evaluate(_DEGREE_SIGN.sub("", compact))
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
        value = evaluate(_INNER_SPACE.sub("", reading)) if reading is not None else None
        other_value = evaluate(other) if value is not None else None
        verdict = (
            _numeric_verdict(value, other_value, rel_tol)
            if other_value is not None
            else None
        )
        if verdict is not None:
            return verdict
    mixed_p, mixed_g = (
        _mixed_number(pred),
        _mixed_number(gold),
    )  # before "2 3/4" is compacted to 23/4
    x, y = _plain_number(p), _plain_number(g)
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
        (a is not None and _cannot_be_a_number(gold))
        or (b is not None and _cannot_be_a_number(pred))
        or _percent_differs(a, g)
        or _percent_differs(b, p)
        or (a is None and b is None and _differ_somewhere(pred, gold, p, g))
    ):
        return False
    return _verify(
        _as_latex(gold),
        _as_latex(pred),
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
    tp, tg = _time_of_day(pred), _time_of_day(gold)
    if tp is not None and tg is not None and (tp[1] or tg[1]):
        return tp[0] == tg[0]
    (p, unit_p), (g, unit_g) = _split_unit(pred), _split_unit(gold)
    if unit_p and unit_g and unit_p != unit_g:
        return False  # 5 cm is not 5 mm
    if unit_p or unit_g:
        return _equivalent(p, g, kind, timeout, mode)
    rp, rg = _label_rhs(pred), _label_rhs(gold)
    if (
        (rp is not None or rg is not None)
        and (rp is not None or "=" not in pred)
        and (rg is not None or "=" not in gold)
    ):
        return _equivalent(
            rp or pred, rg or gold, kind, timeout, mode
        )  # y = 5t - 1 and g(t) = 5t - 1 name 5t - 1
    vp, vg = _vector_items(pred), _vector_items(gold)
    tp_items, tg_items = _tuple_items(pred), _tuple_items(gold)
    for vector, items in ((vp, tg_items), (tp_items, vg)):
        if vector is not None and items is not None:
            return len(vector) == len(items) and all(
                _equivalent(_canonical(a), _canonical(b), kind, timeout, mode)
                for a, b in zip(vector, items)
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
    _check_kind(kind)
    _check_mode(mode)
    try:
        return _equivalent(
            _canonical(pred), _canonical(gold), kind, _timeout(timeout), mode
        )
    except Exception:  # noqa: BLE001 - timeouts, lost workers and odd inputs all grade as "not equal"
        return False


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
    _check_kind(kind)
    _check_mode(mode)
    if len(responses) < 2:
        return [grade(r, g, kind, mode) for r, g in zip(responses, golds)]
    with ThreadPoolExecutor(
        min(len(responses), 2 * _max_workers()), thread_name_prefix="grade"
    ) as pool:
        return list(pool.map(lambda r, g: grade(r, g, kind, mode), responses, golds))
