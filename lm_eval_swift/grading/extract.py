"""The answer a response states, in this order:

1. the last closed ``\\boxed{...}`` (or ``\\fbox``) that holds an answer: not a placeholder copied from the prompt
   (``\\boxed{Your Answer}``) nor a sentence without a number;
2. else the last answer statement (``the answer is``, ``answer:``, ``Final Answer:``, ``####``, ``N is the answer``
   and the like) that states something. For GSM8K its **result**: the value after the statement's last ``=``, else
   the value of its first arithmetic expression (``3 * 4`` -> 12, ``2^3`` -> 8, Markdown's ``3 \\* 4`` -> 12). An
   ``=`` inside brackets is an aside (``3 days (9*2=18 hours)`` states 3); a unit glued to a number is read past
   (``110ml``, ``18kg`` state 110 and 18), any other letter makes it a term (``2x``, ``x^2``: no value); a ``$``
   before a digit is a currency sign, not LaTeX (``$42 + $160 = $240`` states 240). In a response cut off at the
   token limit, a statement that ends before its result (``So the answer is 18 + 2 =``, ``the answer is
   \\boxed{6.``) states nothing, unless a line break shows that its number ended (``the answer is 72.\\n``). A
   result longer than the 512 characters read, or too large to write exactly (over ``_MAX_TEXT_BITS``), is no
   answer (None), as is a box holding neither a letter nor a digit (``\\boxed\\$600`` boxes ``\\$``);
3. else, only for a response that ended by itself (end of sequence or a stop string), its last number, as
   lm-eval's flexible extraction does. A truncated response with none of these has no answer (None).

``extract_answer(response, kind, truncated=False)`` for ``kind`` in ``KINDS``; linear time in the response's length.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from fractions import Fraction

from lm_eval_swift.grading.numeric import evaluate


__all__ = ["KINDS", "check_kind", "extract_answer", "find_numbers", "is_number"]

KINDS = ("math", "gsm8k")
_SEGMENT_CHARS = 512  # how far past "The answer is" an answer may reach
_MAX_STATEMENTS = 256  # the last statements looked at (hostile text repeats "####" thousands of times)

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*")
_BRACE_OR_ESCAPE = re.compile(r"\\.|[{}]", re.DOTALL)
_BOX_TOKEN = re.compile(r"[^\s${}]{1,64}")  # \boxed 5
_MATH_ANCHOR = re.compile(r"####|\banswer(?:\s*:|\s+is\b)", re.IGNORECASE)
_TEXT_ANCHOR = re.compile(  # GSM8K: also "the answer would be", "the answer to the question is"
    r"####|\banswer(?:\s+(?:to|for)\s+(?:the|this|my|our|your)\s+(?:[a-z]+\s+){0,2}?(?:question|problem))?"
    r"\s*(?:(?:is|would be|will be|should be)\b|[:=])",
    re.IGNORECASE,
)
_REVERSE_ANCHOR = re.compile(r"\s+is\s+the\s+(?:final\s+)?answer\b", re.IGNORECASE)
_REVERSE_VALUE = re.compile(
    r"(?<![\d.,])-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?$"
)  # "0.75" is the answer
# Not "$42 + $160 = $202": a "$" before a digit is a currency sign
_MATH_SPAN = re.compile(
    r"\$\$(.+?)\$\$|\$(.+?)\$(?!\d)|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL
)
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\n")
_CLAUSE_END = re.compile(
    r"\.(?:\s|$)|\n|,\s+(?=[A-Za-z])"
)  # GSM8K: "42 dollars, which is ..." ends at the comma
_NUMBER = re.compile(
    r"(-?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+))"
    r"(?:[eE]([-+]?\d+)(?![\d.])|\s*(?:\\times|\\cdot|\u00d7)\s*10\s*\^\s*\{?\s*([-+]?\d+)\s*\}?)?"
)  # 1,234.5; 2.5e-3; 2.5\times 10^{-3}
# A unit of measure glued to a number (110ml, 18kg, 3hrs): the number is the value; a letter that is not one
# (2x, 2z, 5ab) makes the number an algebraic term, no value
_UNIT = (
    r"(?:[mk]?l|[mk]?g|[kcm]?m|mi|ft|in|yds?|lbs?|oz|mph|hrs?|h|mins?|s|secs?|cents?|dollars?|hours?|minutes?"
    r"|seconds?|days?|weeks?|months?|years?|miles?|feet|inch(?:es)?|meters?|lit(?:er|re)s?|grams?|pounds?)"
    r"(?![A-Za-z])"
)
# One number of a stated result: not part of a word (2z), an exponent (x^2), a time or ratio (9:15), or a longer
# number; a unit may be glued to it (18kg)
_VALUE = (
    r"(?<![\w.,:^])-?\$?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
    r"(?:[eE][-+]?\d+|\s*(?:\\times|\\cdot|\u00d7)\s*10\s*\^\s*\{?\s*[-+]?\d+\s*\}?)?"
    rf"(?:(?={_UNIT})|(?![\w]|[.,:]\d))"
)
_POWER = r"\s*\^\s*(?:\{\s*-?\d+(?:\.\d+)?\s*\}|\d+(?:\.\d+)?(?![\w]|[.,:]\d))"  # 2^3, 2^{10}
_OPERATOR = r"\s*(?:[-+*/\u00d7\u00f7]|\\times|\\cdot|\\div)\s*|\s+x\s+"
_FIRST_VALUE = re.compile(_VALUE)
# Where a statement's first number starts: a fraction \frac{a}{b}, else a digit (with its sign or $)
_NUMBER_START = re.compile(
    r"\\[dt]?frac\s*\{\s*(?P<num>\d+)\s*\}\s*\{\s*(?P<den>\d+)\s*\}|-?\$?\.?\d"
)
# An expression going on past what was read
_GOES_ON = re.compile(rf"\d|(?:{_OPERATOR}|\s*\^\s*)\$?\d")
_EXPRESSION = re.compile(
    rf"{_VALUE}(?:{_POWER})*(?:(?:{_OPERATOR}){_VALUE}(?:{_POWER})*)*"
)
_CONTINUES = re.compile(
    r"\s*(?:[-+*/^\u00d7\u00f7]|\\times|\\cdot|\\div)\s*[A-Za-z(\\{]"
)  # 20*3*side, 5 * (2 + 3)
# "Simplify your answer:", "to find the answer:" quote the prompt or plan a step; they state nothing
_INSTRUCTION = re.compile(
    r"\b(?:simplify|present|display|find|calculate|provide|check|write|put|give|get|reach|arrive at|format)"
    r"\s+(?:(?:your|the|our|a|this)\s+(?:final\s+)?|final\s+)$",
    re.IGNORECASE,
)
_LAST_NUMBER = re.compile(
    r"-?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:\s*/\s*\d+(?!\d|\.\d))?"
)
_CUT_TAIL = re.compile(
    r"\s*(?:[-+*/=x\u00d7.,:^(]|\\times|\\cdot|\\frac)?\s*"
)  # all a cut-off result leaves
_LINE_END = re.compile(r"[ \t]*\.?[ \t]*\n")  # "72.\n": the number ended before the cut
_PLAIN_POWER = re.compile(r"\^(-?\d+(?:\.\d+)?)")
_EQUALS_OR_BRACKET = re.compile(r"[=()\[\]]")
# A result too long to read or too large to write exactly: the statement states no answer (see _number_text)
_TOO_LARGE = ""
# A result's numerator and denominator are written exactly up to 2048 bits (~616 digits)
_MAX_TEXT_BITS = 2048
_LEAD = re.compile(
    r"(?:\s|[:*]|\\boxed\s*\{|(?<=\n)\d{1,2}\.\s)*"
)  # "**", "\boxed{", a list's "1. "
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")
_PLACEHOLDER = re.compile(r"\banswer\b", re.IGNORECASE)


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
    """Contents of closed ``\\boxed{...}``, ``\\boxed X`` and ``\\fbox{...}``, last first; unbalanced ones are skipped."""
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


def _holds_an_answer(content: str, kind: str) -> bool:
    """False for a placeholder (``Your Answer``) or a sentence without a number (``Step 3: Display your answer``)."""
    words = len(_WORD.findall(content))
    if not any(ch.isalnum() for ch in content):  # \boxed\$600: the box holds "\\"
        return False
    if not any(ch.isdigit() for ch in content):
        return not (
            _PLACEHOLDER.search(content) or words >= (3 if kind == "math" else 2)
        )
    return (
        kind == "math"
        or words < 3
        or _EXPRESSION.match(_LEAD.sub("", content, count=1)) is not None
    )


def _anchors(text: str, kind: str) -> list[tuple[int, int, bool]]:
    """``(start, end, reverse)`` of the last answer anchors in ``text``, in order: ``answer is``, ``answer:``,
    ``####``; for GSM8K also ``answer would be`` and the like, not after ``simplify your`` (the prompt's words),
    and (``reverse``) the number of ``N is the answer``."""
    if kind == "math":  # MATH keeps the anchors Math-Verify's users expect
        return [(m.start(), m.end(), False) for m in _MATH_ANCHOR.finditer(text)][
            -_MAX_STATEMENTS:
        ]
    anchors = [
        (m.start(), m.end(), False)
        for m in _TEXT_ANCHOR.finditer(text)
        if m.group() == "####"
        or not _INSTRUCTION.search(text, max(0, m.start() - 40), m.start())
    ]
    for m in _REVERSE_ANCHOR.finditer(text):
        value = _REVERSE_VALUE.search(text, max(0, m.start() - 40), m.start())
        if value:
            anchors.append((value.start(), value.end(), True))
    return sorted(anchors)[-_MAX_STATEMENTS:]


def _statements(text: str, kind: str) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of each answer statement's stated text, last first: what follows ``answer is`` up to the
    end of its sentence (for GSM8K, its clause) or the next statement, or the ``N`` of ``N is the answer``."""
    anchors = _anchors(text, kind)
    starts = [a[0] for a in anchors] + [
        len(text)
    ]  # a segment stops at the next anchor: linear time
    for (anchor, anchor_end, reverse), end in zip(
        reversed(anchors), reversed(starts[1:]), strict=True
    ):
        if reverse:
            yield anchor, anchor_end
            continue
        lead = _LEAD.match(text, anchor_end)
        start = lead.end() if lead else anchor_end
        stop = min(end, anchor_end + _SEGMENT_CHARS)
        span = _MATH_SPAN.match(text, start, stop)
        if span:
            group = next(i for i, g in enumerate(span.groups(), 1) if g is not None)
            yield span.start(group), span.end(group)
            continue
        sentence = (_CLAUSE_END if kind == "gsm8k" else _SENTENCE_END).search(
            text, start, stop
        )
        yield start, sentence.start() if sentence else stop


