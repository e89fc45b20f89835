"""Handlers that raise, return garbage, or hang.

Whatever a hook does, the client gets a well-formed reply (``451 4.3.0`` for an exception or a
malformed reply, with no exception text on the wire), the session goes on, and other clients are
not affected. A hook that never returns is the one case the engine has no deadline for: the
client waits until the server stops (see the strict xfails).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support import RawClient, connected, running
from typed_smtpd.controller import Controller
from typed_smtpd.proto import replies as R
from typed_smtpd.session import AuthResult, Envelope, Session
from typed_smtpd.smtp import SMTP

from .helpers import HOST, Figures, record

pytestmark = pytest.mark.integration

SECRET = "secret detail from inside the handler"


class Misbehaviour:
    """What every hook of a :class:`BadHandler` does: raise, return a value, or hang."""

    def __init__(self, kind: str, value: object = None) -> None:
        self.kind = kind
        self.value = value
        self.hung = threading.Event()
        self.cancelled = threading.Event()
        self.calls = 0

    async def __call__(self) -> Any:
        self.calls += 1
        if self.kind == "raise":
            raise RuntimeError(SECRET)
        if self.kind == "hang":
            self.hung.set()
            try:
                await asyncio.Event().wait()  # never set: only cancellation ends it
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        return self.value


def handler_for(hook: str, act: Misbehaviour) -> object:
    """A handler whose only hook is ``hook``, doing ``act``."""

    async def helo(
        self: Any, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> Any:
        """``handle_HELO``."""
        return await act()

    async def ehlo(
        self: Any,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> Any:
        """``handle_EHLO`` (the five-argument form)."""
        return await act()

    async def mail(
        self: Any,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> Any:
        """``handle_MAIL``."""
        return await act()

    async def rcpt(
        self: Any,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> Any:
        """``handle_RCPT``."""
        return await act()

    async def common(self: Any, server: SMTP, session: Session, envelope: Envelope) -> Any:
        """``handle_DATA``, ``handle_RSET`` or ``handle_QUIT``."""
        return await act()

    async def noop(self: Any, server: SMTP, session: Session, envelope: Envelope, arg: str) -> Any:
        """``handle_NOOP``."""
        return await act()

    async def vrfy(
        self: Any, server: SMTP, session: Session, envelope: Envelope, address: str
    ) -> Any:
        """``handle_VRFY``."""
        return await act()

    async def auth(
        self: Any, server: SMTP, session: Session, envelope: Envelope, args: list[str]
    ) -> Any:
        """``handle_AUTH``."""
        return await act()

    methods: dict[str, Callable[..., Any]] = {
        "handle_HELO": helo,
        "handle_EHLO": ehlo,
        "handle_MAIL": mail,
        "handle_RCPT": rcpt,
        "handle_DATA": common,
        "handle_RSET": common,
        "handle_QUIT": common,
        "handle_NOOP": noop,
        "handle_VRFY": vrfy,
        "handle_AUTH": auth,
    }
    return type(f"Bad{hook}", (), {hook: methods[hook]})()


@dataclass(frozen=True)
class Trigger:
    """The commands that lead up to a hook, and the one that calls it."""

    setup: tuple[str, ...]
    command: str
    enhanced: bool = True
    closes: bool = False


EHLO = "EHLO client.example.test"
TRIGGERS: dict[str, Trigger] = {
    "handle_HELO": Trigger((), "HELO client.example.test", enhanced=False),
    "handle_EHLO": Trigger((), EHLO),
    "handle_MAIL": Trigger((EHLO,), "MAIL FROM:<a@example.test>"),
    "handle_RCPT": Trigger((EHLO, "MAIL FROM:<a@example.test>"), "RCPT TO:<b@example.test>"),
    "handle_DATA": Trigger(
        (EHLO, "MAIL FROM:<a@example.test>", "RCPT TO:<b@example.test>", "DATA"),
        "Subject: x\r\n\r\nbody\r\n.",
    ),
    "handle_RSET": Trigger((EHLO,), "RSET"),
    "handle_NOOP": Trigger((EHLO,), "NOOP"),
    "handle_VRFY": Trigger((EHLO,), "VRFY <a@example.test>"),
    "handle_QUIT": Trigger((EHLO,), "QUIT", closes=True),
    "handle_AUTH": Trigger((EHLO,), "AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ="),
}

SERVER_KWARGS: dict[str, Any] = {"auth_require_tls": False}


def internal_error(enhanced: bool) -> tuple[int, str]:
    """The ``451 4.3.0`` reply as :meth:`RawClient.reply` reads it."""
    return R.INTERNAL_ERROR.code, R.INTERNAL_ERROR.line(enhanced=enhanced)[4:]


def run_trigger(client: RawClient, trigger: Trigger) -> tuple[int, str]:
    """Send the trigger's set-up commands, then the command that calls the hook."""
    for command in trigger.setup:
        code, text = client.cmd(command)
        assert 200 <= code < 400, (command, code, text)
    return client.cmd(trigger.command)


