"""End to end through the real command lines: ``lm-eval-swift eval`` with lm-eval's ``hf`` and with ``hf-swift``, and
``lm_eval`` with our task directory, on a tiny random model with local data and --limit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from lm_eval_swift.bon.rollouts import read_rollouts
from lm_eval_swift.paths import tasks_dir
from lm_eval_swift.swift.heads import SwiftHead


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


def plain_lm_eval_failing(
    model: Path, shared_data, tmp_path: Path, metadata: dict
) -> str:
    """Output of the real ``lm_eval --model hf`` with our task directory, which must fail before any request."""
    cmd = [
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={model},dtype=float32",
    ]
    cmd += [
        "--include_path",
        str(tasks_dir()),
        *common_flags(shared_data, tmp_path / "out", metadata),
    ]
    return run_failing(cmd, tmp_path)


def common_flags(shared_data, out, metadata: dict) -> list[str]:
    return [
        "--tasks",
        "gsm8k_bon_swift",
        "--limit",
        str(LIMIT),
        "--apply_chat_template",
        "--device",
        "cpu",
        "--batch_size",
        "4",
        "--gen_kwargs",
        "max_gen_toks=12",
        "--output_path",
        str(out),
        "--metadata",
        json.dumps({"n": N, "data_dir": str(shared_data), **metadata}),
    ]


def results_and_rollouts(out: Path):
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"][
        "gsm8k_bon_swift"
    ]
    acc = {key.split(",")[1]: v for key, v in results.items() if key.startswith("acc,")}
    rollouts = list(read_rollouts(next(out.rglob("rollouts_gsm8k_bon_swift_*.jsonl"))))
    return acc, rollouts


def check_rows_and_rollouts(acc, rollouts):
    assert {
        "first",
        f"mean@{N}",
        "maj@4",
        "oracle@4",
        "swift@1",
        "swift@4",
        "swift_vote@4",
    } <= set(acc)
    assert "maj@16" not in acc
    assert len(rollouts) == LIMIT and all(len(r.responses) == N for r in rollouts)
    for r in rollouts:
        assert r.prompt.startswith(
            "<s><|user|>Solve the following math problem"
        )  # the chat template was applied
        for resp in r.responses:
            assert set(resp.scores) == {"swift"} and resp.num_tokens <= 13


def test_lm_eval_hf_rescores_with_a_head(model_and_head, shared_data, tmp_path):
    """lm-eval's plain ``hf`` model: the swift rows come from rescoring with the model of its model arguments, and
    the rollouts carry each response's tokens (re-encoded from its text)."""
    model, head = model_and_head
    out = tmp_path / "out"
    run(
        [
            sys.executable,
            "-m",
            "lm_eval_swift",
            "eval",
            "--model",
            "hf",
            "--model_args",
            f"pretrained={model},dtype=float32",
            *common_flags(shared_data, out, {"heads": str(head)}),
        ],
        tmp_path,
    )
    acc, rollouts = results_and_rollouts(out)
    check_rows_and_rollouts(acc, rollouts)
    tokenizer = AutoTokenizer.from_pretrained(model)
    for r in rollouts:
        for resp in r.responses:
            assert resp.num_tokens == len(resp.token_ids) > 0
            assert (
                tokenizer.decode(resp.token_ids, skip_special_tokens=True) == resp.text
            )
    report = run(
        [
            sys.executable,
            "-m",
            "lm_eval_swift",
            "report",
            str(next(out.rglob("rollouts_*.jsonl"))),
        ],
        tmp_path,
    )
    assert "| swift |" in report and "| maj |" in report


def test_lm_eval_cli_hf_fails_before_sampling_on_a_misspelt_scorer(
    model_and_head, shared_data, tmp_path
):
    """The real ``lm_eval`` with our task directory: a misspelt reward-model name fails when the task is built."""
    model, _ = model_and_head
    out = plain_lm_eval_failing(model, shared_data, tmp_path, {"scorers": "skywrok"})
    assert "unknown scorer 'skywrok'" in out


def test_lm_eval_cli_hf_fails_before_sampling_on_a_head_for_another_model(
    model_and_head, tiny_model_factory, shared_data, tmp_path
):
    """The real ``lm_eval`` with our task directory: a head made for another model fails when the task is built."""
    from transformers import AutoConfig

    model, _ = model_and_head
    other = tiny_model_factory("llama", hidden_size=48)
    head = SwiftHead.for_model(
        AutoConfig.from_pretrained(other), str(other)
    ).save_pretrained(tmp_path / "head")
    out = plain_lm_eval_failing(model, shared_data, tmp_path, {"heads": str(head)})
    assert "does not fit model" in out and "hidden_size" in out


