"""The best-of-N tasks through lm-eval's own evaluator, with a scripted model whose answers we know."""

from __future__ import annotations

import pytest
from lm_eval import simple_evaluate
from lm_eval.api.model import LM
from lm_eval.loggers import EvaluationTracker
from lm_eval.tasks import TaskManager

from lm_eval_swift.bon.rollouts import read_rollouts
from lm_eval_swift.bon.samples import Sample
from lm_eval_swift.errors import UsageError
from lm_eval_swift.harness.tasks import load_source, save_rollouts
from lm_eval_swift.paths import tasks_dir
from lm_eval_swift.reports.report import bon_table


GOLDS = ["18", "3"]  # the first two GSM8K test answers


class ScriptedLM(LM):
    """Answers each question with a fixed list of N responses, scored by a fake SWIFT head."""

    def __init__(self, answers: list[list[tuple[str, float]]]):
        super().__init__()
        self.answers = answers

    def generate_until(self, requests, disable_tqdm=False):
        seen: dict[int, int] = {}
        out = []
        for req in requests:
            i = seen.get(req.doc_id, 0)
            seen[req.doc_id] = i + 1
            text, score = self.answers[req.doc_id][i]
            out.append(
                Sample(text, token_ids=[1, 2], finish="eos", scores={"swift": score})
            )
        return out

    def loglikelihood(self, requests):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError


def run(model, tmp_path, shared_data, n=4, metadata=None, **kw):
    metadata = {"n": n, "data_dir": str(shared_data), **(metadata or {})}
    tm = TaskManager(
        include_path=str(tasks_dir()), include_defaults=False, metadata=metadata
    )
    tracker = EvaluationTracker(output_path=str(tmp_path))
    results = simple_evaluate(
        model=model,
        tasks=["gsm8k_bon_swift"],
        task_manager=tm,
        limit=2,
        evaluation_tracker=tracker,
        **kw,
    )
    tracker.save_results_aggregated(results=results, samples=None)
    save_rollouts(next(tmp_path.rglob("results_*.json")))
    return results["results"]["gsm8k_bon_swift"], tracker


SCRIPT = [
    # q0 (gold 18): first wrong, majority wrong (two votes for 20), swift picks the right one
    [
        ("The answer is 20.", 0.1),
        ("#### 18", 2.0),
        ("\\boxed{20}", 0.5),
        ("$18.00", -1.0),
    ],
    # q1 (gold 3): "3.0" and "3" vote together; swift prefers a wrong one
    [
        ("\\boxed{3.0}", 0.0),
        ("\\boxed{4}", 1.0),
        ("The answer is 3", -0.5),
        ("no idea", 0.2),
    ],
]


def test_rows_and_rollouts(tmp_path, shared_data):
    res, _ = run(ScriptedLM(SCRIPT), tmp_path, shared_data)
    acc = {key.split(",")[1]: v for key, v in res.items() if key.startswith("acc,")}
    assert (
        acc
        == {
            "first": 0.5,  # q0 wrong, q1 right
            "mean@4": pytest.approx((2 / 4 + 2 / 4) / 2),
            "maj@1": 0.5,
            "maj@4": 0.5,  # q0: 20 (2 votes, first) vs 18 (2 votes): tie to the earlier class -> wrong; q1: 3 wins
            "oracle@1": 0.5,
            "oracle@4": 1.0,
            "swift@1": 0.5,
            "swift@4": 0.5,  # q0 right (2.0), q1 wrong (4)
            "swift_vote@1": 0.5,
            # q0: sigmoid-weighted 18 (0.881 + 0.269) beats 20 (0.525 + 0.622); q1: 3 (0.5 + 0.378) beats 4 (0.731)
            "swift_vote@4": 1.0,
        }
    )
    files = list(tmp_path.rglob("rollouts_gsm8k_bon_swift_*.jsonl"))
    assert len(files) == 1
    rollouts = list(read_rollouts(files[0]))
    assert [r.gold for r in rollouts] == GOLDS
    q1 = rollouts[1]
    assert q1.prompt.startswith("Solve the following math problem step-by-step.")
    assert [r.answer_class for r in q1.responses] == [0, 1, 0, -1]
    assert [r.correct for r in q1.responses] == [1.0, 0.0, 1.0, 0.0]
    assert q1.responses[1].scores == {"swift": 1.0}
    # the report recomputes the same numbers from the file alone
    table = bon_table(rollouts)
    assert table["maj"][4] == acc["maj@4"] and table["swift"][4] == acc["swift@4"]
    assert table["mean"] == {4: acc["mean@4"]}


