"""Tenants: a job belongs to the API token that submitted it.

A token's name is its tenant (names are unique among live tokens; a new token given a revoked token's name is
the same tenant rotating its secret). `job.list`, `job.status`, `job.result`, `job.watch` and `job.cancel` show
or touch only the caller's own jobs; a token with the `admin` scope (the node operator's, e.g. the local CLI)
sees and touches all. Another tenant's job answers exactly like a job that does not exist, so ids cannot be
probed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def call_limit_key(stream: Any) -> str | None:
    """Who a call counts against for the concurrent-call cap: a client's token (all its connections
    together), else the unauthenticated connection; mesh peers are not capped here."""
    p = stream.connection.principal
    if p is None or getattr(p, "kind", "") == "peer":
        return None
    token = getattr(p, "token", None)
    return f"token:{token.name}" if token is not None else f"conn:{stream.peer_id}"


def of(principal: Any) -> dict[str, Any]:
    """A caller as it travels between nodes (`jobview.principal_wire`): its token's name and scopes."""
    tok = getattr(principal, "token", None)
    return {"name": tok.name if tok else "", "scopes": list(tok.scopes) if tok else []}


def is_admin(principal: dict[str, Any]) -> bool:
    return "admin" in principal.get("scopes", ())


def owns(principal: dict[str, Any], submitted_by: str) -> bool:
    """May the caller (`of(...)`, or a forwarded principal) see and touch a job submitted by `submitted_by`?"""
    name = principal.get("name", "")
    return is_admin(principal) or (bool(name) and name == submitted_by)


def visible(principal: dict[str, Any], rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The job rows (with "submitted_by") the caller may see."""
    return [r for r in rows if owns(principal, r.get("submitted_by", ""))]
