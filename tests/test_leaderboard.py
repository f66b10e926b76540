"""Leaderboard over hand-made rollouts and results JSON: hand-computed cells, the k-subsets estimator against
closed forms, costs and AUROC, Markdown/CSV/PNG outputs and clear errors on bad input."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import statistics
import subprocess
import sys

import pytest

from lm_eval_swift.bon.metrics import auroc
from lm_eval_swift.bon.rollouts import (
    QuestionRollout,
    Response,
    read_rollouts,
    write_rollouts,
)
from lm_eval_swift.commands import add_leaderboard_arguments, add_plot_arguments
from lm_eval_swift.errors import UsageError
from lm_eval_swift.reports.leaderboard import (
    bon_estimates,
    cmd_leaderboard,
    leaderboard,
    parse_head_parameters,
)
from lm_eval_swift.reports.plot import cmd_plot, plot_bon_curves
from lm_eval_swift.reports.report import bon_table


TASK = "gsm8k_bon_swift"
RM_COST = {"seconds_per_sample": 0.5, "parameters": 1e9}


def question(
    doc_id: int, classes, correct, swift=None, rm=None, task: str = TASK
) -> QuestionRollout:
    """N responses of 20 characters and 10 tokens each; the question has 40 characters."""
    responses = []
    for i, (cls, ok) in enumerate(zip(classes, correct, strict=True)):
        scores = {}
        if swift is not None:
            scores["swift"] = swift[i]
        if rm is not None:
            scores["rm"] = rm[i]
        responses.append(
            Response(
                f"answer {cls:>2} ".ljust(20, "."),
                str(cls),
                float(ok),
                cls,
                10,
                scores=scores,
            )
        )
    costs = {"rm": dict(RM_COST)} if rm is not None else {}
    return QuestionRollout(
        task, doc_id, "gsm8k", "q" * 40, "prompt", "1", responses, costs=costs
    )


# model A: q0 wrong first, majority tie to a wrong class, swift right, rm wrong; q1 first and majority right
MODEL_A = [
    question(
        0,
        [0, 1, 0, 1, 4, 1, 0, 0],
        [0, 1, 0, 1, 0, 1, 0, 0],
        swift=[0.1, 2.0, 0.5, -1.0, 0.0, 0.3, 0.2, 0.4],
        rm=[0.9, 0.2, 0.1, 0.3, 0.0, 0.8, 0.7, 0.6],
    ),
    question(
        1,
        [0, 0, 2, 3, 0, 5, 6, 0],
        [1, 1, 0, 0, 1, 0, 0, 1],
        swift=[-1.0, 0.5, 1.0, 0.2, 0.1, 0.0, 0.3, 0.4],
        rm=[0.5, 0.1, 0.2, 0.9, 0.3, 0.0, 0.1, 0.2],
    ),
]
# model B: q0 has one right answer (r5, swift's favourite), q1 is all right
MODEL_B = [
    question(
        0,
        list(range(8)),
        [0, 0, 0, 0, 0, 1, 0, 0],
        swift=[0.0, 0.1, 0.2, 0.3, 0.4, 3.0, 0.5, 0.6],
        rm=[0.1] * 8,
    ),
    question(1, [0] * 8, [1] * 8, swift=[0.0] * 8, rm=[0.2] * 8),
]


@pytest.fixture
def files(tmp_path):
    a = write_rollouts(
        MODEL_A, tmp_path / "org__model-a" / f"rollouts_{TASK}_2025.jsonl"
    )
    b = write_rollouts(
        MODEL_B, tmp_path / "org__model-b" / f"rollouts_{TASK}_2025.jsonl"
    )
    return a, b


def value(board, model, row, k):
    return board.cells[(model, TASK)][(row, k)].value


def test_first_estimator_hand_values(files):
    board = leaderboard(files, ks=(1, 4, 8))
    a, b = "org/model-a", "org/model-b"
    assert board.estimator == "first" and "Estimator: first" in board.to_markdown()
    assert value(board, a, "first", 1) == 0.5
    assert (
        value(board, a, "maj", 4) == 0.5
    )  # q0: tie 0-vs-1 goes to wrong class 0; q1: class 0 wins
    assert value(board, a, "oracle", 4) == 1.0
    assert value(board, a, "swift", 4) == 0.5  # q0 right (2.0), q1 wrong (1.0)
    assert value(board, a, "rm", 4) == 0.0  # q0 r0 (0.9), q1 r3 (0.9): both wrong
    assert value(board, a, "mean", 8) == pytest.approx((3 / 8 + 4 / 8) / 2)
    assert value(board, b, "swift", 4) == 0.5 and value(board, b, "swift", 8) == 1.0
    assert value(board, b, "oracle", 8) == 1.0
    assert board.average("swift", 8) == pytest.approx(0.75)
    assert board.average("rm", 4) == pytest.approx((0.0 + 0.5) / 2)
    assert board.cells[(a, TASK)][("first", 1)].stderr == pytest.approx(
        0.5
    )  # values 0, 1
    assert {"swift+rm_scaling", "swift+rm_ranking", "rm_vote", "swift_vote"} <= set(
        board.rows
    )
    # the same numbers as `report`; a file given twice is merged by question, not counted twice
    table = bon_table(MODEL_A, (1, 4, 8))
    assert {(r, k): v for r, cols in table.items() for k, v in cols.items()} == {
        key: c.value for key, c in board.cells[(a, TASK)].items()
    }
    assert (
        leaderboard([files[0], files[0]], ks=(1, 4, 8)).cells[(a, TASK)]
        == board.cells[(a, TASK)]
    )


def pass_at_k(n: int, c: int, k: int) -> float:
    return 1 - math.comb(n - c, k) / math.comb(n, k)


def test_subsets_estimator_matches_closed_forms():
    counts = [
        0,
        3,
        8,
    ]  # correct responses per question, each response its own answer class
    qs = [
        question(i, list(range(8)), [j < c for j in range(8)])
        for i, c in enumerate(counts)
    ]
    cells = bon_estimates(
        qs, (1, 2, 4, 8), "subsets", subsets=70
    )  # C(8, k) <= 70: every subset, exact
    for k in (1, 2, 4, 8):
        per_q = [pass_at_k(8, c, k) for c in counts]
        assert cells[("oracle", k)].value == pytest.approx(statistics.fmean(per_q))
        assert cells[("oracle", k)].stderr == pytest.approx(
            statistics.stdev(per_q) / math.sqrt(3)
        )
    means = statistics.fmean(c / 8 for c in counts)
    assert cells[("first", 1)].value == pytest.approx(means)
    assert cells[("maj", 1)].value == pytest.approx(means)
    assert cells[("mean", 8)].value == pytest.approx(means)
    # fewer subsets than C(8, 4): sampled, seeded, close to the closed form
    sampled = bon_estimates(qs, (4,), "subsets", subsets=32, seed=1)
    assert sampled == bon_estimates(qs, (4,), "subsets", subsets=32, seed=1)
    assert sampled[("oracle", 4)].value == pytest.approx(
        statistics.fmean(pass_at_k(8, c, 4) for c in counts), abs=0.1
    )
    # first k of N on the same data: q1's right answers come first
    assert bon_estimates(qs, (4,))[("oracle", 4)].value == pytest.approx(2 / 3)


def test_costs_and_auroc(files):
    board = leaderboard(files, ks=(1, 4), head_parameters={"swift": 4098})
    stats = {(s.model, s.score): s for s in board.scores}
    rm = stats[("org/model-a", "rm")]
    assert (
        rm.kind == "reward model"
        and rm.seconds_per_sample == 0.5
        and rm.parameters == 1e9
    )
    assert rm.tokens_per_sample == pytest.approx(
        10 + 40 * 0.5
    )  # response + question at 10 tokens / 20 chars
    assert rm.flops_per_sample == pytest.approx(2 * 1e9 * 30)
    swift = stats[("org/model-a", "swift")]
    assert swift.kind == "SWIFT head" and swift.seconds_per_sample is None
    assert swift.flops_per_sample == pytest.approx(2 * 4098 * 10)
    # hand count: q0 8 wins of 15 pairs, q1 7 of 16
    assert swift.within_question_auroc == pytest.approx(15 / 31)
    flat = [r for q in MODEL_A for r in q.responses]
    assert swift.auroc == pytest.approx(
        auroc([r.scores["swift"] for r in flat], [r.correct for r in flat])
    )
    assert (
        leaderboard(files, ks=(1,)).scores[1].flops_per_sample is None
    )  # head size not given: unknown
    assert "| unknown |" in leaderboard(files, ks=(1,)).to_markdown()


def write_results(path, model_name: str | None, cells: dict) -> None:
    data = {
        "results": {
            TASK: {"alias": TASK, **cells},
            "other_task": {"alias": "other", "acc,none": 0.9},
        },
        "config": {
            "model": "hf",
            "model_args": "pretrained=org/model-c,dtype=bfloat16",
        },
    }
    if model_name:
        data["model_name"] = model_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_results_json_mixed_with_rollouts(files, tmp_path):
    c = tmp_path / "elsewhere" / "results_2025.json"
    write_results(
        c,
        None,
        {
            "acc,first": 0.25,
            "acc_stderr,first": 0.1,
            "acc,maj@4": 0.5,
            "acc_stderr,maj@4": "N/A",
            "acc,swift@16": 0.7,
            "acc,mean@8": 0.3,
        },
    )
    stale = (
        files[0].parent / "results_2025.json"
    )  # beside model A's rollouts: the rollouts win
    write_results(stale, "org/model-a", {"acc,first": 0.0, "acc,maj@4": 0.0})
    board = leaderboard([*files, c, stale], ks=(1, 4))
    model_c = ("org/model-c", TASK)  # from config.model_args
    assert board.groups == [("org/model-a", TASK), ("org/model-b", TASK), model_c]
    assert set(board.cells[model_c]) == {
        ("first", 1),
        ("maj", 4),
    }  # swift@16 and mean@8: k not asked for
    assert (
        board.cells[model_c][("first", 1)].value == 0.25
        and board.cells[model_c][("first", 1)].stderr == 0.1
    )
    assert math.isnan(board.cells[model_c][("maj", 4)].stderr)
    assert value(board, "org/model-a", "maj", 4) == 0.5
    assert board.average("maj", 4) == pytest.approx(
        (0.5 + value(board, "org/model-b", "maj", 4) + 0.5) / 3
    )
    assert board.average("swift", 4) is None  # model C has no swift@4
    assert "org/model-c k=4" in board.to_markdown()
    subsets = leaderboard([*files, c], ks=(1, 4), estimator="subsets")
    assert "keep lm-eval's values" in subsets.to_markdown()


def test_markdown_and_csv_written_by_cli(files, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_leaderboard_arguments(parser)
    out_csv, out_md = tmp_path / "out" / "board.csv", tmp_path / "board.md"
    cmd_leaderboard(
        parser.parse_args(
            [
                *map(str, files),
                "--k",
                "1",
                "4",
                "--estimator",
                "subsets",
                "--csv",
                str(out_csv),
                "--markdown",
                str(out_md),
            ]
        )
    )
    printed = capsys.readouterr().out
    assert "| selector | org/model-a k=1 | org/model-a k=4 | org/model-b k=1" in printed
    assert "Average k=4" in printed and "Estimator: subsets" in printed
    assert out_md.read_text() in printed
    rows = list(csv.DictReader(out_csv.open()))
    assert {r["estimator"] for r in rows} == {"subsets"}
    maj = [r for r in rows if r["selector"] == "maj" and r["k"] == "1"]
    assert {r["model"] for r in maj} == {"org/model-a", "org/model-b", "Average"}
    scores = list(csv.DictReader((tmp_path / "out" / "board_scores.csv").open()))
    assert {(r["model"], r["score"]) for r in scores} == {
        (m, s) for m in ("org/model-a", "org/model-b") for s in ("rm", "swift")
    }


def test_plot_draws_one_curve_per_selector(files, tmp_path, capsys):
    out = tmp_path / "curve.png"
    axes = plot_bon_curves(files, out, estimator="subsets")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [ax.get_title() for ax in axes] == ["org/model-a", "org/model-b"]
    # every row with k = 1, 2, 4, 8 (first and mean have a single k): maj, oracle, swift, swift_vote, rm,
    # rm_vote and the two combinations
    assert [len(ax.get_lines()) for ax in axes] == [8, 8]
    assert {line.get_label() for line in axes[0].get_lines()} >= {
        "oracle",
        "maj",
        "swift",
    }
    assert [x for x in axes[0].get_lines()[0].get_xdata()] == [1, 2, 4, 8]
    parser = argparse.ArgumentParser()
    add_plot_arguments(parser)
    cmd_plot(parser.parse_args([*map(str, files), "-o", str(tmp_path / "cli.png")]))
    assert "16 curves, 2 panels" in capsys.readouterr().out


def test_bad_input_is_a_clear_error(files, tmp_path):
    garbage = tmp_path / "results_bad.json"
    garbage.write_text("{not json")
    with pytest.raises(ValueError, match="results_bad.json: not a JSON document"):
        leaderboard([garbage])
    not_results = tmp_path / "x.json"
    not_results.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not an lm-eval results file"):
        leaderboard([not_results])
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(ValueError, match="notes.txt: unknown file kind"):
        leaderboard([*files, other])
    bad_line = tmp_path / "m" / "rollouts.jsonl"
    bad_line.parent.mkdir()
    bad_line.write_text('{"task": 1}\n')
    with pytest.raises(ValueError, match="rollouts.jsonl:1: not a rollouts record"):
        leaderboard([bad_line])
    with pytest.raises(ValueError, match="unknown estimator"):
        leaderboard(files, estimator="median")
    with pytest.raises(ValueError, match="NAME=COUNT"):
        parse_head_parameters(["swift"])
    parser = argparse.ArgumentParser()
    add_leaderboard_arguments(parser)
    with pytest.raises(UsageError, match="unknown file kind"):
        cmd_leaderboard(parser.parse_args([str(other)]))


def test_gzip_rollouts_read_as_plain_ones_and_a_corrupt_one_is_a_clear_error(
    files, tmp_path
):
    plain = next(f for f in files if f.suffix == ".jsonl")
    packed = write_rollouts(
        read_rollouts(plain), tmp_path / plain.parent.name / (plain.name + ".gz")
    )
    assert [r.to_json() for r in read_rollouts(packed)] == [
        r.to_json() for r in read_rollouts(plain)
    ]
    assert leaderboard([packed]).cells == leaderboard([plain]).cells
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(packed.read_bytes()[:40])
    with pytest.raises(UsageError, match="cut.jsonl.gz: corrupt compressed file"):
        list(read_rollouts(truncated))


def test_mixed_n_uses_each_questions_own_n_and_says_so(tmp_path, caplog):
    """One question with 3 responses beside one with 8: a warning, mean over each question's own samples, and
    the other rows only at k every question has (never a silent cut of the longer question)."""
    short = question(1, [0, 0, 2], [1, 1, 0], swift=[0.0, 0.5, 1.0], rm=[0.1, 0.2, 0.3])
    rollouts = [MODEL_A[0], short]
    caplog.set_level("WARNING", logger="lm_eval_swift.bon.rows")
    table = bon_table(rollouts, ks=(1, 2, 4, 8))
    assert (
        "N differs between questions (1 of 2 have fewer than 8 samples, the fewest 3)"
        in caplog.text
    )
    assert table["mean"] == {8: pytest.approx((3 / 8 + 2 / 3) / 2)}
    assert set(table["maj"]) == {1, 2}
    path = write_rollouts(rollouts, tmp_path / "org__m" / f"rollouts_{TASK}_2025.jsonl")
    for estimator in ("first", "subsets"):
        board = leaderboard([path], ks=(1, 2, 4, 8), estimator=estimator)
        assert value(board, "org/m", "mean", 8) == pytest.approx((3 / 8 + 2 / 3) / 2)
        assert {k for row, k in board.cells[("org/m", TASK)] if row == "maj"} == {1, 2}
    first = leaderboard([path], ks=(1, 2, 4, 8))
    assert {
        key: c.value for key, c in first.cells[("org/m", TASK)].items()
    } == pytest.approx(
        {(row, k): v for row, cols in table.items() for k, v in cols.items()}
    )


def test_partly_scored_rollouts_warn(caplog):
    caplog.set_level("WARNING", logger="lm_eval_swift.bon.rows")
    bon_table([MODEL_A[0], question(1, [0, 1], [1, 0])], ks=(1, 2))
    assert "2 of 10 responses have no 'swift' score" in caplog.text


def test_one_model_from_two_folders_is_one_readable_model(tmp_path):
    """lm-eval names its output folders after the sanitised model path; the leaderboard names the model as the
    results file beside the rollouts names it (a local path's last component), or from the folder name alone."""
    paths = []
    for i, folder in enumerate(("a", "b")):
        out = tmp_path / f"__tmp__{folder}__swift-demo-llama"
        paths.append(
            write_rollouts([MODEL_A[i]], out / f"rollouts_{TASK}_2025-01-0{i}.jsonl")
        )
        if folder == "a":
            write_results(
                out / "results_2025-01-00.json",
                f"/tmp/{folder}/swift-demo-llama",
                {"acc,first": 0.0},
            )
    board = leaderboard(paths, ks=(1, 4))
    assert board.groups == [("swift-demo-llama", TASK)]
    assert (
        board.cells[("swift-demo-llama", TASK)][("maj", 4)].value == 0.5
    )  # both questions, merged


@pytest.mark.parametrize(
    "content,message",
    [
        ("", "no rollouts in the file"),
        (
            json.dumps(json.loads(MODEL_A[0].to_json()) | {"doc_id": "0"}),
            "field 'doc_id' is '0', expected an integer",
        ),
        (
            MODEL_A[0].to_json().replace('"correct": 0.0', '"correct": "no"', 1),
            "field 'correct' is 'no', expected a number",
        ),
        (
            MODEL_A[0].to_json().replace('"answer_class": 0, ', "", 1),
            "missing field 'answer_class'",
        ),
    ],
)
def test_bad_rollouts_files_are_one_line_errors_in_every_subcommand(
    tmp_path, content, message
):
    bad = tmp_path / "m" / f"rollouts_{TASK}_2025.jsonl"
    bad.parent.mkdir()
    bad.write_text(content + "\n" if content else "")
    commands = (["report"], ["leaderboard"], ["plot", "-o", str(tmp_path / "x.png")])
    for command in (
        commands if not content else commands[:1]
    ):  # every subcommand once, the field checks in one
        proc = subprocess.run(
            [sys.executable, "-m", "lm_eval_swift", command[0], str(bad), *command[1:]],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        lines = [
            line
            for line in proc.stderr.splitlines()
            if line.startswith("lm-eval-swift: error:")
        ]
        assert len(lines) == 1 and message in lines[0] and str(bad) in lines[0], (
            proc.stderr
        )
        assert "Traceback" not in proc.stderr and not proc.stdout.strip()


def test_a_mistyped_results_value_is_an_error(tmp_path):
    path = tmp_path / "results_1.json"
    write_results(path, "org/m", {"acc,first": 0.5, "acc,maj@4": "0.5"})
    with pytest.raises(UsageError, match=r"acc,maj@4 is '0.5', not a number"):
        leaderboard([path])


def test_plot_titles_fit_their_panels(tmp_path):
    """Readable model names (not lm-eval's sanitised folder) and titles wrapped to their panel's width."""
    long_name = "a-very-long-local-model-name-" * 4 + "end"
    paths = [
        write_rollouts(
            MODEL_A, tmp_path / "org__model-a" / f"rollouts_{TASK}_2025.jsonl"
        ),
        write_rollouts(
            MODEL_B, tmp_path / f"__tmp__x__{long_name}" / f"rollouts_{TASK}_2025.jsonl"
        ),
        write_rollouts(
            [dataclasses.replace(q, task="other_bon") for q in MODEL_B],
            tmp_path / "org__model-a" / "rollouts_other_bon_2025.jsonl",
        ),
    ]
    axes = plot_bon_curves(paths, tmp_path / "curves.png")
    titles = [ax.get_title().replace("\n", "").replace(" / ", "") for ax in axes]
    assert titles == [
        f"{long_name}{TASK}",
        f"org/model-a{TASK}",
        "org/model-aother_bon",
    ]
    renderer = axes[0].figure.canvas.get_renderer()
    for ax in axes:
        title, panel = (
            ax.title.get_window_extent(renderer),
            ax.get_window_extent(renderer),
        )
        assert panel.x0 - 20 <= title.x0 and title.x1 <= panel.x1 + 20, ax.get_title()
