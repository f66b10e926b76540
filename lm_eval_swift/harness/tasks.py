"""Best-of-N tasks for lm-eval: data sources, the paper's prompt, and :class:`BestOfNTask`.

The YAML files under ``tasks/`` declare the tasks (a shared ``_bon_base.yaml`` that the others include); this
module supplies what they reference with ``!function``. N, the data location and the heads are chosen with
``--metadata`` (e.g. ``--metadata '{"n": 16, "data_dir": "../shared/data"}'``; ``"grading": "paper"`` grades
with the SWIFT authors' numeric tolerance), never by editing YAML.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
from lm_eval.api.task import ConfigurableTask

from lm_eval_swift.bon import rows as bon_rows
from lm_eval_swift.bon.rollouts import QuestionRollout, grade, write_rollouts
from lm_eval_swift.confidence import parse_confidence
from lm_eval_swift.errors import UsageError
from lm_eval_swift.grading import MODES as GRADING_MODES
from lm_eval_swift.grading import extract_answer
from lm_eval_swift.harness import distributed, lm_eval_private
from lm_eval_swift.harness.filters import filter_list
from lm_eval_swift.harness.generator import GeneratorModel
from lm_eval_swift.scores import add_scores, parse_scorer_specs
from lm_eval_swift.swift.heads import heads_disabled


log = logging.getLogger(__name__)

PROMPT = (
    "Solve the following math problem step-by-step.\n"
    "Simplify your answer as much as possible. Present your final answer as \\boxed{Your Answer}.\n"
)
DATA_DIR_ENV = "LM_EVAL_SWIFT_DATA_DIR"
DEFAULT_N = 64
DEFAULT_MAX_GEN_TOKS = (
    256  # lm-eval's, when neither the task nor --gen_kwargs sets max_gen_toks
)


@dataclass(frozen=True)
class Source:
    """A data set: its Hub parts (path, config, split; concatenated), its local JSONL files (in the formats of
    ``../shared/data``), its kind of answers, and a source whose problems are left out of it."""

    kind: str  # "gsm8k" or "math"
    hub: tuple[tuple[str, str | None, str], ...]
    local_files: tuple[str, ...]
    minus: str | None = None


_MATH_SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)
SOURCES: dict[str, Source] = {
    "gsm8k_test": Source(
        "gsm8k", (("openai/gsm8k", "main", "test"),), ("gsm8k_test.jsonl",)
    ),
    "gsm8k_train": Source(
        "gsm8k", (("openai/gsm8k", "main", "train"),), ("gsm8k_train.jsonl",)
    ),
    "math500_test": Source(
        "math", (("HuggingFaceH4/MATH-500", None, "test"),), ("math500_test.jsonl",)
    ),
    "math_test": Source(
        "math",
        tuple(("EleutherAI/hendrycks_math", s, "test") for s in _MATH_SUBJECTS),
        ("math_test.jsonl",),
    ),
    # PRM800K's 12k training split: MATH train plus the MATH test problems outside MATH-500
    "math_train_12k": Source(
        "math",
        tuple(
            ("EleutherAI/hendrycks_math", s, split)
            for split in ("train", "test")
            for s in _MATH_SUBJECTS
        ),
        ("math_train.jsonl", "math_test.jsonl"),
        minus="math500_test",
    ),
}


def normalise(record: dict, kind: str, index: int) -> dict:
    """A record of any source -> ``{"id", "kind", "problem", "answer"}`` (answer: the gold final answer)."""
    if kind == "gsm8k":
        problem, answer = (
            record["question"],
            record["answer"].rsplit("####", 1)[-1].strip(),
        )
    else:
        problem = record["problem"]
        answer = (
            record.get("answer") or extract_answer(record["solution"], "math") or ""
        )
    return {
        "id": str(record.get("unique_id", index)),
        "kind": kind,
        "problem": problem,
        "answer": answer,
    }


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _records(source: str, data_dir: str | None, data_file: str | None) -> list[dict]:
    src = SOURCES[source]
    if data_file or data_dir:
        paths = (
            [Path(data_file)]
            if data_file
            else [Path(data_dir) / name for name in src.local_files]
        )
        for path in paths:
            if not path.is_file():
                where = (
                    "--metadata data_file"
                    if data_file
                    else f"--metadata data_dir or ${DATA_DIR_ENV}"
                )
                raise UsageError(
                    f"{source}: local data file {path} does not exist (given by {where})"
                )
        records = [r for path in paths for r in _read_jsonl(path)]
    else:
        try:
            records = [
                r
                for path, name, split in src.hub
                for r in datasets.load_dataset(path, name, split=split)
            ]
        except (
            Exception
        ) as e:  # offline, gated, renamed: one clear message with both ways out
            raise UsageError(
                f"{source}: could not load the Hub data set {src.hub[0][0]!r} ({type(e).__name__}: {e}). "
                f"Run offline from local JSONL files instead: set {DATA_DIR_ENV}=/path/to/dir containing "
                f'{", ".join(src.local_files)}, or pass --metadata \'{{"data_dir": "/path/to/dir"}}\'.'
            ) from e
    if src.minus:
        excluded = {
            r["problem"] for r in _records(src.minus, data_dir and str(data_dir), None)
        }
        records = [r for r in records if r["problem"] not in excluded]
    return records


def dataset_dict(docs: list[dict]) -> datasets.DatasetDict:
    """An lm-eval ``custom_dataset``: ``docs`` as the one split ``test``."""
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def load_source(
    source: str,
    data_dir: str | None = None,
    data_file: str | None = None,
    max_questions: int | None = None,
    **_,
) -> datasets.DatasetDict:
    """lm-eval ``custom_dataset``: the questions of ``source`` (the first ``max_questions`` if given), normalised.

    Local JSONL is used when ``data_file`` or ``data_dir`` (metadata) or the ``LM_EVAL_SWIFT_DATA_DIR``
    environment variable is set; otherwise the public Hub data set.
    """
    records = _records(source, data_dir or os.environ.get(DATA_DIR_ENV), data_file)
    docs = [normalise(r, SOURCES[source].kind, i) for i, r in enumerate(records)]
    return dataset_dict(docs[: int(max_questions)] if max_questions else docs)


def doc_to_text(doc: dict) -> str:
    return PROMPT + doc["problem"]


def process_results(doc: dict, results: list) -> dict[str, float]:
    """``results[0]`` is the response (or summary) a selector kept; its ``correct`` is the row's value."""
    return {"acc": float(results[0].correct)}


