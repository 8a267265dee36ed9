"""Decoder fuzz: >= 100,000 random and mutated inputs through the whole receive path (frame decoder, control
messages, msgpack, stream state machine). Every input must parse or raise PeerProtocolError — no other
exception, and memory stays bounded. Seeded, so a failure reproduces; FUZZ_SEED / FUZZ_N override."""

from __future__ import annotations

import os
import random
import time

from mesh.bigtcp import messages as m
from mesh.bigtcp.framing import FLAG_ACK, FLAG_END, HEADER, MAGIC, FrameType, PeerProtocolError, encode_frame
from mesh.bigtcp.mux import Mux

MAX_FRAME = 2048
SCRATCH = 512
N = int(os.environ.get("FUZZ_N", "100000"))
SEED = int(os.environ.get("FUZZ_SEED", "20261105"))


def raw(ftype, flags, sid, payload=b"") -> bytes:
    return b"".join(bytes(p) for p in encode_frame(ftype, flags, sid, payload))


def ctl(msg, flags=0, sid=0) -> bytes:
    t, p = m.encode_control(msg)
    return raw(t, flags, sid, p)


HELLO = ctl(m.Hello(peer_id="12D3KooWfuzz", max_frame=MAX_FRAME, window=MAX_FRAME * 2, max_streams=8))


def corpus(rng: random.Random) -> list[bytes]:
    """Valid client->server byte streams that exercise every frame type and state."""
    hello = HELLO
    seeds = []
    for _ in range(40):
        parts = [hello]
        sid = 1
        for _ in range(rng.randrange(1, 8)):
            kind = rng.randrange(8)
            if kind == 0:
                parts.append(ctl(m.Open({"p": "rpc", "n": rng.randrange(100)}), rng.choice([0, FLAG_END]), sid))
                sid += 2
            elif kind == 1 and sid > 1:
                parts.append(raw(FrameType.DATA, rng.choice([0, FLAG_END]), sid - 2, rng.randbytes(rng.randrange(0, 600))))
            elif kind == 2 and sid > 1:
                parts.append(raw(FrameType.MSG, 0, sid - 2, m.pack_message({"id": 1, "m": "x", "b": {"k": [1, 2.5, None]}})))
            elif kind == 3 and sid > 1:
                parts.append(ctl(m.WindowUpdate(rng.randrange(1, 5000)), sid=sid - 2))
            elif kind == 4 and sid > 1:
                parts.append(ctl(m.Reset(rng.randrange(8), "r"), sid=sid - 2))
            elif kind == 5:
                parts.append(ctl(m.Ping(rng.randrange(2**32)), rng.choice([0, FLAG_ACK])))
            elif kind == 6:
                parts.append(ctl(m.GoAway(sid, rng.randrange(8), "bye")))
            else:
                parts.append(ctl(m.Open(), 0, sid))
                sid += 2
        seeds.append(b"".join(parts))
    return seeds


def mutate(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        op = rng.randrange(9)
        if op == 0 and b:  # flip a bit
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # random byte
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 2:  # insert random bytes
            i = rng.randrange(len(b) + 1)
            b[i:i] = rng.randbytes(rng.randrange(1, 16))
        elif op == 3 and b:  # delete a range
            i = rng.randrange(len(b))
            del b[i : i + rng.randrange(1, 32)]
        elif op == 4:  # truncate
            del b[rng.randrange(len(b) + 1) :]
        elif op == 5:  # splice another seed in
            other = rng.choice(seeds)
            i, j = rng.randrange(len(b) + 1), rng.randrange(len(other) + 1)
            b = b[:i] + other[j:]
        elif op == 6 and len(b) >= 20:  # interesting integers into header-sized slots
            i = rng.randrange(len(b) - 3)
            b[i : i + 4] = rng.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, MAX_FRAME, MAX_FRAME + 1, 2**31]).to_bytes(4, "big")
        elif op == 7:  # append a header with arbitrary fields (often valid magic/version)
            b += HEADER.pack(MAGIC, rng.choice([1, 1, 0, 2]), rng.randrange(12), rng.randrange(4), 0,
                             rng.randrange(6), rng.randrange(0, MAX_FRAME + 4), rng.randrange(2**32))
            b += rng.randbytes(rng.randrange(0, 64))
        else:  # duplicate a slice (replayed frames)
            if b:
                i = rng.randrange(len(b))
                b[i:i] = b[i : i + rng.randrange(1, 100)]
    return bytes(b)


def run_one(data: bytes, chunks: int, rng: random.Random) -> None:
    mux = Mux(client=False, peer_id="server", max_frame=MAX_FRAME, window=MAX_FRAME * 2, max_streams=4, scratch=SCRATCH)
    try:
        if chunks <= 1:
            evs = mux.receive_data(data) if data else []
        else:
            evs = []
            step = max(1, len(data) // chunks)
            for i in range(0, len(data), step):
                evs += mux.receive_data(data[i : i + step])
                assert len(mux._decoder._buf) == SCRATCH
                p = mux._decoder._payload
                assert p is None or len(p) <= MAX_FRAME
        # consuming what arrived must never fail on a peer-controlled input either
        for ev in evs:
            size = getattr(ev, "size", None) or len(getattr(ev, "data", b""))
            if size and mux.has_stream(ev.stream_id):
                mux.consumed(ev.stream_id, size)
        mux.receive_eof()
    except PeerProtocolError:
        assert mux.error is not None  # dead, and says why
    assert mux.buffered_bytes <= 4 * MAX_FRAME * 2


def test_fuzz_100k_random_and_mutated_inputs():
    rng = random.Random(SEED)
    seeds = corpus(rng)
    t0 = time.perf_counter()
    kinds = {"mutated": 0, "random": 0, "prefixed": 0}
    for i in range(N):
        r = rng.random()
        if r < 0.7:
            data = mutate(rng, rng.choice(seeds), seeds)
            kinds["mutated"] += 1
        elif r < 0.85:
            data = rng.randbytes(rng.randrange(0, 200))
            kinds["random"] += 1
        else:  # a valid HELLO then garbage: gets past the handshake check
            data = HELLO + rng.randbytes(rng.randrange(0, 200))
            kinds["prefixed"] += 1
        try:
            run_one(data, rng.choice([1, 1, 1, 3, 17]), rng)
        except Exception as e:  # pragma: no cover - the assertion message is the repro
            raise AssertionError(f"input #{i} (seed {SEED}) raised {type(e).__name__}: {e}; data={data.hex()}") from e
    assert sum(kinds.values()) >= 100_000 or N < 100_000
    print(f"fuzz: {N} inputs {kinds} in {time.perf_counter() - t0:.1f}s")
