"""The sans-IO engine driven directly: whole dialogs with no event loop, no transport, no task.

:class:`Driver` is a synchronous adapter written for these tests: it feeds bytes to a
:class:`~typed_smtpd.proto.engine.ServerEngine`, serves each request the engine returns (hooks
from a table of plain functions, the authenticator from a password table, STARTTLS with a fresh
:class:`~typed_smtpd.session.Session` and no real TLS) and collects the output. Time is a
:class:`FakeClock` the tests move by hand.

* Direct tests of dialogs: every reply compared, byte for byte, with the catalogue of
  :mod:`typed_smtpd.proto.replies`; the state after each step compared with the transition table.
* :class:`EngineDialog`, the reference model of :mod:`tests.test_state_machine` run against the
  engine itself, without the asyncio adapter in between.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from ipaddress import IPv4Address, ip_network
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.test_state_machine import (
    ENGINE_STATE,
    MESSAGE,
    SIMPLE,
    Model,
    Phase,
    bdat_chunks,
)
from typed_smtpd.lmtp import LMTP
from typed_smtpd.proto import replies as R
from typed_smtpd.proto.data import dot_stuff
from typed_smtpd.proto.engine import (
    CLOSED,
    NEED_DATA,
    WAIT_EVENT,
    Authenticate,
    CallHook,
    CallLegacy,
    EngineConfig,
    EngineError,
    Expiry,
    HandleError,
    RunCommand,
    RunMechanism,
    ServerEngine,
    StartTLS,
    Steps,
)
from typed_smtpd.proto.limits import Limits
from typed_smtpd.proto.replies import Reply
from typed_smtpd.proto.state import TRANSITIONS, State, Verb, sequence_error
from typed_smtpd.session import AuthResult, Envelope, LoginPassword, Session
from typed_smtpd.smtp import SMTP
from typed_smtpd.testing.strategies import mailboxes

#: The verbs of :class:`typed_smtpd.smtp.SMTP` (its ``smtp_VERB`` methods): every verb of the
#: state table but LMTP's greeting (``BDAT LAST`` is ``BDAT`` with an argument).
COMMANDS: Final = frozenset(verb.value for verb in Verb if verb not in (Verb.LHLO, Verb.BDAT_LAST))
#: The verbs of :class:`typed_smtpd.lmtp.LMTP`.
LMTP_COMMANDS: Final = COMMANDS | {"LHLO"}
#: The one account the test authenticator knows.
PASSWORDS: Final = {b"user": b"pw"}
#: AUTH offered without TLS, run by the engine itself.
WITH_AUTH: Final[dict[str, Any]] = {
    "mechanisms": frozenset({"PLAIN", "LOGIN"}),
    "engine_mechanisms": frozenset({"PLAIN", "LOGIN"}),
    "auth_require_tls": False,
}

GREETING: Final = b"220 mx.test ESMTP test\r\n"
#: The EHLO reply of :func:`make_config` with nothing optional turned on.
EHLO_PLAIN: Final = (
    b"250-mx.test\r\n"
    b"250-SIZE 33554432\r\n"
    b"250-8BITMIME\r\n"
    b"250-PIPELINING\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n"
    b"250-CHUNKING\r\n"
    b"250-BINARYMIME\r\n"
    b"250-DSN\r\n"
    b"250 HELP\r\n"
)
HELO_REPLY: Final = b"250 mx.test\r\n"
PROXY_V1: Final = b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 25\r\n"


def make_config(**changes: Any) -> EngineConfig:
    """The configuration of a plain server named ``mx.test``, with ``changes``."""
    options: dict[str, Any] = {
        "hostname": "mx.test",
        "ident": "ESMTP test",
        "commands": COMMANDS,
    }
    options.update(changes)
    return EngineConfig(**options)


def wire(*replies: Reply, enhanced: bool = True) -> bytes:
    """What the engine sends for ``replies``, one after the other."""
    return b"".join(reply.render(enhanced=enhanced) for reply in replies)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def plain_token(login: bytes, password: bytes) -> str:
    """The PLAIN initial response (RFC 4616) with an empty authorization identity."""
    return b64(b"\x00" + login + b"\x00" + password)


def reply_codes(output: bytes) -> list[int]:
    """The code of each complete reply in ``output`` (a multi-line reply counts once)."""
    codes: list[int] = []
    for line in output.split(b"\r\n")[:-1]:
        if line[3:4] != b"-":
            codes.append(int(line[:3]))
    return codes


class FakeClock:
    """The engine's clock: a number the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


#: A handler hook as the tests write it: ``hook(session, envelope, *args)``.
Hook = Callable[..., object]
#: A server's own ``smtp_VERB`` method: ``command(driver, arg)``.
Command = Callable[["Driver", "str | None"], None]


class Driver:
    """A synchronous adapter for :class:`ServerEngine`.

    ``hooks`` are served for :class:`CallHook` by name (``handle_exception`` for
    :class:`HandleError`); without a ``handle_DATA`` of its own, a ``handle_DATA`` request records
    the envelope in :attr:`delivered` and answers ``250 OK``. ``commands`` serve
    :class:`RunCommand`. Every request served is kept in :attr:`served`.
    """

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        hooks: Mapping[str, Hook] | None = None,
        commands: Mapping[str, Command] | None = None,
        tls: bool = False,
        peer_host: str | None = None,
        delivered: list[Envelope] | None = None,
        start: bool = True,
    ) -> None:
        self.config = make_config() if config is None else config
        self.hooks: dict[str, Hook] = dict(hooks or {})
        self.commands: dict[str, Command] = dict(commands or {})
        self.clock = FakeClock()
        self.delivered: list[Envelope] = [] if delivered is None else delivered
        self.served: list[object] = []
        self.engine: ServerEngine[Session, Envelope] = ServerEngine(
            self.config,
            new_session=Session,
            new_envelope=Envelope,
            clock=self.clock,
            tls=tls,
            peer=("192.0.2.9", 4321),
            peer_host=peer_host,
        )
        if start:
            self.engine.start()

    # --- input ----------------------------------------------------------------------------------

    def send(self, data: bytes | str) -> bytes:
        """Give ``data`` to the engine (a ``str`` is one command line, CRLF added); the output."""
        if isinstance(data, str):
            data = data.encode("utf-8") + b"\r\n"
        self.engine.receive_data(data)
        self.run()
        return self.engine.data_to_send()

    def eof(self) -> bytes:
        """The client closed its side; the output."""
        self.engine.receive_eof()
        self.run()
        return self.engine.data_to_send()

    def output(self) -> bytes:
        return self.engine.data_to_send()

    # The engine's attributes, read through calls that type checkers do not narrow: a test
    # asserts one value, makes the engine move, then asserts another.

    def state(self) -> State:
        return self.engine.state

    def closed(self) -> bool:
        return self.engine.closed

    def busy(self) -> bool:
        return self.engine.busy

    def hard_deadline(self) -> float | None:
        return self.engine.hard_deadline

    def run(self) -> object:
        """Serve requests until the engine needs data or is closed; which of the two."""
        engine = self.engine
        while True:
            request = engine.next_request()
            if request is NEED_DATA or request is CLOSED:
                return request
            try:
                result = self.serve(request)
            except Exception as error:
                engine.fail(error)
            else:
                engine.resume(result)

    # --- requests -------------------------------------------------------------------------------

    def serve(self, request: object) -> object:
        """Run one request; its result (an exception is the request's failure)."""
        self.served.append(request)
        engine = self.engine
        match request:
            case CallHook(name=name, args=args):
                hook = self.hooks.get(name)
                if hook is not None:
                    return hook(engine.session, engine.envelope, *args)
                assert name == "handle_DATA", f"no hook {name} in this test"
                self.delivered.append(engine.envelope)
                return "250 OK"
            case HandleError(error=error):
                return self.hooks["handle_exception"](error)
            case Authenticate(auth_data=data):
                good = (
                    isinstance(data, LoginPassword) and PASSWORDS.get(data.login) == data.password
                )
                return AuthResult(success=good, handled=False, auth_data=data if good else None)
            case StartTLS():
                return Session()
            case RunCommand(verb=verb, arg=arg):
                self.commands[verb](self, arg)
                return None
            case RunMechanism() | CallLegacy():
                raise AssertionError(f"{request!r} is not expected in these tests")
        raise AssertionError(f"unknown request {request!r}")

    def drive(self, steps: Steps | None) -> None:
        """Run the steps of :meth:`ServerEngine.command` or :meth:`~ServerEngine.refuse_command`
        to their end, as a ``smtp_VERB`` override does (the input must all be there)."""
        if steps is None:
            return
        value: object = None
        error: Exception | None = None
        while True:
            try:
                step = steps.send(value) if error is None else steps.throw(error)
            except StopIteration:
                return
            value, error = None, None
            if step is WAIT_EVENT:
                event = self.engine.next_input()
                assert event is not NEED_DATA, "a test must give the whole input at once"
                value = event
                continue
            try:
                value = self.serve(step)
            except Exception as raised:
                error = raised


