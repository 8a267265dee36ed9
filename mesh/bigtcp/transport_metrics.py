"""Prometheus metrics of the bigtcp data plane (transport and rpc layer).

Module-level objects on the default registry (several nodes can share one test process, so nothing is
registered per instance). Per-peer series are removed when the last connection to that peer closes, so
clients with ephemeral keys do not grow the label set without bound.
"""

from __future__ import annotations

import threading
from typing import Protocol

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# Per-peer byte/frame counters, flow-control wait time, and the open connection/stream gauges are read
# from live connections at scrape time (see _TrafficCollector): nothing on the per-frame or per-stream
# hot path touches a prometheus object.
CONNECTIONS = Counter("gpumesh_transport_connections_total", "Data-plane connections established", ["direction"])
STREAM_RESETS = Counter("gpumesh_transport_stream_resets_total", "Streams reset, by who reset them", ["by"])
HANDSHAKE_FAILURES = Counter(
    "gpumesh_transport_handshake_failures_total",
    "Connections refused or failed before they were usable",
    ["reason"],  # peer_id_mismatch, missing_identity, bad_certificate, tls, timeout, refused, hello, io
)
PROTOCOL_ERRORS = Counter("gpumesh_transport_protocol_errors_total", "Connections killed by a peer protocol error", ["kind"])
CONNECTIONS_LOST = Counter("gpumesh_transport_connections_lost_total", "Connections that ended without a clean close", ["reason"])
STALLED = Counter("gpumesh_transport_stalled_total", "Sends that waited past the stall timeout: a stream never "
                  "granted credit (reset) or a connection whose peer read nothing (closed)", ["what"])
RTT = Gauge("gpumesh_transport_rtt_seconds", "Last keepalive round-trip time to the peer", ["peer"])


RPC_REQUESTS = Counter("gpumesh_dataplane_rpc_requests_total", "RPC requests served, by method and result code", ["method", "code"])
RPC_SECONDS = Histogram(
    "gpumesh_dataplane_rpc_duration_seconds",
    "Time to serve an RPC request (handler included)",
    ["method"],
    buckets=(0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 120.0),
)



class TrafficSource(Protocol):
    """What a connection exposes for the per-peer counters (plain ints/floats, read from the scrape thread)."""

    peer_id: str
    outbound: bool

    def traffic(self) -> tuple[int, int, int, int, float]:
        """(bytes sent, frames sent, bytes received, frames received, seconds blocked on credit)"""
        ...

    def stream_counts(self) -> tuple[int, int]:
        """(open streams opened by us, open streams opened by the peer)"""
        ...


_NAMES = (
    ("gpumesh_transport_sent_bytes", "Bytes written to data-plane connections (frame headers included, TLS overhead not)"),
    ("gpumesh_transport_sent_frames", "Frames written to data-plane connections"),
    ("gpumesh_transport_received_bytes", "Bytes read from data-plane connections (frame headers included)"),
    ("gpumesh_transport_received_frames", "Frames read from data-plane connections"),
    ("gpumesh_transport_flow_control_blocked_seconds", "Time senders waited for the peer's flow-control credit"),
)


class _TrafficCollector(Collector):
    """Per-peer traffic counters: live connections plus what closed connections to the same peer moved.
    A peer's series disappear when its last connection closes (bounded label set)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, TrafficSource] = {}
        self._retired: dict[str, list[float]] = {}

    def add(self, source: TrafficSource) -> None:
        with self._lock:
            self._live[id(source)] = source

    def remove(self, source: TrafficSource) -> None:
        with self._lock:
            if self._live.pop(id(source), None) is None:
                return
            peer = source.peer_id
            if any(s.peer_id == peer for s in self._live.values()):
                acc = self._retired.setdefault(peer, [0.0] * 5)
                for i, v in enumerate(source.traffic()):
                    acc[i] += v
            else:
                self._retired.pop(peer, None)

    def totals(self) -> dict[str, list[float]]:
        with self._lock:
            out = {peer: list(acc) for peer, acc in self._retired.items()}
            for s in self._live.values():
                acc = out.setdefault(s.peer_id, [0.0] * 5)
                for i, v in enumerate(s.traffic()):
                    acc[i] += v
        return out

    def gauges(self) -> tuple[dict[str, int], dict[str, int]]:
        """({direction: open connections}, {direction: open streams})"""
        conns = {"in": 0, "out": 0}
        streams = {"in": 0, "out": 0}
        with self._lock:
            for s in self._live.values():
                conns["out" if s.outbound else "in"] += 1
                out, inc = s.stream_counts()
                streams["out"] += out
                streams["in"] += inc
        return conns, streams

    def collect(self):
        totals = self.totals()
        for i, (name, doc) in enumerate(_NAMES):
            fam = CounterMetricFamily(name, doc, labels=["peer"])
            for peer, acc in totals.items():
                fam.add_metric([peer], acc[i])
            yield fam
        conns, streams = self.gauges()
        g = GaugeMetricFamily("gpumesh_transport_connections_open", "Open data-plane connections", labels=["direction"])
        for d, v in conns.items():
            g.add_metric([d], v)
        yield g
        g = GaugeMetricFamily("gpumesh_transport_streams_open", "Open data-plane streams, by who opened them", labels=["direction"])
        for d, v in streams.items():
            g.add_metric([d], v)
        yield g

    def describe(self):
        return [CounterMetricFamily(name, doc, labels=["peer"]) for name, doc in _NAMES] + [
            GaugeMetricFamily("gpumesh_transport_connections_open", "", labels=["direction"]),
            GaugeMetricFamily("gpumesh_transport_streams_open", "", labels=["direction"]),
        ]


TRAFFIC = _TrafficCollector()
REGISTRY.register(TRAFFIC)


def forget_peer(peer: str) -> None:
    """Drop a disconnected peer's gauge series."""
    try:
        RTT.remove(peer)
    except KeyError:
        pass
