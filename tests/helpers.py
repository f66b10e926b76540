"""Helpers shared by several test modules (test modules do not import each other)."""

from __future__ import annotations

import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from conftest import REPO
from transformers import AutoConfig

from lm_eval_swift.bon.rollouts import (
    QuestionRollout,
    Response,
    read_rollouts,
    write_rollouts,
)
from lm_eval_swift.swift.heads import SwiftHead
from lm_eval_swift.toy_models import char_tokenizer


# ---- SWIFT rewards by a reference computation ------------------------------------------------------------------


def reference_rewards(model, heads, prompts, responses) -> torch.Tensor:
    """R [n, H]: one unbatched forward per sample with output_hidden_states=True, features concatenated."""
    out = torch.zeros(len(prompts), len(heads))
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        with torch.no_grad():
            o = model(
                torch.tensor([list(p) + list(r)], device=model.device),
                output_hidden_states=True,
            )
        at = slice(
            len(p), len(p) + len(r)
        )  # positions where the response tokens are the input
        for h, head in enumerate(heads):
            if head.kind == "logits":
                feats = o.logits[0, at]
            else:
                feats = torch.cat(
                    [o.hidden_states[e][0, at] for e in head.layers], dim=-1
                )
            out[i, h] = head.reward(feats.float().cpu(), torch.ones(len(r)))
    return out


def make_heads(config, name_or_path, seed=0) -> list[SwiftHead]:
    """All layers (gated), the last 4 entries (no gate), logits (gated); O(1) weights so rewards are not ~0."""
    torch.manual_seed(seed)
    L = config.num_hidden_layers
    heads = [
        SwiftHead.for_model(config, name_or_path, name="all"),
        SwiftHead.for_model(
            config, name_or_path, layers=range(L - 3, L + 1), gate=False, name="last4"
        ),
        SwiftHead.for_model(config, name_or_path, kind="logits", name="logits"),
    ]
    for head in heads:
        torch.nn.init.normal_(head.linear.weight, std=0.5)
        torch.nn.init.normal_(head.linear.bias, std=0.5)
    return heads


# ---- toy rollouts for training ----------------------------------------------------------------------------------


def make_rollouts(
    path: Path,
    n_questions: int = 20,
    n: int = 6,
    seed: int = 0,
    task: str = "toy",
    flip=frozenset(),
) -> Path:
    """Toy rollouts: correct responses contain a '#' that incorrect ones lack. Even questions carry token ids, odd
    ones only text. Labels of the (doc_id, j) in ``flip`` are inverted (label noise)."""
    rng, tok = random.Random(seed), char_tokenizer()
    names = {f.name for f in fields(QuestionRollout)}
    rollouts = []
    for q in range(n_questions):
        correct = set(rng.sample(range(n), rng.randint(1, n - 1)))
        answers, responses = [], []
        for j in range(n):
            body = rng.choices("abcdefgh ", k=rng.randint(6, 12))
            if j in correct:
                body.insert(rng.randrange(len(body)), "#")
            answer = "7" if j in correct else rng.choice("123")
            answers.append(answer)
            text = "".join(body) + " " + answer
            ids = (
                tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
                if q % 2 == 0
                else []
            )
            label = (j in correct) != ((q, j) in flip)
            responses.append(
                Response(
                    text=text,
                    answer=answer,
                    correct=float(label),
                    answer_class=answers.index(answer),
                    num_tokens=len(ids),
                    token_ids=ids,
                )
            )
        prompt = (
            f"<s><|user|>q{q}: {''.join(rng.choices('abcdef', k=5))}</s><|assistant|>"
        )
        record = {
            "task": task,
            "doc_id": q,
            "kind": "math",
            "question": f"q{q}",
            "prompt": prompt,
            "gold": "7",
            "responses": responses,
        }
        rollouts.append(
            QuestionRollout(**{k: v for k, v in record.items() if k in names})
        )
    return write_rollouts(rollouts, path)


# ---- command-line runs of hf-swift with a sample cache -----------------------------------------------------------

N, LIMIT, BATCH = 8, 6, 2  # 6 questions x 8 samples, decoded 2 rows at a time
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def make_setup(model: Path, root: Path) -> dict[str, Path]:
    """The model, a head for it (O(1) weights, so rewards differ), and questions whose answers are one digit (so
    that a random model gets some right)."""
    head = SwiftHead.for_model(AutoConfig.from_pretrained(model), str(model))
    torch.manual_seed(0)
    torch.nn.init.normal_(head.linear.weight, std=0.5)
    data = root / "questions.jsonl"
    data.write_text(
        "".join(json.dumps({"question": f"What is {i} + {i % 3}?", "answer": f"#### {(7 * i + 3) % 10}"}) + "\n"
                for i in range(8))
    )  # fmt: skip
    return {"model": model, "head": head.save_pretrained(root / "head"), "data": data}


