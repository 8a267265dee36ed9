"""The addresses a running node actually bound, and the one-line error when it cannot bind one.

Every listener (libp2p `--listen`, `--data-listen`, `--metrics-listen`, the control socket) may be given port 0:
the kernel picks a free port and the node reports what it got, in `mesh-node status` and in
`DATA_DIR/endpoints.json`. The file is written atomically (a temporary file renamed over it) once every
listener is up, and removed when the node stops, so a harness that sees it for its process's pid knows the node
is reachable at those addresses. Never pick a port by binding 0 and closing the socket: an outgoing connection
can take it before the node binds it.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FILE_NAME = "endpoints.json"


class BindError(Exception):
    """A listener could not bind its address; the message is one line that names the option."""

    def __init__(self, option: str, address: str, reason: str) -> None:
        super().__init__(f"{option} {address}: cannot listen: {reason}")
        self.option, self.address, self.reason = option, address, reason


@dataclass(frozen=True)
class Endpoints:
    pid: int
    peer_id: str
    libp2p: list[str] = field(default_factory=list)  # dialable multiaddrs, each ending /p2p/PEER_ID
    data: str = ""  # HOST:PORT the data plane listens on
    data_addr: str = ""  # HOST:PORT peers are told to dial (differs behind --advertise-host)
    metrics: str | None = None  # HOST:PORT of /metrics, None with --metrics-listen off
    control: str = ""  # path of the control socket

    @property
    def data_port(self) -> int:
        return int(self.data.rsplit(":", 1)[1])

    @property
    def metrics_port(self) -> int | None:
        return int(self.metrics.rsplit(":", 1)[1]) if self.metrics else None

    @property
    def libp2p_port(self) -> int:
        return int(self.libp2p[0].split("/tcp/")[1].split("/")[0])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def path(data_dir: Path) -> Path:
    return Path(data_dir) / FILE_NAME


def write(data_dir: Path, ep: Endpoints) -> None:
    """Whole or absent: written to a temporary file and renamed over the old one."""
    p = path(data_dir)
    tmp = p.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(ep.to_dict(), indent=2) + "\n")
    os.replace(tmp, p)


def read(data_dir: Path) -> Endpoints | None:
    """The endpoints a node wrote, or None when there is no (valid) file."""
    try:
        d = json.loads(path(data_dir).read_text())
        return Endpoints(**{k: d[k] for k in Endpoints.__dataclass_fields__ if k in d})
    except (OSError, ValueError, TypeError):
        return None


def remove(data_dir: Path, pid: int | None = None) -> None:
    """Remove the file (only if it is ours, when `pid` is given: a newer node may have replaced it)."""
    if pid is not None:
        ep = read(data_dir)
        if ep is None or ep.pid != pid:
            return
    path(data_dir).unlink(missing_ok=True)


def describe_os_error(e: OSError) -> str:
    if e.errno == errno.EADDRINUSE:
        return "address already in use"
    if e.errno == errno.EADDRNOTAVAIL:
        return "address not available on this host"
    if e.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    return e.strerror or str(e)


@contextmanager
def binding(option: str, address: str) -> Iterator[None]:
    """Turn a bind failure inside the block (an OSError, or one wrapped by a nursery or a transport) into a
    BindError naming `option`."""
    try:
        yield
    except BindError:
        raise
    except BaseException as e:
        os_err = find_exception(e, OSError)
        if os_err is None:
            raise
        raise BindError(option, address, describe_os_error(os_err)) from None


def find_exception(e: BaseException | None, cls: type[BaseException]) -> Any:
    """The first `cls` in `e`, its exception groups and its causes, or None."""
    seen: set[int] = set()
    todo = [e]
    while todo:
        x = todo.pop(0)
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, cls):
            return x
        if isinstance(x, BaseExceptionGroup):
            todo.extend(x.exceptions)
        todo += [x.__cause__, x.__context__]
    return None


def check_tcp_free(host: str, port: int, option: str, address: str) -> None:
    """Refuse an address someone already listens on. py-libp2p sets SO_REUSEPORT on its listener, so a second
    node would share the port silently (the kernel splitting connections between the two): probe it with a
    plain bind first (port 0 needs no probe: the kernel picks an unused port)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are no conflict
        try:
            s.bind((host, port))
        except OSError as e:
            raise BindError(option, address, describe_os_error(e)) from None


def listeners_on_port(port: int) -> int:
    """How many TCP sockets of this host listen on `port` (any address), from /proc/net/tcp{,6}: a check after
    binding that nobody shares the port through SO_REUSEPORT. 0 when /proc is not readable."""
    n = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 3 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                n += 1
    return n
