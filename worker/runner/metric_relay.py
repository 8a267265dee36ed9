"""Metrics a runner process counts, counted by its node.

A runner is a process of its own: the prometheus metrics the job code increments there (compute jobs by
outcome, kernel seconds, bytes to and from the device, program builds, the render scene cache, proofs...) would
never reach the node's `/metrics`. So in a runner, `record()` swaps each metric object of the RELAYED modules
for a recorder with the same methods (`labels`, `inc`, `observe`; a gauge's `set`, `inc` and `dec` are dropped:
a runner's gauges describe state that dies with it); every reply to the node carries what was recorded since
the last one (`drain()`), and the node applies it to its own metric objects (`apply`).

The node checks a batch against its own metrics before applying any of it: a known module and metric, the
metric's number of labels, short label values, finite amounts, non-negative counter increments, at most
MAX_ENTRIES entries, and at most MAX_SERIES distinct series from all runners together (a runner cannot grow the
node's metrics without bound). A batch with anything else (a runner runs tenants' kernels; its memory is not
trusted) is dropped whole and counted (`gpumesh_runner_metrics_dropped_total`).
"""

from __future__ import annotations

import importlib
import math
import sys
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

RELAYED = ("worker.compute.metrics", "worker.render.metrics", "worker.zk.kind")
MAX_ENTRIES = 512  # per reply; increments of one series are summed, so only observations can come near it
MAX_LABEL = 64
MAX_SERIES = 256  # distinct (metric, label values) the node takes from its runners

DROPPED = Counter("gpumesh_runner_metrics_dropped_total",
                  "Batches of metrics a runner reported that did not match this node's metrics (dropped whole)")


class _Series:
    """One labelled series (or an unlabelled metric) as the job code in a runner sees it."""

    def __init__(self, rec: Recorder, key: tuple[int, str], labels: tuple[str, ...], op: str) -> None:
        self._rec, self._key, self._labels, self._op = rec, key, labels, op  # op: "i" counter, "o" histogram, "" gauge

    def inc(self, amount: float = 1.0) -> None:
        if self._op == "i":
            self._rec.add(self._key, self._labels, "i", amount)

    def observe(self, value: float) -> None:
        if self._op == "o":
            self._rec.add(self._key, self._labels, "o", value)

    def set(self, value: float) -> None:  # a runner's gauge: not relayed
        pass

    def dec(self, amount: float = 1.0) -> None:
        pass

    def labels(self, *values: Any, **kw: Any) -> _Series:
        return _Series(self._rec, self._key, tuple(str(v) for v in (*values, *kw.values())), self._op)


class Recorder:
    """What the job code of one runner counted since the last `drain()`."""

    def __init__(self) -> None:
        self._sums: dict[tuple[tuple[int, str], tuple[str, ...]], float] = {}
        self._observed: list[list[Any]] = []

    def add(self, key: tuple[int, str], labels: tuple[str, ...], op: str, value: float) -> None:
        if op == "i":
            k = (key, labels)
            self._sums[k] = self._sums.get(k, 0.0) + float(value)
        elif len(self._observed) < MAX_ENTRIES // 2:  # a runaway loop of observations costs nothing unbounded
            self._observed.append([key[0], key[1], list(labels), "o", float(value)])

    def drain(self) -> list[list[Any]]:
        out = [[m, attr, list(labels), "i", v] for ((m, attr), labels), v in self._sums.items()]
        out += self._observed
        self._sums, self._observed = {}, []
        return out


RECORDER: Recorder | None = None
_swapped: set[str] = set()


def record() -> Recorder:
    """In a runner: swap the metrics of the RELAYED modules imported so far for recorders (call it again after
    importing more: a runner imports a task's modules on its first call); the recorder."""
    global RECORDER
    if RECORDER is None:
        RECORDER = Recorder()
    for i, name in enumerate(RELAYED):
        mod = sys.modules.get(name)
        if mod is None or name in _swapped:
            continue
        _swapped.add(name)
        for attr, obj in list(vars(mod).items()):
            if isinstance(obj, Counter | Gauge | Histogram):
                op = "i" if isinstance(obj, Counter) else "o" if isinstance(obj, Histogram) else ""
                setattr(mod, attr, _Series(RECORDER, (i, attr), (), op))
    return RECORDER


def drain() -> list[list[Any]]:
    """In a runner: what to send with the next reply ([] when `record` was not called)."""
    return RECORDER.drain() if RECORDER is not None else []


_series: dict[tuple[Any, ...], tuple[Any, str]] = {}  # (m, attr, *labels) -> (the node's series, its op)


def _series_of(m: int, attr: str, labels: tuple[str, ...]) -> tuple[Any, str] | None:
    """The node's series (a metric or its labelled child) and its op ("i", "o") for what a runner named; None
    for anything else, and for a new series once MAX_SERIES are known (runners cannot grow the node's metrics
    without bound: honest job code counts a few dozen series)."""
    key = (m, attr, *labels)
    got = _series.get(key)
    if got is not None or len(_series) >= MAX_SERIES or not 0 <= m < len(RELAYED) or not attr.isidentifier():
        return got
    metric = getattr(importlib.import_module(RELAYED[m]), attr, None)
    if isinstance(metric, Gauge) or not isinstance(metric, Counter | Histogram) or len(labels) != len(metric._labelnames):
        return None
    got = _series[key] = (metric.labels(*labels) if labels else metric, "o" if isinstance(metric, Histogram) else "i")
    return got


def _target(entry: Any) -> tuple[Any, str, float] | None:
    if type(entry) is not list or len(entry) != 5:
        return None
    m, attr, labels, op, value = entry
    if (type(value) is not float and type(value) is not int) or not math.isfinite(value):
        return None
    got = None
    if type(m) is int and type(labels) is list:
        try:  # a series named before (only exact ints and strs are keys: nothing else compares equal to them)
            got = _series.get((m, attr, *labels))
        except TypeError:  # an unhashable label: refused below
            pass
    if got is None:
        if isinstance(m, bool) or not isinstance(m, int) or not isinstance(attr, str) or not isinstance(labels, list) \
                or any(not isinstance(v, str) or len(v) > MAX_LABEL for v in labels):
            return None
        got = _series_of(m, attr, tuple(labels))
    if got is None or got[1] != op or (op == "i" and value < 0):
        return None
    return got[0], op, float(value)


def apply(batch: Any) -> bool:
    """On the node: count what a runner reported (see the module doc); False (nothing applied) if malformed."""
    if batch is None or batch == []:
        return True
    if not isinstance(batch, list) or len(batch) > MAX_ENTRIES:
        DROPPED.inc()
        return False
    targets = [_target(e) for e in batch]
    if any(t is None for t in targets):
        DROPPED.inc()
        return False
    for series, op, value in targets:  # type: ignore[misc]
        if op == "i":
            series.inc(value)
        else:
            series.observe(value)
    return True


__all__ = ["MAX_ENTRIES", "MAX_SERIES", "RELAYED", "Recorder", "apply", "drain", "record"]
