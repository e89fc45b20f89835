"""More of what aiosmtpd users rely on when they switch: ``Controller.smtpd`` right after the
start, ``BINARYMIME`` and ``DSN`` in the EHLO reply, the AUTH mechanisms offered by default, and
the documented differences (STARTTLS inside a transaction, the headers ``prepare_message`` adds,
``ProxyData`` being frozen, the deprecation warning of the four-argument ``handle_EHLO``)."""

from __future__ import annotations

import asyncio
import dataclasses
import email.message
import smtplib
import socket
import ssl
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from tests.support import socket_dir
from typed_smtpd.controller import (
    BaseController,
    Controller,
    UnixSocketController,
    UnixSocketUnthreadedController,
    UnthreadedController,
    serve,
)
from typed_smtpd.handlers import Message
from typed_smtpd.lmtp import LMTP
from typed_smtpd.proto import replies as R
from typed_smtpd.proto.state import BAD_SEQUENCE
from typed_smtpd.proxy_protocol import ProxyData
from typed_smtpd.session import AuthResult, Envelope, LoginPassword, RecipientDSN, Session
from typed_smtpd.smtp import SMTP
from typed_smtpd.testing import FakeSMTPServer

WAIT = 10.0
HOST = "127.0.0.1"


class CountingSMTP(SMTP):
    """An SMTP that records, per class, each instance that is given a connection."""

    connected: list[CountingSMTP]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.connected.append(self)
        super().connection_made(transport)


def counting_class() -> type[CountingSMTP]:
    """A fresh subclass of :class:`CountingSMTP` with its own, empty record."""
    return type("Counting", (CountingSMTP,), {"connected": []})


_ControllerT = TypeVar("_ControllerT", bound=BaseController)


def with_factory(base: type[_ControllerT], server_class: type[SMTP]) -> type[_ControllerT]:
    """``base`` with a :meth:`factory` that builds ``server_class``."""

    def factory(self: BaseController) -> SMTP:
        return server_class(self.handler, **self.SMTP_kwargs)

    return cast("type[_ControllerT]", type(base.__name__, (base,), {"factory": factory}))


@pytest.fixture(name="socket_dir")
def socket_dir_fixture() -> Iterator[Path]:
    """A fresh, short temporary directory (Unix socket paths are length-limited)."""
    with socket_dir() as directory:
        yield directory


