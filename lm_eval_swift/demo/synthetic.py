"""Deterministic synthetic word problems in GSM8K format, for the offline demo.

Each record is ``{"question": str, "answer": str}`` exactly like GSM8K: the answer is a worked solution, one
arithmetic step per line, ending in ``\\n#### N``. Steps use the simple ``label: a op b = c`` style (no ``<<...>>``
calculator annotations) so that a small character-level model can learn them::

    question: Mia has 14 apples. She buys 7 more. She gives 5 to Sam. Then she eats 3.
              How many apples does Mia have now?                       (one line in the record)
    answer:   Buying: 14 + 7 = 21
              Giving: 21 - 5 = 16
              Eating: 16 - 3 = 13
              #### 13

Problems have 2-4 steps (``+``, ``-``, ``*`` by 2 or 3, and an exact ``/`` as the last step), all values are
integers in ``[1, MAX_VALUE]``, the text is plain ASCII. Three scenes (a person with items, a shop, a bus) and a
few phrasings per operation; no action repeats within a question, so every step's label names one sentence.

Splits never share a question: each question text is assigned to exactly one split by a stable hash
(:func:`split_of`), and a split's generator (seeded from the split name and ``seed``) keeps only its own questions,
deduplicated. So ``make_problems("test", ...)`` and ``make_problems("train_lm", ...)`` are disjoint for any seeds.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from pathlib import Path


SPLITS = ("train_lm", "train_head", "test")
# Share of the question space (hash buckets out of 100) owned by each split.
_SPLIT_BUCKETS = {
    "train_lm": range(0, 70),
    "train_head": range(70, 90),
    "test": range(90, 100),
}

MAX_VALUE = 60  # every intermediate and final value is in [1, MAX_VALUE]
START_RANGE = (10, 40)
OPERAND_MAX = 9  # "+" and "-" operands are in [1, OPERAND_MAX]
DIVISORS = (2, 3, 4, 5)
MIN_STEPS, MAX_STEPS = 2, 4
KIND_WEIGHTS = {
    "add": 4,
    "sub": 4,
    "mul": 1,
    "div": 1,
}  # "div" is only ever the last step
SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}

NAMES = [
    ("Mia", "she"),
    ("Sam", "he"),
    ("Ava", "she"),
    ("Leo", "he"),
    ("Zoe", "she"),
    ("Max", "he"),
    ("Lily", "she"),
    ("Ben", "he"),
    ("Emma", "she"),
    ("Noah", "he"),
    ("Ella", "she"),
    ("Jack", "he"),
    ("Ruby", "she"),
    ("Owen", "he"),
    ("Nora", "she"),
    ("Luke", "he"),
    ("Anna", "she"),
    ("Tom", "he"),
    ("Ivy", "she"),
    ("Eli", "he"),
    ("Rosa", "she"),
    ("Omar", "he"),
    ("Kate", "she"),
    ("Raj", "he"),
]
ITEMS = [
    "apples",
    "marbles",
    "stickers",
    "pencils",
    "cookies",
    "cards",
    "shells",
    "stamps",
    "crayons",
    "eggs",
]
SHOPS = [
    ("bakery", "cakes"),
    ("bakery", "muffins"),
    ("florist", "roses"),
    ("toy store", "balls"),
    ("farm stand", "melons"),
    ("book store", "books"),
    ("fruit stand", "pears"),
    ("shoe store", "boots"),
]
VEHICLES = ["bus", "train", "tram", "ferry"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
ORDINALS = ["first", "second", "third", "fourth"]

# (kind, sentence); placeholders: {p} subject pronoun, {n} operand, {items} the item noun.
# Each action sentence follows a time marker ("On Tuesday, ..."), and the solution step is labelled with it.
PERSON_ACTIONS = [
    ("add", "{p} buys {n} more."),
    ("add", "{p} finds {n} more."),
    ("sub", "{p} sells {n}."),
    ("sub", "{p} gives away {n}."),
    ("mul", "the number of {items} doubles."),
    ("mul", "the number of {items} triples."),
    ("div", "{p} shares them equally among {n} friends."),
]
SHOP_ACTIONS = [
    ("add", "it buys {n} more."),
    ("add", "it gets {n} more."),
    ("sub", "it sells {n}."),
    ("sub", "it throws away {n}."),
    ("mul", "the number of {items} doubles."),
    ("div", "the {items} are packed into boxes of {n}."),
]


def _factor(sentence: str) -> int:
    return 3 if "triples" in sentence else 2


def _operand(kind: str, cur: int, rng: random.Random, factor: int = 2) -> int | None:
    """An operand for ``kind`` that keeps the value in [1, MAX_VALUE] (division: exact, result >= 2)."""
    if kind == "add":
        hi = min(OPERAND_MAX, MAX_VALUE - cur)
        return rng.randint(1, hi) if hi >= 1 else None
    if kind == "sub":
        hi = min(OPERAND_MAX, cur - 1)
        return rng.randint(1, hi) if hi >= 1 else None
    if kind == "mul":
        return factor if cur * factor <= MAX_VALUE else None
    ok = [d for d in DIVISORS if cur % d == 0 and cur // d >= 2]
    return rng.choice(ok) if ok else None


def _apply(kind: str, a: int, b: int) -> int:
    return {"add": a + b, "sub": a - b, "mul": a * b, "div": a // b}[kind]


def _sample_steps(actions, start: int, n_steps: int, rng: random.Random):
    """``n_steps`` actions with feasible operands; returns [(kind, sentence template, operand, before, after)]."""
    cur, steps = start, []
    for i in range(n_steps):
        kinds = [k for k in KIND_WEIGHTS if i == n_steps - 1 or k != "div"]
        for _ in range(10):
            kind = rng.choices(kinds, weights=[KIND_WEIGHTS[k] for k in kinds])[0]
            tmpl = rng.choice([t for k, t in actions if k == kind])
            n = _operand(kind, cur, rng, _factor(tmpl))
            if n is not None:
                break
        else:
            return None
        nxt = _apply(kind, cur, n)
        steps.append((kind, tmpl, n, cur, nxt))
        cur = nxt
    return steps


def _answer(lines: list[tuple[str, str, int, int, int]]) -> str:
    body = [f"{label}: {a} {SYMBOL[kind]} {b} = {c}" for label, kind, a, b, c in lines]
    return "\n".join(body) + f"\n#### {lines[-1][4]}"


def _days(rng: random.Random, n_steps: int) -> list[str]:
    first = rng.randrange(len(DAYS) - n_steps + 1)
    return DAYS[first : first + n_steps]


def _daily(
    rng: random.Random,
    actions,
    start: int,
    n_steps: int,
    opening: str,
    fill: dict,
    ask: str,
    ask_after_division: str,
) -> dict | None:
    """A problem whose steps happen on consecutive days ("On Tuesday, ..."), each labelled with its day.
    ``fill``: the action templates' placeholders besides ``{n}``; ``ask``/``ask_after_division``: the question."""
    steps = _sample_steps(actions, start, n_steps, rng)
    if steps is None:
        return None
    days = _days(rng, n_steps)
    sents = [opening] + [
        f"On {day}, " + tmpl.format(n=n, **fill)
        for day, (_, tmpl, n, _, _) in zip(days, steps, strict=True)
    ]
    sents.append(ask_after_division if steps[-1][0] == "div" else ask)
    lines = [
        (day, kind, a, n, b)
        for day, (kind, _, n, a, b) in zip(days, steps, strict=True)
    ]
    return {"question": " ".join(sents), "answer": _answer(lines)}


