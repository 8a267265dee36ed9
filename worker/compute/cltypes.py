"""OpenCL C types of compute arguments: the spec's wire dtypes, their numpy dtypes, OpenCL names and layout.

One `CType` per type an argument can have (by value, or as a buffer's element):

- every OpenCL C scalar: `int8 uint8 int16 uint16 int32 uint32 int64 uint64 float16 float32 float64` (numpy
  names; OpenCL `char uchar short ushort int uint long ulong half float double`);
- vectors `<scalar>x<n>`, n in 2, 3, 4, 8, 16 (`float32x4` is OpenCL `float4`, numpy `pyopencl.cltypes.float4`);
  a 3-vector takes the room of a 4-vector, as in OpenCL;
- `complex64` / `complex128`: numpy's complex numbers, laid out as OpenCL `float2` / `double2` (pyopencl's
  `cfloat_t` / `cdouble_t`);
- structs: a numpy structured dtype, on the wire `{"struct": [[name, dtype, offset, count], ...], "itemsize": n}`
  (fields of any of these types, `count` > 1 for a fixed-size array), checked against OpenCL's alignment rules
  (each member at a multiple of its alignment, the size a multiple of the largest).

Little-endian only (every OpenCL device this runs on is; a big-endian numpy array is refused, not swapped).
OpenCL's `bool`, `size_t` and pointers-to-pointers cannot be kernel arguments and have no CType.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.compute.errors import SpecError

CL_SCALAR_NAMES: dict[str, str] = {
    "int8": "char", "uint8": "uchar", "int16": "short", "uint16": "ushort", "int32": "int", "uint32": "uint",
    "int64": "long", "uint64": "ulong", "float16": "half", "float32": "float", "float64": "double",
}
NUMPY_OF_CL = {cl: np_name for np_name, cl in CL_SCALAR_NAMES.items()}
VECTOR_WIDTHS = (2, 3, 4, 8, 16)
COMPLEX_BASES = {"complex64": "float32", "complex128": "float64"}
MAX_STRUCT_FIELDS = 64  # in all, nested structs included
MAX_STRUCT_DEPTH = 4
MAX_ITEMSIZE = 1 << 16
MAX_ARRAY_COUNT = 4096


@dataclass(frozen=True)
class Field:
    name: str
    type: CType
    offset: int
    count: int = 1  # > 1: a fixed-size array member

    @property
    def nbytes(self) -> int:
        return self.type.itemsize * self.count


@dataclass(frozen=True)
class CType:
    """One OpenCL C type. `kind`: scalar, vector, complex or struct; `base`: the numpy name of the element
    scalar (None for a struct); `width`: vector width (1 for a scalar, 2 for complex)."""

    kind: str
    name: str  # the wire name ("float32", "float32x4", "complex64"; "struct" for structs)
    base: str | None
    width: int
    itemsize: int
    align: int  # OpenCL's alignment
    fields: tuple[Field, ...] = ()

    @property
    def cl_name(self) -> str:
        """How OpenCL C spells it ("float4", "uchar"; "float2" for complex64; "struct" for a struct)."""
        if self.kind == "struct":
            return "struct"
        assert self.base is not None
        scalar = CL_SCALAR_NAMES[self.base]
        return scalar if self.kind == "scalar" else f"{scalar}{self.width}"

    @property
    def scalar_size(self) -> int:
        return np.dtype(self.base).itemsize if self.base else 0

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype (`pyopencl.cltypes` vectors; a structured dtype with the struct's offsets)."""
        if self.kind == "scalar":
            return np.dtype(self.name)
        if self.kind == "complex":
            return np.dtype(self.name)
        if self.kind == "vector":
            return _vector_dtype(self.base or "", self.width)
        return np.dtype({
            "names": [f.name for f in self.fields],
            "formats": [f.type.dtype if f.count == 1 else (f.type.dtype, (f.count,)) for f in self.fields],
            "offsets": [f.offset for f in self.fields],
            "itemsize": self.itemsize,
        })

    def wire(self) -> Any:
        if self.kind != "struct":
            return self.name
        return {"struct": [[f.name, f.type.wire(), f.offset] + ([f.count] if f.count != 1 else [])
                           for f in self.fields], "itemsize": self.itemsize}

    def describe(self) -> str:
        """For messages: "uint16 (OpenCL ushort)", "float32x4 (OpenCL float4, pyopencl.cltypes.float4)"."""
        if self.kind == "struct":
            return f"struct of {len(self.fields)} fields, {self.itemsize} bytes"
        if self.kind == "scalar":
            return f"{self.name} (OpenCL {self.cl_name})"
        if self.kind == "vector":
            return f"{self.name} (OpenCL {self.cl_name}, pyopencl.cltypes.{self.cl_name})"
        return f"{self.name} (OpenCL {self.cl_name}, pyopencl's c{'float' if self.base == 'float32' else 'double'}_t)"

    def uses(self, base: str) -> bool:
        """Whether any element of this type is the scalar `base` (e.g. "float64": needs fp64 by value)."""
        if self.kind == "struct":
            return any(f.type.uses(base) for f in self.fields)
        return self.base == base


