"""Test handlers: :class:`RecordingHandler` captures messages, :class:`FaultInjector` misbehaves.

What lives here:

* :class:`ReceivedMessage`, the typed record of one delivered message (envelope, parsed
  :class:`email.message.EmailMessage`, peer, TLS and AUTH state);
* :class:`RecordingHandler`, which wraps any handler, forwards every hook it has unchanged and
  records each message the handler answered 2xx (or accepts and records on its own);
* :class:`FaultInjector`, deterministic fault injection: :class:`Rule` = :class:`Stage` x an
  action (:class:`Respond`, :class:`Disconnect`, :class:`Drop`, :class:`Delay`,
  :class:`Throttle`, :class:`DropAfter`, :class:`AcceptAndDrop`, :class:`Greylist`) x a selector
  (:class:`Always`,
  :class:`Nth`, :class:`Probability`), with a compact text syntax (:func:`parse_rule`) for the
  command line: ``typed-smtpd -c typed_smtpd.testing.FaultInjector 'rcpt~*@bad.test=550 No'``.

Stages the handler hooks cannot reach (the connection itself, the greeting, STARTTLS, AUTH, the
DATA command and BDAT chunks) are served by a subclass of the server class,
:meth:`FaultInjector.server_class_for`; the fakes, the interception, the pytest fixtures and the
command line use it on their own. An injector with such rules that finds itself served by a plain
server class refuses the first command it sees with a ``421`` naming the missing piece, and logs
why, instead of letting a test pass that injected nothing.

What must not live here: sockets, threads of our own, imports of hypothesis or pytest.
"""

from __future__ import annotations

import asyncio
import copy
import email.policy
import fnmatch
import functools
import inspect
import logging
import random
import re
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, cast

from typing_extensions import Unpack, assert_never

from typed_smtpd.hooks import HOOK_NAMES
from typed_smtpd.proto import replies as R
from typed_smtpd.session import Envelope, PeerType, Session
from typed_smtpd.smtp import SMTP
from typed_smtpd.stream import MessageStream

if TYPE_CHECKING:
    import argparse

    from typed_smtpd.options import SMTPOptions

__all__ = [
    "DROPPED_ATTRIBUTE",
    "HOOK_STAGES",
    "MISCONFIGURED_FAULTS",
    "AcceptAndDrop",
    "Action",
    "Always",
    "Delay",
    "Disconnect",
    "Drop",
    "DropAfter",
    "FaultEvent",
    "FaultInjector",
    "FaultSMTP",
    "Greylist",
    "Nth",
    "Outcome",
    "Probability",
    "ReceivedMessage",
    "RecordingHandler",
    "Respond",
    "Rule",
    "Selector",
    "Stage",
    "Throttle",
    "parse_rule",
    "server_class_for",
]

log: logging.Logger = logging.getLogger("mail.log")

#: An envelope attribute set by :class:`AcceptAndDrop`: the message was answered 250 and then
#: thrown away, so :class:`RecordingHandler` does not record it.
DROPPED_ATTRIBUTE: Final = "typed_smtpd_dropped"
_BYTES_PER_TICK_DIVISOR: Final = 10  # a throttled link sends rate/10 bytes (at least 1) at a time
# The envelope attribute keeping the wrapped handle_DATA reply for the LMTP recipient replies.
_COMMON_STATUS: Final = "typed_smtpd_common_status"
_BDAT_ARG: Final = re.compile(r"(\d{1,12})(?: +LAST)?", re.IGNORECASE)


# --- recording ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One message the server accepted, with everything a test may want to check."""

    mail_from: str
    """The reverse path (``""`` for ``<>``)."""
    rcpt_tos: tuple[str, ...]
    """The accepted recipients, in RCPT order."""
    content: bytes
    """The message as received (after dot-unstuffing), always bytes."""
    message: EmailMessage = field(compare=False, repr=False)
    """``content`` parsed with :data:`email.policy.default`."""
    mail_options: tuple[str, ...] = ()
    """The MAIL parameters, case kept."""
    rcpt_options: tuple[str, ...] = ()
    """The RCPT parameters of all recipients, case kept."""
    peer: PeerType = None
    """The client's address (``session.peer``)."""
    host_name: str | None = None
    """What the client said in HELO, EHLO or LHLO."""
    extended_smtp: bool = False
    """True when the client greeted with EHLO or LHLO."""
    tls: bool = False
    """True when the message came over TLS (STARTTLS or implicit)."""
    tls_version: str | None = None
    """The TLS protocol version (``"TLSv1.3"``...)."""
    tls_cipher: str | None = None
    """The TLS cipher name."""
    authenticated: bool = False
    """True when the client authenticated with AUTH."""
    auth_data: Any = field(default=None, compare=False, repr=False)
    """What the authenticator stored in ``session.auth_data``."""
    smtp_utf8: bool = False
    """True when MAIL carried SMTPUTF8."""

    @classmethod
    def from_envelope(cls, session: Session, envelope: Envelope) -> ReceivedMessage:
        """A record of the message in ``envelope``, as seen in ``session``."""
        content = envelope.original_content
        if content is None:
            raw = envelope.content
            content = raw.encode("utf-8") if isinstance(raw, str) else (raw or b"")
        message = BytesParser(policy=email.policy.default).parsebytes(content)
        ssl_info = session.ssl or {}
        cipher = ssl_info.get("cipher")
        return cls(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            content=content,
            message=message,
            mail_options=tuple(envelope.mail_options),
            rcpt_options=tuple(envelope.rcpt_options),
            peer=session.peer,
            host_name=session.host_name,
            extended_smtp=session.extended_smtp,
            tls=session.ssl is not None,
            tls_version=ssl_info.get("version"),
            tls_cipher=cipher[0] if isinstance(cipher, tuple) and cipher else None,
            authenticated=bool(session.authenticated),
            auth_data=session.auth_data,
            smtp_utf8=envelope.smtp_utf8,
        )


