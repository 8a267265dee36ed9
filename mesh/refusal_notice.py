"""A refused libp2p peer is told why, so both sides log it at once.

A node that refuses a peer after its handshake (not on the allow list; the mesh key was fine, so the libp2p
connection came up) opens one stream of REFUSED_PROTOCOL to it, writes the reason (a short UTF-8 line), waits
briefly for the peer to read it, then disconnects. The refused side logs the reason at warning. Before this,
the refused dialer only saw its connection drop, and retried in silence.

The reason is peer input: at most MAX_REASON bytes are read, non-printable characters are replaced, and each
peer's notice is logged at most once a minute (`RefusalLog`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import trio
from libp2p.custom_types import TProtocol

log = logging.getLogger("gpumesh.gossip")

REFUSED_PROTOCOL = TProtocol("/gpumesh/refused/1.0.0")
MAX_REASON = 200
INTERVAL_S = 60.0


def clean_reason(data: bytes) -> str:
    text = data[:MAX_REASON].decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in text).strip() or "no reason given"


async def tell_refused(host: Any, peer_id: Any, reason: str) -> None:
    """Tell `peer_id` why it is refused (best effort: within 1 s, or not at all)."""
    with trio.move_on_after(1.0):
        try:
            stream = await host.new_stream(peer_id, [REFUSED_PROTOCOL])
            await stream.write(reason.encode()[:MAX_REASON])
            await stream.close()  # our side: done writing
            with trio.move_on_after(0.5):
                try:
                    await stream.read(1)  # until the peer has read it and closed (or reset)
                except Exception:
                    pass  # its close arrives as StreamEOF / StreamReset: what we waited for
        except Exception as e:  # the peer went away, or does not speak the protocol (an older node)
            log.debug("could not tell %s why it is refused: %r", peer_id, e)


class RefusalLog:
    """The refused side: REFUSED_PROTOCOL's stream handler. `describe(peer_id)` names the peer for the log (e.g.
    "bootstrap peer X" when it is one this node joins through)."""

    def __init__(self, describe: Callable[[str], str]) -> None:
        self.describe = describe
        self.heard = 0
        self._last: dict[str, float] = {}

    async def handle(self, stream: Any) -> None:
        try:
            peer = str(stream.muxed_conn.peer_id)
            data = b""
            with trio.move_on_after(2.0):
                while len(data) < MAX_REASON:
                    try:
                        chunk = await stream.read(MAX_REASON - len(data))
                    except Exception:  # py-libp2p's end of stream (StreamEOF) or a reset: the notice is whole
                        break
                    if not chunk:
                        break
                    data += chunk
            self.heard += 1
            now = time.monotonic()
            if now - self._last.get(peer, -1e9) >= INTERVAL_S:
                if len(self._last) > 1024:
                    self._last.clear()
                self._last[peer] = now
                log.warning("%s refused this node: %s", self.describe(peer), clean_reason(data))
        except Exception as e:
            log.debug("refusal notice: %r", e)
        finally:
            try:
                await stream.close()
            except Exception:
                pass
