"""Node identity: a persistent Ed25519 key whose libp2p peer id names the node on both planes."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from libp2p.crypto.ed25519 import Ed25519PrivateKey, Ed25519PublicKey, create_new_key_pair
from libp2p.crypto.keys import KeyPair, PublicKey
from libp2p.peer.id import ID

KEY_FILE = "identity.key"
_MAGIC = b"gpumesh-ed25519-v1\n"


class IdentityError(Exception):
    """The key file exists but cannot be used; never answered by minting a new identity."""


@dataclass(frozen=True)
class Identity:
    key_pair: KeyPair

    @property
    def peer_id(self) -> ID:
        return ID.from_pubkey(self.key_pair.public_key)

    @property
    def peer_id_str(self) -> str:
        return self.peer_id.to_base58()

    def sign(self, data: bytes) -> bytes:
        return self.key_pair.private_key.sign(data)

    @classmethod
    def generate(cls, seed: bytes | None = None) -> Identity:
        return cls(create_new_key_pair(seed))


def public_key_from_bytes(raw: bytes) -> PublicKey:
    """An Ed25519 public key from its 32 raw bytes (raises ValueError on anything else)."""
    if len(raw) != 32:
        raise ValueError(f"ed25519 public key must be 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_bytes(raw)


def peer_id_of(public_key: PublicKey) -> str:
    return ID.from_pubkey(public_key).to_base58()


def load_or_create(data_dir: Path) -> tuple[Identity, bool]:
    """The node's identity from `data_dir`, created (0600) on first start. Returns (identity, created)."""
    path = Path(data_dir) / KEY_FILE
    if path.exists():
        return load(path), False
    Path(data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    ident = Identity.generate()
    seed = ident.key_pair.private_key.to_bytes()  # type: ignore[attr-defined]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(_MAGIC + seed.hex().encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
    return ident, True


def load(path: Path) -> Identity:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise IdentityError(f"cannot read identity key {path}: {e.strerror}") from e
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise IdentityError(f"identity key {path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
    if not raw.startswith(_MAGIC):
        raise IdentityError(f"identity key {path} is corrupt (unknown format); restore it from a backup or move it away to create a new identity")
    try:
        seed = bytes.fromhex(raw[len(_MAGIC):].strip().decode())
        if len(seed) != 32:
            raise ValueError("wrong length")
        priv = Ed25519PrivateKey.from_bytes(seed)
    except Exception as e:
        raise IdentityError(f"identity key {path} is corrupt ({e}); restore it from a backup or move it away to create a new identity") from e
    return Identity(KeyPair(priv, priv.get_public_key()))
