"""Scorer base class, registry and the shared batching machinery.

A scorer turns ``(question, response)`` pairs into one float reward each.  Subclasses only say
how one pair becomes token ids (plus the token positions whose outputs are read) and how a
padded batch becomes values at those positions; batching, padding (either side), length
sorting, progress reporting, placement and clean-up live here.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from .tokenization import ReferenceEncoder, reference_encoder


__all__ = [
    "AGGREGATIONS",
    "PAPER_INSTRUCTION",
    "PROTOCOLS",
    "SCORERS",
    "Encoded",
    "Scorer",
    "UnknownScorerError",
    "aggregate",
    "check_protocol",
    "get_scorer",
    "load_scorer",
    "register_scorer",
]

#: name -> scorer class, filled by :func:`register_scorer`.
SCORERS: dict[str, type[Scorer]] = {}

#: scoring protocols: ``card`` (each model card's recipe, the default) and ``paper`` (the baseline script of the
#: SWIFT paper, aster2024/SWIFT ``eval/get_baseline_rewards.py``; see :meth:`Scorer.protocol_defaults`).
PROTOCOLS = ("card", "paper")

#: the instruction the SWIFT paper's baseline script prepends to every question (``get_instruction`` of its
#: ``utils.py``, the same text for "math" and "gsm8k"; also the prompt this package's tasks give the generator).
PAPER_INSTRUCTION = (
    "Solve the following math problem step-by-step.\n"
    "Simplify your answer as much as possible. Present your final answer as \\boxed{Your Answer}.\n"
)


def register_scorer(name: str):
    """Class decorator: register a :class:`Scorer` subclass under ``name`` (sets ``cls.name``)."""

    def decorate(cls: type[Scorer]) -> type[Scorer]:
        if not (isinstance(cls, type) and issubclass(cls, Scorer)):
            raise TypeError(
                f"register_scorer({name!r}) expects a Scorer subclass, got {cls!r}"
            )
        existing = SCORERS.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(
                f"scorer name {name!r} is already registered to {existing.__qualname__}"
            )
        cls.name = name
        SCORERS[name] = cls
        return cls

    return decorate


class UnknownScorerError(KeyError, ValueError):
    """Raised by :func:`get_scorer` for a name that is not registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def get_scorer(name: str) -> type[Scorer]:
    """The scorer class registered as ``name``; :class:`UnknownScorerError` listing known names otherwise."""
    try:
        return SCORERS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(SCORERS)) or "(none)"
        raise UnknownScorerError(
            f"unknown scorer {name!r}; known scorers: {known}"
        ) from None


def load_scorer(name: str, model: str | None = None, **kwargs: Any) -> Scorer:
    """Shorthand for ``get_scorer(name).load(model, **kwargs)``."""
    return get_scorer(name).load(model, **kwargs)


def check_protocol(protocol: str) -> str:
    """``protocol`` if it is one of :data:`PROTOCOLS`, else ``ValueError`` (one line naming them)."""
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"unknown reward-model protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}"
        )
    return protocol


def _prod(xs: Sequence[float]) -> float:
    return math.prod(xs)


#: step-score aggregations for process reward models.
AGGREGATIONS = {
    "mean": lambda xs: sum(xs) / len(xs),
    "min": min,
    "max": max,
    "last": lambda xs: xs[-1],
    "prod": _prod,
}


def aggregate(step_scores: Sequence[float], how: str) -> float:
    """Reduce per-step scores to one reward with one of :data:`AGGREGATIONS`."""
    if how not in AGGREGATIONS:
        raise ValueError(
            f"unknown aggregation {how!r}; choose from {sorted(AGGREGATIONS)}"
        )
    if not step_scores:
        raise ValueError("no step scores to aggregate")
    return float(AGGREGATIONS[how](list(step_scores)))


