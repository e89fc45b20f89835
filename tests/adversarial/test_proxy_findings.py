"""Two findings of an attack run, over real sockets: the Proxy handler never puts a bare CR, a bare
LF or a NUL on its outbound wire, whatever the inbound policy let in (so no end-of-data lookalike
reaches the next hop); and a PROXY v2 LOCAL header's address block is discarded."""

from __future__ import annotations

import smtplib
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.support import Recorder, running
from typed_smtpd.handlers import Proxy
from typed_smtpd.proto.proxy import V2_CMD, build_v2
from typed_smtpd.testing.strategies import SMUGGLING_SEQUENCES

pytestmark = pytest.mark.integration


class CapturingRelay(threading.Thread):
    """A next hop that records the DATA octets it receives, exactly as they come."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.contents: list[bytes] = []

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                self.serve(conn)

    def serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        buffer = b""

        def line() -> bytes:
            nonlocal buffer
            while b"\r\n" not in buffer:
                chunk = conn.recv(65536)
                if not chunk:
                    raise ConnectionError
                buffer += chunk
            head, buffer = buffer.split(b"\r\n", 1)
            return head

        conn.sendall(b"220 relay.test\r\n")
        try:
            while True:
                command = line().upper()
                if command.startswith(b"EHLO"):
                    conn.sendall(b"250-relay.test\r\n250 8BITMIME\r\n")
                elif command == b"DATA":
                    conn.sendall(b"354 go on\r\n")
                    while b"\r\n.\r\n" not in buffer:
                        buffer += conn.recv(65536)
                    content, buffer = buffer.split(b"\r\n.\r\n", 1)
                    self.contents.append(content + b"\r\n")
                    conn.sendall(b"250 queued\r\n")
                elif command == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 OK\r\n")
        except (ConnectionError, OSError):
            return

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def relay() -> Iterator[CapturingRelay]:
    relay = CapturingRelay()
    relay.start()
    yield relay
    relay.close()


@pytest.mark.parametrize("sequence", SMUGGLING_SEQUENCES, ids=lambda s: repr(s)[2:-1])
def test_proxy_puts_no_lookalike_on_the_next_hops_wire(
    relay: CapturingRelay, sequence: bytes
) -> None:
    content = b"Subject: x\r\n\r\nbefore" + sequence + b"MAIL FROM:<evil@x.test>\r\nafter\r\n"
    with (
        running(Proxy("127.0.0.1", relay.port), bare_newline="accept") as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as client,
    ):
        client.sendall(
            b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"
            + content.replace(b"\r\n.", b"\r\n..")
            + b".\r\nQUIT\r\n"
        )
        replies = b""
        while b"221" not in replies:
            chunk = client.recv(65536)
            if not chunk:
                break
            replies += chunk
    assert b"250 OK" in replies
    (relayed,) = relay.contents
    wire = relayed.replace(b"\r\n", b"")
    assert b"\x00" not in relayed and b"\r" not in wire and b"\n" not in wire


def test_a_proxy_v2_local_header_keeps_the_connections_own_address() -> None:
    recorder = Recorder()
    options = {"proxy_protocol_timeout": 5.0, "proxy_trusted_networks": ["127.0.0.1"]}
    with (
        running(recorder, **options) as server,  # type: ignore[arg-type]
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock,
    ):
        sock.sendall(build_v2("192.0.2.44", "198.51.100.1", 51234, 25, command=V2_CMD.LOCAL))
        client = smtplib.SMTP()
        client.sock = sock
        client.file = None
        assert client.getreply()[0] == 220
        client.sendmail("a@b.test", ["c@d.test"], b"Subject: local\r\n\r\nhi\r\n")
        client.quit()
    (session,) = recorder.sessions
    assert session.proxy_data is not None and session.proxy_data.src_addr is None
    assert session.peer[0] == "127.0.0.1"
