"""API tokens for clients: created and revoked with `mesh-node token ...`, stored hashed in the data dir.

A token is `gpm_<id>_<secret>`: the id finds the record, the secret (32 random bytes) is checked against its
SHA-256 (a random secret needs no slow hash). The file is 0600 and rewritten atomically; a running node reloads
it when it changes, so revocation takes effect without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

TOKENS_FILE = "tokens.json"
SCOPES = ("read", "submit", "compute", "admin")
# admin may do everything; compute (raw kernels) implies submit; submit implies read
_IMPLIES = {"admin": set(SCOPES), "compute": {"compute", "submit", "read"}, "submit": {"submit", "read"},
            "read": {"read"}}
_TOKEN_RE = re.compile(r"^gpm_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


class TokenError(Exception):
    """A token was refused; the message says why, without echoing the secret."""


@dataclass
class TokenRecord:
    id: str
    name: str
    scopes: list[str]
    sha256: str
    created: float
    expires: float | None = None
    revoked: float | None = None
    meta: dict = field(default_factory=dict)

    def allows(self, scope: str) -> bool:
        return any(scope in _IMPLIES[s] for s in self.scopes)


def parse_duration(text: str) -> float:
    """'90s', '15m', '12h', '30d' -> seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if not m:
        raise ValueError(f"bad duration {text!r}: use e.g. 90s, 15m, 12h, 30d")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


class TokenStore:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / TOKENS_FILE
        self._records: dict[str, TokenRecord] = {}
        self._stamp: tuple[int, int] | None = None  # (inode, mtime): each save makes a new inode

    def _load(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._records, self._stamp = {}, None
            return
        if self._stamp == (st.st_ino, st.st_mtime_ns):
            return
        try:
            raw = json.loads(self.path.read_text())
            self._records = {r["id"]: TokenRecord(**r) for r in raw["tokens"]}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise TokenError(f"token file {self.path} is unreadable or corrupt: {e}") from None
        self._stamp = (st.st_ino, st.st_mtime_ns)

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "tokens": [asdict(r) for r in self._records.values()]}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._stamp = None

    def records(self) -> list[TokenRecord]:
        self._load()
        return sorted(self._records.values(), key=lambda r: r.created)

    def create(self, name: str, scopes: list[str], expires_in_s: float | None = None) -> tuple[str, TokenRecord]:
        """Returns (token, record); the token is shown once and never stored."""
        if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", name):
            raise ValueError("token name: 1..64 characters of letters, digits, _ . @ -")
        bad = [s for s in scopes if s not in SCOPES]
        if bad or not scopes:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}; got {', '.join(bad) or 'none'}")
        self._load()
        if any(r.name == name and r.revoked is None for r in self._records.values()):
            raise ValueError(f"a live token named {name!r} exists; revoke it first or pick another name")
        tid, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        now = time.time()
        rec = TokenRecord(tid, name, list(scopes), hashlib.sha256(secret.encode()).hexdigest(), now,
                          now + expires_in_s if expires_in_s else None)
        self._records[tid] = rec
        self._save()
        return f"gpm_{tid}_{secret}", rec

    def revoke(self, name_or_id: str) -> TokenRecord:
        self._load()
        hits = [r for r in self._records.values() if name_or_id in (r.id, r.name) and r.revoked is None]
        if not hits:
            raise ValueError(f"no live token named or with id {name_or_id!r}")
        for r in hits:
            r.revoked = time.time()
        self._save()
        return hits[0]

    def check(self, rec: TokenRecord, scope: str, now: float | None = None) -> TokenRecord:
        """Re-check a token authenticated earlier (at connection time): still live, unexpired, in scope."""
        self._load()
        current = self._records.get(rec.id)
        if current is None or current.sha256 != rec.sha256:
            raise TokenError(f"API token {rec.name!r} no longer exists")
        return self._valid(current, scope, now)

    def authenticate(self, token: str | None, scope: str, now: float | None = None) -> TokenRecord:
        """The record of a valid token that allows `scope`, else TokenError with the reason."""
        if not token:
            raise TokenError("no API token given (create one with `mesh-node token create --name NAME`)")
        m = _TOKEN_RE.match(token)
        if not m:
            raise TokenError("malformed API token")
        self._load()
        rec = self._records.get(m.group(1))
        digest = hashlib.sha256(m.group(2).encode()).hexdigest()
        if rec is None or not hmac.compare_digest(rec.sha256, digest):
            raise TokenError("unknown API token")
        return self._valid(rec, scope, now)

    def _valid(self, rec: TokenRecord, scope: str, now: float | None) -> TokenRecord:
        now = time.time() if now is None else now
        if rec.revoked is not None:
            raise TokenError(f"API token {rec.name!r} was revoked")
        if rec.expires is not None and now >= rec.expires:
            raise TokenError(f"API token {rec.name!r} expired")
        if not rec.allows(scope):
            raise TokenError(f"API token {rec.name!r} lacks scope {scope!r} (has {', '.join(rec.scopes)})")
        return rec