def greeted(config: EngineConfig | None = None, **options: Any) -> Driver:
    """A driver whose client has sent EHLO (the greeting and EHLO reply are read)."""
    driver = Driver(config, **options)
    assert driver.output() == GREETING
    assert reply_codes(driver.send("EHLO client.test")) == [250]
    return driver


def in_transaction(config: EngineConfig | None = None, **options: Any) -> Driver:
    """After EHLO, MAIL and one RCPT."""
    driver = greeted(config, **options)
    assert driver.send("MAIL FROM:<sender@client.test>") == wire(R.MAIL_OK)
    assert driver.send("RCPT TO:<rcpt@mx.test>") == wire(R.RCPT_OK)
    return driver


# --- greeting and HELO/EHLO -----------------------------------------------------------------------


def test_greeting() -> None:
    driver = Driver(start=False)
    assert driver.output() == b""
    driver.engine.start()
    assert driver.output() == GREETING == wire(R.greeting("mx.test", "ESMTP test"))
    assert driver.run() is NEED_DATA
    assert driver.state() is State.GREETED
    assert not driver.closed()


def test_helo_replies_without_enhanced_codes() -> None:
    driver = Driver()
    driver.output()
    assert driver.send("HELO client.test") == HELO_REPLY
    assert driver.state() is State.READY
    assert driver.engine.session.host_name == "client.test"
    assert not driver.engine.session.extended_smtp
    assert driver.send("NOOP") == wire(R.OK, enhanced=False)
    assert driver.send("RCPT TO:<a@mx.test>") == wire(R.NEED_MAIL, enhanced=False)


def test_ehlo_lists_the_extensions_and_turns_on_enhanced_codes() -> None:
    driver = Driver()
    driver.output()
    assert driver.send("EHLO client.test") == EHLO_PLAIN
    assert driver.state() is State.READY
    assert driver.engine.session.extended_smtp
    assert driver.send("NOOP") == wire(R.OK)
    # HELO after EHLO: back to plain SMTP, and plain replies.
    assert driver.send("HELO client.test") == HELO_REPLY
    assert driver.send("NOOP") == wire(R.OK, enhanced=False)


def test_ehlo_offers_starttls_and_auth() -> None:
    config = make_config(tls_available=True, **WITH_AUTH)
    driver = Driver(config)
    driver.output()
    extensions = b"250-STARTTLS\r\n250-AUTH LOGIN PLAIN\r\n"
    assert driver.send("EHLO client.test") == EHLO_PLAIN.replace(
        b"250 HELP\r\n", extensions + b"250 HELP\r\n"
    )


def test_auth_is_offered_only_under_tls_when_tls_is_required() -> None:
    config = make_config(
        tls_available=True,
        mechanisms=frozenset({"PLAIN"}),
        engine_mechanisms=frozenset({"PLAIN"}),
    )
    driver = greeted(config)
    assert driver.send("AUTH PLAIN " + plain_token(b"user", b"pw")) == wire(
        R.AUTH_ENCRYPTION_REQUIRED
    )
    assert driver.send("STARTTLS") == wire(R.READY_FOR_TLS)
    assert driver.send("EHLO client.test") == EHLO_PLAIN.replace(
        b"250 HELP", b"250-AUTH PLAIN\r\n250 HELP"
    )


def test_implicit_tls_offers_auth_and_not_starttls() -> None:
    config = make_config(
        tls_available=True,
        mechanisms=frozenset({"PLAIN"}),
        engine_mechanisms=frozenset({"PLAIN"}),
    )
    driver = greeted(config, tls=True)
    assert driver.send("EHLO client.test") == EHLO_PLAIN.replace(
        b"250 HELP", b"250-AUTH PLAIN\r\n250 HELP"
    )
    assert driver.send("STARTTLS") == wire(R.TLS_ALREADY_ACTIVE)
    assert driver.send("AUTH PLAIN " + plain_token(b"user", b"pw")) == wire(R.AUTH_SUCCESS)


def test_the_driver_knows_the_commands_of_the_real_server() -> None:
    assert frozenset(SMTP._commands) == COMMANDS
    assert frozenset(LMTP._commands) == LMTP_COMMANDS


def test_hello_needs_a_hostname() -> None:
    driver = Driver()
    driver.output()
    assert driver.send("HELO") == wire(R.syntax("HELO hostname"), enhanced=False)
    assert driver.send("EHLO") == wire(R.syntax("EHLO hostname"), enhanced=False)
    assert driver.state() is State.GREETED


# --- a transaction --------------------------------------------------------------------------------


def test_transaction_with_dot_stuffing_is_delivered() -> None:
    driver = greeted(make_config(hooks=frozenset({"handle_DATA"})))
    assert driver.send("MAIL FROM:<sender@client.test>") == wire(R.MAIL_OK)
    assert driver.state() is State.HAVE_SENDER
    assert driver.send("RCPT TO:<one@mx.test>") == wire(R.RCPT_OK)
    assert driver.send("RCPT TO:<two@mx.test>") == wire(R.RCPT_OK)
    assert driver.state() is State.HAVE_RECIPIENT
    assert driver.send("DATA") == wire(R.ENTER_DATA)
    assert driver.send(b"Subject: hi\r\n\r\n..leading dot\r\n...\r\n") == b""
    assert driver.delivered == []
    assert driver.send(b"body\r\n.\r\n") == b"250 OK\r\n"
    assert driver.state() is State.READY
    [envelope] = driver.delivered
    assert envelope.mail_from == "sender@client.test"
    assert envelope.rcpt_tos == ["one@mx.test", "two@mx.test"]
    assert envelope.content == b"Subject: hi\r\n\r\n.leading dot\r\n..\r\nbody\r\n"
    assert envelope.original_content == envelope.content
    assert driver.served == [CallHook("handle_DATA", ())]
    # The next transaction starts from a new envelope.
    assert driver.engine.envelope is not envelope
    assert driver.engine.envelope.mail_from is None


def test_message_without_handle_data_is_accepted_with_250() -> None:
    driver = in_transaction()
    assert driver.send(b"DATA\r\nhello\r\n.\r\n") == wire(R.ENTER_DATA, R.OK)
    assert driver.served == []
    assert driver.state() is State.READY


def test_pipelined_commands_are_answered_in_order() -> None:
    driver = Driver(make_config(hooks=frozenset({"handle_DATA"})))
    driver.output()
    output = driver.send(
        b"EHLO client.test\r\n"
        b"MAIL FROM:<sender@client.test>\r\n"
        b"RCPT TO:<one@mx.test>\r\n"
        b"RCPT TO:<unterminated\r\n"
        b"RCPT TO:<two@mx.test>\r\n"
        b"DATA\r\n"
        b"Subject: pipelined\r\n"
        b"\r\n"
        b"body\r\n"
        b".\r\n"
        b"NOOP\r\n"
        b"QUIT\r\n"
    )
    assert output == EHLO_PLAIN + wire(
        R.MAIL_OK, R.RCPT_OK, R.MALFORMED_ADDRESS, R.RCPT_OK, R.ENTER_DATA
    ) + b"250 OK\r\n" + wire(R.OK, R.BYE)
    assert driver.closed()
    assert driver.run() is CLOSED
    [envelope] = driver.delivered
    assert envelope.rcpt_tos == ["one@mx.test", "two@mx.test"]
    assert envelope.content == b"Subject: pipelined\r\n\r\nbody\r\n"


