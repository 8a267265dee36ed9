"""A compute job's result: its outputs (`OutputBuffer`) with the run's figures (`ComputeResult`), and their wire
form (a msgpack-able body plus the outputs' bytes in arg order).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worker.compute.cltypes import parse_dtype


@dataclass
class OutputBuffer:
    index: int  # position in the spec's args
    name: str
    dtype: Any  # the wire dtype (a name, or a struct map)
    array: np.ndarray


@dataclass
class ComputeResult:
    outputs: list[OutputBuffer]
    source_sha256: str = ""
    cache_hit: bool = False
    build_s: float = 0.0
    kernel_s: float = 0.0  # device time of all launches (profiling)
    run_s: float = 0.0  # wall time from taking the device to the last byte read back
    launches: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def arrays(self) -> list[np.ndarray]:
        return [o.array for o in self.outputs]

    def __getitem__(self, key: int | str) -> np.ndarray:
        """An output by its arg index or name."""
        for o in self.outputs:
            if o.index == key or (isinstance(key, str) and o.name == key):
                return o.array
        raise KeyError(f"no output {key!r}; outputs: {[o.name or o.index for o in self.outputs]}")

    def to_wire(self) -> tuple[dict[str, Any], bytes]:
        """(msgpack-able body, output bytes: the outputs concatenated in arg order)."""
        return self.wire_body(), b"".join(np.ascontiguousarray(o.array).tobytes() for o in self.outputs)

    def wire_body(self) -> dict[str, Any]:
        """The msgpack-able body of `to_wire` alone (for outputs already laid out in arg order elsewhere, e.g.
        read back straight into a runner's arena by `execute(..., out_buffer=...)`)."""
        outs = []
        off = 0
        for o in self.outputs:
            nb = o.array.nbytes
            outs.append({"index": o.index, "name": o.name, "dtype": o.dtype, "count": int(o.array.size),
                         "offset": off, "nbytes": nb})
            off += nb
        return {"outputs": outs, "source_sha256": self.source_sha256, "cache_hit": self.cache_hit,
                "build_s": self.build_s, "kernel_s": self.kernel_s, "run_s": self.run_s, "launches": self.launches,
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out, "warnings": list(self.warnings)}

    @classmethod
    def from_wire(cls, body: Mapping[str, Any], output: bytes | None) -> ComputeResult:
        data = memoryview(output or b"")
        outs = []
        for d in body.get("outputs", []):
            dt = parse_dtype(d["dtype"], "result output dtype").dtype
            off, nb = int(d["offset"]), int(d["nbytes"])
            if off + nb > len(data) or nb != int(d["count"]) * dt.itemsize:
                raise ValueError(f"result output {d.get('name') or d['index']} does not fit the output bytes")
            arr = np.frombuffer(data[off:off + nb], dtype=dt).copy()
            outs.append(OutputBuffer(int(d["index"]), str(d.get("name", "")), d["dtype"], arr))
        return cls(outs, str(body.get("source_sha256", "")), bool(body.get("cache_hit", False)),
                   float(body.get("build_s", 0.0)), float(body.get("kernel_s", 0.0)), float(body.get("run_s", 0.0)),
                   int(body.get("launches", 0)), int(body.get("bytes_in", 0)), int(body.get("bytes_out", 0)),
                   list(body.get("warnings", [])))
