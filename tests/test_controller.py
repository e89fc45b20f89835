"""Tests of typed_smtpd.controller: every controller and serve() against real local sockets.

Servers listen on 127.0.0.1, ::1 (when the system has IPv6) or a Unix socket in a temporary
directory, always on port 0; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import os
import smtplib
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import socket_dir
from typed_smtpd import controller as controller_module
from typed_smtpd.controller import (
    DEFAULT_READY_TIMEOUT,
    IP6_IS,
    READY_TIMEOUT_ENV,
    Controller,
    UnixSocketController,
    UnixSocketUnthreadedController,
    UnthreadedController,
    get_localhost,
    serve,
)
from typed_smtpd.lmtp import LMTP
from typed_smtpd.session import Envelope, Session
from typed_smtpd.smtp import SMTP

WAIT: float = 10.0  # upper bound for every wait in these tests; never reached when things work

MESSAGE = (
    "From: Anne Person <anne@example.com>\r\n"
    "To: Bart Person <bart@example.com>\r\n"
    "Subject: A test\r\n"
    "\r\n"
    "Hi Bart, this is Anne.\r\n"
)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


HAS_IPV6 = _ipv6_loopback()
LOOPBACKS = [
    "127.0.0.1",
    pytest.param("::1", marks=pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback")),
]


# --- handlers, clients and probes ---------------------------------------------------------------


class RecordingHandler:
    """Records the peer of every NOOP and every message it accepts."""

    def __init__(self) -> None:
        self.noop_peers: list[object] = []
        self.messages: list[tuple[str | None, list[str], bytes]] = []

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str
    ) -> str:
        self.noop_peers.append(session.peer)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content
        assert isinstance(content, bytes)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), content))
        return "250 Message accepted"


class GatedDataHandler(RecordingHandler):
    """``handle_DATA`` waits until the test opens the gate (from any thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self._gate: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self._loop = asyncio.get_running_loop()
        self._gate = asyncio.Event()
        self.entered.set()
        await self._gate.wait()
        return await super().handle_DATA(server, session, envelope)

    def open_gate(self) -> None:
        assert self._loop is not None
        assert self._gate is not None
        self._loop.call_soon_threadsafe(self._gate.set)


class RecordingSMTP(SMTP):
    """An SMTP that records each connection it is really given."""

    connections: list[object]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.connections.append(transport.get_extra_info("peername"))
        super().connection_made(transport)


def port_is_free(host: str, port: int) -> bool:
    """Whether a fresh listening socket can take ``host:port`` (TIME_WAIT does not count)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            probe.listen()
        except OSError:
            return False
    return True


def smtp_dialog(host: str, port: int, handler: RecordingHandler) -> None:
    """HELO, NOOP, a message, QUIT: checks the replies and what the handler saw."""
    with smtplib.SMTP(host, port, timeout=WAIT) as client:
        assert client.helo("client.example")[0] == 250
        assert client.noop()[0] == 250
        refused = client.sendmail("anne@example.com", ["bart@example.com"], MESSAGE)
        assert refused == {}
        local = client.sock.getsockname() if client.sock is not None else None
    assert handler.noop_peers[-1][:2] == local[:2]  # type: ignore[index]
    mail_from, rcpt_tos, content = handler.messages[-1]
    assert mail_from == "anne@example.com"
    assert rcpt_tos == ["bart@example.com"]
    assert b"Hi Bart, this is Anne." in content


def recv_reply(sock: socket.socket) -> bytes:
    """Read one complete (possibly multi-line) reply from a raw socket."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and len(lines[-2]) >= 4 and lines[-2][3:4] == b" ":
            return data


def unix_dialog(path: str, handler: RecordingHandler) -> None:
    """HELO, NOOP and QUIT over a Unix socket with a raw client."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(WAIT)
        sock.connect(path)
        assert recv_reply(sock).startswith(b"220 ")
        sock.sendall(b"HELO client.example\r\n")
        assert recv_reply(sock).startswith(b"250 ")
        sock.sendall(b"NOOP\r\n")
        assert recv_reply(sock).startswith(b"250 ")
        sock.sendall(b"QUIT\r\n")
        assert recv_reply(sock).startswith(b"221")
    assert len(handler.noop_peers) == 1


@pytest.fixture
def socket_path() -> Iterator[Path]:
    """A socket path in a fresh, short temporary directory (Unix paths are length-limited)."""
    with socket_dir() as directory:
        yield directory / "smtp.sock"


@pytest.fixture(autouse=True)
def _no_timeout_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(READY_TIMEOUT_ENV, raising=False)
    monkeypatch.delenv("AIOSMTPD_CONTROLLER_TIMEOUT", raising=False)


@contextlib.contextmanager
def loop_in_thread(loop: asyncio.AbstractEventLoop) -> Iterator[threading.Thread]:
    """Run ``loop`` forever in a thread for the duration of the block, then stop it."""
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT)


# --- get_localhost and IP6_IS ------------------------------------------------------------------


def test_get_localhost_matches_ipv6_availability() -> None:
    assert get_localhost() == ("::1" if HAS_IPV6 else "127.0.0.1")


class _FailingSocket:
    """Stands in for socket.socket: binding fails with a given errno."""

    error = 0

    def __init__(self, *args: object) -> None:
        pass

    def __enter__(self) -> _FailingSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def bind(self, address: object) -> None:
        raise OSError(self.error, os.strerror(self.error))


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (errno.EADDRNOTAVAIL, "127.0.0.1"),
        (errno.EAFNOSUPPORT, "127.0.0.1"),
        (errno.EADDRINUSE, "::1"),
    ],
)
def test_get_localhost_reads_errno(
    monkeypatch: pytest.MonkeyPatch, error: int, expected: str
) -> None:
    monkeypatch.setattr(socket, "has_ipv6", True)
    monkeypatch.setattr(_FailingSocket, "error", error)
    monkeypatch.setattr(socket, "socket", _FailingSocket)
    assert get_localhost() == expected


def test_get_localhost_raises_unknown_errno(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "has_ipv6", True)
    monkeypatch.setattr(_FailingSocket, "error", errno.EPERM)
    monkeypatch.setattr(socket, "socket", _FailingSocket)
    with pytest.raises(PermissionError):
        get_localhost()
    # The sets are documented as adjustable.
    monkeypatch.setattr(IP6_IS, "NO", {*IP6_IS.NO, errno.EPERM})
    assert get_localhost() == "127.0.0.1"


def test_get_localhost_without_ipv6_support(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "has_ipv6", False)
    assert get_localhost() == "127.0.0.1"


# --- construction --------------------------------------------------------------------------------


def test_constructor_defaults() -> None:
    handler = RecordingHandler()
    controller = Controller(handler)
    try:
        assert controller.handler is handler
        assert controller.hostname == get_localhost()
        assert controller.port == 8025
        assert controller.ready_timeout == DEFAULT_READY_TIMEOUT
        assert controller.SMTP_kwargs == {"enable_SMTPUTF8": True}
        assert controller.ssl_context is None
        assert controller.server is None
        assert controller.smtpd is None
        assert not controller.loop.is_running()
    finally:
        controller.loop.close()


def test_each_controller_gets_a_new_loop() -> None:
    first, second = Controller(RecordingHandler()), Controller(RecordingHandler())
    try:
        assert first.loop is not second.loop
    finally:
        first.loop.close()
        second.loop.close()


def test_smtp_kwargs() -> None:
    controller = Controller(
        RecordingHandler(), server_hostname="mx.example", enable_SMTPUTF8=False, timeout=200
    )
    controller.loop.close()
    assert controller.SMTP_kwargs == {
        "hostname": "mx.example",
        "enable_SMTPUTF8": False,
        "timeout": 200,
    }


def test_server_kwargs_is_deprecated_and_explicit_kwargs_win() -> None:
    with pytest.warns(DeprecationWarning, match="server_kwargs") as caught:
        controller = Controller(RecordingHandler(), timeout=200, server_kwargs={"timeout": 400})
    controller.loop.close()
    assert controller.SMTP_kwargs["timeout"] == 200
    assert caught[0].filename == __file__


def test_invalid_limits_are_rejected() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        Controller(RecordingHandler(), max_connections=0)
    with pytest.raises(ValueError, match="grace_period"):
        Controller(RecordingHandler(), grace_period=-1)


def test_ready_timeout_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(READY_TIMEOUT_ENV, "0.25")
    controller = Controller(RecordingHandler(), ready_timeout=30)
    controller.loop.close()
    assert controller.ready_timeout == 0.25


def test_aiosmtpd_timeout_variable_is_a_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOSMTPD_CONTROLLER_TIMEOUT", "3.5")
    controller = UnixSocketController(RecordingHandler(), "unused.sock")
    controller.loop.close()
    assert controller.ready_timeout == 3.5
    monkeypatch.setenv(READY_TIMEOUT_ENV, "2")
    controller = UnixSocketController(RecordingHandler(), "unused.sock")
    controller.loop.close()
    assert controller.ready_timeout == 2.0


def test_bad_ready_timeout_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(READY_TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=READY_TIMEOUT_ENV):
        Controller(RecordingHandler())


# --- the threaded TCP controller ---------------------------------------------------------------


@pytest.mark.parametrize("host", LOOPBACKS)
def test_controller_serves_and_frees_its_port(host: str) -> None:
    handler = RecordingHandler()
    controller = Controller(handler, hostname=host, port=0)
    controller.start()
    try:
        assert controller.port != 0
        server = controller.server
        assert server is not None
        assert {sock.getsockname()[1] for sock in server.sockets} == {controller.port}
        smtp_dialog(host, controller.port, handler)
        smtpd = controller.smtpd
        assert isinstance(smtpd, SMTP)
    finally:
        controller.stop()
    assert controller.server is None
    assert controller.smtpd is None
    assert len(handler.messages) == 1
    assert port_is_free(host, controller.port)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, controller.port), timeout=WAIT).close()


def test_controller_default_hostname_is_localhost() -> None:
    handler = RecordingHandler()
    with Controller(handler, port=0) as controller:
        assert controller.hostname == get_localhost()
        smtp_dialog(controller.hostname, controller.port, handler)
    assert port_is_free(controller.hostname, controller.port)


def test_controller_hostname_localhost_shares_one_port() -> None:
    handler = RecordingHandler()
    with Controller(handler, hostname="localhost", port=0) as controller:
        assert controller.server is not None
        ports = {sock.getsockname()[1] for sock in controller.server.sockets}
        assert ports == {controller.port}
        smtp_dialog("127.0.0.1", controller.port, handler)


def test_handlers_see_only_the_clients_connections() -> None:
    connections: list[object] = []

    class Recording(Controller):
        def factory(self) -> SMTP:
            smtpd = RecordingSMTP(self.handler, **self.SMTP_kwargs)
            smtpd.connections = connections
            return smtpd

    handler = RecordingHandler()
    with Recording(handler, hostname="127.0.0.1", port=0) as controller:
        clients = [smtplib.SMTP("127.0.0.1", controller.port, timeout=WAIT) for _ in range(2)]
        for client in clients:
            assert client.noop()[0] == 250
            client.quit()
    assert len(connections) == 2
    assert len(handler.noop_peers) == 2
    assert {peer[:2] for peer in connections} == {peer[:2] for peer in handler.noop_peers}  # type: ignore[index]


def test_port_in_use_raises_the_bind_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        controller = Controller(RecordingHandler(), hostname="127.0.0.1", port=port)
        try:
            with pytest.raises(OSError) as raised:
                controller.start()
            assert not isinstance(raised.value, TimeoutError)
            assert raised.value.errno == errno.EADDRINUSE
        finally:
            controller.stop()
        assert controller.server is None


def test_unavailable_address_raises_the_bind_error() -> None:
    controller = Controller(RecordingHandler(), hostname="192.0.2.1", port=0)  # TEST-NET-1
    try:
        with pytest.raises(OSError) as raised:
            controller.start()
        assert not isinstance(raised.value, TimeoutError)
    finally:
        controller.stop()


class FactoryBrokeError(Exception):
    pass


def test_failing_factory_is_reraised_by_start() -> None:
    class Broken(Controller):
        def factory(self) -> SMTP:
            raise FactoryBrokeError("no SMTP for you")

    controller = Broken(RecordingHandler(), hostname="127.0.0.1", port=0)
    try:
        with pytest.raises(FactoryBrokeError, match="no SMTP for you"):
            controller.start()
        assert controller.server is None
        assert controller.smtpd is None
    finally:
        controller.stop()


def test_failing_factory_in_context_manager_cleans_up() -> None:
    class Broken(Controller):
        def factory(self) -> SMTP:
            raise FactoryBrokeError

    controller = Broken(RecordingHandler(), hostname="127.0.0.1", port=0)
    with pytest.raises(FactoryBrokeError), controller:
        pass  # pragma: no cover
    with pytest.raises(AssertionError):
        controller.stop()


def test_timeout_when_the_loop_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(READY_TIMEOUT_ENV, "0.2")

    class Stuck(Controller):
        async def _create_server(self) -> asyncio.Server:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")  # pragma: no cover

    controller = Stuck(RecordingHandler(), hostname="127.0.0.1", port=0, ready_timeout=60)
    assert controller.ready_timeout == 0.2
    try:
        with pytest.raises(TimeoutError):
            controller.start()
    finally:
        controller.stop()
    assert controller.server is None


def test_stop_before_start_asserts() -> None:
    controller = Controller(RecordingHandler(), hostname="127.0.0.1", port=0)
    with pytest.raises(AssertionError, match="not running"):
        controller.stop()
    controller.stop(no_assert=True)


def test_start_twice_asserts() -> None:
    with (
        Controller(RecordingHandler(), hostname="127.0.0.1", port=0) as controller,
        pytest.raises(AssertionError, match="already running"),
    ):
        controller.start()


def test_start_on_a_closed_loop_is_refused() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    controller = Controller(RecordingHandler(), hostname="127.0.0.1", port=0, loop=loop)
    with pytest.raises(RuntimeError, match="closed"):
        controller.start()


def test_start_on_a_loop_running_elsewhere_is_refused() -> None:
    loop = asyncio.new_event_loop()
    try:
        with loop_in_thread(loop):
            controller = Controller(RecordingHandler(), hostname="127.0.0.1", port=0, loop=loop)
            with pytest.raises(RuntimeError, match="already running"):
                controller.start()
    finally:
        loop.close()


def test_controller_with_its_own_loop_leaves_it_open() -> None:
    loop = asyncio.new_event_loop()
    try:
        handler = RecordingHandler()
        with Controller(handler, hostname="127.0.0.1", port=0, loop=loop) as controller:
            assert controller.loop is loop
            smtp_dialog("127.0.0.1", controller.port, handler)
        assert not loop.is_closed()
        assert not loop.is_running()
    finally:
        loop.close()


def test_controller_can_restart() -> None:
    handler = RecordingHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=0)
    for _ in range(2):
        controller.start()
        try:
            smtp_dialog("127.0.0.1", controller.port, handler)
        finally:
            controller.stop()
    assert len(handler.messages) == 2
    assert port_is_free("127.0.0.1", controller.port)


def test_context_manager_starts_and_stops() -> None:
    handler = RecordingHandler()
    with Controller(handler, hostname="127.0.0.1", port=0) as controller:
        server = controller.server
        assert server is not None
        assert server.is_serving()
        smtp_dialog("127.0.0.1", controller.port, handler)
    assert controller.server is None
    assert not server.is_serving()
    assert port_is_free("127.0.0.1", controller.port)


def test_max_connections_turns_away_the_extra_client() -> None:
    handler = RecordingHandler()
    with Controller(handler, hostname="127.0.0.1", port=0, max_connections=1) as controller:
        first = smtplib.SMTP("127.0.0.1", controller.port, timeout=WAIT)
        try:
            assert first.noop()[0] == 250
            with pytest.raises(smtplib.SMTPConnectError) as refused:
                smtplib.SMTP("127.0.0.1", controller.port, timeout=WAIT)
            assert refused.value.smtp_code == 421
            assert first.noop()[0] == 250
        finally:
            first.close()


def _send_in_thread(port: int) -> concurrent.futures.Future[dict[str, tuple[int, bytes]]]:
    def send() -> dict[str, tuple[int, bytes]]:
        client = smtplib.SMTP("127.0.0.1", port, timeout=WAIT)
        try:
            return client.sendmail("anne@example.com", ["bart@example.com"], MESSAGE)
        finally:
            client.close()

    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = executor.submit(send)
    executor.shutdown(wait=False)
    return future


def _wait_until(condition: Callable[[], bool]) -> None:
    event = threading.Event()
    for _ in range(int(WAIT / 0.01)):
        if condition():
            return
        event.wait(0.01)
    raise AssertionError("condition not reached")


def test_stop_lets_the_message_in_flight_finish() -> None:
    handler = GatedDataHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=0, grace_period=WAIT)
    controller.start()
    server = controller.server
    assert server is not None
    sending = _send_in_thread(controller.port)
    assert handler.entered.wait(WAIT)
    stopper = threading.Thread(target=controller.stop)
    stopper.start()
    # The listener closes first; only then does the handler get to answer.
    _wait_until(lambda: not server.is_serving())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", controller.port), timeout=WAIT).close()
    handler.open_gate()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    assert sending.result(WAIT) == {}
    assert len(handler.messages) == 1


def test_stop_aborts_what_outlives_the_grace_period() -> None:
    handler = GatedDataHandler()  # the gate is never opened
    controller = Controller(handler, hostname="127.0.0.1", port=0)
    controller.start()
    sending = _send_in_thread(controller.port)
    assert handler.entered.wait(WAIT)
    controller.stop(grace_period=0.1)
    with pytest.raises((smtplib.SMTPException, OSError)):
        sending.result(WAIT)
    assert handler.messages == []
    assert port_is_free("127.0.0.1", controller.port)


def test_stop_from_the_loop_thread_is_refused() -> None:
    outcome: list[BaseException] = []

    with Controller(RecordingHandler(), hostname="127.0.0.1", port=0) as controller:

        def stop_inside() -> None:
            try:
                controller.stop()
            except RuntimeError as exc:
                outcome.append(exc)

        done = threading.Event()
        controller.loop.call_soon_threadsafe(stop_inside)
        controller.loop.call_soon_threadsafe(done.set)
        assert done.wait(WAIT)
    assert len(outcome) == 1


def test_smtps_with_ssl_context() -> None:
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    handler = RecordingHandler()
    with Controller(
        handler, hostname="127.0.0.1", port=0, ssl_context=server_context
    ) as controller:
        assert controller.ssl_context is server_context
        with smtplib.SMTP_SSL(
            "127.0.0.1", controller.port, context=client_context, timeout=WAIT
        ) as client:
            assert client.noop()[0] == 250
            assert isinstance(client.sock, ssl.SSLSocket)
    assert len(handler.noop_peers) == 1


def lmtp_dialog(target: str, port: int, handler: RecordingHandler) -> None:
    """LHLO, a message and QUIT with the standard library's LMTP client (TCP or Unix socket)."""
    client = smtplib.LMTP(target, port, timeout=WAIT)
    try:
        assert client.ehlo("client.example")[0] == 250  # sent as LHLO
        assert client.sendmail("anne@example.com", ["bart@example.com"], MESSAGE) == {}
        assert client.quit()[0] == 221
    finally:
        client.close()
    assert [m[:2] for m in handler.messages] == [("anne@example.com", ["bart@example.com"])]


class LMTPController(Controller):
    def factory(self) -> SMTP:
        return LMTP(self.handler, **self.SMTP_kwargs)


def test_factory_override_serves_lmtp() -> None:
    handler = RecordingHandler()
    with LMTPController(handler, hostname="127.0.0.1", port=0) as controller:
        lmtp_dialog("127.0.0.1", controller.port, handler)
        assert isinstance(controller.smtpd, LMTP)


# --- the threaded Unix socket controller --------------------------------------------------------


def test_unix_socket_controller_serves_and_removes_its_file(socket_path: Path) -> None:
    handler = RecordingHandler()
    controller = UnixSocketController(handler, unix_socket=socket_path)
    assert controller.unix_socket == str(socket_path)
    controller.start()
    try:
        assert socket_path.is_socket()
        unix_dialog(controller.unix_socket, handler)
    finally:
        controller.stop()
    assert not socket_path.exists()


def test_lmtp_over_a_unix_socket(socket_path: Path) -> None:
    class UnixLMTP(UnixSocketController):
        def factory(self) -> SMTP:
            return LMTP(self.handler, **self.SMTP_kwargs)

    handler = RecordingHandler()
    with UnixLMTP(handler, socket_path):
        lmtp_dialog(str(socket_path), 0, handler)
    assert not socket_path.exists()


def test_unix_socket_controller_context_manager_and_restart(socket_path: Path) -> None:
    handler = RecordingHandler()
    controller = UnixSocketController(handler, str(socket_path))
    for _ in range(2):
        with controller:
            unix_dialog(str(socket_path), handler)
            handler.noop_peers.clear()
        assert not socket_path.exists()


def test_unix_socket_file_replaced_by_someone_else_is_kept(socket_path: Path) -> None:
    controller = UnixSocketController(RecordingHandler(), socket_path)
    controller.start()
    try:
        socket_path.unlink()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
            other.bind(str(socket_path))
            controller.stop()
            assert socket_path.is_socket()
    finally:
        controller.stop(no_assert=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux abstract sockets")
def test_unix_socket_in_the_abstract_namespace() -> None:
    name = f"\0typed-smtpd-test-{os.getpid()}-{threading.get_ident()}"
    handler = RecordingHandler()
    with UnixSocketController(handler, name):
        unix_dialog(name, handler)


def test_unix_socket_path_too_long_raises(socket_path: Path) -> None:
    controller = UnixSocketController(RecordingHandler(), socket_path.with_name("s" * 200))
    try:
        with pytest.raises(OSError):
            controller.start()
    finally:
        controller.stop()


def test_unix_socket_factory_failure(socket_path: Path) -> None:
    class Broken(UnixSocketController):
        def factory(self) -> SMTP:
            raise FactoryBrokeError

    controller = Broken(RecordingHandler(), socket_path)
    try:
        with pytest.raises(FactoryBrokeError):
            controller.start()
    finally:
        controller.stop()
    assert not socket_path.exists()


# --- the unthreaded controllers ----------------------------------------------------------------


def test_unthreaded_controller_with_loop_in_a_thread() -> None:
    handler = RecordingHandler()
    loop = asyncio.new_event_loop()
    try:
        controller = UnthreadedController(handler, hostname="127.0.0.1", port=0, loop=loop)
        controller.begin()
        assert controller.port != 0
        with loop_in_thread(loop):
            smtp_dialog("127.0.0.1", controller.port, handler)
            loop.call_soon_threadsafe(controller.end)
            assert controller.ended.wait(WAIT)
        assert controller.server is None
        assert port_is_free("127.0.0.1", controller.port)
    finally:
        loop.close()


def test_unthreaded_controller_end_from_another_thread() -> None:
    handler = RecordingHandler()
    loop = asyncio.new_event_loop()
    try:
        controller = UnthreadedController(handler, hostname="127.0.0.1", port=0, loop=loop)
        controller.begin()
        with loop_in_thread(loop):
            smtp_dialog("127.0.0.1", controller.port, handler)
            controller.end()  # not on the loop's thread: submitted to it
            assert controller.ended.wait(WAIT)
        assert port_is_free("127.0.0.1", controller.port)
    finally:
        loop.close()


def test_unthreaded_controller_as_context_manager() -> None:
    handler = RecordingHandler()
    loop = asyncio.new_event_loop()
    try:
        with UnthreadedController(handler, hostname="127.0.0.1", port=0, loop=loop) as ctl:
            loop.run_until_complete(
                asyncio.wait_for(
                    asyncio.to_thread(smtp_dialog, "127.0.0.1", ctl.port, handler), WAIT
                )
            )
        assert ctl.ended.is_set()
        assert port_is_free("127.0.0.1", ctl.port)
        assert len(handler.messages) == 1
    finally:
        loop.close()


def test_unthreaded_controller_cancel_tasks_stops_the_loop() -> None:
    loop = asyncio.new_event_loop()
    try:
        controller = UnthreadedController(RecordingHandler(), "127.0.0.1", 0, loop)
        controller.begin()
        loop.call_soon(controller.cancel_tasks)
        loop.run_forever()  # returns because cancel_tasks stops the loop
        controller.end()
        assert controller.ended.is_set()
        assert port_is_free("127.0.0.1", controller.port)
    finally:
        loop.close()


def test_unthreaded_factory_failure_raises_from_begin() -> None:
    class Broken(UnthreadedController):
        def factory(self) -> SMTP:
            raise FactoryBrokeError

    loop = asyncio.new_event_loop()
    try:
        controller = Broken(RecordingHandler(), hostname="127.0.0.1", port=0, loop=loop)
        with pytest.raises(FactoryBrokeError):
            controller.begin()
        assert controller.server is None
    finally:
        loop.close()


def test_unthreaded_port_in_use_raises_from_begin() -> None:
    loop = asyncio.new_event_loop()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
            squatter.bind(("127.0.0.1", 0))
            squatter.listen()
            port = squatter.getsockname()[1]
            controller = UnthreadedController(RecordingHandler(), "127.0.0.1", port, loop)
            with pytest.raises(OSError) as raised:
                controller.begin()
            assert raised.value.errno == errno.EADDRINUSE
    finally:
        loop.close()


def test_unix_socket_unthreaded_controller(socket_path: Path) -> None:
    handler = RecordingHandler()
    loop = asyncio.new_event_loop()
    try:
        controller = UnixSocketUnthreadedController(handler, socket_path, loop=loop)
        assert controller.unix_socket == str(socket_path)
        controller.begin()
        with loop_in_thread(loop):
            unix_dialog(controller.unix_socket, handler)
            loop.call_soon_threadsafe(controller.end)
            assert controller.ended.wait(WAIT)
        assert not socket_path.exists()
    finally:
        loop.close()


@pytest.mark.asyncio
async def test_begin_inside_running_loop_is_refused() -> None:
    controller = UnthreadedController(
        RecordingHandler(), "127.0.0.1", 0, asyncio.get_running_loop()
    )
    with pytest.raises(RuntimeError, match="async with"):
        controller.begin()


@pytest.mark.asyncio
async def test_unthreaded_controller_async_with() -> None:
    handler = RecordingHandler()
    loop = asyncio.get_running_loop()
    async with UnthreadedController(handler, "127.0.0.1", 0, loop) as controller:
        await asyncio.wait_for(
            asyncio.to_thread(smtp_dialog, "127.0.0.1", controller.port, handler), WAIT
        )
    assert controller.ended.is_set()
    assert port_is_free("127.0.0.1", controller.port)


@pytest.mark.asyncio
async def test_unix_unthreaded_controller_async_with(socket_path: Path) -> None:
    handler = RecordingHandler()
    loop = asyncio.get_running_loop()
    async with UnixSocketUnthreadedController(handler, socket_path, loop) as controller:
        await asyncio.wait_for(
            asyncio.to_thread(unix_dialog, controller.unix_socket, handler), WAIT
        )
    assert not socket_path.exists()


@pytest.mark.asyncio
async def test_async_with_twice_is_refused() -> None:
    controller = UnthreadedController(
        RecordingHandler(), "127.0.0.1", 0, asyncio.get_running_loop()
    )
    async with controller:
        with pytest.raises(RuntimeError, match="already serving"):
            async with controller:
                pass  # pragma: no cover
        assert controller.server is not None
    assert port_is_free("127.0.0.1", controller.port)


@pytest.mark.asyncio
async def test_async_with_on_a_foreign_loop_is_refused() -> None:
    other = asyncio.new_event_loop()
    try:
        controller = UnthreadedController(RecordingHandler(), "127.0.0.1", 0, other)
        with pytest.raises(RuntimeError, match="own event loop"):
            async with controller:
                pass  # pragma: no cover
    finally:
        other.close()


# --- serve() -------------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("host", LOOPBACKS)
async def test_serve_tcp(host: str) -> None:
    handler = RecordingHandler()
    async with serve(handler, hostname=host, port=0) as server:
        assert server.hostname == host
        assert server.port is not None
        assert server.port != 0
        assert server.unix_socket is None
        assert server.server.is_serving()
        assert {sock.getsockname()[1] for sock in server.sockets} == {server.port}
        await asyncio.wait_for(asyncio.to_thread(smtp_dialog, host, server.port, handler), WAIT)
        assert isinstance(server.smtpd, SMTP)
        port = server.port
    assert not server.is_serving
    assert server.sockets == ()
    assert port_is_free(host, port)


@pytest.mark.asyncio
async def test_serve_default_hostname() -> None:
    async with serve(RecordingHandler(), port=0) as server:
        assert server.hostname == get_localhost()


@pytest.mark.asyncio
async def test_serve_unix_socket(socket_path: Path) -> None:
    handler = RecordingHandler()
    async with serve(handler, unix_socket=socket_path) as server:
        assert server.unix_socket == str(socket_path)
        assert server.hostname is None
        assert server.port is None
        await asyncio.wait_for(asyncio.to_thread(unix_dialog, str(socket_path), handler), WAIT)
    assert not socket_path.exists()


@pytest.mark.asyncio
async def test_serve_rejects_hostname_with_unix_socket(socket_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        async with serve(RecordingHandler(), hostname="127.0.0.1", unix_socket=socket_path):
            pass  # pragma: no cover


@pytest.mark.asyncio
async def test_serve_server_class_and_parameters() -> None:
    connections: list[object] = []

    def make(handler: object, **kwargs: Any) -> SMTP:
        assert kwargs["hostname"] == "mx.example"
        assert kwargs["enable_SMTPUTF8"] is True
        smtpd = RecordingSMTP(handler, **kwargs)
        smtpd.connections = connections
        return smtpd

    handler = RecordingHandler()
    async with serve(
        handler, hostname="127.0.0.1", port=0, server_class=make, server_hostname="mx.example"
    ) as server:
        assert server.port is not None
        await asyncio.wait_for(
            asyncio.to_thread(smtp_dialog, "127.0.0.1", server.port, handler), WAIT
        )
        assert isinstance(server.smtpd, RecordingSMTP)
    assert len(connections) == 1


@pytest.mark.asyncio
async def test_serve_lmtp() -> None:
    handler = RecordingHandler()
    async with serve(handler, hostname="127.0.0.1", port=0, server_class=LMTP) as server:
        assert server.port is not None
        await asyncio.wait_for(
            asyncio.to_thread(lmtp_dialog, "127.0.0.1", server.port, handler), WAIT
        )
        assert isinstance(server.smtpd, LMTP)


@pytest.mark.asyncio
async def test_serve_broken_server_class_raises() -> None:
    def broken(handler: object, **kwargs: Any) -> SMTP:
        raise FactoryBrokeError

    with pytest.raises(FactoryBrokeError):
        async with serve(RecordingHandler(), hostname="127.0.0.1", port=0, server_class=broken):
            pass  # pragma: no cover


@pytest.mark.asyncio
async def test_serve_port_in_use_raises() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(OSError) as raised:
            async with serve(RecordingHandler(), hostname="127.0.0.1", port=port):
                pass  # pragma: no cover
        assert raised.value.errno == errno.EADDRINUSE


@pytest.mark.asyncio
async def test_serve_drains_the_message_in_flight() -> None:
    handler = GatedDataHandler()
    async with serve(handler, hostname="127.0.0.1", port=0, grace_period=WAIT) as server:
        assert server.port is not None
        port = server.port
        sending = asyncio.wrap_future(_send_in_thread(port))
        await asyncio.wait_for(asyncio.to_thread(handler.entered.wait, WAIT), WAIT)
        stopping = asyncio.ensure_future(server.stop())
        for _ in range(int(WAIT / 0.01)):
            if not server.server.is_serving():
                break
            await asyncio.sleep(0.01)
        assert not server.is_serving
        handler.open_gate()
        await asyncio.wait_for(stopping, WAIT)
        assert await asyncio.wait_for(sending, WAIT) == {}
    assert len(handler.messages) == 1
    assert port_is_free("127.0.0.1", port)


@pytest.mark.asyncio
async def test_serve_max_connections() -> None:
    async with serve(RecordingHandler(), hostname="127.0.0.1", port=0, max_connections=1) as srv:
        assert srv.port is not None
        port = srv.port

        def two_clients() -> int:
            with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as first:
                assert first.noop()[0] == 250
                try:
                    smtplib.SMTP("127.0.0.1", port, timeout=WAIT)
                except smtplib.SMTPConnectError as refused:
                    return refused.smtp_code
            return 0

        assert await asyncio.wait_for(asyncio.to_thread(two_clients), WAIT) == 421


# --- internals worth pinning down ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_port_zero_on_several_addresses_retries_a_taken_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        candidates = iter([taken])
        real_probe = controller_module._ephemeral_port

        async def two_addresses(
            loop: asyncio.AbstractEventLoop, hostname: str
        ) -> list[tuple[int, tuple[Any, ...]]]:
            return [(socket.AF_INET, ("127.0.0.1", 0)), (socket.AF_INET, ("127.0.0.1", 0))]

        def probe(family: int, sockaddr: tuple[Any, ...]) -> int:
            return next(candidates, None) or real_probe(family, sockaddr)

        monkeypatch.setattr(controller_module, "_passive_addresses", two_addresses)
        monkeypatch.setattr(controller_module, "_ephemeral_port", probe)
        async with serve(RecordingHandler(), hostname="127.0.0.1", port=0) as server:
            assert server.port not in (None, 0, taken)