def eval_flags(
    setup,
    cache: Path,
    out: Path,
    n: int = N,
    limit: int = LIMIT,
    batch: int = BATCH,
    gen_toks: int = 12,
) -> list[str]:
    """lm-eval flags of a gsm8k_bon_swift run of ``hf-swift`` with sample cache ``cache``."""
    return [
        "--model", "hf-swift",
        "--model_args", f"pretrained={setup['model']},dtype=float32,heads={setup['head']},sample_cache={cache}",
        "--tasks", "gsm8k_bon_swift", "--limit", str(limit), "--apply_chat_template", "--device", "cpu",
        "--batch_size", str(batch), "--gen_kwargs", f"max_gen_toks={gen_toks}", "--output_path", str(out),
        "--metadata", json.dumps({"n": n, "data_file": str(setup["data"])}),
    ]  # fmt: skip


def run(
    cmd: list[str], cwd: Path, env: dict | None = None
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=env or ENV,
        check=False,
    )
    # each rank's error first: under a launcher the tail holds only the launcher's report and the last rank's trace
    errors = re.findall(
        r"^\[rank\d+\]: [\w.]*(?:Error|Exception)\b.*$", proc.stderr, re.M
    )
    assert proc.returncode == 0, "\n".join(
        [*errors, proc.stdout[-3000:], proc.stderr[-5000:]]
    )
    return proc


def table_rows(stdout: str) -> list[str]:
    rows = [line for line in stdout.splitlines() if line.startswith("|")]
    assert rows, stdout[-3000:]
    return rows


def cells(line: str) -> tuple[str, list[str]]:
    """(row name, cells) of a markdown table line."""
    row, *rest = [c.strip() for c in line.strip().strip("|").split("|")]
    return row, rest


def acc_rows(out: Path) -> dict[str, float]:
    """The task's acc and acc_stderr entries of the results JSON."""
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"][
        "gsm8k_bon_swift"
    ]
    return {key: value for key, value in results.items() if key.startswith("acc")}


def rollouts_text(out: Path) -> str:
    return next(out.rglob("rollouts_gsm8k_bon_swift_*.jsonl")).read_text()


def assert_same_rollouts(a: Path, b: Path) -> None:
    """The same rollouts: every field equal, the scores up to float32 rounding. A sample's scores are computed in a
    decode batch shared with other rows, whose number and lengths change the last bits (a resumed packed run's
    batches hold only the missing samples); its tokens do not depend on them."""
    got, want = (
        list(read_rollouts(next(d.rglob("rollouts_gsm8k_bon_swift_*.jsonl"))))
        for d in (a, b)
    )
    assert len(got) == len(want)
    for x, y in zip(got, want, strict=True):
        assert [(r.text, r.token_ids, r.finish, r.correct) for r in x.responses] == [
            (r.text, r.token_ids, r.finish, r.correct) for r in y.responses
        ]
        assert (x.doc_id, x.prompt, x.gold, x.prompt_token_ids) == (
            y.doc_id,
            y.prompt,
            y.gold,
            y.prompt_token_ids,
        )
        for r, s in zip(x.responses, y.responses, strict=True):
            assert r.scores == pytest.approx(s.scores, rel=1e-5, abs=1e-6)


def count_rows(db: Path) -> int | None:
    """Samples in the cache, or None while it is not created yet."""
    if not db.exists():
        return None
    try:
        with closing(sqlite3.connect(db, timeout=30)) as conn:
            return conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    except sqlite3.OperationalError:  # no table yet
        return None


def cache_line(stderr: str, cached: int, sampled: int, db: Path) -> bool:
    return (
        f"hf-swift sample cache {db}: {cached} samples cached, {sampled} sampled"
        in stderr
    )


# ---- a Python process where lm-eval, torch and transformers cannot be imported ------------------------------------

BLOCKED = textwrap.dedent(
    """
    import sys
    for name in ("torch", "lm_eval", "transformers"):
        sys.modules[name] = None  # importing it raises ImportError
    """
)


def run_blocked(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` (dedented) in a fresh interpreter in the repository, with lm-eval, torch and transformers
    blocked."""
    return subprocess.run(
        [sys.executable, "-c", BLOCKED + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
