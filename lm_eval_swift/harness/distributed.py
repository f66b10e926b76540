"""Data parallelism, in one place: which share of the documents a process evaluates, the CPU (gloo) process group,
lm-eval's padding of a rank's last request, and gathering the rollouts of every rank.

lm-eval splits documents round-robin by the model's ``rank`` / ``world_size``; its ``hf`` model reports several
ranks only when it runs on several GPUs. ``hf-swift`` reports the ranks of any multi-process launch (CPU included)
through those public properties; a task refuses a launch whose model does not shard, where every process would
evaluate every document and write the same files.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist


log = logging.getLogger(__name__)

T = TypeVar("T")


def process_group_size() -> int:
    """Processes in the default process group (1 when there is none)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0 of the process group, or the only process: the one that writes lm-eval's files."""
    return process_group_size() == 1 or dist.get_rank() == 0


def process_share(rank: int, world_size: int, accelerator) -> tuple[int, int]:
    """(rank, world size) of a model that reports ``rank`` / ``world_size`` and holds ``accelerator`` (or None): its
    own when it shards, else the accelerator's process index and count (HFLM shards only across GPUs)."""
    if world_size == 1 and accelerator is not None and accelerator.num_processes > 1:
        return accelerator.process_index, accelerator.num_processes
    return rank, world_size


def use_cpu_process_group(device: str | None) -> None:
    """Under a multi-process launch (``WORLD_SIZE`` > 1: ``accelerate launch --multi_gpu``, ``torchrun``) on a
    machine without CUDA, or with ``device=cpu``, let accelerate form a CPU (gloo) process group: it does so only
    when ``ACCELERATE_USE_CPU`` is set, and otherwise every process would run the whole evaluation alone."""
    if (
        int(os.environ.get("WORLD_SIZE", "1")) <= 1
        or "ACCELERATE_USE_CPU" in os.environ
    ):
        return
    if torch.cuda.is_available() and not str(device or "").startswith("cpu"):
        return
    log.info(
        "hf-swift: %s processes on CPU: setting ACCELERATE_USE_CPU=true (gloo)",
        os.environ["WORLD_SIZE"],
    )
    os.environ["ACCELERATE_USE_CPU"] = "true"


def destroy_gloo_group_at_exit() -> None:
    """Destroy the default process group when the process exits, if it is gloo: left to interpreter teardown, its
    threads sometimes abort the process ("terminate called without an active exception", about 1 run in 10 of 2
    CPU processes here), failing a launch whose results were written."""

    def destroy() -> None:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "gloo":
        atexit.register(destroy)


def check_documents_sharded(task: str, world_size: int) -> None:
    """Raise when the process group is larger than the model's ``world_size`` (lm-eval's ``hf`` on several CPU
    processes, say): every process would evaluate every document and write the same files."""
    processes = process_group_size()
    if processes > world_size:
        raise RuntimeError(
            f"{task}: {processes} processes were launched but the model splits documents across {world_size}: "
            "lm-eval's hf model shards only across GPUs; use --model hf-swift, which shards on CPU too, "
            "or launch one process"
        )


def padding_copies(requests: Sequence) -> dict[int, int]:
    """Under data parallelism lm-eval pads a rank holding fewer documents with ``repeats`` more copies of the
    request object it sent last. Maps each position of a request object beyond its first ``repeats`` to an
    earlier position of the same object, whose response it reuses instead of drawing another sample."""
    positions: dict[int, list[int]] = {}
    for i, req in enumerate(requests):
        positions.setdefault(id(req), []).append(i)
    copies = {}
    for where in positions.values():
        repeats = getattr(requests[where[0]], "repeats", None)
        if isinstance(repeats, int) and repeats > 0:
            copies.update(
                {i: where[j % repeats] for j, i in enumerate(where[repeats:])}
            )
    return copies


def without_padding(responses: list[T], repeats: int) -> list[T]:
    """A request's own ``repeats`` responses: lm-eval appends the responses of its padding copies to the request
    they copy (see :func:`padding_copies`)."""
    return responses[:repeats]


def gather_by_doc(items: list[T], doc_id=lambda item: item.doc_id) -> list[T]:
    """Every rank's items on every rank, in document order (each rank holds its share of the documents)."""
    if process_group_size() == 1:
        return items
    shares: list[list[T] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(shares, items)
    return sorted((item for share in shares for item in share or []), key=doc_id)


def max_across_ranks(values: dict[int, int]) -> dict[int, int]:
    """The per-key maximum of every rank's ``values`` on every rank, so that all ranks decide alike."""
    if process_group_size() == 1:
        return values
    shares: list[dict[int, int] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(shares, values)
    merged: dict[int, int] = {}
    for share in shares:
        for key, value in (share or {}).items():
            merged[key] = max(merged.get(key, 0), value)
    return merged
