"""The binary proof format (version 2), documented in docs/proof-format.md.

    b"GMZK" | version (1 byte) | msgpack map (exact key set below)

Field elements travel as little-endian uint64 inside byte strings (extension elements as two of them, the
constant part first); every element must be canonical (< p). Digests are 32-byte strings. Decoding checks
structure only -- types, key set, lengths implied by the parameters, canonical elements -- and raises
ProofFormatError with a reason; soundness checks are the verifier's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import msgpack
import numpy as np

from . import field as F
from . import security as SEC
from .air import Air
from .airs import get
from .merkle import DIGEST_BYTES
from .params import check_params

MAGIC = b"GMZK"
VERSION = 2
FRI_ARITY = SEC.FRI_ARITY
FRI_REMAINDER_MAX = 16  # fold while the degree bound exceeds this; then send the polynomial itself
SALT = 4  # random elements appended to each trace/composition leaf of a zero-knowledge proof
KEYS = (
    "air", "steps", "blowup", "queries", "grinding", "security_bits", "provable_bits", "public", "trace_root",
    "comp_root", "ood", "fri_roots", "remainder", "pow_nonce", "trace_open", "comp_open", "fri_open",
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
    grinding: int

    @property
    def lde_size(self) -> int:
        return self.steps * self.blowup

    # ------------------------------------------------------------ zero knowledge
    @property
    def blind_rows(self) -> int:
        """Random rows after the computation: each trace column is opened at <= 4 queries points, its
        constraints there also read the next row's point (another 4 queries), and z, g z (2 extension
        values): 8 queries + 4 base-field values that must all be uniformly random."""
        return 8 * self.queries + 4 if self.air.zk else 0

    @property
    def mask_overlap(self) -> int:
        """Composition chunks overlap by this many coefficients; the overlap carries random masks that
        cancel in sum_j x^(j s) H_j, so each chunk's openings (4 queries + z) are uniformly random."""
        return 4 * self.queries + 1 if self.air.zk else 0

    @property
    def salt(self) -> int:
        return SALT if self.air.zk else 0

    @property
    def last_row(self) -> int:
        """The last computation row: transition constraints hold on rows 0 .. last_row - 1."""
        return self.steps - self.blind_rows - 1

    # ------------------------------------------------------------ composition
    @property
    def comp_bound(self) -> int:
        """Degree bound (exclusive) of H = sum alpha C / Z_T + boundary quotients, where
        1/Z_T = E(x)/(x^n - 1) with E of degree blind_rows + 1."""
        n = self.steps
        return max(self.air.numerator_degree(n) + self.blind_rows + 2 - n, n - 1)

    @property
    def chunk_stride(self) -> int:
        return self.steps - self.mask_overlap

    @property
    def chunks(self) -> int:
        n, bound = self.steps, self.comp_bound
        return 1 if bound <= n else 1 + -(-(bound - n) // self.chunk_stride)

    @property
    def comp_columns(self) -> int:
        """Base-field columns of the composition commitment: two per chunk, and the FRI randomizer's two."""
        return 2 * self.chunks + (2 if self.air.zk else 0)

    def check_statement(self, public: dict[str, int]) -> None:
        """What the AIR and zero knowledge need of the trace length; ValueError with the fix otherwise."""
        n = self.steps
        if self.comp_bound > self.lde_size:
            raise ValueError(f"blowup {self.blowup} is too small for AIR {self.air.name!r} (its composition "
                             f"has degree up to {self.comp_bound}): use blowup 8")
        if self.chunk_stride <= 0 or self.last_row + 1 < self.air.min_rows(public):
            need = self.air.min_rows(public) + self.blind_rows
            raise ValueError(f"steps {n} is too small for this {self.air.name} statement: it needs "
                             f"{self.air.min_rows(public)} computation rows + {self.blind_rows} random rows "
                             f"(zero knowledge at {self.queries} queries) = {need}; use steps >= "
                             f"{1 << (need - 1).bit_length()}")
        if self.air.zk and self.chunks > 1 and self.chunk_stride < self.mask_overlap:
            raise ValueError(f"steps {n} is too small for the composition masks; use a larger power of two")

    # ------------------------------------------------------------ FRI
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
        return FRI_ARITY * self.air.width + self.salt

    @property
    def comp_leaf_len(self) -> int:
        return FRI_ARITY * self.comp_columns + self.salt

    @property
    def ood_len(self) -> int:
        return 2 * self.air.width + self.chunks

    # ------------------------------------------------------------ security
    @property
    def security_bits(self) -> int:
        return SEC.conjectured_bits(self.blowup, self.queries, self.grinding, self.lde_size)

    @cached_property
    def provable_bits(self) -> int:
        comp_degree = (self.chunks - 1) * self.chunk_stride + self.steps
        domains = tuple(self.layer_size(layer) for layer in range(len(self.fri_degrees) - 1))
        return SEC.provable_bits(self.blowup, self.queries, self.grinding, self.steps, comp_degree, domains)


def security_bits(blowup: int, queries: int, lde_size: int, grinding: int = 0) -> int:
    return SEC.conjectured_bits(blowup, queries, grinding, lde_size)


@dataclass(frozen=True)
class Opening:
    """Merkle multiproof of one tree at a sorted list of distinct leaf indices."""

    leaves: np.ndarray  # (count, leaf_len)
    nodes: bytes  # sibling digests, 32 bytes each, in the documented order


@dataclass(frozen=True)
class Proof:
    params: Params
    public: dict[str, int]
    trace_root: bytes
    comp_root: bytes
    ood: list[F.Ext]  # trace at z (w), trace at g*z (w), composition chunks at z (chunks)
    fri_roots: list[bytes]
    remainder: list[F.Ext]  # coefficients, low degree first
    pow_nonce: int
    trace_open: Opening
    comp_open: Opening
    fri_open: list[Opening]


# ---------------------------------------------------------------- encoding


def _elems(a) -> bytes:
    return np.ascontiguousarray(a, dtype="<u8").tobytes()


def _ext_bytes(values: list[F.Ext]) -> bytes:
    return _elems([v for pair in values for v in pair])


def _open_map(o: Opening) -> dict:
    return {"leaves": _elems(o.leaves), "nodes": bytes(o.nodes)}


def encode(proof: Proof) -> bytes:
    prm = proof.params
    body = {
        "air": prm.air.name,
        "steps": prm.steps,
        "blowup": prm.blowup,
        "queries": prm.queries,
        "grinding": prm.grinding,
        "security_bits": prm.security_bits,
        "provable_bits": prm.provable_bits,
        "public": {k: int(proof.public[k]) for k in prm.air.public_names},
        "trace_root": bytes(proof.trace_root),
        "comp_root": bytes(proof.comp_root),
        "ood": _ext_bytes(proof.ood),
        "fri_roots": [bytes(r) for r in proof.fri_roots],
        "remainder": _ext_bytes(proof.remainder),
        "pow_nonce": int(proof.pow_nonce),
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


def _digest(data, what: str) -> bytes:
    if not isinstance(data, bytes) or len(data) != DIGEST_BYTES:
        _fail(f"{what} must be a {DIGEST_BYTES}-byte digest")
    return data


def _ext_list(data, count: int, what: str) -> list[F.Ext]:
    a = _arr(data, 2 * count, what)
    return [(int(a[2 * i]), int(a[2 * i + 1])) for i in range(count)]


def _opening(m, leaf_len: int, what: str) -> Opening:
    """The count of openings follows from the byte length; the verifier checks it against its query set,
    and the number of digests against the multiproof those queries need."""
    if not isinstance(m, dict) or set(m) != {"leaves", "nodes"}:
        _fail(f"{what}: expected a map with 'leaves' and 'nodes'")
    raw = m["leaves"]
    if not isinstance(raw, bytes) or len(raw) % (8 * leaf_len):
        _fail(f"{what}: leaves are not a whole number of {leaf_len}-element leaves (truncated?)")
    count = len(raw) // (8 * leaf_len)
    leaves = _arr(raw, count * leaf_len, f"{what} leaves").reshape(count, leaf_len)
    nodes = m["nodes"]
    if not isinstance(nodes, bytes) or len(nodes) % DIGEST_BYTES:
        _fail(f"{what}: nodes are not a whole number of {DIGEST_BYTES}-byte digests (truncated?)")
    return Opening(leaves, nodes)


def parse_params(body: dict) -> Params:
    if not isinstance(body.get("air"), str):
        _fail("field 'air' must be a string")
    try:
        air = get(body["air"])
    except ValueError as e:
        _fail(str(e))
    steps, blowup, queries = _int(body, "steps"), _int(body, "blowup"), _int(body, "queries")
    grinding = _int(body, "grinding")

    try:
        check_params(steps, blowup, queries, grinding, floor=0)  # the floor is the verifier's to apply
    except ValueError as e:
        _fail(f"bad parameters: {e}")
    return Params(air, steps, blowup, queries, grinding)


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
    if _int(body, "provable_bits") != prm.provable_bits:
        _fail(f"stated provable security {body['provable_bits']} bits does not match the parameters "
              f"({prm.provable_bits} bits)")
    pub = body["public"]
    if not isinstance(pub, dict) or set(pub) != set(air.public_names):
        _fail(f"public values must be exactly {list(air.public_names)}")
    for k, v in pub.items():
        if type(v) is not int or not 0 <= v < F.P:
            _fail(f"public value {k!r} is not a canonical field element")
    try:
        prm.check_statement(dict(pub))
    except ValueError as e:
        _fail(f"bad statement: {e}")
    if not isinstance(body["fri_roots"], list) or len(body["fri_roots"]) != prm.committed_layers:
        _fail(f"expected {prm.committed_layers} FRI layer roots")
    if not isinstance(body["fri_open"], list) or len(body["fri_open"]) != prm.committed_layers:
        _fail(f"expected openings for {prm.committed_layers} FRI layers")
    nonce = _int(body, "pow_nonce")
    if not 0 <= nonce < F.P:
        _fail("pow_nonce is not a canonical field element")
    return Proof(
        params=prm,
        public=dict(pub),
        trace_root=_digest(body["trace_root"], "trace root"),
        comp_root=_digest(body["comp_root"], "composition root"),
        ood=_ext_list(body["ood"], prm.ood_len, "out-of-domain values"),
        fri_roots=[_digest(r, f"FRI layer {i + 1} root") for i, r in enumerate(body["fri_roots"])],
        remainder=_ext_list(body["remainder"], prm.remainder_len, "FRI remainder"),
        pow_nonce=nonce,
        trace_open=_opening(body["trace_open"], prm.trace_leaf_len, "trace opening"),
        comp_open=_opening(body["comp_open"], prm.comp_leaf_len, "composition opening"),
        fri_open=[_opening(o, 2 * FRI_ARITY, f"FRI layer {i + 1} opening") for i, o in enumerate(body["fri_open"])],
    )
