"""Job outputs on the coordinator: streamed from the worker to disk (never gathered in memory), bounded by
what the job may produce, checked against the size and sha256 the result declares.

An output waiting for the core's verdict is a `Path` (a `.part` file in results/, from a remote worker) or
`bytes` (the node's own worker handed it over in-process); `settle` moves it to where `job.result` reads it,
`discard` drops it. Partial files left by a kill are swept at start-up (`files.sweep_uploads`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import trio

from mesh.bigtcp.rpc import RpcError
from scheduler.node.files import PARTIAL_SUFFIX

Pending = Path | bytes
SMALL_OUTPUT = 64 * 1024  # outputs up to this are kept in the journal (coordinator_io), not as files


async def receive(call: Any, path: Path, declared_size: int, declared_sha256: str, limit: int) -> Path | None:
    """Stream the output bytes uploaded on `call` into `path` (a .part name). Refuses (RpcError bad_output)
    an output over `limit` or not matching the declaration; the partial file is deleted then. None when the
    result declares no output."""
    if declared_size > limit:
        raise RpcError("bad_output", f"output of {declared_size} bytes exceeds the {limit}-byte limit of this job")
    if declared_size <= 0:
        async for item in call:
            if isinstance(item, bytes | bytearray) and item:
                raise RpcError("bad_output", "output longer than the result declares")
        return None
    tmp = path.with_name(path.name + PARTIAL_SUFFIX)
    h, n = hashlib.sha256(), 0
    try:
        async with await trio.open_file(tmp, "wb") as f:
            async for item in call:
                if not isinstance(item, bytes | bytearray):
                    continue
                n += len(item)
                if n > declared_size:
                    raise RpcError("bad_output", "output longer than the result declares")
                h.update(item)
                await f.write(item)
        if n != declared_size or h.hexdigest() != declared_sha256:
            raise RpcError("bad_output", "output does not match the result's size and sha256")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def read(p: Pending | None) -> bytes:
    """The output's bytes (for verifiers, which check bounded outputs such as tiles and proofs)."""
    if p is None:
        return b""
    return p.read_bytes() if isinstance(p, Path) else p


def settle(p: Pending, dest: Path) -> None:
    """Put the output where results are served from: whole or absent (a kill leaves only a .part file)."""
    if isinstance(p, Path):
        os.replace(p, dest)
        return
    tmp = dest.with_name(dest.name + PARTIAL_SUFFIX)
    tmp.write_bytes(p)
    os.replace(tmp, dest)


def discard(p: Pending | None) -> None:
    if isinstance(p, Path):
        p.unlink(missing_ok=True)


async def send_file(call: Any, path: Path, chunk: int) -> None:
    """Stream a file's bytes on `call`, one chunk in memory per bulk slot of the connection (a caller that
    opens many streams and reads none costs a slot's chunk, not a chunk per stream)."""
    slot = call.stream.connection.bulk_slot()
    async with await trio.open_file(path, "rb") as f:
        while True:
            async with slot:
                data = await f.read(chunk)
                if not data:
                    return
                await call.send_bytes(data)
