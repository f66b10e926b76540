"""End to end through the real command lines: ``lm-eval-swift eval`` with lm-eval's ``hf`` and with ``hf-swift``, and
``lm_eval`` with our task directory, on a tiny random model with local data and --limit."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from lm_eval_swift.bon.rollouts import build_rollout, read_rollouts, write_rollouts
from lm_eval_swift.cli import SUBCOMMANDS, build_parser
from lm_eval_swift.commands import DATA_DIR_ENV
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
    [
        "unknown task",
        "head path",
        "model path",
        "other model's head",
        "n=0",
        "n=four",
        "data dir",
    ],
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
        "model path": "/no/such/model",
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
        # mistakes seen in the arguments are said before lm-eval starts (its first log line is an INFO)
        before=" INFO " if case not in ("other model's head", "data dir") else None,
    )
    expected = {
        "unknown task": "unknown task 'gsm8k_bon_swfit'; did you mean gsm8k_bon_swift",
        "model path": f"--model_args pretrained={model}/no/such/model: no such model directory",
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
        # Ctrl-C's default action, also when pytest runs as a background job of a shell, whose SIGINT is ignored
        # (Python then leaves it ignored and the child would never see the signal)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
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


# ---- help: the workflow, every option explained, no heavy imports --------------------------------------------------

HELP_IMPORTS = """
import sys
from lm_eval_swift.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("HEAVY", sorted(m for m in ("torch", "transformers", "datasets", "lm_eval.evaluator") if m in sys.modules))
"""


@pytest.mark.parametrize("command", [[], ["eval"], *([c] for c in SUBCOMMANDS)])
def test_help_imports_nothing_heavy(command, tmp_path):
    """``--help`` of every command answers without importing torch, transformers, datasets or lm-eval's evaluator
    (what made it take 10-30 s)."""
    proc = subprocess.run(
        [sys.executable, "-c", HELP_IMPORTS, *command, "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.rstrip().endswith("HEAVY []"), proc.stdout[-2000:]
    assert "usage: lm-eval-swift" in proc.stdout


def test_help_teaches_the_workflow_and_every_option(tmp_path):
    top = run([sys.executable, "-m", "lm_eval_swift", "--help"], tmp_path)
    for step in ("--tasks gsm8k_train_rollouts", "lm-eval-swift train", "--tasks gsm8k_bon_swift",
                 "lm-eval-swift report", "lm-eval-swift rescore", "lm-eval-swift leaderboard", "tasks-dir"):  # fmt: skip
        assert step in top, step
    assert ":class:" not in top and "``" not in top  # no Sphinx markup
    ev = run([sys.executable, "-m", "lm_eval_swift", "eval", "--help"], tmp_path)
    for name in ("hf-swift", "heads=", '{"n": 16}', DATA_DIR_ENV, "--batch_size", "gsm8k_bon_swift",
                 "gsm8k_train_rollouts", "math_train_rollouts", "demo_train_rollouts", "usage: lm-eval-swift eval"):  # fmt: skip
        assert name in ev, name
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, command in sub.choices.items():
        if name != "eval":
            assert "example" in command.description, name
            for action in command._actions:
                assert action.help, f"{name} {action.option_strings or action.dest}"
    smollm2 = run(
        [sys.executable, "-m", "lm_eval_swift", "smollm2", "--help"], tmp_path
    )
    assert "see --help of smollm2" not in smollm2


def test_help_choices_are_the_codes():
    """The choice lists that lm_eval_swift.commands repeats (so that --help imports nothing heavy) are the ones the
    code uses."""
    from lm_eval_swift import commands
    from lm_eval_swift.bon.rows import BON_KS, ETAS
    from lm_eval_swift.confidence import CONFIDENCE_SCORERS
    from lm_eval_swift.grading import MODES
    from lm_eval_swift.harness import tasks
    from lm_eval_swift.reports.leaderboard import ESTIMATORS
    from lm_eval_swift.scorers import PROTOCOLS
    from lm_eval_swift.swift.training import EARLY_STOPS, LOSSES

    assert commands.DEFAULT_KS == BON_KS and commands.DATA_DIR_ENV == tasks.DATA_DIR_ENV
    assert tuple(commands.PROTOCOLS) == tuple(PROTOCOLS)
    assert commands.LOSSES == LOSSES and commands.EARLY_STOPS == EARLY_STOPS
    assert commands.ESTIMATORS == tuple(ESTIMATORS)
    assert commands.GRADING_MODES == tuple(MODES)
    assert commands.ETAS == ETAS
    assert commands.CONFIDENCE_SCORERS == tuple(CONFIDENCE_SCORERS)


# ---- report --k --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def four_samples(tmp_path_factory) -> Path:
    """A rollouts file of 3 questions with N = 4 graded samples each."""
    path = tmp_path_factory.mktemp("report") / "rollouts_gsm8k_bon_swift_2026.jsonl"
    answers = [["\\boxed{4}", "\\boxed{3}", "\\boxed{3}", "no"]] * 3
    write_rollouts(
        [build_rollout("gsm8k_bon_swift", i, "gsm8k", "q", "p", "3", a) for i, a in enumerate(answers)],
        path,
    )  # fmt: skip
    return path


@pytest.mark.parametrize(
    "ks, expected",
    [
        (["0"], "argument --k: expected a whole number >= 1, got '0'"),
        (["-1"], "argument --k: expected a whole number >= 1, got '-1'"),
        (["two"], "argument --k: expected a whole number >= 1, got 'two'"),
        (["1", "100"], "--k 100: k can be at most 4, the number of samples of each question of gsm8k_bon_swift"),
    ],
)  # fmt: skip
def test_report_k_must_be_a_whole_number_up_to_n(ks, expected, four_samples, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval_swift", "report", str(four_samples), "--k", *ks],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert expected in proc.stderr and proc.stdout == "", proc.stderr


def test_report_prints_the_ks_asked_for(four_samples, tmp_path):
    out = run(
        [
            sys.executable,
            "-m",
            "lm_eval_swift",
            "report",
            str(four_samples),
            "--k",
            "1",
            "2",
        ],
        tmp_path,
    )
    assert "| selector | k=1 | k=2 | k=4 |" in out  # k=4: mean@N
    assert (
        "| first | 0.0000 |  |  |" in out and "| oracle | 0.0000 | 1.0000 |  |" in out
    )
    default = run(
        [sys.executable, "-m", "lm_eval_swift", "report", str(four_samples)], tmp_path
    )
    assert (
        "| selector | k=1 | k=4 |" in default
    )  # 16 and 64 of the default ks exceed N = 4: left out


# ---- plain lm_eval: its --log_samples files are read by report, leaderboard and rescore ---------------------------


@pytest.fixture(scope="module")
def plain_lm_eval_run(model_and_head, shared_data, tmp_path_factory) -> Path:
    """The output folder of the real ``lm_eval --model hf --log_samples`` with our task directory, found with
    ``lm-eval-swift tasks-dir``, and no SWIFT heads: lm-eval's results and samples files, no rollouts."""
    model, _ = model_and_head
    tmp = tmp_path_factory.mktemp("plain")
    include = run([sys.executable, "-m", "lm_eval_swift", "tasks-dir"], tmp).strip()
    assert (
        Path(include) == tasks_dir()
        and (Path(include) / "gsm8k_bon_swift.yaml").is_file()
    )
    out = tmp / "out"
    run(
        ["lm_eval", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32", "--include_path", include,
         *common_flags(shared_data, out, {}), "--log_samples"],
        tmp,
    )  # fmt: skip
    assert not list(out.rglob("rollouts_*")) and list(
        out.rglob("samples_gsm8k_bon_swift_*.jsonl")
    )
    return out


