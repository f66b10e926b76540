"""Grader throughput: ``lm_eval_swift.grading.grade`` on MATH golds and on sampled-looking answers.

1. golds: all 5000 MATH test solutions graded against their own answers (``grade(solution, answer, "math")``).
2. sampled: 20,000 generated responses to MATH test problems that look like model samples (fixed seed): the worked
   solution with the gold boxed, the gold in an equivalent form (``0.5`` for ``\\frac12``, ``\\dfrac``, ``a/b``,
   ``\\left(``, spacing, ``x=``), decimals, wrong answers (another problem's answer, off by one, flipped
   fractions), malformed LaTeX (unbalanced braces, empty boxes, truncated expressions), long rambling text with
   or without an answer, ``Final Answer:``/``The answer is`` endings, and a few hostile ones (towers of powers,
   huge factorials, thousands of nested braces, 20,000-digit numbers).

Reported: answers per second (wall time, one caller handing all answers to ``grade_all``, as the project grades a
question's samples; the Math-Verify comparisons run in ``LM_EVAL_SWIFT_GRADE_WORKERS`` worker processes, fed by
twice as many threads), how many comparisons reached the
Math-Verify worker, the share that hit the per-comparison timeout (``LM_EVAL_SWIFT_GRADE_TIMEOUT``, default 2 s),
the share graded correct per kind of answer; and ``is_equivalent`` with its cache cleared vs warm (the same pairs
again), alternating, median of the per-pair ratios. Each pass starts with the cache cleared; the worker processes
are started before timing (their one-off start is not a per-answer cost). Appends a line to RESULTS.md.

    python benchmarks/grading_throughput.py --quick      # < 1 minute on 2 cores
"""

from __future__ import annotations

import collections
import json
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import _common as c

from lm_eval_swift import grading


HOSTILE = [
    "\\boxed{9^{9^{9^{9^{9^{9}}}}}}",
    "\\boxed{2^{2^{2^{2^{2^{2^{2}}}}}}}",
    "\\boxed{100000!}",
    "\\boxed{(10^{10^{10}})!}",
    "\\boxed{" + "{" * 3000 + "1" + "}" * 3000 + "}",
    "\\boxed{" + "9" * 20000 + "}",
    "\\boxed{" + "\\sqrt{" * 400 + "2" + "}" * 400 + "}",
    "\\boxed{x" + "+x^{2}" * 3000 + "}",
    "\\boxed{(1+x)^{1000000}-(1+x)^{999999}}",
    "\\boxed{\\sum_{n=1}^{10^{100}} n^{n}}",
    "\\boxed{\\int_0^1 e^{x^{2}}\\,dx}",
    "\\boxed{" + "\\frac{1}{" * 300 + "2" + "}" * 300 + "}",
    "The answer is $" + "\\left(" * 2000 + "1" + "\\right)" * 2000 + "$.",
    "\\boxed{" + "a," * 5000 + "b}",
    "\\boxed{1e1000000}",
    "\\boxed{\\begin{pmatrix}"
    + "&".join(["1"] * 400)
    + "\\\\"
    + "&".join(["2"] * 400)
    + "\\end{pmatrix}}",
]
FILLER = [
    "Let me think about this step by step.",
    "Wait, that does not look right, let me recompute.",
    "We can simplify this expression further.",
    "Substituting back into the original equation gives the same result.",
    "Hmm, so the next step is to consider the cases separately.",
    "By symmetry, the other case is the same.",
]
SLOT = "\x00"  # where the boxed answer goes in a solution
KINDS = [
    "boxed",
    "equivalent",
    "decimal",
    "wrong",
    "malformed",
    "rambling",
    "anchored",
    "hostile",
]
WEIGHTS = [0.25, 0.20, 0.05, 0.20, 0.10, 0.12, 0.0775, 0.0025]


