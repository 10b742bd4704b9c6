"""Where simengine keeps derived data that can always be rebuilt: features and exported graphs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$SIMENGINE_CACHE, else $XDG_CACHE_HOME/simengine, else ~/.cache/simengine."""
    if env := os.environ.get("SIMENGINE_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "simengine"
