"""Placement's device table: the view's devices as numpy columns, one row per device (kind, memory, fp64/int64,
rates, slots, load, expiry, rtt, local), refreshed only for the peers whose advert changed (a `TrackedView`'s
change log, or advert identity on a plain view), and the rows meeting a job's requirements (`_match`).
`Placer` (scheduler.core.placement) builds its decisions on it. Pure: no I/O, time passed in.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from operator import attrgetter

import numpy as np

from mesh.advert import Advert, DeviceAdvert
from mesh.membership import MembershipView, PeerState
from scheduler.core.job import Requirements

_KIND_CODE = {"gpu": 0, "cpu": 1, "accelerator": 2, "reference": 3}
_OTHER_KIND = 9
_REFERENCE = _KIND_CODE["reference"]
_ADVERT = attrgetter("advert")
_COLUMNS = (("_kind", np.int8), ("_mem", np.int64), ("_fp64", bool), ("_int64", bool), ("_mulmod", float),
            ("_f32", float), ("_slots", float), ("_free", float), ("_depth", float),
            ("_expires", float),  # last_seen + ttl; inf for this node, -inf for a dead row
            ("_rtt_col", float), ("_local", bool))
_EXPIRES = [name for name, _ in _COLUMNS].index("_expires")
_UNREACHABLE = -1e300  # expiry of a live peer's rows that cannot be offered work yet (-inf is a dead row)


def _static(d: DeviceAdvert) -> tuple:
    return (d.kind, d.global_mem_bytes, d.fp64, d.int64, d.mulmod_mops, d.f32_gflops, d.compute_units, d.name)


class DeviceTable:
    """The device table of a Placer (see the module doc); the Placer sets `view`, `default_rtt_s`, `_rtt` and
    `_cost_cache` (whose per-row costs the table extends and invalidates) before its first `_clear`."""

    view: MembershipView
    default_rtt_s: float
    rebuilds: int
    _rtt: dict[str, float]
    _cost_cache: OrderedDict[tuple, list]
    # the device table: one row per device of the view, columns set by _clear/_flush (see _COLUMNS)
    _kind: np.ndarray
    _mem: np.ndarray
    _fp64: np.ndarray
    _int64: np.ndarray
    _mulmod: np.ndarray
    _f32: np.ndarray
    _slots: np.ndarray
    _free: np.ndarray
    _depth: np.ndarray
    _expires: np.ndarray
    _rtt_col: np.ndarray
    _local: np.ndarray
    _ist_for: float
    _rbuf: np.ndarray
    _rpos: int

    def _clear(self) -> None:
        self._peers: dict[str, tuple[PeerState, Advert, range]] = {}  # peer -> (state, advert seen, rows)
        self._row_peer: list[str] = []  # "" for a dead row (peer gone or devices changed)
        self._dev_id: list[str] = []
        self._devs: list[DeviceAdvert | None] = []
        self._dead = 0
        self._version = -1  # TrackedView version this table reflects
        self._scan_adverts: list[Advert] = []
        self._pending: list[list] = []
        for name, dtype in _COLUMNS:
            setattr(self, name, np.zeros(0, dtype))
        self._ist_for = math.nan
        self._base_dirty = True
        self._wait = self._base_col = np.zeros(0)
        self._static_version = getattr(self, "_static_version", 0) + 1
        self._rbuf = np.zeros(0)
        self._rpos = 0
        self._cost_cache.clear()

    def _rows_of(self, peer_id: str) -> range:
        e = self._peers.get(peer_id)
        return e[2] if e is not None else range(0)

    def _refresh(self) -> None:
        changes_since = getattr(self.view, "changes_since", None)
        if changes_since is None:
            self._scan()
        else:
            version, pids = changes_since(self._version)
            if version == self._version:
                return
            if pids is None:
                self._full_sync()
            else:
                get = self.view.get
                for pid in pids:
                    self._sync_peer(pid, get(pid))
                self._flush()
            self._version = version
        if self._dead > max(64, len(self._row_peer) - self._dead):
            version = self._version
            self._clear()
            self._full_sync()
            self._version = version

    def _scan(self) -> None:
        """A plain MembershipView: find changed peers by advert identity, O(peers) per decision."""
        states = self.view.peers()
        adverts = list(map(_ADVERT, states))
        if adverts == self._scan_adverts:
            return
        self._sync_states(states)
        self._scan_adverts = adverts

    def _full_sync(self) -> None:
        self.rebuilds += 1
        self._sync_states(self.view.peers())

    def _sync_states(self, states: list[PeerState]) -> None:
        seen = set()
        for st in states:
            pid = st.advert.peer_id
            seen.add(pid)
            e = self._peers.get(pid)
            if e is None or e[0] is not st or e[1] is not st.advert:
                self._sync_peer(pid, st)
        for pid in [p for p in self._peers if p not in seen]:
            self._sync_peer(pid, None)
        self._flush()

    def _sync_peer(self, pid: str, st: PeerState | None) -> None:
        e = self._peers.get(pid)
        if st is None:
            if e is not None:
                self._kill(e[2])
                del self._peers[pid]
            return
        devs = st.devices()
        if pid == self.view.self_peer_id:
            expires = math.inf
        elif not st.advert.data_addr:  # no data-plane address (yet): an offer could not reach it
            expires = _UNREACHABLE
        else:
            expires = st.expires_at
        if e is not None:
            rows = e[2]
            if len(devs) == len(rows) and all(d.id == self._dev_id[r] for d, r in zip(devs, rows, strict=True)):
                for d, r in zip(devs, rows, strict=True):
                    if r >= self._kind.size:  # still pending (joined in this same refresh)
                        self._pending[r - self._kind.size] = self._row_values(pid, d, expires)
                    else:
                        self._update_row(r, d, expires)
                    self._devs[r] = d
                self._peers[pid] = (st, st.advert, rows)
                return
            self._kill(rows)
        start = len(self._row_peer)
        for d in devs:
            self._row_peer.append(pid)
            self._dev_id.append(d.id)
            self._devs.append(d)
            self._pending.append(self._row_values(pid, d, expires))
        self._peers[pid] = (st, st.advert, range(start, len(self._row_peer)))

    def _row_values(self, pid: str, d: DeviceAdvert, expires: float) -> list:
        local = pid == self.view.self_peer_id
        return [_KIND_CODE.get(d.kind, _OTHER_KIND), d.global_mem_bytes, d.fp64, d.int64, d.mulmod_mops,
                d.f32_gflops, max(1, d.slots), d.free_slots, d.queue_depth, expires,
                0.0 if local else self._rtt.get(pid, self.default_rtt_s), local]

    def _flush(self) -> None:
        if not self._pending:
            return
        cols = list(zip(*self._pending, strict=True))
        for (name, dtype), values in zip(_COLUMNS, cols, strict=True):
            setattr(self, name, np.concatenate([getattr(self, name), np.array(values, dtype)]))
        for entry in self._cost_cache.values():
            entry[0] = np.concatenate([entry[0], np.full(len(self._pending), np.nan)])
        self._pending = []
        self._base_dirty = True
        self._static_version += 1

    def _kill(self, rows: range) -> None:
        n = self._expires.size
        for r in rows:
            self._row_peer[r] = ""
            self._devs[r] = None
            if r < n:
                self._expires[r] = -math.inf  # never alive again
            else:
                self._pending[r - n][_EXPIRES] = -math.inf
        self._dead += len(rows)

    def _update_row(self, r: int, d: DeviceAdvert, expires: float) -> None:
        old = self._devs[r]
        if old is None or _static(d) != _static(old):
            self._kind[r] = _KIND_CODE.get(d.kind, _OTHER_KIND)
            self._mem[r] = d.global_mem_bytes
            self._fp64[r] = d.fp64
            self._int64[r] = d.int64
            self._mulmod[r] = d.mulmod_mops
            self._f32[r] = d.f32_gflops
            self._slots[r] = max(1, d.slots)
            self._static_version += 1
            for entry in self._cost_cache.values():
                entry[0][r] = np.nan
        self._free[r] = d.free_slots
        self._depth[r] = d.queue_depth
        self._expires[r] = expires
        self._base_dirty = True

    def _match(self, req: Requirements) -> np.ndarray | None:
        """Rows meeting the requirements (None: no constraint at all)."""
        conds = []
        if req.device_kind is not None:
            conds.append(self._kind == _KIND_CODE.get(req.device_kind, _OTHER_KIND))
        if req.opencl:
            conds.append(self._kind != _REFERENCE)
        if req.min_memory_bytes:
            conds.append(self._mem >= req.min_memory_bytes)
        if req.fp64:
            conds.append(self._fp64)
        if req.int64:
            conds.append(self._int64)
        if req.min_mulmod_mops:
            conds.append(self._mulmod >= req.min_mulmod_mops)
        if req.min_f32_gflops:
            conds.append(self._f32 >= req.min_f32_gflops)
        if self._dead:
            conds.append(self._expires > -math.inf)
        if not conds:
            return None
        mask = conds[0].copy()
        for c in conds[1:]:
            mask &= c
        return mask