def _vector_dtype(base: str, n: int) -> np.dtype:
    # optional: pyopencl (a node without it, or without an OpenCL runtime, offers no OpenCL devices)
    from pyopencl import cltypes

    found = cltypes.vec_types.get((np.dtype(base), n))
    if found is not None:
        return np.dtype(found)
    # pyopencl has no half vectors: the same layout, built the same way
    xyzw = "xyzw"
    fields: list[Any] = [((xyzw[i], f"s{i}") if n <= 4 else f"s{i}", base) for i in range(min(n, 16))]
    if n == 3:
        fields = fields[:3] + [("padding0", base)]
    return np.dtype(fields)


def scalar_type(name: str) -> CType:
    size = np.dtype(name).itemsize
    return CType("scalar", name, name, 1, size, size)


def vector_type(base: str, n: int) -> CType:
    size = np.dtype(base).itemsize * (4 if n == 3 else n)
    return CType("vector", f"{base}x{n}", base, n, size, size)


def complex_type(name: str) -> CType:
    base = COMPLEX_BASES[name]
    size = 2 * np.dtype(base).itemsize
    return CType("complex", name, base, 2, size, size)


SCALAR_TYPES = {n: scalar_type(n) for n in CL_SCALAR_NAMES}
VECTOR_TYPES = {f"{b}x{n}": vector_type(b, n) for b in CL_SCALAR_NAMES for n in VECTOR_WIDTHS}
COMPLEX_TYPES = {n: complex_type(n) for n in COMPLEX_BASES}
NAMED_TYPES: dict[str, CType] = {**SCALAR_TYPES, **VECTOR_TYPES, **COMPLEX_TYPES}
# an OpenCL spelling (as the runtime reports a parameter's type) -> the CType
CL_SPELLINGS: dict[str, CType] = {t.cl_name: t for t in (*SCALAR_TYPES.values(), *VECTOR_TYPES.values())}


def type_named(name: str) -> CType | None:
    """A wire name, or an unambiguous OpenCL spelling ("ushort", "float4"; numpy names win: "int8" is char)."""
    return NAMED_TYPES.get(name) or CL_SPELLINGS.get(name)


def named_types_help() -> str:
    return ("int8 uint8 int16 uint16 int32 uint32 int64 uint64 float16 float32 float64 (or OpenCL char uchar short "
            "ushort int uint long ulong half float double), vectors like float32x4 / uint8x16 (OpenCL float4, "
            "uchar16; widths 2 3 4 8 16), complex64 complex128, or a struct")


# --- from the wire -------------------------------------------------------------------------------------------


def parse_dtype(v: Any, where: str) -> CType:
    """A wire dtype (a name, or a struct map) as a CType. Raises SpecError naming `where`."""
    budget = [MAX_STRUCT_FIELDS]
    return _parse(v, where, 0, budget)


def _parse(v: Any, where: str, depth: int, budget: list[int]) -> CType:
    if isinstance(v, str):
        t = type_named(v)
        if t is None:
            raise SpecError(where, f"unknown dtype {v!r} (one of {named_types_help()})")
        return t
    if not isinstance(v, Mapping) or "struct" not in v:
        raise SpecError(where, f"a dtype is a name or {{'struct': [[name, dtype, offset], ...], 'itemsize': n}}, "
                               f"not {type(v).__name__}")
    if depth >= MAX_STRUCT_DEPTH:
        raise SpecError(where, f"structs nest at most {MAX_STRUCT_DEPTH} deep")
    extra = set(v) - {"struct", "itemsize"}
    if extra:
        raise SpecError(where, f"unknown struct field(s) {sorted(map(str, extra))} (allowed: struct, itemsize)")
    raw = v["struct"]
    if not isinstance(raw, list | tuple) or not raw:
        raise SpecError(f"{where}.struct", "must be a non-empty list of [name, dtype, offset(, count)]")
    fields = []
    names: set[str] = set()
    for i, f in enumerate(raw):
        w = f"{where}.struct[{i}]"
        budget[0] -= 1
        if budget[0] < 0:
            raise SpecError(w, f"more than {MAX_STRUCT_FIELDS} struct fields in all")
        if not isinstance(f, list | tuple) or len(f) not in (3, 4):
            raise SpecError(w, "must be [name, dtype, offset] or [name, dtype, offset, count]")
        name, fdt, off = f[0], f[1], f[2]
        count = f[3] if len(f) == 4 else 1
        if not isinstance(name, str) or not name or len(name) > 64 or name in names:
            raise SpecError(w, f"field name {name!r} must be a non-empty, unique string of at most 64 characters")
        names.add(name)
        ft = _parse(fdt, f"{w}.dtype", depth + 1, budget)
        for what, x, hi in (("offset", off, MAX_ITEMSIZE), ("count", count, MAX_ARRAY_COUNT)):
            if isinstance(x, bool) or not isinstance(x, int | np.integer) or not 0 <= int(x) <= hi:
                raise SpecError(w, f"{what} must be an integer in [0, {hi}], not {x!r}")
        if int(count) < 1:
            raise SpecError(w, "count must be at least 1")
        fields.append(Field(name, ft, int(off), int(count)))
    size = v.get("itemsize")
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or not 1 <= int(size) <= MAX_ITEMSIZE:
        raise SpecError(f"{where}.itemsize", f"must be an integer in [1, {MAX_ITEMSIZE}], not {size!r}")
    return make_struct(tuple(fields), int(size), where)


