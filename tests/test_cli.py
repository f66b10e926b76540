"""End to end through the real command lines: ``lm-eval-swift eval`` with lm-eval's ``hf`` and with ``hf-swift``, and
``lm_eval`` with our task directory, on a tiny random model with local data and --limit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from lm_eval_swift.cli import tasks_dir
from lm_eval_swift.heads import SwiftHead
from lm_eval_swift.rollouts import read_rollouts

N, LIMIT = 4, 2


@pytest.fixture(scope="module")
def model_and_head(tiny_model_factory, tmp_path_factory):
    from transformers import AutoConfig

    model = tiny_model_factory("llama")
    head = SwiftHead.for_model(AutoConfig.from_pretrained(model), str(model))
    head_dir = head.save_pretrained(tmp_path_factory.mktemp("head"))
    return model, head_dir


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def run_failing(cmd: list[str], cwd: Path) -> str:
    """stdout + stderr of a command that must fail before lm-eval runs any request."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "Running generate_until requests" not in out, out[-3000:]
    return out


def common_flags(shared_data, out, metadata: dict) -> list[str]:
    return [
        "--tasks", "gsm8k_bon_swift", "--limit", str(LIMIT), "--apply_chat_template", "--device", "cpu",
        "--batch_size", "4", "--gen_kwargs", "max_gen_toks=12", "--output_path", str(out),
        "--metadata", json.dumps({"n": N, "data_dir": str(shared_data), **metadata}),
    ]


def results_and_rollouts(out: Path):
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]["gsm8k_bon_swift"]
    acc = {key.split(",")[1]: v for key, v in results.items() if key.startswith("acc,")}
    rollouts = list(read_rollouts(next(out.rglob("rollouts_gsm8k_bon_swift_*.jsonl"))))
    return acc, rollouts


def check_rows_and_rollouts(acc, rollouts):
    assert {"first", f"mean@{N}", "maj@4", "oracle@4", "swift@1", "swift@4", "swift_vote@4"} <= set(acc)
    assert "maj@16" not in acc
    assert len(rollouts) == LIMIT and all(len(r.responses) == N for r in rollouts)
    for r in rollouts:
        assert r.prompt.startswith("<s><|user|>Solve the following math problem")  # the chat template was applied
        for resp in r.responses:
            assert set(resp.scores) == {"swift"} and resp.num_tokens <= 13


def test_lm_eval_hf_rescores_with_a_head(model_and_head, shared_data, tmp_path):
    """lm-eval's plain ``hf`` model: the swift rows come from rescoring with the model of its model arguments, and
    the rollouts carry each response's tokens (re-encoded from its text)."""
    model, head = model_and_head
    out = tmp_path / "out"
    run(
        [sys.executable, "-m", "lm_eval_swift", "eval", "--model", "hf", "--model_args",
         f"pretrained={model},dtype=float32", *common_flags(shared_data, out, {"heads": str(head)})],
        tmp_path,
    )
    acc, rollouts = results_and_rollouts(out)
    check_rows_and_rollouts(acc, rollouts)
    tokenizer = AutoTokenizer.from_pretrained(model)
    for r in rollouts:
        for resp in r.responses:
            assert resp.num_tokens == len(resp.token_ids) > 0
            assert tokenizer.decode(resp.token_ids, skip_special_tokens=True) == resp.text
    report = run([sys.executable, "-m", "lm_eval_swift", "report", str(next(out.rglob("rollouts_*.jsonl")))], tmp_path)
    assert "| swift |" in report and "| maj |" in report


def test_lm_eval_cli_hf_fails_before_sampling_on_a_misspelt_scorer(model_and_head, shared_data, tmp_path):
    """The real ``lm_eval`` with our task directory: a misspelt reward-model name fails when the task is built."""
    model, _ = model_and_head
    out = run_failing(
        ["lm_eval", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
         "--include_path", str(tasks_dir()), *common_flags(shared_data, tmp_path / "out", {"scorers": "skywrok"})],
        tmp_path,
    )
    assert "unknown scorer 'skywrok'" in out


def test_lm_eval_cli_hf_fails_before_sampling_on_a_head_for_another_model(model_and_head, tiny_model_factory,
                                                                          shared_data, tmp_path):
    """The real ``lm_eval`` with our task directory: a head made for another model fails when the task is built."""
    from transformers import AutoConfig

    model, _ = model_and_head
    other = tiny_model_factory("llama", hidden_size=48)
    head = SwiftHead.for_model(AutoConfig.from_pretrained(other), str(other)).save_pretrained(tmp_path / "head")
    out = run_failing(
        ["lm_eval", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
         "--include_path", str(tasks_dir()), *common_flags(shared_data, tmp_path / "out", {"heads": str(head)})],
        tmp_path,
    )
    assert "does not fit model" in out and "hidden_size" in out


def test_hf_swift_capture_equals_rescoring(model_and_head, shared_data, tmp_path):
    """``lm-eval-swift eval --model hf-swift`` captures rewards while sampling; ``lm-eval-swift rescore`` of the
    same rollouts by a teacher-forced pass gives the same rewards."""
    model, head = model_and_head
    out = tmp_path / "out"
    run(
        [sys.executable, "-m", "lm_eval_swift", "eval", "--model", "hf-swift",
         "--model_args", f"pretrained={model},dtype=float32,heads={head}",
         *common_flags(shared_data, out, {})],
        tmp_path,
    )
    acc, captured = results_and_rollouts(out)
    check_rows_and_rollouts(acc, captured)
    assert all(resp.token_ids for r in captured for resp in r.responses)
    path = next(out.rglob("rollouts_*.jsonl"))
    run([sys.executable, "-m", "lm_eval_swift", "rescore", str(path), "--head", f"rescored={head}",
         "--model", str(model), "--device", "cpu", "--dtype", "float32"], tmp_path)
    for r in read_rollouts(path):
        for resp in r.responses:
            assert resp.scores["rescored"] == pytest.approx(resp.scores["swift"], rel=1e-3, abs=1e-5)
