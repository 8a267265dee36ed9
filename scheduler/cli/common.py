"""What every `mesh-node` command shares: its exit statuses and the one mapping from errors to them, printing a
result (JSON or a rendering), and one client call."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from rich.console import Console

from mesh.admission import AdmissionError
from mesh.bigtcp.framing import TransportError
from mesh.bigtcp.rpc import RpcError
from mesh.bigtcp.tls import HandshakeError
from mesh.control import ControlError
from mesh.identity import IdentityError
from scheduler.client.client import Client, JobFailed, address_from_args
from scheduler.client.compute_sdk import BuildFailed, ComputeFailed, ComputeRefused
from scheduler.client.known_nodes import IdentityMismatch
from scheduler.client.realtime import SessionLost
from scheduler.node.config import ConfigError
from scheduler.node.endpoints import BindError
from scheduler.node.tokens import TokenError

# The exit statuses of every command (docs/cli.md has the table; tests/test_cli*.py check it).
EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_REJECTED, EXIT_CANCELLED, EXIT_NOT_FOUND = range(7)
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141  # as a shell reports SIGINT / SIGPIPE


class UsageError(ValueError):
    """A bad argument or input file, found by a command before it does anything: exit 2."""


class CommandFailed(Exception):
    """The command's operation failed (the message says why): exit 1."""


def _os_error(e: BaseException) -> str:
    assert isinstance(e, OSError)
    return f"{e.strerror or e}: {e.filename or ''}".rstrip(": ")


def _rpc_error(e: BaseException) -> str:
    assert isinstance(e, RpcError)
    return f"{e.message or e.code} ({e.code})"


def _rpc_code(e: BaseException) -> int:
    assert isinstance(e, RpcError)
    return {"unavailable": EXIT_UNAVAILABLE, "not_found": EXIT_NOT_FOUND}.get(e.code, EXIT_USAGE)


def _build_failed(e: BaseException) -> str:
    assert isinstance(e, BuildFailed)
    return f"the program failed to build on {e.worker or 'the worker'}:\n{e.log}"


def _refused(e: BaseException) -> str:
    assert isinstance(e, ComputeRefused)
    return f"refused ({e.code}): {e.reason}"


def _compute_failed(e: BaseException) -> str:
    assert isinstance(e, ComputeFailed)
    return e.reason


# (error class, exit status or a function of the error, message or a function of it); the first match wins, so
# a subclass comes before its base. An error not listed is a bug and keeps its traceback.
_Code = int | Callable[[BaseException], int]
_Message = Callable[[BaseException], str]
ERROR_EXITS: tuple[tuple[type[BaseException], _Code, _Message], ...] = (
    (UsageError, EXIT_USAGE, str),
    (CommandFailed, EXIT_FAIL, str),
    (SessionLost, EXIT_FAIL, lambda e: f"the session ended: {e}"),
    (ConfigError, EXIT_USAGE, str),
    (IdentityError, EXIT_USAGE, str),
    (TokenError, EXIT_USAGE, str),
    (AdmissionError, EXIT_USAGE, str),
    (BindError, EXIT_USAGE, str),
    (ControlError, EXIT_UNAVAILABLE, str),
    (RpcError, _rpc_code, _rpc_error),
    (IdentityMismatch, EXIT_FAIL, str),  # before HandshakeError, its base
    (HandshakeError, EXIT_UNAVAILABLE, lambda e: f"connection refused: {e}"),
    (TransportError, EXIT_UNAVAILABLE, str),
    (ComputeRefused, EXIT_REJECTED, _refused),  # before ComputeFailed and JobFailed, its bases
    (BuildFailed, EXIT_FAIL, _build_failed),
    (ComputeFailed, EXIT_FAIL, _compute_failed),
    (JobFailed, EXIT_FAIL, str),
    (OSError, EXIT_FAIL, _os_error),  # after BrokenPipeError, handled in exit_status
)


def _leaves(e: BaseException) -> list[BaseException]:
    if isinstance(e, BaseExceptionGroup):
        return [x for sub in e.exceptions for x in _leaves(sub)]
    return [e]


def exit_status(e: BaseException, prog: str = "mesh-node") -> int | None:
    """The exit status for an error that ended a command, after printing its one line on stderr (`prog: ...`);
    None (nothing printed) for an error that is not in ERROR_EXITS: a bug, whose traceback should be seen."""

    for leaf in _leaves(e):
        if isinstance(leaf, KeyboardInterrupt):
            return EXIT_INTERRUPTED
        if isinstance(leaf, BrokenPipeError):  # `mesh-node jobs | head`: the reader has what it wanted
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # nothing more to flush at exit
            return EXIT_BROKEN_PIPE
        for cls, code, message in ERROR_EXITS:
            if isinstance(leaf, cls):
                print(f"{prog}: {message(leaf)}", file=sys.stderr)
                return code if isinstance(code, int) else code(leaf)
    return None


def show(obj: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    """Print `obj` as JSON (--json) or through `render`."""
    if as_json:
        print(json.dumps(obj, indent=2, default=str))
    else:
        render(obj)


def run_client(args: argparse.Namespace, fn: Callable[[Client], Awaitable[Any]]) -> Any:
    """Connect to the node the command line names (or the local one) and run `fn(client)`."""
    addr, tok, pid, insecure = address_from_args(args)

    async def main():
        async with Client.connect(addr, token=tok, peer_id=pid, insecure=insecure) as c:
            return await fn(c)

    return trio.run(main)


def console():
    """A rich console at least 140 columns wide, so ids are not cut when output goes to a pipe or a file."""

    return Console(width=max(140, shutil.get_terminal_size((140, 24)).columns))
