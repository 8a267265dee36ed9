"""Drive a real headless Chromium (Debian's `chromium` package) over the DevTools protocol: for the viewer's
tests, its benchmark and screenshots. No WebDriver: the protocol's WebSocket is spoken with trio-websocket.

    with launch(url) as browser:                       # a headless Chromium showing url
        async with browser.page() as page:             # the DevTools session of its tab
            value = await page.evaluate("1 + 1")
            await page.screenshot(path)

The browser runs in its own process group with a throw-away profile; leaving the `with` block kills the
group (whatever happened) and removes the profile.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import trio_websocket

PACKAGE = "chromium"  # the Debian package (apt-get install chromium)
NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find() -> str | None:
    """The Chromium executable on PATH, or None."""
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class PageError(RuntimeError):
    """A script threw in the page, or the protocol answered with an error."""


class Page:
    """One DevTools session on a tab: evaluate scripts, take screenshots."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        mid = next(self._ids)
        await self._ws.send_message(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(await self._ws.get_message())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise PageError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        """The value of a script (awaited if it is a promise), as JSON-able data."""
        r = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise PageError(f"{expression[:80]!r} threw: {d.get('exception', {}).get('description') or d.get('text')}")
        return r.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float, what: str, interval: float = 0.1) -> Any:
        """Poll a script until it is truthy; TimeoutError naming `what` (with the last value) otherwise."""
        last = None
        with trio.move_on_after(timeout):
            while True:
                last = await self.evaluate(expression)
                if last:
                    return last
                await trio.sleep(interval)
        raise TimeoutError(f"timed out after {timeout:g} s waiting for {what} (last value {last!r})")

    async def screenshot(self, path: str | Path) -> None:
        r = await self.call("Page.captureScreenshot", format="png")
        Path(path).write_bytes(base64.b64decode(r["data"]))

    async def mouse(self, kind: str, x: float, y: float, buttons: int = 1) -> None:
        """A mouse event at viewport coordinates: kind is mousePressed, mouseMoved or mouseReleased."""
        await self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", buttons=buttons,
                        clickCount=1)


@dataclass
class Browser:
    process: subprocess.Popen
    port: int
    profile: str

    def targets(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=5) as r:
            return json.loads(r.read())

    @asynccontextmanager
    async def page(self) -> AsyncIterator[Page]:
        """The DevTools session of the browser's first tab."""
        pages = [t for t in await trio.to_thread.run_sync(self.targets) if t.get("type") == "page"]
        if not pages:
            raise PageError("the browser has no page open")
        async with trio_websocket.open_websocket_url(pages[0]["webSocketDebuggerUrl"],
                                                     max_message_size=64 << 20) as ws:
            yield Page(ws)


@contextmanager
def launch(url: str, *, width: int = 1024, height: int = 768, timeout: float = 60) -> Iterator[Browser]:
    """A headless Chromium showing `url` (RuntimeError naming the package when there is none)."""
    exe = find()
    if exe is None:
        raise RuntimeError(f"no Chromium found (install the Debian package: apt-get install {PACKAGE})")
    profile = tempfile.mkdtemp(prefix="gm-chromium-")
    args = [exe, "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run",
            "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
            "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
            "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
            f"--window-size={width},{height}", "--remote-debugging-port=0", f"--user-data-dir={profile}", url]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {proc.returncode} before it listened")
            if time.monotonic() > deadline:
                raise TimeoutError(f"chromium did not open its DevTools port in {timeout:g} s")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        yield Browser(proc, port, profile)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the browser and its helpers: the group this call started
        except ProcessLookupError:
            pass
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


__all__ = ["PACKAGE", "Browser", "Page", "PageError", "find", "launch"]
