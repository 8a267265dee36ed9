"""The OpenCL C source of a compute job: safety checks, build options, and what a scan of it can tell before
anything is built or transferred (kernel names, parameters, `reqd_work_group_size`).

The scan is best effort (no preprocessor runs here): it reads kernel declarations after comment removal and
evaluates attribute sizes through `-D` options and simple `#define`s. What it cannot read it leaves to the
runner, which checks the built program (the authority) before reading the job's input.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from worker.compute.cltypes import FORBIDDEN_ARG_TYPES, OPAQUE_TYPES
from worker.compute.errors import SpecError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from worker.compute.spec_model import ComputeSpec, Launch

MAX_SOURCE_BYTES = 512 * 1024
MAX_DEFINE_VALUE_LEN = 128
# Build options: anything not listed is refused (no -I, no @file, nothing that names a path or an output).
ALLOWED_FLAGS = frozenset({
    "-cl-mad-enable", "-cl-fast-relaxed-math", "-cl-finite-math-only", "-cl-unsafe-math-optimizations",
    "-cl-no-signed-zeros", "-cl-denorms-are-zero", "-cl-single-precision-constant", "-cl-opt-disable",
    "-cl-strict-aliasing", "-cl-fp32-correctly-rounded-divide-sqrt", "-cl-uniform-work-group-size",
    "-cl-no-subgroup-ifp", "-w", "-Werror",
})
ALLOWED_CL_STD = ("CL1.0", "CL1.1", "CL1.2", "CL2.0", "CL3.0")
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_DEFINE_VALUE = re.compile(r"[A-Za-z0-9_.+\-*/()<>|&^~%!]*\Z")


_FP64_RE = re.compile(r"\bdouble(?:2|3|4|8|16)?\b|\bcl_khr_fp64\b")
_INT64_RE = re.compile(r"\bu?long(?:2|3|4|8|16)?\b|\bcl_khr_int64")
# After trigraph replacement, line splicing and comment removal: a directive that reads a file.
_FILE_DIRECTIVE = re.compile(r"(?:#|%:)\s*(?:include|import|embed|pragma\s+include_alias)|__has_include|__has_embed")
_KERNEL_DECL = re.compile(r"\b(?:__kernel|kernel)\b(?:\s+__attribute__\s*\(\(.*?\)\))?\s+void\s+([A-Za-z_]\w*)\s*\(",
                          re.S)


def _translation_phases(src: str) -> str:
    """C translation phases 1-2: trigraphs (a conforming compiler may honour them) and line splicing."""
    for tri, ch in (("??=", "#"), ("??/", "\\"), ("??(", "["), ("??)", "]"), ("??<", "{"), ("??>", "}"),
                    ("??!", "|"), ("??'", "^"), ("??-", "~")):
        src = src.replace(tri, ch)
    return re.sub(r"\\[ \t]*\r?\n", "", src)


_LEX = re.compile(r"""//[^\n]*|/\*.*?(?:\*/|\Z)|"(?:\\.|[^"\\\n])*"?|'(?:\\.|[^'\\\n])*'?|[^/"']+|/""", re.S)


# What a scan of a source finds depends only on its text, and jobs reuse kernels: the scans below are memoised
# per source text (a handful of sources, each at most MAX_SOURCE_BYTES), so a spec parsed twice (the daemon's
# check, then its runner's) or a stream of jobs with one kernel scans the source once.
SCANNED_SOURCES = 16


@functools.lru_cache(maxsize=SCANNED_SOURCES)
def strip_comments(src: str) -> str:
    """The source after phases 1-3 as the preprocessor sees it: comments become one space; string and
    character literals are kept whole (so a '/*' inside a string does not hide what follows)."""
    s = _translation_phases(src)
    return "".join(" " if m.startswith(("//", "/*")) else m for m in _LEX.findall(s))


@functools.lru_cache(maxsize=SCANNED_SOURCES)
def source_words(src: str) -> frozenset[str]:
    """Every identifier-like word of the source outside comments (for "is this kernel name there at all")."""
    return frozenset(re.findall(r"[A-Za-z_]\w*", strip_comments(src)))


@functools.lru_cache(maxsize=SCANNED_SOURCES)
def source_uses_64bit(src: str) -> tuple[bool, bool]:
    """(uses double precision, uses 64-bit integers), from the words of the source outside comments."""
    text = strip_comments(src)
    return bool(_FP64_RE.search(text)), bool(_INT64_RE.search(text))


