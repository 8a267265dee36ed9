"""Checks shared by the tests of the one-use tickets a client attaches to a worker with (render sessions:
scheduler/node/session_attach.py; job leases: scheduler/node/job_lease.py)."""

from __future__ import annotations

from typing import Any

import pytest

from mesh.bigtcp.rpc import RpcError
from mesh.bigtcp.rpc_client import MeshClient


def dial(offer: dict[str, Any], attach: str) -> Any:
    """A connection to the worker an offer names, pinned to its peer id, saying `{"attach": attach}` in its HELLO."""
    return MeshClient.connect(offer["addr"], peer_id=offer["peer"], hello_extra=lambda *_: {"attach": attach})


async def forged_tickets_are_refused(rpc: MeshClient, method: str, ticket: str) -> None:
    """`method` refuses (forbidden) a ticket with the right name and a wrong secret, the right secret and a wrong
    name, an oversized one, and ones that are not strings: 5 refusals, each counted by the worker."""
    name, _, secret = ticket.partition(".")
    for forged in [f"{name}.{'A' * len(secret)}", f"{'0' * len(name)}.{secret}", "x" * 5000, 7, None]:
        with pytest.raises(RpcError) as e:
            await rpc.call(method, {"ticket": forged})
        assert e.value.code == "forbidden", forged


async def methods_are_refused(rpc: MeshClient, calls: list[tuple[str, dict[str, Any]]]) -> None:
    """An attach connection carries no token: every one of `calls` is refused."""
    for method, body in calls:
        with pytest.raises(RpcError) as e:
            await rpc.call(method, body)
        assert e.value.code in ("unauthenticated", "forbidden"), (method, e.value.code)
