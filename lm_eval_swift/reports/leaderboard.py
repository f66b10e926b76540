"""The paper's best-of-N table over several models: rows = selectors, columns = model x k (+ an Average per k),
from lm-eval results JSON files (their ``acc`` rows as they are) and/or rollouts files (recomputed), plus each
score's cost per sample and AUROC.

Two BoN@k estimators for rollouts: ``first`` (the first k of the N samples, as the paper, lm-eval's rows and
``lm-eval-swift report``) and ``subsets`` (the mean over random k-subsets of the N samples, all of them where
C(N, k) is small). Both report a standard error across questions.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import random
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from lm_eval_swift.bon.metrics import auroc, within_question_auroc
from lm_eval_swift.bon.rollouts import QuestionRollout
from lm_eval_swift.bon.rows import BON_KS as DEFAULT_KS
from lm_eval_swift.bon.rows import bon_table, sample_counts
from lm_eval_swift.errors import UsageError
from lm_eval_swift.log_samples import read_rollouts_or_samples
from lm_eval_swift.paths import model_basename


ESTIMATORS = {
    "first": "the first k of the N samples (the paper's and lm-eval's rows)",
    "subsets": "the mean over random k-subsets of the N samples ({subsets} per question, every subset where C(N, k) "
    "is at most that; seed {seed})",
}
ROW_KEY = re.compile(
    r"acc,(?P<row>[^@]+)(?:@(?P<k>\d+))?"
)  # lm-eval's "acc,<row>[@k]"; a row without @k is k=1

SCORES_HEAD = (
    "| model | task | score | kind | seconds/sample | parameters | tokens/sample | FLOPs/sample (est.) | AUROC "
    "| within-question AUROC |"
)
FLOPS_NOTE = (
    "FLOPs per sample are estimates, 2 x parameters x tokens: a reward model reads question + response (question "
    "tokens estimated from characters at the responses' tokens per character), a SWIFT head only the response "
    "tokens (its parameters when given with --head-parameters)."
)

Group = tuple[str, str]  # (model, task)
CellKey = tuple[str, int]  # (selector row, k)


@dataclass(frozen=True)
class Cell:
    """One accuracy with its standard error across questions (NaN when unknown) and where it came from
    (``rollouts``: recomputed with the leaderboard's estimator; ``results``: lm-eval's value as it is)."""

    value: float
    stderr: float
    source: str


@dataclass(frozen=True)
class ScoreStats:
    """A score's cost and ranking quality on one model's rollouts. Costs are per scored sample; ``flops_per_sample``
    is an estimate (2 x parameters x tokens); ``None`` means unknown."""

    model: str
    task: str
    score: str
    kind: str  # "reward model" (has recorded costs) or "SWIFT head"
    seconds_per_sample: float | None
    parameters: float | None
    tokens_per_sample: float
    flops_per_sample: float | None
    auroc: float
    within_question_auroc: float


def _check_estimator(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise UsageError(
            f"unknown estimator {estimator!r}: use one of {', '.join(ESTIMATORS)}"
        )


def _subsets(
    n: int, k: int, estimator: str, count: int, rng: random.Random
) -> list[tuple[int, ...]]:
    """The k-subsets of range(n) whose selections are averaged."""
    if estimator == "first":
        return [tuple(range(k))]
    if math.comb(n, k) <= count:
        return list(itertools.combinations(range(n), k))
    return [tuple(sorted(rng.sample(range(n), k))) for _ in range(count)]


def bon_estimates(
    rollouts: Sequence[QuestionRollout],
    ks: Sequence[int] = DEFAULT_KS,
    estimator: str = "first",
    *,
    subsets: int = 64,
    seed: int = 0,
    etas: Sequence[float] = (),
) -> dict[CellKey, Cell]:
    """BoN@k of every row of :func:`~lm_eval_swift.bon.rows.bon_table` (its cells with k in ``ks``): per question, the mean over
    the estimator's k-subsets of the row's correctness (each subset scored by ``bon_table`` as a question of its
    own), then the mean and standard error across questions. ``first`` reproduces ``bon_table``, also for
    questions with different N (each question's subsets come from its own N; ``mean`` is the mean over all of a
    question's samples). ``etas``: the filter-then-vote rows' percentages."""
    _check_estimator(estimator)
    layout = bon_table(rollouts, ks, etas=etas)
    keys = [(row, k) for row, cols in layout.items() for k in cols if k in ks]
    sizes = sorted({k for _, k in keys})
    n = sample_counts(rollouts)[1]
    per_question: dict[CellKey, list[float]] = {key: [] for key in keys}
    for q in rollouts:
        rng = random.Random(f"{seed}/{q.task}/{q.doc_id}")
        nq = len(q.responses)
        values: dict[CellKey, float] = {
            ("mean", n): statistics.fmean(r.correct for r in q.responses)
        }
        for k in (
            k for k in sizes if k <= nq
        ):  # only mean@N reaches past the smallest N
            chosen = _subsets(nq, k, estimator, subsets, rng)
            picks = [replace(q, responses=[q.responses[i] for i in s]) for s in chosen]
            table = bon_table(
                picks, [k], warn=False, etas=etas
            )  # the set was checked above
            values.update(
                ((row, k), cols[k])
                for row, cols in table.items()
                if k in cols and row != "mean"
            )
        for key, column in per_question.items():
            if key not in values:
                raise UsageError(
                    f"{q.task} question {q.doc_id} has no {key[0]!r} row: score every question alike"
                )
            column.append(values[key])
    return {
        key: Cell(statistics.fmean(v), _stderr(v), "rollouts")
        for key, v in per_question.items()
    }


def _stderr(values: Sequence[float]) -> float:
    return (
        statistics.stdev(values) / math.sqrt(len(values))
        if len(values) > 1
        else math.nan
    )


def score_stats(
    group: Group,
    rollouts: Sequence[QuestionRollout],
    head_parameters: Mapping[str, float] | None = None,
) -> list[ScoreStats]:
    """Each score's cost per sample and its global and within-question AUROC against correctness.

    A reward model (a score with recorded ``costs``) reads question + response: tokens per sample = mean response
    tokens + mean question tokens, the latter estimated from the question's characters at the responses' tokens
    per character. A SWIFT head reads the response's hidden states: tokens = mean response tokens, and its
    parameters come from ``head_parameters`` (else unknown).
    """
    responses = [r for q in rollouts for r in q.responses]
    response_tokens = statistics.fmean(r.num_tokens for r in responses)
    chars = sum(len(r.text) for r in responses)
    per_char = sum(r.num_tokens for r in responses) / chars if chars else 0.0
    question_tokens = statistics.fmean(len(q.question) * per_char for q in rollouts)
    out = []
    for name in sorted({s for r in responses for s in r.scores}):
        costs = [q.costs[name] for q in rollouts if name in q.costs]
        if costs:
            kind, tokens = "reward model", response_tokens + question_tokens
            seconds = statistics.fmean(c["seconds_per_sample"] for c in costs)
            params = statistics.fmean(c["parameters"] for c in costs)
        else:
            kind, tokens, seconds, params = (
                "SWIFT head",
                response_tokens,
                None,
                (head_parameters or {}).get(name),
            )
        groups = [_scored(q, name) for q in rollouts]
        out.append(
            ScoreStats(
                *group,
                name,
                kind,
                seconds,
                params,
                tokens,
                None if params is None else 2 * params * tokens,
                auroc(
                    [s for g in groups for s in g[0]], [y for g in groups for y in g[1]]
                ),
                within_question_auroc(groups),
            )
        )
    return out


def _scored(q: QuestionRollout, name: str) -> tuple[list[float], list[float]]:
    """(scores, correctness) of the question's responses that carry a (non-NaN) value of ``name``."""
    pairs = [
        (r.scores[name], r.correct)
        for r in q.responses
        if not math.isnan(r.scores.get(name, math.nan))
    ]
    return [s for s, _ in pairs], [y for _, y in pairs]


def model_label(name_or_path: str) -> str:
    """A model's name in the table: a Hub id (``org/name``) as it is, a local path by its last component (so one
    model run from two folders is one model)."""
    name = str(name_or_path).rstrip("/\\")
    local = (
        name.startswith(("/", ".", "~"))
        or "\\" in name
        or name.count("/") > 1
        or Path(name).expanduser().exists()
    )
    return model_basename(name) if local else name


def folder_label(folder: str) -> str:
    """:func:`model_label` read back from an lm-eval output folder's name (lm-eval writes ``/`` as ``__``), for
    files without a results file beside them: ``__tmp__x__model`` (a local path) -> ``model``, ``org__name`` (a Hub
    id) -> ``org/name``, anything else as it is."""
    parts = folder.split("__")
    if folder.startswith(("__", ".")) and len(parts) > 1:
        return parts[-1]
    return "/".join(parts) if len(parts) == 2 and all(parts) else folder


MODEL_ARGS_NAME_KEYS = ("peft", "delta", "pretrained", "model", "path", "engine")
"""The model arguments that name the model, first match wins: lm-eval's own rule for a run's ``model_name``
(``GeneralConfigTracker``; tests/test_lm_eval_private.py checks that they agree)."""


def model_args_name(model_args: str | dict | None) -> str | None:
    """The model that lm-eval model arguments (a dict, or ``"k=v,k=v"``) name, by :data:`MODEL_ARGS_NAME_KEYS`."""
    for key in MODEL_ARGS_NAME_KEYS:
        if isinstance(model_args, dict) and key in model_args:
            return str(model_args[key])
        if isinstance(model_args, str) and f"{key}=" in model_args:
            return model_args.split(f"{key}=")[1].split(",")[0]
    return None


def _results_model(data: dict) -> str | None:
    """The model an lm-eval results document names (``model_name``, else the one its model_args name)."""
    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    name = data.get("model_name") or model_args_name(config.get("model_args"))
    return str(name) if name else None


def _read_json(path: str | os.PathLike) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(
            f"{path}: cannot read the results file ({e.strerror or e})"
        ) from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not a JSON document ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise UsageError(f'{path}: not an lm-eval results file (no "results" object)')
    return data


def read_results(path: str | os.PathLike) -> tuple[str, dict[str, dict[CellKey, Cell]]]:
    """(model, {task: cells}) of an lm-eval ``results_*.json``: the ``acc,<row>@k`` entries (and their
    ``acc_stderr``) of every task that has a best-of-N row. The model is the :func:`model_label` of the model the
    file names, else of the file's folder. A best-of-N value that is not a number is a :class:`UsageError`."""
    data = _read_json(path)
    name = _results_model(data)
    tasks: dict[str, dict[CellKey, Cell]] = {}
    for task, metrics in data["results"].items():
        if not isinstance(metrics, dict) or not any("@" in key for key in metrics):
            continue
        cells = {}
        for key, value in metrics.items():
            if m := ROW_KEY.fullmatch(key):
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise UsageError(f"{path}: {task} {key} is {value!r}, not a number")
                se = metrics.get(f"acc_stderr,{key[4:]}")
                cell = Cell(
                    float(value),
                    float(se) if isinstance(se, (int, float)) else math.nan,
                    "results",
                )
                cells[(m["row"], int(m["k"] or 1))] = cell
        tasks[task] = cells
    return (
        model_label(name) if name else folder_label(Path(path).resolve().parent.name)
    ), tasks


def rollouts_model(path: str | os.PathLike) -> str:
    """The model of a rollouts file: the one its lm-eval results file names (``results_<date>.json`` beside
    ``rollouts_<task>_<date>.jsonl``, else the newest results file there), else its folder's :func:`folder_label`."""
    path = Path(path).resolve()
    date = path.stem.rsplit("_", 1)[-1]
    candidates = [
        path.with_name(f"results_{date}.json"),
        *sorted(path.parent.glob("results_*.json"), reverse=True),
    ]
    for results in candidates:
        try:
            name = _results_model(_read_json(results)) if results.is_file() else None
        except UsageError:
            name = None
        if name:
            return model_label(name)
    return folder_label(path.parent.name)


@dataclass
class Leaderboard:
    """Accuracy cells per (model, task) group and the score diagnostics of the groups read from rollouts."""

    estimator: str
    estimator_note: str
    cells: dict[Group, dict[CellKey, Cell]]
    scores: list[ScoreStats]

    @property
    def groups(self) -> list[Group]:
        return sorted(self.cells)

    @property
    def rows(self) -> list[str]:
        return list(dict.fromkeys(row for g in self.groups for row, _ in self.cells[g]))

    @property
    def ks(self) -> list[int]:
        return sorted({k for cells in self.cells.values() for _, k in cells})

    def label(self, group: Group) -> str:
        """The model, and the task too when the groups span several tasks."""
        return (
            group[0]
            if len({t for _, t in self.cells}) == 1
            else f"{group[0]} / {group[1]}"
        )

    def columns(self) -> list[tuple[Group, int]]:
        """(group, k) of every column: each group's ks, in order."""
        return [
            (g, k)
            for g in self.groups
            for k in self.ks
            if any(key[1] == k for key in self.cells[g])
        ]

    def average(self, row: str, k: int) -> float | None:
        """Mean over the groups of the row at k; None unless every group has that cell."""
        values = [self.cells[g].get((row, k)) for g in self.groups]
        return None if None in values else statistics.fmean(c.value for c in values)

    def note(self) -> str:
        """Which estimator made the cells, and what the ± means."""
        text = f"Estimator: {self.estimator} — {self.estimator_note}. ± is the standard error across questions."
        if self.estimator != "first" and any(
            c.source == "results" for cs in self.cells.values() for c in cs.values()
        ):
            text += (
                " Groups read from results JSON keep lm-eval's values (first k of N)."
            )
        return text

    def to_markdown(self) -> str:
        """The table (rows = selectors, columns = model x k, then Average per k) and the score diagnostics."""
        columns = self.columns()
        head = [f"{self.label(g)} k={k}" for g, k in columns] + [
            f"Average k={k}" for k in self.ks
        ]
        lines = [
            "## Best-of-N leaderboard",
            "",
            self.note(),
            "",
            "| selector | " + " | ".join(head) + " |",
            "|---|" + "---:|" * len(head),
        ]
        for row in self.rows:
            cells = [_fmt_cell(self.cells[g].get((row, k))) for g, k in columns]
            cells += [
                "" if (avg := self.average(row, k)) is None else f"{avg:.4f}"
                for k in self.ks
            ]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        if self.scores:
            rule = "|---" * 4 + "|---:" * 6 + "|"
            lines += [
                "",
                "## Scores: cost per sample and ranking quality",
                "",
                SCORES_HEAD,
                rule,
            ]
            for s in self.scores:
                lines.append(
                    f"| {s.model} | {s.task} | {s.score} | {s.kind} | {_fmt(s.seconds_per_sample, '.4g')} "
                    f"| {_fmt(s.parameters, '.3g')} | {s.tokens_per_sample:.1f} | {_fmt(s.flops_per_sample, '.3g')} "
                    f"| {s.auroc:.4f} | {s.within_question_auroc:.4f} |"
                )
            lines += ["", FLOPS_NOTE]
        return "\n".join(lines) + "\n"

    def to_csv(self, path: str | os.PathLike) -> list[Path]:
        """Write the cells in long form (Average rows under model ``Average``) to ``path`` and, when there are any,
        the score diagnostics to ``<stem>_scores.csv`` beside it; return the paths written."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(
                [
                    "estimator",
                    "selector",
                    "model",
                    "task",
                    "k",
                    "accuracy",
                    "stderr",
                    "source",
                ]
            )
            for row in self.rows:
                for (model, task), k in self.columns():
                    if cell := self.cells[(model, task)].get((row, k)):
                        w.writerow(
                            [
                                self.estimator,
                                row,
                                model,
                                task,
                                k,
                                cell.value,
                                _csv(cell.stderr),
                                cell.source,
                            ]
                        )
                for k in self.ks:
                    if (avg := self.average(row, k)) is not None:
                        w.writerow([self.estimator, row, "Average", "", k, avg, "", ""])
        written = [path]
        if self.scores:
            written.append(path.with_name(f"{path.stem}_scores.csv"))
            with open(written[1], "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(list(ScoreStats.__dataclass_fields__))
                w.writerows([_csv(v) for v in vars(s).values()] for s in self.scores)
        return written


def _fmt(value: float | None, spec: str) -> str:
    return (
        "unknown" if value is None else "" if math.isnan(value) else format(value, spec)
    )


def _fmt_cell(cell: Cell | None) -> str:
    if cell is None:
        return ""
    return f"{cell.value:.4f}" + (
        "" if math.isnan(cell.stderr) else f" ± {cell.stderr:.4f}"
    )


def _csv(value: object) -> object:
    return (
        ""
        if value is None or (isinstance(value, float) and math.isnan(value))
        else value
    )


def leaderboard(
    files: Iterable[str | os.PathLike],
    ks: Sequence[int] = DEFAULT_KS,
    estimator: str = "first",
    *,
    subsets: int = 64,
    seed: int = 0,
    head_parameters: Mapping[str, float] | None = None,
    etas: Sequence[float] = (),
) -> Leaderboard:
    """The leaderboard of ``files``: lm-eval ``results_*.json`` and rollouts ``*.jsonl`` (model: see
    :func:`read_results` and :func:`rollouts_model`). Rollouts of the same model and task are
    merged by question (a later file's question replaces an earlier one's) and, where given, win over results
    JSON for that model and task; among results files a later file's cells replace an earlier one's. Only cells
    with k in ``ks`` are kept; ``etas``: the percentages of the filter-then-vote rows of rollouts."""
    _check_estimator(estimator)
    questions: dict[Group, dict[int, QuestionRollout]] = {}
    results: dict[Group, dict[CellKey, Cell]] = {}
    for path in files:
        suffix = (
            "".join(Path(path).suffixes[-2:])
            if str(path).endswith(".gz")
            else Path(path).suffix
        )
        if suffix == ".json":
            model, tasks = read_results(path)
            for task, cells in tasks.items():
                results.setdefault((model, task), {}).update(cells)
        elif suffix in (".jsonl", ".jsonl.gz"):
            model = rollouts_model(path)
            for q in read_rollouts_or_samples(path):
                questions.setdefault((model, q.task), {})[q.doc_id] = q
        else:
            raise UsageError(
                f"{path}: unknown file kind: give lm-eval results (.json), rollouts (.jsonl, .jsonl.gz) or lm_eval "
                "samples (samples_<task>_<date>.jsonl) files"
            )
    cells = {
        g: bon_estimates(
            list(qs.values()), ks, estimator, subsets=subsets, seed=seed, etas=etas
        )
        for g, qs in questions.items()
    }
    cells.update(
        {
            g: {key: c for key, c in cs.items() if key[1] in ks}
            for g, cs in results.items()
            if g not in questions
        }
    )
    if not any(cells.values()):
        raise UsageError("no best-of-N rows in the given files")
    stats = [
        s
        for g in sorted(questions)
        for s in score_stats(g, list(questions[g].values()), head_parameters)
    ]
    note = ESTIMATORS[estimator].format(subsets=subsets, seed=seed)
    return Leaderboard(estimator, note, cells, stats)


# -- CLI ---------------------------------------------------------------------------------------------------------


def parse_head_parameters(specs: Sequence[str]) -> dict[str, float]:
    """``["swift=8194"]`` -> ``{"swift": 8194.0}``."""
    out = {}
    for spec in specs:
        name, _, count = spec.partition("=")
        try:
            out[name] = float(count)
        except ValueError:
            name = ""
        if not name:
            raise UsageError(f"--head-parameters {spec!r}: expected NAME=COUNT")
    return out


def cmd_leaderboard(args: argparse.Namespace) -> None:
    """Print the leaderboard as Markdown; write it as CSV / Markdown when asked."""
    board = leaderboard(
        args.files,
        args.k,
        args.estimator,
        subsets=args.subsets,
        seed=args.seed,
        head_parameters=parse_head_parameters(args.head_parameters),
        etas=args.eta,
    )
    text = board.to_markdown()
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text, encoding="utf-8")
    if args.csv:
        print("Wrote " + ", ".join(map(str, board.to_csv(args.csv))))
