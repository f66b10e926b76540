"""The answer a response states: the last boxed answer, else the last answer statement, else its last number.

``extract_answer(response, kind)`` for ``kind`` in ``KINDS``; linear time in the length of the response.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from itertools import chain


__all__ = ["KINDS", "check_kind", "extract_answer", "find_numbers"]

KINDS = ("math", "gsm8k")
_SEGMENT_CHARS = 512  # how far past "The answer is" an answer may reach

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


def closing_braces(text: str) -> dict[int, int]:
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
                closing = closing if closing is not None else closing_braces(text)
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


def find_numbers(text: str) -> list[str]:
    """The numbers in ``text`` without ``$`` or thousands separators: ``"$1,234.50 or 7"`` -> ``["1234.50", "7"]``;
    scientific notation is kept as ``e`` notation (``"2.5\\times10^{-3}"`` -> ``["2.5e-3"]``)."""
    text = text.replace("{,}", ",").replace("\\!", "")
    return [
        n.replace(",", "") + (f"e{e1 or e2}" if e1 or e2 else "")
        for n, e1, e2 in _NUMBER.findall(text)
    ]


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")


def extract_answer(response: str, kind: str) -> str | None:
    """The final answer in ``response`` (``kind`` is ``"math"`` or ``"gsm8k"``), or None when there is none.

    Boxed answers win over textual anchors; GSM8K answers are reduced to a plain number and fall back to the
    last number in the text. Linear time in the length of ``response``.
    """
    check_kind(kind)
    candidates = chain(_boxed_answers(response), _anchored_answers(response))
    if kind == "math":
        return next(candidates, None)
    for candidate in candidates:
        numbers = find_numbers(candidate)
        if numbers:
            return numbers[0]
    numbers = find_numbers(response)
    return numbers[-1] if numbers else None
