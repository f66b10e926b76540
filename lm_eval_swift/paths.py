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
