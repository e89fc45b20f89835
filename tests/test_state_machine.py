"""Property tests of the protocol through the fake server.

* :class:`SMTPDialog`, a hypothesis ``RuleBasedStateMachine``, drives one connection through
  arbitrary dialogs (greetings, re-greetings, transactions, RSET, errors, DATA, BDAT, AUTH,
  STARTTLS, pipelined groups, QUIT and reconnects) and checks every reply code, and the number
  of messages delivered, against a small reference model of RFC 5321 sequencing written out below.
* The chunking-invariance properties: the same client bytes, split anywhere, give the same
  replies and the same messages.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import ssl
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from typed_smtpd.proto.state import State
from typed_smtpd.session import AuthResult, Envelope, LoginPassword, Session
from typed_smtpd.smtp import SMTP
from typed_smtpd.testing import FakeClient, FakeSMTPServer
from typed_smtpd.testing.strategies import chunked, dialogs, hostile_streams, mailboxes, splits

T = TypeVar("T")

MESSAGE = b"Subject: model\r\n\r\n.dotted line\r\nbody\r\n"


#: BDAT chunks of whole CRLF lines without bare CR, LF or NUL, so that every message the model
#: expects to be accepted is one the default bare-newline policy accepts.
bdat_chunks = st.lists(
    st.binary(max_size=20).map(lambda line: bytes(b for b in line if b not in b"\r\n\x00")),
    max_size=3,
).map(lambda lines: b"".join(line + b"\r\n" for line in lines))


class Phase(enum.Enum):
    """The reference model's view of a connection (RFC 5321 section 4.1.4, RFC 3030)."""

    GREETED = "greeted"  # greeting sent, no HELO/EHLO yet
    READY = "ready"  # greeted, no transaction
    SENDER = "sender"  # MAIL accepted
    RECIPIENT = "recipient"  # at least one RCPT accepted
    CHUNKING = "chunking"  # BDAT chunks received, LAST not yet


#: How the model's phases read in the engine's own state enum.
ENGINE_STATE = {
    Phase.GREETED: State.GREETED,
    Phase.READY: State.READY,
    Phase.SENDER: State.HAVE_SENDER,
    Phase.RECIPIENT: State.HAVE_RECIPIENT,
    Phase.CHUNKING: State.IN_BDAT,
}


@dataclass
class Model:
    """What RFC 5321 says the server must answer, as a few lines of state."""

    phase: Phase = Phase.GREETED
    extended: bool = False
    authenticated: bool = False
    tls: bool = False
    recipients: int = 0
    messages: list[int] = field(default_factory=list)  # recipients of each delivered message

    def greet(self, extended: bool) -> int:
        self.phase, self.extended, self.recipients = Phase.READY, extended, 0
        return 250

    def mail(self) -> int:
        if self.phase is not Phase.READY:
            return 503
        self.phase = Phase.SENDER
        return 250

    def rcpt(self) -> int:
        if self.phase not in (Phase.SENDER, Phase.RECIPIENT):
            return 503
        self.phase = Phase.RECIPIENT
        self.recipients += 1
        return 250

    def data(self) -> int:
        if self.phase is not Phase.RECIPIENT:
            return 503
        return self._deliver()

    def bdat(self, last: bool) -> int:
        if self.phase not in (Phase.RECIPIENT, Phase.CHUNKING):
            return 503
        if last:
            return self._deliver()
        self.phase = Phase.CHUNKING
        return 250

    def _deliver(self) -> int:
        self.messages.append(self.recipients)
        self.phase, self.recipients = Phase.READY, 0
        return 250

    def rset(self) -> int:
        if self.phase is not Phase.GREETED:
            self.phase, self.recipients = Phase.READY, 0
        return 250

    def auth(self, good: bool) -> int:
        if self.phase is Phase.GREETED:
            return 503
        if not self.extended:
            return 500  # AUTH is an ESMTP extension (RFC 4954)
        if self.authenticated or self.phase is not Phase.READY:
            return 503
        self.authenticated = good
        return 235 if good else 535

    def starttls(self) -> int:
        if self.tls or self.phase not in (Phase.GREETED, Phase.READY):
            return 503
        # RFC 3207 section 4.2: the client starts over, knowing nothing from before.
        self.tls = True
        self.phase, self.extended, self.authenticated, self.recipients = (
            Phase.GREETED,
            False,
            False,
            0,
        )
        return 220

    def reconnect(self) -> None:
        self.phase, self.extended, self.authenticated, self.recipients = (
            Phase.GREETED,
            False,
            False,
            0,
        )
        self.tls = False


