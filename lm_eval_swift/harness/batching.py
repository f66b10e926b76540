"""How many rows ``hf-swift`` decodes together when the user did not say: lm-eval's ``--batch_size auto``, or its
default 1, which would decode one sample at a time (N samples per question make one-row decoding N times slower
than it need be; a user who wants a number passes it).

The choice: as many rows as the KV caches of rows of the model's full context fit in half the free memory of the
device (all free GPU memory counts; on CPU the memory the system reports available), at most lm-eval's
``max_batch_size`` (default 64) and the rows there are to decode."""

from __future__ import annotations

import logging
import os


log = logging.getLogger(__name__)

MEMORY_FRACTION = 0.5  # of the free memory, for the KV caches


def kv_bytes_per_token(config, element_bytes: int) -> int:
    """Bytes of one token's keys and values over all layers of a decoder with Hugging Face ``config``."""
    heads = getattr(config, "num_attention_heads", 1)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * element_bytes


def free_memory(device) -> int:
    """Free bytes of ``device`` (a torch.device): the GPU's free memory, or the system's available memory."""
    import torch

    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def decode_rows(
    requested, model, max_length: int, cap: int, rows_to_decode: int
) -> int:
    """Rows decoded together: ``requested`` (lm-eval's ``--batch_size``) when it is a number other than 1; for
    ``auto`` or 1 (lm-eval's default), what the memory allows for rows of ``max_length`` tokens, at most ``cap``
    and ``rows_to_decode``, at least 1."""
    if str(requested) not in ("auto", "1"):
        return int(requested)
    per_row = kv_bytes_per_token(model.config, model.dtype.itemsize) * max_length
    free = free_memory(model.device)
    rows = max(1, min(cap, rows_to_decode, int(free * MEMORY_FRACTION // per_row)))
    log.info(
        "hf-swift: --batch_size %s%s: decoding %d rows at a time (a row's KV cache of %d tokens takes %.0f MB; "
        "%.1f GB free; at most %d rows); pass --batch_size N to choose",
        requested, " (lm-eval's default, read as auto)" if str(requested) == "1" else "", rows, max_length,
        per_row / 1e6, free / 1e9, cap,
    )  # fmt: skip
    return rows
