"""Tripwires for the private lm-eval surfaces fenced in :mod:`lm_eval_swift.harness.lm_eval_private` (and the model
name rule the leaderboard shares with lm-eval): each test fails when the installed lm-eval changes what we rely on."""

from __future__ import annotations

import argparse
import inspect
import time

import pytest
from lm_eval.api.task import ConfigurableTask
from lm_eval.config.evaluate_config import EvaluatorConfig
from lm_eval.filters import build_filter_ensemble
from lm_eval.loggers import EvaluationTracker
from lm_eval.loggers.evaluation_tracker import GeneralConfigTracker

from lm_eval_swift.harness import lm_eval_private
from lm_eval_swift.reports.leaderboard import model_args_name


def test_run_command_takes_lm_evals_flags():
    parser = argparse.ArgumentParser()
    lm_eval_private.add_run_command(parser)
    args = parser.parse_args(
        ["run", "--model", "hf", "--tasks", "a,b", "--output_path", "out"]
        + ["--include_path", "extra", "--metadata", '{"n": 4}']
    )
    assert callable(args.func)
    assert (args.model, args.tasks, args.output_path) == ("hf", ["a", "b"], "out")
    assert args.include_path == "extra"  # a string, that run_lm_eval makes a list


def test_unknown_tasks_reads_lm_evals_error():
    with pytest.raises(ValueError) as error:
        EvaluatorConfig(tasks=["no_such_task_xyz", "nor_this_one"]).process_tasks()
    assert lm_eval_private.unknown_tasks(error.value) == [
        "no_such_task_xyz",
        "nor_this_one",
    ]
    assert lm_eval_private.unknown_tasks(ValueError("something else")) is None


@pytest.mark.parametrize("output", ["out", "out/run.json"])
def test_results_file_finds_what_lm_eval_wrote(tmp_path, output):
    started = time.time()
    tracker = EvaluationTracker(output_path=str(tmp_path / output))
    tracker.general_config_tracker.log_experiment_args(
        model_source="hf", model_args="pretrained=org/model", system_instruction=None,
        chat_template=None, fewshot_as_multiturn=False,
    )  # fmt: skip
    tracker.save_results_aggregated(results={"results": {}}, samples=None)
    found = lm_eval_private.results_file(tmp_path / output, started)
    assert found is not None and found.exists()
    assert found.stem.endswith(tracker.date_id)


def test_filters_of_a_built_task():
    ensemble = build_filter_ensemble("maj@4", [["take_first", None]])
    assert ensemble.name == "maj@4"
    # ConfigurableTask keeps its pipelines in _filters and applies each one it holds
    assert "self._filters" in inspect.getsource(ConfigurableTask.__init__)
    assert "for f in self._filters" in inspect.getsource(ConfigurableTask.apply_filters)

    class Task:
        _filters = [ensemble, build_filter_ensemble("first", [["take_first", None]])]

    task = Task()
    lm_eval_private.leave_out_filters(task, ["maj@4"])
    assert lm_eval_private.filter_names(task) == ["first"]


@pytest.mark.parametrize(
    "model_args",
    [
        "pretrained=org/model,dtype=float32",
        "peft=adapter,pretrained=org/model",
        {"pretrained": "/tmp/x/model", "heads": "auto"},
        {"model": "gpt", "path": "p"},
        "engine=e",
        "dtype=float32",
        {},
        None,
    ],
)
def test_model_name_rule_is_lm_evals(model_args):
    assert model_args_name(model_args) == GeneralConfigTracker._get_model_name(
        model_args
    )