def test_hf_swift_capture_equals_rescoring(model_and_head, shared_data, tmp_path):
    """``lm-eval-swift eval --model hf-swift`` captures rewards while sampling; ``lm-eval-swift rescore`` of the
    same rollouts by a teacher-forced pass gives the same rewards."""
    model, head = model_and_head
    out = tmp_path / "out"
    run(
        [
            sys.executable,
            "-m",
            "lm_eval_swift",
            "eval",
            "--model",
            "hf-swift",
            "--model_args",
            f"pretrained={model},dtype=float32,heads={head}",
            *common_flags(shared_data, out, {}),
        ],
        tmp_path,
    )
    acc, captured = results_and_rollouts(out)
    check_rows_and_rollouts(acc, captured)
    assert all(resp.token_ids for r in captured for resp in r.responses)
    path = next(out.rglob("rollouts_*.jsonl"))
    run(
        [
            sys.executable,
            "-m",
            "lm_eval_swift",
            "rescore",
            str(path),
            "--head",
            f"rescored={head}",
            "--model",
            str(model),
            "--device",
            "cpu",
            "--dtype",
            "float32",
        ],
        tmp_path,
    )
    for r in read_rollouts(path):
        for resp in r.responses:
            assert resp.scores["rescored"] == pytest.approx(
                resp.scores["swift"], rel=1e-3, abs=1e-5
            )


def test_confidence_captured_by_hf_swift_and_computed_for_hf_equal_rescore(
    model_and_head, shared_data, tmp_path
):
    """The confidence scorers: captured by ``hf-swift`` (``confidence=all``), computed by the plain ``hf`` path's
    teacher-forced pass (``--metadata '{"confidence": "all"}'``) with their rows in lm-eval's table, and equal to
    ``lm-eval-swift rescore --confidence all`` of the same rollouts within 1e-4."""
    from lm_eval_swift.confidence import CONFIDENCE_SCORERS

    model, head = model_and_head
    runs = {
        "swift": (
            "hf-swift",
            f"pretrained={model},dtype=float32,heads={head},confidence=all",
            {},
        ),
        "hf": (
            "hf",
            f"pretrained={model},dtype=float32",
            {"confidence": "all", "etas": [10, 90]},
        ),
    }
    for name, (model_type, model_args, metadata) in runs.items():
        out = tmp_path / name
        run([sys.executable, "-m", "lm_eval_swift", "eval", "--model", model_type, "--model_args", model_args,
             *common_flags(shared_data, out, metadata)], tmp_path)  # fmt: skip
        acc, rollouts = results_and_rollouts(out)
        if name == "hf":  # asked for in the metadata: lm-eval's table has these rows
            assert {
                "logprob@4",
                "self_certainty_vote@4",
                "deepconf_tail_top10@4",
            } <= set(acc)
        before = [dict(resp.scores) for r in rollouts for resp in r.responses]
        assert all(set(CONFIDENCE_SCORERS) <= set(s) for s in before)
        path = next(out.rglob("rollouts_*.jsonl"))
        run([sys.executable, "-m", "lm_eval_swift", "rescore", str(path), "--confidence", "all", "--model",
             str(model), "--device", "cpu", "--dtype", "float32"], tmp_path)  # fmt: skip
        after = [resp.scores for r in read_rollouts(path) for resp in r.responses]
        for b, a in zip(before, after, strict=True):
            assert max(abs(b[n] - a[n]) for n in CONFIDENCE_SCORERS) <= 1e-4
        report = run(
            [sys.executable, "-m", "lm_eval_swift", "report", str(path)], tmp_path
        )
        assert "| logprob_vote |" in report and "| deepconf_lowest_top90 |" in report


# ---- a user's mistakes: one line on stderr, exit status 2 (130 for Ctrl-C), a traceback only when asked -------


def user_error(
    cmd: list[str], cwd: Path, env: dict | None = None, before: str | None = None
) -> str:
    """Run ``lm-eval-swift`` ``cmd``; assert it failed as a user error does (and before printing ``before``) and
    return its error line."""
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval_swift", *cmd],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [
        line
        for line in proc.stderr.splitlines()
        if line.startswith("lm-eval-swift: error: ")
    ]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert before is None or before not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def other_head(tiny_model_factory, tmp_path_factory):
    """A head made for another model of another size."""
    from transformers import AutoConfig

    other = tiny_model_factory("llama", hidden_size=16)
    return SwiftHead.for_model(
        AutoConfig.from_pretrained(other), str(other)
    ).save_pretrained(tmp_path_factory.mktemp("other-head"))