def make_struct(fields: tuple[Field, ...], itemsize: int, where: str) -> CType:
    """A struct CType, after OpenCL's layout rules (raises SpecError saying which member breaks which)."""
    order = sorted(fields, key=lambda f: f.offset)
    end = 0
    prev = ""
    for f in order:
        if f.offset < end:
            raise SpecError(where, f"struct fields {prev!r} and {f.name!r} overlap")
        if f.offset % f.type.align:
            raise SpecError(where, f"struct field {f.name!r} ({f.type.describe()}) is at offset {f.offset}, but "
                                   f"OpenCL aligns it to {f.type.align} bytes: the kernel's struct puts it at "
                                   f"{-(-f.offset // f.type.align) * f.type.align}. Lay the numpy dtype out as "
                                   f"OpenCL does (pyopencl.tools.match_dtype_to_c_struct, or explicit offsets and "
                                   f"padding fields)")
        end = f.offset + f.nbytes
        prev = f.name
    align = max(f.type.align for f in fields)
    if end > itemsize:
        raise SpecError(where, f"struct fields end at byte {end}, past its itemsize of {itemsize}")
    if itemsize % align:
        raise SpecError(where, f"struct itemsize {itemsize} is not a multiple of its alignment {align} (its "
                               f"largest member's): OpenCL's sizeof is {-(-itemsize // align) * align}; pad the "
                               f"numpy dtype to that itemsize")
    return CType("struct", "struct", None, 1, itemsize, align, tuple(fields))


# --- from numpy ----------------------------------------------------------------------------------------------


_VECTORS_BY_DTYPE: dict[np.dtype, CType] | None = None


def _vectors_by_dtype() -> dict[np.dtype, CType]:
    global _VECTORS_BY_DTYPE
    if _VECTORS_BY_DTYPE is None:
        _VECTORS_BY_DTYPE = {t.dtype: t for t in VECTOR_TYPES.values()}
    return _VECTORS_BY_DTYPE


def from_numpy(dt: Any, where: str = "dtype") -> CType:
    """The CType of a numpy dtype (pyopencl.cltypes vectors, complex, structured). Raises SpecError (a
    ValueError) with what to use instead."""
    d = np.dtype(dt)
    if d.byteorder == ">":
        raise SpecError(where, f"big-endian dtype {d}: OpenCL devices here are little-endian; use "
                               f"array.astype(array.dtype.newbyteorder('<'))")
    if d.names is None and d.subdtype is None:
        if d.kind == "b":
            raise SpecError(where, "bool has no fixed size in OpenCL and cannot be a kernel argument: use uint8")
        name = np.dtype(d.newbyteorder("=")).name if d.byteorder != "|" else d.name
        t = NAMED_TYPES.get(name)
        if t is None:
            raise SpecError(where, f"dtype {d} has no OpenCL C equivalent (one of {named_types_help()})")
        return t
    if d.subdtype is not None:
        raise SpecError(where, f"a subarray dtype {d} is not an element type: use a struct field with a count, "
                               f"or a vector type")
    vec = _vectors_by_dtype().get(d)
    if vec is not None:
        return vec
    assert d.names is not None and d.fields is not None
    fields = []
    for n in d.names:
        fdt, off = d.fields[n][0], d.fields[n][1]
        count = 1
        if fdt.subdtype is not None:
            fdt, shape = fdt.subdtype
            count = math.prod(shape)
        fields.append(Field(n, from_numpy(fdt, f"{where} field {n!r}"), int(off), count))
    if len(fields) > MAX_STRUCT_FIELDS:
        raise SpecError(where, f"more than {MAX_STRUCT_FIELDS} struct fields")
    return make_struct(tuple(fields), d.itemsize, where)


