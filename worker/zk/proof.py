"""The binary proof format (version 1), documented in docs/proof-format.md.

    b"GMZK" | version (1 byte) | msgpack map (exact key set below)

Field elements travel as little-endian uint64 inside byte strings (extension elements as two of them, the
constant part first); every element must be canonical (< p). Decoding checks structure only -- types, key
set, lengths implied by the parameters, canonical elements -- and raises ProofFormatError with a reason;
soundness checks are the verifier's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import msgpack
import numpy as np

from . import field as F
from . import poseidon as PS
from .air import Air, get
from .spec import check_params

MAGIC = b"GMZK"
VERSION = 1
FRI_ARITY = 4
FRI_REMAINDER_MAX = 16  # fold while the degree bound exceeds this; then send the polynomial itself
HASH_COLLISION_BITS = 128  # Poseidon digest: 4 Goldilocks elements (~256 bits)
EXT_FIELD_BITS = 128
KEYS = (
    "air", "steps", "blowup", "queries", "security_bits", "public", "trace_root", "comp_root", "ood",
    "fri_roots", "remainder", "trace_open", "comp_open", "fri_open",
)  # fmt: skip


class ProofFormatError(ValueError):
    """The bytes are not a well-formed proof of this version."""


@dataclass(frozen=True)
class Params:
    """Everything the sizes of a proof follow from."""

    air: Air
    steps: int
    blowup: int
    queries: int

    @property
    def lde_size(self) -> int:
        return self.steps * self.blowup

    @property
    def fri_degrees(self) -> list[int]:
        """Degree bound of each FRI layer, layer 0 (the DEEP composition, not committed) first; the last
        is the remainder, sent as coefficients."""
        degs = [self.steps]
        while degs[-1] > FRI_REMAINDER_MAX:
            degs.append(degs[-1] // FRI_ARITY)
        return degs

    @property
    def committed_layers(self) -> int:
        return max(0, len(self.fri_degrees) - 2)

    def layer_size(self, layer: int) -> int:
        return self.lde_size // FRI_ARITY**layer

    def depth(self, layer: int) -> int:
        """Merkle depth of the tree for `layer` (layer 0: the trace and composition trees)."""
        return (self.layer_size(layer) // FRI_ARITY).bit_length() - 1

    @property
    def remainder_len(self) -> int:
        return self.fri_degrees[-1]

    @property
    def trace_leaf_len(self) -> int:
        return FRI_ARITY * self.air.width

    @property
    def comp_leaf_len(self) -> int:
        return FRI_ARITY * 2 * self.air.chunks

    @property
    def ood_len(self) -> int:
        return 2 * self.air.width + self.air.chunks

    @property
    def security_bits(self) -> int:
        return security_bits(self.blowup, self.queries, self.lde_size)


def security_bits(blowup: int, queries: int, lde_size: int) -> int:
    """Conjectured security (the ethSTARK conjecture, as winterfell computes it): each query is worth
    log2(blowup) bits, counting at most as many queries as there are distinct query cosets (lde_size / 4);
    the extension field caps it at 128 - log2(2 * lde_size); the hash at 128; one bit is given up for the
    union of both. No grinding."""
    effective = min(queries, lde_size // FRI_ARITY)
    query_bits = effective * int(math.log2(blowup))
    field_bits = EXT_FIELD_BITS - int(math.log2(lde_size)) - 1
    return max(0, min(min(query_bits, field_bits) - 1, HASH_COLLISION_BITS))


@dataclass(frozen=True)
class Opening:
    """Merkle openings of one tree at a sorted list of distinct leaf indices."""

    leaves: np.ndarray  # (count, leaf_len)
    paths: np.ndarray  # (count, depth, 4)


@dataclass(frozen=True)
class Proof:
    params: Params
    public: dict[str, int]
    trace_root: np.ndarray  # (4,)
    comp_root: np.ndarray
    ood: list[F.Ext]  # trace at z (w), trace at g*z (w), composition chunks at z (k)
    fri_roots: list[np.ndarray]
    remainder: list[F.Ext]  # coefficients, low degree first
    trace_open: Opening
    comp_open: Opening
    fri_open: list[Opening]


# ---------------------------------------------------------------- encoding


def _elems(a) -> bytes:
    return np.ascontiguousarray(a, dtype="<u8").tobytes()


def _ext_bytes(values: list[F.Ext]) -> bytes:
    return _elems([v for pair in values for v in pair])


def _open_map(o: Opening) -> dict:
    return {"leaves": _elems(o.leaves), "paths": _elems(o.paths)}


def encode(proof: Proof) -> bytes:
    prm = proof.params
    body = {
        "air": prm.air.name,
        "steps": prm.steps,
        "blowup": prm.blowup,
        "queries": prm.queries,
        "security_bits": prm.security_bits,
        "public": {k: int(proof.public[k]) for k in prm.air.public_names},
        "trace_root": _elems(proof.trace_root),
        "comp_root": _elems(proof.comp_root),
        "ood": _ext_bytes(proof.ood),
        "fri_roots": [_elems(r) for r in proof.fri_roots],
        "remainder": _ext_bytes(proof.remainder),
        "trace_open": _open_map(proof.trace_open),
        "comp_open": _open_map(proof.comp_open),
        "fri_open": [_open_map(o) for o in proof.fri_open],
    }
    return MAGIC + bytes([VERSION]) + msgpack.packb(body, use_bin_type=True)


# ---------------------------------------------------------------- decoding


def _fail(msg: str):
    raise ProofFormatError(msg)


def _int(body: dict, key: str) -> int:
    v = body[key]
    if type(v) is not int:
        _fail(f"field {key!r} must be an integer")
    return v


def _arr(data, count: int, what: str) -> np.ndarray:
    if not isinstance(data, bytes):
        _fail(f"{what} must be a byte string")
    if len(data) != 8 * count:
        _fail(f"{what}: expected {count} field elements ({8 * count} bytes), got {len(data)} bytes (truncated or padded)")
    a = np.frombuffer(data, dtype="<u8").astype(np.uint64)
    if np.any(a >= np.uint64(F.P)):
        _fail(f"{what}: non-canonical field element (>= p)")
    return a


def _ext_list(data, count: int, what: str) -> list[F.Ext]:
    a = _arr(data, 2 * count, what)
    return [(int(a[2 * i]), int(a[2 * i + 1])) for i in range(count)]


def _opening(m, leaf_len: int, depth: int, what: str) -> Opening:
    """The count of openings follows from the byte length; the verifier checks it against its query set."""
    if not isinstance(m, dict) or set(m) != {"leaves", "paths"}:
        _fail(f"{what}: expected a map with 'leaves' and 'paths'")
    raw = m["leaves"]
    if not isinstance(raw, bytes) or len(raw) % (8 * leaf_len):
        _fail(f"{what}: leaves are not a whole number of {leaf_len}-element leaves (truncated?)")
    count = len(raw) // (8 * leaf_len)
    leaves = _arr(raw, count * leaf_len, f"{what} leaves").reshape(count, leaf_len)
    paths = _arr(m["paths"], count * depth * PS.DIGEST, f"{what} paths").reshape(count, depth, PS.DIGEST)
    return Opening(leaves, paths)


def parse_params(body: dict) -> Params:
    if not isinstance(body.get("air"), str):
        _fail("field 'air' must be a string")
    try:
        air = get(body["air"])
    except ValueError as e:
        _fail(str(e))
    steps, blowup, queries = _int(body, "steps"), _int(body, "blowup"), _int(body, "queries")

    try:
        check_params(steps, blowup, queries)
    except ValueError as e:
        _fail(f"bad parameters: {e}")
    return Params(air, steps, blowup, queries)


def decode_body(data: bytes) -> dict:
    if not isinstance(data, bytes | bytearray | memoryview):
        _fail("a proof is bytes")
    data = bytes(data)
    if len(data) < len(MAGIC) + 1:
        _fail(f"truncated proof: {len(data)} bytes")
    if data[: len(MAGIC)] != MAGIC:
        _fail("not a gpumesh proof (bad magic)")
    if data[len(MAGIC)] != VERSION:
        _fail(f"unsupported proof format version {data[len(MAGIC)]} (this verifier reads version {VERSION})")
    try:
        body = msgpack.unpackb(data[len(MAGIC) + 1 :], raw=False, strict_map_key=True)
    except Exception as e:  # noqa: BLE001 - msgpack raises several types for truncation/garbage
        _fail(f"truncated or malformed proof body ({type(e).__name__}: {e})")
    if not isinstance(body, dict):
        _fail("proof body must be a map")
    if set(body) != set(KEYS):
        missing, extra = set(KEYS) - set(body), set(body) - set(KEYS)
        _fail(f"proof fields differ from version {VERSION}: missing {sorted(missing)}, unexpected {sorted(map(str, extra))}")
    return body


def decode(data: bytes) -> Proof:
    body = decode_body(data)
    prm = parse_params(body)
    air = prm.air
    if _int(body, "security_bits") != prm.security_bits:
        _fail(f"stated security {body['security_bits']} bits does not match the parameters ({prm.security_bits} bits)")
    pub = body["public"]
    if not isinstance(pub, dict) or set(pub) != set(air.public_names):
        _fail(f"public values must be exactly {list(air.public_names)}")
    for k, v in pub.items():
        if type(v) is not int or not 0 <= v < F.P:
            _fail(f"public value {k!r} is not a canonical field element")
    if not isinstance(body["fri_roots"], list) or len(body["fri_roots"]) != prm.committed_layers:
        _fail(f"expected {prm.committed_layers} FRI layer roots")
    if not isinstance(body["fri_open"], list) or len(body["fri_open"]) != prm.committed_layers:
        _fail(f"expected openings for {prm.committed_layers} FRI layers")
    return Proof(
        params=prm,
        public=dict(pub),
        trace_root=_arr(body["trace_root"], PS.DIGEST, "trace root"),
        comp_root=_arr(body["comp_root"], PS.DIGEST, "composition root"),
        ood=_ext_list(body["ood"], prm.ood_len, "out-of-domain values"),
        fri_roots=[_arr(r, PS.DIGEST, f"FRI layer {i + 1} root") for i, r in enumerate(body["fri_roots"])],
        remainder=_ext_list(body["remainder"], prm.remainder_len, "FRI remainder"),
        trace_open=_opening(body["trace_open"], prm.trace_leaf_len, prm.depth(0), "trace opening"),
        comp_open=_opening(body["comp_open"], prm.comp_leaf_len, prm.depth(0), "composition opening"),
        fri_open=[
            _opening(o, 2 * FRI_ARITY, prm.depth(i + 1), f"FRI layer {i + 1} opening")
            for i, o in enumerate(body["fri_open"])
        ],
    )
