"""Human forms of `mesh-node status` and `token list` (their --json forms are the raw data)."""

from __future__ import annotations

import time
from typing import Any

from rich.table import Table


def duration(seconds: float) -> str:
    """Uptime-style: 42 s, 5 min 3 s, 2 h 7 min, 3 d 4 h."""
    s = int(round(max(0.0, seconds)))
    d, rem = divmod(s, 86400)
    h, rem = divmod(rem, 3600)
    m, sec = divmod(rem, 60)
    if d:
        return f"{d} d {h} h"
    if h:
        return f"{h} h {m} min"
    if m:
        return f"{m} min {sec} s"
    return f"{sec} s"


def status_table(st: dict[str, Any]):
    t = Table(title=f"node {st.get('peer_id', '?')}", show_header=False, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("value", overflow="fold")
    listening = st.get("listening") or {}
    rows = [
        ("version", st.get("version", "")),
        ("uptime", duration(float(st.get("uptime_s") or 0.0))),
        ("peers in view", str(st.get("peers", 0))),
        ("devices", str(st.get("devices", 0)) + (f" ({st['device_problem']})" if st.get("device_problem") else "")),
        ("libp2p", "\n".join(st.get("addrs") or []) or "-"),
        ("data plane", (listening.get("data") or st.get("data_addr") or "-")
         + (f" (peers dial {st['data_addr']})" if st.get("data_addr") and st.get("data_addr") != listening.get("data") else "")
         + (" plaintext (--data-plane-insecure)" if st.get("insecure") else " TLS")),
        ("metrics", f"http://{listening['metrics']}/metrics" if listening.get("metrics") else "off"),
        ("control socket", listening.get("control") or "-"),
    ]
    for k, v in rows:
        t.add_row(k, v)
    return t


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "never"


def token_table(rows: list[dict[str, Any]]):
    t = Table(title=f"{len(rows)} token(s)")
    for col in ("id", "name", "scopes", "created", "expires", "state"):
        t.add_column(col, overflow="fold")
    now = time.time()
    for r in rows:
        state = "revoked" if r.get("revoked") else ("expired" if r.get("expires") and r["expires"] < now else "live")
        t.add_row(r["id"], r["name"], ",".join(r["scopes"]), _when(r.get("created")), _when(r.get("expires")), state)
    return t