# --- by-value arguments --------------------------------------------------------------------------------------


def encode_value(t: CType, v: Any, where: str) -> bytes:
    """The bytes of a by-value argument of type `t`: a number (scalar), a list of numbers (vector: its width;
    complex: [re, im]) or the raw bytes (any type: exactly `itemsize` of them). Range-checked."""
    if isinstance(v, bytes | bytearray | memoryview):
        raw = bytes(v)
        if len(raw) != t.itemsize:
            raise SpecError(where, f"{len(raw)} bytes for a {t.describe()} value, which takes {t.itemsize}")
        return raw
    if t.kind == "struct":
        raise SpecError(where, f"a struct value is given as its {t.itemsize} raw bytes")
    assert t.base is not None
    if t.kind == "scalar":
        return np.array(_number(t.base, v, where), dtype=t.base).tobytes()
    if not isinstance(v, list | tuple) or len(v) != t.width:
        raise SpecError(where, f"a {t.describe()} value is a list of {t.width} numbers (or its raw bytes)")
    items = [_number(t.base, x, f"{where}[{i}]") for i, x in enumerate(v)]
    if t.kind == "vector" and t.width == 3:
        items.append(0)  # the padding lane of a 3-vector
    return np.array(items, dtype=t.base).tobytes()


def decode_value(t: CType, raw: bytes) -> Any:
    """A by-value argument's bytes back to its readable form (what `encode_value` took)."""
    if t.kind == "struct":
        return raw
    vals = np.frombuffer(raw, dtype=t.base).tolist()
    return vals[0] if t.kind == "scalar" else vals[:t.width]


def _number(base: str, v: Any, where: str) -> int | float:
    dt = np.dtype(base)
    if dt.kind == "f":
        if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
            raise SpecError(where, f"a {base} value needs a number, not {type(v).__name__}")
        f = float(v)
        if math.isfinite(f) and abs(f) > float(np.finfo(dt).max):
            raise SpecError(where, f"{f!r} overflows {base} (OpenCL {CL_SCALAR_NAMES[base]})")
        return f
    if isinstance(v, bool) or not isinstance(v, int | np.integer):
        raise SpecError(where, f"a {base} value needs an integer, not {type(v).__name__}")
    i = int(v)
    info = np.iinfo(dt)
    if not info.min <= i <= info.max:
        raise SpecError(where, f"{i} is out of range for {base} (OpenCL {CL_SCALAR_NAMES[base]}) "
                               f"[{info.min}, {info.max}]")
    return i


def from_numpy_value(v: Any, where: str = "value") -> tuple[CType, bytes]:
    """A numpy scalar or 0-d array (np.float16(1), cltypes.make_float4(...), a structured np.void) as
    (type, bytes)."""
    arr = np.asarray(v)
    if arr.shape != ():
        raise SpecError(where, f"a by-value argument is one element, not an array of shape {arr.shape}")
    t = from_numpy(arr.dtype, where)
    return t, np.ascontiguousarray(arr).tobytes()


# --- what the runtime reports about a parameter ---------------------------------------------------------------

OPAQUE_TYPES = ("image1d_t", "image1d_array_t", "image1d_buffer_t", "image2d_t", "image2d_array_t", "image3d_t",
                "image2d_depth_t", "image2d_array_depth_t", "image2d_msaa_t", "sampler_t", "queue_t", "clk_event_t",
                "reserve_id_t", "event_t")
FORBIDDEN_ARG_TYPES = ("bool", "size_t", "ptrdiff_t", "intptr_t", "uintptr_t")


def pointee(type_name: str) -> CType | None:
    """The CType a pointer parameter's element type spells ("float4*" -> float32x4), None if not a builtin."""
    t = type_name.strip().rstrip("*").strip()
    for q in ("const ", "volatile ", "restrict ", "unsigned "):
        t = t.replace(q, "")
    return CL_SPELLINGS.get(t.strip())


def suggest_for(cl_type: str) -> str:
    """What to pass for a by-value parameter declared `cl_type` (for error messages)."""
    t = CL_SPELLINGS.get(cl_type.strip())
    if t is None:
        return ""
    if t.kind == "scalar":
        return f"np.{t.name}(...) (dtype {t.name})"
    return f"pyopencl.cltypes.make_{t.cl_name}(...) (dtype {t.name})"

