"""Interception: the application's own smtplib and aiosmtplib clients reach the in-memory fakes.

The code under test is written as an application would write it (host names, ports, TLS
contexts that check certificates); no socket is opened, and with ``socket.socket`` made to fail
everything still works.
"""

from __future__ import annotations

import asyncio
import smtplib
import socket
import ssl
from collections.abc import Iterator

import aiosmtplib
import pytest

from typed_smtpd.session import Envelope, Session
from typed_smtpd.smtp import SMTP
from typed_smtpd.testing import FakeSMTPServer, FaultInjector, SocketpairSMTPServer
from typed_smtpd.testing.intercept import Interception, MemorySocket, MemoryTLSSocket, Target
from typed_smtpd.testing.server import LocalSMTPServer, ServerOptions, _PasswordCheck

HOST = "smtp.example.com"
MESSAGE = "From: app@example.com\r\nTo: anne@example.net\r\nSubject: Welcome\r\n\r\nHello!\r\n"


# --- the application under test -----------------------------------------------------------------


def send_welcome(address: str, *, port: int = 587) -> None:
    """Submission with STARTTLS and AUTH, as an application does it."""
    with smtplib.SMTP(HOST, port, timeout=5) as client:
        client.starttls(context=ssl.create_default_context())
        client.login("app", "secret")
        client.sendmail("app@example.com", [address], MESSAGE)


def send_welcome_smtps(address: str) -> None:
    with smtplib.SMTP_SSL(HOST, 465, timeout=5, context=ssl.create_default_context()) as client:
        client.login("app", "secret")
        client.sendmail("app@example.com", [address], MESSAGE)


async def send_welcome_async(address: str, **options: object) -> None:
    await aiosmtplib.send(
        MESSAGE,
        sender="app@example.com",
        recipients=[address],
        hostname=HOST,
        username="app",
        password="secret",
        timeout=5,
        **options,  # type: ignore[arg-type]
    )


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[SocketpairSMTPServer]:
    with SocketpairSMTPServer(authenticator=_PasswordCheck("app", "secret"), timeout=5) as server:
        yield server