def test_n_from_metadata_drops_rows(tmp_path, shared_data):
    script = [[(a, s) for a, s in q[:1]] for q in SCRIPT]
    res, _ = run(ScriptedLM(script), tmp_path, shared_data, n=1)
    filters = {key.split(",")[1] for key in res if key.startswith("acc,")}
    assert filters == {
        "first",
        "mean@1",
        "maj@1",
        "oracle@1",
        "swift@1",
        "swift_vote@1",
    }


def test_grading_mode_from_metadata(tmp_path, shared_data):
    """--metadata '{"grading": "paper"}' grades with the SWIFT authors' 1e-4 relative tolerance."""
    script = [
        [("#### 18.001", 0.0)],
        [("#### 3", 0.0)],
    ]  # 18.001 is 5.6e-5 away from the gold 18
    first = {}
    for mode in ("default", "paper"):
        metadata = {"n": 1, "data_dir": str(shared_data), "grading": mode}
        tm = TaskManager(
            include_path=str(tasks_dir()), include_defaults=False, metadata=metadata
        )
        results = simple_evaluate(
            model=ScriptedLM(script),
            tasks=["gsm8k_bon_swift"],
            task_manager=tm,
            limit=2,
        )
        first[mode] = results["results"]["gsm8k_bon_swift"]["acc,first"]
    assert first == {"default": 0.5, "paper": 1.0}
    tm = TaskManager(
        include_path=str(tasks_dir()),
        include_defaults=False,
        metadata={"grading": "lenient"},
    )
    with pytest.raises(ValueError, match="metadata grading must be one of"):
        simple_evaluate(
            model=ScriptedLM(script),
            tasks=["gsm8k_bon_swift"],
            task_manager=tm,
            limit=2,
        )


def test_rows_without_scores_are_left_out(tmp_path, shared_data, caplog):
    class Plain(ScriptedLM):
        """Plain strings, as lm-eval's own models return: no scores, no model to rescore with."""

        def generate_until(self, requests, disable_tqdm=False):
            return [str(s) for s in super().generate_until(requests)]

    caplog.set_level("INFO", logger="lm_eval_swift.harness.tasks")
    res, _ = run(Plain(SCRIPT), tmp_path, shared_data)
    filters = {key.split(",")[1] for key in res if key.startswith("acc,")}
    assert not any(f.startswith("swift") for f in filters)
    assert {"first", "maj@4", "oracle@4"} <= filters
    warned = [
        r
        for r in caplog.records
        if r.levelname == "WARNING" and "left out" in r.message
    ]
    assert len(warned) == 1 and '--metadata \'{"heads": "PATH"}\'' in warned[0].message
    caplog.clear()
    run(
        Plain(SCRIPT), tmp_path / "none", shared_data, metadata={"heads": "none"}
    )  # no heads on purpose: no warning
    assert not [
        r
        for r in caplog.records
        if r.levelname == "WARNING" and "left out" in r.message
    ]


def test_missing_data_names_both_ways_out(monkeypatch, tmp_path):
    monkeypatch.delenv("LM_EVAL_SWIFT_DATA_DIR", raising=False)
    with pytest.raises(UsageError, match="LM_EVAL_SWIFT_DATA_DIR.*data_dir"):
        load_source("math500_test")
    with pytest.raises(UsageError, match="math500_test.jsonl"):
        load_source("math500_test", data_dir=str(tmp_path))


@pytest.mark.parametrize(
    "source,count", [("gsm8k_test", 1319), ("math500_test", 500), ("math_test", 5000)]
)
def test_local_sources(shared_data, source, count):
    ds = load_source(source, data_dir=str(shared_data))["test"]
    assert len(ds) == count
    assert all(doc["answer"] for doc in ds)
    assert set(ds[0]) == {"id", "kind", "problem", "answer"}


def test_task_yaml_is_lm_eval_style():
    base = (tasks_dir() / "_bon_template_yaml").read_text()
    assert "class: !function lm_eval_swift.harness.tasks.BestOfNTask" in base
    for name in ("gsm8k_bon_swift", "math_bon_swift", "math_full_bon_swift"):
        lines = (tasks_dir() / f"{name}.yaml").read_text().splitlines()
        # a leading comment describes the task (eval --help lists it); then the include, as lm-eval's own tasks
        assert lines[0].startswith("# ") and lines[1] == "include: _bon_template_yaml"


