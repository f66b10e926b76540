"""The KV cache of a packed decode batch (:class:`PackedCache`): rows of different prompts and lengths share one
forward, each written in place at its own length, under a per-row attention mask."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer, DynamicSlidingWindowLayer


class PackedCache(Cache):
    """The KV cache of a packed decode batch: rows of different sequences (different prompts, lengths, questions).

    Per layer, keys and values [rows, kv_heads, capacity, head_dim] are preallocated (zeros, so that masked
    positions hold finite numbers); row r holds its own sequence in positions [0, lengths[r]). A decode step
    (:meth:`step_inputs`, the forward, :meth:`advance`) writes each row's new key and value at that row's own
    length, in place, and attention reads positions [0, longest + 1) of the live rows under a 4D mask that hides
    each row's unused positions and, on sliding-window layers, the positions outside the window. Every layer keeps
    the whole sequence (a sliding-window layer's window is a mask, not a smaller buffer). Rows are admitted from a
    single-row prefill (:meth:`admit`) and finished rows are removed by moving the last rows into their place
    (:meth:`keep`), so the live rows are always rows [0, live).
    """

    def __init__(self, model: nn.Module, rows: int):
        super().__init__(layers=[])
        self.windows: list[
            int | None
        ] = []  # per layer: sliding window, or None (full attention)
        for layer in DynamicCache(config=model.config).layers:
            if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer):
                raise NotImplementedError(
                    f"hf-swift decodes full-attention and sliding-window layers only, not {type(layer).__name__}"
                )
            self.windows.append(getattr(layer, "sliding_window", None))
        self.attn_implementation = model.config._attn_implementation
        if self.attn_implementation not in ("sdpa", "eager"):
            raise NotImplementedError(
                f"hf-swift needs attn_implementation 'sdpa' (the default) or 'eager' (its rows need a per-row "
                f"attention mask), not {self.attn_implementation!r}"
            )
        self.layer_types = getattr(model.config, "layer_types", None)
        self.rows, self.capacity, self.live = rows, 0, 0
        self.lengths = torch.zeros(
            rows, dtype=torch.long
        )  # filled positions per row (cpu)
        self.buffers: list[
            tuple[torch.Tensor, torch.Tensor]
        ] = []  # per layer: keys, values
        self._write: tuple[torch.Tensor, torch.Tensor] | None = (
            None  # (rows, positions) of the step's new entries
        )
        self._span = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(self.lengths[: self.live].max()) if self.live else 0

    def _reserve(self, length: int) -> None:
        """Grow every buffer to hold ``length`` positions (copying the live rows' filled positions)."""
        if length <= self.capacity:
            return
        used = self.get_seq_length()
        for i, pair in enumerate(self.buffers):
            grown = tuple(b.new_zeros(*b.shape[:2], length, b.shape[-1]) for b in pair)
            for new, old in zip(grown, pair, strict=True):
                new[: self.live, :, :used] = old[: self.live, :, :used]
            self.buffers[i] = grown
        self.capacity = length

    def admit(self, prefill: DynamicCache, k: int, length: int) -> None:
        """Append k rows, each a copy of the single-row ``prefill`` (a whole prompt of P positions; a sliding-window
        layer holds only its last positions, the others are never attended again); ``length``: positions the rows
        will need (prompt + new tokens)."""
        if self.live + k > self.rows:
            raise RuntimeError(
                f"PackedCache: {self.live + k} rows exceed the {self.rows} allocated"
            )
        if not self.buffers:
            self.buffers = [
                tuple(
                    x.new_zeros(self.rows, x.shape[1], 0, x.shape[-1])
                    for x in (layer.keys, layer.values)
                )
                for layer in prefill.layers
            ]
        self._reserve(length)
        n = prefill.get_seq_length()
        rows = slice(self.live, self.live + k)
        for (keys, values), layer in zip(self.buffers, prefill.layers, strict=True):
            kept = layer.keys.shape[-2]
            keys[rows, :, n - kept : n] = layer.keys
            values[rows, :, n - kept : n] = layer.values
        self.lengths[rows] = n
        self.live += k

    def keep(self, alive: Sequence[bool]) -> list[int]:
        """Drop the live rows where ``alive`` is False: the last live rows move into their places. Returns the
        order: new row i was row order[i]."""
        n = sum(alive)
        holes = [r for r in range(n) if not alive[r]]
        movers = [r for r in range(n, len(alive)) if alive[r]]
        order = list(range(n))
        if holes:
            for h, m in zip(holes, movers, strict=True):
                order[h] = m
            span = int(self.lengths[movers].max())
            dst, src = torch.tensor(holes), torch.tensor(movers)
            for pair in self.buffers:
                for b in pair:
                    b[dst.to(b.device), :, :span] = b[src.to(b.device), :, :span]
            self.lengths[dst] = self.lengths[src]
        self.live = n
        return order

    def step_inputs(
        self,
    ) -> tuple[torch.Tensor, torch.Tensor | dict[str, torch.Tensor]]:
        """position_ids [live, 1] and the attention mask(s) [live, 1, 1, span] of a one-token decode step of every
        live row: one mask, or a dict by layer type when full and sliding-window layers are mixed."""
        device = self.buffers[0][0].device
        pos = self.lengths[: self.live].to(device)
        self._span = int(self.lengths[: self.live].max()) + 1
        if self._span > self.capacity:
            raise RuntimeError(
                f"PackedCache: {self._span} positions exceed the {self.capacity} reserved"
            )
        self._write = (torch.arange(self.live, device=device), pos)
        kv = torch.arange(self._span, device=device)
        seen = kv <= pos[:, None]
        masks = {
            w: seen if w is None else seen & (kv > pos[:, None] - w)
            for w in set(self.windows)
        }
        masks = {w: self._attention_mask(m[:, None, None]) for w, m in masks.items()}
        if len(masks) == 1:
            return pos[:, None], next(iter(masks.values()))
        if self.layer_types is None:
            raise NotImplementedError(
                "hf-swift: mixed sliding-window and full layers need config.layer_types"
            )
        by_type = {}
        for kind, w in zip(self.layer_types, self.windows, strict=False):
            by_type[kind] = masks[w]
        return pos[:, None], by_type

    def _attention_mask(self, allowed: torch.Tensor) -> torch.Tensor:
        if self.attn_implementation == "sdpa":
            return allowed
        dtype = self.buffers[0][0].dtype
        return torch.zeros(
            allowed.shape, dtype=dtype, device=allowed.device
        ).masked_fill(~allowed, torch.finfo(dtype).min)

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        """Write the step's keys/values [live, kv_heads, 1, d] at each row's length; return [live, kv_heads, span, d]."""
        if key_states.shape[-2] != 1 or self._write is None:
            raise RuntimeError(
                "PackedCache takes one-token decode steps after step_inputs()"
            )
        keys, values = self.buffers[layer_idx]
        rows, pos = (x.to(keys.device) for x in self._write)
        keys[rows, :, pos] = key_states[:, :, 0]
        values[rows, :, pos] = value_states[:, :, 0]
        return keys[: self.live, :, : self._span], values[: self.live, :, : self._span]

    def advance(self) -> None:
        """After the step's forward: every live row is one position longer."""
        self.lengths[: self.live] += 1
        self._write = None