@pytest.fixture
def no_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to make a socket fails the test (loops already running keep theirs)."""

    monkeypatch.setattr(socket, "socket", _refuse)


def _refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("a socket was opened")


# --- smtplib ------------------------------------------------------------------------------------


def test_smtplib_with_starttls_and_auth_reaches_the_fake(
    server: SocketpairSMTPServer, no_sockets: None
) -> None:
    with server.intercept(HOST, 587):
        send_welcome("anne@example.net")
    [message] = server.wait_for_messages(1)
    assert message.rcpt_tos == ("anne@example.net",)
    assert message.message["Subject"] == "Welcome"
    assert message.tls and message.authenticated and message.auth_data == "app"


def test_smtplib_ssl_speaks_implicit_tls_on_port_465(
    server: SocketpairSMTPServer, no_sockets: None
) -> None:
    with server.intercept(HOST, 465):
        send_welcome_smtps("bart@example.net")
    [message] = server.wait_for_messages(1)
    assert message.tls and message.tls_version is not None and message.authenticated


def test_the_socket_and_tls_stand_ins_are_what_smtplib_holds(
    server: SocketpairSMTPServer,
) -> None:
    with server.intercept(HOST, 587), smtplib.SMTP(HOST, 587, timeout=5) as client:
        assert isinstance(client.sock, MemorySocket)
        assert client.sock.getpeername() == (HOST, 587)
        assert client.ehlo()[0] == 250
        client.starttls(context=ssl.create_default_context())
        assert isinstance(client.sock, MemoryTLSSocket)
        assert client.sock.version() is not None
        assert client.sock.getpeercert()["subjectAltName"]  # type: ignore[index]
        assert client.noop()[0] == 250


def test_a_server_that_drops_the_connection_is_seen_by_smtplib(
    server: SocketpairSMTPServer,
) -> None:
    with server.intercept(HOST, 25), smtplib.SMTP(HOST, 25, timeout=5) as client:
        client.ehlo()
        for connection in server.recorder.messages:  # nothing yet
            raise AssertionError(connection)
        client.docmd("QUIT")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()


def test_a_read_waits_no_longer_than_the_socket_timeout() -> None:
    class Silent:
        async def handle_NOOP(
            self, server: SMTP, session: Session, envelope: Envelope, arg: str
        ) -> str:
            await asyncio.sleep(5)
            return "250 OK"

    with (
        SocketpairSMTPServer(Silent(), timeout=5) as server,
        server.intercept(HOST, 25),
        smtplib.SMTP(HOST, 25, timeout=0.2) as client,
    ):
        client.ehlo()
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()


# --- aiosmtplib ---------------------------------------------------------------------------------


def test_aiosmtplib_plain_starttls_and_implicit_tls(
    server: SocketpairSMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        await send_welcome_async("c@example.net", port=587, start_tls=True)
        await send_welcome_async("d@example.net", port=465, use_tls=True)

    loop = asyncio.new_event_loop()  # it makes a socket pair of its own: before the ban
    try:
        with monkeypatch.context() as patch:
            patch.setattr(socket, "socket", _refuse)
            with server.intercept(HOST, 587), server.intercept(HOST, 465):
                loop.run_until_complete(scenario())
    finally:
        loop.close()
    messages = server.wait_for_messages(2)
    assert [m.rcpt_tos for m in messages] == [("c@example.net",), ("d@example.net",)]
    assert all(m.tls and m.authenticated for m in messages)


@pytest.mark.asyncio
async def test_the_async_fake_serves_aiosmtplib_in_its_own_loop() -> None:
    async with FakeSMTPServer(authenticator=_PasswordCheck("app", "secret")) as server:
        with server.intercept(HOST, 587):
            await send_welcome_async("e@example.net", port=587, start_tls=True)
        [message] = server.messages
        assert message.tls and message.authenticated
        assert message.rcpt_tos == ("e@example.net",)


@pytest.mark.asyncio
async def test_the_async_fake_serves_smtplib_from_another_thread() -> None:
    async with FakeSMTPServer(authenticator=_PasswordCheck("app", "secret")) as server:
        with server.intercept(HOST, 587):
            await asyncio.to_thread(send_welcome, "f@example.net")
        assert [m.rcpt_tos for m in server.messages] == [("f@example.net",)]


@pytest.mark.asyncio
async def test_smtplib_in_the_fakes_own_loop_is_refused_clearly() -> None:
    async with FakeSMTPServer() as server:
        with server.intercept(HOST, 25), pytest.raises(RuntimeError, match="to_thread"):
            smtplib.SMTP(HOST, 25, timeout=1)


# --- what is not intercepted --------------------------------------------------------------------


def test_other_addresses_are_left_alone(server: SocketpairSMTPServer) -> None:
    with LocalSMTPServer(ServerOptions()) as real, server.intercept(HOST, 587):
        with smtplib.SMTP(real.hostname, real.port, timeout=5) as client:
            client.sendmail("a@example.com", ["real@example.net"], MESSAGE)
        assert real.wait_for_messages(1)[0].rcpt_tos == ("real@example.net",)
    assert server.messages == []


def test_strict_interception_refuses_other_addresses(server: SocketpairSMTPServer) -> None:
    with server.intercept(HOST, 587, strict=True):
        with pytest.raises(ConnectionRefusedError, match="not an intercepted address"):
            smtplib.SMTP("smtp.elsewhere.test", 587, timeout=1)
        with pytest.raises(aiosmtplib.SMTPConnectError, match="not an intercepted address"):
            asyncio.run(aiosmtplib.SMTP(hostname="smtp.elsewhere.test", port=25).connect())


def test_the_functions_are_restored_afterwards(server: SocketpairSMTPServer) -> None:
    originals = (socket.create_connection, ssl.SSLContext.wrap_socket)
    with server.intercept(HOST, 587), server.intercept("mx.example.org", 25):
        assert socket.create_connection is not originals[0]
    assert (socket.create_connection, ssl.SSLContext.wrap_socket) == originals


def test_targets_check_themselves(server: SocketpairSMTPServer) -> None:
    with pytest.raises(ValueError, match="port"):
        Target(HOST, 0)
    with pytest.raises(ValueError, match="at least one"):
        Interception(server, [])
    interception = server.intercept(HOST.upper(), 465, (HOST, 2525), implicit_tls=False)
    assert interception.targets == (Target(HOST.upper(), 465), Target(HOST, 2525))
    assert interception.targets[0].matches(HOST, 465)


def test_without_tls_nothing_is_offered(server: SocketpairSMTPServer) -> None:
    with server.intercept(HOST, 587, tls=False), smtplib.SMTP(HOST, 587, timeout=5) as client:
        client.ehlo()
        assert not client.has_extn("starttls")


# --- faults -------------------------------------------------------------------------------------


def test_a_retry_after_a_drop_in_the_middle_of_the_upload() -> None:
    injector = FaultInjector(["data/1=drop-after:10"])
    big = MESSAGE + ("x" * 70 + "\r\n") * 100
    with SocketpairSMTPServer(injector, timeout=5) as server, server.intercept(HOST, 25):
        with pytest.raises(smtplib.SMTPServerDisconnected), smtplib.SMTP(HOST, 25) as client:
            client.sendmail("app@example.com", ["g@example.net"], big)
        with smtplib.SMTP(HOST, 25) as client:
            client.sendmail("app@example.com", ["g@example.net"], big)
        [message] = server.wait_for_messages(1)
    assert message.rcpt_tos == ("g@example.net",)
    assert [event.stage.value for event in injector.events] == ["data"]


def test_a_greeting_fault_reaches_smtplib() -> None:
    with (
        SocketpairSMTPServer(FaultInjector(["greeting=421 4.3.2 Not now"])) as server,
        server.intercept(HOST, 25),
        pytest.raises(smtplib.SMTPConnectError) as raised,
    ):
        smtplib.SMTP(HOST, 25, timeout=5)
    assert raised.value.smtp_code == 421