# -- rollouts: kept per task by this process, written beside lm-eval's results after the run ---------------------

FINISHED_ROLLOUTS: dict[str, list[QuestionRollout]] = {}


def save_rollouts(results_file: str | os.PathLike) -> list[Path]:
    """Write ``rollouts_<task>_<date>.jsonl`` of every task this process finished beside lm-eval's results file
    (``results_<date>.json``, or ``<name>_<date>.json`` for an ``--output_path`` ending in .json), and forget
    them. ``lm-eval-swift eval`` calls it after lm-eval's run; a caller of lm-eval's Python API calls it after
    ``EvaluationTracker.save_results_aggregated``. Under data parallelism only rank 0 writes (every rank holds
    every question)."""
    results_file = Path(results_file)
    date_id = results_file.stem.rsplit("_", 1)[-1]
    written = []
    if distributed.is_main_process():
        for task, rollouts in FINISHED_ROLLOUTS.items():
            path = write_rollouts(
                rollouts, results_file.parent / f"rollouts_{task}_{date_id}.jsonl"
            )
            log.info("Wrote %d rollouts of %s to %s", len(rollouts), task, path)
            print(f"Rollouts of {task}: {path}")
            written.append(path)
    FINISHED_ROLLOUTS.clear()
    return written


# -- the task --------------------------------------------------------------------------------------------------


