"""Answer extraction and equivalence for MATH and GSM8K, built on Math-Verify.

``extract_answer`` pulls the final answer out of a response (last ``\\boxed{}``/``\\fbox{}``, else the last
``#### N`` / ``The answer is N`` / ``Final Answer: ...``; for GSM8K, a number, falling back to the last number).
``is_equivalent`` compares two answers: cheap exact checks in-process, everything else with Math-Verify in a
persistent worker process (``lm_eval_swift._grading_worker``) that is killed and lazily restarted when a comparison
runs past its time limit. That works off the main thread and inside daemonic ``multiprocessing`` workers, where
Math-Verify's own SIGALRM timeouts cannot. ``grade`` is extraction followed by comparison.

Settings (environment): ``LM_EVAL_SWIFT_GRADE_TIMEOUT`` (seconds per comparison, default 2) and
``LM_EVAL_SWIFT_GRADE_WORKERS`` (worker processes, default ``min(4, cpu_count)``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from fractions import Fraction
from functools import lru_cache
from itertools import chain
from pathlib import Path

__all__ = ["extract_answer", "grade", "is_equivalent", "verify_strings"]

logger = logging.getLogger(__name__)

KINDS = ("math", "gsm8k")
TIMEOUT_ENV = "LM_EVAL_SWIFT_GRADE_TIMEOUT"
WORKERS_ENV = "LM_EVAL_SWIFT_GRADE_WORKERS"
DEFAULT_TIMEOUT = 2.0
MATCH_TYPES = ("latex", "expr")
_START_TIMEOUT = 60.0  # a worker's one-off start (importing sympy) is not charged to any comparison
_SEGMENT_CHARS = 512  # how far past "The answer is" an answer may reach

# ---------------------------------------------------------------------------------------------- extraction

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*")
_BRACE_OR_ESCAPE = re.compile(r"\\.|[{}]", re.DOTALL)
_BOX_TOKEN = re.compile(r"[^\s${}]{1,64}")  # \boxed 5
_TEXT_ANCHOR = re.compile(r"####|\banswer(?:\s*:|\s+is\b)", re.IGNORECASE)
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")


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


def _boxed_answers(text: str) -> Iterator[str]:
    """Contents of ``\\boxed{...}``, ``\\boxed X`` and ``\\fbox{...}``, last first; unbalanced ones are skipped."""
    boxes = list(_BOX.finditer(text))
    closing = _closing_braces(text) if boxes else {}
    for m in reversed(boxes):
        start = m.end()
        if text.startswith("{", start):
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
    starts = [m.start() for m in anchors] + [len(text)]  # a segment stops at the next anchor: linear time
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
    """The numbers in ``text`` without ``$`` or thousands separators: ``"$1,234.50 or 7"`` -> ``["1234.50", "7"]``."""
    return [n.replace(",", "") for n in _NUMBER.findall(text.replace("{,}", ",").replace("\\!", ""))]


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
    (re.compile(r"\\(?:left|right|displaystyle)(?![A-Za-z])|(?<!\\)\\\$"), ""),  # sizing; \$ is a currency sign
    (re.compile(r"(?<!\\)\\[,!;: ]"), " "),  # spacing commands (not a line break "\\" before a space)
    (re.compile(r"\\[dt]frac(?![A-Za-z])"), r"\\frac"),
    (re.compile(r"\{,\}"), ","),
    (re.compile(r"\\sqrt\(([^()]*)\)"), r"\\sqrt{\1}"),  # \sqrt(2) means \sqrt{2}, not \sqrt{} times (2)
    (re.compile(r"\\(?:[lc]?dots|dotsc)(?![A-Za-z])"), r"\\ldots "),
]
_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
_MATH_MODE = re.compile(r"(?<!\\)\$|\\[(\[]|\\boxed|\\fbox|\n")
_INNER_SPACE = re.compile(r"(?<![A-Za-z])\s+|\s+(?![A-Za-z])")  # keeps the space in "\pi r"
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
        if answer.startswith(left) and answer.endswith(right) and inner and not _UNESCAPED_DOLLAR.search(inner):
            return inner.strip().rstrip(".").strip()
    return answer


def _plain_number(compact: str) -> tuple[Fraction, bool] | None:
    """``(value, exact)`` for plain integers, decimals and integer fractions; exact means no decimal point."""
    m = _PLAIN_NUMBER.fullmatch(compact)
    if m is None:
        return None
    try:
        if m["decimal"]:
            value, exact = Fraction(m["decimal"].replace(",", "")), "." not in m["decimal"]
        else:
            num, den = (m[g] for g in ("num", "den", "num1", "den1", "num2", "den2") if m[g] is not None)
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
    try:
        return Fraction(numbers[0]) if numbers else None
    except ValueError:  # over int's digit limit
        return None


def _as_latex(answer: str) -> str:
    """A bare answer is boxed so Math-Verify parses all of it (not just its last number); text is left alone."""
    return answer if _MATH_MODE.search(answer) else f"\\boxed{{{answer}}}"


# ---------------------------------------------------------------------------------------------- worker pool


class _GradingFailed(Exception):
    """A comparison ran out of time or lost its worker (never cached)."""


class _Worker:
    """One ``python -m lm_eval_swift._grading_worker`` process: a JSON line in, ``1``/``0`` out."""

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "lm_eval_swift._grading_worker"],
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
        verdict = None
        try:
            verdict = worker.ask(request, timeout)
        finally:  # a worker that did not answer (or was interrupted) may still reply later: never reuse it
            with self._cond:
                if verdict is None:
                    self._workers.discard(worker)
                    self._count -= 1
                else:
                    self._idle.append(worker)
                self._cond.notify()
            if verdict is None:
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
            workers, self._idle, self._workers, self._count = list(self._workers), [], set(), 0
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
) -> bool:
    """Ask a grading worker; raises _GradingFailed on timeout."""
    if not timeout > 0:  # also NaN: nothing can finish, and no worker should be killed for it
        raise _GradingFailed("no time to grade")
    request = {
        "gold": gold,
        "pred": pred,
        "match_types": list(match_types),
        "precision": precision,
        "strict": strict,
        "allow_set_relation_comp": allow_set_relation_comp,
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
        return _verify(gold, pred, match_types, precision, strict, allow_set_relation_comp, _timeout(timeout))
    except _GradingFailed:
        return False


def _timeout(timeout: float | None) -> float:
    return _env_number(TIMEOUT_ENV, DEFAULT_TIMEOUT) if timeout is None else timeout


@lru_cache(maxsize=65536)
def _equivalent(pred: str, gold: str, kind: str, timeout: float) -> bool:
    pred, gold = _clean(pred), _clean(gold)
    p, g = _INNER_SPACE.sub("", pred), _INNER_SPACE.sub("", gold)
    if not p or not g:
        return False
    if p == g:
        return True
    if kind == "gsm8k":
        a, b = _gsm8k_number(p), _gsm8k_number(g)
        return a is not None and a == b
    if "\\ldots" in p or "\\ldots" in g:  # sequences: Math-Verify reads "1, 2, \ldots, n" as 2
        return False
    x, y = _plain_number(p), _plain_number(g)
    if x is not None and y is not None:
        if x[0] == y[0]:
            return True
        if x[1] and y[1]:  # decimals vs fractions need Math-Verify's rounding rules
            return False
    return _verify(_as_latex(gold), _as_latex(pred), MATCH_TYPES, 6, True, False, timeout)


def is_equivalent(pred: str, gold: str, kind: str, timeout: float | None = None) -> bool:
    """Whether answer ``pred`` equals answer ``gold`` (``kind`` ``"math"`` or ``"gsm8k"``).

    Never raises for any text; gives up (False) after ``timeout`` seconds of grading (None:
    ``LM_EVAL_SWIFT_GRADE_TIMEOUT``, default 2). Not counted: starting a grading worker (once, about half a
    second) and waiting for one that other threads keep busy. Thread- and process-safe; results are cached.
    """
    _check_kind(kind)
    try:
        return _equivalent(pred, gold, kind, _timeout(timeout))
    except Exception:  # noqa: BLE001 - timeouts, lost workers and odd inputs all grade as "not equal"
        return False


def grade(response: str, gold: str, kind: str) -> bool:
    """Whether the answer extracted from ``response`` is equivalent to ``gold`` (False when none is found)."""
    pred = extract_answer(response, kind)
    return pred is not None and is_equivalent(pred, gold, kind)
