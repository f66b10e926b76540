"""A local SQLite store of finished ``hf-swift`` samples, so that a killed run started again samples only what is
missing.

Every sample is stored with everything its :class:`~lm_eval_swift.bon.samples.Sample` carries (text, response
token ids, prompt token ids, finish, scores) under a *question key* and its *sample index*. The question key is
the SHA-256 of the canonical JSON of everything a sample depends on besides its index (see
:func:`question_key`): the sampler version, a fingerprint of the model's weights, the heads (alias and a hash of
each head's config and weights), the context text, the request's gen_kwargs, the prompt token ids, the
resolved generation settings (stop strings, EOS ids, max_gen_toks, sampling parameters, autocast dtype) and the
run's seed. Sample i's own seed is a function of the same things and i (:func:`~lm_eval_swift.decoding.sampling.sample_seed`),
so a cached sample is the sample a fresh run on the same kind of device draws. The device is not part of the key:
a run resumed on another device type (or GPU model) keeps the samples drawn before, whose numbers may differ from
that device's in the last bits.

Writes are atomic: the database is in WAL mode and each :meth:`SampleCache.put` (``hf-swift``: the samples of a
question that finished in one decode step) is one transaction, so a process killed at any point leaves a
consistent database holding every sample committed before the kill. Several processes (data-parallel ranks) may
share one file on a local disk; a writer waits for another's lock. WAL needs a local file system (not NFS).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lm_eval_swift.bon.samples import Sample
from lm_eval_swift.paths import user_cache_dir


FILE_NAME = "hf-swift-samples.sqlite"
SCHEMA_VERSION = 1
# part of every key: bump when a change to the sampler or the scoring makes old samples differ from new ones
SAMPLER_VERSION = "hf-swift-sampler-1"
DISABLED = ("none", "off", "false", "no", "0", "")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS questions (
    question TEXT PRIMARY KEY,      -- question_key(...)
    description TEXT NOT NULL       -- JSON of what the key was made of (prompt ids as their hash), for people
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS prompts (
    hash TEXT PRIMARY KEY,          -- sha256 of the prompt token ids' JSON
    token_ids TEXT NOT NULL         -- JSON list
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS samples (
    question TEXT NOT NULL,
    idx INTEGER NOT NULL,           -- sample index within the question
    seed INTEGER NOT NULL,          -- the sample's own seed
    prompt TEXT NOT NULL,           -- prompts.hash
    text TEXT NOT NULL,
    token_ids TEXT NOT NULL,        -- JSON list: the response tokens
    finish TEXT,
    scores TEXT NOT NULL,           -- JSON object: scorer -> reward (floats round-trip exactly)
    created REAL NOT NULL,
    PRIMARY KEY (question, idx)
) WITHOUT ROWID;
"""


def default_path() -> Path:
    """``hf-swift-samples.sqlite`` in the user's cache folder, where reinstalling a package does not lose it:
    ``$XDG_CACHE_HOME/lm-eval-swift/`` (an absolute ``XDG_CACHE_HOME``), else ``~/.cache/lm-eval-swift/``."""
    return user_cache_dir() / FILE_NAME


def resolve_path(spec: str | os.PathLike | None) -> Path | None:
    """The ``sample_cache`` model argument -> a database path, or None (disabled).

    None or one of ``none/off/false/no/0/""``: disabled. ``auto``/``default``: :func:`default_path`. An existing
    directory: ``hf-swift-samples.sqlite`` inside it. Anything else: that file.
    """
    if spec is None or str(spec).strip().lower() in DISABLED:
        return None
    if str(spec).strip().lower() in ("auto", "default"):
        return default_path()
    path = Path(spec).expanduser()
    return path / FILE_NAME if path.is_dir() else path


