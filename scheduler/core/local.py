"""What a node and its own user's tools share on disk: the local admin token's file in the data dir."""

from __future__ import annotations

from pathlib import Path

LOCAL_TOKEN_FILE = "local.token"


def read_local_token(data_dir: Path) -> str | None:
    """The admin token a node wrote for its own user's CLI (None if there is none)."""
    try:
        return (Path(data_dir) / LOCAL_TOKEN_FILE).read_text().strip()
    except OSError:
        return None


__all__ = ["LOCAL_TOKEN_FILE", "read_local_token"]