def test_reward_model_rows(tmp_path, shared_data):
    """A scorer named in --metadata adds argmax, weighted-vote and SWIFT-combination rows, and its scores and
    cost land in the rollouts file; the report recomputes the same values."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from lm_eval_swift.toy_models import char_tokenizer

    tok = char_tokenizer()
    torch.manual_seed(0)
    rm = LlamaForSequenceClassification(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_labels=1,
            pad_token_id=tok.pad_token_id,
        )
    )
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    tm = TaskManager(
        include_path=str(tasks_dir()),
        include_defaults=False,
        metadata={
            "n": 4,
            "data_dir": str(shared_data),
            "scorers": {"seq-cls": {"model": str(tmp_path / "rm")}},
        },
    )
    tracker = EvaluationTracker(output_path=str(tmp_path / "out"))
    results = simple_evaluate(
        model=ScriptedLM(SCRIPT),
        tasks=["gsm8k_bon_swift"],
        task_manager=tm,
        limit=2,
        evaluation_tracker=tracker,
    )
    tracker.save_results_aggregated(results=results, samples=None)
    save_rollouts(next((tmp_path / "out").rglob("results_*.json")))
    acc = {
        key.split(",")[1]: v
        for key, v in results["results"]["gsm8k_bon_swift"].items()
        if key.startswith("acc,")
    }
    for row in (
        "seq-cls@4",
        "seq-cls_vote@4",
        "swift+seq-cls_scaling@4",
        "swift+seq-cls_ranking@1",
    ):
        assert row in acc
    rollouts = list(read_rollouts(next((tmp_path / "out").rglob("rollouts_*.jsonl"))))
    assert all("seq-cls" in resp.scores for r in rollouts for resp in r.responses)
    assert rollouts[0].costs["seq-cls"]["parameters"] == sum(
        p.numel() for p in rm.parameters()
    )
    table = bon_table(rollouts)
    assert table["seq-cls"][4] == acc["seq-cls@4"]
    assert table["seq-cls_vote"][4] == pytest.approx(acc["seq-cls_vote@4"])
    assert table["swift+seq-cls_ranking"][1] == acc["swift+seq-cls_ranking@1"]


def test_training_rollout_sources(shared_data):
    docs = load_source("math_train_12k", data_dir=str(shared_data))["test"]
    assert len(docs) == 12000  # 7500 train + 4500 test problems outside MATH-500
    math500 = {
        d["problem"]
        for d in load_source("math500_test", data_dir=str(shared_data))["test"]
    }
    assert not math500 & set(docs["problem"])
    assert (
        len(
            load_source("gsm8k_train", data_dir=str(shared_data), max_questions=6000)[
                "test"
            ]
        )
        == 6000
    )


def test_training_rollout_tasks_default_to_8_samples(shared_data):
    tm = TaskManager(
        include_path=str(tasks_dir()),
        include_defaults=False,
        metadata={"data_dir": str(shared_data)},
    )
    tasks = tm.load(["gsm8k_train_rollouts", "math_train_rollouts"])
    flat = {t.config.task: t for t in _leaves(tasks)}
    assert flat["gsm8k_train_rollouts"].config.repeats == 8
    assert len(flat["math_train_rollouts"].test_docs()) == 6000


def _leaves(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _leaves(v)
    else:
        yield obj


def test_task_rows_equal_report_rows(shared_data):
    """lm-eval's filter pipelines of the task and the report's table come from one definition: the same rows and
    k values, in the same order, for N=16 with SWIFT and a reward model."""
    from lm_eval_swift.bon.rollouts import QuestionRollout, Response

    tm = TaskManager(include_path=str(tasks_dir()), include_defaults=False,
                     metadata={"n": 16, "data_dir": str(shared_data), "scorers": "skywork"})  # fmt: skip
    task = next(
        t
        for t in _leaves(tm.load(["gsm8k_bon_swift"]))
        if t.config.task == "gsm8k_bon_swift"
    )
    responses = [
        Response("1", "1", 1.0, 0, 1, scores={"swift": 0.5, "skywork": 0.1})
        for _ in range(16)
    ]
    rollout = QuestionRollout(
        "t",
        0,
        "gsm8k",
        "q",
        "q",
        "1",
        responses,
        costs={"skywork": {"parameters": 1.0}},
    )
    table = bon_table([rollout])
    report_rows = [
        row if row == "first" else f"{row}@{k}"
        for row, cols in table.items()
        for k in cols
    ]
    assert [f["name"] for f in task.config.filter_list] == report_rows
    assert (
        "maj@16" in report_rows
        and "maj@64" not in report_rows
        and "mean@16" in report_rows
    )
    assert "swift+skywork_ranking@4" in report_rows
