"""Best-of-N tasks for lm-eval: data sources, the paper's prompt, and :class:`BestOfNTask`.

The YAML files under ``tasks/`` declare the tasks (a shared ``_bon_base.yaml`` that the others include); this
module supplies what they reference with ``!function``. N, the data location and the heads are chosen with
``--metadata`` (e.g. ``--metadata '{"n": 16, "data_dir": "../shared/data"}'``; ``"grading": "paper"`` grades
with the SWIFT authors' numeric tolerance), never by editing YAML.
"""

from __future__ import annotations

import gc
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
from lm_eval.api.task import ConfigurableTask
from tqdm import tqdm

from lm_eval_swift.errors import UsageError
from lm_eval_swift.selectors import FILTER_NAMES, score_rows  # (importing registers the filters the YAML names)
from lm_eval_swift.grading import MODES as GRADING_MODES
from lm_eval_swift.grading import extract_answer
from lm_eval_swift.heads import heads_disabled
from lm_eval_swift.models import HFSwiftLM
from lm_eval_swift.rollouts import QuestionRollout, build_rollout
from lm_eval_swift.scoring import add_live_model_head_scores, add_scorer_scores, parse_scorer_specs

log = logging.getLogger(__name__)

PROMPT = (
    "Solve the following math problem step-by-step.\n"
    "Simplify your answer as much as possible. Present your final answer as \\boxed{Your Answer}.\n"
)
DATA_DIR_ENV = "LM_EVAL_SWIFT_DATA_DIR"
DEFAULT_N = 64


@dataclass(frozen=True)
class Source:
    """A data set: its Hub parts (path, config, split; concatenated), its local JSONL files (in the formats of
    ``../shared/data``), its kind of answers, and a source whose problems are left out of it."""

    kind: str  # "gsm8k" or "math"
    hub: tuple[tuple[str, str | None, str], ...]
    local_files: tuple[str, ...]
    minus: str | None = None


_MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                  "prealgebra", "precalculus")
SOURCES: dict[str, Source] = {
    "gsm8k_test": Source("gsm8k", (("openai/gsm8k", "main", "test"),), ("gsm8k_test.jsonl",)),
    "gsm8k_train": Source("gsm8k", (("openai/gsm8k", "main", "train"),), ("gsm8k_train.jsonl",)),
    "math500_test": Source("math", (("HuggingFaceH4/MATH-500", None, "test"),), ("math500_test.jsonl",)),
    "math_test": Source("math", tuple(("EleutherAI/hendrycks_math", s, "test") for s in _MATH_SUBJECTS),
                        ("math_test.jsonl",)),
    # PRM800K's 12k training split: MATH train plus the MATH test problems outside MATH-500
    "math_train_12k": Source(
        "math",
        tuple(("EleutherAI/hendrycks_math", s, split) for split in ("train", "test") for s in _MATH_SUBJECTS),
        ("math_train.jsonl", "math_test.jsonl"),
        minus="math500_test",
    ),
}


def normalise(record: dict, kind: str, index: int) -> dict:
    """A record of any source -> ``{"id", "kind", "problem", "answer"}`` (answer: the gold final answer)."""
    if kind == "gsm8k":
        problem, answer = record["question"], record["answer"].rsplit("####", 1)[-1].strip()
    else:
        problem = record["problem"]
        answer = record.get("answer") or extract_answer(record["solution"], "math") or ""
    return {"id": str(record.get("unique_id", index)), "kind": kind, "problem": problem, "answer": answer}


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _records(source: str, data_dir: str | None, data_file: str | None) -> list[dict]:
    src = SOURCES[source]
    if data_file or data_dir:
        paths = [Path(data_file)] if data_file else [Path(data_dir) / name for name in src.local_files]
        for path in paths:
            if not path.is_file():
                where = "--metadata data_file" if data_file else f"--metadata data_dir or ${DATA_DIR_ENV}"
                raise UsageError(f"{source}: local data file {path} does not exist (given by {where})")
        records = [r for path in paths for r in _read_jsonl(path)]
    else:
        try:
            records = [r for path, name, split in src.hub for r in datasets.load_dataset(path, name, split=split)]
        except Exception as e:  # offline, gated, renamed: one clear message with both ways out
            raise UsageError(
                f"{source}: could not load the Hub data set {src.hub[0][0]!r} ({type(e).__name__}: {e}). "
                f"Run offline from local JSONL files instead: set {DATA_DIR_ENV}=/path/to/dir containing "
                f"{', '.join(src.local_files)}, or pass --metadata '{{\"data_dir\": \"/path/to/dir\"}}'."
            ) from e
    if src.minus:
        excluded = {r["problem"] for r in _records(src.minus, data_dir and str(data_dir), None)}
        records = [r for r in records if r["problem"] not in excluded]
    return records


