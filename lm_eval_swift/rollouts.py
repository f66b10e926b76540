"""The rollouts file: one JSON line per question with its prompt, gold answer and all N graded responses.

A rollouts file is what every row of the results table is computed from, so ``lm-eval-swift report`` can
recompute the table, and ``rescore`` can add scores, without sampling again.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from lm_eval_swift.grading import extract_answer, is_equivalent
from lm_eval_swift.responses import response_tokens_from_text


@dataclass
class Response:
    """One graded sample. ``correct`` is 1.0/0.0; ``answer_class`` indexes the first response of the question
    whose extracted answer is equivalent to this one's (-1 when no answer was extracted)."""

    text: str
    answer: str | None
    correct: float
    answer_class: int
    num_tokens: int
    token_ids: list[int] = field(default_factory=list)
    finish: str | None = None
    scores: dict[str, float] = field(default_factory=dict)

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
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict) -> QuestionRollout:
        d = dict(d)
        d["responses"] = [Response(**r) for r in d["responses"]]
        return cls(**d)


def answer_classes(answers: Sequence[str | None], kind: str) -> list[int]:
    """Group answers into equivalence classes, each named by the index of its first member (-1: no answer).

    Greedy in order, so the classes of the first k answers are the classes of any longer prefix restricted
    to them. Each answer is compared with the representative of every earlier class (representative first).
    """
    reps: list[int] = []
    out: list[int] = []
    for i, ans in enumerate(answers):
        if ans is None:
            out.append(-1)
            continue
        match = next((r for r in reps if answers[r] == ans or is_equivalent(ans, answers[r], kind)), None)
        if match is None:
            reps.append(i)
            match = i
        out.append(match)
    return out


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
) -> QuestionRollout:
    """Grade ``samples`` (plain strings or :class:`ScoredText`) against ``gold`` and group their answers.

    A plain string's response tokens are recovered from its text with ``tokenizer`` when given (see
    :func:`~lm_eval_swift.responses.response_tokens_from_text`; ``max_gen_toks`` is the run's generation limit).
    """
    if tokenizer is not None and max_gen_toks is None:
        raise ValueError("build_rollout: a tokenizer needs the run's max_gen_toks")
    answers = [extract_answer(s, kind) for s in samples]
    classes = answer_classes(answers, kind)
    responses = []
    for text, ans, cls in zip(samples, answers, classes):
        token_ids = list(getattr(text, "token_ids", ()))
        if not token_ids and tokenizer is not None:
            token_ids = response_tokens_from_text(str(text), tokenizer, max_gen_toks)
        correct = ans is not None and is_equivalent(ans, gold, kind)
        responses.append(
            Response(
                text=str(text),
                answer=ans,
                correct=float(correct),
                answer_class=cls,
                num_tokens=len(token_ids),
                token_ids=token_ids,
                finish=getattr(text, "finish", None),
                scores=dict(getattr(text, "scores", {})),
            )
        )
    prompt_ids = list(getattr(samples[0], "prompt_token_ids", ())) if samples else []
    return QuestionRollout(task, doc_id, kind, question, prompt, gold, responses, prompt_ids)


def write_rollouts(rollouts: Iterable[QuestionRollout], path: str | os.PathLike) -> Path:
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
    """Read a rollouts file (``.jsonl``, or gzip-compressed ``.jsonl.gz``); a malformed line is an error naming the
    file and line number."""
    with _opener(path)(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(tqdm(f, desc=f"Reading {Path(path).name}", unit="q", leave=False), 1):
            if not line.strip():
                continue
            try:
                yield QuestionRollout.from_dict(json.loads(line))
            except (json.JSONDecodeError, TypeError, KeyError) as e:
                raise ValueError(f"{path}:{lineno}: not a rollouts record ({e})") from e


def _opener(path: str | os.PathLike):
    """``gzip.open`` for ``*.gz`` paths, else ``open``."""
    return gzip.open if str(path).endswith(".gz") else open
