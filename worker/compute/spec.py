"""The `compute.opencl` job spec: typed, validated before anything is transferred.

A spec is a msgpack-able dict (wire version 1)::

    {
      "v": 1,
      "source": "<OpenCL C>",             # or "source_sha256": "<hex>" of a source the worker has cached
      "kernel": "saxpy",                  # the kernel of the single launch (and the default for launches)
      "build_options": ["-DTILE=16", "-cl-mad-enable"],   # allow-listed; a string is split on spaces
      "args": [                           # the kernel's arguments in order, or a pipeline's buffers
        {"kind": "scalar", "dtype": "float32", "value": 2.0},
        {"kind": "scalar", "dtype": "float32x4", "value": [1, 2, 3, 4]},       # vectors: a list (or bytes)
        {"kind": "in", "dtype": "float32", "data": b"..."},                     # inline bytes
        {"kind": "in", "dtype": "float32", "sha256": "<hex>", "nbytes": 4096},  # streamed blob
        {"kind": "inout", "dtype": "float32", "data": b"..."},                  # uploaded and read back
        {"kind": "out", "dtype": "float32", "count": 1024},                     # zero-filled, read back
        {"kind": "scratch", "dtype": "float32", "count": 1024, "name": "tmp"},  # zero-filled, device only
        {"kind": "local", "nbytes": 1024},                                      # __local scratch per group
      ],
      "global_size": [1024], "local_size": [64],  # 1..3 dims; local_size optional (runtime picks)
      "launches": [                       # optional: a sequence of launches over the same buffers
        {"kernel": "step", "global_size": [n], "args": ["tmp", 1, {"kind": "scalar", ...}], "repeat": 10},
      ],
      "repeat": 1,                        # the whole launch sequence, repeated
      "time_limit_s": 10.0, "memory_limit_bytes": 1 << 28,
      "device_kind": "gpu",               # optional placement constraint
      "flops_per_item": 2.0,              # optional cost hint: work per work item per launch
    }

dtypes: `worker.compute.cltypes` (every OpenCL C scalar, vectors `float32x4`, `complex64`, structs as
`{"struct": [[name, dtype, offset], ...], "itemsize": n}` with OpenCL's alignment checked).

Buffer roles: `in` (uploaded, never read back), `out` (zero-filled, read back), `inout` (uploaded, read back),
`scratch` (zero-filled, lives on the device only: never uploaded, never read back). A launch's `args`, when
given, lists for each kernel parameter an integer (the index of an entry of the spec's `args`), a string (the
`name` of one) or an inline scalar/local arg; when omitted the launch uses the spec's `args` in order.

Streamed inputs: the job's input stream is the concatenation, in order of first appearance in `args`, of the
distinct blobs the args name by `sha256` (`ComputeSpec.stream_layout()`); inline `data` rides in the spec.

`parse_spec(d)` checks the structure (and what a scan of the source tells: images and samplers are refused,
`reqd_work_group_size` against `local_size`) and returns a frozen `ComputeSpec`; `worker.compute.limits.validate`
also checks it against a device's limits and the job's own. Both raise `SpecError` (a ValueError) naming the
field, before any transfer.

The parts: `spec_model.py` (the dataclasses) and `spec_parse.py` (`parse_spec` and the worker-side caps); this
module is the spec's API in one place (the names its users import), with the source checks of
`worker.compute.source` that a spec's users need.
"""

from worker.compute.errors import SpecError
from worker.compute.source import (
    ALLOWED_CL_STD,
    ALLOWED_FLAGS,
    MAX_SOURCE_BYTES,
    check_source,
    kernel_names_in,
    parse_build_options,
    source_sha256,
    strip_comments,
)
from worker.compute.spec_model import (
    DEFAULT_TIME_LIMIT_S,
    SPEC_VERSION,
    Arg,
    BufferArg,
    ComputeRequirements,
    ComputeSpec,
    Launch,
    LocalArg,
    ScalarArg,
    SourceNotCached,
    dtype_named,
    resolve_launch_args,
)
from worker.compute.spec_parse import (
    ARG_KINDS,
    BUFFER_KINDS,
    DEVICE_KINDS,
    MAX_ARGS,
    MAX_BUFFER_BYTES,
    MAX_INLINE_BYTES,
    MAX_LAUNCH_ENTRIES,
    MAX_NAME_LEN,
    MAX_TIME_LIMIT_S,
    MAX_TOTAL_LAUNCHES,
    MAX_WORK_ITEMS,
    NON_UNIFORM_HELP,
    SPEC_FIELDS,
    parse_spec,
)

__all__ = [
    "ALLOWED_CL_STD", "ALLOWED_FLAGS", "ARG_KINDS", "BUFFER_KINDS", "DEFAULT_TIME_LIMIT_S", "DEVICE_KINDS", "MAX_ARGS",
    "MAX_BUFFER_BYTES", "MAX_INLINE_BYTES", "MAX_LAUNCH_ENTRIES", "MAX_NAME_LEN", "MAX_SOURCE_BYTES", "MAX_TIME_LIMIT_S",
    "MAX_TOTAL_LAUNCHES", "MAX_WORK_ITEMS", "NON_UNIFORM_HELP", "SPEC_FIELDS", "SPEC_VERSION", "Arg", "BufferArg",
    "ComputeRequirements", "ComputeSpec", "Launch", "LocalArg", "ScalarArg", "SourceNotCached", "SpecError",
    "check_source", "dtype_named", "kernel_names_in", "parse_build_options", "parse_spec", "resolve_launch_args",
    "source_sha256", "strip_comments",
]
