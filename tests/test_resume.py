"""Resumable runs: ``hf-swift`` keeps every finished sample in a SQLite sample cache, so a run killed midway and
started again samples only what is missing and prints the table of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import pytest
import torch
from helpers import (
    BATCH,
    ENV,
    LIMIT,
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
from lm_eval.api.instance import Instance

from lm_eval_swift.models import HFSwiftLM
from lm_eval_swift.responses import ScoredText
from lm_eval_swift.sample_cache import SampleCache, question_key, resolve_path

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tiny_model_factory, tmp_path_factory) -> dict[str, Path]:
    return make_setup(tiny_model_factory("llama"), tmp_path_factory.mktemp("resume"))


# ---- the cache alone and in-process ---------------------------------------------------------------------------


def test_sample_cache_round_trip_and_key(tmp_path):
    key = {
        "model": "m", "heads": [("swift", "h")], "context": "Q", "gen_kwargs": {"until": []},
        "prompt_token_ids": [1, 2], "settings": {"do_sample": True}, "seed": 1,
    }  # fmt: skip
    q, description = question_key(**key)
    for change in ({"model": "m2"}, {"heads": []}, {"context": "Q2"}, {"prompt_token_ids": [1]}, {"seed": 2},
                   {"gen_kwargs": {"until": ["x"]}}, {"settings": {"do_sample": False}}):  # fmt: skip
        assert question_key(**{**key, **change})[0] != q, change
    cache = SampleCache(tmp_path / "c.sqlite")
    sample = ScoredText("7 apples", [11, 12, 2], "eos", {"swift": 0.1 + 0.2, "x": -1e-300}, [1, 2])
    cache.put(q, description, {3: sample}, {3: 99})
    got = SampleCache(tmp_path / "c.sqlite").get(q, range(8))  # another connection sees the commit
    assert list(got) == [3] and len(cache) == 1
    g = got[3]
    assert (str(g), g.token_ids, g.finish, g.scores, g.prompt_token_ids) == (
        str(sample), sample.token_ids, sample.finish, sample.scores, sample.prompt_token_ids)  # fmt: skip
    assert cache.get(q, range(3)) == {}
    with sqlite3.connect(tmp_path / "c.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert resolve_path("none") is None and resolve_path(None) is None
    assert resolve_path(tmp_path) == tmp_path / "hf-swift-samples.sqlite"


def test_cached_and_missing_chunks_give_the_uncached_samples(setup, tmp_path):
    """Drop some chunks from the cache: only those are sampled again, and every response (scores included) is
    the one a run without a cache draws; another batch size draws the same tokens."""
    reqs = [Instance("generate_until", {}, (c, {"until": ["q"], "max_gen_toks": 16, "do_sample": True}), 0)
            for _ in range(6) for c in ("Hello", "2+2=")]  # fmt: skip
    kw = {"pretrained": str(setup["model"]), "device": "cpu", "batch_size": 2, "heads": str(setup["head"])}

    def rows(out):
        return [(str(o), o.token_ids, o.finish, o.scores, o.prompt_token_ids) for o in out]

    plain = rows(HFSwiftLM(**kw, sample_cache=None).generate_until(reqs, disable_tqdm=True))
    db = tmp_path / "c.sqlite"
    lm = HFSwiftLM(**kw, sample_cache=str(db))
    assert rows(lm.generate_until(reqs, disable_tqdm=True)) == plain and lm._counts == {"cached": 0, "sampled": 12}
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM samples WHERE idx IN (2, 3)")  # one whole chunk of each question
    assert rows(lm.generate_until(reqs, disable_tqdm=True)) == plain and lm._counts == {"cached": 8, "sampled": 4}
    assert rows(lm.generate_until(reqs, disable_tqdm=True)) == plain and lm._counts == {"cached": 12, "sampled": 0}
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM samples WHERE idx IN (1, 4)")  # half chunks: re-chunked, same tokens
    lm.batch_size_per_gpu = 4
    out = lm.generate_until(reqs, disable_tqdm=True)
    assert [r[:3] for r in rows(out)] == [r[:3] for r in plain] and lm._counts == {"cached": 8, "sampled": 4}
    other_head = HFSwiftLM(**{**kw, "heads": "none"}, sample_cache=str(db))  # other heads: other samples' keys
    other_head.generate_until(reqs, disable_tqdm=True)
    assert other_head._counts == {"cached": 0, "sampled": 12}


# ---- kill -9 and resume through the command line ----------------------------------------------------------------


def test_killed_run_resumes_to_the_uninterrupted_table(setup, tmp_path):
    total = LIMIT * N
    db, fresh_db = tmp_path / "samples.sqlite", tmp_path / "fresh.sqlite"
    cmd = [sys.executable, "-m", "lm_eval_swift", "eval"]

    # 1. start, and kill -9 once some chunks are committed
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(
            [*cmd, *eval_flags(setup, db, tmp_path / "killed")],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while (count_rows(db) or 0) < BATCH:
                assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no sample was cached in 300 s"
                time.sleep(0.01)
        finally:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the run's own process group (grading workers included)
            proc.wait()
    killed = count_rows(db)
    assert 0 < killed < total, f"the kill came too late: {killed} of {total} samples were cached"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) FROM samples WHERE question NOT IN (SELECT question FROM questions)"
                            ).fetchone()[0] == 0  # fmt: skip

    # 2. the same command again: only the missing samples are drawn
    resumed = run([*cmd, *eval_flags(setup, db, tmp_path / "resumed")], tmp_path)
    assert cache_line(resumed.stderr, killed, total - killed, db), resumed.stderr[-3000:]
    assert count_rows(db) == total

    # 3. an uninterrupted run with a fresh cache prints the same table and writes the same rollouts
    fresh = run([*cmd, *eval_flags(setup, fresh_db, tmp_path / "fresh")], tmp_path)
    assert cache_line(fresh.stderr, 0, total, fresh_db), fresh.stderr[-3000:]
    assert table_rows(resumed.stdout) == table_rows(fresh.stdout)
    assert acc_rows(tmp_path / "resumed") == acc_rows(tmp_path / "fresh")
    assert rollouts_text(tmp_path / "resumed") == rollouts_text(tmp_path / "fresh")
    acc = acc_rows(tmp_path / "fresh")
    assert any(v > 0 for k, v in acc.items() if k.startswith("acc,")), acc  # not an all-zero table
