"""Who is calling: the data plane's half of mesh admission (peers prove the mesh key, clients present an
API token), the principal a connection carries, and the local admin token of the node's own user."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh import admission as adm
from mesh import metrics as mesh_metrics
from mesh.bigtcp.tls import HandshakeError
from scheduler.core.local import LOCAL_TOKEN_FILE, read_local_token
from scheduler.node.tokens import TokenError, TokenRecord, TokenStore

log = logging.getLogger("gpumesh.node")
REFUSAL_LOG_INTERVAL_S = 60.0


@dataclass(frozen=True)
class Principal:
    kind: str  # "peer" | "client" | "session" (a render session's client attached to a tile's worker)
    #          | "lease" (a client attached to the worker of its job lease: scheduler/node/job_lease.py)
    token: TokenRecord | None = None
    refusal: str = ""  # a client whose token failed: every call answers with this reason

    @property
    def name(self) -> str:
        return self.token.name if self.token else ""


class Admission:
    """The data plane's half of mesh admission, as the transport's hello/authorize hooks.

    A dialing peer proves it holds the mesh key (HMAC over both peer ids) when the mesh has one; a client
    presents an API token instead. Anyone else is refused at connection time and counted.
    """

    def __init__(self, self_id: str, psk: str | None, allow: frozenset[str] | None, tokens: TokenStore) -> None:
        self.self_id, self.psk, self.allow, self.tokens = self_id, psk, allow, tokens
        self._logged: dict[str, float] = {}

    def hello_extra(self, local_id: str, remote_id: str | None) -> dict[str, Any]:
        if self.psk and remote_id:
            return {"proof": adm.peer_proof(self.psk, local_id, remote_id)}
        return {}

    def authorize(self, peer_id: str, extra: dict[str, Any], outbound: bool) -> Principal:
        if "token" in extra:
            # a client with a bad token stays connected only to be told why on each call: a clear error
            # beats a closed socket, and it can reach nothing else
            try:
                return Principal("client", self.tokens.authenticate(str(extra["token"]), "read"))
            except TokenError as e:
                mesh_metrics.PEERS_REFUSED.labels("client").inc()
                return Principal("client", None, str(e))
        if extra.get("attach") == "session":
            # a render session's client dialing a tile's worker directly (session_attach): no token here, only
            # render.attach with the one-use ticket its gateway gave it; every other method refuses it
            return Principal("session")
        if extra.get("attach") == "lease":
            # a client holding a job lease, dialing the leased worker (job_lease): lease.run with its ticket only
            return Principal("lease")
        if self.allow is not None and peer_id not in self.allow:
            self._refuse(peer_id, "it is not on this mesh's allow list (--allow-peers)")
        if self.psk and not outbound:
            proof = extra.get("proof")
            if not isinstance(proof, bytes) or not adm.check_peer_proof(self.psk, peer_id, self.self_id, proof):
                self._refuse(peer_id, "it did not prove it holds this mesh's key (a different --mesh-key-file, or none)")
        return Principal("peer")

    def _refuse(self, peer_id: str, why: str) -> None:
        """Count, log (at warning, at most once a minute per peer: it may retry every few seconds) and refuse."""
        mesh_metrics.PEERS_REFUSED.labels("dataplane").inc()
        now = time.monotonic()
        if now - self._logged.get(peer_id, -1e9) >= REFUSAL_LOG_INTERVAL_S:
            self._logged[peer_id] = now
            if len(self._logged) > 1024:
                self._logged.clear()
            log.warning("refused peer %s on the data plane: %s", peer_id, why)
        raise HandshakeError("refused", f"peer {peer_id} refused: {why}")


def local_token(data_dir: Path, store: TokenStore) -> str:
    """The admin token the node's own user's CLI uses (data_dir/local.token, 0600), created on first start."""
    path = Path(data_dir) / LOCAL_TOKEN_FILE
    if path.exists():
        tok = path.read_text().strip()
        try:
            store.authenticate(tok, "admin")
            return tok
        except TokenError:
            pass  # revoked or lost: make a new one
    for rec in store.records():
        if rec.name == "local-cli" and rec.revoked is None:
            store.revoke(rec.id)
    tok, _ = store.create("local-cli", ["admin"])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(tok + "\n")
    return tok


__all__ = ["Admission", "Principal", "local_token", "read_local_token"]