@dataclass
class Encoded:
    """One scored sequence: its token ids and the positions (unpadded) whose outputs are read.

    ``pad_tail``: the last ``pad_tail`` tokens are padding that the authors' code feeds with the sequence
    (Starling's ``padding="max_length"``): no token attends to them, and their position ids keep counting.
    """

    input_ids: list[int]
    positions: list[int]
    pad_tail: int = 0


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def _resolve_dtype(
    dtype: torch.dtype | str | None, device: torch.device
) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).removeprefix("torch.").lower()
    if key not in _DTYPES:
        raise ValueError(
            f"unknown dtype {dtype!r}; use a torch.dtype or one of {sorted(_DTYPES)}"
        )
    return _DTYPES[key]


class Scorer:
    """Base class of all reward scorers.

    Build one with :meth:`load` on a concrete subclass (``get_scorer("eurus").load()``), call
    :meth:`score`, then :meth:`close` (or use it as a context manager) to free the weights.

    Options common to every scorer (keyword arguments of :meth:`load`):

    ``padding_side``: ``"right"`` (default) or ``"left"``; scores do not depend on it (position
    ids are derived from the attention mask and outputs are read at explicit positions).
    ``progress``: ``True``/``False`` forces the tqdm bar; ``None`` (default) shows it for lists
    of 64 pairs or more.  ``tokenizer``: path or hub id of the tokenizer when it is not stored
    with the weights.  ``device_map``: an explicit accelerate/transformers device map; by
    default ``"auto"`` is used when ``device`` is not given and several GPUs are visible.
    ``attn_implementation``: passed to the backbone config (``"eager"``, ``"sdpa"``, ...).
    ``protocol``: ``"card"`` (default) or ``"paper"``, which changes the defaults of other options
    (:meth:`protocol_defaults`).  ``instruction``: text prepended to every question (default ``""``).
    """

    name: ClassVar[str] = ""
    #: hub id loaded when ``load()`` gets no ``model``.
    default_model: ClassVar[str | None] = None
    #: option defaults of the ``paper`` protocol specific to this scorer (see :meth:`protocol_defaults`).
    paper_options: ClassVar[dict[str, Any]] = {}
    #: show the progress bar from this many pairs on when ``progress`` is None.
    progress_threshold: ClassVar[int] = 64
    #: the tokenizer file the model's reference tokenizer reads (:func:`.tokenization.reference_encoder`):
    #: ``"tokenizer.json"`` (transformers 4's ``AutoTokenizer``) or ``"tokenizer.model"`` (its slow
    #: ``LlamaTokenizer``); input ids come from :attr:`encoder`, never from the transformers tokenizer.
    reference_tokenizer: ClassVar[str] = "tokenizer.json"

    def __init__(
        self,
        *,
        padding_side: str = "right",
        progress: bool | None = None,
        tokenizer: str | None = None,
        device_map: str | dict | None = None,
        attn_implementation: str | None = None,
        protocol: str = "card",
        instruction: str = "",
    ) -> None:
        if padding_side not in ("left", "right"):
            raise ValueError(
                f"padding_side must be 'left' or 'right', not {padding_side!r}"
            )
        check_protocol(protocol)
        self.protocol = protocol
        self.instruction = instruction
        self.padding_side = padding_side
        self.progress = progress
        self.tokenizer_id = tokenizer
        self.device_map = device_map
        self.attn_implementation = attn_implementation
        self.model: torch.nn.Module | None = None
        self.tokenizer: Any = None
        self.encoder: ReferenceEncoder | None = None
        self.model_id: str = ""
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.batch_size = 8
        self._num_parameters = 0

    # ------------------------------------------------------------------ construction
    @classmethod
    def protocol_defaults(cls, protocol: str) -> dict[str, Any]:
        """Default :meth:`load` options under ``protocol`` (options given explicitly win).

        ``card``: none.  ``paper`` (the SWIFT paper's ``eval/get_baseline_rewards.py``): ``instruction`` =
        :data:`PAPER_INSTRUCTION` (its ``prompt = instruction + sample["prompt"]``) and ``dtype`` = bfloat16 (its
        ``torch_dtype=torch.bfloat16``) for every reward model, updated with the scorer's :attr:`paper_options`.
        """
        check_protocol(protocol)
        if protocol == "card":
            return {}
        return {
            "instruction": PAPER_INSTRUCTION,
            "dtype": "bfloat16",
            **cls.paper_options,
        }

    @classmethod
    def load(
        cls,
        model: str | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        batch_size: int = 8,
        **options: Any,
    ) -> Scorer:
        """Load the checkpoint ``model`` (path or hub id; default :attr:`default_model`).

        ``dtype`` defaults to the protocol's (:meth:`protocol_defaults`), else bfloat16 on GPU and float32 on
        CPU; ``device`` to ``cuda`` when available.  Unknown ``options`` raise ``TypeError``.
        """
        if not cls.name or cls is Scorer:
            raise TypeError(
                "call load() on a registered scorer class, e.g. get_scorer('eurus').load()"
            )
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        defaults = cls.protocol_defaults(options.get("protocol", "card"))
        protocol_dtype = defaults.pop("dtype", None)
        dtype = dtype if dtype is not None else protocol_dtype
        self = cls(**{**defaults, **options})
        model_id = model if model is not None else cls.default_model
        if not model_id:
            raise ValueError(
                f"scorer {cls.name!r} has no default checkpoint: pass model=<path or hub id>"
            )
        self.model_id = str(model_id)
        auto_device = device is None
        self.device = (
            torch.device(device)
            if device is not None
            else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.dtype = _resolve_dtype(dtype, self.device)
        self.batch_size = int(batch_size)
        if self.device_map is None and auto_device and torch.cuda.device_count() > 1:
            self.device_map = "auto"
        self.model, self.tokenizer = self._load()
        self.encoder = self._reference_encoder()
        self.model.eval().requires_grad_(False)
        self._num_parameters = sum(p.numel() for p in self.model.parameters())
        self._setup()
        return self

    def _load(self) -> tuple[torch.nn.Module, Any]:  # pragma: no cover - abstract
        """Return ``(model, tokenizer)`` placed on ``self.device`` / ``self.device_map``."""
        raise NotImplementedError

    def _load_auto(self, auto_cls) -> tuple[torch.nn.Module, Any]:
        """(model, tokenizer) for scorers that are a plain transformers ``auto_cls`` checkpoint, strictly loaded."""
        from transformers import AutoTokenizer

        from .weights import strict_from_pretrained

        kwargs: dict[str, Any] = {"dtype": self.dtype}
        if self.device_map is not None:
            kwargs["device_map"] = self.device_map
        if self.attn_implementation is not None:
            kwargs["attn_implementation"] = self.attn_implementation
        model = strict_from_pretrained(auto_cls, self.model_id, **kwargs)
        if self.device_map is None:
            model.to(self.device)
        return model, AutoTokenizer.from_pretrained(self.tokenizer_id or self.model_id)

    def _tokenizer_location(self) -> str | Path:
        """Directory or hub id holding the tokenizer files."""
        return self.tokenizer_id or self.model_id

    def _reference_encoder(self) -> ReferenceEncoder:
        """The encoder of the tokenizer files (:attr:`reference_tokenizer` first), the transformers one as fallback."""
        from .weights import TOKENIZER_PATTERNS, checkpoint_dir

        directory = checkpoint_dir(
            self._tokenizer_location(), allow_patterns=TOKENIZER_PATTERNS
        )
        return reference_encoder(
            directory, prefer=self.reference_tokenizer, fallback=self.tokenizer
        )

    def _setup(self) -> None:
        """Hook run once after loading (resolve token ids, check the tokenizer, ...)."""

    # ------------------------------------------------------------------ scoring
    def _encode(
        self, question: str, response: str
    ) -> Encoded:  # pragma: no cover - abstract
        raise NotImplementedError

    def _forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        rows: torch.Tensor,
        cols: torch.Tensor,
    ) -> torch.Tensor:  # pragma: no cover - abstract
        """Float values (one per ``(rows[i], cols[i])`` padded position), any device."""
        raise NotImplementedError

    def _finalize(self, values: list[float]) -> float:
        """Turn the values read for one pair into its reward (scalar RMs: the single value)."""
        (value,) = values
        return float(value)

    def _check_open(self) -> None:
        if self.model is None:
            raise RuntimeError(
                f"scorer {self.name!r} is closed (or was never loaded with .load())"
            )

    def score(self, questions: Sequence[str], responses: Sequence[str]) -> list[float]:
        """One reward per ``(questions[i], responses[i])``, in input order."""
        return [self._finalize(v) for v in self._read_values(questions, responses)]

    def _read_values(
        self, questions: Sequence[str], responses: Sequence[str]
    ) -> list[list[float]]:
        self._check_open()
        if isinstance(questions, str) or isinstance(responses, str):
            raise TypeError(
                "score() takes lists of strings (wrap a single pair in lists)"
            )
        if len(questions) != len(responses):
            raise ValueError(
                f"{len(questions)} questions but {len(responses)} responses"
            )
        items = [
            self._encode(self.instruction + q, r)
            for q, r in zip(questions, responses, strict=True)
        ]
        for item in items:
            if not item.input_ids or not item.positions:
                raise ValueError(
                    f"{self.name}: empty encoding (no tokens or nothing to read)"
                )
        # longest first: similar lengths share a batch and an OOM shows up on the first batch
        order = sorted(range(len(items)), key=lambda i: -len(items[i].input_ids))
        out: list[list[float] | None] = [None] * len(items)
        show = (
            self.progress
            if self.progress is not None
            else len(items) >= self.progress_threshold
        )
        with (
            torch.inference_mode(),
            tqdm(
                total=len(items),
                desc=f"scoring ({self.name})",
                unit="resp",
                disable=not show,
            ) as bar,
        ):
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                values = self._run_batch([items[i] for i in idx])
                for i, v in zip(idx, values, strict=True):
                    out[i] = v
                bar.update(len(idx))
        return out  # type: ignore[return-value]

    @property
    def _pad_id(self) -> int:
        tok = self.tokenizer
        for cand in (
            getattr(tok, "pad_token_id", None),
            getattr(tok, "eos_token_id", None),
        ):
            if isinstance(cand, int):
                return cand
        return 0

    @property
    def _input_device(self) -> torch.device:
        emb = (
            self.model.get_input_embeddings()
            if hasattr(self.model, "get_input_embeddings")
            else None
        )
        if emb is not None and getattr(emb, "weight", None) is not None:
            return emb.weight.device
        return next(self.model.parameters()).device

    def _run_batch(self, batch: list[Encoded]) -> list[list[float]]:
        width = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        position_ids = torch.zeros((len(batch), width), dtype=torch.long)
        rows, cols, counts = [], [], []
        for b, e in enumerate(batch):
            n = len(e.input_ids)
            offset = width - n if self.padding_side == "left" else 0
            ids[b, offset : offset + n] = torch.tensor(e.input_ids, dtype=torch.long)
            mask[b, offset : offset + n - e.pad_tail] = 1
            position_ids[b, offset : offset + n] = torch.arange(n)
            for p in e.positions:
                if not 0 <= p < n:
                    raise IndexError(
                        f"read position {p} outside a sequence of {n} tokens"
                    )
                rows.append(b)
                cols.append(offset + p)
            counts.append(len(e.positions))
        dev = self._input_device
        values = self._forward(
            ids.to(dev),
            mask.to(dev),
            position_ids.to(dev),
            torch.tensor(rows, dtype=torch.long),
            torch.tensor(cols, dtype=torch.long),
        )
        flat = values.detach().float().cpu().tolist()
        out, k = [], 0
        for c in counts:
            out.append(flat[k : k + c])
            k += c
        return out

    @staticmethod
    def _gather(
        hidden: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        return hidden[rows.to(hidden.device), cols.to(hidden.device)]

    # ------------------------------------------------------------------ housekeeping
    @property
    def num_parameters(self) -> int:
        """Number of weights of the loaded model (shared tensors counted once)."""
        return self._num_parameters

    def close(self) -> None:
        """Free the weights (and cached GPU memory); the scorer cannot score afterwards."""
        if self.model is None:
            return
        try:
            from accelerate.hooks import remove_hook_from_submodules

            remove_hook_from_submodules(self.model)
        except Exception:  # noqa: BLE001 - best effort, accelerate hooks may be absent
            pass
        self.model = None
        self.tokenizer = None
        self.encoder = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.model is None else f"{self.device}, {self.dtype}"
        return f"{type(self).__name__}(name={self.name!r}, model={self.model_id!r}, {state})"
