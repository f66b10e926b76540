"""The grading worker pool: ``python -m lm_eval_swift.grading.worker`` processes that run Math-Verify.

A comparison past its time limit is abandoned (SIGUSR1), and its worker killed and lazily restarted when it does
not give up. That works off the main thread and inside daemonic ``multiprocessing`` workers, where Math-Verify's
own SIGALRM timeouts cannot. Settings (environment): ``LM_EVAL_SWIFT_GRADE_TIMEOUT`` (seconds per comparison,
default 2) and ``LM_EVAL_SWIFT_GRADE_WORKERS`` (worker processes, default ``min(4, cpu_count)``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path


__all__ = [
    "DEFAULT_TIMEOUT",
    "TIMEOUT_ENV",
    "WORKERS_ENV",
    "GradingFailed",
    "ask",
    "env_number",
    "max_workers",
]

logger = logging.getLogger(__name__)

TIMEOUT_ENV = "LM_EVAL_SWIFT_GRADE_TIMEOUT"
WORKERS_ENV = "LM_EVAL_SWIFT_GRADE_WORKERS"
DEFAULT_TIMEOUT = 2.0
_START_TIMEOUT = (
    60.0  # a worker's one-off start (importing sympy) is not charged to any comparison
)
_ABANDON_GRACE = 0.25  # seconds a worker past its time limit has to give up its comparison before it is killed


class GradingFailed(Exception):
    """A comparison ran out of time or lost its worker (never cached)."""


class _Worker:
    """One ``python -m lm_eval_swift.grading.worker`` process: a JSON line in, ``1``/``0`` out."""

    def __init__(self) -> None:
        package_root = str(
            Path(__file__).resolve().parents[2]
        )  # the folder holding lm_eval_swift/
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [package_root, os.environ.get("PYTHONPATH")])
            ),
        }
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "lm_eval_swift.grading.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        if self._reply(_START_TIMEOUT) != b"ready":
            self.close()
            raise RuntimeError("the grading worker did not start")

    def _reply(self, timeout: float) -> bytes:
        """The next reply line, or b"" on timeout or when the worker is gone."""
        poller = select.poll()
        poller.register(self._proc.stdout, select.POLLIN)
        if timeout <= 0 or not poller.poll(min(timeout, 1e6) * 1000):
            return b""
        return os.read(self._proc.stdout.fileno(), 64).strip()

    def ask(self, request: bytes, timeout: float) -> bool | None:
        """The worker's verdict, or None when it did not answer in time."""
        try:
            self._proc.stdin.write(request)
            self._proc.stdin.flush()
        except OSError:
            return None
        return {b"1": True, b"0": False}.get(self._reply(timeout))

    def abandon(self, grace: float) -> bool:
        """Make the worker give up its comparison; True when it answered within ``grace`` seconds (then it is
        idle again and reusable: its warm caches are kept)."""
        try:
            os.kill(self._proc.pid, signal.SIGUSR1)
        except OSError:
            return False
        return self._reply(grace) in (b"0", b"1")

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait()
        for pipe in (self._proc.stdin, self._proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()


class _Pool:
    """Up to ``LM_EVAL_SWIFT_GRADE_WORKERS`` workers, started on demand and shared by all threads."""

    def __init__(self) -> None:
        self._forget()

    def _forget(self) -> None:
        """Drop all workers without touching them (they belong to the parent after a fork)."""
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._workers: set[_Worker] = set()
        self._count = 0  # started or starting

    def ask(self, request: bytes, timeout: float) -> bool:
        """Run one request; waiting for a busy or starting worker is not charged to ``timeout``."""
        worker = self._acquire()
        verdict = reusable = None
        try:
            verdict = worker.ask(request, timeout)
            reusable = verdict is not None or worker.abandon(_ABANDON_GRACE)
        finally:  # a worker that neither answered nor gave up may still reply later: never reuse it
            with self._cond:
                if not reusable:
                    self._workers.discard(worker)
                    self._count -= 1
                else:
                    self._idle.append(worker)
                self._cond.notify()
            if not reusable:
                worker.close()
                self._start_spare()
        if verdict is None:
            raise GradingFailed("grading timed out")
        return verdict

    def _start_spare(self) -> None:
        """Start a replacement worker in the background, so the call after a timeout does not wait ~1 s for one."""

        def start() -> None:
            try:
                worker = _Worker()
            except Exception:  # noqa: BLE001 - the next call starts one itself and reports the failure
                with self._cond:
                    self._count -= 1
                    self._cond.notify()
                return
            with self._cond:
                self._workers.add(worker)
                self._idle.append(worker)
                self._cond.notify()

        with self._cond:
            if self._count >= max_workers():
                return
            self._count += 1
        threading.Thread(target=start, daemon=True, name="grading-worker-spare").start()

    def _acquire(self) -> _Worker:
        with self._cond:
            while not self._idle and self._count >= max_workers():
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
            self._count += 1
        worker = None
        try:
            worker = _Worker()
        except Exception as exc:
            logger.exception("could not start a grading worker")
            raise GradingFailed("no grading worker") from exc
        finally:
            with self._cond:
                if worker is None:
                    self._count -= 1
                    self._cond.notify()
                else:
                    self._workers.add(worker)
        return worker

    def close(self) -> None:
        """Kill every worker (at interpreter exit)."""
        with self._cond:
            workers, self._idle, self._workers, self._count = (
                list(self._workers),
                [],
                set(),
                0,
            )
        for worker in workers:
            worker.close()


def env_number(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


def max_workers() -> int:
    return int(env_number(WORKERS_ENV, min(4, os.cpu_count() or 1)))


_POOL = _Pool()
atexit.register(_POOL.close)
os.register_at_fork(after_in_child=_POOL._forget)


def ask(request: bytes, timeout: float) -> bool:
    """One JSON request line answered by a worker; raises GradingFailed on timeout or a lost worker."""
    return _POOL.ask(request, timeout)
