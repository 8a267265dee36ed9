"""Direct attach: a render session's client talks to a tile's worker itself, one hop instead of two.

A session is held by its gateway (the node the client is connected to), and by default every frame and every
tile crosses it: client -> gateway -> worker and back, a TLS decrypt and re-encrypt at the gateway each way. When
the tile's worker is another node, it issues a ticket in its `ready` answer; the gateway hands the ticket to
the client with the worker's data-plane address and peer id. The client dials the worker, pinning that peer id
(the ticket is sent only to the node whose certificate proves it), with `{"attach": "session"}` in its HELLO instead
of an API token, and opens `render.attach` with `{"ticket": ...}`: from then on that tile's frames come from the
client and its tiles go back to the client on that stream. The gateway keeps the session (its slots, limits
and end): it stops relaying that tile's frames, and a session it ends or loses ends the tile as before.

A ticket is a capability for one tile of one session: 128 random bits naming it and 256 secret bits, compared
in constant time, good once, and only while its tile lives (it is forgotten when the tile ends). A
connection that said `attach` carries the principal kind "session": every other method refuses it, as it
refuses any caller without a token or the mesh key. A client that cannot reach the worker (a firewall, a
NAT, a port not published) keeps that tile on the relayed path: nothing is lost but the hop.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from scheduler.core.render_session import SessionError

MAX_TICKET_LEN = 128
MAX_OPEN_TICKETS = 4096  # tiles a worker serves at once are far fewer (one per reserved slot)


def ticket_of(value: Any) -> str | None:
    """A ticket as it may travel (a short printable string), else None."""
    if isinstance(value, str) and 0 < len(value) <= MAX_TICKET_LEN and value.isascii() and value.isprintable():
        return value
    return None


@dataclass
class Attachment:
    """One tile's ticket on its worker: the tile takes the client's stream from `handoff` once it is redeemed
    and sets `ended` (with the tile's counts in `result`) when it is done with it."""

    session: str
    secret: str
    used: bool = False
    result: dict[str, Any] = field(default_factory=dict)
    ended: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        self.handoff_tx, self.handoff_rx = trio.open_memory_channel[Any](1)


class Tickets:
    """The tickets of the tiles a worker is serving."""

    def __init__(self, limit: int = MAX_OPEN_TICKETS) -> None:
        self.limit = limit
        self._open: dict[str, Attachment] = {}

    def __len__(self) -> int:
        return len(self._open)

    @contextmanager
    def issue(self, session: str) -> Iterator[tuple[str, Attachment]]:
        """A ticket for one tile of `session`, valid until the block ends (the tile's life)."""
        if len(self._open) >= self.limit:
            raise SessionError("limit", f"{len(self._open)} session tickets open on this worker")
        name = secrets.token_hex(16)
        att = Attachment(session, secrets.token_urlsafe(32))
        self._open[name] = att
        try:
            yield f"{name}.{att.secret}", att
        finally:
            del self._open[name]
            att.handoff_tx.close()
            att.handoff_rx.close()
            att.ended.set()

    def redeem(self, ticket: Any) -> Attachment:
        """The tile a presented ticket opens, once; SessionError("forbidden") for anything else (unknown,
        used, ended, malformed: one answer for all, so a ticket cannot be probed)."""
        t = ticket_of(ticket)
        name, _, secret = (t or "").partition(".")
        att = self._open.get(name)
        if att is None or att.used or not secrets.compare_digest(att.secret.encode(), secret.encode()):
            raise SessionError("forbidden", "no session tile open for this ticket (unknown, used or ended)")
        att.used = True
        return att


__all__ = ["MAX_TICKET_LEN", "Attachment", "Tickets", "ticket_of"]