def _hooky(name: str) -> bool:
    return name.startswith(("handle_", "auth_"))


# A hook that takes the message in place of ``handle_DATA``: a wrapper that sees (and records, or
# injects faults into) every message through ``handle_DATA`` does not expose it when the wrapped
# handler also has ``handle_DATA``.
_DATA_ALTERNATIVES: Final = ("handle_DATA_stream",)


def _forward_hooks(target: object, wrapped: object, skip: Iterable[str]) -> None:
    """Give ``target`` every ``handle_*``/``auth_*`` attribute of ``wrapped`` not in ``skip``.

    The bound methods themselves are stored, so the server's hook registry checks (and warns
    about) exactly the shapes and names the wrapped handler has.
    """
    skipped = set(skip)
    if getattr(wrapped, "handle_DATA", None) is not None:
        skipped.update(_DATA_ALTERNATIVES)
    for name in dir(wrapped):
        if not _hooky(name) or name in skipped:
            continue
        try:
            value = getattr(wrapped, name)
        except AttributeError:
            continue
        setattr(target, name, value)


def _default_reply(server: SMTP, reply: R.Reply) -> str:
    # The engine sends enhanced codes to clients that greeted with EHLO (when enabled), or
    # aiosmtpd's lines; a hook answering in the engine's place does the same.
    engine = server.engine
    return reply.line(enhanced=engine.enhanced, style=engine.config.replies)


async def _deliver_without_hook(
    wrapped: object, server: SMTP, session: Session, envelope: Envelope
) -> str:
    """What the engine answers at the end of DATA when the handler has no ``handle_DATA``."""
    legacy = getattr(wrapped, "process_message", None) if wrapped is not None else None
    if legacy is not None:
        result = legacy(session.peer, envelope.mail_from, envelope.rcpt_tos, envelope.content)
        if inspect.isawaitable(result):
            result = await result
        if result is not None:
            return str(result)
    return _default_reply(server, R.OK)


