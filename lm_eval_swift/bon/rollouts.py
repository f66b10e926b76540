"""The rollouts file: one JSON line per question with its prompt, gold answer and all N graded responses.

A rollouts file is what every row of the results table is computed from, so ``lm-eval-swift report`` can
recompute the table, and ``rescore`` can add scores, without sampling again.
"""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from lm_eval_swift.bon.samples import response_tokens_from_text
from lm_eval_swift.errors import UsageError
from lm_eval_swift.grading import extract_answer, grade_all, is_equivalent


@dataclass
class Response:
    """One graded sample. ``correct`` is 1.0/0.0; ``answer_class`` indexes the first response of the question
    whose extracted answer is equivalent to this one's (-1 when no answer was extracted: the "no answer" class).
    ``regraded_from``: the ``answer``, ``correct`` and ``answer_class`` it was sampled with, once regraded
    (:func:`lm_eval_swift.regrade.regrade_rollout`); written only when set."""

    text: str
    answer: str | None
    correct: float
    answer_class: int
    num_tokens: int
    token_ids: list[int] = field(default_factory=list)
    finish: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    regraded_from: dict[str, object] | None = None

    def __str__(self) -> str:
        return self.text


@dataclass
class QuestionRollout:
    """A question (its text, and the prompt as the model saw it), its gold answer and its N responses in
    sampling order. ``costs`` records, per scorer, what scoring cost: ``seconds_per_sample`` and ``parameters``."""

    task: str
    doc_id: int
    kind: str
    question: str
    prompt: str
    gold: str
    responses: list[Response]
    prompt_token_ids: list[int] = field(default_factory=list)
    costs: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> str:
        record = asdict(self)
        for r in record["responses"]:
            if r["regraded_from"] is None:
                del r["regraded_from"]
        return json.dumps(record, ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict) -> QuestionRollout:
        """A record as :meth:`to_json` writes it; :class:`UsageError` naming the field that is missing or mistyped."""
        _check_fields(d, QuestionRollout, "")
        if not d["responses"]:
            raise UsageError("no responses")
        for i, r in enumerate(d["responses"]):
            _check_fields(r, Response, f"response {i}: ")
            if not 0 <= r["correct"] <= 1:
                raise UsageError(
                    f"response {i}: correct is {r['correct']!r}, expected 0 or 1"
                )
            if not all(_is(v, NUMBER) for v in (r.get("scores") or {}).values()):
                raise UsageError(
                    f"response {i}: scores {r['scores']!r} are not all numbers"
                )
        d = dict(d)
        d["responses"] = [Response(**r) for r in d["responses"]]
        return cls(**d)


NUMBER = (int, float)
NULL = type(None)
# the JSON types from_dict checks, per dataclass and field (which fields exist and are required: the dataclasses)
FIELD_TYPES: dict[type, dict[str, tuple[type, ...]]] = {
    QuestionRollout: {
        "task": (str,),
        "doc_id": (int,),
        "kind": (str,),
        "question": (str,),
        "prompt": (str,),
        "gold": (str,),
        "responses": (list,),
        "prompt_token_ids": (list,),
        "costs": (dict,),
    },
    Response: {
        "text": (str,),
        "answer": (str, NULL),
        "correct": NUMBER,
        "answer_class": (int,),
        "num_tokens": (int,),
        "token_ids": (list,),
        "finish": (str, NULL),
        "scores": (dict,),
        "regraded_from": (dict, NULL),
    },
}
TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    list: "a list",
    dict: "an object",
    NULL: "null",
}


def _is(value, types: tuple[type, ...]) -> bool:
    """isinstance, except that JSON true/false count as numbers only, not as integers."""
    return isinstance(value, types) and (not isinstance(value, bool) or types == NUMBER)