def _cut_off(text: str, end: int) -> bool:
    """Whether a result ending at ``end`` may continue past the token limit: only operators or punctuation follow,
    and no line break shows that the number ended (``72.\\n``)."""
    return _CUT_TAIL.fullmatch(text, end) is not None and not _LINE_END.match(text, end)


def _last_equals(text: str, start: int, end: int) -> int:
    """Index of the last ``=`` of ``text[start:end]`` outside brackets (``3 days (9*2=18 hours)``), else -1."""
    depth, last = 0, -1
    for m in _EQUALS_OR_BRACKET.finditer(text, start, end):
        if m.group() in "([":
            depth += 1
        elif m.group() in ")]":
            depth = max(depth - 1, 0)
        elif depth == 0:
            last = m.start()
    return last


def _number_text(value: Fraction) -> str:
    """``12``, ``-2.5`` (a terminating decimal, exactly) or ``2/3``; ``_TOO_LARGE`` for a numerator or denominator
    over ``_MAX_TEXT_BITS`` (no GSM8K answer is that long, and writing it out costs quadratic time)."""
    num, den = value.numerator, value.denominator
    if max(num.bit_length(), den.bit_length()) > _MAX_TEXT_BITS:
        return _TOO_LARGE
    if den == 1:
        return str(num)
    twos = (den & -den).bit_length() - 1
    fives, rest = 0, den >> twos
    while rest % 5 == 0:
        fives, rest = fives + 1, rest // 5
    if rest != 1:
        return f"{num}/{den}"
    places = max(twos, fives)
    digits = str(abs(num) * 10**places // den).rjust(places + 1, "0")
    return f"{'-' if num < 0 else ''}{digits[:-places]}.{digits[-places:]}"


def _fraction_text(num: str, den: str) -> str:
    """``\\frac{num}{den}`` as ``_number_text`` writes it (a zero denominator read as 1)."""
    # over ~2048 bits: never converted to int (int's limit is 4,300 digits)
    if max(len(num), len(den)) * 10 > _MAX_TEXT_BITS * 3:
        return _TOO_LARGE
    return _number_text(Fraction(int(num), max(int(den), 1)))


def _result(text: str, start: int, end: int, truncated: bool) -> str | None:
    """The value a GSM8K statement ``text[start:end]`` states: after its last ``=`` outside brackets, else its
    first expression (``+ - * / ^``); None when it states no number we can read (``2x + 1``, ``20*3*side``,
    ``x^2``), or is cut off at the token limit before its result is complete; ``_TOO_LARGE`` for a value too large
    to write exactly (or not rational: ``2^{0.5}``)."""
    equals = _last_equals(text, start, end)
    first = _NUMBER_START.search(text, equals + 1 if equals >= 0 else start, end)
    if first is None:
        return None
    # \frac{3}{4}, else an expression (3 * 4)
    m = first if first["num"] else _EXPRESSION.match(text, first.start(), end)
    if m is None or _CONTINUES.match(text, m.end()):
        return None
    # longer than the _SEGMENT_CHARS read: not read
    if m.end() == end and _GOES_ON.match(text, end):
        return _TOO_LARGE
    if truncated and _cut_off(text, m.end()):
        return None
    if first["num"]:
        return _fraction_text(first["num"], first["den"])
    if _FIRST_VALUE.fullmatch(m.group()):  # one number: as written
        return find_numbers(m.group().replace("$", ""))[0]
    expression = re.sub(r"\s+x\s+|\u00d7", "*", m.group()).replace("\u00f7", "/")
    # 2^0.5 is 2^{0.5}, not 2^0 * .5
    expression = _PLAIN_POWER.sub(r"^{\1}", re.sub(r"[\s$,]", "", expression))
    value = evaluate(expression)
    if value is None:  # 5/0, 2^3^2
        return None
    return _TOO_LARGE if value.exact is None else _number_text(value.exact)


def _box_answer(content: str, kind: str) -> str | None:
    """What a box states: its statement's result when it holds one (``\\boxed{The answer is 9}``); for GSM8K
    the value of its content (``90.0 liters`` -> ``90.0``), else the content itself (``x``, graded wrong)."""
    if kind == "gsm8k":
        for start, end in _statements(content, kind):
            value = _result(content, start, end, truncated=False)
            if value is not None:
                return value
    if not _holds_an_answer(content, kind):
        return None
    if kind == "math":
        return content
    value = _result(content, 0, len(content), truncated=False)
    return content if value is None else value


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


def is_number(answer: str) -> bool:
    """Whether a GSM8K answer is a number (``"12"``, ``"2.5"``, ``"-3"``, ``"2/3"``), as extraction writes one."""
    return _NUMBER_ANSWER.fullmatch(answer) is not None


_NUMBER_ANSWER = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+)(?:e[-+]?\d+|/\d+)?")


