"""Compute SWIFT heads' (gate, reward) outputs inside a model's forward pass, without keeping hidden states.

A head is linear, so its output is a sum over the entries it reads: ``parts = sum_e h_e @ W_e^T + bias``. Forward
hooks project each entry as soon as its module produces it and add it to a small fp32 accumulator:

    entry 0        input of decoder layer 0 (the embeddings, as HF's hidden_states[0])
    entry i        output of decoder layer i-1, for i in 1..L-1
    entry L        output of the final norm
    "logits"       output of the LM head

so only [B, S, H, 2] numbers per forward are kept. Llama/Mistral/Qwen2-like models (``model.layers``,
``model.norm``, ``lm_head``) are supported; a self-check against ``output_hidden_states=True`` refuses any other
layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from lm_eval_swift.swift.heads import Entry, SwiftHead


class CaptureLayoutError(RuntimeError):
    """The model's hidden states are not laid out as capture assumes."""


def entry_modules(model: nn.Module) -> tuple[dict[Entry, nn.Module], int]:
    """{entry: module whose output (input, for entry 0) is that entry} and the number of layers L."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    norm = getattr(decoder, "norm", None)
    lm_head = (
        model.get_output_embeddings()
        if hasattr(model, "get_output_embeddings")
        else None
    )
    if (
        not isinstance(layers, nn.ModuleList)
        or not isinstance(norm, nn.Module)
        or lm_head is None
    ):
        raise CaptureLayoutError(
            f"SWIFT capture supports Llama/Mistral/Qwen2-like models (decoder.layers, decoder.norm, lm_head); "
            f"{type(model).__name__} does not have that layout"
        )
    n = len(layers)
    return {
        0: layers[0],
        **{i: layers[i - 1] for i in range(1, n)},
        n: norm,
        "logits": lm_head,
    }, n


DEFER_MAX_POSITIONS = 256  # inputs with at most this many positions (B*S: decode steps) are projected at take()


class HeadProjector:
    """Context manager: while active, every forward of ``model`` accumulates the heads' outputs; ``take()`` them.

    >>> with HeadProjector(model, heads) as proj:
    ...     model(input_ids)          # logits at every position if a head reads logits
    ...     parts = proj.take()       # [B, S, H, 2] fp32: (gate logit, reward) per position and head
    """

    def __init__(self, model: nn.Module, heads: Sequence[SwiftHead]):
        if not heads:
            raise ValueError("HeadProjector needs at least one head")
        self.model, self.heads = model, list(heads)
        self.modules, n_layers = entry_modules(model)
        for head in self.heads:
            if head.base.num_hidden_layers != n_layers:
                raise CaptureLayoutError(
                    f"head {head.name!r} reads {head.base.num_hidden_layers} layers, model has {n_layers}"
                )
        # weights[e]: [d_e, 2H] with head h's (gate, reward) rows of entry e in columns 2h, 2h+1 (zero if unused)
        self.weights: dict[Entry, torch.Tensor] = {}
        biases = []
        for h, head in enumerate(self.heads):
            per_entry, bias = head.projections()
            for e, w in per_entry.items():
                if e not in self.weights:
                    self.weights[e] = torch.zeros(w.shape[1], 2 * len(self.heads))
                self.weights[e][:, 2 * h : 2 * h + 2] = w.T
            biases.append(bias)
        self.bias = torch.stack(biases)  # [H, 2]
        self.uses_logits = "logits" in self.weights
        self._acc: dict[
            torch.device, torch.Tensor
        ] = {}  # per device: [B*S, 2H] running sum
        self._pending: list[
            tuple[Entry, torch.Tensor]
        ] = []  # narrow inputs [B, S, d_e], projected at take()
        self._stacked: dict[
            tuple, torch.Tensor
        ] = {}  # (device, entries) -> their weights stacked, [2H, sum d_e]
        self._shape: torch.Size | None = None  # [B, S] of the forward being captured
        self._handles: list = []
        self._paused = False
        self._checked = False

    # ---- hooks ---------------------------------------------------------------------------------------------------

    def __enter__(self) -> HeadProjector:
        if self._handles:
            raise RuntimeError("HeadProjector is already active")
        for e in self.weights:
            module = self.modules[e]
            if e == 0:
                self._handles.append(
                    module.register_forward_pre_hook(self._on_input, with_kwargs=True)
                )
            else:
                self._handles.append(
                    module.register_forward_hook(partial(self._on_output, e))
                )
        if not self._checked:
            try:
                self._self_check()
            except BaseException:
                self.__exit__()
                raise
            self._checked = True
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._acc, self._pending, self._shape = [], {}, [], None

    def _on_input(self, module, args, kwargs) -> None:
        self._add(0, args[0] if args else kwargs["hidden_states"])

    def _on_output(self, entry: Entry, module, args, output) -> None:
        self._add(entry, output[0] if isinstance(output, tuple) else output)

    def _add(self, entry: Entry, h: torch.Tensor) -> None:
        """Queue h [B, S, d] of ``entry`` for projection onto W_entry [d, 2H] (fp32) at :meth:`take`.

        Projecting all queued entries in one multiply per device at ``take`` rather than one small multiply inside
        each hook is what keeps capture cheap while decoding: the hooks only append, and do no arithmetic between
        the layers' own (cache-evicting) matmuls. Wide inputs (a prefill, a teacher-forced pass) are projected at
        once instead, so no more than one layer's activations are ever held.
        """
        if self._paused:
            return
        if h.numel() <= DEFER_MAX_POSITIONS * h.shape[-1]:
            self._pending.append((entry, h))
            return
        self._note_shape(entry, h)
        self._project(h.device, (entry,), h)

    def _note_shape(self, entry: Entry, h: torch.Tensor) -> None:
        """Record [B, S] of the forward being captured; every entry must have the same."""
        if self._shape is not None and self._shape != h.shape[:-1]:
            raise RuntimeError(
                f"entry {entry!r} has positions {tuple(h.shape[:-1])}, others {tuple(self._shape)}: pass "
                f"logits_to_keep=0 to the model"
            )
        self._shape = h.shape[:-1]

    def _accumulate(self, device: torch.device, part: torch.Tensor) -> None:
        acc = self._acc.get(device)
        self._acc[device] = part if acc is None else acc.add_(part)

    def _flush(self) -> None:
        """Project the queued inputs: per device, their features side by side [B*S, sum d_e] times the matching
        weights stacked [2H, sum d_e], one fp32 matmul (the sum over entries is inside it)."""
        pending, self._pending = self._pending, []
        by_device: dict[torch.device, list[tuple[Entry, torch.Tensor]]] = {}
        for entry, h in pending:
            by_device.setdefault(h.device, []).append((entry, h))
        for device, items in by_device.items():
            try:
                x = torch.cat([h for _, h in items], dim=-1)
            except RuntimeError as err:
                shapes = {e: tuple(h.shape[:-1]) for e, h in items}
                raise RuntimeError(
                    f"entries have different positions {shapes}: pass logits_to_keep=0 to the model"
                ) from err
            self._note_shape(items[0][0], x)
            self._project(device, tuple(e for e, _ in items), x)

    def _project(
        self, device: torch.device, entries: tuple[Entry, ...], x: torch.Tensor
    ) -> None:
        """Add x [B, S, sum d_e] (the entries' features side by side) times their weights, in fp32, to the device's
        accumulator; the entries' weights are stacked [2H, sum d_e] once per device and entry tuple."""
        w = self._stacked.get((device, entries))
        if w is None:
            w = torch.cat([self.weights[e] for e in entries]).T.contiguous().to(device)
            self._stacked[(device, entries)] = w
        with torch.autocast(device.type, enabled=False):
            self._accumulate(device, F.linear(x.reshape(-1, x.shape[-1]).float(), w))

    def check(self) -> None:
        """Run the layout self-check now (it otherwise runs when first entered); raises CaptureLayoutError."""
        with self:
            pass

    @contextmanager
    def paused(self):
        """Forwards inside this block add nothing (e.g. a prompt prefill)."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def take(self) -> torch.Tensor:
        """[B, S, H, 2] fp32 head outputs of the forward(s) since the last take, bias included; resets."""
        self._flush()
        if not self._acc:
            raise RuntimeError(
                "HeadProjector.take(): no forward pass since the last take()"
            )
        accs, self._acc, shape, self._shape = (
            list(self._acc.values()),
            {},
            self._shape,
            None,
        )
        total = accs[0]
        for acc in accs[1:]:
            total = total + acc.to(total.device)
        if self.bias.device != total.device:
            self.bias = self.bias.to(total.device)
        return total.view(*shape, *self.bias.shape) + self.bias

    # ---- self-check ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _self_check(self) -> None:
        """One tiny forward: hooked projection == projection of ``output_hidden_states`` (and logits), else raise."""
        self._acc, self._pending, self._shape = {}, [], None
        ids = torch.arange(
            min(6, self.heads[0].base.vocab_size), device=self.model.device
        )[None]
        out = self.model(input_ids=ids, output_hidden_states=True, use_cache=False)
        got = self.take().cpu()
        entries = {**dict(enumerate(out.hidden_states)), "logits": out.logits}
        with torch.autocast("cpu", enabled=False):
            want = sum(
                entries[e][0].float().cpu() @ w.cpu() for e, w in self.weights.items()
            )
        want = want.view(got.shape[1:]) + self.bias.cpu()
        err, scale = (got[0] - want).abs().max().item(), want.abs().max().item()
        if not err <= 1e-3 * (scale + 1e-6):
            raise CaptureLayoutError(
                f"SWIFT capture self-check failed for {type(self.model).__name__}: hooked outputs differ from "
                f"output_hidden_states (max |diff| {err:.3g} vs scale {scale:.3g}); its hidden-state layout is not the "
                f"supported one (layer-0 input, layer outputs, final norm, lm_head)"
            )