def test_report_reads_lm_evals_samples_file_as_lm_eval_scored_it(
    plain_lm_eval_run, tmp_path
):
    """report regrades the responses of lm_eval's samples file: each row equals lm-eval's own value for it."""
    samples = next(plain_lm_eval_run.rglob("samples_gsm8k_bon_swift_*.jsonl"))
    acc = lm_eval_acc(plain_lm_eval_run)
    table = run(
        [sys.executable, "-m", "lm_eval_swift", "report", str(samples)], tmp_path
    )
    assert f"gsm8k_bon_swift: {LIMIT} questions, N={N}" in table
    cells = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in table.splitlines()
        if line.startswith("| ") and "selector" not in line
    }
    assert float(cells["first"][0]) == pytest.approx(acc["first"])
    assert float(cells["maj"][1]) == pytest.approx(acc["maj@4"])
    assert float(cells["oracle"][1]) == pytest.approx(acc["oracle@4"])
    assert float(cells["mean"][1]) == pytest.approx(acc[f"mean@{N}"])
    results = next(plain_lm_eval_run.rglob("results_*.json"))
    line = user_error(["report", str(results)], tmp_path)
    assert "holds no responses" in line and samples.name in line


def test_rescore_adds_head_scores_to_lm_evals_samples(
    plain_lm_eval_run, model_and_head, tmp_path
):
    """rescore of lm_eval's samples file writes graded rollouts with SWIFT rewards beside it (the samples file is
    left as it is); report and leaderboard then have the SWIFT rows; a second rescore of the samples file refuses
    to overwrite them."""
    model, head = model_and_head
    samples = next(plain_lm_eval_run.rglob("samples_gsm8k_bon_swift_*.jsonl"))
    before = samples.read_bytes()
    flags = [
        "--head",
        str(head),
        "--model",
        str(model),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--max-gen-toks",
        "12",
    ]
    run(
        [sys.executable, "-m", "lm_eval_swift", "rescore", str(samples), *flags],
        tmp_path,
    )
    assert samples.read_bytes() == before
    rollouts = samples.with_name(samples.name.replace("samples_", "rollouts_", 1))
    rescored = list(read_rollouts(rollouts))
    assert len(rescored) == LIMIT and all(
        set(resp.scores) == {"swift"} and resp.token_ids for r in rescored for resp in r.responses
    )  # fmt: skip
    assert all(r.prompt.startswith("<s><|user|>Solve the following") for r in rescored)
    assert "| swift_vote |" in run(
        [sys.executable, "-m", "lm_eval_swift", "report", str(rollouts)], tmp_path
    )
    board = run(
        [sys.executable, "-m", "lm_eval_swift", "leaderboard", str(rollouts)], tmp_path
    )
    assert "| swift |" in board and "SWIFT head" in board
    again = user_error(["rescore", str(samples), *flags], tmp_path)
    assert "already exists" in again and "rescore it instead" in again
    rollouts.unlink()


