"""Tests of the in-memory fake server, its client and transport, and the socketpair variant."""

from __future__ import annotations

import asyncio
import inspect
import smtplib
import socket
import ssl
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import trustme

from typed_smtpd.hooks import HookSignatureError
from typed_smtpd.lmtp import LMTP
from typed_smtpd.proto import replies as R
from typed_smtpd.proto.state import BAD_SEQUENCE
from typed_smtpd.session import AuthResult, Envelope, LoginPassword, Session
from typed_smtpd.smtp import SMTP
from typed_smtpd.testing import (
    ClientReply,
    FakeSMTPServer,
    RecordingHandler,
    ReplyFormatError,
    ServerDisconnected,
    SocketpairSMTPServer,
    format_transcript,
)
from typed_smtpd.testing.client import ReplyReader, SocketClient, dot_stuff
from typed_smtpd.testing.fake import FakeClient, MemoryTransport

SMTP_PARAMETERS = frozenset(inspect.signature(SMTP).parameters)
MESSAGE = b"From: a@client.test\r\nTo: b@server.test\r\nSubject: hello\r\n\r\nHi.\r\n"


class RejectEvil:
    """Refuses recipients at evil.test."""

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.endswith("@evil.test"):
            return "550 5.7.1 Not here"
        envelope.rcpt_tos.append(address)
        return "250 OK"


