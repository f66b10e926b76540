"""Import a reward model trained with the SWIFT authors' code (``LinearRewardModel`` state dicts) as a SWIFT head.

The authors' checkpoint is a torch state dict of one linear layer over per-token features F:

    fused_layer.weight [2, F], fused_layer.bias [2]     rows (gate logit, reward): R = sum g r / sum g, g = sigmoid
    reward_layer.weight [1, F], reward_layer.bias [1]   without the gate: R = mean of r

Features are the concatenation of HF ``output_hidden_states`` entries, all of them (0..L) unless the run was given a
layer list, which it reads in ascending order of the given indices; or, in their ``--logits_mode``, the logits.
Checkpoints trained with their ``--apply_norm`` (final norm applied to every hidden state) or a dimension reduction
have no equivalent head and cannot be told apart from the file: import only checkpoints trained without them.
"""

from __future__ import annotations

import argparse
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoConfig

from lm_eval_swift.swift.heads import HeadError, SwiftHead


GATED = ("fused_layer.weight", "fused_layer.bias")
GATELESS = ("reward_layer.weight", "reward_layer.bias")


class OfficialCheckpointError(HeadError):
    """A file that is not an authors' SWIFT checkpoint, or one that does not fit the base model and features."""


def read_official(file: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(weight [2|1, F] fp32, bias [2|1] fp32, gated) of an authors' checkpoint (loaded with weights_only=True)."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise OfficialCheckpointError(
            f"{file}: not readable as a torch state dict ({e})"
        ) from e
    keys = sorted(state) if isinstance(state, dict) else None
    for names, rows in ((GATED, 2), (GATELESS, 1)):
        if keys == sorted(names):
            weight, bias = (state[n] for n in names)
            if not (
                weight.ndim == 2 and weight.shape[0] == rows and bias.shape == (rows,)
            ):
                raise OfficialCheckpointError(
                    f"{file}: {names[0]} {tuple(weight.shape)} / {names[1]} {tuple(bias.shape)}, expected [{rows}, F] / [{rows}]"
                )
            if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
                raise OfficialCheckpointError(f"{file}: weights contain NaN or inf")
            return weight.float(), bias.float(), rows == 2
    raise OfficialCheckpointError(
        f"{file}: not a SWIFT authors' checkpoint: expected keys {list(GATED)} (gated) or {list(GATELESS)}, found {keys}"
    )


def import_official(
    file: str | os.PathLike,
    base_model: str,
    out_dir: str | os.PathLike,
    layers: Sequence[int] | None = None,
    logits: bool = False,
    *,
    name: str = "swift",
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> SwiftHead:
    """Convert the authors' checkpoint ``file`` for ``base_model`` (path or hub id; only its config is read), trained
    on hidden-state ``layers`` (default all) or on the ``logits``, into a head saved at ``out_dir``; returns it."""
    if logits and layers:
        raise OfficialCheckpointError(
            "an authors' checkpoint reads either hidden-state layers or the logits, not both"
        )
    weight, bias, gated = read_official(file)
    config = AutoConfig.from_pretrained(
        base_model, revision=revision, trust_remote_code=trust_remote_code
    )
    head = SwiftHead.for_model(
        config,
        base_model,
        revision,
        kind="logits" if logits else "hidden_states",
        layers=sorted(layers)
        if layers
        else None,  # the authors concatenate the given indices in ascending order
        gate=gated,
        name=name,
        training={
            "imported_from": str(Path(file).resolve()),
            "format": "SWIFT authors' LinearRewardModel",
        },
    )
    expected = head.linear.in_features
    if weight.shape[1] != expected:
        raise OfficialCheckpointError(
            f"{file}: F = {weight.shape[1]} features, but {_describe(head)} gives F = {expected}{_hint(weight.shape[1], head)}"
        )
    with torch.no_grad():
        head.linear.weight.copy_(weight)
        head.linear.bias.copy_(bias)
    head.save_pretrained(out_dir)
    return head


def _describe(head: SwiftHead) -> str:
    base = head.base
    if head.kind == "logits":
        return f"{base.name_or_path} logits (vocab_size {base.vocab_size})"
    return f"{base.name_or_path} hidden_states {list(head.layers)} ({len(head.layers)} x hidden_size {base.hidden_size})"


def _hint(n_features: int, head: SwiftHead) -> str:
    """Which features an F would fit, when that is clear."""
    hidden = head.base.hidden_size
    if n_features == head.base.vocab_size:
        return ": it matches the logits (pass --logits)"
    if (
        n_features % hidden == 0
        and n_features // hidden <= head.base.num_hidden_layers + 1
    ):
        return f": it matches {n_features // hidden} hidden-state entries (pass those --layers)"
    return ": the checkpoint was trained on another model or other features"


def cmd_import(args: argparse.Namespace) -> None:
    """Run ``lm-eval-swift import-official``."""
    head = import_official(
        args.file,
        args.base_model,
        args.out,
        layers=args.layers,
        logits=args.logits,
        name=args.name,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
    )
    features = (
        "logits" if head.kind == "logits" else f"hidden_states {list(head.layers)}"
    )
    print(
        f"SWIFT head {head.name!r} ({'gated' if head.gate else 'no gate'}, {features}) saved to {args.out}"
    )