class RecordingHandler:
    """Wraps a handler and records every message it accepts in :attr:`messages`.

    Every hook of the wrapped handler is exposed unchanged (same bound methods, so signature
    checks and warnings are the wrapped handler's own). At the end of DATA the wrapped
    ``handle_DATA`` runs first; the message is recorded when its reply is 2xx. Without a wrapped
    handler (or one without ``handle_DATA``) every message is recorded and answered as the engine
    would (``250 OK``). Other attributes are looked up on the wrapped handler.

    Recording is thread-safe: :meth:`wait_for_messages` blocks a thread until messages arrive
    (for a threaded controller), :meth:`await_messages` waits in an event loop.
    """

    def __init__(self, handler: object = None) -> None:
        self.wrapped = handler
        """The handler whose hooks are forwarded (``None``: accept everything)."""
        self._messages: list[ReceivedMessage] = []
        self._condition = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        if handler is not None:
            _forward_hooks(self, handler, skip=("handle_DATA", "handle_DATA_recipient"))
        streaming = self.__dict__.get("handle_DATA_stream")
        if streaming is not None:
            self.handle_DATA_stream: Callable[..., Awaitable[object]] = self._recording(streaming)

    def _recording(
        self, hook: Callable[..., Awaitable[object]]
    ) -> Callable[..., Awaitable[object]]:
        """The wrapped ``handle_DATA_stream``, with what it reads kept, and recorded when the
        message is read to its end and accepted (2xx; under LMTP, for some recipient)."""

        async def handle_DATA_stream(
            server: SMTP, session: Session, envelope: Envelope, stream: MessageStream
        ) -> object:
            received = bytearray()
            stream.observe(received.extend)
            status = await hook(server, session, envelope, stream)
            statuses = status if isinstance(status, list) else [status]
            accepted = any(isinstance(line, str) and line[:1] == "2" for line in statuses)
            if accepted and stream.done and stream.error is None:
                whole = copy.copy(envelope)
                whole.original_content = bytes(received)
                self.record(ReceivedMessage.from_envelope(session, whole))
            return status

        return handle_DATA_stream

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes not found normally: the wrapped handler's own state.
        if name.startswith("__") or name == "wrapped" or _hooky(name):
            raise AttributeError(name)
        wrapped = self.__dict__.get("wrapped")
        if wrapped is None:
            raise AttributeError(name)
        return getattr(wrapped, name)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Run the wrapped ``handle_DATA`` (if any) and record the message on a 2xx answer."""
        hook = self._hook("handle_DATA")
        if hook is not None:
            status = await hook(server, session, envelope)
        else:
            status = await _deliver_without_hook(self.wrapped, server, session, envelope)
        if (
            isinstance(status, str)
            and status[:1] == "2"
            and not getattr(envelope, DROPPED_ATTRIBUTE, False)
        ):
            self.record(ReceivedMessage.from_envelope(session, envelope))
        if not hasattr(envelope, _COMMON_STATUS):
            setattr(envelope, _COMMON_STATUS, status if hook is not None else None)
        return cast(str, status)

    async def handle_DATA_recipient(
        self, server: SMTP, session: Session, envelope: Envelope, recipient: str
    ) -> str:
        """LMTP: the wrapped hook's reply for ``recipient``; without one, what the engine itself
        answers (the wrapped ``handle_DATA`` reply, or ``250 <recipient> OK``)."""
        hook = self._hook("handle_DATA_recipient")
        if hook is not None:
            return cast(str, await hook(server, session, envelope, recipient))
        common = getattr(envelope, _COMMON_STATUS, None)
        if isinstance(common, str):
            return common
        return _default_reply(server, R.recipient_delivered(recipient))

    def _hook(self, name: str) -> Any:
        return getattr(self.wrapped, name, None) if self.wrapped is not None else None

    # --- the record -----------------------------------------------------------------------------

    @property
    def messages(self) -> list[ReceivedMessage]:
        """A copy of the recorded messages, oldest first."""
        with self._condition:
            return list(self._messages)

    def record(self, message: ReceivedMessage) -> None:
        """Add a message and wake whoever waits for it (from any thread)."""
        with self._condition:
            self._messages.append(message)
            self._condition.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            if loop.is_closed():
                continue
            loop.call_soon_threadsafe(_wake, future)

    def clear(self) -> None:
        """Forget every recorded message."""
        with self._condition:
            self._messages.clear()

    def wait_for_messages(self, count: int = 1, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Block this thread until at least ``count`` messages were recorded; return them all.

        Raises :class:`TimeoutError` (naming how many arrived) after ``timeout`` seconds. Never
        call it from the event loop that runs the server: use :meth:`await_messages` there.
        """
        with self._condition:
            if not self._condition.wait_for(lambda: len(self._messages) >= count, timeout):
                raise TimeoutError(
                    f"expected {count} message(s) within {timeout}s, got {len(self._messages)}"
                )
            return list(self._messages)

    async def await_messages(self, count: int = 1, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Wait in the running event loop until at least ``count`` messages were recorded."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with self._condition:
                if len(self._messages) >= count:
                    return list(self._messages)
                got = len(self._messages)
                future: asyncio.Future[None] = loop.create_future()
                self._waiters.append((loop, future))
            remaining = deadline - loop.time()
            try:
                await asyncio.wait_for(future, max(remaining, 0.0))
            except asyncio.TimeoutError:
                raise TimeoutError(
                    f"expected {count} message(s) within {timeout}s, got {got}"
                ) from None


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# --- fault injection: the vocabulary ------------------------------------------------------------


class Stage(Enum):
    """Where in a dialog a rule applies."""

    CONNECT = "connect"
    """The connection was just accepted (before anything is sent)."""
    GREETING = "greeting"
    """The 220 greeting."""
    EHLO = "ehlo"
    """EHLO, HELO and LHLO."""
    STARTTLS = "starttls"
    """STARTTLS, before the handshake."""
    AUTH = "auth"
    """AUTH, before the SASL exchange."""
    MAIL = "mail"
    """MAIL FROM (the pattern matches the reverse path)."""
    RCPT = "rcpt"
    """RCPT TO (the pattern matches the recipient)."""
    DATA = "data"
    """The DATA command, before the 354."""
    END_OF_DATA = "eod"
    """The end of the message (DATA's final dot or BDAT LAST), before the handler sees it."""
    BDAT = "bdat"
    """Each BDAT chunk."""
    RSET = "rset"
    """RSET."""
    QUIT = "quit"
    """QUIT."""


#: Stages reached through handler hooks, so they work with any server class and on the CLI.
HOOK_STAGES: Final = frozenset(
    {Stage.EHLO, Stage.MAIL, Stage.RCPT, Stage.END_OF_DATA, Stage.RSET, Stage.QUIT}
)
_STAGE_ALIASES: Final = {
    "helo": Stage.EHLO,
    "lhlo": Stage.EHLO,
    "end-of-data": Stage.END_OF_DATA,
    "dot": Stage.END_OF_DATA,
}


def _check_text(text: str) -> None:
    if "\r" in text or "\n" in text or "\x00" in text:
        raise ValueError("reply text must not contain CR, LF or NUL")


@dataclass(frozen=True, slots=True)
class Respond:
    """Answer with this reply instead of going on (a 421 also closes the connection)."""

    code: int
    text: str = ""

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code out of range: {self.code}")
        _check_text(self.text)

    @property
    def line(self) -> str:
        """The reply line (without CRLF)."""
        if self.text:
            return f"{self.code} {self.text}"
        if self.code == 421:
            return f"421 {Disconnect().text}"
        return f"{self.code} {_DEFAULT_TEXT[self.code // 100]}"


_DEFAULT_TEXT: Final = {2: "OK", 3: "Go ahead", 4: "Try again later", 5: "Refused"}


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Answer (421 by default) and close the connection."""

    code: int = 421
    text: str = "4.3.2 Service not available, closing transmission channel"

    def __post_init__(self) -> None:
        if not 400 <= self.code <= 599:
            raise ValueError(f"a disconnect reply is 4xx or 5xx, not {self.code}")
        _check_text(self.text)

    @property
    def line(self) -> str:
        """The reply line (without CRLF)."""
        return f"{self.code} {self.text}"


@dataclass(frozen=True, slots=True)
class Drop:
    """Close the connection without a reply."""


@dataclass(frozen=True, slots=True)
class DropAfter:
    """Let the upload start, then close the connection without a reply once ``octets`` octets of
    message content arrived (DATA's content, or BDAT chunks from the command that fired on)."""

    octets: int

    def __post_init__(self) -> None:
        if self.octets < 0:
            raise ValueError(f"drop-after counts octets >= 0, not {self.octets}")


@dataclass(frozen=True, slots=True)
class Delay:
    """Wait this many seconds, then go on (with the next matching rule, or normally)."""

    seconds: float

    def __post_init__(self) -> None:
        if not self.seconds >= 0:
            raise ValueError(f"a delay is >= 0 seconds, not {self.seconds}")


@dataclass(frozen=True, slots=True)
class Throttle:
    """From now on, send this connection's replies at this many bytes per second."""

    bytes_per_second: int

    def __post_init__(self) -> None:
        if self.bytes_per_second < 1:
            raise ValueError(f"a throttle is >= 1 byte/s, not {self.bytes_per_second}")


@dataclass(frozen=True, slots=True)
class AcceptAndDrop:
    """Answer 250 without involving the handler: at the end of data, the message is lost."""


@dataclass(frozen=True, slots=True)
class Greylist:
    """Fail the first ``attempts`` tries (per stage and address) with a 4xx, then go on."""

    attempts: int = 1
    code: int = 451
    text: str = "4.7.1 Greylisted, please try again later"

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"greylisting fails at least 1 attempt, not {self.attempts}")
        if not 400 <= self.code <= 499:
            raise ValueError(f"a greylisting reply is 4xx, not {self.code}")
        _check_text(self.text)


#: What a rule does.
Action = Respond | Disconnect | Drop | DropAfter | Delay | Throttle | AcceptAndDrop | Greylist


@dataclass(frozen=True, slots=True)
class Always:
    """Every time the stage (and pattern) matches."""


@dataclass(frozen=True, slots=True)
class Nth:
    """Only the ``n``-th time (1-based) the stage and pattern match, counted per rule."""

    n: int

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n counts from 1, not {self.n}")


@dataclass(frozen=True, slots=True)
class Probability:
    """With probability ``p``, drawn from the injector's seeded random generator."""

    p: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"a probability is within [0, 1], not {self.p}")