def _stated(response: str, kind: str, truncated: bool) -> str | None:
    """Rule 2: the last answer statement that states something."""
    for start, end in _statements(response, kind):
        if kind == "gsm8k":
            value = _result(response, start, end, truncated)
        else:
            segment = response[start:end]
            value = segment.strip(" \t*").rstrip(".").strip() or None
            if truncated and _cut_off(response, start + len(segment.rstrip())):
                value = None
        if value is not None:
            return value
    return None


def _last_number(response: str) -> str | None:
    """Rule 3: the last number (``a/b`` read as one fraction), without ``$`` or thousands separators."""
    last = None
    for m in _LAST_NUMBER.finditer(response):
        last = m
    if last is None:
        return None
    text = re.sub(r"[\s,]", "", last.group())
    return text.split("/")[0] if text.endswith("/0") else text


def extract_answer(response: str, kind: str, truncated: bool = False) -> str | None:
    """The answer ``response`` states (``kind`` is ``"math"`` or ``"gsm8k"``), or None when it states none:
    the last boxed answer, else the last answer statement's result, else (for a response that ended by itself,
    ``truncated=False``) its last number. GSM8K answers are numbers (``"12"``, ``"2/3"``) except a boxed non-number
    (``"x"``). Linear time in the length of ``response``."""
    check_kind(kind)
    if kind == "gsm8k":
        response = (  # 15{,}000, 15,\!000 and Markdown's escaped star 3\*4
            response.replace("{,}", ",").replace("\\!", "").replace("\\*", "*")
        )
    for content in _boxed_answers(response):
        answer = _box_answer(content, kind)
        if answer is not None:
            return answer or None  # _TOO_LARGE: no answer
    answer = _stated(response, kind, truncated)
    if answer is not None or truncated or kind == "math":
        return answer or None
    return _last_number(response)
