"""Data parallel on CPU: ``accelerate launch`` of ``hf-swift`` with 2 processes (gloo) gives the table and the
rollouts file of one process. On a machine without GPUs accelerate starts several processes only with
``--multi_gpu`` (its torchrun launcher; without it ``--num_processes 2`` runs one process), and they form a CPU
process group only with ``ACCELERATE_USE_CPU=true``, which ``hf-swift`` sets itself."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from helpers import (
    ENV,
    N,
    acc_rows,
    cache_line,
    count_rows,
    eval_flags,
    make_setup,
    rollouts_text,
    run,
    table_rows,
)

from lm_eval_swift.paths import tasks_dir


DOCS = 3  # odd: lm-eval pads rank 1 with a copy of its last request


@pytest.fixture(scope="module")
def setup(tiny_model_factory, tmp_path_factory):
    return make_setup(tiny_model_factory("llama"), tmp_path_factory.mktemp("dp"))


def launch(port: int) -> list[str]:
    """``accelerate launch`` of 2 local CPU processes."""
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(port), "-m",
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_hf_swift_two_processes_equal_one(setup, tmp_path):
    """2 ranks sample their documents into one shared cache; one process then reads them all from it: the same
    acc rows, table and rollouts file, and no sample drawn twice."""
    db = tmp_path / "samples.sqlite"
    env = {
        k: v for k, v in ENV.items() if k != "ACCELERATE_USE_CPU"
    }  # hf-swift sets it
    two = run([*launch(free_port()), "lm_eval_swift", "eval", *eval_flags(setup, db, tmp_path / "two", limit=DOCS)],
              tmp_path, env)  # fmt: skip
    assert cache_line(two.stderr.replace(" (rank 0)", ""), 0, 2 * N, db), two.stderr[
        -3000:
    ]  # docs 0, 2
    assert cache_line(two.stderr.replace(" (rank 1)", ""), 0, N, db), two.stderr[
        -3000:
    ]  # doc 1 (+ padding)
    assert count_rows(db) == DOCS * N
    one = run([sys.executable, "-m", "lm_eval_swift", "eval", *eval_flags(setup, db, tmp_path / "one", limit=DOCS)],
              tmp_path)  # fmt: skip
    assert cache_line(one.stderr, DOCS * N, 0, db), one.stderr[-3000:]
    assert table_rows(two.stdout) == table_rows(one.stdout)
    assert acc_rows(tmp_path / "two") == acc_rows(tmp_path / "one")
    assert rollouts_text(tmp_path / "two") == rollouts_text(tmp_path / "one")
    assert (
        len(list((tmp_path / "two").rglob("results_*.json"))) == 1
    )  # written by rank 0 only


def test_plain_lm_eval_hf_on_two_cpu_processes_is_refused(setup, tmp_path):
    """``lm_eval --model hf`` with our tasks on 2 CPU processes: lm-eval's HFLM shards documents only across GPUs,
    so every process would evaluate every document and write the same files; the task refuses the launch with one
    clear line before any request runs (hf-swift shards on CPU: see the test above)."""
    flags = [
        "--model", "hf", "--model_args", f"pretrained={setup['model']},dtype=float32",
        "--include_path", str(tasks_dir()), "--tasks", "gsm8k_bon_swift", "--limit", str(DOCS),
        "--apply_chat_template", "--device", "cpu", "--batch_size", "1",
        "--gen_kwargs", "max_gen_toks=12,do_sample=False",
        "--metadata", json.dumps({"n": 4, "data_file": str(setup["data"]), "heads": str(setup["head"])}),
    ]  # fmt: skip
    env = {**ENV, "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run([*launch(free_port()), "lm_eval", *flags, "--output_path", str(tmp_path / "two")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode != 0
    assert (
        "2 processes were launched but the model splits documents across 1"
        in proc.stderr
    ), proc.stderr[-3000:]
    assert "Running generate_until requests" not in proc.stderr
    assert not list(tmp_path.rglob("results_*.json"))