def _digest(obj: Any) -> str:
    return hashlib.sha256(
        json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()


def tensor_fingerprint(
    tensors: Iterable[tuple[str, torch.Tensor]], samples: int = 4096
) -> str:
    """SHA-256 over each named tensor's name, shape, dtype and up to ``samples`` evenly strided elements plus its
    last 256 (copied to the CPU: cheap for any model size, on any device). Tensors on the meta device (offloaded)
    contribute their name, shape and dtype only."""
    h = hashlib.sha256()
    for name, t in tensors:
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        if t.device.type == "meta" or t.numel() == 0:
            continue
        flat = t.detach().reshape(-1)
        picked = torch.cat([flat[:: max(1, flat.numel() // samples)], flat[-256:]])
        h.update(picked.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """What identifies the model's weights (and so its samples): see :func:`tensor_fingerprint`. Independent of
    where the checkpoint lives and of how the model is split over devices; dtype is part of it. When some weights
    are offloaded (on the meta device, unreadable here) the checkpoint's name and revision are added."""
    state = model.state_dict()
    fingerprint = tensor_fingerprint(state.items())
    if any(t.device.type == "meta" for t in state.values()):
        config = getattr(model, "config", None)
        where = [
            getattr(config, "_name_or_path", None),
            getattr(config, "_commit_hash", None),
        ]
        fingerprint = _digest([fingerprint, where])
    return fingerprint


def head_fingerprint(alias: str, head) -> str:
    """A head's identity: its alias, config (features, gate, base model) and every weight."""
    weights = {k: v.detach().float().cpu() for k, v in head.linear.state_dict().items()}
    h = hashlib.sha256(_digest([alias, head.config()]).encode())
    for k in sorted(weights):
        h.update(
            k.encode() + weights[k].contiguous().view(torch.uint8).numpy().tobytes()
        )
    return h.hexdigest()


def question_key(
    *,
    model: str,
    heads: Sequence[tuple[str, str]],
    context: str,
    gen_kwargs: Mapping[str, Any],
    prompt_token_ids: Sequence[int],
    settings: Mapping[str, Any],
    seed: int,
) -> tuple[str, dict[str, Any]]:
    """(key, description) of one question: the samples of a question differ only by index.

    ``model``: :func:`model_fingerprint`; ``heads``: (alias, :func:`head_fingerprint`) in order; ``context`` and
    ``gen_kwargs``: the request as lm-eval sent it; ``prompt_token_ids``: the prompt as fed to the model;
    ``settings``: the resolved generation settings; ``seed``: the run's sampling seed.
    """
    description = {
        "sampler": SAMPLER_VERSION,
        "model": model,
        "heads": [list(h) for h in heads],
        "context_sha256": hashlib.sha256(context.encode()).hexdigest(),
        "gen_kwargs": json.loads(
            json.dumps(dict(gen_kwargs), sort_keys=True, default=str)
        ),
        "prompt_sha256": _digest([int(t) for t in prompt_token_ids]),
        "settings": json.loads(json.dumps(dict(settings), sort_keys=True, default=str)),
        "seed": int(seed),
    }
    return _digest(description), description


def _retry_while_locked(action: Callable[[], None], timeout: float) -> None:
    """Run ``action``, again every 50 ms for up to ``timeout`` seconds while SQLite reports the file locked.
    SQLite's busy timeout does not cover every race of processes opening one new file: when two switch it to WAL
    at once (the ranks of a data-parallel launch), one can get "database is locked" at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


class SampleCache:
    """Finished samples by (question key, sample index), in a SQLite file (WAL mode, one transaction per put).

    >>> cache = SampleCache("samples.sqlite")
    >>> found = cache.get(key, range(8))            # {index: Sample} of the cached ones
    >>> cache.put(key, description, {3: response}, seeds={3: 1234})   # one atomic commit
    """

    def __init__(self, path: str | os.PathLike, timeout: float = 600.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit off at the Python level; transactions are explicit (``with self._conn``)
        self._conn = sqlite3.connect(
            self.path, timeout=timeout, isolation_level="DEFERRED"
        )
        _retry_while_locked(self._set_up, timeout)
        self._prompts: dict[str, tuple[int, ...]] = {}

    def _set_up(self) -> None:
        """WAL mode, the tables, and the schema version check."""
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        with self._conn:
            self._conn.executescript(_SCHEMA)
            row = self._conn.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'"
            ).fetchone()
            if row is None:
                self._conn.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif int(row[0]) != SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path}: sample cache schema version {row[0]}, this code reads {SCHEMA_VERSION}; "
                    "use another sample_cache path"
                )

    def __repr__(self) -> str:
        return f"SampleCache({str(self.path)!r})"

    def __len__(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0]

    def close(self) -> None:
        self._conn.close()

    def _prompt(self, digest: str) -> tuple[int, ...]:
        if digest not in self._prompts:
            if (
                len(self._prompts) >= 16
            ):  # the samples of a question share one prompt: keep a few, not all
                self._prompts.clear()
            row = self._conn.execute(
                "SELECT token_ids FROM prompts WHERE hash = ?", (digest,)
            ).fetchone()
            self._prompts[digest] = tuple(json.loads(row[0]))
        return self._prompts[digest]

    def get(self, question: str, indices: Iterable[int]) -> dict[int, Sample]:
        """The cached samples of ``question`` among ``indices``, by index."""
        wanted = set(indices)
        rows = self._conn.execute(
            "SELECT idx, prompt, text, token_ids, finish, scores FROM samples WHERE question = ?",
            (question,),
        ).fetchall()
        return {
            idx: Sample(
                text, json.loads(ids), finish, json.loads(scores), self._prompt(prompt)
            )
            for idx, prompt, text, ids, finish, scores in rows
            if idx in wanted
        }

    def put(
        self,
        question: str,
        description: Mapping[str, Any],
        samples: Mapping[int, Sample],
        seeds: Mapping[int, int],
    ) -> None:
        """Store ``samples`` (index -> response) of ``question`` in one transaction: all of them or none."""
        if not samples:
            return
        now = time.time()
        prompts = {}
        rows = []
        for idx, s in samples.items():
            ids = json.dumps(list(s.prompt_token_ids), separators=(",", ":"))
            digest = hashlib.sha256(ids.encode()).hexdigest()
            prompts[digest] = ids
            rows.append(
                (
                    question,
                    int(idx),
                    int(seeds[idx]),
                    digest,
                    str(s),
                    json.dumps(list(s.token_ids), separators=(",", ":")),
                    s.finish,
                    json.dumps(s.scores, sort_keys=True),
                    now,
                )
            )
        with self._conn:  # BEGIN ... COMMIT, or ROLLBACK on error
            self._conn.execute(
                "INSERT OR IGNORE INTO questions VALUES (?, ?)",
                (question, json.dumps(description, sort_keys=True)),
            )
            self._conn.executemany(
                "INSERT OR IGNORE INTO prompts VALUES (?, ?)", prompts.items()
            )
            self._conn.executemany(
                "INSERT OR REPLACE INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