#: A dialog touching every input mode: command lines, SASL lines, DATA and BDAT.
LONG_DIALOG: Final = (
    b"EHLO client.test\r\n"
    b"AUTH LOGIN\r\n" + b64(b"user").encode() + b"\r\n" + b64(b"pw").encode() + b"\r\n"
    b"MAIL FROM:<sender@client.test> BODY=8BITMIME\r\n"
    b"RCPT TO:<one@mx.test>\r\n"
    b"DATA\r\n"
    b"Subject: first\r\n\r\n..stuffed\r\n.\r\n"
    b"MAIL FROM:<>\r\n"
    b"RCPT TO:<two@mx.test>\r\n"
    b"BDAT 12\r\nchunk\r\n.\r\nQU"
    b"BDAT 9 LAST\r\nIT\r\nend\r\n"
    b"RSET\r\n"
    b"VRFY someone@mx.test\r\n"
    b"XYZZY\r\n"
    b"QUIT\r\n"
)


def test_the_same_bytes_one_at_a_time_give_the_same_output() -> None:
    config = make_config(hooks=frozenset({"handle_DATA"}), **WITH_AUTH)
    whole = Driver(config)
    expected = whole.send(LONG_DIALOG)
    assert whole.closed()
    assert reply_codes(expected) == [
        220, 250, 334, 334, 235, 250, 250, 354, 250, 250, 250, 250, 250, 250, 252, 500, 221
    ]  # fmt: skip
    bytewise = Driver(config)
    output = [bytewise.output()]
    for index in range(len(LONG_DIALOG)):
        output.append(bytewise.send(LONG_DIALOG[index : index + 1]))
    assert b"".join(output) == expected
    assert bytewise.run() is CLOSED
    for one, other in zip(whole.delivered, bytewise.delivered, strict=True):
        assert (one.mail_from, one.rcpt_tos, one.content) == (
            other.mail_from,
            other.rcpt_tos,
            other.content,
        )
    assert [envelope.content for envelope in whole.delivered] == [
        b"Subject: first\r\n\r\n.stuffed\r\n",
        b"chunk\r\n.\r\nQUIT\r\nend\r\n",
    ]


def test_bdat_chunks_and_last() -> None:
    driver = in_transaction(make_config(hooks=frozenset({"handle_DATA"})))
    assert driver.send(b"BDAT 5\r\nhello") == wire(R.chunk_received(5))
    assert driver.state() is State.IN_BDAT
    assert driver.send(b"BDAT 0\r\n") == wire(R.chunk_received(0))
    assert driver.send(b"NOOP\r\n") == wire(R.OK)
    # A chunk may hold anything, a line that looks like a command included.
    assert driver.send(b"BDAT 14\r\n\r\nQUIT\r\n.\r\nend") == wire(R.chunk_received(14))
    assert driver.send(b"BDAT 2 LAST\r\n\r\n") == b"250 OK\r\n"
    assert driver.state() is State.READY
    [envelope] = driver.delivered
    assert envelope.content == b"hello\r\nQUIT\r\n.\r\nend\r\n"
    assert not driver.closed()


def test_bdat_last_alone_and_empty() -> None:
    driver = in_transaction(make_config(hooks=frozenset({"handle_DATA"})))
    assert driver.send(b"BDAT 0 LAST\r\n") == b"250 OK\r\n"
    [envelope] = driver.delivered
    assert envelope.content == b""


def test_bdat_without_a_size_closes() -> None:
    driver = in_transaction()
    assert driver.send(b"BDAT LAST\r\n") == wire(R.BDAT_BAD_SIZE)
    assert driver.run() is CLOSED


def test_data_over_the_size_limit_is_refused_and_the_session_goes_on() -> None:
    config = make_config(limits=Limits(data_size_limit=64), hooks=frozenset({"handle_DATA"}))
    driver = in_transaction(config)
    assert driver.send("DATA") == wire(R.ENTER_DATA)
    assert driver.send(b"x" * 50 + b"\r\n" + b"y" * 50 + b"\r\n.\r\n") == wire(R.DATA_TOO_LARGE)
    assert driver.delivered == []
    assert driver.state() is State.READY
    assert driver.send("MAIL FROM:<sender@client.test>") == wire(R.MAIL_OK)
    assert driver.send("RCPT TO:<rcpt@mx.test>") == wire(R.RCPT_OK)
    assert driver.send(b"DATA\r\nsmall\r\n.\r\n") == wire(R.ENTER_DATA) + b"250 OK\r\n"
    assert [envelope.content for envelope in driver.delivered] == [b"small\r\n"]


def test_bdat_over_the_size_limit_is_read_and_refused() -> None:
    config = make_config(limits=Limits(data_size_limit=64), hooks=frozenset({"handle_DATA"}))
    driver = in_transaction(config)
    chunk = b"QUIT\r\n" * 20
    assert driver.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"NOOP\r\n") == wire(
        R.DATA_TOO_LARGE, R.OK
    )
    assert driver.delivered == []
    assert driver.state() is State.READY
    assert not driver.closed()


# --- sequencing -----------------------------------------------------------------------------------


#: A dialog that leaves the engine between BDAT chunks.
IN_BDAT_DIALOG: Final = ("EHLO c.test", "MAIL FROM:<a@c.test>", "RCPT TO:<b@mx.test>", "BDAT 0")
#: (commands before, the command, the state it is refused in, its verb in the table).
SEQUENCE_ERRORS: Final = [
    ((), "MAIL FROM:<a@client.test>", State.GREETED, Verb.MAIL),
    ((), "RCPT TO:<b@mx.test>", State.GREETED, Verb.RCPT),
    ((), "DATA", State.GREETED, Verb.DATA),
    (("EHLO c.test",), "RCPT TO:<b@mx.test>", State.READY, Verb.RCPT),
    (("EHLO c.test",), "DATA", State.READY, Verb.DATA),
    (("EHLO c.test", "MAIL FROM:<a@c.test>"), "MAIL FROM:<a@c.test>", State.HAVE_SENDER, Verb.MAIL),
    (("EHLO c.test", "MAIL FROM:<a@c.test>"), "DATA", State.HAVE_SENDER, Verb.DATA),
    (("EHLO c.test", "MAIL FROM:<a@c.test>"), "BDAT 0 LAST", State.HAVE_SENDER, Verb.BDAT_LAST),
    (
        ("EHLO c.test", "MAIL FROM:<a@c.test>", "RCPT TO:<b@mx.test>"),
        "MAIL FROM:<a@c.test>",
        State.HAVE_RECIPIENT,
        Verb.MAIL,
    ),
    (
        IN_BDAT_DIALOG,
        "DATA",
        State.IN_BDAT,
        Verb.DATA,
    ),
    (
        IN_BDAT_DIALOG,
        "MAIL FROM:<a@c.test>",
        State.IN_BDAT,
        Verb.MAIL,
    ),
    (
        IN_BDAT_DIALOG,
        "RCPT TO:<c@mx.test>",
        State.IN_BDAT,
        Verb.RCPT,
    ),
    (
        IN_BDAT_DIALOG,
        "VRFY b@mx.test",
        State.IN_BDAT,
        Verb.VRFY,
    ),
]


@pytest.mark.parametrize(("before", "line", "state", "verb"), SEQUENCE_ERRORS)
def test_bad_sequence(before: Sequence[str], line: str, state: State, verb: Verb) -> None:
    driver = Driver()
    driver.output()
    for command in before:
        assert reply_codes(driver.send(command))[-1] == 250, command
    assert driver.state() is state
    assert (state, verb) not in TRANSITIONS
    expected = sequence_error(state, verb)
    assert expected.code == 503
    assert driver.send(line) == wire(expected, enhanced=bool(before))
    assert driver.state() is state


def test_bad_sequence_texts() -> None:
    """Which 503 each refusal gets, as aiosmtpd words them."""
    assert sequence_error(State.GREETED, Verb.MAIL) is R.HELLO_FIRST
    assert sequence_error(State.READY, Verb.RCPT) is R.NEED_MAIL
    assert sequence_error(State.READY, Verb.DATA) is R.NEED_RCPT
    assert sequence_error(State.HAVE_SENDER, Verb.MAIL) is R.MAIL_NESTED
    assert sequence_error(State.IN_BDAT, Verb.DATA) is R.BDAT_AFTER_DATA