class BestOfNTask(ConfigurableTask):
    """A best-of-N task: N samples per question (``--metadata '{"n": N}'``, default 64) and one results row
    per row of :func:`~lm_eval_swift.bon.rows.rows` and k (rows with k > N are dropped; ``mean@N`` is named after
    N). Reward-model rows are added for the scorers named in ``--metadata '{"scorers": "skywork,eurus"}'``.

    Built before any sampling, it checks the scorer names and resolves the SWIFT heads (``heads`` in the model
    arguments or metadata) against the generating model (see :class:`~lm_eval_swift.harness.generator.GeneratorModel`).
    Before lm-eval's filters run, it grades its responses (:func:`~lm_eval_swift.bon.rollouts.grade`), adds the
    missing scores (:func:`~lm_eval_swift.scores.add_scores`: SWIFT heads by rescoring, then the reward models) and
    keeps the rollouts for :func:`save_rollouts`. Rows whose scores no
    response carries are left out, with a warning.
    """

    def __init__(self, config: dict | None = None, **kwargs) -> None:
        config = dict(config or {})
        config.pop("class", None)
        meta = config.get("metadata") or {}
        n = _positive_int(
            meta.get("n", DEFAULT_N), f"{config.get('task')}: --metadata n"
        )
        self.grading = str(meta.get("grading", "default"))
        if self.grading not in GRADING_MODES:
            raise UsageError(
                f"{config.get('task')}: metadata grading must be one of {tuple(GRADING_MODES)}, "
                f"got {self.grading!r}"
            )
        self.scorer_specs = parse_scorer_specs(
            meta.get("scorers"), protocol=meta.get("rm_protocol")
        )
        self.generator = GeneratorModel.from_metadata(meta)
        try:
            self.confidence = parse_confidence(meta.get("confidence"))
            etas = tuple(float(e) for e in meta.get("etas", ()))
        except (TypeError, ValueError) as err:
            raise UsageError(f"{config.get('task')}: metadata: {err}") from None
        self.rows = bon_rows.rows(
            ["swift", *self.confidence, *self.scorer_specs],
            reward_models=self.scorer_specs,
            etas=etas,
        )
        config["repeats"] = n
        config["filter_list"] = filter_list(self.rows, n)
        super().__init__(config=config, **kwargs)

    def build_all_requests(
        self, *, rank: int = 0, world_size: int = 1, **kwargs
    ) -> None:
        """lm-eval's requests, then a check that every prompt plus ``max_gen_toks`` fits the model's context."""
        distributed.check_documents_sharded(self.config.task, world_size)
        super().build_all_requests(rank=rank, world_size=world_size, **kwargs)
        if self.generator is not None:
            check_generation_fits(
                self.generator,
                [inst.arguments for inst in self._instances],
                self.config.task,
            )

    def apply_filters(self):
        for inst in self._instances:
            inst.resps = distributed.without_padding(inst.resps, self.config.repeats)
        max_gen_toks = int(
            (self.config.generation_kwargs or {}).get(
                "max_gen_toks", DEFAULT_MAX_GEN_TOKS
            )
        )
        plain_text = any(
            not getattr(resp, "token_ids", ())
            for inst in self._instances
            for resp in inst.resps
        )
        rollouts = grade(
            self.config.task,
            [(inst.doc_id, inst.doc, inst.arguments[0]) for inst in self._instances],
            [inst.resps for inst in self._instances],
            tokenizer=self.generator.tokenizer
            if self.generator and plain_text
            else None,
            max_gen_toks=max_gen_toks,
            grading=self.grading,
        )
        rescoring = None
        if (
            self.generator is not None
            and rollouts
            and not any(resp.scores for r in rollouts for resp in r.responses)
        ):
            rescoring = self.generator.rescoring(max_gen_toks, self.confidence)
        add_scores(rollouts, rescoring, reward_models=self.scorer_specs)
        for inst, rollout in zip(self._instances, rollouts, strict=True):
            inst.resps = rollout.responses
        self._leave_out_rows_without_scores(rollouts)
        FINISHED_ROLLOUTS[self.config.task] = distributed.gather_by_doc(rollouts)
        return super().apply_filters()

    def _leave_out_rows_without_scores(self, rollouts: list[QuestionRollout]) -> None:
        present = {
            name for r in rollouts for resp in r.responses for name in resp.scores
        }
        missing = {
            row
            for row, spec in self.rows.items()
            if not bon_rows.needed_scores(spec) <= present
        }
        dropped = [
            name
            for name in lm_eval_private.filter_names(self)
            if name.split("@")[0] in missing
        ]
        if not dropped:
            return
        lm_eval_private.leave_out_filters(self, dropped)
        spec = (self.config.metadata or {}).get(
            "heads"
        )  # a model argument or --metadata: both arrive here
        if heads_disabled(spec):
            log.info(
                "%s: rows %s are left out (no SWIFT heads: heads=%s)",
                self.config.task,
                ", ".join(dropped),
                spec,
            )
            return
        log.warning(
            "%s: no response carries the scores needed by rows %s; they are left out. Use --model hf-swift "
            "with heads=..., or give a head with --metadata '{\"heads\": \"PATH\"}'.",
            self.config.task, ", ".join(dropped),
        )  # fmt: skip


def _positive_int(value, what: str) -> int:
    """``value`` as an int >= 1 (an int, or a string of one); :class:`UsageError` naming ``what`` otherwise."""
    try:
        number = (
            int(value)
            if isinstance(value, (int, str)) and not isinstance(value, bool)
            else None
        )
    except ValueError:
        number = None
    if number is None or number < 1:
        raise UsageError(f"{what} must be a whole number >= 1, got {value!r}")
    return number


def check_generation_fits(
    generator: GeneratorModel, requests: list[tuple[str, dict]], task: str
) -> None:
    """Raise :class:`UsageError` before sampling when the longest prompt (tokens, over all ranks) plus the requested
    ``max_gen_toks`` exceeds the model's context: lm-eval would cut the start of the question (or stop at an
    assertion). ``requests``: (context, gen_kwargs) pairs."""
    from lm_eval.models.utils import normalize_gen_kwargs

    longest: dict[int, int] = {}  # max_gen_toks -> longest prompt, in tokens
    for context, gen_kwargs in {
        (c, json.dumps(g, sort_keys=True, default=str)) for c, g in requests
    }:
        max_gen_toks = int(
            normalize_gen_kwargs(json.loads(gen_kwargs), DEFAULT_MAX_GEN_TOKS)[
                "max_gen_toks"
            ]
        )
        longest[max_gen_toks] = max(
            longest.get(max_gen_toks, 0), len(generator.encode(context))
        )
    for max_gen_toks, prompt in sorted(distributed.max_across_ranks(longest).items()):
        if prompt + max_gen_toks > generator.max_length:
            room = generator.max_length - prompt
            fix = (
                f"pass --gen_kwargs max_gen_toks={room} or less"
                if room > 0
                else "the prompt alone does not fit"
            )
            raise UsageError(
                f"{task}: a prompt of {prompt} tokens plus max_gen_toks={max_gen_toks} exceeds the model's context "
                f"of {generator.max_length} tokens: {fix} (or use a model with a longer context)"
            )
