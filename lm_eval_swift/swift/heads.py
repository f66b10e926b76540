"""SWIFT reward heads: one linear layer over a base model's hidden states (or logits), saved as a small directory.

A head reads, for every response token t, the features of the position where t is the model's input: the
concatenation (fp32) of the chosen entries of HF's ``output_hidden_states`` (0 = embeddings, i = output of layer
i-1, L = final-norm output) or the final logits. One fused ``Linear(F, 2)`` gives a gate logit and a reward per
token, pooled by :func:`swift_reward`. Without a gate the layer is ``Linear(F, 1)`` and the reward is a mean.

On disk a head is a directory with ``head.safetensors`` (``linear.weight`` [2|1, F], ``linear.bias`` [2|1]) and
``config.json`` (see ``heads/README.md``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lm_eval_swift.errors import UsageError
from lm_eval_swift.paths import model_basename, with_user_umask


log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "head.safetensors"
FORMAT = "swift-head"
FORMAT_VERSION = 1
HEADS_ENV = "LM_EVAL_SWIFT_HEADS"

Entry = (
    int | Literal["logits"]
)  # an index into output_hidden_states, or the final logits


class HeadError(UsageError):
    """A head that cannot be found or read (missing, corrupt or inconsistent files)."""


class HeadMismatchError(HeadError):
    """A head that was made for another base model."""


def swift_reward(
    parts: torch.Tensor, mask: torch.Tensor, gate: bool = True
) -> torch.Tensor:
    """SWIFT's pooled reward. parts [..., T, 2] = (gate logit, reward) per token, mask [..., T] -> R [...] (fp32).

    R = sum_t g_t r_t / max(sum_t g_t, 1e-8) with g_t = sigmoid(gate logit), over masked-in tokens; without a gate
    g_t = 1 (the mean of r_t). No tokens give R = 0.
    """
    parts, mask = parts.float(), mask.bool()
    r = torch.where(mask, parts[..., 1], 0.0)
    g = torch.sigmoid(parts[..., 0]) * mask if gate else mask.float()
    return (g * r).sum(-1) / g.sum(-1).clamp_min(1e-8)


@dataclass(frozen=True)
class BaseModel:
    """The facts about a base model that a head depends on."""

    name_or_path: str
    num_hidden_layers: int
    hidden_size: int
    vocab_size: int
    model_type: str | None = None
    revision: str | None = None
    # :func:`embedding_probe` of the weights the head was trained on (None: unknown, e.g. heads saved before it)
    embedding_probe: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.embedding_probe is not None:  # a JSON list when read from config.json
            object.__setattr__(
                self, "embedding_probe", tuple(map(float, self.embedding_probe))
            )

    @classmethod
    def from_config(
        cls,
        config,
        name_or_path: str,
        revision: str | None = None,
        weights: nn.Module | None = None,
    ) -> BaseModel:
        """The facts of the model with HF ``config``; with the model itself (``weights``) also its probe."""
        text = (
            config.get_text_config() if hasattr(config, "get_text_config") else config
        )
        return cls(
            name_or_path=str(name_or_path),
            num_hidden_layers=int(text.num_hidden_layers),
            hidden_size=int(text.hidden_size),
            vocab_size=int(text.vocab_size),
            model_type=getattr(text, "model_type", None),
            revision=revision,
            embedding_probe=None if weights is None else embedding_probe(weights),
        )

    @property
    def name(self) -> str:
        """Basename of ``name_or_path`` (hub id or local path): what heads are matched on."""
        return model_basename(self.name_or_path)


PROBE_ROWS, PROBE_COLUMNS = 8, 4
PROBE_TOLERANCE = 0.01  # of the probe's largest magnitude: bf16/fp16 rounding stays far below, other weights do not


def embedding_probe(model: nn.Module) -> tuple[float, ...] | None:
    """A cheap fingerprint of a model's weights: ``PROBE_ROWS`` x ``PROBE_COLUMNS`` entries of its input embedding
    matrix [V, d] (rows and columns evenly spread), as float; None when they cannot be read (offloaded weights)."""
    try:
        weight = model.get_input_embeddings().weight
        if weight.device.type == "meta" or weight.dim() != 2:
            return None
        rows = (
            torch.linspace(0, weight.shape[0] - 1, PROBE_ROWS).long().to(weight.device)
        )
        cols = (
            torch.linspace(0, weight.shape[1] - 1, PROBE_COLUMNS)
            .long()
            .to(weight.device)
        )
        values = weight.detach()[rows][:, cols].float().flatten().cpu()
    except (AttributeError, NotImplementedError, RuntimeError):
        return None
    return tuple(round(float(v), 7) for v in values)


def probe_difference(expected: Sequence[float], actual: Sequence[float]) -> float:
    """The largest difference between two probes relative to ``expected``'s largest magnitude (inf: other sizes)."""
    if len(expected) != len(actual):
        return float("inf")
    scale = max(max((abs(v) for v in expected), default=0.0), 1e-12)
    return (
        max((abs(a - b) for a, b in zip(expected, actual, strict=False)), default=0.0)
        / scale
    )


