"""Teacher-forced SWIFT features for training, one batch of responses at a time.

The features of a response with T response tokens are [T, F] fp32: for each response token, the concatenation (in a
head's ``entries`` order) of ``output_hidden_states[e]`` (or the logits) at the position where that token is the
model's input, after the prompt ids (the positions generation and rescoring score). A batch of responses comes as
right-padded features [B, T_max, F] (zeros past each response) and a mask [B, T_max].

Features are produced per batch (:class:`StreamedFeatures`, one forward of the base model) or read from an fp16 cache
on disk (:class:`FeatureCache`), so the features of a whole data set are never in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lm_eval_swift.swift.heads import Entry
from lm_eval_swift.swift.teacher_forcing import (
    Ids,
    by_prompt,
    forward_after_prompt,
    prompt_batches,
)


log = logging.getLogger(__name__)


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """A dtype name (``"bfloat16"``) as the torch dtype; ``"auto"`` and torch dtypes as they are (lm-eval's rule)."""
    return (
        getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
    )


def load_base_model(
    name_or_path: str,
    *,
    device: str | None = None,
    dtype: str | torch.dtype = "auto",
    parallelize: bool = False,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) loaded as lm-eval's ``hf`` model loads them: a local path or hub id, ``dtype`` a name
    ("auto", "bfloat16", ...) or torch dtype, on ``device`` (default cuda when available) or, with ``parallelize``,
    spread over the visible GPUs by accelerate (``device_map="auto"``). The model is in eval mode without grads."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path,
        revision=revision,
        dtype=torch_dtype(dtype),
        trust_remote_code=trust_remote_code,
        device_map="auto" if parallelize else {"": str(device)},
    )
    tokenizer = AutoTokenizer.from_pretrained(
        name_or_path, revision=revision, trust_remote_code=trust_remote_code
    )
    return model.eval().requires_grad_(False), tokenizer


def entry_width(config, entry: Entry) -> int:
    """Width of one entry's feature block for a model with HF ``config``: hidden_size, or vocab_size for logits."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.vocab_size if entry == "logits" else text.hidden_size)


class FeatureExtractor:
    """Response-token features of ``model`` for ``entries`` (hidden_states indices and/or "logits"), gathered on the
    device of the input embeddings (the first device of a model spread over several)."""

    def __init__(
        self,
        model: nn.Module,
        entries: Sequence[Entry],
        pad_token_id: int | None = None,
    ):
        if not entries:
            raise ValueError("FeatureExtractor needs at least one entry")
        self.model, self.entries = model, tuple(entries)
        self.n_features = sum(entry_width(model.config, e) for e in self.entries)
        self.pad_token_id = int(pad_token_id or 0)
        self.device: torch.device = model.get_input_embeddings().weight.device

    @torch.no_grad()
    def __call__(
        self, prompts: Sequence[Ids], responses: Sequence[Ids]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features [B, T_max, F] fp32 (zero past each response) and mask [B, T_max] of responses[b] after prompts[b]
        (one forward per distinct prompt, see :mod:`~lm_eval_swift.swift.teacher_forcing`)."""
        lengths = torch.tensor([len(r) for r in responses])
        feats = torch.zeros(
            len(responses),
            max(int(lengths.max()), 1),
            self.n_features,
            device=self.device,
        )
        wants_logits = "logits" in self.entries
        for group in by_prompt(prompts, range(len(prompts))):
            out, _, _ = forward_after_prompt(
                self.model,
                prompts[group[0]],
                [responses[i] for i in group],
                self.pad_token_id,
                output_hidden_states=any(e != "logits" for e in self.entries),
                logits_to_keep=0 if wants_logits else 1,
            )
            blocks = [
                (out.logits if e == "logits" else out.hidden_states[e]).to(
                    self.device, torch.float32
                )
                for e in self.entries
            ]
            block = torch.cat(blocks, dim=-1)
            feats[group, : block.shape[1]] = block
        mask = (torch.arange(feats.shape[1]) < lengths[:, None]).to(self.device)
        return feats.masked_fill_(~mask[..., None], 0.0), mask


class FeatureSource(Protocol):
    """Features of responses by index: ``source(indices) -> (features [B, T, F] fp32, mask [B, T])`` on ``device``."""

    n_features: int
    device: torch.device

    def __call__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]: ...


class StreamedFeatures:
    """A :class:`FeatureSource` that runs the base model on every call (nothing is kept)."""

    def __init__(
        self,
        extractor: FeatureExtractor,
        prompts: Sequence[Ids],
        responses: Sequence[Ids],
    ):
        self.extractor, self.prompts, self.responses = extractor, prompts, responses
        self.n_features, self.device = extractor.n_features, extractor.device

    def __call__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.extractor(
            [self.prompts[i] for i in indices], [self.responses[i] for i in indices]
        )


class FeatureCacheError(RuntimeError):
    """Features that cannot be cached (e.g. values beyond the fp16 range)."""