def test_refused_bdat_chunk_is_still_read() -> None:
    driver = greeted()
    assert driver.send(b"BDAT 6\r\nRSET\r\nNOOP\r\n") == wire(
        sequence_error(State.READY, Verb.BDAT), R.OK
    )
    assert driver.state() is State.READY


#: A dialog as (what the client sends, the verb of the table it is, whether it is accepted).
MAIL_LINE: Final = b"MAIL FROM:<a@c.test>\r\n"
RCPT_LINE: Final = b"RCPT TO:<b@mx.test>\r\n"
AUTH_LINE: Final = b"AUTH PLAIN " + plain_token(b"user", b"pw").encode() + b"\r\n"
NOOP_LINE: Final = b"NOOP\r\n"
RSET_LINE: Final = b"RSET\r\n"
TABLE_WALK: Final[list[tuple[bytes, Verb, bool]]] = [
    (NOOP_LINE, Verb.NOOP, True),
    (MAIL_LINE, Verb.MAIL, False),
    (RSET_LINE, Verb.RSET, True),
    (b"HELO c.test\r\n", Verb.HELO, True),
    (RCPT_LINE, Verb.RCPT, False),
    (b"EHLO c.test\r\n", Verb.EHLO, True),
    (MAIL_LINE, Verb.MAIL, True),
    (b"VRFY b@mx.test\r\n", Verb.VRFY, True),
    (AUTH_LINE, Verb.AUTH, False),
    (RCPT_LINE, Verb.RCPT, True),
    (b"RCPT TO:<c@mx.test>\r\n", Verb.RCPT, True),
    (b"BDAT 3\r\nabc", Verb.BDAT, True),
    (NOOP_LINE, Verb.NOOP, True),
    (b"BDAT 3\r\ndef", Verb.BDAT, True),
    (b"HELP\r\n", Verb.HELP, False),
    (RSET_LINE, Verb.RSET, True),
    (AUTH_LINE, Verb.AUTH, True),
    (MAIL_LINE, Verb.MAIL, True),
    (RCPT_LINE, Verb.RCPT, True),
    (b"DATA\r\nmessage\r\n.\r\n", Verb.DATA, True),
    (MAIL_LINE, Verb.MAIL, True),
    (b"STARTTLS\r\n", Verb.STARTTLS, False),
    (RCPT_LINE, Verb.RCPT, True),
    (b"BDAT 1 LAST\r\nx", Verb.BDAT_LAST, True),
    (b"EXPN list\r\n", Verb.EXPN, True),
    (b"STARTTLS\r\n", Verb.STARTTLS, True),
    (MAIL_LINE, Verb.MAIL, False),
    (b"EHLO c.test\r\n", Verb.EHLO, True),
    (b"QUIT\r\n", Verb.QUIT, True),
]


def test_the_state_follows_the_transition_table() -> None:
    driver = Driver(make_config(tls_available=True, help_verbs=("NOOP",), **WITH_AUTH))
    driver.output()
    for data, verb, accepted in TABLE_WALK:
        before = driver.state()
        codes = reply_codes(driver.send(data))
        assert ((before, verb) in TRANSITIONS) is accepted, data
        if accepted:
            assert 503 not in codes, (data, codes)
            assert driver.state() is TRANSITIONS[before, verb], data
        else:
            assert codes == [503], (data, codes)
            assert driver.state() is before, data
    assert driver.closed()


# --- AUTH -----------------------------------------------------------------------------------------


def test_auth_plain_with_initial_response() -> None:
    driver = greeted(make_config(**WITH_AUTH))
    assert driver.send("AUTH PLAIN " + plain_token(b"user", b"pw")) == wire(R.AUTH_SUCCESS)
    session = driver.engine.session
    assert session.authenticated is True
    assert session.auth_data == LoginPassword(b"user", b"pw")
    assert driver.served == [Authenticate("PLAIN", LoginPassword(b"user", b"pw"))]
    assert driver.send("AUTH PLAIN " + plain_token(b"user", b"pw")) == wire(R.AUTH_ALREADY)


def test_auth_plain_with_a_wrong_password() -> None:
    driver = greeted(make_config(**WITH_AUTH))
    assert driver.send("AUTH PLAIN " + plain_token(b"user", b"nope")) == wire(R.AUTH_FAILED)
    assert driver.engine.session.authenticated is False
    assert driver.state() is State.READY
    assert driver.send("NOOP") == wire(R.OK)


def test_auth_plain_after_an_empty_challenge() -> None:
    driver = greeted(make_config(**WITH_AUTH))
    assert driver.send("AUTH PLAIN") == b"334 \r\n"
    assert driver.send(plain_token(b"user", b"pw")) == wire(R.AUTH_SUCCESS)


@pytest.mark.parametrize(("password", "reply"), [(b"pw", R.AUTH_SUCCESS), (b"no", R.AUTH_FAILED)])
def test_auth_login_through_challenges(password: bytes, reply: Reply) -> None:
    driver = greeted(make_config(**WITH_AUTH))
    assert driver.send("AUTH LOGIN") == b"334 " + b64(b"User Name\x00").encode() + b"\r\n"
    assert driver.send(b64(b"user")) == b"334 " + b64(b"Password\x00").encode() + b"\r\n"
    assert driver.send(b64(password)) == wire(reply)
    assert driver.engine.session.authenticated is (reply is R.AUTH_SUCCESS)
    assert driver.served == [Authenticate("LOGIN", LoginPassword(b"user", password))]


def test_auth_login_with_initial_response() -> None:
    driver = greeted(make_config(**WITH_AUTH))
    assert driver.send("AUTH LOGIN " + b64(b"user")) == (
        b"334 " + b64(b"Password\x00").encode() + b"\r\n"
    )
    assert driver.send(b64(b"pw")) == wire(R.AUTH_SUCCESS)


def test_auth_exchange_cancelled_and_malformed() -> None:
    driver = greeted(make_config(limits=Limits(max_auth_failures=10), **WITH_AUTH))
    assert driver.send("AUTH LOGIN") == b"334 " + b64(b"User Name\x00").encode() + b"\r\n"
    assert driver.send("*") == wire(R.AUTH_ABORTED)
    assert driver.send("AUTH PLAIN not-base64!") == wire(R.AUTH_BAD_BASE64)
    assert driver.send("AUTH PLAIN " + b64(b"no separators")) == wire(R.AUTH_CANT_SPLIT)
    assert driver.send("AUTH CRAM-MD5") == wire(R.AUTH_NO_MECHANISM)
    assert driver.send("AUTH") == wire(R.AUTH_NOT_ENOUGH_VALUE)
    assert driver.send("AUTH PLAIN a b") == wire(R.AUTH_TOO_MANY_VALUES)
    assert driver.served == []
    assert driver.state() is State.READY


def test_auth_refused_out_of_place() -> None:
    driver = Driver(make_config(**WITH_AUTH))
    driver.output()
    token = plain_token(b"user", b"pw")
    assert driver.send("AUTH PLAIN " + token) == wire(R.EHLO_FIRST, enhanced=False)
    assert driver.send("HELO client.test") == HELO_REPLY
    assert driver.send("AUTH PLAIN " + token) == wire(R.unrecognized("AUTH"), enhanced=False)
    assert driver.send("EHLO client.test").endswith(b"250 HELP\r\n")
    assert driver.send("MAIL FROM:<a@client.test>") == wire(R.MAIL_OK)
    assert driver.send("AUTH PLAIN " + token) == wire(R.AUTH_IN_TRANSACTION)
    assert driver.served == []


def test_auth_after_helo_is_unrecognized_between_bdat_chunks() -> None:
    driver = Driver(make_config(**WITH_AUTH))
    driver.output()
    token = plain_token(b"user", b"pw")
    assert driver.send("HELO client.test") == HELO_REPLY
    assert driver.send("MAIL FROM:<a@client.test>") == wire(R.MAIL_OK, enhanced=False)
    assert driver.send("RCPT TO:<b@mx.test>") == wire(R.RCPT_OK, enhanced=False)
    assert driver.send("AUTH PLAIN " + token) == wire(R.unrecognized("AUTH"), enhanced=False)
    assert driver.send(b"BDAT 0\r\n") == wire(R.chunk_received(0), enhanced=False)
    assert driver.state() is State.IN_BDAT
    # As the reference model says: AUTH is an ESMTP extension, unknown to a HELO client.
    assert Model(phase=Phase.CHUNKING, extended=False).auth(good=True) == 500
    assert driver.send("AUTH PLAIN " + token) == wire(R.unrecognized("AUTH"), enhanced=False)


