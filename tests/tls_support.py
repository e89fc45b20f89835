"""Client-side TLS helpers for tests that speak to a real server over a real socket.

What lives here: :class:`TLSClient`, the byte-exact line client of :mod:`tests.support` over TLS
from the first byte (SMTPS); :func:`start_tls`, which upgrades such a client in place after the
``220`` to STARTTLS; :class:`MemoryTLS`, a client handshake driven by hand with
:class:`ssl.MemoryBIO` for tests that must control what each write carries; and the names the test
certificates are issued for, and :class:`PemFiles`, where the PEM copies of the certificates are.
The certificates themselves are fixtures in :mod:`tests.tls_fixtures`. Nothing here starts a server.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from tests.support import TIMEOUT, RawClient

#: The name the server certificate is valid for: the address every test server listens on.
SERVER_NAME = "127.0.0.1"
#: The identity in the client certificate (an e-mail subjectAltName).
CLIENT_IDENTITY = "client@example.test"


@dataclass(frozen=True)
class PemFiles:
    """The test PKI as files, for programs that cannot take an ``SSLContext``."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    #: Certificate chain and key in one file (HAProxy's ``crt`` format).
    server_combined: Path
    client_cert: Path
    client_key: Path


class TLSClient(RawClient):
    """:class:`~tests.support.RawClient` over TLS from the first byte (SMTPS)."""

    def __init__(
        self, host: str, port: int, context: ssl.SSLContext, *, timeout: float = TIMEOUT
    ) -> None:
        raw = socket.create_connection((host, port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = context.wrap_socket(raw, server_hostname=host)
        self.buffer = b""
        self.greeting = self.reply()


def start_tls(client: RawClient, context: ssl.SSLContext) -> ssl.SSLSocket:
    """Upgrade ``client`` in place after the server's ``220`` to STARTTLS.

    Whatever the server sent after its ``220`` would still sit in the client's buffer: the
    upgrade fails (``AssertionError``) if there is any, since those bytes came in the clear. After
    the handshake the server must stay silent until the client speaks: that is checked for
    :data:`QUIET_PERIOD` seconds.
    """
    assert client.buffer == b"", f"plaintext after the 220 to STARTTLS: {client.buffer!r}"
    wrapped = context.wrap_socket(client.sock, server_hostname=SERVER_NAME)
    client.sock = wrapped
    assert nothing_arrives(wrapped)
    return wrapped


#: How long a client listens for bytes that must never come (a reply nobody asked for).
QUIET_PERIOD = 0.3


def nothing_arrives(sock: socket.socket, period: float = QUIET_PERIOD) -> bool:
    """True if the server sends nothing for ``period`` seconds; raises if it sends anything."""
    previous = sock.gettimeout()
    sock.settimeout(period)
    try:
        data = sock.recv(4096)
    except TimeoutError:
        return True
    finally:
        sock.settimeout(previous)
    raise AssertionError(f"unsolicited bytes from the server: {data!r}")


class MemoryTLS:
    """The client side of TLS driven by hand over a connected socket (:class:`ssl.MemoryBIO`).

    Unlike :meth:`ssl.SSLContext.wrap_socket`, it controls what goes into each write: after
    :meth:`handshake`, ``first`` (a command) travels in the same write as the client's last
    handshake message.
    """

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=SERVER_NAME)
        self.buffer = b""

    def _receive(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed by server")
        self.incoming.write(data)

    def handshake(self, first: bytes = b"") -> None:
        """Complete the handshake; send ``first`` with the client's final handshake flight."""
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pending = self.outgoing.read()
                if pending:
                    self.sock.sendall(pending)
                self._receive()
        if first:
            self.tls.write(first)
        self.sock.sendall(self.outgoing.read())

    def send(self, data: bytes) -> None:
        """Encrypt and send ``data``."""
        self.tls.write(data)
        self.sock.sendall(self.outgoing.read())

    def line(self) -> bytes:
        """The next line the server sends, without CRLF."""
        while b"\r\n" not in self.buffer:
            try:
                self.buffer += self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._receive()
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line