class FeatureCache:
    """A :class:`FeatureSource` reading every response's features from ``features.f16`` ([sum_i T_i, F] fp16 rows,
    response i at rows offsets[i]:offsets[i+1]) in a directory with a ``meta.json`` written once it is complete."""

    FEATURES, META, PARTIAL = "features.f16", "meta.json", "partial.json"
    RECORD_EVERY = 30.0  # seconds between records of a build's progress

    def __init__(
        self,
        directory: Path,
        lengths: Sequence[int],
        n_features: int,
        device: torch.device,
    ):
        self.directory, self.n_features, self.device = (
            Path(directory),
            n_features,
            device,
        )
        self.lengths = list(lengths)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)])
        shape = (max(int(self.offsets[-1]), 1), n_features)
        # read-only: a private writable map ("c") of a cache larger than memory is refused by the kernel (ENOMEM)
        self.rows = np.memmap(
            self.directory / self.FEATURES, dtype=np.float16, mode="r", shape=shape
        )

    @classmethod
    def open_or_build(
        cls,
        root: str | os.PathLike,
        extractor: FeatureExtractor,
        prompts: Sequence[Ids],
        responses: Sequence[Ids],
        batch_size: int,
        key: str,
        progress: bool = True,
    ) -> FeatureCache:
        """The cache for these (prompt, response) pairs under ``root``/<hash of key, entries and token ids>, built
        first unless a complete one is there: copied from the columns of a complete cache of the same data whose
        entries include these (no model pass: e.g. a last-4 head after an all-layers one), else by one pass of the
        base model (a build that was stopped resumes after the batches it recorded). ``key`` names the model
        and features."""
        lengths = [len(r) for r in responses]
        data = _fingerprint(key, (), prompts, responses)
        directory = Path(root) / _fingerprint(
            key, extractor.entries, prompts, responses
        )
        meta = {
            "key": key,
            "data": data,
            "entries": list(extractor.entries),
            "n_features": extractor.n_features,
            "n_tokens": sum(lengths),
        }
        meta_path, partial = directory / cls.META, directory / cls.PARTIAL
        if _read_json(meta_path) == meta:
            if cls._intact(directory, meta):
                return cls(directory, lengths, extractor.n_features, extractor.device)
            log.warning("feature cache %s is damaged (its features file has the wrong size): building it again",
                        directory)  # fmt: skip
            meta_path.unlink()
        if not _batches_done(partial, meta):
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
        try:
            superset = cls._superset(Path(root), meta)
            if superset is not None:
                columns = _columns(
                    extractor.model.config, superset[1]["entries"], extractor.entries
                )
                cls._copy_columns(directory / cls.FEATURES, superset, columns, progress)
            else:
                cls._build(
                    directory, meta, extractor, prompts, responses, batch_size, progress
                )
        except Exception:
            shutil.rmtree(directory, ignore_errors=True)  # a failed cache is of no use
            raise
        meta_path.write_text(json.dumps(meta))
        partial.unlink(missing_ok=True)
        return cls(directory, lengths, extractor.n_features, extractor.device)

    @classmethod
    def _superset(cls, root: Path, meta: dict) -> tuple[Path, dict] | None:
        """(directory, meta) of a complete cache under ``root`` of the same key and token ids whose entries include
        ``meta``'s, or None."""
        for path in sorted(root.glob(f"*/{cls.META}")):
            other = _read_json(path) or {}
            same_data = all(
                other.get(k) == meta[k] for k in ("key", "data", "n_tokens")
            )
            if (
                same_data
                and set(meta["entries"]) < set(other.get("entries", ()))
                and cls._intact(path.parent, other)
            ):
                return path.parent, other
        return None

    @classmethod
    def _intact(cls, directory: Path, meta: dict) -> bool:
        """Whether the features file of the complete cache ``meta`` has its full size (not cut short or replaced)."""
        path = directory / cls.FEATURES
        try:
            size = max(int(meta["n_tokens"]), 1) * int(meta["n_features"]) * 2
        except (KeyError, TypeError, ValueError):
            return False
        return path.is_file() and path.stat().st_size == size

    @classmethod
    def _copy_columns(
        cls,
        path: Path,
        superset: tuple[Path, dict],
        columns: np.ndarray,
        progress: bool,
    ) -> None:
        """Write ``superset``'s features restricted to ``columns`` (indices into its F), in chunks of rows."""
        directory, other = superset
        rows = max(int(other["n_tokens"]), 1)
        src = np.memmap(
            directory / cls.FEATURES,
            dtype=np.float16,
            mode="r",
            shape=(rows, other["n_features"]),
        )
        dst = np.memmap(path, dtype=np.float16, mode="w+", shape=(rows, len(columns)))
        chunk = max(
            1, (256 << 20) // (2 * other["n_features"])
        )  # about 256 MB read per chunk
        for start in tqdm(
            range(0, rows, chunk),
            desc="Copying cached SWIFT features",
            unit="chunk",
            disable=not progress,
        ):
            dst[start : start + chunk] = src[start : start + chunk][:, columns]
        dst.flush()

    @classmethod
    def _build(
        cls,
        directory: Path,
        meta: dict,
        extractor: FeatureExtractor,
        prompts: Sequence[Ids],
        responses: Sequence[Ids],
        batch_size: int,
        progress: bool,
    ) -> None:
        """Write every response's features to the directory's features file in one pass, a prompt's responses
        together. Every ``RECORD_EVERY`` seconds the batches written so far are recorded (``partial.json``), so a
        build that is stopped (killed, Ctrl-C) resumes after them."""
        lengths = [len(r) for r in responses]
        offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        partial = directory / cls.PARTIAL
        start = _batches_done(partial, meta)
        rows = np.memmap(
            directory / cls.FEATURES,
            dtype=np.float16,
            mode="r+" if start else "w+",
            shape=(max(sum(lengths), 1), extractor.n_features),
        )
        batches = prompt_batches(prompts, responses, batch_size)
        recorded = time.monotonic()
        bar = tqdm(
            batches,
            desc="Caching SWIFT features",
            unit="batch",
            initial=start,
            disable=not progress,
        )
        for done, batch in enumerate(batches[start:], start + 1):
            feats, _ = extractor(
                [prompts[i] for i in batch], [responses[i] for i in batch]
            )
            half = feats.to(torch.float16)
            if not torch.isfinite(half).all():
                raise FeatureCacheError(
                    f"features exceed the fp16 range ({feats.abs().max().item():.3g}); train without a feature cache"
                )
            half = half.cpu().numpy()
            for b, i in enumerate(batch):
                rows[offsets[i] : offsets[i + 1]] = half[b, : lengths[i]]
            bar.update()
            if time.monotonic() - recorded > cls.RECORD_EVERY:
                rows.flush()
                partial.write_text(json.dumps({"meta": meta, "batches": done}))
                recorded = time.monotonic()
        bar.close()
        rows.flush()

    def __call__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.tensor([self.lengths[i] for i in indices])
        feats = torch.zeros(len(indices), max(int(lengths.max()), 1), self.n_features)
        with (
            warnings.catch_warnings()
        ):  # torch warns of a read-only array; it only reads it here
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            # one pass per response: its fp16 rows are converted straight into the batch
            for b, i in enumerate(indices):
                feats[b, : lengths[b]].copy_(
                    torch.from_numpy(self.rows[self.offsets[i] : self.offsets[i + 1]])
                )
        mask = torch.arange(feats.shape[1]) < lengths[:, None]
        return feats.to(self.device), mask.to(self.device)