def test_too_many_auth_failures_close_with_421() -> None:
    config = make_config(limits=Limits(max_auth_failures=2), **WITH_AUTH)
    driver = greeted(config)
    bad = "AUTH PLAIN " + plain_token(b"user", b"bad")
    assert driver.send(bad) == wire(R.AUTH_FAILED)
    assert not driver.closed()
    assert driver.send(bad) == wire(R.AUTH_FAILED, R.AUTH_TOO_MANY_FAILURES)
    assert driver.closed()
    assert driver.run() is CLOSED
    assert driver.send("NOOP") == b""


# --- STARTTLS -------------------------------------------------------------------------------------


def test_starttls() -> None:
    driver = greeted(make_config(tls_available=True))
    old_session = driver.engine.session
    # What the client pipelines after STARTTLS was sent in the clear: it is dropped unread.
    assert driver.send(b"STARTTLS\r\nMAIL FROM:<injected@client.test>\r\n") == wire(R.READY_FOR_TLS)
    assert driver.served == [StartTLS()]
    assert driver.state() is State.GREETED
    assert driver.engine.tls_active
    new_session = driver.engine.session
    assert new_session is not old_session
    assert new_session.host_name is None
    assert not new_session.extended_smtp
    assert driver.engine.envelope.mail_from is None
    # Plain replies until the client greets again over TLS, where STARTTLS is not offered.
    assert driver.send("NOOP") == wire(R.OK, enhanced=False)
    assert driver.send("EHLO client.test") == EHLO_PLAIN
    assert driver.send("STARTTLS") == wire(R.TLS_ALREADY_ACTIVE)


def test_starttls_refused() -> None:
    driver = greeted()
    assert driver.send("STARTTLS") == wire(R.TLS_NOT_AVAILABLE)
    assert driver.send("STARTTLS now") == wire(R.syntax("STARTTLS"))
    tls = in_transaction(make_config(tls_available=True))
    assert tls.send("STARTTLS") == wire(sequence_error(State.HAVE_RECIPIENT, Verb.STARTTLS))
    assert tls.served == []


def test_a_failed_handshake_closes() -> None:
    driver = greeted(make_config(tls_available=True))
    driver.engine.receive_data(b"STARTTLS\r\n")
    assert driver.engine.next_request() == StartTLS()
    assert driver.output() == wire(R.READY_FOR_TLS)
    driver.engine.close()
    assert driver.engine.next_request() is CLOSED


def test_require_starttls() -> None:
    driver = Driver(make_config(tls_available=True, require_starttls=True))
    driver.output()
    assert driver.send("MAIL FROM:<a@client.test>") == wire(R.STARTTLS_FIRST, enhanced=False)
    assert driver.send("EHLO client.test").endswith(b"250 HELP\r\n")
    # A refused BDAT still has its chunk read: the RSET inside it is not a command.
    assert driver.send(b"BDAT 6\r\nRSET\r\nNOOP\r\n") == wire(R.STARTTLS_FIRST, R.OK)
    assert driver.send("STARTTLS") == wire(R.READY_FOR_TLS)
    assert driver.send("EHLO client.test") == EHLO_PLAIN
    assert driver.send("MAIL FROM:<a@client.test>") == wire(R.MAIL_OK)


# --- hooks and their errors -----------------------------------------------------------------------


def raising(*args: object) -> object:
    raise ValueError("secret detail")


def test_a_hook_that_raises_gets_451_and_the_session_goes_on() -> None:
    driver = greeted(make_config(hooks=frozenset({"handle_MAIL"})))
    engine = driver.engine
    engine.receive_data(b"MAIL FROM:<sender@client.test> SIZE=100\r\n")
    request = engine.next_request()
    assert request == CallHook("handle_MAIL", ("sender@client.test", ["SIZE=100"]))
    assert driver.busy()
    engine.fail(ValueError("secret detail"))
    assert not driver.busy()
    assert engine.next_request() is NEED_DATA
    assert driver.output() == wire(R.INTERNAL_ERROR)
    assert driver.state() is State.READY
    assert engine.envelope.mail_from is None
    assert driver.send("NOOP") == wire(R.OK)


def test_a_hook_reply_is_sent_as_is() -> None:
    hooks: dict[str, Hook] = {"handle_MAIL": lambda session, envelope, address, params: "250 Fine"}
    driver = greeted(make_config(hooks=frozenset(hooks)), hooks=hooks)
    assert driver.send("MAIL FROM:<sender@client.test>") == b"250 Fine\r\n"
    assert driver.state() is State.HAVE_SENDER
    assert driver.engine.envelope.mail_from == "sender@client.test"


@pytest.mark.parametrize(
    "status", ["OK", "25 OK", "250-OK", "250 OK\r\n550 mixed", "250 a\nb", "", None, 250, b"250 OK"]
)
def test_a_malformed_hook_reply_gets_451(status: object) -> None:
    hooks: dict[str, Hook] = {"handle_MAIL": lambda session, envelope, address, params: status}
    driver = greeted(make_config(hooks=frozenset(hooks)), hooks=hooks)
    assert driver.send("MAIL FROM:<sender@client.test>") == wire(R.INTERNAL_ERROR)
    assert driver.state() is State.READY
    assert driver.send("NOOP") == wire(R.OK)


def test_handle_exception_answers_for_a_failed_hook() -> None:
    caught: list[Exception] = []

    def handle_exception(error: Exception) -> object:
        caught.append(error)
        return "450 4.3.0 Try again later"

    hooks: dict[str, Hook] = {"handle_RCPT": raising, "handle_exception": handle_exception}
    driver = greeted(make_config(hooks=frozenset(hooks)), hooks=hooks)
    assert driver.send("MAIL FROM:<sender@client.test>") == wire(R.MAIL_OK)
    assert driver.send("RCPT TO:<rcpt@mx.test>") == b"450 4.3.0 Try again later\r\n"
    [error] = caught
    assert isinstance(error, ValueError)
    assert driver.served == [
        CallHook("handle_RCPT", ("rcpt@mx.test", [])),
        HandleError(error),
    ]
    assert driver.state() is State.HAVE_SENDER


@pytest.mark.parametrize("handle_exception", [raising, lambda error: "nonsense"])
def test_a_failing_handle_exception_gets_451(handle_exception: Hook) -> None:
    hooks: dict[str, Hook] = {"handle_NOOP": raising, "handle_exception": handle_exception}
    driver = greeted(make_config(hooks=frozenset(hooks)), hooks=hooks)
    assert driver.send("NOOP") == wire(R.INTERNAL_ERROR)
    assert driver.send("RSET") == wire(R.OK)


def test_a_failed_delivery_ends_the_transaction() -> None:
    hooks: dict[str, Hook] = {"handle_DATA": raising}
    driver = in_transaction(make_config(hooks=frozenset(hooks)), hooks=hooks)
    assert driver.send(b"DATA\r\nbody\r\n.\r\n") == wire(R.ENTER_DATA, R.INTERNAL_ERROR)
    assert driver.state() is State.READY
    assert driver.engine.envelope.rcpt_tos == []


# --- the end of a connection ----------------------------------------------------------------------


def test_quit() -> None:
    driver = greeted()
    assert driver.send("QUIT now") == wire(R.syntax("QUIT"))
    assert driver.send("QUIT") == wire(R.BYE)
    assert driver.closed()
    assert driver.run() is CLOSED
    assert driver.send("NOOP") == b""


def test_eof_answers_what_was_sent_then_closes() -> None:
    driver = greeted()
    driver.engine.receive_data(b"NOOP\r\n")
    assert driver.eof() == wire(R.OK)
    assert driver.closed()
    assert driver.run() is CLOSED


def test_eof_in_the_middle_of_data_delivers_nothing() -> None:
    driver = in_transaction(make_config(hooks=frozenset({"handle_DATA"})))
    assert driver.send(b"DATA\r\nSubject: cut short\r\n\r\nbody\r\n") == wire(R.ENTER_DATA)
    assert driver.eof() == b""
    assert driver.closed()
    assert driver.run() is CLOSED
    assert driver.delivered == []
    assert driver.served == []


