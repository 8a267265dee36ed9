"""Comparing the outputs of two runs of one compute job (redundant verification): bit for bit by default, within
a tolerance for float and complex outputs when asked; vectors lane by lane; structs field bytes only (a
struct's padding holds whatever the device left there)."""

from __future__ import annotations

import math

import numpy as np

from worker.compute.cltypes import from_numpy
from worker.compute.runner import ComputeResult


def _elements(a: np.ndarray) -> np.ndarray:
    """A flat array of comparable elements: vectors (pyopencl.cltypes) as their scalar lanes."""

    if a.dtype.names is not None:
        try:
            t = from_numpy(a.dtype)
        except ValueError:
            return a.ravel()
        if t.kind == "vector" and t.base is not None:
            lanes = np.ascontiguousarray(a).view(t.base)
            return lanes.reshape(-1, 4)[:, :3].ravel() if t.width == 3 else lanes.ravel()  # not the padding lane
    return a.ravel()


def _field_bytes(dt: np.dtype) -> np.ndarray:
    """A mask of the bytes of one element that belong to a field (all of them for a non-struct)."""
    mask = np.zeros(dt.itemsize, dtype=bool)
    if dt.names is None or dt.fields is None:
        mask[:] = True
        return mask
    for n in dt.names:
        fdt, off = dt.fields[n][0], dt.fields[n][1]
        mask[off:off + fdt.itemsize] = True
    return mask


def compare_outputs(a: ComputeResult, b: ComputeResult, rtol: float = 0.0, atol: float = 0.0) -> tuple[str, str] | None:
    """None if the outputs agree (bit for bit, or within rtol/atol for float and complex outputs, vectors lane by
    lane), else (output, detail). Structs and integers are always compared bit for bit."""
    if len(a.outputs) != len(b.outputs):
        return "(all)", f"{len(a.outputs)} outputs vs {len(b.outputs)}"
    for oa, ob in zip(a.outputs, b.outputs, strict=True):
        name = oa.name or f"arg{oa.index}"
        if oa.index != ob.index or oa.array.dtype != ob.array.dtype or oa.array.size != ob.array.size:
            return name, f"{oa.array.dtype}[{oa.array.size}] vs {ob.array.dtype}[{ob.array.size}]"
        x, y = _elements(oa.array), _elements(ob.array)
        inexact = np.issubdtype(x.dtype, np.inexact)
        if inexact and (rtol or atol):
            close = np.isclose(x, y, rtol=rtol, atol=atol, equal_nan=True)
            bad = np.flatnonzero(~close)
            what = f"beyond rtol={rtol:g}, atol={atol:g}"
        else:
            if x.tobytes() == y.tobytes():
                continue
            keep = _field_bytes(x.dtype)  # a struct's padding holds whatever the device left there
            xb = np.ascontiguousarray(x).view(np.uint8).reshape(x.size, -1)[:, keep]
            yb = np.ascontiguousarray(y).view(np.uint8).reshape(y.size, -1)[:, keep]
            bad = np.flatnonzero((xb != yb).any(axis=1))
            what = "bit for bit"
        if bad.size:
            i = int(bad[0])
            diff = ""
            if np.issubdtype(x.dtype, np.number):
                with np.errstate(all="ignore"):
                    wide = np.complex128 if np.issubdtype(x.dtype, np.complexfloating) else np.float64
                    d = np.abs(x[bad].astype(wide) - y[bad].astype(wide))
                diff = f", max |difference| {np.nanmax(d) if d.size and not np.all(np.isnan(d)) else math.nan:.3g}"
            show = (lambda v: v.item()) if x.dtype.names is None else (lambda v: v.tobytes().hex())
            return name, (f"{bad.size} of {x.size} elements differ {what}; first at [{i}]: {show(x[i])!r} vs "
                          f"{show(y[i])!r}{diff}")
    return None
