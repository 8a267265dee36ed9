"""The runner metrics of the node (daemon side).

`gpumesh_runners{state}` is counted when it is scraped (a collector over the live pools), not kept up to date on
every lease and release: a job's hand-off to its runner pays nothing for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

RUNNER_DEATHS = Counter("gpumesh_runner_deaths_total",
                        "Runners that ended under a job or while idle, by cause: crash (signal or exit), "
                        "time_limit (killed by the node), stopped (a cancel that did not stop), protocol, startup",
                        ["cause"])
RUNNER_CALLS = Counter("gpumesh_runner_calls_total", "Calls into runners, by task", ["task"])
_calls: dict[str, Any] = {}


def count_call(task: str) -> None:
    c = _calls.get(task)
    if c is None:
        c = _calls[task] = RUNNER_CALLS.labels(task)
    c.inc()


class RunnerStates(Collector):
    """`gpumesh_runners{state}`: the runners of every live `RunnerPool` (in `pools`), by state."""

    NAME, HELP = "gpumesh_runners", "Runner processes of this node, by state"

    def __init__(self) -> None:
        self.pools: list[Any] = []  # RunnerPool

    def counts(self) -> dict[str, int]:
        counts = {"ready": 0, "leased": 0, "starting": 0}
        for p in list(self.pools):
            for dp in list(p.pools.values()):
                for r in list(dp.runners):
                    if r.dead.is_set() or r.killed is not None:
                        continue
                    counts["leased" if r.leased else "ready" if r.ready else "starting"] += 1
        return counts

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.NAME, self.HELP, labels=["state"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily(self.NAME, self.HELP, labels=["state"])
        for k, v in self.counts().items():
            g.add_metric([k], v)
        yield g


RUNNERS = RunnerStates()
REGISTRY.register(RUNNERS)