def test_eof_in_the_middle_of_an_auth_exchange() -> None:
    driver = greeted(make_config(**WITH_AUTH))
    assert driver.send("AUTH LOGIN").startswith(b"334 ")
    assert driver.eof() == b""
    assert driver.closed()
    assert driver.served == []


# --- time -----------------------------------------------------------------------------------------


def test_idle_timeout() -> None:
    driver = Driver(make_config(limits=Limits(timeout=30.0)))
    driver.output()
    engine = driver.engine
    assert engine.next_deadline() == 30.0
    driver.clock.advance(20.0)
    assert driver.send("NOOP") == wire(R.OK, enhanced=False)
    assert engine.next_deadline() == 50.0
    driver.clock.advance(29.5)
    assert engine.expire() is None
    assert not driver.closed()
    driver.clock.advance(0.5)
    assert engine.expire() is Expiry.IDLE
    assert driver.output() == wire(R.TIMEOUT, enhanced=False)
    assert driver.closed()
    assert driver.run() is CLOSED


def test_a_line_trickling_in_must_end_within_the_timeout() -> None:
    driver = greeted(make_config(limits=Limits(timeout=30.0)))
    engine = driver.engine
    for byte in b"NOOP"[:3]:
        assert driver.send(bytes([byte])) == b""
        driver.clock.advance(10.0)
    # Each byte was activity, but the line began at 0: it had until 30.
    assert driver.clock.now == 30.0
    assert engine.next_deadline() == 30.0
    assert engine.expire() is Expiry.IDLE
    assert driver.output() == wire(R.TIMEOUT)


def test_a_hook_that_does_not_answer_times_out() -> None:
    hooks: dict[str, Hook] = {"handle_NOOP": lambda session, envelope, arg: "250 OK"}
    driver = greeted(make_config(limits=Limits(timeout=30.0), hooks=frozenset(hooks)), hooks=hooks)
    engine = driver.engine
    driver.clock.advance(5.0)
    engine.receive_data(b"NOOP\r\n")
    assert engine.next_request() == CallHook("handle_NOOP", ("",))
    assert driver.busy()
    assert engine.next_deadline() == 35.0
    driver.clock.advance(29.0)
    assert engine.expire() is None
    driver.clock.advance(1.0)
    assert engine.expire() is Expiry.HOOK
    assert driver.output() == wire(R.TIMEOUT)
    assert driver.closed()


def test_the_data_deadline_holds_however_steadily_the_bytes_come() -> None:
    limits = Limits(timeout=30.0, data_timeout=100.0)
    driver = in_transaction(make_config(limits=limits, hooks=frozenset({"handle_DATA"})))
    engine = driver.engine
    assert driver.hard_deadline() is None
    assert driver.send("DATA") == wire(R.ENTER_DATA)
    assert driver.hard_deadline() == 100.0
    for _ in range(4):
        driver.clock.advance(20.0)
        assert driver.send(b"a line\r\n") == b""
        assert engine.expire() is None
    assert engine.next_deadline() == 100.0  # not 80 + 30
    driver.clock.advance(19.0)
    assert engine.expire() is None
    driver.clock.advance(1.0)
    assert engine.expire() is Expiry.IDLE
    assert driver.output() == wire(R.TIMEOUT)
    assert driver.run() is CLOSED
    assert driver.delivered == []


def test_the_data_deadline_ends_with_the_message() -> None:
    limits = Limits(timeout=30.0, data_timeout=100.0)
    driver = in_transaction(make_config(limits=limits))
    assert driver.send(b"DATA\r\nbody\r\n.\r\n") == wire(R.ENTER_DATA, R.OK)
    assert driver.hard_deadline() is None
    assert driver.engine.next_deadline() == 30.0


def test_bdat_has_the_data_deadline_too() -> None:
    limits = Limits(timeout=30.0, data_timeout=100.0)
    driver = in_transaction(make_config(limits=limits))
    assert driver.send(b"BDAT 10\r\nabc") == b""
    assert driver.hard_deadline() == 100.0
    assert driver.send(b"defghij") == wire(R.chunk_received(10))
    assert driver.hard_deadline() is None


# --- shutting down --------------------------------------------------------------------------------


def test_shutdown_when_idle_closes_at_once() -> None:
    driver = greeted()
    driver.engine.request_shutdown()
    assert driver.output() == wire(R.SHUTTING_DOWN)
    assert driver.closed()
    assert driver.run() is CLOSED


def test_shutdown_in_a_transaction_waits_for_the_message() -> None:
    driver = in_transaction(make_config(hooks=frozenset({"handle_DATA"})))
    driver.engine.request_shutdown()
    assert driver.output() == b""
    assert not driver.closed()
    assert driver.send("RCPT TO:<another@mx.test>") == wire(R.RCPT_OK)
    assert driver.send("DATA") == wire(R.ENTER_DATA)
    assert driver.send(b"body\r\n.\r\n") == b"250 OK\r\n" + wire(R.SHUTTING_DOWN)
    assert driver.closed()
    assert driver.run() is CLOSED
    [envelope] = driver.delivered
    assert envelope.rcpt_tos == ["rcpt@mx.test", "another@mx.test"]


def test_shutdown_while_a_hook_runs_waits_for_it() -> None:
    hooks: dict[str, Hook] = {"handle_NOOP": lambda session, envelope, arg: "250 Still here"}
    driver = greeted(make_config(hooks=frozenset(hooks)), hooks=hooks)
    engine = driver.engine
    engine.receive_data(b"NOOP\r\n")
    assert isinstance(engine.next_request(), CallHook)
    engine.request_shutdown()
    assert not driver.closed()
    engine.resume("250 Still here")
    assert driver.closed()
    assert driver.output() == b"250 Still here\r\n" + wire(R.SHUTTING_DOWN)


# --- LMTP -----------------------------------------------------------------------------------------


def test_lmtp_greets_with_lhlo_only() -> None:
    driver = Driver(make_config(lmtp=True, commands=LMTP_COMMANDS))
    assert driver.output() == GREETING
    assert driver.send("HELO client.test") == wire(R.unrecognized("HELO"), enhanced=False)
    assert driver.send("EHLO client.test") == wire(R.unrecognized("EHLO"), enhanced=False)
    assert driver.state() is State.GREETED
    assert driver.send("LHLO client.test") == EHLO_PLAIN
    assert driver.state() is State.READY
    assert driver.engine.session.extended_smtp


def test_lmtp_answers_once_per_recipient() -> None:
    driver = Driver(make_config(lmtp=True, commands=LMTP_COMMANDS))
    driver.output()
    output = driver.send(
        b"LHLO client.test\r\n"
        b"MAIL FROM:<sender@client.test>\r\n"
        b"RCPT TO:<one@mx.test>\r\n"
        b"RCPT TO:<bad\r\n"
        b"RCPT TO:<two@mx.test>\r\n"
        b"DATA\r\nbody\r\n.\r\n"
    )
    assert output == EHLO_PLAIN + wire(
        R.MAIL_OK,
        R.RCPT_OK,
        R.MALFORMED_ADDRESS,
        R.RCPT_OK,
        R.ENTER_DATA,
        R.recipient_delivered("one@mx.test"),
        R.recipient_delivered("two@mx.test"),
    )
    assert driver.state() is State.READY


def test_lmtp_hooks_answer_per_recipient() -> None:
    def per_recipient(session: Session, envelope: Envelope, recipient: str) -> object:
        return "250 2.1.5 Delivered" if recipient.startswith("one") else "550 5.1.1 No mailbox"

    hooks: dict[str, Hook] = {"handle_DATA_recipient": per_recipient}
    config = make_config(lmtp=True, commands=LMTP_COMMANDS, hooks=frozenset(hooks))
    driver = Driver(config, hooks=hooks)
    driver.output()
    driver.send(b"LHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<one@mx.test>\r\n")
    assert driver.send(b"RCPT TO:<two@mx.test>\r\nDATA\r\nbody\r\n.\r\n") == wire(
        R.RCPT_OK, R.ENTER_DATA
    ) + (b"250 2.1.5 Delivered\r\n550 5.1.1 No mailbox\r\n")
    assert driver.served == [
        CallHook("handle_DATA_recipient", ("one@mx.test",)),
        CallHook("handle_DATA_recipient", ("two@mx.test",)),
    ]