class RefuseData:
    """Refuses every message at the end of DATA."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "554 5.6.0 Not today"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "fake-smtpd.test").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    return context


def check_password(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: object
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and data == (b"user", b"secret")
    return AuthResult(success=ok, handled=False, auth_data="user" if ok else None)


# --- the basic dialog ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_style_guide_example() -> None:
    async with FakeSMTPServer(RejectEvil()) as server:
        client = server.client()
        assert (await client.ehlo("c.test")).code == 250
        assert (await client.mail("a@c.test")).code == 250
        assert (await client.rcpt("x@evil.test")).code == 550
        assert server.messages == []


@pytest.mark.asyncio
async def test_whole_transaction_is_recorded_with_envelope_and_parsed_message() -> None:
    async with FakeSMTPServer(RejectEvil(), peer=("192.0.2.7", 4242)) as server:
        client = await server.connect()
        assert client.greeting is not None
        assert client.greeting.code == 220
        assert client.greeting.text.startswith("fake-smtpd.test ")
        await client.ehlo("client.example")
        assert (await client.mail("a@client.test", "BODY=8BITMIME", "SIZE=100")).ok
        assert (await client.rcpt("b@server.test")).ok
        assert not (await client.rcpt("c@evil.test")).ok
        final = await client.data(MESSAGE)
        assert final.matches(R.OK)
        [message] = server.messages
        assert message.mail_from == "a@client.test"
        assert message.rcpt_tos == ("b@server.test",)
        assert message.mail_options == ("BODY=8BITMIME", "SIZE=100")
        assert message.content == MESSAGE
        assert message.message["Subject"] == "hello"
        assert message.message.get_content() == "Hi.\r\n"
        assert message.peer == ("192.0.2.7", 4242)
        assert message.host_name == "client.example"
        assert message.extended_smtp
        assert not message.tls
        assert not message.authenticated


@pytest.mark.asyncio
async def test_greeting_is_read_before_the_first_command() -> None:
    async with FakeSMTPServer() as server:
        client = server.client()
        assert client.greeting is None
        reply = await client.noop()
        assert reply.matches(R.OK)
        assert client.greeting is not None
        assert client.greeting.code == 220


@pytest.mark.asyncio
async def test_client_is_an_async_context_manager() -> None:
    async with FakeSMTPServer() as server, server.client() as client:
        assert client.greeting is not None
        assert (await client.helo()).code == 250
    assert client.closed


@pytest.mark.asyncio
async def test_sequence_errors_are_catalogue_replies() -> None:
    async with FakeSMTPServer() as server:
        client = server.client()
        assert (await client.mail("a@c.test")).matches(R.HELLO_FIRST)
        await client.ehlo()
        assert (await client.rcpt("b@c.test")).matches(R.NEED_MAIL)
        assert (await client.send("DATA")).matches(R.NEED_RCPT)
        await client.mail("a@c.test")
        assert (await client.mail("a@c.test")).matches(R.MAIL_NESTED)
        assert (await client.vrfy("someone@c.test")).matches(R.CANNOT_VRFY)
        assert (await client.send("FOO")).matches(R.unrecognized("FOO"))
        assert BAD_SEQUENCE.code == 503


@pytest.mark.asyncio
async def test_helo_clients_get_no_enhanced_codes() -> None:
    async with FakeSMTPServer() as server:
        client = server.client()
        await client.helo()
        reply = await client.mail("a@c.test")
        assert reply.enhanced is None
        assert reply.matches(R.MAIL_OK)


@pytest.mark.asyncio
async def test_refused_message_is_not_recorded() -> None:
    async with FakeSMTPServer(RefuseData()) as server:
        client = server.client()
        await client.ehlo()
        await client.mail("a@c.test")
        await client.rcpt("b@c.test")
        reply = await client.data(MESSAGE)
        assert (reply.code, reply.enhanced, reply.text) == (554, "5.6.0", "Not today")
        assert server.messages == []


@pytest.mark.asyncio
async def test_dot_stuffing_and_bdat_round_trip() -> None:
    content = b".starts with a dot\r\n..two\r\n.\r\nlast\r\n"
    async with FakeSMTPServer() as server:
        client = server.client()
        await client.ehlo()
        await client.mail("a@c.test")
        await client.rcpt("b@c.test")
        assert (await client.data(content)).code == 250
        await client.mail("a@c.test")
        await client.rcpt("b@c.test")
        assert (await client.bdat(content[:7])).code == 250
        assert (await client.bdat(content[7:], last=True)).code == 250
        assert [m.content for m in server.messages] == [content, content]


@pytest.mark.asyncio
async def test_pipelined_commands_are_answered_in_order() -> None:
    async with FakeSMTPServer(RejectEvil()) as server:
        client = server.client()
        await client.ehlo()
        replies = await client.pipeline(
            "MAIL FROM:<a@c.test>", "RCPT TO:<x@evil.test>", "RCPT TO:<y@good.test>", "RSET"
        )
        assert [r.code for r in replies] == [250, 550, 250, 250]
        # One write carried all four commands; the replies came back in one batch too.
        assert server.transcript[-2].direction == "client"
        assert server.transcript[-1].data.count(b"\r\n") == 4


@pytest.mark.asyncio
async def test_quit_closes_the_connection() -> None:
    async with FakeSMTPServer() as server:
        client = server.client()
        assert (await client.quit()).matches(R.BYE)
        assert await client.read_until_closed() == b""
        assert client.closed
        with pytest.raises(ServerDisconnected, match="closed the connection"):
            await client.read_reply()


@pytest.mark.asyncio
async def test_lmtp_answers_once_per_recipient() -> None:
    async with FakeSMTPServer(server_class=LMTP) as server:
        client = server.client()
        assert (await client.ehlo()).code == 500
        assert (await client.lhlo()).code == 250
        await client.mail("a@c.test")
        await client.rcpt("b@c.test")
        await client.rcpt("c@c.test")
        replies = await client.lmtp_data(MESSAGE)
        assert [str(r) for r in replies] == ["250 2.1.5 <b@c.test> OK", "250 2.1.5 <c@c.test> OK"]
        assert server.messages[0].rcpt_tos == ("b@c.test", "c@c.test")


@pytest.mark.asyncio
async def test_handler_attributes_and_hook_errors_survive_the_wrapping() -> None:
    class Broken:
        marker = "kept"

        async def handle_RCPT(self, server: SMTP, session: Session) -> str:
            return "250 OK"

    recorder = RecordingHandler(Broken())
    assert recorder.marker == "kept"
    assert recorder.handle_RCPT == recorder.wrapped.handle_RCPT
    with pytest.raises(HookSignatureError, match="handle_RCPT"):
        async with FakeSMTPServer(Broken()):
            pass


@pytest.mark.asyncio
async def test_handler_exceptions_give_451_and_no_message() -> None:
    class Crashing:
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            raise RuntimeError("secret detail")

    async with FakeSMTPServer(Crashing()) as server:
        client = server.client()
        await client.ehlo()
        await client.mail("a@c.test")
        await client.rcpt("b@c.test")
        reply = await client.data(MESSAGE)
        assert reply.matches(R.INTERNAL_ERROR)
        assert b"secret" not in b"".join(entry.data for entry in server.transcript)
        assert server.messages == []


# --- waiting, transcripts, replies --------------------------------------------------------------


@pytest.mark.asyncio
async def test_wait_for_messages() -> None:
    async with FakeSMTPServer() as server:
        client = server.client()
        await client.ehlo()

        async def send() -> None:
            await client.mail("a@c.test")
            await client.rcpt("b@c.test")
            await client.data(MESSAGE)

        sender = asyncio.ensure_future(send())
        messages = await server.wait_for_messages(1)
        await sender
        assert len(messages) == 1
        with pytest.raises(TimeoutError, match="expected 2 message"):
            await server.wait_for_messages(2, timeout=0.01)


@pytest.mark.asyncio
async def test_transcript_shows_the_dialog() -> None:
    async with FakeSMTPServer() as server:
        client = server.client()
        await client.ehlo("c.test")
        client.send_bytes(b"NOOP\n")
        await client.read_reply()
        text = server.transcript_text()
        assert "C: EHLO c.test" in text
        assert "S: 250-fake-smtpd.test" in text
        assert "C: NOOP\\n" in text  # a bare LF is visible
        assert client.transcript == server.transcript


@pytest.mark.asyncio
@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes are new in 3.11")
async def test_failed_assertions_get_the_transcript_as_a_note() -> None:
    async def failing_test() -> None:
        async with FakeSMTPServer() as server:
            reply = await server.client().helo("c.test")
            assert reply.code == 999

    with pytest.raises(AssertionError) as failed:
        await failing_test()
    assert "C: HELO c.test" in "\n".join(failed.value.__notes__)


@pytest.mark.asyncio
async def test_timeouts_carry_the_transcript() -> None:
    async with FakeSMTPServer(timeout=0.05) as server:
        client = server.client()
        await client.ehlo()
        client.send_bytes(b"NOOP")  # no CRLF: the server waits for the rest
        with pytest.raises(TimeoutError, match="C: NOOP"):
            await client.read_reply()


def test_reply_parsing() -> None:
    reply = ClientReply.parse(b"250-fake.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
    assert reply.code == 250
    assert reply.lines == ("fake.test", "PIPELINING", "CHUNKING")
    assert reply.keywords == {"PIPELINING", "CHUNKING"}
    assert reply.enhanced is None
    multi = ClientReply.parse(b"550-5.1.1 one\r\n550 5.1.1 two\r\n")
    assert (multi.enhanced, multi.lines, multi.text) == ("5.1.1", ("one", "two"), "one\ntwo")
    assert ClientReply.parse(b"354\r\n") == ClientReply(354, ("",))
    assert not ClientReply.parse(b"421 4.3.2 bye\r\n").ok
    # An enhanced code that disagrees with the reply class is text, not an enhanced code.
    assert ClientReply.parse(b"250 5.0.0 odd\r\n").enhanced is None
    assert str(multi) == "550 5.1.1 one / two"


@pytest.mark.parametrize(
    "data",
    [b"25 OK\r\n", b"250OK\r\n", b"hello\r\n", b"250-a\r\n251 b\r\n", b"250 a\r\n250 b\r\n"],
)
def test_malformed_replies_are_refused(data: bytes) -> None:
    with pytest.raises(ReplyFormatError):
        ClientReply.parse(data)


def test_reply_reader_is_incremental() -> None:
    reader = ReplyReader()
    for byte in b"250-a\r\n250 b\r\n220 c\r\n":
        reader.feed(bytes([byte]))
    assert reader.next_reply() == ClientReply(250, ("a", "b"))
    assert reader.next_reply() == ClientReply(220, ("c",))
    assert reader.next_reply() is None
    assert reader.buffered == 0


def test_dot_stuff_and_transcript_format() -> None:
    assert dot_stuff(b"") == b".\r\n"
    assert dot_stuff(b".a\r\n.b") == b"..a\r\n..b\r\n.\r\n"
    assert format_transcript([]) == "(empty transcript)"


# --- TLS and AUTH -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_starttls_over_memory(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async with FakeSMTPServer(tls_context=server_context, authenticator=check_password) as server:
        client = server.client()
        assert "STARTTLS" in (await client.ehlo()).keywords
        assert (await client.auth("PLAIN", "user", "secret")).matches(R.AUTH_ENCRYPTION_REQUIRED)
        assert (await client.starttls(client_context)).matches(R.READY_FOR_TLS)
        assert client.tls
        assert (await client.mail("a@c.test")).matches(R.HELLO_FIRST)  # session was reset
        ehlo = await client.ehlo()
        assert "STARTTLS" not in ehlo.keywords
        assert "AUTH" in ehlo.keywords
        assert (await client.starttls(client_context)).matches(R.TLS_ALREADY_ACTIVE)
        assert (await client.auth("LOGIN", "user", "secret")).matches(R.AUTH_SUCCESS)
        await client.mail("a@c.test")
        await client.rcpt("b@c.test")
        await client.data(MESSAGE)
        [message] = server.messages
        assert message.tls
        assert message.tls_version is not None
        assert message.tls_cipher is not None
        assert message.authenticated
        assert message.auth_data == "user"
        assert (await client.quit()).code == 221
        assert "C: AUTH LOGIN" in server.transcript_text()


@pytest.mark.asyncio
async def test_implicit_tls_over_memory(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async with FakeSMTPServer(
        implicit_tls_context=server_context,
        client_tls_context=client_context,
        authenticator=check_password,
    ) as server:
        client = await server.connect()
        assert client.tls
        assert client.greeting is not None
        assert client.greeting.code == 220
        assert "AUTH" in (await client.ehlo()).keywords
        assert (await client.auth("PLAIN", "user", "secret", initial_response=False)).ok


@pytest.mark.asyncio
async def test_auth_mechanisms_and_failures() -> None:
    def cram(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if mechanism == "CRAM-MD5":
            return AuthResult(success=data.verify("secret"), handled=False)
        return check_password(server, session, envelope, mechanism, data)

    # CRAM-MD5 is opt-in where the engine has the switch (it needs the stored password).
    opt_in = {"enable_CRAM_MD5": True} if "enable_CRAM_MD5" in SMTP_PARAMETERS else {}
    async with FakeSMTPServer(authenticator=cram, auth_require_tls=False, **opt_in) as server:
        client = server.client()
        assert {"AUTH"} <= (await client.ehlo()).keywords
        assert (await client.auth("PLAIN", "user", "wrong")).matches(R.AUTH_FAILED)
        assert (await client.auth("LOGIN", "user", "wrong", initial_response=False)).code == 535
        assert (await client.auth("CRAM-MD5", "user", "secret")).matches(R.AUTH_SUCCESS)
        assert (await client.auth("PLAIN", "user", "secret")).matches(R.AUTH_ALREADY)
        with pytest.raises(ValueError, match="no built-in client support"):
            await client.auth("XOAUTH2", "user", "token")


@pytest.mark.asyncio
async def test_the_fake_opens_no_socket(
    monkeypatch: pytest.MonkeyPatch,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the fake must not open a socket")

    async with FakeSMTPServer(tls_context=server_context) as server:
        monkeypatch.setattr(socket, "socket", refuse)
        monkeypatch.setattr(socket, "socketpair", refuse)
        monkeypatch.setattr(socket, "create_connection", refuse)
        client = server.client()
        await client.ehlo()
        await client.starttls(client_context)
        await client.ehlo()
        await client.mail("a@c.test")
        await client.rcpt("b@c.test")
        assert (await client.data(MESSAGE)).code == 250
        assert (await client.quit()).code == 221
        assert len(server.messages) == 1


# --- the transport ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_memory_transport_basics() -> None:
    async with FakeSMTPServer(peer=("198.51.100.1", 1)) as server:
        client = server.client()
        transport = client.transport
        assert isinstance(transport, MemoryTransport)
        assert transport.get_extra_info("peername") == ("198.51.100.1", 1)
        assert transport.get_extra_info("sockname") == ("127.0.0.1", 25)
        assert transport.get_extra_info("nothing", "default") == "default"
        assert transport.get_write_buffer_size() == 0
        assert transport.can_write_eof()
        assert transport.get_protocol() is client.protocol
        await client.read_greeting()
        assert transport.writes == 1
        transport.pause_reading()
        assert not transport.is_reading()
        client.send_bytes(b"NOOP\r\n")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert client.transcript[-1].direction == "client"  # no reply while paused
        transport.resume_reading()
        assert (await client.read_reply()).code == 250
        transport.close()
        assert transport.is_closing()
        assert await client.read_until_closed() == b""


@pytest.mark.asyncio
async def test_client_eof_ends_the_session() -> None:
    async with FakeSMTPServer() as server:
        client = server.client()
        await client.read_greeting()
        client.send_bytes(b"NOOP\r\n")
        client.send_eof()
        assert await client.read_until_closed() == b"250 OK\r\n"  # no EHLO: no enhanced code
        await asyncio.sleep(0)
        assert client.protocol.transport is None


@pytest.mark.asyncio
async def test_clients_need_a_started_server() -> None:
    server = FakeSMTPServer()
    with pytest.raises(RuntimeError, match="async with"):
        server.client()


@pytest.mark.asyncio
async def test_connection_cap() -> None:
    async with FakeSMTPServer(max_connections=1) as server:
        first = await server.connect()
        second = server.client()
        assert (await second.read_greeting()).matches(R.TOO_MANY_CONNECTIONS)
        assert (await first.noop()).code == 250


# --- the socketpair variant for smtplib ---------------------------------------------------------


@pytest.fixture
def socketpair_server() -> Iterator[SocketpairSMTPServer]:
    with SocketpairSMTPServer(RejectEvil()) as server:
        yield server


def test_smtplib_talks_to_the_fake_through_a_socketpair(
    socketpair_server: SocketpairSMTPServer,
) -> None:
    with socketpair_server.smtp() as client:
        refused = client.sendmail("a@c.test", ["b@c.test", "x@evil.test"], MESSAGE)
        assert refused == {"x@evil.test": (550, b"5.7.1 Not here")}
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("a@c.test", ["y@evil.test"], MESSAGE)
    [message] = socketpair_server.wait_for_messages(1)
    assert message.rcpt_tos == ("b@c.test",)
    assert message.message["Subject"] == "hello"
    socketpair_server.clear()
    assert socketpair_server.messages == []


def test_socketpair_is_no_listening_port(socketpair_server: SocketpairSMTPServer) -> None:
    sock = socketpair_server.connect_socket()
    assert sock.family == socket.AF_UNIX
    sock.sendall(b"QUIT\r\n")
    data = b""
    while not data.endswith(b"Bye\r\n"):
        chunk = sock.recv(1024)
        assert chunk, f"closed early after {data!r}"
        data += chunk
    assert data.startswith(b"220 fake-smtpd.test")


def test_socketpair_lmtp() -> None:
    with SocketpairSMTPServer(server_class=LMTP) as server, server.smtp(lmtp=True) as client:
        client.ehlo_or_helo_if_needed()
        assert client.sendmail("a@c.test", ["b@c.test"], MESSAGE) == {}
    assert len(server.wait_for_messages(1)) == 1


def test_socketpair_wait_times_out() -> None:
    with SocketpairSMTPServer() as server, pytest.raises(TimeoutError, match="got 0"):
        server.wait_for_messages(1, timeout=0.01)


# --- STARTTLS: what arrives inside TLS is kept -------------------------------------------------


@pytest.mark.asyncio
async def test_command_sent_with_the_tls_finished_is_answered(
    server_context: ssl.SSLContext,
) -> None:
    """A command in the same segment as the client's last handshake flight is answered (only
    what was pipelined in the clear before the handshake is discarded)."""
    from typed_smtpd.controller import serve

    async with serve(None, hostname="127.0.0.1", port=0, tls_context=server_context) as running:
        assert running.port is not None
        client = await SocketClient.open("127.0.0.1", running.port, timeout=2.0)
        try:
            await client.ehlo()
            assert (await client.send("STARTTLS")).code == 220
            # The handshake by hand, holding back the client's last flight so that it leaves
            # in one segment with the EHLO that follows.
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = ssl._create_unverified_context().wrap_bio(incoming, outgoing)
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    client._writer.write(outgoing.read())
                    incoming.write(await client._stream_reader.read(65536))
            tls.write(b"EHLO client.test\r\n")
            client._writer.write(outgoing.read())
            answer = b""
            while b"250 " not in answer:
                data = await asyncio.wait_for(client._stream_reader.read(65536), 2.0)
                assert data, "closed"
                incoming.write(data)
                try:
                    answer += tls.read(65536)
                except ssl.SSLWantReadError:
                    continue
            assert b"250-" in answer
        finally:
            client.close()


# --- regressions: engine defects the fake found ---------------------------------------------------


class PushThenClose:
    """What aiosmtpd handlers do to refuse and hang up: push a reply, close the transport."""

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        await server.push("421 4.3.0 Going away")
        assert server.transport is not None
        server.transport.close()
        return "421 4.3.0 Going away"


@pytest.mark.asyncio
async def test_a_pushed_reply_reaches_the_client_before_close() -> None:
    async with FakeSMTPServer(PushThenClose()) as server:
        client = server.client()
        await client.ehlo()
        client.send_bytes(b"MAIL FROM:<a@c.test>\r\n")
        assert await client.read_until_closed() == b"421 4.3.0 Going away\r\n"


@pytest.mark.asyncio
@pytest.mark.parametrize("command", ["VRFY a@c.test", "HELP"])
async def test_commands_the_table_refuses_between_bdat_chunks(command: str) -> None:
    async with FakeSMTPServer() as server:
        client = server.client()
        await client.ehlo()
        await client.mail("a@c.test")
        await client.rcpt("b@c.test")
        assert (await client.bdat(b"chunk")).code == 250
        assert (await client.send(command)).code == 503


# --- write backpressure -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_memory_transport_pushes_back_on_the_real_protocol() -> None:
    """Past the high-water mark of unread replies the SMTP protocol is told to pause writing; it
    then answers nothing more until the client reads, and everything once it has."""
    loop = asyncio.get_running_loop()
    protocol = SMTP(None, hostname="mx.test")
    transport = MemoryTransport(loop, protocol, high_water=256, low_water=0)
    client = FakeClient(transport, protocol)
    protocol.connection_made(transport)
    greeting = await client.read_greeting()
    assert greeting.code == 220
    assert transport.get_write_buffer_limits() == (0, 256)

    client.send_bytes(b"NOOP\r\n" * 40)
    for _ in range(5):
        await asyncio.sleep(0)
    assert transport.writing_paused
    written = transport.get_write_buffer_size()
    assert written > 256

    client.send_bytes(b"NOOP\r\n" * 40)  # read by the engine, not answered while paused
    for _ in range(5):
        await asyncio.sleep(0)
    assert transport.get_write_buffer_size() == written
    assert transport.writing_paused

    replies = await client.read_replies(80)  # reading drains: writing resumes, the rest comes
    assert [reply.code for reply in replies] == [250] * 80
    assert not transport.writing_paused
    assert transport.get_write_buffer_size() == 0
    await client.quit()


def test_memory_transport_limits_check_themselves() -> None:
    loop = asyncio.new_event_loop()
    try:
        transport = MemoryTransport(loop, asyncio.Protocol())
        assert transport.get_write_buffer_limits() == (0, 0)
        transport.set_write_buffer_limits(1000)
        assert transport.get_write_buffer_limits() == (250, 1000)
        with pytest.raises(ValueError, match="low_water"):
            transport.set_write_buffer_limits(10, 20)
        with pytest.raises(ValueError, match="needs high_water"):
            transport.set_write_buffer_limits(None, 5)
    finally:
        loop.close()
