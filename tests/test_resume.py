"""Resumable runs: ``hf-swift`` keeps every finished sample in a SQLite sample cache, so a run killed midway and
started again samples only what is missing and prints the table of an uninterrupted run."""

from __future__ import annotations

import multiprocessing
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
    assert_same_rollouts,
    cache_line,
    count_rows,
    eval_flags,
    make_setup,
    run,
    table_rows,
)
from lm_eval.api.instance import Instance

from lm_eval_swift.bon.rollouts import read_rollouts
from lm_eval_swift.bon.samples import Sample
from lm_eval_swift.harness.models import HFSwiftLM
from lm_eval_swift.harness.sample_cache import SampleCache, question_key, resolve_path


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
    sample = Sample(
        "7 apples", [11, 12, 2], "eos", {"swift": 0.1 + 0.2, "x": -1e-300}, [1, 2]
    )
    cache.put(q, description, {3: sample}, {3: 99})
    got = SampleCache(tmp_path / "c.sqlite").get(
        q, range(8)
    )  # another connection sees the commit
    assert list(got) == [3] and len(cache) == 1
    g = got[3]
    assert (str(g), g.token_ids, g.finish, g.scores, g.prompt_token_ids) == (
        str(sample), sample.token_ids, sample.finish, sample.scores, sample.prompt_token_ids)  # fmt: skip
    assert cache.get(q, range(3)) == {}
    with sqlite3.connect(tmp_path / "c.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert resolve_path("none") is None and resolve_path(None) is None
    assert resolve_path(tmp_path) == tmp_path / "hf-swift-samples.sqlite"


def _open_cache(path: Path, start, errors) -> None:
    start.wait()
    try:
        SampleCache(path, timeout=30).close()
    except Exception as error:  # reported to the test, which names it
        errors.put(f"{type(error).__name__}: {error}")


def test_processes_opening_one_new_cache_at_once_all_open_it(tmp_path):
    """The ranks of a data-parallel launch open one new sample cache at the same moment: SQLite answers "database
    is locked" at once to one of two processes switching a new file to WAL (about 1 start in 4 of 4 processes
    here before the retry); every process must open it."""
    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    for trial in range(40):
        path, start = tmp_path / f"c{trial}.sqlite", ctx.Barrier(4)
        procs = [ctx.Process(target=_open_cache, args=(path, start, errors)) for _ in range(4)]  # fmt: skip
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=60)
        assert [proc.exitcode for proc in procs] == [0] * 4
        assert errors.empty(), f"start {trial}: {errors.get()}"