@functools.lru_cache(maxsize=1)
def server_context() -> ssl.SSLContext:
    """A server TLS context with a throw-away certificate (made once per process)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("fake-smtpd.test").configure_cert(context)
    return context


def check_password(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: object
) -> AuthResult:
    return AuthResult(success=data == LoginPassword(b"user", b"pw"), handled=False)


#: Simple commands for pipelined groups: (line, how the model answers it).
SIMPLE: dict[str, tuple[str, Any]] = {
    "mail": ("MAIL FROM:<a@client.test>", Model.mail),
    "rcpt": ("RCPT TO:<b@server.test>", Model.rcpt),
    "rset": ("RSET", Model.rset),
    "noop": ("NOOP", lambda model: 250),
    "ehlo": ("EHLO client.test", lambda model: model.greet(True)),
    "unknown": ("XYZZY", lambda model: 500),
}


class SMTPDialog(RuleBasedStateMachine):
    """One client against the fake server, checked step by step against :class:`Model`."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.server = FakeSMTPServer(
            tls_context=server_context(),
            authenticator=check_password,
            auth_require_tls=False,
            bogus_limit=100_000,
            max_auth_failures=100_000,
        )
        self.run(self.server.__aenter__())
        self.model = Model()
        self.client = self.connect()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def connect(self) -> FakeClient:
        client = self.run(self.server.connect())
        assert client.greeting is not None
        assert client.greeting.code == 220
        return client

    def teardown(self) -> None:
        self.run(self.server.aclose())
        self.loop.close()

    def check(self, got: int, expected: int, what: str) -> None:
        assert got == expected, (
            f"{what}: server said {got}, the model says {expected}\n{self.client.transcript_text()}"
        )

    # --- greetings ------------------------------------------------------------------------------

    @rule()
    def ehlo(self) -> None:
        self.check(self.run(self.client.ehlo()).code, self.model.greet(True), "EHLO")

    @rule()
    def helo(self) -> None:
        self.check(self.run(self.client.helo()).code, self.model.greet(False), "HELO")

    # --- a transaction --------------------------------------------------------------------------

    @rule(sender=st.one_of(st.just(""), mailboxes()))
    def mail(self, sender: str) -> None:
        reply = self.run(self.client.mail(sender))
        self.check(reply.code, self.model.mail(), f"MAIL FROM:<{sender}>")

    @rule()
    def mail_malformed(self) -> None:
        reply = self.run(self.client.send("MAIL FROM:<unterminated"))
        if self.model.phase is Phase.READY:
            assert reply.code in (501, 553), reply
        else:
            self.check(reply.code, 503, "malformed MAIL out of sequence")

    @rule(recipient=mailboxes())
    def rcpt(self, recipient: str) -> None:
        reply = self.run(self.client.rcpt(recipient))
        self.check(reply.code, self.model.rcpt(), f"RCPT TO:<{recipient}>")

    @rule()
    def data(self) -> None:
        if self.model.phase is Phase.RECIPIENT:
            self.check(self.run(self.client.data(MESSAGE)).code, self.model.data(), "DATA")
        else:
            self.check(self.run(self.client.send("DATA")).code, self.model.data(), "DATA")

    @rule(chunk=bdat_chunks, last=st.booleans())
    def bdat(self, chunk: bytes, last: bool) -> None:
        reply = self.run(self.client.bdat(chunk, last=last))
        self.check(reply.code, self.model.bdat(last), f"BDAT {len(chunk)}{' LAST' * last}")

    @rule()
    def rset(self) -> None:
        self.check(self.run(self.client.rset()).code, self.model.rset(), "RSET")

    # --- neutral and erroneous commands ---------------------------------------------------------

    @rule(text=st.none() | st.text("abcXYZ 123", max_size=20))
    def noop(self, text: str | None) -> None:
        self.check(self.run(self.client.noop(text)).code, 250, "NOOP")

    @precondition(lambda self: self.model.phase is not Phase.CHUNKING)
    @rule(address=mailboxes())
    def vrfy(self, address: str) -> None:
        self.check(self.run(self.client.vrfy(address)).code, 252, "VRFY")

    @rule(verb=st.sampled_from(["XYZZY", "FOO bar", "MAILX FROM:<a@b>", "TURN"]))
    def unknown(self, verb: str) -> None:
        self.check(self.run(self.client.send(verb)).code, 500, verb)

    @rule()
    def starttls(self) -> None:
        reply = self.run(self.client.starttls())
        self.check(reply.code, self.model.starttls(), "STARTTLS")
        assert self.client.tls == self.model.tls
        # The client's handshake can finish before the server's: one round trip settles it.
        self.check(self.run(self.client.noop()).code, 250, "NOOP after STARTTLS")

    @rule(good=st.booleans(), mechanism=st.sampled_from(["PLAIN", "LOGIN"]))
    def auth(self, good: bool, mechanism: str) -> None:
        reply = self.run(self.client.auth(mechanism, "user", "pw" if good else "wrong"))
        self.check(reply.code, self.model.auth(good), f"AUTH {mechanism}")

    # --- pipelining and the end -----------------------------------------------------------------

    @rule(group=st.lists(st.sampled_from(sorted(SIMPLE)), min_size=2, max_size=6))
    def pipelined(self, group: Sequence[str]) -> None:
        replies = self.run(self.client.pipeline(*(SIMPLE[name][0] for name in group)))
        for name, reply in zip(group, replies, strict=True):
            self.check(reply.code, SIMPLE[name][1](self.model), f"pipelined {name}")

    @rule()
    def quit_and_reconnect(self) -> None:
        self.check(self.run(self.client.quit()).code, 221, "QUIT")
        assert self.run(self.client.read_until_closed()) == b""
        self.model.reconnect()
        self.client = self.connect()

    @invariant()
    def delivered_as_modelled(self) -> None:
        stored = [len(message.rcpt_tos) for message in self.server.messages]
        assert stored == self.model.messages

    @invariant()
    def engine_state_agrees(self) -> None:
        protocol = self.client.protocol
        if not protocol.engine.closed:
            assert protocol.engine.state is ENGINE_STATE[self.model.phase]