class SwiftHead(nn.Module):
    """A SWIFT head for ``base``: features are hidden-state entries ``layers`` (default all, 0..L) or the logits."""

    def __init__(
        self,
        base: BaseModel,
        *,
        kind: Literal["hidden_states", "logits"] = "hidden_states",
        layers: Sequence[int] | None = None,
        gate: bool = True,
        name: str = "swift",
        training: dict[str, Any] | None = None,
    ):
        super().__init__()
        n_entries = base.num_hidden_layers + 1
        if kind == "hidden_states":
            layers = (
                tuple(range(n_entries))
                if layers is None
                else tuple(i + n_entries if i < 0 else i for i in map(int, layers))
            )
            if (
                not layers
                or len(set(layers)) != len(layers)
                or not all(0 <= i < n_entries for i in layers)
            ):
                raise HeadError(
                    f"head {name!r}: layers must be distinct hidden_states indices in 0..{n_entries - 1}, got {layers}"
                )
            n_features = len(layers) * base.hidden_size
        elif kind == "logits":
            if layers:
                raise HeadError(f"head {name!r}: a logits head takes no layers")
            layers, n_features = (), base.vocab_size
        else:
            raise HeadError(
                f"head {name!r}: unknown feature kind {kind!r} (expected 'hidden_states' or 'logits')"
            )
        self.base, self.kind, self.layers, self.gate, self.name = (
            base,
            kind,
            layers,
            gate,
            name,
        )
        self.training_info = dict(training or {})
        self.linear = nn.Linear(n_features, 2 if gate else 1)

    @classmethod
    def for_model(
        cls,
        config,
        name_or_path: str,
        revision: str | None = None,
        weights: nn.Module | None = None,
        **kwargs,
    ) -> SwiftHead:
        """A freshly initialised head for the model with HF ``config`` (kwargs as in ``__init__``); given the model
        itself (``weights``), the head records its :func:`embedding_probe` and later refuses other weights."""
        return cls(
            BaseModel.from_config(config, name_or_path, revision, weights), **kwargs
        )

    @property
    def entries(self) -> tuple[Entry, ...]:
        """The feature entries, in concatenation order."""
        return self.layers if self.kind == "hidden_states" else ("logits",)

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight [2, F] and bias [2] with rows (gate, reward); a gateless head has a zero gate row."""
        w, b = self.linear.weight, self.linear.bias
        if not self.gate:
            w, b = (
                torch.cat([torch.zeros_like(w), w]),
                torch.cat([torch.zeros_like(b), b]),
            )
        return w, b

    def projections(self) -> tuple[dict[Entry, torch.Tensor], torch.Tensor]:
        """Per-entry weights {entry: [2, d_entry]} (fp32) and bias [2]: parts = sum_e h_e @ W_e^T + bias."""
        w, b = self.fused()
        width = (
            self.base.hidden_size
            if self.kind == "hidden_states"
            else self.base.vocab_size
        )
        return dict(
            zip(self.entries, w.detach().float().split(width, dim=1), strict=True)
        ), b.detach().float()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [..., T, F] (entries concatenated in ``entries`` order) -> parts [..., T, 2] fp32."""
        w, b = self.fused()
        return F.linear(features.float(), w, b)

    def reward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """features [..., T, F], mask [..., T] -> R [...]."""
        return swift_reward(self(features), mask, self.gate)

    # ---- compatibility -------------------------------------------------------------------------------------------

    def check_compatible(
        self, model_config, name_or_path: str, model: nn.Module | None = None
    ) -> None:
        """Raise :class:`HeadMismatchError` naming expected vs actual if this head was not made for that model:
        its sizes and name differ, or (given the ``model`` and a head that recorded a probe) its weights do."""
        actual = BaseModel.from_config(model_config, name_or_path)
        problems = [
            f"{field}: head expects {getattr(self.base, field)}, model has {getattr(actual, field)}"
            for field in ("num_hidden_layers", "hidden_size", "vocab_size")
            if getattr(self.base, field) != getattr(actual, field)
        ]
        if self.base.name != actual.name:
            problems.append(
                f"base model: head was made for {self.base.name_or_path!r}, model is {actual.name_or_path!r}"
            )
        if not problems and model is not None and self.base.embedding_probe is not None:
            probe = embedding_probe(model)
            if (
                probe is not None
                and (diff := probe_difference(self.base.embedding_probe, probe))
                > PROBE_TOLERANCE
            ):
                problems.append(
                    f"weights: the model's embedding probe differs from the one the head was trained on by "
                    f"{diff:.0%} (tolerance {PROBE_TOLERANCE:.0%}): same name and shapes, other weights"
                )
        if problems:
            raise HeadMismatchError(
                f"SWIFT head {self.name!r} does not fit model {name_or_path!r}: "
                + "; ".join(problems)
            )

    # ---- disk format ---------------------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "gate": self.gate,
            "features": {"kind": self.kind, "layers": list(self.layers)},
            "base_model": asdict(self.base),
            "training": self.training_info,
        }

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {
            k: v.detach().float().contiguous().cpu()
            for k, v in self.linear.state_dict().items()
        }
        save_file(
            {f"linear.{k}": v for k, v in tensors.items()},
            directory / WEIGHTS_NAME,
            metadata={"format": "pt"},
        )
        with_user_umask(directory / WEIGHTS_NAME)  # safetensors writes 0600
        (directory / CONFIG_NAME).write_text(json.dumps(self.config(), indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, dir_or_hub_id: str | os.PathLike) -> SwiftHead:
        """Load a head from a local directory, or from a Hugging Face Hub repo id (needs network)."""
        directory = Path(dir_or_hub_id).expanduser()
        if not directory.is_dir():
            directory = _download(str(dir_or_hub_id))
        config = read_config(directory)
        try:
            features = config["features"]
            head = cls(
                BaseModel(**config["base_model"]),
                kind=features["kind"],
                layers=features.get("layers"),
                gate=bool(config["gate"]),
                name=config.get("name", "swift"),
                training=config.get("training"),
            )
        except (KeyError, TypeError) as e:
            raise HeadError(
                f"{directory / CONFIG_NAME}: missing or malformed field {e}"
            ) from e
        head.linear.load_state_dict(_read_weights(directory, head.linear))
        return head


def read_config(directory: Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a head directory; :class:`HeadError` if absent, unreadable or not a head."""
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise HeadError(f"{directory}: no {CONFIG_NAME}, so not a SWIFT head directory")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HeadError(f"{path}: unreadable ({e})") from e
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise HeadError(
            f'{path}: not a SWIFT head config (expected "format": "{FORMAT}")'
        )
    if config.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise HeadError(
            f"{path}: format_version {config['format_version']} is newer than this code ({FORMAT_VERSION})"
        )
    return config


def _read_weights(directory: Path, linear: nn.Linear) -> dict[str, torch.Tensor]:
    path = directory / WEIGHTS_NAME
    if not path.is_file():
        raise HeadError(f"{directory}: no {WEIGHTS_NAME}")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise HeadError(f"{path}: corrupt safetensors file ({e})") from e
    expected = {f"linear.{k}": v.shape for k, v in linear.state_dict().items()}
    if set(tensors) != set(expected):
        raise HeadError(
            f"{path}: tensors {sorted(tensors)}, expected {sorted(expected)}"
        )
    for key, shape in expected.items():
        t = tensors[key]
        if t.shape != shape:
            raise HeadError(
                f"{path}: {key} has shape {tuple(t.shape)}, config implies {tuple(shape)}"
            )
        if not torch.isfinite(t).all():
            raise HeadError(f"{path}: {key} contains NaN or inf")
    return {k.removeprefix("linear."): v.float() for k, v in tensors.items()}


def _download(hub_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                repo_id=hub_id, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]
            )
        )
    except Exception as e:  # offline, unknown repo, bad id: all mean "no such head"
        raise HeadError(
            f"SWIFT head {hub_id!r}: not a local directory and not loadable from the Hub ({e})"
        ) from e


# ---- discovery -------------------------------------------------------------------------------------------------


def registry_dir() -> Path:
    """The heads registry: ``heads/`` of the repository, shipped in the wheel as ``lm_eval_swift/head_registry``."""
    package = Path(__file__).resolve().parents[1]  # lm_eval_swift/
    shipped = package / "head_registry"
    return shipped if shipped.is_dir() else package.parent / "heads"


def heads_dirs() -> list[Path]:
    """Where heads are looked up by name: ``$LM_EVAL_SWIFT_HEADS`` (os.pathsep-separated), then the registry."""
    env = [
        Path(p).expanduser()
        for p in os.environ.get(HEADS_ENV, "").split(os.pathsep)
        if p
    ]
    return [*env, registry_dir()]


def find_head(ref: str) -> str | Path:
    """A head directory for ``ref`` (a path, or a name under :func:`heads_dirs`), else ``ref`` as a hub id."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    for d in heads_dirs():
        if (d / ref).is_dir():
            return d / ref
    if ref.count("/") == 1 and not ref.startswith((".", "/", "~")):
        return ref
    raise HeadError(
        f"SWIFT head {ref!r} not found: not a directory, nor a head under {[str(d) for d in heads_dirs()]}"
    )


def available_heads() -> dict[str, Path]:
    """Every head directory under :func:`heads_dirs` by name (earlier dirs shadow later ones)."""
    found: dict[str, Path] = {}
    for d in heads_dirs():
        if d.is_dir():
            for sub in sorted(d.iterdir()):
                if (sub / CONFIG_NAME).is_file():
                    found.setdefault(sub.name, sub)
    return found


def head_refs(spec: str) -> list[tuple[str, str]]:
    """``"[alias=]ref,..."`` -> [(alias or "", ref)]. ``;`` separates too: lm-eval's ``--model_args`` splits on
    commas, so several heads there are written ``heads=a=path1;b=path2``."""
    refs = []
    for entry in filter(None, (e.strip() for e in re.split(r"[,;]", spec))):
        alias, _, ref = entry.partition("=") if "=" in entry else ("", "", entry)
        refs.append((alias.strip(), ref.strip()))
    return refs


def heads_disabled(spec: str | None) -> bool:
    """Whether a heads spec asks for no heads (``none``, ``off`` or empty; None means ``auto``)."""
    return spec is not None and str(spec).strip().lower() in ("", "none", "off")


def resolve_heads(
    spec: str | None,
    model_name_or_path: str,
    model_config,
    model: nn.Module | None = None,
) -> dict[str, SwiftHead]:
    """Heads to score with, by alias, loaded and checked against the model.

    ``spec``: ``[alias=]path_or_name_or_hub_id`` entries (see :func:`head_refs`); the first head's alias defaults
    to "swift", later ones to their own names. None/"auto": the one head under :func:`heads_dirs` made for a
    model with this basename (several: error; none: no heads, with a warning). ""/"none"/"off": no heads. Given
    the ``model``, heads that recorded a probe of their base model's weights are checked against it too.
    """
    spec = "auto" if spec is None else spec.strip()
    if spec.lower() == "auto":
        return _auto_heads(model_name_or_path, model_config, model)
    if heads_disabled(spec):
        return {}
    heads: dict[str, SwiftHead] = {}
    for alias, ref in head_refs(spec):
        head = SwiftHead.from_pretrained(find_head(ref))
        alias = alias or ("swift" if not heads else head.name)
        if alias in heads:
            raise HeadError(
                f"two SWIFT heads are called {alias!r} in {spec!r}; name them with alias=path"
            )
        head.check_compatible(model_config, model_name_or_path, model)
        heads[alias] = head
    return heads


def _auto_heads(
    model_name_or_path: str, model_config, model: nn.Module | None
) -> dict[str, SwiftHead]:
    want = model_basename(model_name_or_path)
    matches = []
    for path in available_heads().values():
        try:
            config = read_config(path)
            base = model_basename(config["base_model"]["name_or_path"])
        except (HeadError, KeyError, TypeError) as e:
            log.warning("skipping unreadable SWIFT head %s: %s", path, e)
            continue
        if base == want:
            matches.append(path)
    if len(matches) > 1:
        raise HeadError(
            f"several SWIFT heads match model {want!r}: {[str(p) for p in matches]}; choose with heads=alias=path"
        )
    if not matches:
        log.warning(
            "heads=auto: no SWIFT head for model %r under %s: no SWIFT rewards. Give one with heads=PATH, or "
            "heads=none to say so.",
            want,
            ", ".join(map(str, heads_dirs())),
        )
        return {}
    head = SwiftHead.from_pretrained(matches[0])
    head.check_compatible(model_config, model_name_or_path, model)
    log.info("heads=auto: SWIFT head for model %r: %s", want, matches[0])
    return {"swift": head}