#: When a rule fires.
Selector = Always | Nth | Probability

_STAGES_FOR_ACCEPT: Final = frozenset({Stage.MAIL, Stage.RCPT, Stage.END_OF_DATA})
_STAGES_FOR_DROP_AFTER: Final = frozenset({Stage.DATA, Stage.BDAT})
# Actions that change how the connection goes on and let the following rules be tried too.
_MODIFIERS: Final = (Delay, Throttle, DropAfter)


@dataclass(frozen=True, slots=True)
class Rule:
    """One fault: at ``stage``, if ``pattern`` (a case-insensitive shell glob on the MAIL or RCPT
    address) matches and ``when`` fires, do ``action``."""

    stage: Stage
    action: Action
    when: Selector = Always()
    pattern: str | None = None

    def __post_init__(self) -> None:
        if self.pattern is not None and self.stage not in (Stage.MAIL, Stage.RCPT):
            raise ValueError("an address pattern applies to the mail and rcpt stages only")
        if isinstance(self.action, AcceptAndDrop) and self.stage not in _STAGES_FOR_ACCEPT:
            raise ValueError("accept-drop applies to the mail, rcpt and eod stages only")
        if isinstance(self.action, DropAfter) and self.stage not in _STAGES_FOR_DROP_AFTER:
            raise ValueError("drop-after applies to the data and bdat stages only")
        if self.stage is Stage.CONNECT and isinstance(self.action, Greylist):
            raise ValueError("greylisting needs a command to answer: not at connect")

    def matches(self, stage: Stage, address: str | None) -> bool:
        """Whether this rule concerns ``stage`` (and ``address``), before its selector."""
        if stage is not self.stage:
            return False
        if self.pattern is None:
            return True
        return address is not None and fnmatch.fnmatchcase(address.lower(), self.pattern.lower())


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """A fault that was injected: where, for which address, what."""

    stage: Stage
    address: str | None
    action: Action
    peer: PeerType = None


# --- the compact syntax -------------------------------------------------------------------------

_RULE_SYNTAX: Final = """\
RULE is STAGE[~PATTERN][/WHEN]=ACTION:
  STAGE    connect, greeting, ehlo (helo, lhlo), starttls, auth, mail, rcpt, data,
           eod (end of data), bdat, rset, quit
  PATTERN  shell glob on the address, mail and rcpt only: rcpt~*@blocked.test
  WHEN     N (the N-th time only), P% or 0.P (probability), always (the default)
  ACTION   CODE [TEXT]      reply (421 also closes): 550 5.1.1 No such user
           disconnect       421 and close
           drop             close without a reply
           drop-after:OCTETS  close without a reply once OCTETS octets of the message
                            arrived (data, bdat)
           delay:SECONDS    wait, then go on
           throttle:BYTES   send replies at BYTES per second from then on
           accept-drop      answer 250, never deliver (mail, rcpt, eod)
           greylist[:N]     451 for the first N tries (default 1), then go on
  seed=N   seeds the random generator of probabilities (default 0)"""


def _parse_stage(text: str) -> Stage:
    name = text.strip().lower()
    if name in _STAGE_ALIASES:
        return _STAGE_ALIASES[name]
    try:
        return Stage(name)
    except ValueError:
        known = ", ".join(s.value for s in Stage)
        raise ValueError(f"unknown stage {text!r} (one of {known})") from None


def _parse_selector(text: str) -> Selector:
    value = text.strip().lower()
    if value in ("", "always"):
        return Always()
    try:
        if value.endswith("%"):
            return Probability(float(value[:-1]) / 100.0)
        if "." in value:
            return Probability(float(value))
        return Nth(int(value))
    except ValueError as error:
        raise ValueError(f"bad selector {text!r}: {error}") from None


