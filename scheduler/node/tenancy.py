"""Tenants: a job belongs to the API token that submitted it.

A token's name is its tenant (names are unique among live tokens; a new token given a revoked token's name is
the same tenant rotating its secret). `job.list`, `job.status`, `job.result`, `job.watch` and `job.cancel` show
or touch only the caller's own jobs; a token with the `admin` scope (the node operator's, e.g. the local CLI)
sees and touches all. Another tenant's job answers exactly like a job that does not exist, so ids cannot be
probed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol


class _Token(Protocol):
    name: str
    scopes: list[str]


def call_limit_key(stream: Any) -> str | None:
    """Who a call counts against for the concurrent-call cap: a client's token (all its connections
    together), else the unauthenticated connection; mesh peers are not capped here."""
    p = stream.connection.principal
    if p is None or getattr(p, "kind", "") == "peer":
        return None
    token = getattr(p, "token", None)
    return f"token:{token.name}" if token is not None else f"conn:{stream.peer_id}"


def is_admin(token: _Token | None) -> bool:
    return token is not None and "admin" in token.scopes


def owns(token: _Token | None, submitted_by: str) -> bool:
    """May `token` see and touch a job submitted by the tenant `submitted_by`?"""
    return is_admin(token) or (token is not None and token.name == submitted_by)


def visible(token: _Token | None, records: Iterable[Any]) -> list[Any]:
    """The job records (anything with `.job.submitted_by`) that `token` may see."""
    return [r for r in records if owns(token, r.job.submitted_by)]