def test_lmtp_handle_data_answers_for_every_recipient() -> None:
    config = make_config(lmtp=True, commands=LMTP_COMMANDS, hooks=frozenset({"handle_DATA"}))
    driver = Driver(config)
    driver.output()
    driver.send(b"LHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<one@mx.test>\r\n")
    driver.send(b"RCPT TO:<two@mx.test>\r\n")
    assert driver.send(b"DATA\r\nbody\r\n.\r\n") == wire(R.ENTER_DATA) + b"250 OK\r\n" * 2
    assert len(driver.delivered) == 1


def test_lmtp_refuses_a_large_message_once_per_recipient() -> None:
    config = make_config(lmtp=True, commands=LMTP_COMMANDS, limits=Limits(data_size_limit=10))
    driver = Driver(config)
    driver.output()
    driver.send(b"LHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<one@mx.test>\r\n")
    driver.send(b"RCPT TO:<two@mx.test>\r\n")
    assert driver.send(b"DATA\r\n" + b"x" * 20 + b"\r\n.\r\n") == wire(
        R.ENTER_DATA, R.DATA_TOO_LARGE, R.DATA_TOO_LARGE
    )


# --- the PROXY header -----------------------------------------------------------------------------


def test_proxy_header_comes_before_the_greeting() -> None:
    driver = Driver(make_config(proxy_timeout=5.0))
    assert driver.output() == b""
    assert driver.run() is NEED_DATA
    assert driver.hard_deadline() == 5.0
    assert driver.send(PROXY_V1[:10]) == b""
    assert driver.send(PROXY_V1[10:] + b"EHLO client.test\r\n") == GREETING + EHLO_PLAIN
    assert driver.hard_deadline() is None
    proxy = driver.engine.session.proxy_data
    assert proxy is not None
    assert proxy.valid
    assert proxy.version == 1
    assert (proxy.src_addr, proxy.src_port) == (IPv4Address("192.0.2.1"), 1234)
    assert (proxy.dst_addr, proxy.dst_port) == (IPv4Address("192.0.2.2"), 25)


def test_malformed_proxy_header_closes_without_a_word() -> None:
    driver = Driver(make_config(proxy_timeout=5.0))
    assert driver.send(b"EHLO client.test\r\n") == b""
    assert driver.closed()
    assert driver.run() is CLOSED


def test_missing_proxy_header_times_out_without_a_greeting() -> None:
    driver = Driver(make_config(proxy_timeout=5.0))
    assert driver.send(b"PROXY TCP4 ") == b""
    assert driver.engine.next_deadline() == 5.0
    driver.clock.advance(5.0)
    assert driver.engine.expire() is Expiry.IDLE
    # No greeting: the 421 of every timeout, and the connection closed.
    assert driver.output() == wire(R.TIMEOUT, enhanced=False)
    assert driver.closed()


def test_proxy_header_from_an_untrusted_peer_is_not_read() -> None:
    config = make_config(proxy_timeout=5.0, proxy_trusted=(ip_network("10.0.0.0/8"),))
    refused = Driver(config, peer_host="192.0.2.9")
    assert refused.closed()
    assert refused.output() == b""
    trusted = Driver(config, peer_host="10.1.2.3")
    assert not trusted.closed()
    assert trusted.send(PROXY_V1) == GREETING


@pytest.mark.parametrize(("verdict", "output"), [(True, GREETING), (False, b"")])
def test_handle_proxy_decides(verdict: bool, output: bytes) -> None:
    hooks: dict[str, Hook] = {"handle_PROXY": lambda session, envelope, data: verdict}
    driver = Driver(make_config(proxy_timeout=5.0, hooks=frozenset(hooks)), hooks=hooks)
    assert driver.send(PROXY_V1) == output
    assert driver.closed() is not verdict
    [request] = driver.served
    assert isinstance(request, CallHook)
    assert request.name == "handle_PROXY"
    assert request.args == (driver.engine.session.proxy_data,)


# --- the server's own commands --------------------------------------------------------------------


def test_a_custom_command_is_run_by_the_adapter() -> None:
    runs: list[str | None] = []

    def xfoo(driver: Driver, arg: str | None) -> None:
        runs.append(arg)
        driver.engine.send_status("250 2.0.0 foo done", "smtp_XFOO")

    config = make_config(commands=COMMANDS | {"XFOO"}, custom_commands=frozenset({"XFOO"}))
    driver = greeted(config, commands={"XFOO": xfoo})
    assert driver.send("XFOO bar baz") == b"250 2.0.0 foo done\r\n"
    assert driver.send("xfoo") == b"250 2.0.0 foo done\r\n"
    assert runs == ["bar baz", None]
    assert driver.served == [RunCommand("XFOO", "bar baz"), RunCommand("XFOO", None)]
    # A verb the server does not have is still unknown.
    assert driver.send("XBAR") == wire(R.unrecognized("XBAR"))


def test_an_override_runs_the_built_in_command_itself() -> None:
    def smtp_data(driver: Driver, arg: str | None) -> None:
        driver.drive(driver.engine.command("DATA", arg))

    config = make_config(custom_commands=frozenset({"DATA"}), hooks=frozenset({"handle_DATA"}))
    driver = in_transaction(config, commands={"DATA": smtp_data})
    assert driver.send(b"DATA\r\n..stuffed\r\n.\r\nNOOP\r\n") == wire(R.ENTER_DATA) + (
        b"250 OK\r\n" + wire(R.OK)
    )
    assert [envelope.content for envelope in driver.delivered] == [b".stuffed\r\n"]
    assert driver.served == [RunCommand("DATA", None), CallHook("handle_DATA", ())]


def test_refuse_command() -> None:
    def smtp_bdat(driver: Driver, arg: str | None) -> None:
        driver.drive(driver.engine.refuse_command("BDAT", arg, "554 5.7.1 No chunks today"))

    def smtp_vrfy(driver: Driver, arg: str | None) -> None:
        assert driver.engine.refuse_command("VRFY", arg, R.AUTH_REQUIRED) is None

    config = make_config(custom_commands=frozenset({"BDAT", "VRFY"}))
    driver = in_transaction(config, commands={"BDAT": smtp_bdat, "VRFY": smtp_vrfy})
    # The chunk is read and dropped: the RSET inside it is never a command.
    assert driver.send(b"BDAT 6\r\nRSET\r\nNOOP\r\n") == b"554 5.7.1 No chunks today\r\n" + wire(
        R.OK
    )
    assert driver.state() is State.HAVE_RECIPIENT
    assert driver.send("VRFY someone") == wire(R.AUTH_REQUIRED)


def test_auth_required_refuses_before_the_command() -> None:
    driver = greeted(make_config(auth_required=True, **WITH_AUTH))
    assert driver.send("MAIL FROM:<a@client.test>") == wire(R.AUTH_REQUIRED)
    assert driver.send(b"BDAT 6\r\nRSET\r\nNOOP\r\n") == wire(R.AUTH_REQUIRED, R.OK)
    assert driver.send("AUTH PLAIN " + plain_token(b"user", b"pw")) == wire(R.AUTH_SUCCESS)
    assert driver.send("MAIL FROM:<a@client.test>") == wire(R.MAIL_OK)


# --- limits ---------------------------------------------------------------------------------------


def test_command_call_limit() -> None:
    driver = greeted(make_config(call_limits={"NOOP": 2, "*": 20}))
    assert driver.send(b"NOOP\r\nNOOP\r\n") == wire(R.OK, R.OK)
    for _ in range(5):
        assert driver.send("RSET") == wire(R.OK)
    assert driver.send(b"NOOP\r\nRSET\r\n") == wire(R.call_limit_exceeded("NOOP"))
    assert driver.closed()
    assert driver.run() is CLOSED


def test_command_call_limit_default() -> None:
    driver = greeted(make_config(call_limits={"NOOP": 2, "*": 20}))
    # EHLO was the first of the 20 allowed.
    for _ in range(19):
        assert driver.send("EHLO client.test") == EHLO_PLAIN
    assert driver.send("EHLO client.test") == wire(R.call_limit_exceeded("EHLO"))
    assert driver.closed()


