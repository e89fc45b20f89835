"""STARTTLS (RFC 3207) and implicit TLS over real sockets, the TLS handshake done by hand.

Covers: the upgrade and the session reset after it, the command-injection class of bugs (bytes
pipelined after ``STARTTLS`` must never be acted on), every refusal of STARTTLS, the
``require_starttls`` allow-list (LHLO included), the ``handle_STARTTLS`` hook, ``session.ssl``
under STARTTLS and under SMTPS, and failed handshakes that must hurt nobody else.
"""

from __future__ import annotations

import base64
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support import RawClient, Recorder, connected, running
from tests.tls_support import CLIENT_IDENTITY, MemoryTLS, TLSClient, nothing_arrives, start_tls
from typed_smtpd.lmtp import LMTP
from typed_smtpd.proto import replies as R
from typed_smtpd.proto.replies import Reply
from typed_smtpd.proto.state import State, Verb, sequence_error
from typed_smtpd.session import AuthResult, Envelope, Session
from typed_smtpd.smtp import SMTP

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.tls_fixtures"]


def wire(reply: Reply, *, enhanced: bool = True) -> tuple[int, str]:
    """What :meth:`RawClient.reply` reads for a catalogue reply."""
    return reply.code, reply.line(enhanced=enhanced)[4:]


def keywords(client: RawClient, command: str = "EHLO client.test") -> list[str]:
    """Greet and return the extension keywords of the 250 reply."""
    code, text = client.cmd(command)
    assert code == 250, text
    return text.splitlines()[1:]


def deliver(client: RawClient, *, greet: str | None = "EHLO client.test") -> None:
    """One message from sender@example.test to rcpt@example.test, every reply positive."""
    if greet is not None:
        assert client.cmd(greet)[0] == 250
    assert client.cmd("MAIL FROM:<sender@example.test>")[0] == 250
    assert client.cmd("RCPT TO:<rcpt@example.test>")[0] == 250
    assert client.cmd("DATA")[0] == 354
    assert client.cmd("Subject: hello\r\n\r\nbody\r\n.")[0] == 250


def closes(sock: socket.socket) -> bool:
    """Read until the server closes; True when it does (a TLS alert may come first)."""
    for _ in range(64):
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionError, ssl.SSLError):
            return True
        except TimeoutError:
            return False
    return False


@dataclass
class TLSHandler(Recorder):
    """Records the session NOOP sees, and answers ``handle_STARTTLS`` with :attr:`allow`."""

    allow: bool | None = None
    noop_sessions: list[Session] = field(default_factory=list)
    noop_ssl: list[dict[str, Any] | None] = field(default_factory=list)
    starttls_sessions: list[Session] = field(default_factory=list)

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str
    ) -> str:
        self.noop_sessions.append(session)
        self.noop_ssl.append(session.ssl)
        return "250 2.0.0 OK"


@dataclass
class GatingHandler(TLSHandler):
    """A :class:`TLSHandler` that also implements ``handle_STARTTLS``."""

    def handle_STARTTLS(self, server: SMTP, session: Session, envelope: Envelope) -> bool:
        self.starttls_sessions.append(session)
        return bool(self.allow)


@dataclass
class Authenticator:
    """Accepts alice/wonderland and records every attempt it is asked about."""

    calls: list[tuple[str, Any]] = field(default_factory=list)

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        self.calls.append((mechanism, data))
        ok = getattr(data, "login", None) == b"alice" and data.password == b"wonderland"
        return AuthResult(success=ok, handled=False, auth_data=data)


PLAIN_ALICE = base64.b64encode(b"\x00alice\x00wonderland").decode()


# --- the upgrade ----------------------------------------------------------------------------------