def _check_fields(record, cls: type, where: str) -> None:
    """:class:`UsageError` unless ``record`` is an object with every required field of dataclass ``cls``, each of
    its JSON type, and no other field."""
    if not isinstance(record, dict):
        raise UsageError(f"{where}expected a JSON object, got {type(record).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    for name, f in known.items():
        if (
            name not in record
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ):
            raise UsageError(f"{where}missing field {name!r}")
    unknown = sorted(set(record) - set(known))
    if unknown:
        raise UsageError(f"{where}unknown fields {unknown}")
    for name, types in FIELD_TYPES[cls].items():
        if name in record and not _is(record[name], types):
            expected = (
                "a number"
                if types == NUMBER
                else " or ".join(TYPE_NAMES[t] for t in types)
            )
            raise UsageError(
                f"{where}field {name!r} is {record[name]!r}, expected {expected}"
            )


def answer_classes(
    answers: Sequence[str | None], kind: str, grading: str = "default"
) -> list[int]:
    """Group answers into equivalence classes, each named by the index of its first member (-1: no answer).

    Greedy in order, so the classes of the first k answers are the classes of any longer prefix restricted
    to them. Each answer is compared with the representative of every earlier class (representative first),
    under grading mode ``grading`` (see :func:`lm_eval_swift.grading.is_equivalent`).
    """
    reps: list[int] = []
    out: list[int] = []
    for i, ans in enumerate(answers):
        if ans is None:
            out.append(-1)
            continue
        match = next(
            (
                r
                for r in reps
                if answers[r] == ans
                or is_equivalent(ans, answers[r], kind, mode=grading)
            ),
            None,
        )
        if match is None:
            reps.append(i)
            match = i
        out.append(match)
    return out


def is_truncated(
    finish: str | None, num_tokens: int, max_gen_toks: int | None = None
) -> bool:
    """Whether a response was cut off at the token limit: its ``finish`` says ``"length"`` (hf-swift), or, where
    the model does not say (plain ``--model hf``), it reached ``max_gen_toks`` tokens."""
    if finish is not None:
        return finish == "length"
    return max_gen_toks is not None and num_tokens >= max_gen_toks


def grade_samples(
    texts: Sequence[str],
    gold: str,
    kind: str,
    grading: str = "default",
    truncated: Sequence[bool] | None = None,
) -> tuple[list[str | None], list[bool], list[int]]:
    """The stated answers, verdicts and answer classes of one question's samples (``truncated``: cut off at the
    token limit, per sample)."""
    cut = [False] * len(texts) if truncated is None else list(truncated)
    answers = [extract_answer(t, kind, c) for t, c in zip(texts, cut, strict=True)]
    correct = grade_all(
        texts, [gold] * len(texts), kind, grading, cut
    )  # all workers at once
    return answers, correct, answer_classes(answers, kind, grading)


def build_rollout(
    task: str,
    doc_id: int,
    kind: str,
    question: str,
    prompt: str,
    gold: str,
    samples: Sequence[str],
    tokenizer=None,
    max_gen_toks: int | None = None,
    grading: str = "default",
) -> QuestionRollout:
    """Grade ``samples`` (plain strings or :class:`Sample`) against ``gold`` under grading mode ``grading``
    and group their answers.

    A plain string's response tokens are recovered from its text with ``tokenizer`` when given (see
    :func:`~lm_eval_swift.bon.samples.response_tokens_from_text`; ``max_gen_toks`` is the run's generation limit).
    """
    if tokenizer is not None and max_gen_toks is None:
        raise ValueError("build_rollout: a tokenizer needs the run's max_gen_toks")
    token_ids = []
    for text in samples:
        ids = list(getattr(text, "token_ids", ()))
        if not ids and tokenizer is not None:
            ids = response_tokens_from_text(str(text), tokenizer, max_gen_toks)
        token_ids.append(ids)
    finishes = [getattr(text, "finish", None) for text in samples]
    cut = [
        is_truncated(finish, len(ids), max_gen_toks)
        for finish, ids in zip(finishes, token_ids, strict=True)
    ]
    answers, correct, classes = grade_samples(
        [str(s) for s in samples], gold, kind, grading, cut
    )
    responses = []
    for text, ans, cls, ok, ids, finish in zip(
        samples, answers, classes, correct, token_ids, finishes, strict=True
    ):
        responses.append(
            Response(
                text=str(text),
                answer=ans,
                correct=float(ok),
                answer_class=cls,
                num_tokens=len(ids),
                token_ids=ids,
                finish=finish,
                scores=dict(getattr(text, "scores", {})),
            )
        )
    prompt_ids = list(getattr(samples[0], "prompt_token_ids", ())) if samples else []
    return QuestionRollout(
        task, doc_id, kind, question, prompt, gold, responses, prompt_ids
    )


def grade(
    task: str,
    docs: Sequence[tuple[int, dict, str]],
    samples: Sequence[Sequence[str]],
    tokenizer=None,
    max_gen_toks: int | None = None,
    grading: str = "default",
) -> list[QuestionRollout]:
    """Grade each question's samples under grading mode ``grading``: ``docs`` holds (doc id, doc, prompt) per
    question, a doc carrying ``kind``, ``problem`` and ``answer``. ``tokenizer`` (with ``max_gen_toks``) gives token
    ids to samples that come as plain text."""
    return [
        build_rollout(
            task,
            doc_id,
            doc["kind"],
            doc["problem"],
            prompt,
            doc["answer"],
            resps,
            tokenizer,
            max_gen_toks,
            grading,
        )
        for (doc_id, doc, prompt), resps in tqdm(
            zip(docs, samples, strict=True),
            total=len(docs),
            desc=f"Grading {task}",
            unit="q",
        )
    ]


def write_rollouts(
    rollouts: Iterable[QuestionRollout], path: str | os.PathLike
) -> Path:
    """Write atomically (temp file + rename): a kill mid-write never leaves a truncated file. A path ending in
    ``.gz`` is gzip-compressed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with _opener(path)(tmp, "wt", encoding="utf-8") as f:
        for r in rollouts:
            f.write(r.to_json() + "\n")
    os.replace(tmp, path)
    return path


def read_rollouts(path: str | os.PathLike) -> Iterator[QuestionRollout]:
    """Read a rollouts file (``.jsonl``, or gzip-compressed ``.jsonl.gz``). A missing or empty file, or a malformed
    line, is a :class:`UsageError` naming the file (and line number)."""
    try:
        f = _opener(path)(path, "rb")
    except OSError as e:
        raise UsageError(
            f"{path}: cannot read the rollouts file ({e.strerror or e})"
        ) from e
    count = 0
    with f, tqdm(f, desc=f"Reading {Path(path).name}", unit="q", leave=False) as bar:
        lines = iter(bar)
        for lineno in itertools.count(1):
            try:
                raw = next(lines, None)
            except (EOFError, OSError, zlib.error) as e:  # a truncated or corrupt .gz
                raise UsageError(f"{path}: corrupt compressed file ({e})") from e
            if raw is None:
                break
            if not raw.strip():
                continue
            try:
                record = QuestionRollout.from_dict(json.loads(raw.decode("utf-8")))
            except (UnicodeDecodeError, json.JSONDecodeError, UsageError) as e:
                raise UsageError(f"{path}:{lineno}: not a rollouts record ({e})") from e
            count += 1
            yield record
    if not count:
        raise UsageError(f"{path}: no rollouts in the file (it is empty)")


def _opener(path: str | os.PathLike):
    """``gzip.open`` for ``*.gz`` paths, else ``open``."""
    return gzip.open if str(path).endswith(".gz") else open