def check_source(src: Any, fieldname: str = "source") -> str:
    if isinstance(src, bytes | bytearray):
        try:
            src = bytes(src).decode("utf-8")
        except UnicodeDecodeError as e:
            raise SpecError(fieldname, f"not valid UTF-8 ({e})") from None
    if not isinstance(src, str):
        raise SpecError(fieldname, f"must be a string of OpenCL C, not {type(src).__name__}")
    if not src.strip():
        raise SpecError(fieldname, "is empty")
    nbytes = len(src.encode("utf-8"))
    if nbytes > MAX_SOURCE_BYTES:
        raise SpecError(fieldname, f"{nbytes} bytes exceeds the limit of {MAX_SOURCE_BYTES}")
    if "\x00" in src:
        raise SpecError(fieldname, "contains a NUL character")
    m = _FILE_DIRECTIVE.search(strip_comments(src))
    if m:
        raise SpecError(fieldname, f"{m.group(0).strip()!r} is not allowed: a program must be one self-contained "
                                   "source (the worker's files are not readable); inline what you include")
    return src


def kernel_names_in(src: str) -> list[str]:
    """Kernel functions declared in `src` (a best-effort scan; the built program is the authority)."""
    return list(_kernel_names(src))


@functools.lru_cache(maxsize=SCANNED_SOURCES)
def _kernel_names(src: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_KERNEL_DECL.findall(strip_comments(src))))


def source_sha256(src: str) -> str:
    return hashlib.sha256(src.encode("utf-8")).hexdigest()


def parse_build_options(opts: Any, fieldname: str = "build_options") -> tuple[str, ...]:
    """Allow-listed build options as normalised tokens ("-D NAME=V" becomes "-DNAME=V")."""
    if opts is None:
        return ()
    if isinstance(opts, str):
        tokens = opts.split()
    elif isinstance(opts, list | tuple) and all(isinstance(t, str) for t in opts):
        tokens = [t for o in opts for t in o.split()]
    else:
        raise SpecError(fieldname, "must be a string or a list of strings")
    out: list[str] = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        where = f"{fieldname}[{i}]"
        if t == "-D":
            if i + 1 >= len(tokens):
                raise SpecError(where, "'-D' needs a NAME or NAME=VALUE after it")
            i += 1
            t = "-D" + tokens[i]
        if t.startswith("-D"):
            name, _, value = t[2:].partition("=")
            if not IDENT.match(name):
                raise SpecError(where, f"macro name {name!r} in {t!r} is not a C identifier")
            if len(value) > MAX_DEFINE_VALUE_LEN or not _DEFINE_VALUE.match(value):
                raise SpecError(where, f"macro value in {t!r} may hold only letters, digits and _.+-*/()<>|&^~%! "
                                       f"(at most {MAX_DEFINE_VALUE_LEN} characters)")
            out.append(t)
        elif t.startswith("-cl-std="):
            if t[len("-cl-std="):] not in ALLOWED_CL_STD:
                raise SpecError(where, f"{t!r}: -cl-std must be one of {', '.join(ALLOWED_CL_STD)}")
            out.append(t)
        elif t in ALLOWED_FLAGS:
            out.append(t)
        else:
            why = ("include paths and anything that reads or writes files are not allowed"
                   if t.startswith(("-I", "@", "-include", "-o", "-x", "-save", "-emit", "-MF", "-M", "-isystem",
                                    "-iquote", "-idirafter", "--"))
                   else "not an allowed option")
            raise SpecError(where, f"{t!r}: {why} (allowed: -D NAME[=VALUE], -cl-std=CL1.x|CL2.0|CL3.0, "
                                   f"{', '.join(sorted(ALLOWED_FLAGS))})")
        i += 1
    return tuple(out)


# --- what a scan of the source tells ---------------------------------------------------------------------

MAX_SCANNED_KERNELS = 256
SCAN_WINDOW = 2000  # characters around a `kernel` keyword read for its attributes and name
PARAMS_WINDOW = 16384  # characters read for its parameter list
_ADDRESS = {"__global": "global", "global": "global", "__constant": "constant", "constant": "constant",
            "__local": "local", "local": "local", "__private": "private", "private": "private"}
_KERNEL_KW = re.compile(r"\b(?:__kernel|kernel)\b")
_KERNEL_NAME = re.compile(r"\bvoid\s+([A-Za-z_]\w*)\s*\(")
_REQD = re.compile(r"\breqd_work_group_size\s*\(")
_DEFINE_LINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+([A-Za-z_]\w*)[ \t]+([^\n]*)$", re.M)


