"""A client that pipelines commands and never reads the replies cannot keep its connection.

The replies fill the client's receive buffer, the server's send buffer and the transport's
buffer; the server stops reading the client's commands (its output is bounded) and the wait
counts toward the idle timeout. When the timeout fires, the connection's slot is free at once,
and the socket is cut off :data:`~typed_smtpd.smtp.CLOSE_GRACE` seconds later if the client
still does not read its ``421``.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.support import RawClient, running
from typed_smtpd.smtp import CLOSE_GRACE

pytestmark = pytest.mark.integration

IDLE = 0.5
#: NOOPs pipelined without reading: their replies (16 MiB) far exceed every buffer on the way.
FLOOD = b"NOOP\r\n" * 1_000_000


def stuff(sock: socket.socket, stop: threading.Event) -> None:
    """Send the flood without ever reading, until the server stops taking it or closes."""
    sock.settimeout(0.2)
    view = memoryview(FLOOD)
    while view and not stop.is_set():
        try:
            view = view[sock.send(view) :]
        except TimeoutError:
            continue  # the server stopped reading: the buffers are full
        except OSError:
            return  # cut off


def test_a_client_that_does_not_read_loses_its_slot_and_its_socket() -> None:
    with running(timeout=IDLE, max_connections=1) as server:
        attacker = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        attacker.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stop = threading.Event()
        flooding = threading.Thread(target=stuff, args=(attacker, stop))
        started = time.monotonic()
        flooding.start()
        try:
            # While the attacker holds the only slot, an honest client is turned away...
            time.sleep(IDLE / 2)
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as early:
                assert early.recv(64).startswith(b"421")
            # ...and once the idle timeout fired (after the server answered what it could and
            # stopped reading), it is served at once, before the grace is over.
            deadline = started + 10
            while True:
                honest = RawClient("127.0.0.1", server.port)
                if honest.greeting[0] == 220:
                    break
                honest.close()
                assert time.monotonic() < deadline, "the slot was not freed at the timeout"
                time.sleep(0.05)
            assert honest.cmd("NOOP")[0] == 250
            honest.close()
            slot_free = time.monotonic()
            # The server stopped reading the commands it could not answer...
            assert server.stats.bytes_received < len(FLOOD)
            # ...and lets go of the connection once the grace is over, though it never read.
            limit = slot_free + CLOSE_GRACE + 5
            while server.stats.connections_open and time.monotonic() < limit:
                time.sleep(0.05)
            assert server.stats.connections_open == 0, "the server kept a client that does not read"
        finally:
            stop.set()
            flooding.join(timeout=10)
            attacker.close()
