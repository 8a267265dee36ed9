"""ChaCha20 encryption of a buffer (RFC 8439 block function and counter), checked byte for byte against the
`cryptography` package.

    python examples/compute/chacha20.py [NBYTES]

Encryption and decryption are the same operation (XOR with the keystream).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from worker.compute.api import ComputeJob, In, Out, make_job, run_local

SOURCE = (Path(__file__).resolve().parent / "chacha20.cl").read_text()
BLOCK = 64


def params(key: bytes, nonce: bytes, counter: int) -> np.ndarray:
    """The 12 uint32 words the kernel reads: key (8), initial counter, nonce (3), little-endian as in the RFC."""
    if len(key) != 32 or len(nonce) != 12:
        raise ValueError("ChaCha20 takes a 32-byte key and a 12-byte nonce")
    if not 0 <= counter < 2 ** 32:
        raise ValueError("the block counter is 32 bits")
    words = np.frombuffer(key, dtype="<u4").tolist() + [counter] + np.frombuffer(nonce, dtype="<u4").tolist()
    return np.array(words, dtype=np.uint32)


def job(key: bytes, nonce: bytes, data: bytes, counter: int = 1, local_size: int | None = None) -> ComputeJob:
    """One work item per 64-byte block; `local_size` None lets the device's runtime pick the work-group size."""
    blocks = -(-len(data) // BLOCK)
    if counter + blocks > 2 ** 32:
        raise ValueError("message too long for one nonce: the 32-bit block counter would wrap")
    gsize = blocks if local_size is None else -(-blocks // local_size) * local_size
    return make_job(SOURCE, "chacha20_xor",
                    [In(np.frombuffer(data, dtype=np.uint8), "plaintext"), Out(len(data), np.uint8, "ciphertext"),
                     np.uint64(len(data)), In(params(key, nonce, counter), "params")],
                    global_size=gsize, local_size=local_size, flops_per_item=400)


def reference(key: bytes, nonce: bytes, data: bytes, counter: int = 1) -> bytes:
    """`cryptography`'s ChaCha20: its 16-byte nonce is the 4-byte little-endian counter, then the RFC nonce."""
    enc = Cipher(algorithms.ChaCha20(key, counter.to_bytes(4, "little") + nonce), mode=None).encryptor()
    return enc.update(data) + enc.finalize()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    n = int(argv[0]) if argv else (1 << 20) + 37
    key, nonce, data = os.urandom(32), os.urandom(12), os.urandom(n)
    res = run_local(job(key, nonce, data))
    ok = res["ciphertext"].tobytes() == reference(key, nonce, data)
    print(f"chacha20 {n} bytes: {'OK' if ok else 'MISMATCH'}; kernel {res.kernel_s * 1e3:.2f} ms "
          f"({n / max(res.kernel_s, 1e-9) / 1e9:.2f} GB/s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