def cache_bytes(responses: Sequence[Ids], n_features: int) -> int:
    """Size of the fp16 feature cache of these responses, in bytes."""
    return sum(len(r) for r in responses) * n_features * 2


def feature_source(
    extractor: FeatureExtractor,
    prompts: Sequence[Ids],
    responses: Sequence[Ids],
    *,
    batch_size: int,
    key: str,
    cache_dir: str | os.PathLike | None = None,
    cache_budget_gb: float = 50.0,
    progress: bool = True,
) -> FeatureSource:
    """A :class:`FeatureCache` under ``cache_dir`` when given and the cache fits ``cache_budget_gb`` (10^9 bytes),
    else :class:`StreamedFeatures`."""
    size = cache_bytes(responses, extractor.n_features)
    if cache_dir is not None and size <= cache_budget_gb * 1e9:
        return FeatureCache.open_or_build(
            cache_dir, extractor, prompts, responses, batch_size, key, progress
        )
    if cache_dir is not None:
        log.warning(
            "feature cache would take %.1f GB > budget %.1f GB: streaming features every epoch",
            size / 1e9,
            cache_budget_gb,
        )
    return StreamedFeatures(extractor, prompts, responses)


def _columns(config, have: Sequence[Entry], want: Sequence[Entry]) -> np.ndarray:
    """Column indices, in a feature row laid out as the entries ``have``, of the entries ``want`` in order."""
    starts = np.concatenate([[0], np.cumsum([entry_width(config, e) for e in have])])
    where = {e: i for i, e in enumerate(have)}
    return np.concatenate(
        [np.arange(starts[where[e]], starts[where[e] + 1]) for e in want]
    )


def _batches_done(partial: Path, meta: dict) -> int:
    """Batches an interrupted build of the cache ``meta`` recorded in ``partial`` (0 when none)."""
    record = _read_json(partial) or {}
    return int(record.get("batches", 0)) if record.get("meta") == meta else 0


def _read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when it is missing or not a readable JSON object (a damaged record)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _fingerprint(
    key: str, entries: Sequence[Entry], prompts: Sequence[Ids], responses: Sequence[Ids]
) -> str:
    h = hashlib.sha256(json.dumps([key, list(entries)]).encode())
    for p, r in zip(prompts, responses, strict=True):
        h.update(np.asarray([len(p), len(r), *p, *r], dtype=np.int64).tobytes())
    return h.hexdigest()[:20]