TestSMTPDialog = SMTPDialog.TestCase
TestSMTPDialog.settings = settings(
    deadline=None,
    stateful_step_count=40,
    suppress_health_check=[HealthCheck.too_slow],
)


# --- chunking invariance ------------------------------------------------------------------------


async def _exchange(
    chunks: Sequence[bytes],
) -> tuple[bytes, list[tuple[str, tuple[str, ...], bytes]]]:
    """Everything the server sends for ``chunks`` (each one client write), and what it stored."""
    async with FakeSMTPServer() as server:
        client = server.client()
        for chunk in chunks:
            client.send_bytes(chunk)
        client.send_eof()
        output = await client.read_until_closed()
        stored = [(m.mail_from, m.rcpt_tos, m.content) for m in server.messages]
    return output, stored


def _same_for_any_split(stream: bytes, chunks: list[bytes]) -> None:
    assert b"".join(chunks) == stream
    whole = asyncio.run(_exchange([stream]))
    pieces = asyncio.run(_exchange(chunks))
    assert pieces == whole


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dialog=dialogs(), data=st.data())
def test_valid_dialogs_are_chunking_invariant(dialog: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(dialog)
    chunks = data.draw(splits(stream))
    _same_for_any_split(stream, chunks)
    output, stored = asyncio.run(_exchange([stream]))
    assert output.startswith(b"220 ")
    assert output.endswith(b"221 2.0.0 Bye\r\n")
    assert len(stored) == output.count(b"\r\n354 ")


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=chunked(hostile_streams()))
def test_hostile_streams_are_chunking_invariant(chunks: list[bytes]) -> None:
    _same_for_any_split(b"".join(chunks), chunks)
