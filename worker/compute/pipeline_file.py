"""Pipeline spec files (YAML or JSON): a compute job as a file, what `mesh-node compute FILE` runs.

    source: sgemm.cl                          # relative to this file (or source_inline: the program)
    build_options: [-DTS=16]
    buffers:                                  # by name, with a role
      A:  {role: in, file: a.npy}             # .npy (its dtype, or converted to `dtype`), raw bytes + dtype,
      B:  {role: in, file: b.npy}             #   or `values: [1, 2, 3]` with a dtype
      BT: {role: scratch, dtype: float32, shape: [256, 256]}
      C:  {role: out, dtype: float32, shape: [256, 256]}
    launches:
      - {kernel: transpose, global_size: [256, 256], local_size: [16, 16], args: [{int32: 256}, {int32: 256}, B, BT]}
      - {kernel: gemm_nt, global_size: [256, 256], local_size: [16, 16],
         args: [{int32: 256}, {int32: 256}, {int32: 256}, A, BT, C]}

The format's JSON Schema is `pipeline.schema.json` beside this module (shown in docs/compute-pipeline.md);
`load_pipeline` checks a file against it, then builds the job with `worker.compute.api.Pipeline`, the same
path as the SDK, so a file and an SDK call with the same content make the same spec. Errors are
`PipelineFileError` (a ValueError) naming the place in the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import yaml

from worker.compute.api import ComputeJob, Local, Pipeline, Scalar
from worker.compute.cltypes import parse_dtype
from worker.compute.errors import SpecError

SCHEMA_PATH = Path(__file__).with_name("pipeline.schema.json")
MAX_FILE_BYTES = 1 << 20  # the spec file itself (buffers' data files are separate)


class PipelineFileError(ValueError):
    pass


def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def read_document(path: Path) -> Any:
    """The file's content (YAML for .yaml/.yml, else JSON)."""
    text = path.read_bytes()
    if len(text) > MAX_FILE_BYTES:
        raise PipelineFileError(f"{path}: {len(text)} bytes; a pipeline file is at most {MAX_FILE_BYTES}")
    if path.suffix in (".yaml", ".yml"):

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise PipelineFileError(f"{path}: not valid YAML: {e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise PipelineFileError(f"{path}: not valid JSON: {e}") from None


def check_document(doc: Any, where: str = "pipeline") -> None:
    """Check `doc` against the JSON Schema; the error names the path inside the document."""

    v = jsonschema.Draft202012Validator(schema())
    errors = sorted(v.iter_errors(doc), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        e = errors[0]
        at = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise PipelineFileError(f"{where}: at {at}: {e.message}")


def load_pipeline(path: str | Path, **job_options: Any) -> ComputeJob:
    """The job a pipeline file describes (data files read relative to it). Raises PipelineFileError or
    SpecError (the worker's own checks, run here before anything is sent)."""
    p = Path(path)
    doc = read_document(p)
    return pipeline_from_document(doc, p.parent, str(p), **job_options)


def pipeline_from_document(doc: Any, base: Path, where: str = "pipeline", **job_options: Any) -> ComputeJob:
    check_document(doc, where)
    assert isinstance(doc, Mapping)
    if "source" in doc:
        src_path = base / doc["source"]
        try:
            source = src_path.read_text()
        except OSError as e:
            raise PipelineFileError(f"{where}: source {doc['source']!r}: {e.strerror or e}") from None
    else:
        source = doc["source_inline"]
    pipe = Pipeline(source, build_options=doc.get("build_options", ()))
    for name, b in doc.get("buffers", {}).items():
        at = f"{where}: buffers/{name}"
        role = b["role"]
        dtype = _dtype(b["dtype"], f"{at}/dtype") if "dtype" in b else None
        if role in ("out", "scratch"):
            shape = b["shape"]
            shp: int | tuple[int, ...] = shape if isinstance(shape, int) else tuple(shape)
            (pipe.output if role == "out" else pipe.scratch)(name, shp, dtype)
            continue
        arr = _data(b, dtype, base, at)
        (pipe.input if role == "in" else pipe.inout)(name, arr)
    for i, ln in enumerate(doc["launches"]):
        at = f"{where}: launches/{i}"
        args = [_arg(a, f"{at}/args/{j}") for j, a in enumerate(ln["args"])]
        try:
            pipe.launch(ln["kernel"], ln["global_size"], ln.get("local_size"), *args, repeat=ln.get("repeat", 1))
        except (TypeError, ValueError) as e:
            raise PipelineFileError(f"{at}: {e}") from None
    opts = {k: doc[k] for k in ("repeat", "time_limit_s", "memory_limit_bytes", "device_kind", "flops_per_item")
            if k in doc}
    return pipe.job(**{**opts, **job_options})


def _dtype(v: Any, at: str) -> np.dtype:
    try:
        return parse_dtype(v, at).dtype
    except SpecError as e:
        raise PipelineFileError(f"{at}: {e}") from None


def _data(b: Mapping[str, Any], dtype: np.dtype | None, base: Path, at: str) -> np.ndarray:
    if "values" in b:
        if dtype is None:
            raise PipelineFileError(f"{at}: literal values need a dtype")
        try:
            return np.array(b["values"], dtype=dtype)
        except (TypeError, ValueError, OverflowError) as e:
            raise PipelineFileError(f"{at}/values: not {dtype} values: {e}") from None
    path = base / b["file"]
    if not path.is_file():
        raise PipelineFileError(f"{at}/file: no such file {str(path)!r}")
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        if dtype is not None and arr.dtype != dtype:
            if arr.dtype.names is not None or not np.can_cast(arr.dtype, dtype, casting="same_kind"):
                raise PipelineFileError(f"{at}/file: {path.name} holds {arr.dtype}, which does not convert to "
                                        f"{dtype} without changing kind")
            arr = arr.astype(dtype)
        return arr
    if dtype is None:
        raise PipelineFileError(f"{at}: a raw file needs a dtype")
    raw = path.read_bytes()
    if len(raw) % dtype.itemsize:
        raise PipelineFileError(f"{at}/file: {len(raw)} bytes is not a whole number of {dtype.itemsize}-byte "
                                f"elements")
    return np.frombuffer(raw, dtype=dtype).copy()


def _arg(a: Any, at: str) -> Any:
    if isinstance(a, str):
        return a
    ((key, value),) = a.items()
    if key == "local":
        if isinstance(value, int):
            return Local(value)
        ((tname, count),) = value.items()
        return Local(int(count) * _dtype(tname, f"{at}/local").itemsize)
    t = parse_dtype(key, at) if _known(key) else None
    if t is None:
        raise PipelineFileError(f"{at}: {key!r} is neither a buffer nor a type (a by-value argument is "
                                f"{{TYPE: value}}, e.g. {{uint32: 1000}})")
    return Scalar(t.wire(), value)


def _known(name: str) -> bool:
    try:
        parse_dtype(name, "")
        return True
    except SpecError:
        return False