def load_math(directory: Path) -> list[dict]:
    return [
        json.loads(line)
        for line in (directory / "math_test.jsonl").read_text().splitlines()
        if line.strip()
    ]


def _as_fraction(answer: str) -> Fraction | None:
    m = re.fullmatch(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}", answer)
    if m:
        value = Fraction(int(m[2]), int(m[3]))
        return -value if m[1] else value
    m = re.fullmatch(r"-?\d+", answer)
    return Fraction(int(answer)) if m else None


def equivalent_form(answer: str, rng: random.Random) -> str:
    """The same answer written differently (or the answer itself when no rewrite applies)."""
    value = _as_fraction(answer)
    forms = [
        f" {answer} ",
        f"\\left({answer}\\right)" if answer.startswith("(") else f"{{{answer}}}",
        f"x={answer}",
    ]
    if value is not None and value.denominator == 1:
        n = value.numerator
        forms += [
            f"{n}.0",
            f"\\frac{{{2 * n}}}{{2}}",
            f"{n:,}" if abs(n) >= 1000 else f"+{n}" if n > 0 else str(n),
        ]
    elif value is not None:
        p, q = value.numerator, value.denominator
        forms += [f"{p}/{q}", f"\\dfrac{{{p}}}{{{q}}}", f"\\frac{{{2 * p}}}{{{2 * q}}}"]
        if 10**6 % q == 0:
            forms.append(str(float(value)))
    else:
        forms += [
            answer.replace("\\frac", "\\dfrac"),
            answer.replace(",", ", "),
            f"\\displaystyle {answer}",
        ]
    return rng.choice(forms)


def wrong_form(answer: str, others: list[str], rng: random.Random) -> str:
    value = _as_fraction(answer)
    choices = [rng.choice(others)]
    if value is not None and value.denominator == 1:
        choices.append(str(value.numerator + rng.choice([-1, 1, 10])))
    elif value is not None and value.numerator:
        choices.append(f"\\frac{{{value.denominator}}}{{{value.numerator}}}")
    return rng.choice(choices)


def malformed(answer: str, rng: random.Random) -> str:
    return rng.choice(
        [
            f"\\boxed{{{answer}",  # never closed
            "\\boxed{}",
            f"\\boxed{{{answer[: max(1, len(answer) // 2)]}",
            f"$\\boxed{{\\frac{{{answer}}}{{}}$",
            f"\\boxed{{{answer}}}}}}}",
            f"\\boxed{{\\left( {answer} \\right]}}",
            f"\\boxed{{\\begin{{pmatrix}} {answer} & }}",
            f"\\boxed{{\\sqrt{{{answer}}}",
            f"$${answer}$",
            f"\\boxed{{{answer}^{{}}_{{}}}}",
        ]
    )


