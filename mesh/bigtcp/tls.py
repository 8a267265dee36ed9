"""TLS 1.3 for bigtcp, with certificates bound to libp2p peer ids (the libp2p TLS certificate scheme).

Each node makes a self-signed certificate for an ephemeral P-256 key and signs that key with its libp2p
identity key (extension 1.3.6.1.4.1.53594.1.1; `libp2p.security.tls.certificate`). Both sides present a
certificate; after the handshake each side extracts the peer's libp2p public key from the certificate,
checks its signature over the certificate key, and derives the peer id. OpenSSL's PKIX chain check is
skipped (there is no CA: identity is the signed extension), exactly like go/js/py-libp2p do; the
handshake still proves the peer holds the certificate key (TLS CertificateVerify).

`TlsSession` is sans-IO: an `ssl.SSLObject` over two `MemoryBIO`s. The trio adapter in transport.py
moves ciphertext between it and the socket in large reads, and decrypts straight into the frame
decoder's buffers (see the measurements at the top of transport.py).
"""

from __future__ import annotations

import ctypes
import os
import ssl
import tempfile
from dataclasses import dataclass

from cryptography import x509
from libp2p.security.tls.certificate import (
    create_cert_template,
    generate_certificate,
    pub_key_from_cert_chain,
)
from libp2p.security.tls.openssl_verify import install_skip_pkix_peer_verification

from mesh.bigtcp.framing import PeerProtocolError, TransportError
from mesh.identity import Identity, peer_id_of

ALPN = "gpumesh-bigtcp/1"


