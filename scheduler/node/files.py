"""The node's files are private, and uploads that did not become jobs do not outlive the moment.

The data dir holds the identity key, API token hashes, the journal (job specs, inline inputs) and job
inputs and outputs: all of it is the node user's alone (dirs 0700, files 0600), including files an older
version or another tool created with looser modes. Spooled inputs are deleted as soon as they are refused or
their job ends; at start-up whatever a killed node left behind (`.part` files, inputs of jobs that are over)
is swept.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("gpumesh.files")

PARTIAL_SUFFIX = ".part"


def make_private(data_dir: Path) -> int:
    """Set the process umask to 077 (every file the node creates from now on is 0600) and tighten what is
    already in `data_dir`. Returns how many modes were changed."""
    os.umask(0o077)
    root = Path(data_dir)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    changed = _tighten(root, 0o700)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            changed += _tighten(Path(dirpath) / name, 0o700)
        for name in filenames:
            changed += _tighten(Path(dirpath) / name, 0o600)
    if changed:
        log.info("data dir %s: made %d file(s) private to this user", root, changed)
    return changed


def _tighten(path: Path, mode: int) -> int:
    try:
        st = path.lstat()
    except OSError:
        return 0
    if stat.S_ISLNK(st.st_mode) or stat.S_IMODE(st.st_mode) & 0o077 == 0:
        return 0
    try:
        os.chmod(path, stat.S_IMODE(st.st_mode) & mode)
    except OSError as e:
        log.warning("cannot make %s private: %s", path, e)
        return 0
    return 1


def sweep_uploads(spool: Path, results: Path, keep: Iterable[str]) -> int:
    """Delete partial files in spool/ and results/, and spooled inputs whose name is not in `keep` (the
    inputs of jobs still to run). Returns the number of files removed."""
    keep = set(keep)
    removed = 0
    for d in (spool, results):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            stale = p.name.endswith(PARTIAL_SUFFIX) or (d == spool and p.name not in keep)
            if stale and p.is_file():
                p.unlink(missing_ok=True)
                removed += 1
    if removed:
        log.info("removed %d abandoned upload file(s) from %s", removed, spool.parent)
    return removed
