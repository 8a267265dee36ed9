"""What crosses a render session's streams, on both halves (scheduler/node/session_io.py): the in-process `Pipe`
to the gateway's own worker (no network hop), the bounded scene upload, the checks a worker's tile messages
pass before the gateway hands them to its client, and the session's errors out of nurseries as themselves."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import trio

from mesh.bigtcp.rpc import RpcError
from scheduler.core.render_session import SessionError
from worker.render.camera import Tile
from worker.render.frame_codec import BYTES_PER_PIXEL
from worker.render.kind import MAX_SCENE_INPUT


class Duplex(Protocol):
    async def send(self, item: dict[str, Any]) -> None: ...

    def send_nowait(self, item: dict[str, Any]) -> bool: ...  # False, nothing sent: it would wait (use send)

    async def receive(self) -> Any: ...


class Pipe:
    """One end of an in-process duplex (the gateway's own worker: no network hop)."""

    def __init__(self, tx: trio.MemorySendChannel[Any], rx: trio.MemoryReceiveChannel[Any]) -> None:
        self._tx, self._rx = tx, rx

    @staticmethod
    def pair(size: int = 16) -> tuple[Pipe, Pipe]:
        a_tx, a_rx = trio.open_memory_channel[Any](size)
        b_tx, b_rx = trio.open_memory_channel[Any](size)
        return Pipe(a_tx, b_rx), Pipe(b_tx, a_rx)

    async def send(self, item: dict[str, Any]) -> None:
        try:
            await self._tx.send(item)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise SessionError("unavailable", "the other end of the session went away") from None

    def send_nowait(self, item: dict[str, Any]) -> bool:
        try:
            self._tx.send_nowait(item)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False  # `send` waits, or says why it cannot
        return True

    async def receive(self) -> Any:
        try:
            return await self._rx.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return None

    async def done_sending(self) -> None:
        await self._tx.aclose()

    def close(self) -> None:
        self._tx.close()
        self._rx.close()


async def receive_scene(io: Duplex, limit: int = MAX_SCENE_INPUT) -> bytes:
    """Scene bytes uploaded as data frames up to `{"scene": "end"}` (bounded)."""
    parts: list[bytes] = []
    size = 0
    while True:
        item = await io.receive()
        if item is None:
            raise SessionError("bad_request", "the session ended before its scene")
        if isinstance(item, bytes | bytearray):
            size += len(item)
            if size > limit:
                raise SessionError("bad_request", f"the scene is larger than {limit} bytes")
            parts.append(bytes(item))
        elif isinstance(item, dict) and item.get("scene") == "end":
            return b"".join(parts)
        else:
            raise SessionError("bad_request", "expected the scene's bytes, then {scene: end}")


def _first_error(group: BaseExceptionGroup) -> BaseException | None:
    for e in group.exceptions:
        if isinstance(e, BaseExceptionGroup):
            inner = _first_error(e)
            if inner is not None:
                return inner
        elif isinstance(e, SessionError | RpcError):
            return e
    return None


@contextmanager
def flat_errors() -> Iterator[None]:
    """A session's SessionError or RpcError out of a nursery as itself (not inside an exception group)."""
    try:
        yield
    except BaseExceptionGroup as group:
        first = _first_error(group)
        if first is None:
            raise
        raise first from None


def rpc_error(e: SessionError) -> RpcError:
    return RpcError(e.code, e.message)


TILE_ITEM_KEYS = {"f", "tile", "p", "render_ms", "est_ms", "wait_ms", "encode_ms", "drop"}


def tile_payload_bound(tile: Tile) -> int:
    """The most bytes an honest tile payload can take (LZ4's worst case on the raw tile)."""
    raw = tile.w * tile.h * BYTES_PER_PIXEL
    return raw + raw // 255 + 64


def check_tile_item(item: dict[str, Any], max_payload: int) -> str | None:
    """Why a worker's tile message is not what the protocol says (None: it is)."""
    extra = set(item) - TILE_ITEM_KEYS
    if extra:
        return f"unexpected fields {sorted(extra)[:4]}"
    f = item.get("f")
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        return "a tile message without its frame index"
    if "drop" in item:
        return None if isinstance(item["drop"], str) and len(item["drop"]) <= 1024 else "a malformed drop"
    p = item.get("p")
    if not isinstance(p, bytes) or len(p) > max_payload or not isinstance(item.get("tile"), dict):
        return f"a tile payload that is not 0..{max_payload} bytes with its header"
    if any(not isinstance(item.get(k, 0.0), int | float) for k in ("render_ms", "est_ms", "wait_ms", "encode_ms")):
        return "non-numeric timings"
    return None


__all__ = ["TILE_ITEM_KEYS", "Duplex", "Pipe", "check_tile_item", "flat_errors", "receive_scene", "rpc_error",
           "tile_payload_bound"]