class HandshakeError(TransportError):
    """The connection could not be established or authenticated. `reason` is the metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PeerIdMismatch(HandshakeError):
    """The peer proved an identity other than the one we expected (from its advert)."""

    def __init__(self, expected: str, actual: str, address: str) -> None:
        super().__init__(
            "peer_id_mismatch",
            f"peer at {address} is {actual}, but we expected {expected}: refusing the connection "
            f"(stale advert, address reuse, or impersonation)",
        )
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True)
class TlsContexts:
    server: ssl.SSLContext
    client: ssl.SSLContext


def make_contexts(identity: Identity) -> TlsContexts:
    """Server and client contexts presenting `identity`'s libp2p certificate; TLS 1.3 only."""
    cert_pem, key_pem = generate_certificate(identity.key_pair.private_key, create_cert_template())
    contexts = []
    with tempfile.TemporaryDirectory(prefix="gpumesh-tls-") as d:
        cert_path, key_path = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        for path, text in ((cert_path, cert_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        for server_side in (True, False):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.check_hostname = False  # identity is the peer id in the certificate, not a DNS name
            ctx.load_cert_chain(cert_path, key_path)
            ctx.set_alpn_protocols([ALPN])
            _prefer_fast_suites(ctx)
            if server_side:
                ctx.num_tickets = 0  # no session resumption: every connection proves its identity
                ctx.verify_mode = ssl.CERT_OPTIONAL  # request the client's certificate ...
                _skip_pkix(ctx)  # ... but accept self-signed ones; we verify the libp2p extension ourselves
            else:
                ctx.verify_mode = ssl.CERT_NONE  # TLS 1.3 servers always send theirs; verified after the handshake
            contexts.append(ctx)
    return TlsContexts(server=contexts[0], client=contexts[1])


# TLS 1.3 suites in order of preference: AES-128-GCM is measurably cheaper than AES-256-GCM here
# (~15-40% less CPU per MiB with AES-NI), and both are standard TLS 1.3 suites.
_SUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"


def _prefer_fast_suites(ctx: ssl.SSLContext) -> None:
    # Python 3.11's ssl cannot set TLS 1.3 suites; use OpenSSL directly through the same CPython
    # SSL_CTX handle py-libp2p's verify helper uses. Best effort: OpenSSL's default order otherwise.
    try:
        # optional: py-libp2p's private openssl_verify helper (absent or changed in other versions: default order)
        from libp2p.security.tls import openssl_verify as ov

        ov._ensure_libssl()
        fn = ov._libssl.SSL_CTX_set_ciphersuites  # type: ignore[union-attr]
        fn.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        fn.restype = ctypes.c_int
        fn(ov._ssl_ctx_ptr(ctx), _SUITES)
    except Exception:  # pragma: no cover - unusual libssl; the defaults are fine, only slower
        pass


def _skip_pkix(ctx: ssl.SSLContext) -> None:
    # Python's ssl cannot request a client certificate without PKIX-verifying it; py-libp2p ships the
    # OpenSSL verify callback that go/js-libp2p's "verify the extension instead" approach needs.

    try:
        install_skip_pkix_peer_verification(ctx)
    except Exception as e:  # pragma: no cover - non-CPython or an unusual libssl
        raise RuntimeError(f"cannot set up mutual TLS with libp2p certificates on this Python: {e}") from e


def peer_id_from_certificate(der: bytes | None) -> str:
    """The libp2p peer id a DER certificate proves. Raises HandshakeError('missing_identity' | 'bad_certificate')."""
    if not der:
        raise HandshakeError("missing_identity", "peer presented no certificate (no libp2p identity)")
    try:
        cert = x509.load_der_x509_certificate(der)
        public_key = pub_key_from_cert_chain([cert])
        return peer_id_of(public_key)
    except Exception as e:
        raise HandshakeError("bad_certificate", f"peer certificate does not prove a libp2p identity: {e}") from None


class TlsSession:
    """One TLS connection's state, sans-IO. Ciphertext in with `feed`, out with `take_output`."""

    def __init__(self, contexts: TlsContexts, *, server_side: bool) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        ctx = contexts.server if server_side else contexts.client
        self.obj = ctx.wrap_bio(self._in, self._out, server_side=server_side)
        self.server_side = server_side
        # the hot calls, bound once (one Python call less per record each way)
        self.feed = self._in.write
        self.write = self.obj.write  # encrypt now (the caller may reuse its buffer afterwards)

    def handshake_step(self) -> bool:
        """Advance the handshake; True when done (False: feed more ciphertext first). Raises HandshakeError."""
        try:
            self.obj.do_handshake()
            return True
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError as e:
            raise HandshakeError("tls", f"TLS handshake failed: {e.reason or e}") from None

    def peer_id(self) -> str:
        return peer_id_from_certificate(self.obj.getpeercert(binary_form=True))

    def feed_eof(self) -> None:
        self._in.write_eof()

    @property
    def output_pending(self) -> int:
        return self._out.pending

    def take_output(self, limit: int = 256 * 1024) -> bytes:
        """Up to `limit` bytes of ciphertext (bounded pieces keep allocations reusable)."""
        return self._out.read(limit)

    def read_into(self, view: memoryview) -> int:
        """Decrypt into `view` as much as is available without more input: >0 bytes, 0 = clean TLS close,
        -1 = need more ciphertext."""
        got = 0
        n_total = len(view)
        obj, incoming = self.obj, self._in
        if not incoming.pending and not obj.pending():
            return -1  # nothing buffered: skip a read that could only raise SSLWantReadError
        try:
            while got < n_total:
                n: int = obj.read(n_total - got, view[got:] if got else view)  # type: ignore[assignment]
                if n == 0:
                    break
                got += n
                if not incoming.pending and not obj.pending():
                    break  # all buffered input decrypted: a further read would only raise SSLWantReadError
        except ssl.SSLWantReadError:
            return got if got else -1
        except ssl.SSLZeroReturnError:
            return got
        except ssl.SSLError as e:  # bad record MAC, unexpected message...: the peer's (or the path's) fault
            raise PeerProtocolError("tls", f"TLS record error: {e.reason or e}") from None
        return got

    def close_notify(self) -> None:
        try:
            self.obj.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLError):
            pass  # close_notify is queued in the output either way