def sampled_responses(
    rows: list[dict], count: int, seed: int = 0
) -> list[tuple[str, str, str]]:
    """``count`` (kind, response, gold) triples that look like sampled solutions to MATH test problems."""
    rng = random.Random(seed)
    answers = [r["answer"] for r in rows]
    out = []
    for i in range(count):
        row = rng.choice(rows)
        gold, solution = row["answer"], row["solution"]
        kind = (
            "hostile" if i % 400 == 199 else rng.choices(KINDS[:-1], WEIGHTS[:-1])[0]
        )  # 0.25% hostile
        body = solution.replace(f"\\boxed{{{gold}}}", SLOT)
        if SLOT not in body:
            body = solution + f" So the answer is {SLOT}."

        def put(
            boxed: str, body=body
        ) -> str:  # the solution with its boxed answer replaced
            return body.replace(SLOT, boxed)

        if kind == "boxed":
            text = put(f"\\boxed{{{gold}}}")
        elif kind == "equivalent":
            text = put(f"\\boxed{{{equivalent_form(gold, rng)}}}")
        elif kind == "decimal":
            value = _as_fraction(gold)
            shown = (
                f"{float(value):.{rng.choice([2, 3, 6])}f}"
                if value is not None
                else gold
            )
            text = put(f"\\boxed{{{shown}}}")
        elif kind == "wrong":
            text = put(f"\\boxed{{{wrong_form(gold, answers, rng)}}}")
        elif kind == "malformed":
            text = put(malformed(gold, rng))
        elif kind == "rambling":
            sentences = [
                s for s in re.split(r"(?<=\.)\s+", put(gold)) if s
            ] + FILLER  # gold not boxed
            text = " ".join(rng.choice(sentences) for _ in range(rng.randint(20, 120)))
            if rng.random() < 0.5:
                text += f" The answer is ${gold if rng.random() < 0.5 else rng.choice(answers)}$."
            else:
                text = text[
                    : rng.randint(len(text) // 2, len(text))
                ]  # cut off mid-sentence, no answer
        elif kind == "anchored":
            shown = gold if rng.random() < 0.6 else equivalent_form(gold, rng)
            unboxed = put(gold)  # the worked solution without its box, cut short
            text = rng.choice(
                [
                    f"{unboxed[:200]}\nFinal Answer: The final answer is ${shown}$. I hope it is correct.",
                    f"{unboxed[:300]} The answer is ${shown}$.",
                    f"{unboxed[:100]}\n#### {shown}",
                ]
            )
        else:
            text = put(gold)[:200] + " Therefore " + HOSTILE[(i // 400) % len(HOSTILE)]
        out.append((kind, text, gold))
    return out


class Counting:
    """Counts grading.compare._verify calls (comparisons that reach a Math-Verify worker) and timeouts (never cached)."""

    def __init__(self):
        self.calls = self.timeouts = 0
        self._verify = grading.compare._verify
        self._lock = threading.Lock()  # grade_all calls from several threads

    def __call__(self, *args, **kwargs):
        with self._lock:
            self.calls += 1
        try:
            return self._verify(*args, **kwargs)
        except grading.pool.GradingFailed:
            with self._lock:
                self.timeouts += 1
            raise

    def reset(self):
        self.calls = self.timeouts = 0


def grade_pass(items, counter: Counting) -> tuple[float, list[bool]]:
    """Grade every (response, gold) in turn, cache cleared first -> (wall seconds, verdicts)."""
    grading.compare._equivalent.cache_clear()
    counter.reset()
    start = time.perf_counter()
    verdicts = grading.grade_all(
        [response for response, _ in items], [gold for _, gold in items], "math"
    )
    return time.perf_counter() - start, verdicts


def main() -> None:
    parser = c.base_parser(__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1000 golds, 1500 sampled answers, 3 x 500 cache pairs",
    )
    parser.add_argument(
        "--data-dir",
        help="folder with math_test.jsonl (default: ../shared/data and others)",
    )
    parser.add_argument(
        "--golds", type=int, default=5000, help="how many MATH test golds (all: 5000)"
    )
    parser.add_argument("--sampled", type=int, default=20000)
    parser.add_argument("--cache-pairs", type=int, default=5, help="cold/warm pairs")
    parser.add_argument(
        "--cache-items", type=int, default=2000, help="answer pairs per cold/warm run"
    )
    args = parser.parse_args()
    if args.quick:
        args.golds, args.sampled, args.cache_pairs, args.cache_items = (
            1000,
            1500,
            3,
            500,
        )
    directory = c.data_dir(args.data_dir)
    if directory is None:
        print(
            "math_test.jsonl not found: pass --data-dir or set LM_EVAL_SWIFT_DATA; skipped"
        )
        return
    rows = load_math(directory)
    counter = Counting()
    grading.compare._verify = counter
    timeout, workers = grading.compare._timeout(None), grading.pool.max_workers()
    with ThreadPoolExecutor(
        workers
    ) as pool:  # start every worker (their start is not charged to any answer)
        list(
            pool.map(
                lambda _: grading.verify_strings("1", "1", timeout=60), range(workers)
            )
        )

    golds = [(r["solution"], r["answer"]) for r in rows[: args.golds]]
    t_golds, ok_golds = grade_pass(golds, counter)
    gold_calls, gold_timeouts = counter.calls, counter.timeouts

    sampled = sampled_responses(rows, args.sampled)
    t_sampled, verdicts = grade_pass([(t, g) for _, t, g in sampled], counter)
    calls, timeouts = counter.calls, counter.timeouts
    by_kind = collections.defaultdict(list)
    for (kind, _, _), ok in zip(sampled, verdicts, strict=True):
        by_kind[kind].append(ok)

    # cache cold vs warm: is_equivalent on extracted (answer, gold) pairs; hostile ones left out (timeouts are
    # never cached, so they would dominate both)
    pairs = [
        (grading.extract_answer(t, "math"), g)
        for kind, t, g in sampled
        if kind != "hostile"
    ]
    pairs = [(a, g) for a, g in pairs if a is not None][: args.cache_items]
    cold, warm = [], []
    for _ in range(args.cache_pairs):
        grading.compare._equivalent.cache_clear()
        for runs in (cold, warm):
            start = time.perf_counter()
            for a, g in pairs:
                grading.is_equivalent(a, g, "math")
            runs.append(time.perf_counter() - start)
    cache_x = [a / b for a, b in zip(cold, warm, strict=True)]

    print(c.describe(c.torch.device("cpu"), torch_threads=False))
    print(
        f"grading: timeout {timeout:g} s per comparison, {workers} worker process(es); wall time, one caller"
    )
    print(
        f"golds: {len(golds)} MATH test solutions vs their answers: {len(golds) / t_golds:.0f} answers/s "
        f"({t_golds:.2f} s), {sum(ok_golds)}/{len(golds)} graded correct, {gold_calls} reached Math-Verify, "
        f"{gold_timeouts} timed out"
    )
    print(
        f"sampled: {len(sampled)} sampled-looking answers: {len(sampled) / t_sampled:.0f} answers/s ({t_sampled:.1f} s), "
        f"{calls} ({100 * calls / len(sampled):.1f}%) reached Math-Verify, {timeouts} "
        f"({100 * timeouts / len(sampled):.2f}%) hit the timeout"
    )
    print(
        "  graded correct by kind: "
        + ", ".join(
            f"{k} {sum(v)}/{len(v)}" for k in KINDS for v in [by_kind.get(k, [])] if v
        )
    )
    print(
        f"is_equivalent on {len(pairs)} answer pairs: cache cold {c.median(cold):.3f} s vs warm {c.median(warm):.4f} s "
        f"-> cold / warm x{c.median(cache_x):.0f} (per pair {c.spread(cache_x)}); "
        f"{len(pairs) / c.median(cold):.0f} vs {len(pairs) / c.median(warm):.0f} pairs/s"
    )
    setup = (
        f"{'quick' if args.quick else 'full'}: {len(golds)} golds, {len(sampled)} sampled, timeout {timeout:g} s, "
        f"{workers} workers"
    )
    if not args.no_results:
        c.append_result(
            "grading_throughput.py",
            [
                "machine",
                "setup",
                "golds answers/s",
                "sampled answers/s",
                "sampled to Math-Verify",
                "sampled timed out",
                "is_equivalent cold / warm x",
                "load",
            ],
            [
                f"{c.cpu_model()}, {c.os.cpu_count()} CPUs",
                setup,
                f"{len(golds) / t_golds:.0f}",
                f"{len(sampled) / t_sampled:.0f}",
                f"{100 * calls / len(sampled):.1f}%",
                f"{timeouts} ({100 * timeouts / len(sampled):.2f}%)",
                f"{c.median(cache_x):.0f}",
                c.load_note(),
            ],
        )


if __name__ == "__main__":
    main()