def test_default_sample_cache_is_in_the_users_cache_folder(tmp_path, monkeypatch):
    """``sample_cache=auto``: ``$XDG_CACHE_HOME/lm-eval-swift/`` (absolute paths only), else ``~/.cache/...``."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert (
        resolve_path("auto") == tmp_path / "lm-eval-swift" / "hf-swift-samples.sqlite"
    )
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    for xdg in ("", "relative/dir"):
        monkeypatch.setenv("XDG_CACHE_HOME", xdg)
        assert (
            resolve_path("auto")
            == home / ".cache" / "lm-eval-swift" / "hf-swift-samples.sqlite"
        )


def test_cached_and_missing_chunks_give_the_uncached_samples(setup, tmp_path):
    """Drop some chunks from the cache: only those are sampled again, and every response (scores included) is
    the one a run without a cache draws; another batch size draws the same tokens."""
    reqs = [Instance("generate_until", {}, (c, {"until": ["q"], "max_gen_toks": 16, "do_sample": True}), 0)
            for _ in range(6) for c in ("Hello", "2+2=")]  # fmt: skip
    kw = {
        "pretrained": str(setup["model"]),
        "device": "cpu",
        "batch_size": 2,
        "heads": str(setup["head"]),
    }

    def same(out, want) -> bool:
        """Equal responses; scores up to float32 rounding (they depend on which rows shared the decode steps)."""
        assert [(str(o), o.token_ids, o.finish, o.prompt_token_ids) for o in out] == [
            (str(o), o.token_ids, o.finish, o.prompt_token_ids) for o in want
        ]
        return all(
            o.scores == pytest.approx(w.scores, rel=1e-5, abs=1e-6)
            for o, w in zip(out, want, strict=True)
        )

    plain = HFSwiftLM(**kw, sample_cache=None).generate_until(reqs, disable_tqdm=True)
    db = tmp_path / "c.sqlite"
    lm = HFSwiftLM(**kw, sample_cache=str(db))
    first = lm.generate_until(reqs, disable_tqdm=True)
    assert same(first, plain) and lm._counts == {"cached": 0, "sampled": 12}
    with sqlite3.connect(db) as conn:
        conn.execute(
            "DELETE FROM samples WHERE idx IN (2, 3)"
        )  # two samples of each question
    assert same(lm.generate_until(reqs, disable_tqdm=True), plain) and lm._counts == {
        "cached": 8,
        "sampled": 4,
    }
    cached = lm.generate_until(reqs, disable_tqdm=True)
    assert same(cached, plain) and lm._counts == {"cached": 12, "sampled": 0}
    kept = [
        i for i in range(len(reqs)) if i // 2 not in (2, 3)
    ]  # request i is sample i // 2 of its question
    assert [cached[i].scores for i in kept] == [
        first[i].scores for i in kept
    ]  # read back exactly
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM samples WHERE idx IN (1, 4)")
    lm.batch_size_per_gpu = 4  # packed: 4 rows of both questions per step
    assert same(lm.generate_until(reqs, disable_tqdm=True), plain) and lm._counts == {
        "cached": 8,
        "sampled": 4,
    }
    other_head = HFSwiftLM(
        **{**kw, "heads": "none"}, sample_cache=str(db)
    )  # other heads: other samples' keys
    other_head.generate_until(reqs, disable_tqdm=True)
    assert other_head._counts == {"cached": 0, "sampled": 12}


# ---- kill -9 and resume through the command line ----------------------------------------------------------------


@pytest.mark.parametrize(
    "n, batch, gen_toks", [(N, BATCH, 12), (4, 8, 48)], ids=["per-question", "packed"]
)
def test_killed_run_resumes_to_the_uninterrupted_table(
    setup, tmp_path, n, batch, gen_toks
):
    """N >= batch size: each question's samples fill the batch; N < batch size: packed, 2 questions per batch."""
    total = LIMIT * n
    db, fresh_db = tmp_path / "samples.sqlite", tmp_path / "fresh.sqlite"
    cmd = [sys.executable, "-m", "lm_eval_swift", "eval"]

    def flags(cache: Path, out: str) -> list[str]:
        return eval_flags(
            setup, cache, tmp_path / out, n=n, batch=batch, gen_toks=gen_toks
        )

    # 1. start, and kill -9 once some samples are committed
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(
            [*cmd, *flags(db, "killed")],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while not count_rows(db):
                assert proc.poll() is None, (tmp_path / "killed.log").read_text()[
                    -3000:
                ]
                assert time.monotonic() < deadline, "no sample was cached in 300 s"
                time.sleep(0.01)
        finally:
            with suppress(ProcessLookupError):
                os.killpg(
                    proc.pid, signal.SIGKILL
                )  # the run's own process group (grading workers included)
            proc.wait()
    killed = count_rows(db)
    assert 0 < killed < total, (
        f"the kill came too late: {killed} of {total} samples were cached"
    )
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) FROM samples WHERE question NOT IN (SELECT question FROM questions)"
                            ).fetchone()[0] == 0  # fmt: skip

    # 2. the same command again: only the missing samples are drawn
    resumed = run([*cmd, *flags(db, "resumed")], tmp_path)
    assert cache_line(resumed.stderr, killed, total - killed, db), resumed.stderr[
        -3000:
    ]
    assert count_rows(db) == total

    # 3. an uninterrupted run with a fresh cache prints the same table and writes the same rollouts
    fresh = run([*cmd, *flags(fresh_db, "fresh")], tmp_path)
    assert cache_line(fresh.stderr, 0, total, fresh_db), fresh.stderr[-3000:]
    assert table_rows(resumed.stdout) == table_rows(fresh.stdout)
    assert acc_rows(tmp_path / "resumed") == acc_rows(tmp_path / "fresh")
    assert_same_rollouts(tmp_path / "resumed", tmp_path / "fresh")
    # not a trivial comparison: the responses and their SWIFT rewards differ from sample to sample (the table itself
    # can be all zeros: a random model cut at max_gen_toks states no answer, and the grader credits none)
    responses = [
        resp
        for r in read_rollouts(next((tmp_path / "fresh").rglob("rollouts_*.jsonl")))
        for resp in r.responses
    ]
    assert len(responses) == total
    assert len({resp.text for resp in responses}) > 1
    assert len({resp.scores["swift"] for resp in responses}) > 1
