"""An implicit-TLS (SMTPS) port: clients that open a connection and never send a ClientHello are
bounded by the server's timeout (not asyncio's 60 s) and count toward the connection cap, so
they cannot hold more descriptors than the cap allows, nor lock honest clients out for long."""

from __future__ import annotations

import socket
import ssl
import time

import pytest

from tests.support import running
from typed_smtpd._connections import TLS_BY_HAND

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.tls_fixtures"]

IDLE = 1.0
CAP = 3


def closed_soon(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.skipif(not TLS_BY_HAND, reason="asyncio runs implicit-TLS handshakes on 3.10")
def test_stalled_handshakes_are_bounded_and_counted(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    with running(ssl_context=server_context, max_connections=CAP, timeout=IDLE) as server:
        stalled = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(CAP)]
        time.sleep(0.2)
        started = time.monotonic()
        # The cap is full of handshakes: more connections are dropped at once, unanswered.
        extra = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
        assert all(closed_soon(sock, 2.0) for sock in extra)
        assert time.monotonic() - started < 2.0
        # The stalled ones are cut off at the server's timeout, not after a minute.
        assert all(closed_soon(sock, IDLE + 2.0) for sock in stalled)
        assert time.monotonic() - started < IDLE + 2.5
        # And an honest client is served right away.
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
            client_context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            assert tls.recv(1024).startswith(b"220 ")
            tls.sendall(b"QUIT\r\n")
            assert tls.recv(1024).startswith(b"221")
        for sock in stalled + extra:
            sock.close()
    stats = server.stats
    assert stats.tls_failures >= CAP
    assert stats.connections_refused >= 3