def _parse_action(text: str) -> Action:
    value = text.strip()
    word, _, rest = value.partition(":")
    keyword = word.lower()
    try:
        if keyword == "drop":
            return Drop()
        if keyword == "drop-after":
            return DropAfter(int(rest))
        if keyword == "disconnect":
            return Disconnect(text=rest) if rest else Disconnect()
        if keyword == "delay":
            return Delay(float(rest))
        if keyword == "throttle":
            return Throttle(int(rest))
        if keyword in ("accept-drop", "blackhole"):
            return AcceptAndDrop()
        if keyword == "greylist":
            return Greylist(int(rest)) if rest else Greylist()
        code_text, _, reply_text = value.partition(" ")
        if len(code_text) == 3 and code_text.isdigit():
            return Respond(int(code_text), reply_text.strip())
    except ValueError as error:
        raise ValueError(f"bad action {text!r}: {error}") from None
    raise ValueError(f"unknown action {text!r}")


def parse_rule(text: str) -> Rule:
    """Parse one rule of the compact syntax, ``STAGE[~PATTERN][/WHEN]=ACTION``.

    >>> parse_rule("rcpt~*@blocked.test=550 5.1.1 No such user")
    Rule(stage=<Stage.RCPT: 'rcpt'>, action=Respond(code=550, text='5.1.1 No such user'), \
when=Always(), pattern='*@blocked.test')
    >>> parse_rule("data/3=drop").when
    Nth(n=3)
    >>> parse_rule("mail/25%=451").when
    Probability(p=0.25)
    >>> parse_rule("data=drop-after:1000").action
    DropAfter(octets=1000)

    Raises :class:`ValueError` naming what is wrong.
    """
    head, equals, action = text.partition("=")
    if not equals:
        raise ValueError(f"a rule is STAGE[~PATTERN][/WHEN]=ACTION, not {text!r}")
    selector: Selector = Always()
    if "/" in head:
        head, _, when = head.rpartition("/")
        selector = _parse_selector(when)
    pattern: str | None = None
    if "~" in head:
        head, _, pattern = head.partition("~")
        pattern = pattern.strip() or None
    return Rule(_parse_stage(head), _parse_action(action), selector, pattern)


# --- the throttled transport --------------------------------------------------------------------


