"""Pipeline spec files: the JSON Schema (and its copy in the docs), the loader, the same spec as the SDK's
Pipeline, and a file run on the local OpenCL device against numpy."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.opencl import requires_opencl
from worker.compute.api import Local, Pipeline, arun_local, local_runner
from worker.compute.pipeline_file import (
    SCHEMA_PATH,
    PipelineFileError,
    check_document,
    load_pipeline,
    pipeline_from_document,
    schema,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "compute"


def test_docs_show_the_schema_the_loader_uses():
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(schema())
    page = (ROOT / "docs" / "compute-pipeline.md").read_text()
    block = re.search(r"```json\n(.*?)```", page, re.S).group(1)
    assert json.loads(block) == json.loads(SCHEMA_PATH.read_text())


def test_example_files_follow_the_schema():
    import yaml

    for name in ("reduction.yaml", "sgemm.yaml"):
        check_document(yaml.safe_load((EXAMPLES / name).read_text()), name)


def doc(**over):
    d = {"source_inline": "__kernel void k(__global const float *x, __global float *y, const uint n) "
                          "{ size_t i = get_global_id(0); if (i < n) y[i] = 2 * x[i]; }",
         "buffers": {"x": {"role": "in", "dtype": "float32", "values": [1, 2, 3]},
                     "y": {"role": "out", "dtype": "float32", "shape": 3}},
         "launches": [{"kernel": "k", "global_size": 4, "args": ["x", "y", {"uint32": 3}]}]}
    d.update(over)
    return d


@pytest.mark.parametrize("patch,where", [
    ({"launches": []}, "launches"),
    ({"colour": 1}, "(top level)"),
    ({"buffers": {"x": {"role": "tmp", "dtype": "float32", "shape": 3}}}, "buffers/x/role"),
    ({"buffers": {"y": {"role": "out", "dtype": "float32", "values": [1]}}}, "buffers/y"),
    ({"buffers": {"1x": {"role": "scratch", "dtype": "float32", "shape": 3}}}, "buffers"),
    ({"launches": [{"kernel": "k", "global_size": [1, 2, 3, 4], "args": []}]}, "launches/0/global_size"),
    ({"launches": [{"kernel": "k", "global_size": 4, "args": [{"a": 1, "b": 2}]}]}, "launches/0/args/0"),
])
def test_schema_errors_name_the_place(tmp_path, patch, where):
    with pytest.raises(PipelineFileError, match=re.escape(f"at {where}")):
        pipeline_from_document(doc(**patch), tmp_path)


def test_loader_errors_beyond_the_schema(tmp_path):
    with pytest.raises(PipelineFileError, match="'floot' is neither a buffer nor a type"):
        pipeline_from_document(doc(launches=[{"kernel": "k", "global_size": 4, "args": ["x", "y", {"floot": 3}]}]),
                               tmp_path)
    with pytest.raises(PipelineFileError, match="no buffer named 'z'"):
        pipeline_from_document(doc(launches=[{"kernel": "k", "global_size": 4, "args": ["x", "z", {"uint": 3}]}]),
                               tmp_path)
    with pytest.raises(PipelineFileError, match="no such file"):
        pipeline_from_document(doc(buffers={"x": {"role": "in", "file": "nope.npy"},
                                            "y": {"role": "out", "dtype": "float32", "shape": 3}}), tmp_path)
    with pytest.raises(ValueError, match="out of range for uint32"):
        pipeline_from_document(doc(launches=[{"kernel": "k", "global_size": 4, "args": ["x", "y", {"uint32": -1}]}]),
                               tmp_path)
    (tmp_path / "p.yaml").write_text("launches: [")
    with pytest.raises(PipelineFileError, match="not valid YAML"):
        load_pipeline(tmp_path / "p.yaml")


def test_a_file_and_the_sdk_make_the_same_spec(tmp_path):
    x = np.arange(10, dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "r.cl").write_text((EXAMPLES / "reduction.cl").read_text())
    (tmp_path / "r.json").write_text(json.dumps({
        "source": "r.cl", "time_limit_s": 5,
        "buffers": {"x": {"role": "in", "file": "x.npy"}, "partial": {"role": "scratch", "dtype": "float", "shape": 2},
                    "sum": {"role": "out", "dtype": "float32", "shape": 1}},
        "launches": [{"kernel": "partial_sums", "global_size": 8, "local_size": 4,
                      "args": [{"uint": 10}, "x", "partial", {"local": {"float32": 4}}]},
                     {"kernel": "partial_sums", "global_size": 4, "local_size": 4,
                      "args": [{"uint32": 2}, "partial", "sum", {"local": 16}]}]}))
    from_file = load_pipeline(tmp_path / "r.json")
    p = Pipeline((EXAMPLES / "reduction.cl").read_text())
    xs = p.input("x", x)
    part = p.scratch("partial", 2, np.float32)
    total = p.output("sum", 1, np.float32)
    p.launch("partial_sums", 8, 4, np.uint32(10), xs, part, Local(16))
    p.launch("partial_sums", 4, 4, np.uint32(2), part, total, Local(16))
    assert from_file.spec == p.job(time_limit_s=5).spec


@requires_opencl
async def test_example_file_runs_and_matches_numpy():
    job = load_pipeline(EXAMPLES / "reduction.yaml")
    res = await arun_local(job, local_runner())
    assert float(res["sum"][0]) == float(np.arange(1, 21).sum())
    assert [o.name for o in res.outputs] == ["sum"] and res.bytes_out == 4 and not res.warnings