def check_goes_on(client: RawClient, trigger: Trigger) -> None:
    """After the misbehaving hook, the session answers the next command (or is closed after
    QUIT), with nothing in between."""
    if trigger.closes:
        assert client.is_closed()
        return
    code, text = client.cmd("HELP")
    assert code == 250 and "Supported commands" in text


def error_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The records logged at ERROR or above."""
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- hooks that raise -----------------------------------------------------------------------------

#: QUIT closes the connection whatever its hook did: it has its own test below.
ANSWERED = [hook for hook in TRIGGERS if hook != "handle_QUIT"]


@pytest.mark.parametrize("hook", ANSWERED)
def test_a_hook_that_raises_gets_451_and_the_session_goes_on(
    hook: str, caplog: pytest.LogCaptureFixture
) -> None:
    trigger = TRIGGERS[hook]
    with running(handler_for(hook, Misbehaviour("raise")), **SERVER_KWARGS) as server:
        with connected(server) as client:
            reply = run_trigger(client, trigger)
            assert reply == internal_error(trigger.enhanced)
            assert SECRET not in reply[1]
            check_goes_on(client, trigger)
        with connected(server) as other:  # the next client is served as far as the hook allows
            assert other.cmd("HELP")[0] == 250
    # Logged, with its traceback, where the operator sees it: the one expected ERROR.
    (logged, *_) = error_records(caplog)
    assert logged.exc_info is not None and SECRET in str(logged.exc_info[1])


# --- hooks that return garbage --------------------------------------------------------------------

GARBAGE: dict[str, object] = {
    "None": None,
    "an int": 42,
    "bytes": b"250 OK",
    "an empty string": "",
    "no code": "OK",
    "a code out of range": "999 nope",
    "a second reply line": "250 OK\r\n250 injected",
    "an injected command": "250 OK\r\nMAIL FROM:<injected@example.test>",
    "a bare LF": "250 OK\nMAIL FROM:<injected@example.test>",
    "a NUL": "250 O\x00K",
    "a list": ["250 OK"],
}


@pytest.mark.parametrize("value", list(GARBAGE.values()), ids=list(GARBAGE))
@pytest.mark.parametrize("hook", [h for h in ANSWERED if h not in ("handle_EHLO", "handle_AUTH")])
def test_a_hook_returning_garbage_gets_451_and_the_session_goes_on(
    hook: str, value: object, caplog: pytest.LogCaptureFixture
) -> None:
    trigger = TRIGGERS[hook]
    handler = handler_for(hook, Misbehaviour("return", value))
    with running(handler, **SERVER_KWARGS) as server, connected(server) as client:
        assert run_trigger(client, trigger) == internal_error(trigger.enhanced)
        check_goes_on(client, trigger)
    assert [r.levelno for r in error_records(caplog)] == [logging.ERROR]


@pytest.mark.parametrize(
    "act", [Misbehaviour("raise"), Misbehaviour("return", None)], ids=["raises", "None"]
)
def test_a_bad_handle_quit_still_answers_quit(act: Misbehaviour) -> None:
    with running(handler_for("handle_QUIT", act)) as server, connected(server) as client:
        assert client.cmd(EHLO)[0] == 250
        # Observed: ConnectionError (closed by the server, nothing received).
        assert client.cmd("QUIT") == internal_error(True)


UNTERMINATED = "250-first line of a reply that never ends"


@pytest.mark.parametrize("hook", ["handle_NOOP", "handle_MAIL"])
def test_a_hook_returning_an_unterminated_multiline_reply_gets_451(hook: str) -> None:
    trigger = TRIGGERS[hook]
    value: object = UNTERMINATED
    handler = handler_for(hook, Misbehaviour("return", value))
    with running(handler) as server, connected(server) as client:
        client.sock.settimeout(2.0)
        for command in trigger.setup:
            assert client.cmd(command)[0] == 250
        client.send(trigger.command + "\r\n")
        client.send("HELP\r\n")
        # Observed: "250-first line ..." followed by the HELP reply, read as one reply.
        assert client.reply() == internal_error(trigger.enhanced)
        assert client.reply()[0] == 250


def test_handle_ehlo_lines_get_their_separators_from_the_server() -> None:
    # handle_EHLO returns a list of lines: the server, not the hook, decides which is last.
    value = ["250 adversarial.test", "250 PIPELINING", UNTERMINATED]
    handler = handler_for("handle_EHLO", Misbehaviour("return", value))
    with running(handler) as server, connected(server) as client:
        code, lines = client.cmd(EHLO)
        assert code == 250
        assert lines.splitlines() == [
            "adversarial.test",
            "PIPELINING",
            "first line of a reply that never ends",
        ]
        assert client.cmd("NOOP")[0] == 250


EHLO_GARBAGE: dict[str, object] = {
    "None": None,
    "a string, not a list": "250 OK",
    "an empty list": [],
    "a list of ints": [42],
    "an injected line": ["250 OK\r\nMAIL FROM:<x@example.test>"],
}


@pytest.mark.parametrize("value", list(EHLO_GARBAGE.values()), ids=list(EHLO_GARBAGE))
def test_handle_ehlo_returning_garbage_gets_451(value: object) -> None:
    handler = handler_for("handle_EHLO", Misbehaviour("return", value))
    with running(handler) as server, connected(server) as client:
        assert client.cmd(EHLO) == internal_error(True)
        check_goes_on(client, TRIGGERS["handle_EHLO"])


def test_handle_ehlo_with_one_bad_line_sends_nothing_of_the_others() -> None:
    value = ["250-adversarial.test", "garbage"]
    handler = handler_for("handle_EHLO", Misbehaviour("return", value))
    with running(handler) as server, connected(server) as client:
        assert client.cmd(EHLO) == internal_error(True)


# --- handle_exception and the authenticator -------------------------------------------------------


@dataclass
class ExceptionHandler:
    """``handle_MAIL`` raises; ``handle_exception`` then does ``act``."""

    act: Misbehaviour
    seen: list[Exception] = field(default_factory=list)

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        """Always raises."""
        raise RuntimeError(SECRET)

    async def handle_exception(self, error: Exception) -> Any:
        """Records the error, then misbehaves."""
        self.seen.append(error)
        return await self.act()


@pytest.mark.parametrize(
    "act",
    [
        Misbehaviour("return", None),
        Misbehaviour("return", 7),
        Misbehaviour("return", "250 OK\r\n250 injected"),
        Misbehaviour("raise"),
    ],
    ids=["None", "an int", "an injected line", "raises"],
)
def test_a_bad_handle_exception_still_gets_451(act: Misbehaviour) -> None:
    # aiosmtpd hung the session when handle_exception returned None.
    handler = ExceptionHandler(act)
    with running(handler) as server, connected(server) as client:
        assert client.cmd(EHLO)[0] == 250
        client.sock.settimeout(5.0)
        assert client.cmd("MAIL FROM:<a@example.test>") == internal_error(True)
        check_goes_on(client, TRIGGERS["handle_MAIL"])
    assert len(handler.seen) == 1


def test_handle_exception_chooses_the_reply() -> None:
    handler = ExceptionHandler(Misbehaviour("return", "421 4.3.2 try again later"))
    with running(handler) as server, connected(server) as client:
        assert client.cmd(EHLO)[0] == 250
        assert client.cmd("MAIL FROM:<a@example.test>") == (421, "4.3.2 try again later")


def raising_authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    """An authenticator that raises."""
    raise RuntimeError(SECRET)


def garbage_authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> Any:
    """An authenticator that returns a string instead of an AuthResult."""
    return "yes, let them in"


@pytest.mark.parametrize(
    "authenticator", [raising_authenticator, garbage_authenticator], ids=["raises", "garbage"]
)
def test_a_bad_authenticator_gets_451_and_authenticates_nobody(authenticator: Any) -> None:
    with (
        running(auth_require_tls=False, authenticator=authenticator) as server,
        connected(server) as client,
    ):
        assert client.cmd(EHLO)[0] == 250
        reply = client.cmd("AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=")
        assert reply == internal_error(True)
        assert SECRET not in reply[1]
        # Not authenticated: a second attempt is not "503 already authenticated".
        assert client.cmd("AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=") == internal_error(True)


# --- hooks that hang ------------------------------------------------------------------------------

IDLE = 0.5
DEADLINE = 1.0
#: How long a client waits for the reply to a hung hook before the test gives its verdict.
PATIENCE = 5.0

HUNG = ("handle_HELO", "handle_MAIL", "handle_RCPT", "handle_DATA", "handle_NOOP", "handle_AUTH")


@contextmanager
def serving(handler: object, **kwargs: Any) -> Iterator[Controller]:
    """A controller that a test may stop itself."""
    controller = Controller(handler, hostname=HOST, port=0, **kwargs)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop(no_assert=True)


def _hang(hook: str, results: dict[str, tuple[float, bytes, bool]]) -> None:
    act = Misbehaviour("hang")
    handler = handler_for(hook, act)
    kwargs = {"timeout": IDLE, "data_timeout": DEADLINE, **SERVER_KWARGS}
    with running(handler, **kwargs) as server, connected(server) as client:
        trigger = TRIGGERS[hook]
        for command in trigger.setup:
            assert client.cmd(command)[0] < 400
        client.send(trigger.command + "\r\n")
        started = time.monotonic()
        client.sock.settimeout(PATIENCE)
        try:
            data = client.sock.recv(4096)
        except TimeoutError:
            data = b""
        waited = time.monotonic() - started
        results[hook] = (waited, data, act.cancelled.wait(PATIENCE) and client.is_closed())


def test_a_hook_that_hangs_gets_421_within_the_timeout(caplog: pytest.LogCaptureFixture) -> None:
    results: dict[str, tuple[float, bytes, bool]] = {}
    threads = [threading.Thread(target=_hang, args=(hook, results)) for hook in HUNG]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(3 * PATIENCE)
    for hook in HUNG:
        waited, data, _ = results[hook]
        record(
            Figures(
                f"{hook} never returns (timeout={IDLE})",
                data.decode(errors="replace").strip() or "(no reply)",
                cut_off_after=waited if data else None,
                honest_served=True,
            )
        )
    timeout_reply = R.TIMEOUT.line(enhanced=True).encode() + b"\r\n"
    plain_reply = R.TIMEOUT.line(enhanced=False).encode() + b"\r\n"
    for hook, (_, data, cleaned_up) in results.items():
        assert data == (plain_reply if hook == "handle_HELO" else timeout_reply), hook
        assert cleaned_up, f"{hook}: hook not cancelled or connection left open"
    # The operator hears of each hung hook, once.
    hung_logs = [r for r in caplog.records if "did not answer" in r.getMessage()]
    assert len(hung_logs) == len(HUNG)


def test_a_hung_hook_does_not_stop_other_clients(caplog: pytest.LogCaptureFixture) -> None:
    act = Misbehaviour("hang")
    handler = handler_for("handle_MAIL", act)
    with serving(handler, timeout=30, grace_period=0.3) as server:
        victim = RawClient(HOST, server.port)
        try:
            assert victim.cmd(EHLO)[0] == 250
            victim.send("MAIL FROM:<a@example.test>\r\n")
            assert act.hung.wait(5)
            # The others are served (their MAIL would hang too: they use HELO, NOOP, VRFY).
            for _ in range(3):
                with connected(server) as other:
                    assert other.cmd("HELO other.example.test")[0] == 250
                    assert other.cmd("NOOP")[0] == 250
                    assert other.cmd("VRFY <postmaster>")[0] == 252
            # Stopping the server ends the hung session: its client sees the connection close.
            started = time.monotonic()
            server.stop()
            stopped_after = time.monotonic() - started
            victim.sock.settimeout(5)
            try:
                rest = victim.sock.recv(4096)
            except ConnectionResetError:
                rest = b""
            assert rest == b""
            assert act.cancelled.wait(5)
        finally:
            victim.close()
    assert error_records(caplog) == []
    record(
        Figures(
            "handle_MAIL never returns, timeout=30; server stopped (grace_period=0.3)",
            "(connection closed)",
            cut_off_after=stopped_after,
            honest_served=True,
        )
    )


def test_a_message_whose_handle_data_hangs_is_never_answered_250() -> None:
    act = Misbehaviour("hang")
    with running(handler_for("handle_DATA", act), timeout=IDLE) as server:
        with connected(server) as client:
            for command in TRIGGERS["handle_DATA"].setup:
                assert client.cmd(command)[0] < 400
            client.sock.settimeout(PATIENCE)
            client.send("Subject: x\r\n\r\nbody\r\n.\r\n")
            assert client.reply() == (421, R.TIMEOUT.line(enhanced=True)[4:])
            assert client.is_closed()
        with connected(server) as other:
            assert other.cmd(EHLO)[0] == 250