def _dataset(docs: list[dict]) -> datasets.DatasetDict:
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
    return _dataset(docs[: int(max_questions)] if max_questions else docs)


def load_synthetic(split: str, questions: int, seed: int = 0, **_) -> datasets.DatasetDict:
    """lm-eval ``custom_dataset`` of the demo: ``questions`` synthetic GSM8K-format problems of ``split``."""
    from lm_eval_swift.demo.synthetic import make_problems

    return _dataset([normalise(r, "gsm8k", i) for i, r in enumerate(make_problems(split, int(questions), int(seed)))])


def doc_to_text(doc: dict) -> str:
    return PROMPT + doc["problem"]


def process_results(doc: dict, results: list) -> dict[str, float]:
    """``results[0]`` is the response (or summary) a selector kept; its ``correct`` is the row's value."""
    return {"acc": float(results[0].correct)}


# -- rollouts: collected per task while filtering, written next to lm-eval's results ---------------------------

PENDING_ROLLOUTS: dict[str, list[QuestionRollout]] = {}


def _install_rollouts_writer() -> None:
    """Make lm-eval's EvaluationTracker also write ``rollouts_<task>_<date>.jsonl`` beside ``results_<date>.json``."""
    from lm_eval.loggers.evaluation_tracker import EvaluationTracker

    original = EvaluationTracker.save_results_aggregated
    if getattr(original, "_writes_rollouts", False):
        return

    def save_results_aggregated(self, results, samples=None):
        original(self, results, samples)
        if not self.output_path or not PENDING_ROLLOUTS:
            return
        from lm_eval_swift.rollouts import write_rollouts

        path = Path(self.output_path)
        folder = path.parent if path.suffix == ".json" else path / self.general_config_tracker.model_name_sanitized
        for task, rollouts in list(PENDING_ROLLOUTS.items()):
            out = write_rollouts(rollouts, folder / f"rollouts_{task}_{self.date_id}.jsonl")
            log.info("Wrote %d rollouts of %s to %s", len(rollouts), task, out)
            print(f"Rollouts of {task}: {out}")
        PENDING_ROLLOUTS.clear()

    save_results_aggregated._writes_rollouts = True
    EvaluationTracker.save_results_aggregated = save_results_aggregated


_install_rollouts_writer()


# -- the task --------------------------------------------------------------------------------------------------

BON_KS = (1, 4, 16, 64)
SCORE_FILTERS = {"swift": "score", "argmax_score": "score", "weighted_vote": "score", "combined_score": "scores"}


def _row_k(row: dict) -> int | None:
    ks = [int(f["k"]) for f in row["filter"] if "k" in f]
    return ks[0] if ks else None


def _row_scores(row: dict) -> set[str]:
    """The scores a row reads (``swift`` filters read ``swift`` unless told otherwise)."""
    needed: set[str] = set()
    for f in row["filter"]:
        key = SCORE_FILTERS.get(f["function"])
        if key == "score":
            needed.add(f.get("score", "swift"))
        elif key == "scores":
            needed.update(f.get("scores", ["swift"]))
    return needed