@pytest.mark.parametrize(
    "case",
    ["unknown task", "head path", "other model's head", "n=0", "n=four", "data dir"],
)
def test_user_errors_in_eval_are_one_line(
    case, model_and_head, other_head, shared_data, tmp_path
):
    model, _ = model_and_head
    model_args, task, meta = (
        f"pretrained={model}",
        "gsm8k_bon_swift",
        {"n": 2, "data_dir": str(shared_data)},
    )
    model_args += {
        "head path": ",heads=/no/such/head",
        "other model's head": f",heads={other_head}",
    }.get(case, "")
    task = "gsm8k_bon_swfit" if case == "unknown task" else task
    meta |= {
        "n=0": {"n": 0},
        "n=four": {"n": "four"},
        "data dir": {"data_dir": str(tmp_path / "none")},
    }.get(case, {})
    line = user_error(
        [
            "eval",
            "--model",
            "hf-swift",
            "--model_args",
            model_args,
            "--tasks",
            task,
            "--device",
            "cpu",
            "--limit",
            "1",
            "--metadata",
            json.dumps(meta),
        ],
        tmp_path,
    )
    expected = {
        "unknown task": "unknown task 'gsm8k_bon_swfit'; did you mean gsm8k_bon_swift",
        "head path": "SWIFT head '/no/such/head' not found",
        "other model's head": "does not fit model",
        "n=0": "--metadata n must be a whole number >= 1, got 0",
        "n=four": "--metadata n must be a whole number >= 1, got 'four'",
        "data dir": f"local data file {tmp_path / 'none' / 'gsm8k_test.jsonl'} does not exist",
    }[case]
    assert expected in line


def test_max_gen_toks_beyond_the_context_fails_before_sampling(
    model_and_head, shared_data, tmp_path
):
    """The tiny model's context is 2048 tokens: a prompt plus max_gen_toks=2040 does not fit, for hf-swift and for
    lm-eval's hf model alike, and the error says which --gen_kwargs would."""
    model, _ = model_and_head
    for name in ("hf-swift", "hf"):
        line = user_error(
            [
                "eval",
                "--model",
                name,
                "--model_args",
                f"pretrained={model}",
                "--tasks",
                "gsm8k_bon_swift",
                "--device",
                "cpu",
                "--limit",
                "1",
                "--gen_kwargs",
                "max_gen_toks=2040",
                "--metadata",
                json.dumps({"n": 2, "data_dir": str(shared_data)}),
            ],
            tmp_path,
            before="Running generate_until requests",
        )  # lm-eval logs it just before sampling
        assert (
            "plus max_gen_toks=2040 exceeds the model's context of 2048 tokens" in line
        )
        assert ": pass --gen_kwargs max_gen_toks=" in line


def test_rescore_confidence_mistakes_are_one_line(tmp_path):
    """A misspelt confidence scorer, or confidence scores without the model that generated the responses, fail
    before anything is read or loaded."""
    path = str(tmp_path / "rollouts_x.jsonl")
    error = user_error(
        ["rescore", path, "--confidence", "logprob,perplexity", "--model", "m"],
        tmp_path,
    )
    assert "unknown confidence scorer(s) perplexity" in error
    assert "--confidence needs the generating model" in user_error(
        ["rescore", path, "--confidence", "all"], tmp_path
    )


def test_debug_shows_the_traceback(tmp_path):
    empty = tmp_path / "rollouts_x.jsonl"
    empty.write_text("")
    assert "no rollouts in the file" in user_error(["report", str(empty)], tmp_path)
    for cmd, env in (
        (["--debug", "report", str(empty)], None),
        (["report", str(empty)], {"LM_EVAL_SWIFT_DEBUG": "1"}),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "lm_eval_swift", *cmd],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **(env or {})},
        )
        assert (
            proc.returncode == 1
            and "Traceback" in proc.stderr
            and "UsageError: " in proc.stderr
        )


def test_ctrl_c_exits_130_without_a_traceback(model_and_head, shared_data, tmp_path):
    model, _ = model_and_head
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lm_eval_swift",
            "eval",
            "--model",
            "hf-swift",
            "--model_args",
            f"pretrained={model},heads=none,sample_cache=none",
            "--tasks",
            "gsm8k_bon_swift",
            "--device",
            "cpu",
            "--limit",
            "50",
            "--metadata",
            json.dumps({"n": 64, "data_dir": str(shared_data)}),
        ],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    seen = []
    for line in (
        proc.stderr
    ):  # lm-eval logs this line after loading the model, just before sampling
        seen.append(line)
        if "Building contexts for gsm8k_bon_swift" in line:
            break
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, "".join(seen) + rest
    assert "Traceback" not in rest and rest.rstrip().endswith(
        "lm-eval-swift: interrupted"
    ), rest[-2000:]
