"""lm-eval's own ``--log_samples`` files read as rollouts, so that a run of plain ``lm_eval`` (any ``--model``: hf,
vllm, a served model) gets ``lm-eval-swift report``, ``leaderboard`` and ``rescore`` too.

lm-eval writes ``samples_<task>_<date>.jsonl`` beside ``results_<date>.json``: one JSON line per document and
filter, each with the document (``doc``), the prompt the model saw (``arguments.gen_args_0.arg_0``) and every
response of the document (``resps``: per request, its repeats). The lines of one document repeat the same
responses once per filter; the first is read. The responses are graded again here (their grades are not in the
file), under the run's grading mode (its task's metadata in the results file beside it); scores come later, by
rescoring. Documents of our tasks carry ``kind``, ``problem`` and ``answer``;
lm-eval's own GSM8K (``question``, ``answer`` ending in ``#### <n>``) and MATH (``problem``, ``solution``) documents
are read as well.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

from tqdm import tqdm

from lm_eval_swift.bon.rollouts import QuestionRollout, build_rollout, read_rollouts
from lm_eval_swift.errors import UsageError
from lm_eval_swift.grading import extract_answer


SAMPLES_FILE = re.compile(r"samples_(?P<task>.+)_(?P<date>[^_]+)\.jsonl")
"""lm-eval's name of a --log_samples file: ``samples_<task>_<date>.jsonl``."""


def is_samples_file(path: str | os.PathLike) -> bool:
    return SAMPLES_FILE.fullmatch(Path(path).name) is not None


def rollouts_path(samples: str | os.PathLike) -> Path:
    """Where the rollouts of a samples file go: ``rollouts_<task>_<date>.jsonl`` beside it, the name
    ``lm-eval-swift eval`` gives them."""
    m = SAMPLES_FILE.fullmatch(Path(samples).name)
    if m is None:
        raise UsageError(f"{samples}: not an lm_eval samples_<task>_<date>.jsonl file")
    return Path(samples).with_name(f"rollouts_{m['task']}_{m['date']}.jsonl")


def question(doc: Mapping) -> tuple[str, str, str]:
    """(kind, question text, gold answer) of a document of our tasks, of lm-eval's GSM8K or of its MATH tasks."""
    if {"kind", "problem", "answer"} <= doc.keys():
        return str(doc["kind"]), str(doc["problem"]), str(doc["answer"])
    if "question" in doc and "####" in str(doc.get("answer", "")):
        return (
            "gsm8k",
            str(doc["question"]),
            str(doc["answer"]).rsplit("####")[-1].strip(),
        )
    if "problem" in doc and ("answer" in doc or "solution" in doc):
        gold = doc.get("answer") or extract_answer(str(doc["solution"]), "math")
        return "math", str(doc["problem"]), str(gold or "")
    raise UsageError(
        f"a document with fields {sorted(doc)} is neither of our tasks', nor lm-eval's GSM8K or MATH: "
        "lm-eval-swift grades math answers only"
    )


def _record(raw: bytes, where: str) -> tuple[int, dict, str, list[str]]:
    """(doc id, doc, prompt, responses) of one line of a samples file."""
    try:
        line = json.loads(raw.decode("utf-8"))
        prompt = line["arguments"]["gen_args_0"]["arg_0"]
        responses = [r for request in line["resps"] for r in request]
        doc_id, doc = line["doc_id"], line["doc"]
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{where}: not a JSON line ({e})") from e
    except (KeyError, TypeError) as e:
        raise UsageError(
            f"{where}: not an lm_eval --log_samples record of a generate_until task (no {e})"
        ) from e
    if not isinstance(doc, dict) or not all(isinstance(r, str) for r in responses):
        raise UsageError(
            f"{where}: its doc is not an object or its resps are not texts"
        )
    return int(doc_id), doc, str(prompt), responses


def read_samples(
    path: str | os.PathLike, grading: str = "default"
) -> list[QuestionRollout]:
    """The rollouts of an lm_eval ``samples_<task>_<date>.jsonl``: one per document, its responses in the file's
    order, graded under grading mode ``grading``. A malformed line is a :class:`UsageError` naming it."""
    task = SAMPLES_FILE.fullmatch(Path(path).name)
    if task is None:
        raise UsageError(f"{path}: not an lm_eval samples_<task>_<date>.jsonl file")
    docs: dict[int, tuple[dict, str, list[str]]] = {}
    try:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if raw.strip():
                    doc_id, doc, prompt, responses = _record(raw, f"{path}:{lineno}")
                    docs.setdefault(doc_id, (doc, prompt, responses))
    except OSError as e:
        raise UsageError(
            f"{path}: cannot read the samples file ({e.strerror or e})"
        ) from e
    if not docs:
        raise UsageError(f"{path}: no samples in the file (it is empty)")
    rollouts = []
    for doc_id, (doc, prompt, responses) in tqdm(
        sorted(docs.items()), desc=f"Grading {Path(path).name}", unit="q", leave=False
    ):
        try:
            kind, text, gold = question(doc)
        except UsageError as e:
            raise UsageError(f"{path}: document {doc_id}: {e}") from e
        if not responses:
            raise UsageError(f"{path}: document {doc_id} has no responses")
        rollouts.append(
            build_rollout(
                task["task"],
                doc_id,
                kind,
                text,
                prompt,
                gold,
                responses,
                grading=grading,
            )
        )
    return rollouts


def read_rollouts_or_samples(path: str | os.PathLike) -> list[QuestionRollout]:
    """A rollouts file (:func:`~lm_eval_swift.bon.rollouts.read_rollouts`) or an lm_eval samples file
    (:func:`read_samples`), by its name. An lm-eval results JSON is a :class:`UsageError` naming the files that
    hold the responses."""
    name = Path(path).name
    if is_samples_file(path):
        return read_samples(path, run_grading(path))
    if name.endswith(".json"):
        raise UsageError(results_instead(path))
    return list(read_rollouts(path))


def run_grading(samples: str | os.PathLike) -> str:
    """The grading mode of the run that wrote ``samples``: ``grading`` of its task's metadata in the
    ``results_<date>.json`` beside it (``--metadata '{"grading": "paper"}'``), else ``default``."""
    m = SAMPLES_FILE.fullmatch(Path(samples).name)
    results = Path(samples).with_name(f"results_{m['date']}.json") if m else None
    try:
        config = json.loads(results.read_text(encoding="utf-8"))["configs"][m["task"]]
        return str(config.get("metadata", {}).get("grading", "default"))
    except (AttributeError, OSError, ValueError, KeyError, TypeError):
        return "default"


def results_instead(path: str | os.PathLike) -> str:
    """The message for an lm-eval results JSON given where responses are needed, naming the files beside it."""
    folder = Path(path).parent
    date = Path(path).stem.rsplit("_", 1)[-1]
    beside = sorted(
        p.name
        for p in folder.glob(f"*_{date}.jsonl*")
        if p.name.startswith(("rollouts_", "samples_"))
    )
    found = f"beside it: {', '.join(beside)}" if beside else "none is beside it"
    return (
        f"{path} is an lm-eval results file, which holds no responses: give the rollouts_<task>_<date>.jsonl that "
        f"lm-eval-swift eval writes beside it, or the samples_<task>_<date>.jsonl of an lm_eval run with "
        f"--log_samples ({found})"
    )