def greet(address: str | tuple[str, int]) -> None:
    """Connect, read the greeting, say NOOP and QUIT with a raw client."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(WAIT)
        sock.connect(address)
        stream = sock.makefile("rb")
        assert stream.readline().startswith(b"220 ")
        sock.sendall(b"NOOP\r\n")
        assert stream.readline().startswith(b"250 ")
        sock.sendall(b"QUIT\r\n")
        assert stream.readline().startswith(b"221")


# --- A. Controller.smtpd right after the start ----------------------------------------------------


@pytest.mark.parametrize("where", ["tcp", "unix"])
def test_threaded_controller_smtpd_is_the_factory_instance_after_start(
    where: str, socket_dir: Path
) -> None:
    server_class = counting_class()
    controller: Controller | UnixSocketController
    if where == "tcp":
        controller = with_factory(Controller, server_class)(object(), hostname=HOST, port=0)
    else:
        controller = with_factory(UnixSocketController, server_class)(
            object(), socket_dir / "smtp.sock"
        )
    controller.start()
    try:
        checked = controller.smtpd
        assert isinstance(checked, server_class)
        assert server_class.connected == []  # made by the start, never given a connection
        assert checked.connection_tracker is not None
        if isinstance(controller, Controller):
            greet((HOST, controller.port))
        else:
            greet(controller.unix_socket)
        # A connection replaces it with its own instance, as in aiosmtpd.
        assert server_class.connected == [controller.smtpd]
        assert controller.smtpd is not checked
    finally:
        controller.stop()
    assert controller.smtpd is None


def test_unthreaded_controller_smtpd_is_set_by_begin() -> None:
    loop = asyncio.new_event_loop()
    try:
        controller = UnthreadedController(object(), HOST, 0, loop)
        controller.begin()
        try:
            assert isinstance(controller.smtpd, SMTP)
        finally:
            controller.end()
        assert controller.smtpd is None
    finally:
        loop.close()


@pytest.mark.asyncio
async def test_unix_unthreaded_controller_smtpd_is_set_by_async_with(socket_dir: Path) -> None:
    controller_class = with_factory(UnixSocketUnthreadedController, LMTP)
    controller = controller_class(object(), socket_dir / "lmtp.sock", asyncio.get_running_loop())
    async with controller:
        assert isinstance(controller.smtpd, LMTP)
    assert controller.smtpd is None


@pytest.mark.asyncio
async def test_serve_exposes_smtpd_at_once() -> None:
    async with serve(object(), hostname=HOST, port=0, server_class=LMTP) as server:
        assert isinstance(server.smtpd, LMTP)


def test_failed_bind_leaves_smtpd_none() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((HOST, 0))
        taken.listen()
        controller = Controller(object(), hostname=HOST, port=taken.getsockname()[1])
        try:
            with pytest.raises(OSError):
                controller.start()
            assert controller.smtpd is None
        finally:
            controller.stop(no_assert=True)


# --- B. BINARYMIME and DSN in the EHLO reply -----------------------------------------------------


@pytest.mark.asyncio
async def test_ehlo_advertises_binarymime_after_chunking_and_dsn() -> None:
    async with FakeSMTPServer() as server:
        lines = (await server.client().ehlo()).lines
    assert lines[lines.index("CHUNKING") + 1] == "BINARYMIME"
    assert "DSN" in lines
    assert lines[-1] == "HELP"


@pytest.mark.asyncio
async def test_lhlo_advertises_binarymime_and_dsn() -> None:
    async with FakeSMTPServer(server_class=LMTP) as server:
        keywords = (await server.client().lhlo()).keywords
    assert {"CHUNKING", "BINARYMIME", "DSN"} <= keywords


@pytest.mark.asyncio
@pytest.mark.parametrize("decode_data", [False, True])
async def test_binarymime_is_advertised_exactly_when_accepted(decode_data: bool) -> None:
    async with FakeSMTPServer(decode_data=decode_data) as server:
        client = server.client()
        keywords = (await client.ehlo()).keywords
        reply = await client.mail("a@client.test", "BODY=BINARYMIME")
    assert ("BINARYMIME" in keywords) is (not decode_data)
    assert ("8BITMIME" in keywords) is (not decode_data)
    assert reply.ok is (not decode_data)
    if decode_data:
        assert reply.matches(R.MAIL_BAD_BODY)
    assert "DSN" in keywords


class DSNRecorder:
    """Records the DSN fields of every message's envelope."""

    def __init__(self) -> None:
        self.seen: list[tuple[object, ...]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.seen.append((envelope.dsn_ret, envelope.dsn_envid, list(envelope.rcpt_dsn)))
        return "250 OK"


@pytest.mark.asyncio
async def test_advertised_dsn_parameters_reach_the_hooks() -> None:
    handler = DSNRecorder()
    async with FakeSMTPServer(handler) as server:
        client = server.client()
        assert "DSN" in (await client.ehlo()).keywords
        assert (await client.mail("a@client.test", "RET=HDRS", "ENVID=id+2B1")).ok
        notify = ("NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;b@server.test")
        assert (await client.rcpt("b@server.test", *notify)).ok
        assert (await client.rcpt("c@server.test", "NOTIFY=NEVER")).ok
        assert (await client.data(b"Subject: x\r\n\r\nhi\r\n")).ok
    assert handler.seen == [
        (
            "HDRS",
            "id+1",
            [
                RecipientDSN(("SUCCESS", "FAILURE"), "rfc822;b@server.test"),
                RecipientDSN(("NEVER",), None),
            ],
        )
    ]


# --- C. the AUTH mechanisms offered by default ------------------------------------------------


def accept_all(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: object
) -> AuthResult:
    return AuthResult(success=isinstance(data, LoginPassword))


@pytest.mark.asyncio
async def test_auth_offers_what_aiosmtpd_offered_unless_cram_md5_is_enabled() -> None:
    options: dict[str, Any] = {"authenticator": accept_all, "auth_require_tls": False}
    async with FakeSMTPServer(**options) as server:
        assert "AUTH LOGIN PLAIN" in (await server.client().ehlo()).lines
    async with FakeSMTPServer(enable_CRAM_MD5=True, **options) as server:
        assert "AUTH CRAM-MD5 LOGIN PLAIN" in (await server.client().ehlo()).lines


# --- D. documented differences -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_starttls_inside_a_transaction_is_refused_and_keeps_it() -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    async with FakeSMTPServer(tls_context=context) as server:
        client = server.client()
        assert "STARTTLS" in (await client.ehlo()).keywords
        assert (await client.mail("a@client.test")).ok
        assert (await client.send("STARTTLS")).matches(BAD_SEQUENCE)
        assert (await client.rcpt("b@server.test")).ok  # the transaction is still there
        assert (await client.send("RSET")).ok
        assert (await client.send("STARTTLS")).code == 220


class Collector(Message[email.message.Message]):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[email.message.Message] = []

    def handle_message(self, message: email.message.Message) -> None:
        self.messages.append(message)


def test_prepare_message_replaces_incoming_envelope_headers() -> None:
    forged = (
        b"X-Peer: 203.0.113.9\r\nX-MailFrom: boss@example.com\r\nX-RcptTo: all@example.com\r\n"
        b"Subject: hi\r\n\r\nbody\r\n"
    )
    envelope = Envelope(
        mail_from="anne@example.com",
        rcpt_tos=["bart@example.com", "carl@example.com"],
        content=forged,
        original_content=forged,
    )
    message = Collector().prepare_message(Session(peer=("192.0.2.1", 40000)), envelope)
    assert message.get_all("X-Peer") == ["192.0.2.1"]  # the IP address only
    assert message.get_all("X-MailFrom") == ["anne@example.com"]
    assert message.get_all("X-RcptTo") == ["bart@example.com, carl@example.com"]
    assert message["Subject"] == "hi"


def test_x_peer_of_an_ipv6_client_and_a_unix_socket_peer() -> None:
    envelope = Envelope(mail_from="a@b.test", rcpt_tos=["c@d.test"], content=b"\r\nx\r\n")
    handler = Collector()
    ipv6 = handler.prepare_message(Session(peer=("2001:db8::1", 40000, 0, 0)), envelope)
    assert ipv6["X-Peer"] == "2001:db8::1"
    unix = handler.prepare_message(Session(peer="/run/smtp.sock"), envelope)
    assert unix["X-Peer"] == "/run/smtp.sock"


def test_proxy_data_is_frozen_and_copied_with_replace() -> None:
    data = ProxyData(version=1, error="")
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.error = "changed"  # type: ignore[misc]
    failed = data.with_error("bad header", log_prefix=False)
    assert failed is not data
    assert failed.error
    assert not failed.valid
    assert data.error == ""
    assert dataclasses.replace(data, src_port=25).src_port == 25


def test_four_argument_ehlo_warns_once_per_handler_class() -> None:
    class OldEhlo:
        async def handle_EHLO(
            self, server: SMTP, session: Session, envelope: Envelope, hostname: str
        ) -> str:
            session.host_name = hostname
            return "250 HELP"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            SMTP(OldEhlo(), hostname="mx.test")
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(deprecations) == 1
    assert "4-argument" in str(deprecations[0].message)


def test_smtplib_sees_binarymime_and_dsn_on_a_real_controller() -> None:
    with (
        Controller(object(), hostname=HOST, port=0) as controller,
        smtplib.SMTP(HOST, controller.port, timeout=WAIT) as client,
    ):
        client.ehlo("client.test")
        assert client.has_extn("binarymime")
        assert client.has_extn("dsn")