@dataclass(frozen=True)
class ParamSig:
    """A kernel parameter as written in the source."""

    text: str  # the declaration, whitespace collapsed ("__global const float *a")
    name: str
    address: str  # global | constant | local | private
    pointer: bool
    const: bool
    opaque: str | None  # "image2d_t", "sampler_t", "pipe", ... (a type this runner does not take)


@dataclass(frozen=True)
class KernelSig:
    name: str
    params: tuple[ParamSig, ...]
    reqd_work_group_size: tuple[int, int, int] | None  # None: none declared, or not evaluable here
    reqd_text: str | None  # the attribute's arguments as written ("TS, TS/WPT, 1")


def _param(text: str) -> ParamSig:
    t = " ".join(text.replace("*", " * ").split())
    words = re.findall(r"[A-Za-z_]\w*", t)
    name = words[-1] if words else ""
    address = next((_ADDRESS[w] for w in words if w in _ADDRESS), "private")
    opaque = next((w for w in words if w in OPAQUE_TYPES or w == "pipe"), None)
    pointer = "*" in t or "[" in t
    if opaque is None and not pointer:
        opaque = next((w for w in words[:-1] if w in FORBIDDEN_ARG_TYPES), None)
    const = "const" in words[: max(0, len(words) - 1)] and (not pointer or t.index("const") < t.index("*")
                                                            if "*" in t else True)
    return ParamSig(t.replace(" * ", " *").replace("* ", "*"), name, address, pointer, const, opaque)


def _split_params(text: str) -> list[str]:
    out: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur))
    return [p for p in (x.strip() for x in out) if p and p != "void"]


def _balanced(src: str, open_at: int) -> int:
    """Index just past the parenthesis that closes the one at `open_at` (len(src) if none)."""
    depth = 0
    for i in range(open_at, len(src)):
        if src[i] == "(":
            depth += 1
        elif src[i] == ")":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(src)


def defines_of(src: str, build_options: tuple[str, ...]) -> dict[str, str]:
    """Object-like macros: `#define NAME VALUE` lines of the source, overridden by `-D` options (the usual
    `#ifndef TS / #define TS 16` pattern gives the option precedence)."""
    d = {m.group(1): m.group(2).strip() for m in _DEFINE_LINE.finditer(src) if not m.group(2).startswith("(")}
    for o in build_options:
        if o.startswith("-D"):
            name, eq, value = o[2:].partition("=")
            d[name] = value if eq else "1"
    return d


def evaluate(expr: str, defines: dict[str, str], depth: int = 0) -> int | None:
    """An integer constant expression with macros expanded, or None if it is not one this can read."""
    if depth > 16:
        return None

    def sub(m: re.Match[str]) -> str:
        v = defines.get(m.group(0))
        if v is None:
            raise KeyError(m.group(0))
        got = evaluate(v, defines, depth + 1)
        if got is None:
            raise KeyError(m.group(0))
        return str(got)

    try:
        text = re.sub(r"(?<![0-9.])[A-Za-z_]\w*", sub, expr)
    except KeyError:
        return None
    text = re.sub(r"(?<=[0-9])[uUlL]+\b", "", text)
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        return None
    return _eval(tree.body)


def _eval(n: ast.AST) -> int | None:
    if isinstance(n, ast.Constant) and isinstance(n.value, int) and not isinstance(n.value, bool):
        return n.value
    if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub | ast.UAdd):
        v = _eval(n.operand)
        return None if v is None else (-v if isinstance(n.op, ast.USub) else v)
    if isinstance(n, ast.BinOp):
        a, b = _eval(n.left), _eval(n.right)
        if a is None or b is None or abs(a) > 1 << 40 or abs(b) > 1 << 40:
            return None
        ops: dict[type, Any] = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b,
                                ast.Div: lambda: int(a / b) if b else None, ast.FloorDiv: lambda: a // b if b else None,
                                ast.Mod: lambda: a % b if b else None, ast.LShift: lambda: a << b if 0 <= b < 40 else None,
                                ast.RShift: lambda: a >> b if 0 <= b < 64 else None}
        f = ops.get(type(n.op))
        return f() if f is not None else None
    return None


def kernel_signatures(src: str, build_options: tuple[str, ...] = (),
                      names: list[str] | None = None) -> dict[str, KernelSig]:
    """The kernels declared in `src` (only `names`, when given), with their parameters and required work-group
    size (best effort, bounded work on any input)."""
    return dict(_signatures(src, tuple(build_options), None if names is None else tuple(names)))


