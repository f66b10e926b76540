"""Checkpoint files -> state dict -> module, with strict key checks; plus hub/dir resolution.

Native reward classes (Eurus, UltraRM, Starling) are loaded here instead of through
``trust_remote_code``.  Every key of the module must come from the checkpoint and every key of
the checkpoint must be used (apart from an explicit list of known-unused ones), with matching
shapes: a renamed or missing weight is an error, never a silently random tensor.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch


__all__ = [
    "TOKENIZER_PATTERNS",
    "WeightLoadError",
    "checkpoint_dir",
    "find_weight_files",
    "load_state_dict_files",
    "load_strict",
    "strict_from_pretrained",
]

#: buffers older transformers versions saved but that are recomputed at init (harmless to drop).
BENIGN_UNEXPECTED = re.compile(r"(^|\.)rotary_emb\.(inv_freq|original_inv_freq)$")

#: config, tokenizer and index files fetched with the weights of a hub checkpoint (and alone for a tokenizer).
TOKENIZER_PATTERNS = ["*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


class WeightLoadError(RuntimeError):
    """The checkpoint's tensors do not match the model's parameters (names or shapes)."""


def checkpoint_dir(
    model_id: str | Path, *, allow_patterns: Iterable[str] | None = None
) -> Path:
    """A local directory for ``model_id``: the path itself, or a hub snapshot download."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(
            f"{model_id}: expected a checkpoint directory or a hub id"
        )
    from huggingface_hub import list_repo_files, snapshot_download

    patterns = list(allow_patterns or TOKENIZER_PATTERNS)
    if (
        allow_patterns is None
    ):  # one weight format only: safetensors when the repo has them
        files = list_repo_files(str(model_id))
        has_safetensors = any(f.endswith(".safetensors") for f in files)
        patterns += (
            ["*.safetensors", "*.safetensors.index.json"]
            if has_safetensors
            else ["*.bin", "*.pt", "*.pth"]
        )
    return Path(snapshot_download(str(model_id), allow_patterns=patterns))


def find_weight_files(directory: str | Path) -> list[Path]:
    """Weight files of a checkpoint dir: a sharded index's shards, else the single weights file.

    Order of preference: ``model.safetensors.index.json``, ``pytorch_model.bin.index.json``,
    ``model.safetensors``, ``pytorch_model.bin``, then a lone ``*.safetensors`` / ``*.bin`` /
    ``*.pt`` / ``*.pth`` file (Starling ships one ``.bin``/``.pt`` of a custom module).
    """
    d = Path(directory)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = d / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            shards = [d / s for s in dict.fromkeys(weight_map.values())]
            missing = [s.name for s in shards if not s.is_file()]
            if missing:
                raise FileNotFoundError(f"{index}: shard(s) missing: {missing}")
            return shards
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (d / single).is_file():
            return [d / single]
    for patterns in (("*.safetensors",), ("*.bin", "*.pt", "*.pth")):
        found = sorted({p for pat in patterns for p in d.glob(pat) if p.is_file()})
        if len(found) == 1:
            return found
        if len(found) > 1:
            names = [p.name for p in found]
            raise FileNotFoundError(
                f"{d}: several weight files and no index json, ambiguous: {names}"
            )
    raise FileNotFoundError(f"{d}: no weight files (*.safetensors, *.bin, *.pt) found")


def load_state_dict_files(
    files: Iterable[str | Path], dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Merge the tensors of ``files`` (CPU); floating tensors cast to ``dtype`` when given."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in files:
        f = Path(f)
        if f.suffix == ".safetensors":
            part = load_file(str(f), device="cpu")
        else:
            part = torch.load(str(f), map_location="cpu", weights_only=True)
            if not isinstance(part, dict) or not all(
                isinstance(v, torch.Tensor) for v in part.values()
            ):
                raise WeightLoadError(
                    f"{f}: expected a flat dict of tensors (a state dict)"
                )
        dup = state.keys() & part.keys()
        if dup:
            raise WeightLoadError(
                f"{f}: tensor(s) present in several files: {sorted(dup)[:5]}"
            )
        state.update(part)
    if dtype is not None:
        state = {
            k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()
        }
    return state


def _listing(names: Iterable[str], limit: int = 8) -> str:
    names = sorted(names)
    more = f" ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def load_strict(
    module: torch.nn.Module,
    state: dict[str, torch.Tensor],
    *,
    source: str = "checkpoint",
    ignore: Callable[[str], bool] | None = None,
) -> None:
    """Copy ``state`` into ``module`` (``assign=True``, so ``module`` may live on ``meta``).

    Raises :class:`WeightLoadError` on any missing key, unexpected key (unless ``ignore(key)``
    or a known benign rotary buffer) or shape mismatch.
    """
    expected = module.state_dict()
    state = {
        k: v
        for k, v in state.items()
        if not (
            k not in expected
            and (BENIGN_UNEXPECTED.search(k) or (ignore is not None and ignore(k)))
        )
    }
    missing = expected.keys() - state.keys()
    unexpected = state.keys() - expected.keys()
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected.keys() & state.keys()
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {_listing(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch: {'; '.join(shapes[:5])}")
    if problems:
        raise WeightLoadError(
            f"{source} does not match {type(module).__name__}: " + " | ".join(problems)
        )
    module.load_state_dict(state, strict=True, assign=True)


def _dtype_kwarg() -> str:
    import transformers
    from packaging.version import Version

    # ``dtype=`` replaced ``torch_dtype=`` in transformers 4.56
    return (
        "dtype"
        if Version(transformers.__version__) >= Version("4.56")
        else "torch_dtype"
    )


def strict_from_pretrained(
    auto_cls: Any, model_id: str, *, dtype: torch.dtype | None = None, **kwargs: Any
) -> torch.nn.Module:
    """``auto_cls.from_pretrained`` that raises when a weight is missing, unexpected or resized."""
    if dtype is not None:
        kwargs[_dtype_kwarg()] = dtype
    model, info = auto_cls.from_pretrained(model_id, output_loading_info=True, **kwargs)
    problems = []
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        names = [n if isinstance(n, str) else str(n) for n in (info.get(key) or ())]
        if key == "unexpected_keys":
            names = [n for n in names if not BENIGN_UNEXPECTED.search(n)]
        if names:
            problems.append(f"{key.replace('_', ' ')}: {_listing(names)}")
    if info.get("error_msgs"):
        problems.append(f"errors: {info['error_msgs'][:3]}")
    if problems:
        raise WeightLoadError(
            f"{model_id} does not match {type(model).__name__}: " + " | ".join(problems)
        )
    return model