class _ThrottledTransport(asyncio.Transport):
    """Passes writes on at ``rate`` bytes per second; everything else goes to the inner one."""

    def __init__(self, inner: asyncio.Transport, rate: int) -> None:
        super().__init__()
        self._inner = inner
        self._rate = rate
        self._buffer = bytearray()
        self._closing = False
        self._pumping = False
        self._loop = asyncio.get_running_loop()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_inner":
            raise AttributeError(name)
        return getattr(self.__dict__["_inner"], name)

    @property
    def _start_tls_compatible(self) -> bool:
        return bool(getattr(self._inner, "_start_tls_compatible", False))

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        self._buffer += data
        if not self._pumping:
            self._pumping = True
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        if self._inner.is_closing():
            self._buffer.clear()
            self._pumping = False
            return
        size = max(1, self._rate // _BYTES_PER_TICK_DIVISOR)
        piece = bytes(self._buffer[:size])
        del self._buffer[:size]
        self._inner.write(piece)
        if self._buffer:
            self._loop.call_later(len(piece) / self._rate, self._pump)
            return
        self._pumping = False
        if self._closing:
            self._inner.close()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if not self._pumping:
            self._inner.close()

    def abort(self) -> None:
        self._closing = True
        self._buffer.clear()
        self._inner.abort()

    def is_closing(self) -> bool:
        return self._closing or self._inner.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._inner.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._inner.resume_reading()

    def is_reading(self) -> bool:
        return self._inner.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._inner.get_protocol()

    def get_write_buffer_size(self) -> int:
        return len(self._buffer) + self._inner.get_write_buffer_size()

    def can_write_eof(self) -> bool:
        return False


# --- the injector -------------------------------------------------------------------------------


class Outcome(Enum):
    """What :meth:`FaultInjector.apply` decided when it did not answer itself."""

    PASS = "pass"
    """No fault: go on normally."""
    ACCEPT = "accept"
    """Answer positively without involving the wrapped handler."""


class FaultInjector:
    """A handler that injects faults by :class:`Rule`, then defers to the wrapped handler.

    ::

        injector = FaultInjector(
            [Rule(Stage.RCPT, Respond(550, "5.1.1 No such user"), pattern="*@gone.test"),
             Rule(Stage.END_OF_DATA, Disconnect(), when=Nth(2))],
            handler=MyHandler(),
            seed=1,
        )

    Rules are tried in order at each stage; the first that matches and fires decides. A
    :class:`Delay` or :class:`Throttle` takes effect and lets the following rules be tried too;
    :class:`Greylist` decides only while it still fails attempts. Counting (:class:`Nth`,
    :class:`Greylist`) and the random generator (:class:`Probability`, seeded with ``seed``) are
    per injector, so a run is reproducible. :attr:`events` lists what was injected.

    Every hook of the wrapped handler is forwarded. The connect, greeting, STARTTLS, AUTH,
    DATA-command and BDAT stages need the server class from :meth:`server_class_for` (the fakes,
    the interception, the pytest fixtures and the command line use it by themselves); the other
    stages work through handler hooks with any server. With rules for those stages
    (:attr:`needs_server_class`), an injector served by a plain server class answers the first
    hook it gets ``421`` and closes, naming the missing server class, and logs why: a test that
    relies on such a rule fails instead of passing without a fault.
    """

    def __init__(
        self, rules: Iterable[Rule | str] = (), *, handler: object = None, seed: int = 0
    ) -> None:
        self.rules: tuple[Rule, ...] = tuple(
            parse_rule(rule) if isinstance(rule, str) else rule for rule in rules
        )
        """The rules, in the order they are tried."""
        self.wrapped = handler
        """The handler that answers whatever no rule decides."""
        self.seed = seed
        self.events: list[FaultEvent] = []
        """Every fault injected, in order."""
        self._random = random.Random(seed)
        self._counts: dict[int, int] = {}
        self._greylist: dict[tuple[int, str | None], int] = {}
        self.needs_server_class: bool = any(rule.stage not in HOOK_STAGES for rule in self.rules)
        """Whether a rule's stage is one that only :meth:`server_class_for` serves."""
        if handler is not None:
            _forward_hooks(self, handler, skip=_INJECTOR_HOOKS)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "wrapped" or _hooky(name):
            raise AttributeError(name)
        wrapped = self.__dict__.get("wrapped")
        if wrapped is None:
            raise AttributeError(name)
        return getattr(wrapped, name)

    @classmethod
    def from_cli(cls, parser: argparse.ArgumentParser, *args: str) -> FaultInjector:
        """Build an injector from command-line arguments: rules, and ``seed=N``.

        ``typed-smtpd -c typed_smtpd.testing.FaultInjector RULE... [seed=N]``, where a rule is
        ``STAGE[~PATTERN][/WHEN]=ACTION`` (see :func:`parse_rule`):

        * STAGE: ``connect``, ``greeting``, ``ehlo`` (or ``helo``, ``lhlo``), ``starttls``,
          ``auth``, ``mail``, ``rcpt``, ``data``, ``eod`` (end of data), ``bdat``, ``rset``,
          ``quit``;
        * PATTERN: a shell glob on the address, for ``mail`` and ``rcpt``: ``rcpt~*@gone.test``;
        * WHEN: ``N`` (the N-th time only), ``P%`` or ``0.P`` (a probability), ``always``;
        * ACTION: ``CODE [TEXT]`` (a reply; 421 also closes), ``disconnect[:TEXT]``, ``drop``,
          ``drop-after:OCTETS``, ``delay:SECONDS``, ``throttle:BYTES_PER_SECOND``,
          ``accept-drop``, ``greylist[:N]``.

        Every message that gets through is accepted and dropped, as a sink does. The command
        line serves plain SMTP, so rules for the connect, greeting, starttls, auth, data and
        bdat stages are logged as not applied there.
        """
        rules: list[Rule] = []
        seed = 0
        for arg in args:
            if arg.lower().startswith("seed="):
                try:
                    seed = int(arg[5:])
                except ValueError:
                    parser.error(f"FaultInjector: seed must be a whole number, not {arg[5:]!r}")
                continue
            try:
                rules.append(parse_rule(arg))
            except ValueError as error:
                parser.error(f"FaultInjector: {error}\n{_RULE_SYNTAX}")
        return cls(rules, seed=seed)

    # --- deciding -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the counters, the greylist and the events, and reseed."""
        self._random = random.Random(self.seed)
        self._counts.clear()
        self._greylist.clear()
        self.events.clear()

    def plan(self, stage: Stage, address: str | None, peer: PeerType = None) -> list[Action]:
        """The actions to take now at ``stage``: modifiers first, then at most one decision.

        Advances the counters and the random generator, and records :attr:`events`.
        """
        actions: list[Action] = []
        for index, rule in enumerate(self.rules):
            if not rule.matches(stage, address):
                continue
            count = self._counts[index] = self._counts.get(index, 0) + 1
            match rule.when:
                case Always():
                    fires = True
                case Nth(n=n):
                    fires = count == n
                case Probability(p=p):
                    fires = self._random.random() < p
                case _:
                    assert_never(rule.when)
            if not fires:
                continue
            action = rule.action
            if isinstance(action, Greylist):
                key = (index, address.lower() if address is not None else None)
                tries = self._greylist[key] = self._greylist.get(key, 0) + 1
                if tries > action.attempts:
                    continue
            self.events.append(FaultEvent(stage, address, action, peer))
            actions.append(action)
            if not isinstance(action, _MODIFIERS):
                break
        return actions

    async def apply(self, server: SMTP, stage: Stage, address: str | None = None) -> str | Outcome:
        """Carry out the plan for ``stage`` on ``server``'s connection.

        Returns :attr:`Outcome.PASS` to go on normally, :attr:`Outcome.ACCEPT` to answer
        positively without the handler, or the reply line to send (after a close, it is never
        sent: the connection is gone).
        """
        if self.needs_server_class and not isinstance(server, FaultSMTP):
            return _refuse_misconfigured(self, server)
        peer = server.session.peer if server.session is not None else None
        for action in self.plan(stage, address, peer):
            match action:
                case Delay(seconds=seconds):
                    server.flush()
                    await asyncio.sleep(seconds)
                case Throttle(bytes_per_second=rate):
                    _throttle(server, rate)
                case DropAfter(octets=octets):
                    assert isinstance(server, FaultSMTP)  # the data and bdat stages only
                    server.drop_after(octets)
                case Respond() if action.code == 421:
                    return _reply_and_close(server, action.line)
                case Respond():
                    return action.line
                case Disconnect():
                    return _reply_and_close(server, action.line)
                case Drop():
                    server.close()
                    return R.SHUTTING_DOWN.line()
                case AcceptAndDrop():
                    return Outcome.ACCEPT
                case Greylist(code=code, text=text):
                    return f"{code} {text}"
                case _:
                    assert_never(action)
        return Outcome.PASS

    def server_class_for(self, base: Callable[..., SMTP] = SMTP) -> Callable[..., SMTP]:
        """``base`` extended with the stages handler hooks cannot reach (connect, greeting,
        STARTTLS, AUTH, the DATA command, BDAT). A ``base`` that is not a class is returned
        as is."""
        if not isinstance(base, type) or not issubclass(base, SMTP):
            return cast("Callable[..., SMTP]", base)
        if issubclass(base, FaultSMTP):
            return base
        cached = _FAULT_CLASSES.get(base)
        if cached is None:
            cached = type(f"Fault{base.__name__}", (FaultSMTP, base), {})
            _FAULT_CLASSES[base] = cached
        return cached

    # --- hooks ----------------------------------------------------------------------------------

    def _hook(self, name: str) -> Any:
        return getattr(self.wrapped, name, None) if self.wrapped is not None else None

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        """Faults of the ``ehlo`` stage, then the wrapped hook (or ``250 hostname``)."""
        outcome = await self.apply(server, Stage.EHLO)
        if isinstance(outcome, str):
            return outcome
        hook = self._hook("handle_HELO")
        if hook is not None and outcome is Outcome.PASS:
            return cast(str, await hook(server, session, envelope, hostname))
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """Faults of the ``ehlo`` stage, then the wrapped hook (or the planned reply)."""
        outcome = await self.apply(server, Stage.EHLO)
        if isinstance(outcome, str):
            return [outcome]
        hook = self._hook("handle_EHLO")
        if hook is None or outcome is not Outcome.PASS:
            session.host_name = hostname
            return responses
        if len(inspect.signature(hook).parameters) >= 5:
            return cast(list[str], await hook(server, session, envelope, hostname, responses))
        status = await hook(server, session, envelope, hostname)  # the deprecated form
        return [*responses[:-1], status]

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        """Faults of the ``mail`` stage, then the wrapped hook (or ``250 OK``)."""
        outcome = await self.apply(server, Stage.MAIL, address)
        if isinstance(outcome, str):
            return outcome
        hook = self._hook("handle_MAIL")
        if hook is not None and outcome is Outcome.PASS:
            return cast(str, await hook(server, session, envelope, address, mail_options))
        return _default_reply(server, R.MAIL_OK)

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        """Faults of the ``rcpt`` stage, then the wrapped hook (or ``250 OK``)."""
        outcome = await self.apply(server, Stage.RCPT, address)
        if isinstance(outcome, str):
            return outcome
        hook = self._hook("handle_RCPT")
        if hook is not None and outcome is Outcome.PASS:
            return cast(str, await hook(server, session, envelope, address, rcpt_options))
        return _default_reply(server, R.RCPT_OK)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Faults of the ``eod`` stage, then the wrapped hook (or ``250 OK``)."""
        outcome = await self.apply(server, Stage.END_OF_DATA)
        if isinstance(outcome, str):
            return outcome
        if outcome is Outcome.ACCEPT:
            setattr(envelope, DROPPED_ATTRIBUTE, True)
            setattr(envelope, _COMMON_STATUS, None)
            return _default_reply(server, R.OK)
        hook = self._hook("handle_DATA")
        if hook is not None:
            return cast(str, await hook(server, session, envelope))
        setattr(envelope, _COMMON_STATUS, None)  # LMTP: the engine's own recipient replies
        return await _deliver_without_hook(self.wrapped, server, session, envelope)

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Faults of the ``rset`` stage, then the wrapped hook (or ``250 OK``)."""
        outcome = await self.apply(server, Stage.RSET)
        if isinstance(outcome, str):
            return outcome
        hook = self._hook("handle_RSET")
        if hook is not None and outcome is Outcome.PASS:
            return cast(str, await hook(server, session, envelope))
        return _default_reply(server, R.OK)

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Faults of the ``quit`` stage, then the wrapped hook (or ``221 Bye``)."""
        outcome = await self.apply(server, Stage.QUIT)
        if isinstance(outcome, str):
            return outcome
        hook = self._hook("handle_QUIT")
        if hook is not None and outcome is Outcome.PASS:
            return cast(str, await hook(server, session, envelope))
        return _default_reply(server, R.BYE)


_INJECTOR_HOOKS: Final = frozenset(name for name in dir(FaultInjector) if name in HOOK_NAMES)


#: The reply of an injector served by a server class without its stages (see
#: :attr:`FaultInjector.needs_server_class`).
MISCONFIGURED_FAULTS: Final = R.Reply(
    421, "FaultInjector stages need FaultInjector.server_class_for()", "4.3.0"
)


def _refuse_misconfigured(injector: FaultInjector, server: SMTP) -> str:
    stages = sorted({rule.stage.value for rule in injector.rules} - {s.value for s in HOOK_STAGES})
    log.error(
        "FaultInjector rules for the %s stage(s) need the server class from "
        "FaultInjector.server_class_for() (or typed_smtpd.testing.server_class_for()); "
        "%s does not serve them: refusing the connection",
        ", ".join(stages),
        type(server).__qualname__,
    )
    return _reply_and_close(server, _default_reply(server, MISCONFIGURED_FAULTS))


def _reply_and_close(server: SMTP, line: str) -> str:
    """Send ``line`` now, then close: nothing the client pipelined afterwards is answered."""
    server.engine.send_line(line.encode("utf-8", "replace") + b"\r\n")
    server.close()
    return line


def _throttle(server: SMTP, rate: int) -> None:
    transport = server.transport
    if isinstance(transport, _ThrottledTransport) or transport is None:
        return
    server.flush()
    server.transport = _ThrottledTransport(cast(asyncio.Transport, transport), rate)


def _find_injector(handler: object) -> FaultInjector | None:
    seen = 0
    while handler is not None and seen < 16:
        if isinstance(handler, FaultInjector):
            return handler
        handler = handler.__dict__.get("wrapped") if hasattr(handler, "__dict__") else None
        seen += 1
    return None


def server_class_for(handler: object, base: Callable[..., SMTP] = SMTP) -> Callable[..., SMTP]:
    """The server class to serve ``handler`` with: ``base``, extended for a
    :class:`FaultInjector` anywhere in the handler's chain of wrapped handlers."""
    injector = _find_injector(handler)
    return base if injector is None else injector.server_class_for(base)


_FAULT_CLASSES: dict[type, type[SMTP]] = {}


class FaultSMTP(SMTP):
    """:class:`~typed_smtpd.smtp.SMTP` with the fault stages hooks cannot reach.

    It finds the :class:`FaultInjector` in its handler's chain; without one it behaves exactly
    as its base class.
    """

    def __init__(self, handler: object, **kwargs: Unpack[SMTPOptions]) -> None:
        super().__init__(handler, **kwargs)
        self.fault_injector: FaultInjector | None = _find_injector(handler)
        """The injector whose rules apply here."""
        self._start_handle: asyncio.TimerHandle | None = None
        #: Set when a connect or greeting fault answered (or dropped) the client instead.
        self.refused_at_connect: bool = False
        self._drop_after: int | None = None

    def drop_after(self, octets: int) -> None:
        """Close the connection, without a reply, once ``octets`` more octets arrived (counting
        those already received and not yet read by the engine)."""
        buffered = self._engine.buffered if self._engine is not None else 0
        self._drop_after = octets - buffered
        if self._drop_after <= 0:
            self._drop_after = None
            self.abort()

    def data_received(self, data: bytes | memoryview) -> None:
        """Count the octets a :class:`DropAfter` waits for; drop the connection at its mark."""
        remaining = self._drop_after
        if remaining is not None:
            if len(data) >= remaining:
                self._drop_after = None
                log.info("%r FaultInjector: dropped in the middle of the upload", self._peer())
                self.abort()
                return
            self._drop_after = remaining - len(data)
        super().data_received(data)

    def _peer(self) -> PeerType:
        return self.session.peer if self.session is not None else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Apply the connect and greeting stages, then start the session."""
        injector = self.fault_injector
        if injector is None:
            super().connection_made(transport)
            return
        peer = transport.get_extra_info("peername")
        delay = 0.0
        for stage in (Stage.CONNECT, Stage.GREETING):
            for action in injector.plan(stage, None, peer):
                match action:
                    case Delay(seconds=seconds):
                        delay += seconds
                    case Throttle(bytes_per_second=rate):
                        transport = _ThrottledTransport(cast(asyncio.Transport, transport), rate)
                    case Drop():
                        self.refused_at_connect = True
                        transport.close()
                        return
                    case Respond() | Disconnect() | Greylist():
                        line = (
                            f"{action.code} {action.text}"
                            if isinstance(action, Greylist)
                            else action.line
                        )
                        self.refused_at_connect = True
                        cast(asyncio.Transport, transport).write(line.encode("utf-8") + b"\r\n")
                        transport.close()
                        return
                    case AcceptAndDrop() | DropAfter():  # refused by Rule for these stages
                        pass
                    case _:
                        assert_never(action)
        if delay > 0:
            loop = asyncio.get_running_loop()
            self._start_handle = loop.call_later(delay, self._start, transport)
        else:
            super().connection_made(transport)

    def _start(self, transport: asyncio.BaseTransport) -> None:
        self._start_handle = None
        if not self.refused_at_connect and not transport.is_closing():
            super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        """Also cancels a delayed start."""
        if self._start_handle is not None:
            self._start_handle.cancel()
            self._start_handle = None
        super().connection_lost(exc)

    async def _fault(self, stage: Stage) -> str | None:
        injector = self.fault_injector
        if injector is None:
            return None
        outcome = await injector.apply(self, stage)
        return outcome if isinstance(outcome, str) else None

    async def _after_faults(self, stage: Stage, command: Callable[[], Awaitable[None]]) -> None:
        """Run ``stage``'s faults; the command runs unless one of them answered instead."""
        line = await self._fault(stage)
        if line is None:
            await command()
        else:
            self.engine.send_status(line, "FaultInjector")

    async def smtp_STARTTLS(self, arg: str | None) -> None:
        """Faults of the ``starttls`` stage, then STARTTLS."""
        await self._after_faults(Stage.STARTTLS, functools.partial(super().smtp_STARTTLS, arg))

    async def smtp_AUTH(self, arg: str | None) -> None:
        """Faults of the ``auth`` stage, then AUTH."""
        await self._after_faults(Stage.AUTH, functools.partial(super().smtp_AUTH, arg))

    async def smtp_DATA(self, arg: str | None) -> None:
        """Faults of the ``data`` stage, then DATA."""
        await self._after_faults(Stage.DATA, functools.partial(super().smtp_DATA, arg))

    async def smtp_BDAT(self, arg: str | None) -> None:
        """Faults of the ``bdat`` stage, then BDAT (a refused chunk is still read, RFC 3030)."""
        line = await self._fault(Stage.BDAT)
        if line is None:
            await super().smtp_BDAT(arg)
            return
        engine = self.engine
        if _BDAT_ARG.fullmatch(arg or "") is None or engine.closed:
            engine.send_status(line, "FaultInjector")
        else:
            await self.drive(engine.refuse_command("BDAT", arg, line))
