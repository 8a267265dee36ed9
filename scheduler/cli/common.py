"""What several `mesh-node` commands share: printing a result (JSON or a rendering) and one client call."""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from rich.console import Console

from scheduler.client.client import Client, address_from_args


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