def _positive_int(value, what: str) -> int:
    """``value`` as an int >= 1 (an int, or a string of one); :class:`UsageError` naming ``what`` otherwise."""
    try:
        number = int(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or number < 1:
        raise UsageError(f"{what} must be a whole number >= 1, got {value!r}")
    return number


def scorer_rows(name: str, ks: list[int]) -> list[dict]:
    """lm-eval filter configs of a reward-model scorer's rows (see :func:`selectors.score_rows`), per k."""
    return [
        {"name": f"{row}@{k}", "filter": [{"function": FILTER_NAMES[selector], **kwargs, "k": k}]}
        for k in ks
        for row, (selector, kwargs) in score_rows(name, reward_model=True).items()
    ]


class BestOfNTask(ConfigurableTask):
    """A best-of-N task: N samples per question (``--metadata '{"n": N}'``, default 64) and one results row
    per selector and k (rows with k > N are dropped; ``mean@N`` is named after N). Reward-model rows are added
    for the scorers named in ``--metadata '{"scorers": "skywork,eurus"}'``.

    Before lm-eval's filters run, every response is graded once, answers are grouped into equivalence
    classes, missing SWIFT scores are added by rescoring when possible, the scorers run, and the question's
    rollout is kept for the rollouts file. Rows whose scores no response carries are left out, with a warning.
    """

    def __init__(self, config: dict | None = None, **kwargs) -> None:
        config = dict(config or {})
        config.pop("class", None)
        meta = config.get("metadata") or {}
        n = _positive_int(meta.get("n", DEFAULT_N), f"{config.get('task')}: --metadata n")
        self.grading = str(meta.get("grading", "default"))
        if self.grading not in GRADING_MODES:
            raise UsageError(f"{config.get('task')}: metadata grading must be one of {tuple(GRADING_MODES)}, "
                             f"got {self.grading!r}")
        self.scorer_specs = parse_scorer_specs(meta.get("scorers"), protocol=meta.get("rm_protocol"))
        config["repeats"] = n
        rows = [row for row in config.get("filter_list") or [] if (_row_k(row) or 0) <= n]
        for row in rows:
            if row["name"].endswith("@N"):
                row["name"] = f"{row['name'][:-2]}@{n}"
        for name in self.scorer_specs:
            rows += scorer_rows(name, [k for k in BON_KS if k <= n])
        config["filter_list"] = rows
        self._needed_scores = {row["name"]: _row_scores(row) for row in rows}
        super().__init__(config=config, **kwargs)
        _shard_hflm_across_processes()

    def build_all_requests(self, **kwargs) -> None:
        """lm-eval's requests, then a check that every prompt plus ``max_gen_toks`` fits the model's context."""
        super().build_all_requests(**kwargs)
        lm = _live_hf_model()
        if lm is not None and lm.backend == "causal":
            check_generation_fits(lm, [inst.arguments for inst in self._instances], self.config.task)

    def apply_filters(self):
        for inst in self._instances:
            # under data parallelism lm-eval pads a rank holding fewer documents with copies of its last request,
            # whose responses are appended to that request: keep the N of the request itself
            del inst.resps[self.config.repeats :]
        rollouts = [
            build_rollout(
                self.config.task,
                inst.doc_id,
                inst.doc["kind"],
                inst.doc["problem"],
                inst.arguments[0],
                inst.doc["answer"],
                inst.resps,
                grading=self.grading,
            )
            for inst in tqdm(self._instances, desc=f"Grading {self.config.task}", unit="q")
        ]
        self._add_missing_swift_scores(rollouts)
        add_scorer_scores(rollouts, self.scorer_specs)
        for inst, rollout in zip(self._instances, rollouts):
            inst.resps = rollout.responses
        present = {name for r in rollouts for resp in r.responses for name in resp.scores}
        dropped = [row for row, needed in self._needed_scores.items() if not needed <= present]
        if dropped:
            self._report_dropped_rows(dropped)
            self._filters = [f for f in self._filters if f.name not in dropped]
        PENDING_ROLLOUTS[self.config.task] = _gather_across_ranks(rollouts)
        return super().apply_filters()

    def _report_dropped_rows(self, dropped: list[str]) -> None:
        """Say which rows are left out and why: quietly when the run asked for no heads (``heads=none``)."""
        lm = _live_hf_model()
        hf_swift = isinstance(lm, HFSwiftLM)
        spec = lm.heads_spec if hf_swift else (self.config.metadata or {}).get("heads")
        rows = ", ".join(dropped)
        if heads_disabled(spec):
            log.info("%s: rows %s are left out (no SWIFT heads: heads=%s)", self.config.task, rows, spec)
            return
        fix = (
            "give --model_args ...,heads=PATH"
            if hf_swift
            else "give a head with --metadata '{\"heads\": \"PATH\"}', or sample with --model hf-swift and heads=PATH"
        )
        log.warning("%s: no response carries the scores that rows %s need; they are left out: %s.",
                    self.config.task, rows, fix)

    def _add_missing_swift_scores(self, rollouts: list[QuestionRollout]) -> None:
        """Rescore responses that came without SWIFT scores (lm-eval's plain ``hf`` model) when a head is
        known and the generating HF model lives in this process (its weights are reused, not reloaded)."""
        if not rollouts or any(resp.scores for r in rollouts for resp in r.responses):
            return
        lm = _live_hf_model()
        if lm is None or isinstance(lm, HFSwiftLM):  # hf-swift already scored with the heads it was given
            return
        meta = self.config.metadata or {}
        max_gen_toks = int((self.config.generation_kwargs or {}).get("max_gen_toks", lm.max_gen_toks))
        add_live_model_head_scores(rollouts, lm, meta.get("heads"), max_gen_toks)


def check_generation_fits(lm, requests: list[tuple[str, dict]], task: str) -> None:
    """Raise :class:`UsageError` before sampling when the longest prompt (tokens, over all ranks) plus the requested
    ``max_gen_toks`` exceeds ``lm.max_length``: lm-eval would cut the start of the question (or stop at an
    assertion). ``requests``: (context, gen_kwargs) pairs."""
    from lm_eval.models.utils import normalize_gen_kwargs

    longest: dict[int, int] = {}  # max_gen_toks -> longest prompt, in tokens
    for context, gen_kwargs in {(c, json.dumps(g, sort_keys=True, default=str)) for c, g in requests}:
        max_gen_toks = int(normalize_gen_kwargs(json.loads(gen_kwargs), lm.max_gen_toks)["max_gen_toks"])
        longest[max_gen_toks] = max(longest.get(max_gen_toks, 0), len(lm.tok_encode(context)))
    longest = _max_across_ranks(longest)
    for max_gen_toks, prompt in sorted(longest.items()):
        if prompt + max_gen_toks > lm.max_length:
            room = lm.max_length - prompt
            fix = f"pass --gen_kwargs max_gen_toks={room} or less" if room > 0 else "the prompt alone does not fit"
            raise UsageError(
                f"{task}: a prompt of {prompt} tokens plus max_gen_toks={max_gen_toks} exceeds the model's context "
                f"of {lm.max_length} tokens: {fix} (or use a model with a longer context)"
            )


def _max_across_ranks(longest: dict[int, int]) -> dict[int, int]:
    """Under data parallelism, the per-key maximum of every rank's ``longest``, so all ranks decide alike."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return longest
    shares: list[dict[int, int] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(shares, longest)
    merged: dict[int, int] = {}
    for share in shares:
        for key, value in (share or {}).items():
            merged[key] = max(merged.get(key, 0), value)
    return merged


def _gather_across_ranks(rollouts: list[QuestionRollout]) -> list[QuestionRollout]:
    """Under data parallelism each rank holds its share of the questions: collect them all (in doc order) on
    every rank, so rank 0, which writes the files, has the whole task."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rollouts
    shares: list[list[QuestionRollout] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(shares, rollouts)
    return sorted((r for share in shares for r in share or []), key=lambda r: r.doc_id)


def _shard_hflm_across_processes() -> None:
    """Make the process's lm-eval HFLM (``--model hf``) take its share of the documents when it was launched in
    several processes that HFLM does not shard: HFLM splits documents across ranks only with several GPUs, so on CPU
    (``ACCELERATE_USE_CPU=true accelerate launch --multi_gpu``, gloo) every process would evaluate everything and
    write the same files. Runs while tasks load, after the model is made and before lm-eval splits the documents
    by ``lm.rank``. ``hf-swift`` does this itself."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    lm = _live_hf_model()
    accelerator = getattr(lm, "accelerator", None)
    if accelerator is not None and accelerator.num_processes > 1 and lm.world_size == 1:
        log.info("HFLM: sharding documents across %d processes (rank %d)", accelerator.num_processes,
                 accelerator.process_index)
        lm._rank, lm._world_size = accelerator.process_index, accelerator.num_processes
        from lm_eval_swift.models import destroy_gloo_group_at_exit

        destroy_gloo_group_at_exit()


def _live_hf_model():
    """The lm-eval HFLM instance of this process, if there is exactly one (lm-eval hands filters no model)."""
    from lm_eval.models.huggingface import HFLM

    found = [o for o in gc.get_objects() if isinstance(o, HFLM)]
    return found[0] if len(found) == 1 else None
