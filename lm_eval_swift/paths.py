"""Where lm-eval-swift keeps files between runs."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lm-eval-swift`` (an absolute ``XDG_CACHE_HOME``, as the XDG spec asks), else
    ``~/.cache/lm-eval-swift``: a folder that reinstalling a package does not lose."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return root / "lm-eval-swift"


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
