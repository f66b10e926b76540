"""Where lm-eval-swift keeps files between runs, where its task YAML is, and the short name of a model path."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lm-eval-swift`` (an absolute ``XDG_CACHE_HOME``, as the XDG spec asks), else
    ``~/.cache/lm-eval-swift``: a folder that reinstalling a package does not lose."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return root / "lm-eval-swift"


def models_dir() -> Path:
    """Where models built offline (SmolLM2, :mod:`lm_eval_swift.smollm2`) are kept: ``$LM_EVAL_SWIFT_CACHE/models``
    when that is set, else ``models`` in :func:`user_cache_dir`."""
    root = os.environ.get("LM_EVAL_SWIFT_CACHE")
    return (Path(root).expanduser() if root else user_cache_dir()) / "models"


def tasks_dir() -> Path:
    """Where the task YAML lives: shipped in the package, or ``tasks/`` of a source checkout."""
    shipped = Path(__file__).parent / "task_configs"
    return (
        shipped if shipped.is_dir() else Path(__file__).resolve().parents[1] / "tasks"
    )


def model_basename(name_or_path: str) -> str:
    """The last component of a model's path or Hub id (``/ckpt/llama/`` -> ``llama``)."""
    return str(name_or_path).rstrip("/\\").replace("\\", "/").split("/")[-1]


def with_user_umask(path: str | os.PathLike) -> Path:
    """Give ``path`` (a file, or a folder and all it holds) the mode a new file or folder gets under the user's
    umask (0644 / 0755 under the usual 022): safetensors and ``tempfile`` write 0600 files and 0700 folders."""
    mask = os.umask(0o022)
    os.umask(mask)
    path = Path(path)
    for p in [path, *(path.rglob("*") if path.is_dir() else ())]:
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)
    return path
