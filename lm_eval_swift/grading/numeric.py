"""Values of arithmetic LaTeX answers, computed in-process in bounded time (no sympy).

``evaluate`` reads numbers (``12``, ``0.5``, ``2.5e-3``), ``\\pi``, ``+ - * / \\cdot \\times \\div``, implicit
products, ``^``, ``!``, ``\\frac``, ``\\sqrt`` (with an optional index) and grouping, and returns the value exactly
when it is rational and small enough to hold, else as a float (``inf`` for values beyond float range, such as
``9^{9^{9^9}}``). Brackets may nest to any depth: the innermost are evaluated first, without recursion.
Anything else (letters, commas, sets, percent signs) is not read: None.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction


__all__ = ["Value", "evaluate"]

MAX_BITS = 200_000  # an exact value with a larger numerator or denominator is kept as a float only
MAX_FACTORIAL = 3_000  # n! beyond this is kept as a float only
MAX_CHARS = 100_000
_CLOSING = {"(": ")", "{": "}", "[": "]"}

_TOKEN = re.compile(
    r"(?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+(?![\d.]))?)"
    r"|(?P<cmd>\\(?:pi|frac|sqrt|cdot|times|div)(?![A-Za-z]))"
    r"|(?P<op>[-+*/^!(){}\[\]])"
    r"|(?P<var>[a-df-hj-zA-DF-HJ-Z])"  # one-letter variables; not e or i (Euler's number, the imaginary unit)
)
_SHORT_ARGS = [
    (re.compile(r"\\frac(\d)(\d)"), r"\\frac{\1}{\2}"),
    (re.compile(r"\\frac(\d)(?=\{)"), r"\\frac{\1}"),
    (re.compile(r"\\frac\{([^{}]*)\}(\d)"), r"\\frac{\1}{\2}"),
    (re.compile(r"\\sqrt(\d)"), r"\\sqrt{\1}"),
    (re.compile(r"\^(\d)(?!\d)"), r"^{\1}"),
]
# 2^10, \frac123: LaTeX's reading differs from the eye's; 2\frac34: a mixed number to Math-Verify
_AMBIGUOUS = re.compile(r"\^\d\d|\\frac\d\d\d|\d\\frac")


@dataclass(frozen=True)
class Value:
    """A number: ``exact`` when rational and held exactly (else None), ``approx`` as a float (may be +-inf),
    ``decimal`` when written with a decimal point or exponent (Math-Verify compares those rounded)."""

    exact: Fraction | None
    approx: float
    decimal: bool = False


class _Unreadable(Exception):
    pass


def _float(x: Fraction) -> float:
    try:
        return float(x)
    except OverflowError:  # too large, or a huge numerator over a huge denominator
        log = math.log(abs(x.numerator)) - math.log(x.denominator)
        return (-1.0 if x < 0 else 1.0) * (
            math.exp(log) if abs(log) <= 709 else math.inf if log > 0 else 0.0
        )


def _make(exact: Fraction | None, approx: float, decimal: bool) -> Value:
    if (
        exact is not None
        and max(exact.numerator.bit_length(), exact.denominator.bit_length()) > MAX_BITS
    ):
        exact = None
    if math.isnan(approx):
        raise _Unreadable("undefined")
    return Value(exact, approx, decimal)


def _number(text: str) -> Value:
    mantissa, _, exponent = text.lower().partition("e")
    decimal = "." in mantissa or bool(exponent)
    try:
        m = Fraction(Decimal(mantissa))
    except InvalidOperation as e:
        raise _Unreadable(text) from e
    e = int(exponent) if exponent else 0
    if abs(e) > 10_000:  # 1e1000000: a float only
        return _make(None, 0.0 if e < 0 or m == 0 else math.inf, True)
    value = m * Fraction(10) ** e
    return _make(value, _float(value), decimal)


def _power(base: Value, exp: Value) -> Value:
    decimal = base.decimal or exp.decimal
    b, e = base.exact, exp.exact
    if b is not None and e is not None and e.denominator == 1:
        n = e.numerator
        if b == 0 and n < 0:
            raise _Unreadable("division by zero")
        bits = max(b.numerator.bit_length(), b.denominator.bit_length())
        if b in (0, 1, -1) or abs(n) * bits <= MAX_BITS:
            value = b**n
            return _make(value, _float(value), decimal)
    if (
        b is not None
        and e is not None
        and b > 0
        and abs(e.numerator) <= 64
        and e.denominator <= 64
    ):
        root = _exact_root(b, e.denominator)  # 8^{2/3} = 4
        if root is not None:
            value = root**e.numerator
            return _make(value, _float(value), decimal)
    if base.approx < 0 and (e is None or e.denominator != 1):
        raise _Unreadable(
            "root of a negative number"
        )  # complex or branch-dependent: Math-Verify decides
    return _make(None, _float_power(base.approx, exp.approx), decimal)


def _exact_root(x: Fraction, k: int) -> Fraction | None:
    """The exact positive k-th root of ``x``, when it is rational."""
    parts = []
    for n in (x.numerator, x.denominator):
        if n.bit_length() > 4096:
            return None
        r = round(n ** (1 / k)) if n.bit_length() < 50 else _int_root(n, k)
        r = next((c for c in (r - 1, r, r + 1) if c >= 0 and c**k == n), None)
        if r is None:
            return None
        parts.append(r)
    return Fraction(parts[0], parts[1])


def _int_root(n: int, k: int) -> int:
    """floor(n ** (1/k)) for large ``n`` (Newton's method on integers)."""
    x = 1 << -(-n.bit_length() // k)
    while True:
        y = ((k - 1) * x + n // x ** (k - 1)) // k
        if y >= x:
            return x
        x = y


def _float_power(b: float, e: float) -> float:
    """``b ** e`` for b >= 0 (or integral e), saturating to +-inf or 0 instead of raising."""
    if b == 0:
        return 0.0 if e > 0 else math.inf
    sign = -1.0 if b < 0 and e % 2 == 1 else 1.0
    log = (
        e * math.log(abs(b))
        if math.isfinite(e)
        else (math.inf if (abs(b) > 1) == (e > 0) else -math.inf)
    )
    if math.isnan(log):
        raise _Unreadable("undefined power")
    if abs(b) == 1:
        return sign
    return sign * (math.inf if log > 709 else math.exp(log))


def _factorial(x: Value) -> Value:
    if x.exact is None and math.isinf(x.approx) and x.approx > 0:
        return x
    if x.exact is None or x.exact.denominator != 1 or x.exact < 0:
        raise _Unreadable("factorial of a non-integer")
    n = x.exact.numerator
    if n <= MAX_FACTORIAL:
        value = Fraction(math.factorial(n))
        return _make(value, _float(value), x.decimal)
    return _make(None, math.inf, x.decimal)


@dataclass(frozen=True)
class _Group:
    """A bracketed part already evaluated: ``opening`` is ``(``, ``{`` or ``[``."""

    opening: str
    value: Value


class _Parser:
    """Operator precedence over one bracket-free token sequence (groups arrive evaluated, so nothing recurses)."""

    def __init__(
        self, tokens: list[str | _Group], point: Mapping[str, Fraction]
    ) -> None:
        self.tokens = tokens
        self.point = point
        self.i = 0

    def peek(self) -> str | _Group | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> str | _Group:
        tok = self.peek()
        if tok is None:
            raise _Unreadable("unexpected end")
        self.i += 1
        return tok

    def group(self, opening: str) -> Value:
        tok = self.take()
        if not isinstance(tok, _Group) or tok.opening != opening:
            raise _Unreadable(f"expected {opening!r}")
        return tok.value

    def parse(self) -> Value:
        value = self.expr()
        if self.peek() is not None:
            raise _Unreadable("trailing tokens")
        return value

    def expr(self) -> Value:
        value = self.term()
        while self.peek() in ("+", "-"):
            sign = -1 if self.take() == "-" else 1
            value = _add(value, self.term(), sign)
        return value

    def term(self) -> Value:
        value = self.signed()
        while True:
            tok = self.peek()
            if tok in ("*", "\\cdot", "\\times"):
                self.take()
                value = _mul(value, self.signed())
            elif tok in ("/", "\\div"):
                self.take()
                value = _div(value, self.signed())
            elif (
                isinstance(tok, _Group)
                and tok.opening != "["
                or (
                    isinstance(tok, str)
                    and (
                        tok[0].isalnum()
                        or tok[0] == "."
                        or tok in ("\\pi", "\\frac", "\\sqrt")
                    )
                )
            ):
                value = _mul(
                    value, self.power()
                )  # implicit product: 2\pi, 3(4), 2\sqrt{2}
            else:
                return value

    def signed(self) -> Value:
        negative = False
        while self.peek() in ("-", "+"):
            negative ^= self.take() == "-"
        value = self.power()
        return (
            _make(
                None if value.exact is None else -value.exact,
                -value.approx,
                value.decimal,
            )
            if negative
            else value
        )

    def power(self) -> Value:
        value = self.postfix()
        if self.peek() == "^":
            self.take()
            exp = self.group("{")
            if self.peek() == "!":
                raise _Unreadable("factorial after a power")
            value = _power(value, exp)
        return value

    def postfix(self) -> Value:
        value = self.atom()
        while self.peek() == "!":
            self.take()
            value = _factorial(value)
        return value

    def atom(self) -> Value:
        tok = self.take()
        if isinstance(tok, _Group):
            if tok.opening == "[":
                raise _Unreadable("bracket")
            return tok.value
        if tok[0].isdigit() or tok[0] == ".":
            return _number(tok)
        if tok.isalpha():
            if tok.lower() not in self.point:
                raise _Unreadable(f"variable {tok}")
            value = self.point[tok.lower()]
            return Value(value, float(value))
        if tok == "\\pi":
            return Value(None, math.pi)
        if tok == "\\frac":
            return _div(self.group("{"), self.group("{"))
        if tok == "\\sqrt":
            nxt = self.peek()
            index = (
                self.group("[")
                if isinstance(nxt, _Group) and nxt.opening == "["
                else Value(Fraction(2), 2.0)
            )
            radicand = self.group("{")
            if index.exact is None or index.exact.denominator != 1 or index.exact < 2:
                raise _Unreadable("odd root index")
            return _power(
                radicand,
                Value(Fraction(1, index.exact.numerator), 1 / index.exact.numerator),
            )
        raise _Unreadable(f"unexpected {tok!r}")


def _add(a: Value, b: Value, sign: int) -> Value:
    exact = (
        a.exact + sign * b.exact
        if a.exact is not None and b.exact is not None
        else None
    )
    return _make(
        exact,
        _float(exact) if exact is not None else a.approx + sign * b.approx,
        a.decimal or b.decimal,
    )


def _mul(a: Value, b: Value) -> Value:
    exact = a.exact * b.exact if a.exact is not None and b.exact is not None else None
    if exact is not None:
        return _make(exact, _float(exact), a.decimal or b.decimal)
    if _underflow_meets_overflow(a.approx, b.approx):
        raise _Unreadable("0 * inf")
    return _make(None, a.approx * b.approx, a.decimal or b.decimal)


def _underflow_meets_overflow(x: float, y: float) -> bool:
    """A product of a float that overflowed and one that (nearly) underflowed has no reliable float value."""
    return (math.isinf(x) and abs(y) < 1e-250) or (math.isinf(y) and abs(x) < 1e-250)


def _div(a: Value, b: Value) -> Value:
    if b.approx == 0 and (b.exact is None or b.exact == 0):
        raise _Unreadable("division by zero")
    if a.exact is not None and b.exact is not None:
        exact = a.exact / b.exact
        return _make(exact, _float(exact), a.decimal or b.decimal)
    if _underflow_meets_overflow(a.approx, 1 / b.approx if b.approx else math.inf):
        raise _Unreadable("inf / inf")
    return _make(None, a.approx / b.approx, a.decimal or b.decimal)


def evaluate(text: str, point: Mapping[str, Fraction] | None = None) -> Value | None:
    """The value of ``text`` (a cleaned answer without spaces), or None when it is not plain arithmetic.
    With ``point`` (lower-case letter -> value), one-letter variables (either case) take those values."""
    if len(text) > MAX_CHARS or _AMBIGUOUS.search(text):
        return None
    for rule, replacement in _SHORT_ARGS:
        text = rule.sub(replacement, text)
    tokens, pos = [], 0
    for m in _TOKEN.finditer(text):
        if m.start() != pos:
            return None
        tokens.append(m.group())
        pos = m.end()
    if pos != len(text) or not tokens:
        return None
    try:
        return _evaluate_tokens(tokens, point or {})
    except (_Unreadable, ZeroDivisionError, OverflowError, ValueError):
        return None


def _evaluate_tokens(tokens: list[str], point: Mapping[str, Fraction]) -> Value:
    """Innermost brackets first: each closed group is evaluated and stands in its place as one token."""
    sequences: list[list[str | _Group]] = [[]]
    opened: list[str] = []
    for tok in tokens:
        if tok in _CLOSING:
            opened.append(tok)
            sequences.append([])
        elif tok in (")", "}", "]"):
            if not opened or _CLOSING[opened[-1]] != tok:
                raise _Unreadable("unbalanced")
            inner = _Parser(sequences.pop(), point).parse()
            sequences[-1].append(_Group(opened.pop(), inner))
        else:
            sequences[-1].append(tok)
    if opened:
        raise _Unreadable("unbalanced")
    return _Parser(sequences[0], point).parse()