@functools.lru_cache(maxsize=SCANNED_SOURCES)
def _signatures(src: str, build_options: tuple[str, ...], names: tuple[str, ...] | None) -> dict[str, KernelSig]:
    text = strip_comments(src)
    defines = defines_of(text, build_options)
    out: dict[str, KernelSig] = {}
    if names is None:
        found = [m for _, m in zip(range(MAX_SCANNED_KERNELS), _KERNEL_NAME.finditer(text), strict=False)]
    else:
        found = []
        for name in names[:MAX_SCANNED_KERNELS]:
            for _, m in zip(range(8), re.finditer(rf"\bvoid\s+({re.escape(name)})\s*\(", text), strict=False):
                found.append(m)
    for nm in found:
        lo = max(0, nm.start() - SCAN_WINDOW)
        kws = list(_KERNEL_KW.finditer(text, lo, nm.start()))
        kw = kws[-1] if kws else None  # the last `kernel` keyword before the name
        if kw is None or nm.group(1) in out:
            continue
        start = max(text.rfind(";", lo, kw.start()), text.rfind("}", lo, kw.start()),
                    text.rfind("\n#", lo, kw.start()), lo - 1)
        between = text[kw.end():nm.start()]
        if ";" in between or "{" in between or "}" in between:
            continue  # that keyword belongs to another declaration
        decl = text[start + 1:nm.start()]
        close = _balanced(text[:nm.end() + PARAMS_WINDOW], nm.end() - 1)
        params = tuple(_param(p) for p in _split_params(text[nm.end():close - 1]))
        reqd = reqd_text = None
        r = _REQD.search(decl)
        if r is not None:
            end = _balanced(decl, r.end() - 1)
            reqd_text = " ".join(decl[r.end():end - 1].split())
            dims = [evaluate(x, defines) for x in _split_params(reqd_text)]
            if len(dims) == 3 and all(d is not None and d > 0 for d in dims):
                reqd = (int(dims[0]), int(dims[1]), int(dims[2]))  # type: ignore[arg-type]
        out[nm.group(1)] = KernelSig(nm.group(1), params, reqd, reqd_text)
    return out


def check_against_source(spec: ComputeSpec, sigs: Mapping[str, KernelSig]) -> None:
    """What the source alone shows wrong (before any build or transfer): a parameter this runner cannot bind
    (image, sampler, pipe, bool, size_t) and a `reqd_work_group_size` the launch does not use."""
    for li, ln in enumerate(spec.launches):
        sig = sigs.get(ln.kernel)
        if sig is None:
            continue
        where = spec.launch_where(li)
        for j, p in enumerate(sig.params):
            if p.opaque is None:
                continue
            label = _launch_arg_label(spec, ln, j, where)
            if p.opaque in ("bool", "size_t", "ptrdiff_t", "intptr_t", "uintptr_t"):
                why = (f"OpenCL does not allow {p.opaque} kernel parameters (their size differs between host and "
                       f"device); declare it uint/ulong")
            else:
                what = ("a sampler" if p.opaque == "sampler_t" else "a pipe" if p.opaque == "pipe"
                        else "an image" if p.opaque.startswith("image") else f"a {p.opaque}")
                why = (f"{what}: compute jobs take buffers, scalars, vectors, structs and __local memory, not "
                       f"images, samplers or pipes; pass the pixels as a __global buffer (e.g. uchar4* or float4*) "
                       f"and index it yourself (see examples/compute/convolution.cl)")
            raise SpecError(label, f"kernel {ln.kernel!r} parameter {j} '{p.text}' is {why}")
        if sig.reqd_work_group_size is not None:
            reqd = sig.reqd_work_group_size
            fld = f"{where}.local_size" if where else "local_size"
            want = list(reqd[:len(ln.global_size)])
            if ln.local_size is None:
                raise SpecError(fld, f"kernel {ln.kernel!r} declares reqd_work_group_size({sig.reqd_text}) = "
                                     f"{list(reqd)}: give local_size {want} (OpenCL refuses a launch without it)")
            padded = tuple(ln.local_size) + (1,) * (3 - len(ln.local_size))
            if padded != reqd:
                raise SpecError(fld, f"{list(ln.local_size)} differs from kernel {ln.kernel!r}'s "
                                     f"reqd_work_group_size({sig.reqd_text}) = {list(reqd)}: give local_size {want}")


def _launch_arg_label(spec: ComputeSpec, ln: Launch, j: int, where: str) -> str:
    if j < len(ln.args):
        a = ln.args[j]
        if isinstance(a, int):
            return f"args[{a}]"
        return f"{where}.args[{j}]" if where else f"args[{j}]"
    return f"{where}.args" if where else "args"