def test_too_many_unrecognized_commands() -> None:
    driver = greeted(make_config(limits=Limits(bogus_limit=3)))
    assert driver.send(b"XYZZY\r\nXYZZY\r\n") == wire(
        R.unrecognized("XYZZY"), R.unrecognized("XYZZY")
    )
    assert driver.send("FOO") == wire(R.unrecognized("FOO"), R.TOO_MANY_UNRECOGNIZED)
    assert driver.closed()


# --- driving the engine out of order --------------------------------------------------------------


def test_resume_without_a_request_out_is_an_engine_error() -> None:
    driver = greeted()
    engine = driver.engine
    with pytest.raises(EngineError):
        engine.resume(None)
    with pytest.raises(EngineError):
        engine.fail(ValueError())
    # Waiting for DATA content is not a request either.
    driver.send("MAIL FROM:<a@client.test>")
    driver.send("RCPT TO:<b@mx.test>")
    assert driver.send("DATA") == wire(R.ENTER_DATA)
    with pytest.raises(EngineError):
        engine.resume("250 OK")
    # The engine is unharmed.
    assert driver.send(b"body\r\n.\r\n") == wire(R.OK)


def test_resume_twice_is_an_engine_error() -> None:
    hooks: dict[str, Hook] = {"handle_NOOP": lambda session, envelope, arg: "250 OK"}
    driver = greeted(make_config(hooks=frozenset(hooks)), hooks=hooks)
    engine = driver.engine
    engine.receive_data(b"NOOP\r\n")
    assert isinstance(engine.next_request(), CallHook)
    engine.resume("250 OK")
    with pytest.raises(EngineError):
        engine.resume("250 OK")
    assert driver.output() == b"250 OK\r\n"


# --- the reference model, against the engine ------------------------------------------------------


#: What the fake server of :class:`tests.test_state_machine.SMTPDialog` is configured with.
DIALOG_CONFIG: Final = make_config(
    tls_available=True,
    limits=Limits(bogus_limit=100_000, max_auth_failures=100_000),
    hooks=frozenset({"handle_DATA"}),
    **WITH_AUTH,
)


class EngineDialog(RuleBasedStateMachine):
    """One client against the engine, checked step by step against :class:`Model`: the rules and
    invariants of :class:`~tests.test_state_machine.SMTPDialog`, without an event loop."""

    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.delivered: list[Envelope] = []
        self.transcript: list[bytes] = []
        self.driver = self.connect()

    def connect(self) -> Driver:
        driver = Driver(DIALOG_CONFIG, delivered=self.delivered)
        greeting = driver.output()
        self.transcript.append(greeting)
        assert greeting == GREETING
        return driver

    def exchange(self, data: bytes) -> list[int]:
        """Send ``data``; the code of each reply it got."""
        self.transcript.append(data)
        output = self.driver.send(data)
        self.transcript.append(output)
        return reply_codes(output)

    def send(self, line: str) -> int:
        """Send one command line; the code of its one reply."""
        codes = self.exchange(line.encode("utf-8") + b"\r\n")
        assert len(codes) == 1, f"{line!r} got {codes}\n{self.transcript_text()}"
        return codes[0]

    def transcript_text(self) -> str:
        return b"".join(self.transcript).decode("utf-8", "replace")

    def check(self, got: int, expected: int, what: str) -> None:
        assert got == expected, (
            f"{what}: engine said {got}, the model says {expected}\n{self.transcript_text()}"
        )

    # --- greetings ------------------------------------------------------------------------------

    @rule()
    def ehlo(self) -> None:
        self.check(self.send("EHLO client.test"), self.model.greet(True), "EHLO")

    @rule()
    def helo(self) -> None:
        self.check(self.send("HELO client.test"), self.model.greet(False), "HELO")

    # --- a transaction --------------------------------------------------------------------------

    @rule(sender=st.one_of(st.just(""), mailboxes()))
    def mail(self, sender: str) -> None:
        self.check(self.send(f"MAIL FROM:<{sender}>"), self.model.mail(), f"MAIL FROM:<{sender}>")

    @rule()
    def mail_malformed(self) -> None:
        code = self.send("MAIL FROM:<unterminated")
        if self.model.phase is Phase.READY:
            assert code in (501, 553), code
        else:
            self.check(code, 503, "malformed MAIL out of sequence")

    @rule(recipient=mailboxes())
    def rcpt(self, recipient: str) -> None:
        self.check(self.send(f"RCPT TO:<{recipient}>"), self.model.rcpt(), f"RCPT TO:<{recipient}>")

    @rule()
    def data(self) -> None:
        code = self.send("DATA")
        if code == 354:
            code = self.send_message()
        self.check(code, self.model.data(), "DATA")

    def send_message(self) -> int:
        [code] = self.exchange(dot_stuff(MESSAGE) + b".\r\n")
        return code

    @rule(chunk=bdat_chunks, last=st.booleans())
    def bdat(self, chunk: bytes, last: bool) -> None:
        head = f"BDAT {len(chunk)}{' LAST' * last}\r\n".encode("ascii")
        [code] = self.exchange(head + chunk)
        self.check(code, self.model.bdat(last), f"BDAT {len(chunk)}{' LAST' * last}")

    @rule()
    def rset(self) -> None:
        self.check(self.send("RSET"), self.model.rset(), "RSET")

    # --- neutral and erroneous commands ---------------------------------------------------------

    @rule(text=st.none() | st.text("abcXYZ 123", max_size=20))
    def noop(self, text: str | None) -> None:
        self.check(self.send("NOOP" if text is None else f"NOOP {text}"), 250, "NOOP")

    @precondition(lambda self: self.model.phase is not Phase.CHUNKING)
    @rule(address=mailboxes())
    def vrfy(self, address: str) -> None:
        self.check(self.send(f"VRFY {address}"), 252, "VRFY")

    @rule(verb=st.sampled_from(["XYZZY", "FOO bar", "MAILX FROM:<a@b>", "TURN"]))
    def unknown(self, verb: str) -> None:
        self.check(self.send(verb), 500, verb)

    @rule()
    def starttls(self) -> None:
        self.check(self.send("STARTTLS"), self.model.starttls(), "STARTTLS")
        assert self.driver.engine.tls_active == self.model.tls
        self.check(self.send("NOOP"), 250, "NOOP after STARTTLS")

    @rule(good=st.booleans(), mechanism=st.sampled_from(["PLAIN", "LOGIN"]))
    def auth(self, good: bool, mechanism: str) -> None:
        password = b"pw" if good else b"wrong"
        if mechanism == "PLAIN":
            code = self.send("AUTH PLAIN " + plain_token(b"user", password))
        else:
            code = self.send("AUTH LOGIN " + b64(b"user"))
            if code == 334:
                code = self.send(b64(password))
        self.check(code, self.model.auth(good), f"AUTH {mechanism}")

    # --- pipelining and the end -----------------------------------------------------------------

    @rule(group=st.lists(st.sampled_from(sorted(SIMPLE)), min_size=2, max_size=6))
    def pipelined(self, group: Sequence[str]) -> None:
        codes = self.exchange(b"".join(SIMPLE[name][0].encode() + b"\r\n" for name in group))
        assert len(codes) == len(group), self.transcript_text()
        for name, code in zip(group, codes, strict=True):
            self.check(code, SIMPLE[name][1](self.model), f"pipelined {name}")

    @rule()
    def quit_and_reconnect(self) -> None:
        self.check(self.send("QUIT"), 221, "QUIT")
        assert self.driver.run() is CLOSED
        assert self.driver.output() == b""
        self.model.reconnect()
        self.driver = self.connect()

    @invariant()
    def delivered_as_modelled(self) -> None:
        assert [len(envelope.rcpt_tos) for envelope in self.delivered] == self.model.messages

    @invariant()
    def engine_state_agrees(self) -> None:
        engine = self.driver.engine
        if not engine.closed:
            assert engine.state is ENGINE_STATE[self.model.phase], self.transcript_text()


TestEngineDialog = EngineDialog.TestCase
TestEngineDialog.settings = settings(
    deadline=None,
    stateful_step_count=40,
    suppress_health_check=[HealthCheck.too_slow],
)