def lm_eval_acc(out: Path) -> dict[str, float]:
    """lm-eval's acc rows of gsm8k_bon_swift in its results file under ``out``, by row name."""
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"][
        "gsm8k_bon_swift"
    ]
    return {
        key.split(",")[1]: v for key, v in results.items() if key.startswith("acc,")
    }


# ---- hf-swift's rows per decode step, files' modes ------------------------------------------------------------


def test_hf_swift_reads_lm_evals_default_batch_size_as_auto(model_and_head):
    """lm-eval's default --batch_size 1 and auto give as many rows as the memory allows (here: all 12 rows), at
    most max_batch_size; a number other than 1 is kept; a context too long for the memory gives fewer rows."""
    from transformers import AutoModelForCausalLM

    from lm_eval_swift.harness.batching import (
        decode_rows,
        free_memory,
        kv_bytes_per_token,
    )

    model = AutoModelForCausalLM.from_pretrained(model_and_head[0])
    assert (
        decode_rows("1", model, 2048, 64, 12)
        == decode_rows("auto", model, 2048, 64, 12)
        == 12
    )
    assert (
        decode_rows(1, model, 2048, 8, 12) == 8
        and decode_rows("3", model, 2048, 64, 12) == 3
    )
    per_token = kv_bytes_per_token(model.config, 4)
    fits = free_memory(model.device) // (
        2 * per_token
    )  # tokens whose KV cache is half the free memory
    assert decode_rows("auto", model, fits // 3, 64, 12) == 3
    assert decode_rows("auto", model, fits * 4, 64, 12) == 1


def test_files_are_written_with_the_users_umask(tmp_path, model_and_head):
    """Heads (safetensors writes 0600) and built folders (tempfile makes 0700) get the modes of the user's umask."""
    from transformers import AutoConfig

    from lm_eval_swift.paths import with_user_umask

    model, _ = model_and_head
    old = os.umask(0o027)
    try:
        head = SwiftHead.for_model(
            AutoConfig.from_pretrained(model), str(model)
        ).save_pretrained(tmp_path / "h")
        assert {p.name: p.stat().st_mode & 0o777 for p in head.iterdir()} == {
            "head.safetensors": 0o640, "config.json": 0o640,
        }  # fmt: skip
        built = Path(tempfile.mkdtemp(dir=tmp_path))
        (built / "sub").mkdir()
        with open(
            os.open(built / "sub" / "w", os.O_CREAT | os.O_WRONLY, 0o600), "w"
        ) as f:
            f.write("x")
        with_user_umask(built)
        assert [
            p.stat().st_mode & 0o777
            for p in (built, built / "sub", built / "sub" / "w")
        ] == [0o750, 0o750, 0o640]
    finally:
        os.umask(old)


@pytest.mark.parametrize(
    "doc, expected",
    [
        ({"id": "0", "kind": "gsm8k", "problem": "Q?", "answer": "18"}, ("gsm8k", "Q?", "18")),  # our tasks
        ({"question": "Q?", "answer": "16 - 3 = 13\n#### 1,300"}, ("gsm8k", "Q?", "1,300")),  # lm-eval's gsm8k
        ({"problem": "P?", "level": "Level 2", "type": "Algebra", "solution": "so $\\boxed{\\frac12}$."},
         ("math", "P?", "\\frac12")),  # lm-eval's hendrycks_math
    ],
)  # fmt: skip
def test_samples_documents_of_our_and_lm_evals_math_tasks(doc, expected):
    from lm_eval_swift.log_samples import question

    assert question(doc) == expected


def test_samples_of_a_task_that_is_not_math_is_a_user_error(tmp_path):
    path = tmp_path / "samples_hellaswag_2026-01-01T00-00-00.000000.jsonl"
    record = {"doc_id": 0, "doc": {"ctx": "A man", "endings": ["x"]}, "arguments": {"gen_args_0": {"arg_0": "A man"}},
              "resps": [["x"]]}  # fmt: skip
    path.write_text(json.dumps(record) + "\n")
    line = user_error(["report", str(path)], tmp_path)
    assert f"{path}: document 0:" in line and "math answers only" in line
    path.write_text('{"doc_id": 0}\n')
    assert f"{path}:1: not an lm_eval --log_samples record" in user_error(
        ["report", str(path)], tmp_path
    )


def test_demo_takes_one_thread_when_the_cores_are_busy():
    """``demo --threads auto`` counts the cores other processes leave idle: with a busy loop on every core, one."""
    from lm_eval_swift.demo.run import idle_cores

    loops = [
        subprocess.Popen([sys.executable, "-c", "while 1: pass"])
        for _ in os.sched_getaffinity(0)
    ]
    try:
        time.sleep(0.5)
        assert idle_cores(1.0) == 1
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