def test_starttls_upgrades_and_forgets_everything_said_before(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    handler = TLSHandler()
    with running(handler, tls_context=server_context) as server, connected(server) as c:
        before = keywords(c)
        assert "STARTTLS" in before
        assert not any(k.startswith("AUTH") for k in before)  # auth_require_tls by default
        assert c.cmd("NOOP")[0] == 250
        assert c.cmd("STARTTLS") == wire(R.READY_FOR_TLS)
        start_tls(c, client_context)
        # RFC 3207 section 4.2: the EHLO from before TLS is forgotten.
        assert c.cmd("MAIL FROM:<a@example.test>") == wire(R.HELLO_FIRST, enhanced=False)
        assert c.cmd("NOOP")[0] == 250
        after = keywords(c)
        assert "STARTTLS" not in after
        assert "AUTH LOGIN PLAIN" in after
        deliver(c, greet=None)
    plain, tls = handler.noop_sessions
    assert plain is not tls
    assert handler.noop_ssl[0] is None
    assert tls.ssl is not None and tls.host_name == "client.test"
    assert handler.envelopes[0].rcpt_tos == ["rcpt@example.test"]
    assert handler.sessions[0] is tls


def test_authentication_before_tls_is_forgotten(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    authenticator = Authenticator()
    with (
        running(
            tls_context=server_context, authenticator=authenticator, auth_require_tls=False
        ) as server,
        connected(server) as c,
    ):
        keywords(c)
        assert c.cmd(f"AUTH PLAIN {PLAIN_ALICE}") == wire(R.AUTH_SUCCESS)
        assert c.cmd("AUTH PLAIN =")[0] == 503  # already authenticated
        assert c.cmd("STARTTLS") == wire(R.READY_FOR_TLS)
        start_tls(c, client_context)
        keywords(c)
        assert c.cmd(f"AUTH PLAIN {PLAIN_ALICE}") == wire(R.AUTH_SUCCESS)
    assert len(authenticator.calls) == 2


# --- command injection (CVE-2011-0411 class; aiosmtpd CVE-2024-34083) ---------------------------

INJECTIONS = {
    "ehlo": b"EHLO injected\r\n",
    "transaction": (
        b"EHLO injected\r\nMAIL FROM:<attacker@evil.test>\r\nRCPT TO:<victim@evil.test>\r\n"
    ),
    "auth": f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode(),
    "many": b"NOOP\r\n" * 50 + b"QUIT\r\n",
}


@pytest.mark.parametrize("require_starttls", [False, True], ids=["optional", "required"])
@pytest.mark.parametrize("payload", list(INJECTIONS.values()), ids=list(INJECTIONS))
def test_commands_pipelined_after_starttls_are_discarded(
    payload: bytes,
    require_starttls: bool,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    handler = TLSHandler()
    authenticator = Authenticator()
    with (
        running(
            handler,
            tls_context=server_context,
            require_starttls=require_starttls,
            authenticator=authenticator,
        ) as server,
        connected(server) as c,
    ):
        keywords(c, "EHLO probe")
        c.send(b"STARTTLS\r\n" + payload)  # one write, one segment
        assert c.reply() == wire(R.READY_FOR_TLS)
        tls = start_tls(c, client_context)
        assert nothing_arrives(tls)
        # The first reply after the handshake answers the first command sent after it.
        assert c.cmd("MAIL FROM:<sender@example.test>") == wire(R.HELLO_FIRST, enhanced=False)
        after = keywords(c, "EHLO real.client.test")
        assert "STARTTLS" not in after
        assert c.cmd("AUTH PLAIN =")[0] == 501  # not "503 already authenticated"
        deliver(c, greet=None)
        assert c.cmd("QUIT")[0] == 221
    assert [call[0] for call in authenticator.calls] == []  # the empty PLAIN never got that far
    (envelope,) = handler.envelopes
    assert envelope.mail_from == "sender@example.test"
    assert envelope.rcpt_tos == ["rcpt@example.test"]
    assert handler.sessions[0].host_name == "real.client.test"
    assert all(s.host_name != "injected" for s in handler.noop_sessions)


def test_a_command_sent_with_the_client_finished_message_is_answered(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    # TLS lets the client send its first command right behind its Finished message, in the
    # same TCP segment: that command was sent after the handshake and must be answered.
    with running(tls_context=server_context) as server, connected(server) as c:
        keywords(c)
        assert c.cmd("STARTTLS") == wire(R.READY_FOR_TLS)
        assert c.buffer == b""
        c.sock.settimeout(5.0)
        tls = MemoryTLS(c.sock, client_context)
        tls.handshake(first=b"NOOP\r\n")
        assert tls.line() == b"250 OK"
        tls.send(b"EHLO client.test\r\n")
        assert tls.line() == b"250-test.local"


def test_nothing_is_answered_in_the_clear_after_220(
    server_context: ssl.SSLContext,
) -> None:
    with running(tls_context=server_context) as server, connected(server) as c:
        keywords(c)
        c.send(b"STARTTLS\r\nNOOP\r\nNOOP\r\n")
        assert c.reply() == wire(R.READY_FOR_TLS)
        # The server now waits for a ClientHello: no plaintext reply to the NOOPs.
        assert c.buffer == b""
        assert nothing_arrives(c.sock)


# --- refusals -------------------------------------------------------------------------------------


def test_starttls_with_an_argument_is_a_syntax_error(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    with running(tls_context=server_context) as server, connected(server) as c:
        keywords(c)
        assert c.cmd("STARTTLS now") == wire(R.syntax("STARTTLS"))
        assert c.cmd("STARTTLS") == wire(R.READY_FOR_TLS)
        start_tls(c, client_context)
        assert c.cmd("NOOP")[0] == 250


def test_second_starttls_is_refused(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    with running(tls_context=server_context) as server, connected(server) as c:
        keywords(c)
        assert c.cmd("STARTTLS") == wire(R.READY_FOR_TLS)
        start_tls(c, client_context)
        assert c.cmd("STARTTLS") == wire(R.TLS_ALREADY_ACTIVE, enhanced=False)
        keywords(c)
        assert c.cmd("STARTTLS") == wire(R.TLS_ALREADY_ACTIVE)
        deliver(c, greet=None)


def test_starttls_without_a_context_is_454(client_context: ssl.SSLContext) -> None:
    with running() as server, connected(server) as c:
        assert "STARTTLS" not in keywords(c)
        assert "STARTTLS" not in c.cmd("HELP")[1]
        assert c.cmd("STARTTLS") == wire(R.TLS_NOT_AVAILABLE)
        deliver(c, greet=None)


def test_help_lists_starttls_when_configured(server_context: ssl.SSLContext) -> None:
    with running(tls_context=server_context) as server, connected(server) as c:
        keywords(c)
        code, text = c.cmd("HELP")
        assert code == 250 and "STARTTLS" in text.split()
        assert c.cmd("HELP STARTTLS") == (250, "2.0.0 Syntax: STARTTLS")


def test_starttls_inside_a_transaction_is_refused(server_context: ssl.SSLContext) -> None:
    with running(tls_context=server_context) as server, connected(server) as c:
        keywords(c)
        assert c.cmd("MAIL FROM:<a@example.test>")[0] == 250
        assert c.cmd("STARTTLS") == wire(sequence_error(State.HAVE_SENDER, Verb.STARTTLS))
        assert c.cmd("RSET")[0] == 250
        assert c.cmd("STARTTLS") == wire(R.READY_FOR_TLS)


# --- require_starttls -----------------------------------------------------------------------------

REFUSED_BEFORE_TLS = [
    "HELO client.test",
    "MAIL FROM:<a@example.test>",
    "RCPT TO:<b@example.test>",
    "DATA",
    "BDAT 0 LAST",
    "RSET",
    "VRFY postmaster",
    "EXPN staff",
    f"AUTH PLAIN {PLAIN_ALICE}",
]


@pytest.mark.parametrize("command", REFUSED_BEFORE_TLS)
def test_require_starttls_refuses_commands_before_tls(
    command: str, server_context: ssl.SSLContext
) -> None:
    with (
        running(tls_context=server_context, require_starttls=True) as server,
        connected(server) as c,
    ):
        assert c.cmd(command) == wire(R.STARTTLS_FIRST, enhanced=False)
        keywords(c)
        assert c.cmd(command) == wire(R.STARTTLS_FIRST)


def test_require_starttls_allows_ehlo_noop_quit(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    handler = TLSHandler()
    with running(handler, tls_context=server_context, require_starttls=True) as server:
        with connected(server) as c:
            assert c.cmd("NOOP")[0] == 250
            assert c.cmd("HELP")[0] == 530  # RFC 3207 section 4, as aiosmtpd
            assert c.cmd("HELP MAIL")[0] == 530
            assert "STARTTLS" in keywords(c)
            assert c.cmd("QUIT")[0] == 221
            assert c.is_closed()
        with connected(server) as c:
            keywords(c)
            assert c.cmd("MAIL FROM:<a@example.test>") == wire(R.STARTTLS_FIRST)
            assert c.cmd("STARTTLS") == wire(R.READY_FOR_TLS)
            start_tls(c, client_context)
            deliver(c)
    assert len(handler.envelopes) == 1


def test_a_refused_bdat_chunk_is_never_read_as_commands(server_context: ssl.SSLContext) -> None:
    with (
        running(tls_context=server_context, require_starttls=True) as server,
        connected(server) as c,
    ):
        keywords(c)
        c.send("BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n")
        assert c.reply() == wire(R.STARTTLS_FIRST)
        assert c.reply()[0] == 250  # NOOP; the chunk "QUIT\r\n" was only data


def test_lhlo_is_allowed_before_starttls_under_lmtp(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    # aiosmtpd refuses LHLO under require_starttls, which makes LMTP with STARTTLS unusable.
    handler = TLSHandler()
    with (
        running(
            handler, server_class=LMTP, tls_context=server_context, require_starttls=True
        ) as server,
        connected(server) as c,
    ):
        assert c.cmd("EHLO client.test")[0] == 500  # LMTP knows no EHLO ...
        assert "STARTTLS" in keywords(c, "LHLO client.test")  # ... but LHLO is allowed
        assert c.cmd("MAIL FROM:<a@example.test>") == wire(R.STARTTLS_FIRST)
        assert c.cmd("STARTTLS") == wire(R.READY_FOR_TLS)
        start_tls(c, client_context)
        assert "STARTTLS" not in keywords(c, "LHLO client.test")
        assert c.cmd("MAIL FROM:<sender@example.test>")[0] == 250
        assert c.cmd("RCPT TO:<one@example.test>")[0] == 250
        assert c.cmd("RCPT TO:<two@example.test>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        assert c.cmd("Subject: lmtp\r\n\r\nbody\r\n.")[0] == 250
        assert c.reply()[0] == 250  # one reply per recipient
    assert handler.envelopes[0].rcpt_tos == ["one@example.test", "two@example.test"]


# --- handle_STARTTLS ------------------------------------------------------------------------------


def test_handle_starttls_refusal_leaves_only_quit(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    handler = GatingHandler(allow=False)
    with running(handler, tls_context=server_context) as server, connected(server) as c:
        keywords(c)
        assert c.cmd("STARTTLS") == wire(R.READY_FOR_TLS)
        start_tls(c, client_context)
        for command in ("EHLO client.test", "NOOP", "HELP", "MAIL FROM:<a@example.test>"):
            assert c.cmd(command) == wire(R.SECURITY_REFUSED, enhanced=False), command
        assert c.cmd("STARTTLS") == wire(R.SECURITY_REFUSED, enhanced=False)
        assert c.cmd("QUIT")[0] == 221
        assert c.is_closed()
    (session,) = handler.starttls_sessions
    assert session.ssl is not None  # the hook sees the TLS details it is deciding about
    assert handler.noop_sessions == []
    assert handler.envelopes == []


def test_refused_after_handle_starttls_a_bdat_chunk_is_only_data(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    handler = GatingHandler(allow=False)
    with running(handler, tls_context=server_context) as server, connected(server) as c:
        keywords(c)
        assert c.cmd("STARTTLS") == wire(R.READY_FOR_TLS)
        start_tls(c, client_context)
        c.send("BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n")
        assert c.reply() == wire(R.SECURITY_REFUSED, enhanced=False)
        assert c.reply() == wire(R.SECURITY_REFUSED, enhanced=False)  # NOOP: still refused
        assert c.cmd("QUIT")[0] == 221


def test_handle_starttls_acceptance(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    handler = GatingHandler(allow=True)
    with running(handler, tls_context=server_context) as server, connected(server) as c:
        keywords(c)
        assert c.cmd("STARTTLS") == wire(R.READY_FOR_TLS)
        start_tls(c, client_context)
        deliver(c)
    (session,) = handler.starttls_sessions
    assert handler.sessions == [session]


# --- session.ssl ----------------------------------------------------------------------------------


def check_tls_details(details: dict[str, Any] | None) -> None:
    assert details is not None
    name, protocol, bits = details["cipher"]
    assert isinstance(name, str) and protocol.startswith("TLSv") and bits >= 128
    assert details["version"] in ("TLSv1.2", "TLSv1.3")
    assert isinstance(details["ssl_object"], ssl.SSLObject)
    assert details["peername"][0] == "127.0.0.1"


def test_session_ssl_under_starttls(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    handler = TLSHandler()
    with running(handler, tls_context=server_context) as server, connected(server) as c:
        keywords(c)
        assert c.cmd("NOOP")[0] == 250
        assert c.cmd("STARTTLS")[0] == 220
        tls = start_tls(c, client_context)
        deliver(c)
        client_cipher = tls.cipher()
    details = handler.sessions[0].ssl
    check_tls_details(details)
    assert details is not None
    assert details["cipher"] == client_cipher
    assert details["peercert"] is None  # no client certificate was asked for
    assert handler.noop_ssl == [None]


def test_session_ssl_under_implicit_tls(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    handler = TLSHandler()
    with running(handler, ssl_context=server_context) as server:
        c = TLSClient(server.hostname, server.port, client_context)
        try:
            assert c.greeting[0] == 220
            assert c.cmd("NOOP")[0] == 250  # TLS details before any EHLO
            assert "STARTTLS" not in keywords(c)
            deliver(c, greet=None)
            client_cipher = c.sock.cipher()  # type: ignore[attr-defined]
        finally:
            c.close()
    check_tls_details(handler.noop_ssl[0])
    details = handler.sessions[0].ssl
    check_tls_details(details)
    assert details is not None and details["cipher"] == client_cipher


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "smtps"])
def test_session_ssl_holds_the_client_certificate(
    implicit: bool,
    mutual_server_context: ssl.SSLContext,
    client_context_with_cert: ssl.SSLContext,
) -> None:
    handler = TLSHandler()
    tls_kwargs: dict[str, Any] = (
        {"ssl_context": mutual_server_context}
        if implicit
        else {"tls_context": mutual_server_context}
    )
    with running(handler, **tls_kwargs) as server:
        if implicit:
            c: RawClient = TLSClient(server.hostname, server.port, client_context_with_cert)
        else:
            c = RawClient(server.hostname, server.port)
        try:
            if not implicit:
                keywords(c)
                assert c.cmd("STARTTLS")[0] == 220
                start_tls(c, client_context_with_cert)
            deliver(c)
        finally:
            c.close()
    details = handler.sessions[0].ssl
    check_tls_details(details)
    assert details is not None
    peercert = details["peercert"]
    assert ("email", CLIENT_IDENTITY) in peercert["subjectAltName"]
    assert ((("commonName", "test client"),)) in peercert["subject"]


def test_smtps_does_not_offer_starttls(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    with running(ssl_context=server_context, tls_context=server_context) as server:
        c = TLSClient(server.hostname, server.port, client_context)
        try:
            assert "STARTTLS" not in keywords(c)
            assert c.cmd("STARTTLS") == wire(R.TLS_ALREADY_ACTIVE)
            deliver(c, greet=None)
        finally:
            c.close()


# --- failed handshakes ----------------------------------------------------------------------------


def _garbage(c: RawClient, client_context: ssl.SSLContext) -> None:
    c.send(b"GET / HTTP/1.0\r\n\r\n" + bytes(range(256)))


def _untrusted(c: RawClient, client_context: ssl.SSLContext) -> None:
    tls = MemoryTLS(c.sock, ssl.create_default_context())  # does not trust the test authority
    with pytest.raises(ssl.SSLCertVerificationError):
        tls.handshake()
    c.sock.sendall(tls.outgoing.read())  # the client's alert


def _hang_up(c: RawClient, client_context: ssl.SSLContext) -> None:
    c.sock.shutdown(socket.SHUT_WR)


@pytest.mark.parametrize(
    "sabotage", [_garbage, _untrusted, _hang_up], ids=["garbage", "untrusted", "eof"]
)
def test_a_failed_handshake_closes_only_that_connection(
    sabotage: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    handler = TLSHandler()
    with running(handler, tls_context=server_context) as server:
        with connected(server) as bystander:
            keywords(bystander)
            assert bystander.cmd("MAIL FROM:<sender@example.test>")[0] == 250
            with connected(server) as victim:
                keywords(victim)
                assert victim.cmd("STARTTLS") == wire(R.READY_FOR_TLS)
                sabotage(victim, client_context)
                assert closes(victim.sock)
            # The connection that was already open goes on where it was ...
            assert bystander.cmd("RCPT TO:<rcpt@example.test>")[0] == 250
            assert bystander.cmd("DATA")[0] == 354
            assert bystander.cmd("Subject: still here\r\n\r\nbody\r\n.")[0] == 250
        # ... and new ones are served, TLS included.
        with connected(server) as newcomer:
            keywords(newcomer)
            assert newcomer.cmd("STARTTLS") == wire(R.READY_FOR_TLS)
            start_tls(newcomer, client_context)
            deliver(newcomer)
    assert len(handler.envelopes) == 2


def test_a_failed_implicit_tls_handshake_closes_only_that_connection(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    handler = TLSHandler()
    with running(handler, ssl_context=server_context) as server:
        bystander = TLSClient(server.hostname, server.port, client_context)
        try:
            keywords(bystander)
            with socket.create_connection((server.hostname, server.port), timeout=10) as plain:
                plain.sendall(b"EHLO plaintext.test\r\n")  # SMTP where a ClientHello belongs
                assert closes(plain)
            deliver(bystander, greet=None)
        finally:
            bystander.close()
    assert len(handler.envelopes) == 1