def _person(rng: random.Random, n_steps: int) -> dict | None:
    name, pron = rng.choice(NAMES)
    items = rng.choice(ITEMS)
    start = rng.randint(*START_RANGE)
    return _daily(
        rng,
        PERSON_ACTIONS,
        start,
        n_steps,
        f"{name} has {start} {items}.",
        {"p": pron, "items": items},
        f"How many {items} does {name} have now?",
        f"How many {items} does each friend get?",
    )


def _shop(rng: random.Random, n_steps: int) -> dict | None:
    shop, goods = rng.choice(SHOPS)
    start = rng.randint(*START_RANGE)
    return _daily(
        rng,
        SHOP_ACTIONS,
        start,
        n_steps,
        f"A {shop} has {start} {goods}.",
        {"items": goods},
        f"How many {goods} does the {shop} have now?",
        "How many boxes are filled?",
    )


def _vehicle(rng: random.Random, n_steps: int) -> dict | None:
    vehicle = rng.choice(VEHICLES)
    cur = start = rng.randint(*START_RANGE)
    sents, lines = [f"A {vehicle} has {start} passengers."], []
    for i in range(n_steps):
        kinds = ["add", "sub"]
        rng.shuffle(kinds)
        for kind in kinds:
            n = _operand(kind, cur, rng)
            if n is not None:
                break
        else:
            return None
        verb = "get on" if kind == "add" else "get off"
        people = "person" if n == 1 else "people"
        sents.append(f"At the {ORDINALS[i]} stop, {n} {people} {verb}.")
        nxt = _apply(kind, cur, n)
        lines.append((f"{ORDINALS[i].capitalize()} stop", kind, cur, n, nxt))
        cur = nxt
    sents.append(f"How many passengers are on the {vehicle} now?")
    return {"question": " ".join(sents), "answer": _answer(lines)}


_SCENES = (_person, _person, _shop, _vehicle)  # people twice as often


def split_of(question: str) -> str:
    """The one split that owns ``question`` (a stable hash of its text)."""
    bucket = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big") % 100
    return next(s for s, r in _SPLIT_BUCKETS.items() if bucket in r)


def make_problems(split: str, n: int, seed: int = 0) -> list[dict]:
    """``n`` distinct problems of ``split`` (one of :data:`SPLITS`), deterministic in ``(split, n, seed)``.

    The first ``k`` problems for a given ``(split, seed)`` do not depend on ``n``.
    """
    if split not in _SPLIT_BUCKETS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    rng = random.Random(f"lm-eval-swift-demo/{split}/{seed}")
    out: list[dict] = []
    seen: set[str] = set()
    while len(out) < n:
        scene = rng.choice(_SCENES)
        problem = scene(rng, rng.randint(MIN_STEPS, MAX_STEPS))
        if (
            problem is None
            or problem["question"] in seen
            or split_of(problem["question"]) != split
        ):
            continue
        seen.add(problem["question"])
        out.append(problem)
    return out


def final_answer(answer: str) -> str:
    """The ``N`` of the ``#### N`` line of a GSM8K-style answer."""
    return answer.rsplit("####", 1)[-1].strip()


def load_synthetic(split: str, questions: int, seed: int = 0, **_):
    """lm-eval ``custom_dataset`` of the demo task: ``questions`` problems of ``split``, as the library's tasks
    normalise GSM8K records."""
    from lm_eval_swift.harness.tasks import dataset_dict, normalise

    problems = make_problems(split, int(questions), int(seed))
    return dataset_dict([normalise(r, "gsm8k", i) for i, r in enumerate(problems)])


def write_jsonl(records: Iterable[dict], path: str | Path) -> Path:
    """Write one JSON object per line (creating parent dirs); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=True) + "\n")
    return path
