"""What a node and its own user's tools share on disk: where the data dir is by default, and the local admin
token's file in it."""

from __future__ import annotations

import os
from pathlib import Path

LOCAL_TOKEN_FILE = "local.token"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "gpumesh"


def read_local_token(data_dir: Path) -> str | None:
    """The admin token a node wrote for its own user's CLI (None if there is none)."""
    try:
        return (Path(data_dir) / LOCAL_TOKEN_FILE).read_text().strip()
    except OSError:
        return None


__all__ = ["LOCAL_TOKEN_FILE", "default_data_dir", "read_local_token"]
