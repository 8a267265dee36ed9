"""Who may join the mesh: a private-network key (libp2p pnet PSK) and an optional allow list of peer ids.

The same secret guards both planes: libp2p encrypts every connection with it (a node without the key cannot
even complete a handshake), and on the data plane a peer proves it holds the key with an HMAC over both peer
ids, sent in its first message; clients, who hold tokens rather than the mesh key, may only call client methods.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
SWARM_KEY_HEADER = "/key/swarm/psk/1.0.0/"


class AdmissionError(ValueError):
    """A mesh key or allow list that cannot be used."""


def generate_mesh_key() -> str:
    """A new key in go-libp2p's swarm.key format (interoperable with other libp2p tools)."""
    return f"{SWARM_KEY_HEADER}\n/base16/\n{secrets.token_hex(32)}\n"


def read_mesh_key(path: Path) -> str:
    """The 64-hex-digit PSK from a swarm.key file or a file holding just the hex."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise AdmissionError(f"cannot read mesh key file {path}: {e.strerror}") from None
    mode = os.stat(path).st_mode & 0o077
    if mode:
        raise AdmissionError(f"mesh key file {path} is readable by others; run: chmod 600 {path}")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if lines and lines[0] == SWARM_KEY_HEADER:
        if len(lines) != 3 or lines[1] != "/base16/":
            raise AdmissionError(f"mesh key file {path}: expected {SWARM_KEY_HEADER}, /base16/, then 64 hex digits")
        lines = lines[2:]
    if len(lines) != 1 or not _HEX64.match(lines[0]):
        raise AdmissionError(f"mesh key file {path}: expected 64 hex digits (32 bytes); "
                             "make one with `mesh-node mesh-key > swarm.key`")
    return lines[0].lower()


def read_allow_list(path: Path) -> frozenset[str]:
    """Peer ids, one per line; '#' starts a comment."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise AdmissionError(f"cannot read allow list {path}: {e.strerror}") from None
    ids = set()
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if not re.fullmatch(r"(12D3KooW|Qm)[1-9A-HJ-NP-Za-km-z]{40,60}", line):
            raise AdmissionError(f"{path}:{n}: {line!r} is not a peer id")
        ids.add(line)
    return frozenset(ids)


def peer_proof(psk_hex: str, dialer: str, listener: str) -> bytes:
    """What a peer sends on the data plane to show it holds the mesh key, bound to this pair of peer ids."""
    return hmac.new(bytes.fromhex(psk_hex), f"gpumesh-dataplane-v1|{dialer}|{listener}".encode(),
                    hashlib.sha256).digest()


def check_peer_proof(psk_hex: str, dialer: str, listener: str, proof: bytes) -> bool:
    return hmac.compare_digest(peer_proof(psk_hex, dialer, listener), proof)
