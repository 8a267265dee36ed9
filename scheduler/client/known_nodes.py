"""Which node a client is talking to: the node's peer id, pinned before the API token leaves the client.

A client reaching a node by address (`--node HOST:PORT`, `Mesh.connect`, `Client.connect`) checks the peer id the
node proves in the TLS handshake (its certificate carries the node's libp2p key) before it sends its HELLO, which
carries the token:

* with `--peer-id` / `peer_id=...`: against that id;
* otherwise against the id recorded for that address in the known-nodes file (like SSH's `known_hosts`):
  `$GPUMESH_KNOWN_NODES`, or `$XDG_CONFIG_HOME/gpumesh/known_nodes` (`~/.config/gpumesh/known_nodes`), one
  `HOST:PORT PEER_ID` per line; an address seen for the first time is trusted and recorded (trust on first use).

A different id is refused with `IdentityMismatch`, which says what to do. With `--insecure` (no TLS) the id in
the node's HELLO is only a claim, and the token travels in clear: use it on trusted networks only.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from mesh.bigtcp.tls import HandshakeError

log = logging.getLogger("gpumesh.client")

ENV = "GPUMESH_KNOWN_NODES"


class IdentityMismatch(HandshakeError):
    def __init__(self, address: str, pinned: str, actual: str, where: str) -> None:
        super().__init__(
            "peer_id_mismatch",
            f"the node at {address} is {actual}, but {where} says {pinned}: refusing to send the token "
            f"(another machine answers at that address, or the node has a new identity). If you trust it, "
            f"pass --peer-id {actual}" + (f" or remove its line from {where}" if where != "--peer-id" else ""))
        self.address, self.pinned, self.actual = address, pinned, actual


def default_path() -> Path:
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "gpumesh" / "known_nodes"


class KnownNodes:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_path()

    def _entries(self) -> dict[str, str]:
        try:
            lines = self.path.read_text().splitlines()
        except OSError:
            return {}
        out: dict[str, str] = {}
        for line in lines:
            parts = line.split()
            if len(parts) == 2 and not line.lstrip().startswith("#"):
                out[parts[0]] = parts[1]
        return out

    def get(self, address: str) -> str | None:
        return self._entries().get(address)

    def remember(self, address: str, peer_id: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path, "a") as f:
            f.write(f"{address} {peer_id}\n")


def check_identity(address: str, actual: str, *, peer_id: str | None, known: KnownNodes | None) -> str | None:
    """Before the token is sent: raise IdentityMismatch if `actual` is not the node expected at `address`.
    Returns the id to record as first seen (None when it was checked against a pin)."""
    if peer_id is not None:
        if actual != peer_id:
            raise IdentityMismatch(address, peer_id, actual, "--peer-id")
        return None
    if known is None:
        return None
    pinned = known.get(address)
    if pinned is not None:
        if actual != pinned:
            raise IdentityMismatch(address, pinned, actual, str(known.path))
        return None
    return actual
