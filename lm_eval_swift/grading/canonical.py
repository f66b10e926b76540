"""Canonical forms of answers: delimiters, spacing and brace spellings removed, and the shapes read in-process
(plain and mixed numbers, units, times of day, labelled equations, vectors and tuples, non-numbers)."""

from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache

from lm_eval_swift.grading.extract import closing_braces, find_numbers
from lm_eval_swift.grading.numeric import Value, evaluate


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
INNER_SPACE = re.compile(
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


def plain_number(compact: str) -> tuple[Fraction, bool] | None:
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


def gsm8k_number(compact: str) -> Fraction | None:
    """A plain number, else the first number in the text ("18dollars" -> 18)."""
    plain = plain_number(compact)
    if plain is not None:
        return plain[0]
    numbers = find_numbers(compact)
    value = evaluate(numbers[0]) if numbers else None
    return (
        value.exact if value is not None else None
    )  # None also for numbers too large to hold (1e1000000)


def as_latex(answer: str) -> str:
    """A bare answer is boxed so Math-Verify parses all of it (not just its last number); text is left alone."""
    return answer if _MATH_MODE.search(answer) else f"\\boxed{{{answer}}}"


_STRAY_TAIL = re.compile(r"\s*\\+$")  # "42\": a backslash left at the end
_EMPTY_SCRIPT = re.compile(r"[\^_]\{\s*\}")
_LEADING_PLUS = re.compile(r"^\+\s*(?=[\d.\\({])")
_TRIG = re.compile(r"\\(?:sin|cos|tan|cot|sec|csc)(?![A-Za-z])")
_DEGREES = re.compile(r"(\d+(?:\.\d+)?)\s*\^\s*(?:\{\s*\\circ\s*\}|\\circ)")
DEGREE_SIGN = re.compile(r"\^\{?\\circ\}?$")  # Math-Verify reads 54^\circ as 54
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
        closing = closing or closing_braces(answer)
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
def canonical_form(answer: str) -> str:
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


def split_unit(answer: str) -> tuple[str, str]:
    """``(number, unit key)`` for a number followed by units or words (``"12 days"`` -> ``("12", "day")``);
    ``(answer, "")`` when there is no unit."""
    if len(answer) > _SHORT_FORMS:
        return answer, ""
    m = _TEXT_UNIT.search(answer)
    if m and any(ch.isdigit() for ch in answer[: m.start()]):
        return answer[: m.start()].strip(), _unit_key(m.group())
    m = _WORD_UNIT.search(answer)
    if m and evaluate(INNER_SPACE.sub("", answer[: m.start()])) is not None:
        return answer[: m.start()].strip(), _unit_key(m.group())
    return answer, ""


# Mixed numbers: 2 3/4, 2\frac34, -1\frac{1}{2}
_MIXED = re.compile(
    r"(-?)(\d+)\s*(?:\\frac\s*(?:\{(\d+)\}|(\d))\s*(?:\{(\d+)\}|(\d))|\s(\d+)\s*/\s*(\d+))"
)


def mixed_number(answer: str) -> Value | None:
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


def time_of_day(answer: str) -> tuple[int, bool] | None:
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


def label_rhs(answer: str) -> str | None:
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
MATRIX = re.compile(r"\\begin\{([pbBvV]?matrix)\}(.*)\\end\{\1\}", re.DOTALL)
_PAIRS = {"(": ")", "[": "]", "{": "}"}


def vector_items(answer: str) -> list[str] | None:
    m = MATRIX.fullmatch(answer)
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


def tuple_items(answer: str) -> list[str] | None:
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
SYMBOLIC = re.compile(
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


def cannot_be_a_number(answer: str) -> bool:
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
        MATRIX.fullmatch(answer)
        and _top_level_comma(answer) is not None
        and re.search(r"&|\\\\", answer)
    ):
        return True  # a matrix or vector of two or more entries
    inner = answer[1:-1] if answer[:1] in "([" and answer[-1:] in ")]" else answer
    if "\\begin" in answer or "\\%" in answer or _top_level_comma(inner) is None:
        return False
    if _top_level_comma(inner):
        return True
    return bool(SYMBOLIC.fullmatch(answer) and _VARIABLE.search(answer))
