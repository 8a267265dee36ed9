"""Cost models corrected by what the jobs really took.

A kind's cost model (`cost_s(spec, input_size, device)`) is fitted once, on one machine; on another device, or
the same one under other load, it can be several times off (a render model fitted on a quiet machine estimated
1.3 s for frames that took 260 ms, and realtime admission refused them). Each result reports its run time;
this keeps, per job kind and class of hardware (device kind, vendor and name), the geometric moving
average of measured / estimated, and multiplies the model's estimates by it. Pure: no clock, no I/O.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from mesh.advert import DeviceAdvert

MIN_FACTOR, MAX_FACTOR = 0.05, 20.0  # one absurd measurement cannot make a model useless
ALPHA = 0.3  # weight of a new measurement (in log space)
MOVED = math.log(1.1)  # a factor that moved by more than 10% makes cached estimates stale
MAX_KEYS = 4096

CostFn = Callable[[Any, DeviceAdvert], float]


def device_type(d: DeviceAdvert) -> tuple:
    """The class of hardware a correction applies to. Not its calibrated speeds: the model already scales with
    those, and two equal devices calibrated a little apart must share one factor (else the one that ran first
    would look faster, win every placement, and the other would never be measured)."""
    return (d.kind, d.vendor, d.name)


class CostFeedback:
    def __init__(self, model: CostFn, alpha: float = ALPHA) -> None:
        self.model = model
        self.alpha = alpha
        self._log_factor: OrderedDict[tuple, float] = OrderedDict()

    def factor(self, kind: str, device: DeviceAdvert) -> float:
        return math.exp(self._log_factor.get((kind, device_type(device)), 0.0))

    def cost(self, job: Any, device: DeviceAdvert) -> float:
        """The model's estimate for `job` on `device`, corrected by what such jobs took there."""
        return self.model(job, device) * self.factor(job.kind, device)

    def observe(self, job: Any, device: DeviceAdvert, run_s: float) -> bool:
        """A result: `job` ran `run_s` seconds on `device`. True when the correction moved enough that
        estimates computed before are stale."""
        if not (run_s > 0 and math.isfinite(run_s)):
            return False
        estimate = self.model(job, device)
        if not (estimate > 0 and math.isfinite(estimate)):
            return False
        ratio = math.log(min(MAX_FACTOR, max(MIN_FACTOR, run_s / estimate)))
        key = (job.kind, device_type(device))
        old = self._log_factor.get(key)
        new = ratio if old is None else (1 - self.alpha) * old + self.alpha * ratio  # the first one in full
        self._log_factor[key] = new
        self._log_factor.move_to_end(key)
        while len(self._log_factor) > MAX_KEYS:
            self._log_factor.popitem(last=False)
        return abs(new - (old or 0.0)) > MOVED
