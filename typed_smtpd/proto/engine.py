"""The server engine: every SMTP and LMTP decision of one connection, with no I/O.

:class:`ServerEngine` is to SMTP what h11's ``Connection`` is to HTTP. Bytes go in
(:meth:`~ServerEngine.receive_data`, :meth:`~ServerEngine.receive_eof`); the engine frames them,
checks the gates (STARTTLS or AUTH required, call limits, BDAT in progress), validates each
command, advances the one transition table of :mod:`typed_smtpd.proto.state`, runs the DATA, BDAT,
SASL and PROXY phases, and appends every reply to its output (:meth:`~ServerEngine.data_to_send`).

When user code must run (a handler hook, an ``smtp_VERB`` method of a subclass, an
``auth_MECHANISM``, the authenticator, the TLS upgrade), :meth:`~ServerEngine.next_request`
returns a frozen *request* naming what to run; the I/O adapter runs it and hands the result back
with :meth:`~ServerEngine.resume` (or the exception with :meth:`~ServerEngine.fail`). Everything
else is answered synchronously, inside the adapter's read callback.

Time comes in through the ``clock`` given to the engine; the engine says when it next needs
attention (:meth:`~ServerEngine.next_deadline`) and what a missed deadline means
(:meth:`~ServerEngine.expire`). The adapter owns the one timer.

Internally each command that cannot answer at once is a generator: it yields a request (or
:data:`_WAIT`, for the next framed input event) and is sent the result. That keeps one
definition per command whatever runs it: the engine's own pump, or an adapter method awaited by a
subclass (``await super().smtp_DATA(arg)``) through :meth:`~ServerEngine.command`.

No I/O here.
"""

from __future__ import annotations

import base64
import functools
import logging
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any, Final, Generic, Literal, Protocol, TypeVar, overload

from typed_smtpd.proto import replies as R
from typed_smtpd.proto.auth import (
    MISSING,
    AuthResult,
    LoginPassword,
    RecipientDSN,
    _Missing,
    decode_response,
    split_cram_md5,
    split_plain,
)
from typed_smtpd.proto.clients import TOO_MANY_AUTH_FAILURES_FROM_CLIENT, TOO_MANY_FROM_CLIENT
from typed_smtpd.proto.commands import (
    ParamError,
    PathError,
    parse_params,
    parse_path,
    split_path_and_params,
)
from typed_smtpd.proto.data import ContentFilter, process_content
from typed_smtpd.proto.errors import EngineError as EngineError
from typed_smtpd.proto.framing import (
    NEED_DATA,
    BadLine,
    ChunkDone,
    DataChunk,
    DataDone,
    Event,
    Line,
    Mode,
    Receiver,
    _NeedData,
)
from typed_smtpd.proto.limits import Limits
from typed_smtpd.proto.monitor import SILENT, Monitor
from typed_smtpd.proto.params import MailParams, MailPolicy, mail_params, rcpt_params
from typed_smtpd.proto.proxy import IPNetwork, ProxyData, is_trusted_peer, parse_proxy_header
from typed_smtpd.proto.replies import REPLY_STYLES, Reply, ReplyStyle
from typed_smtpd.proto.state import (
    BAD_SEQUENCE,
    TRANSITIONS,
    State,
    Verb,
    allowed,
    sequence_error,
)
from typed_smtpd.proto.stream import (
    END,
    ContentStream,
    MessageTooLarge,
    StreamError,
    _End,
)

__all__ = [
    "ALLOWED_BEFORE_STARTTLS",
    "AUTH_GATED",
    "CLOSED",
    "NEED_DATA",
    "WAIT_EVENT",
    "Authenticate",
    "CallHook",
    "CallLegacy",
    "EngineConfig",
    "EngineError",
    "EnvelopeState",
    "Expiry",
    "HandleError",
    "HelpEntry",
    "Request",
    "RunCommand",
    "RunMechanism",
    "ServerEngine",
    "SessionState",
    "StartTLS",
    "Step",
    "Steps",
    "StreamMessage",
    "check_reply",
    "sanitize",
]

log: logging.Logger = logging.getLogger("mail.log")

#: Before STARTTLS under ``require_starttls``, only these commands are accepted (RFC 3207).
ALLOWED_BEFORE_STARTTLS: Final = frozenset({"NOOP", "EHLO", "LHLO", "STARTTLS", "QUIT"})
#: aiosmtpd's list, for SMTP servers that answer as aiosmtpd did (its LMTP refused LHLO too).
_AIOSMTPD_BEFORE_STARTTLS: Final = ALLOWED_BEFORE_STARTTLS - {"LHLO"}
#: Commands that need a successful AUTH first when ``auth_required`` is set.
AUTH_GATED: Final = frozenset({"HELP", "VRFY", "MAIL", "RCPT", "DATA", "BDAT"})
_REPLY_LINE: Final = re.compile(r"[2-5][0-9]{2}(?:[ -][^\r\n\x00]*)?")
_BDAT_ARG: Final = re.compile(r"(\d{1,12})(?: +(LAST))?", re.IGNORECASE)
#: The DSN record of a recipient without NOTIFY or ORCPT (immutable, so shared).
_NO_DSN: Final = RecipientDSN()
#: A command's syntax, its ESMTP parameters (shown after EHLO), and aiosmtpd's wording of those.
_MAIL_USAGE: Final = ("MAIL FROM: <address>", " [SP <mail-parameters>]", " [SP <mail-parameters>]")
_RCPT_USAGE: Final = ("RCPT TO: <address>", " [SP <rcpt-parameters>]", " [SP <mail-parameters>]")
#: aiosmtpd's bound on unknown commands (it has no setting), used unless ``bogus_limit`` is set.
AIOSMTPD_BOGUS_LIMIT: Final = 5


# --- what the engine is given -------------------------------------------------------------------


class SessionState(Protocol):
    """What the engine reads and writes of a connection's session object."""

    host_name: str | None
    extended_smtp: bool
    authenticated: bool | None
    auth_data: Any
    proxy_data: ProxyData | None
    _login_data: Any


class EnvelopeState(Protocol):
    """What the engine reads and writes of a transaction's envelope object."""

    mail_from: str | None
    mail_options: list[str]
    smtp_utf8: bool
    content: bytes | str | None
    original_content: bytes | None
    rcpt_tos: list[str]
    rcpt_options: list[str]
    body: Literal["7BIT", "8BITMIME", "BINARYMIME"] | None
    size: int | None
    dsn_ret: Literal["FULL", "HDRS"] | None
    dsn_envid: str | None
    auth: str | None
    requiretls: bool
    rcpt_dsn: list[RecipientDSN]


@dataclass(frozen=True, slots=True)
class HelpEntry:
    """A command's HELP text: its usage, and what ESMTP clients see appended to it."""

    usage: str
    extended: str = ""


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Everything the engine needs to know about its server: built once, shared by every
    connection of that server.

    ``hooks`` names the handler hooks that exist (of :data:`typed_smtpd.hooks.HOOK_NAMES`), plus
    ``"process_message"`` for the legacy delivery callable; ``legacy`` names the deprecated
    subclass methods that exist (``"ehlo_hook"``, ``"rset_hook"``). ``commands`` is every verb
    the server knows; ``custom_commands`` those whose ``smtp_VERB`` method the adapter runs in
    the engine's place (:class:`RunCommand`). ``mechanisms`` are the AUTH mechanisms offered;
    ``engine_mechanisms`` those of them the engine runs itself (PLAIN, LOGIN, CRAM-MD5), the
    others are run by the adapter (:class:`RunMechanism`).

    ``replies="aiosmtpd"`` makes the server answer as aiosmtpd 1.4.6 did: every reply it sends
    on its own has aiosmtpd's line (:attr:`Reply.aiosmtpd <typed_smtpd.proto.replies.Reply>`),
    EHLO advertises what aiosmtpd advertised (no ``PIPELINING``, ``ENHANCEDSTATUSCODES``,
    ``CHUNKING``, ``BINARYMIME`` or ``DSN``; ``enhanced_status_codes`` is then ignored), the
    built-in BDAT is an unknown command, and the checks aiosmtpd made in another order are made
    in its order (see "Replies as aiosmtpd's" in the migration guide).
    """

    hostname: str
    ident: str
    limits: Limits = field(default_factory=Limits)
    lmtp: bool = False
    enhanced_status_codes: bool = True
    smtputf8: bool = False
    decode_data: bool = False
    tls_available: bool = False
    require_starttls: bool = False
    auth_required: bool = False
    auth_require_tls: bool = True
    mechanisms: frozenset[str] = frozenset()
    engine_mechanisms: frozenset[str] = frozenset()
    login_challenges: tuple[str, str] = ("User Name\x00", "Password\x00")
    call_limits: Mapping[str, int] | None = None
    proxy_timeout: float | None = None
    proxy_trusted: tuple[IPNetwork, ...] = ()
    hooks: frozenset[str] = frozenset()
    legacy: frozenset[str] = frozenset()
    commands: frozenset[str] = frozenset()
    custom_commands: frozenset[str] = frozenset()
    help: Mapping[str, HelpEntry] = field(default_factory=dict)
    help_verbs: tuple[str, ...] = ()
    replies: ReplyStyle = "typed"
    # Derived once, here, rather than per connection or per command.
    #: Whether the server answers as aiosmtpd did (``replies="aiosmtpd"``).
    aiosmtpd: bool = field(init=False, repr=False)
    #: The commands accepted before STARTTLS under ``require_starttls``.
    before_starttls: frozenset[str] = field(init=False, repr=False)
    greeting: Reply = field(init=False, repr=False)
    _ehlo_plain: tuple[str, ...] = field(init=False, repr=False)
    _ehlo_tls: tuple[str, ...] = field(init=False, repr=False)
    _policies: tuple[MailPolicy, MailPolicy] = field(init=False, repr=False)
    #: The reply to HELO, on the wire.
    helo_reply: bytes = field(init=False, repr=False)
    #: What runs each known verb: the engine's own command, or ``None`` for the adapter's.
    dispatch: Mapping[str, _Builtin | None] = field(init=False, repr=False)
    #: Whether message content streams to the ``handle_DATA_stream`` hook.
    streaming: bool = field(init=False, repr=False)
    #: Whether message content is read and dropped as it arrives: nothing takes it (no
    #: ``handle_DATA``, ``process_message`` or stream hook, not LMTP).
    discarding: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for text in (self.hostname, self.ident):
            if "\r" in text or "\n" in text:
                raise ValueError("hostname and ident must not contain CR or LF")
        if self.replies not in REPLY_STYLES:
            raise ValueError(
                f"replies must be one of {', '.join(REPLY_STYLES)}; got {self.replies!r}"
            )
        set_ = object.__setattr__
        aiosmtpd = self.replies == "aiosmtpd"
        set_(self, "aiosmtpd", aiosmtpd)
        if aiosmtpd and not self.lmtp:
            set_(self, "before_starttls", _AIOSMTPD_BEFORE_STARTTLS)
        else:
            set_(self, "before_starttls", ALLOWED_BEFORE_STARTTLS)
        set_(self, "greeting", R.greeting(self.hostname, self.ident))
        set_(self, "_ehlo_plain", self._ehlo_lines(tls_active=False))
        set_(self, "_ehlo_tls", self._ehlo_lines(tls_active=True))
        # aiosmtpd knew SIZE, BODY=7BIT|8BITMIME (unless decode_data) and SMTPUTF8; what it did
        # not advertise is refused as aiosmtpd refused it. AUTH= stays (AUTH is advertised).
        policies = tuple(
            MailPolicy(
                size_limit=self.limits.data_size_limit,
                smtputf8=self.smtputf8,
                binarymime=not self.decode_data and not aiosmtpd,
                tls_active=tls,
                body=not (aiosmtpd and self.decode_data),
                dsn=not aiosmtpd,
                requiretls=not aiosmtpd,
            )
            for tls in (False, True)
        )
        set_(self, "_policies", policies)
        encoding = "utf-8" if self.smtputf8 else "ascii"
        set_(self, "helo_reply", f"250 {self.hostname}\r\n".encode(encoding))
        builtins = _BUILTIN_LMTP if self.lmtp else _BUILTIN_SMTP
        dispatch = {
            verb: None if verb in self.custom_commands else builtins.get(verb)
            for verb in self.commands
        }
        unknown = [verb for verb, run in dispatch.items() if run is None]
        missing = set(unknown) - self.custom_commands
        if missing:
            raise ValueError(f"no built-in command {', '.join(sorted(missing))}: name it custom")
        if aiosmtpd:
            self._as_aiosmtpd(dispatch)
        set_(self, "dispatch", dispatch)
        set_(self, "streaming", "handle_DATA_stream" in self.hooks)
        takers = {"handle_DATA", "handle_DATA_stream", "process_message"}
        # Under decode_data every message is decoded, taken or not (so refused alike when it does
        # not decode), as aiosmtpd did.
        dropped = not self.lmtp and not takers & self.hooks
        set_(self, "discarding", dropped and not self.decode_data)

    def _as_aiosmtpd(self, dispatch: dict[str, _Builtin | None]) -> None:
        """aiosmtpd's commands: no built-in BDAT (CHUNKING is not advertised), and its HELP
        text for RCPT."""
        if "BDAT" not in self.custom_commands:
            dispatch.pop("BDAT", None)
            verbs = tuple(verb for verb in self.help_verbs if verb != "BDAT")
            object.__setattr__(self, "help_verbs", verbs)
        if "RCPT" not in self.custom_commands and "RCPT" in self.help:
            entry = HelpEntry(_RCPT_USAGE[0], _RCPT_USAGE[2])
            object.__setattr__(self, "help", {**self.help, "RCPT": entry})

    def _ehlo_lines(self, *, tls_active: bool) -> tuple[str, ...]:
        lines = [f"250-{self.hostname}"]
        if self.limits.data_size_limit:
            lines.append(f"250-SIZE {self.limits.data_size_limit}")
        if not self.decode_data:
            lines.append("250-8BITMIME")
        if self.smtputf8:
            lines.append("250-SMTPUTF8")
        if not self.aiosmtpd:  # aiosmtpd advertised none of these
            lines.append("250-PIPELINING")
            if self.enhanced_status_codes:
                lines.append("250-ENHANCEDSTATUSCODES")
            lines.append("250-CHUNKING")
            if not self.decode_data:  # BODY=BINARYMIME is accepted exactly then (RFC 3030)
                lines.append("250-BINARYMIME")
            lines.append("250-DSN")  # RET, ENVID, NOTIFY and ORCPT reach the hooks (RFC 3461)
        if self.tls_available and not tls_active:
            lines.append("250-STARTTLS")
        if self.mechanisms and (tls_active or not self.auth_require_tls):
            lines.append("250-AUTH " + " ".join(sorted(self.mechanisms)))
        lines.append("250 HELP")
        return tuple(lines)

    def ehlo_lines(self, *, tls_active: bool) -> list[str]:
        """The reply lines to EHLO (or LHLO), ``"250-host"`` to ``"250 HELP"``."""
        return list(self._ehlo_tls if tls_active else self._ehlo_plain)

    def mail_policy(self, *, tls_active: bool) -> MailPolicy:
        """What MAIL parameters are accepted, with or without TLS."""
        return self._policies[tls_active]


# --- what the engine asks for -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallHook:
    """Call the handler hook ``name`` as ``hook(server, session, envelope, *args)`` (await it if
    it returns an awaitable) and resume with what it returned."""

    name: str
    args: tuple[Any, ...] = ()


#: The annotation of :attr:`HandleError.error`: a module-level name, which compiled dataclasses
#: resolve (a builtin's name they do not).
_HookError = Exception


@dataclass(frozen=True, slots=True)
class HandleError:
    """A hook raised ``error``: call the handler's ``handle_exception(error)`` and resume with
    the reply it returned."""

    error: _HookError


@dataclass(frozen=True, slots=True)
class CallLegacy:
    """Run a deprecated callable: ``"process_message"`` (the handler's, called with the peer,
    sender, recipients and content; resume with its result), or the subclass's ``"ehlo_hook"``
    or ``"rset_hook"`` method (resume with ``None``)."""

    name: Literal["process_message", "ehlo_hook", "rset_hook"]


@dataclass(frozen=True, slots=True)
class RunCommand:
    """Run the server's own ``smtp_<verb>(arg)`` method (an override or a new command); resume
    with ``None`` when it returned."""

    verb: str
    arg: str | None


@dataclass(frozen=True, slots=True)
class RunMechanism:
    """Run the ``auth_<MECHANISM>`` method or handler hook with the AUTH words (the mechanism
    name upper-cased first); resume with what it returned (an :class:`AuthResult`, or a legacy
    value)."""

    mechanism: str
    args: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Authenticate:
    """Check credentials with the server's authenticator; resume with an :class:`AuthResult`."""

    mechanism: str
    auth_data: LoginPassword | object


@dataclass(frozen=True, slots=True)
class StartTLS:
    """Upgrade the connection to TLS (the ``220`` is already in the output). Resume with the
    session object of the TLS session (a new one: nothing learnt before TLS survives it), or
    close the engine when the handshake failed."""


@dataclass(frozen=True, slots=True, eq=False)
class StreamMessage:
    """Call the handler's ``handle_DATA_stream`` hook with a reader of ``stream`` (the content
    arrives while the hook runs: the reader takes it with :meth:`ServerEngine.stream_next`);
    resume with what the hook returned."""

    stream: ContentStream


#: Everything :meth:`ServerEngine.next_request` can ask the adapter to run.
Request = (
    CallHook
    | HandleError
    | CallLegacy
    | RunCommand
    | RunMechanism
    | Authenticate
    | StartTLS
    | StreamMessage
)


class _Closed(Enum):
    """The type of :data:`CLOSED`."""

    CLOSED = auto()

    def __repr__(self) -> str:
        return "CLOSED"


#: Returned by :meth:`ServerEngine.next_request` once the connection is to be closed.
CLOSED: Final = _Closed.CLOSED


class _Wait(Enum):
    """What a command's steps wait for: the next framed event, or any new input."""

    EVENT = auto()  # the next framed input event
    BYTES = auto()  # any new input (the PROXY header is parsed before framing)


#: A step that waits for the next framed input event (:meth:`ServerEngine.next_input`).
WAIT_EVENT: Final = _Wait.EVENT
_WAIT: Final = WAIT_EVENT
#: Where a shutdown closes the connection at once: no transaction to finish.
_IDLE_STATES: Final = (State.GREETED, State.READY)
_IN_TRANSACTION: Final = (State.HAVE_SENDER, State.HAVE_RECIPIENT)
_WAIT_BYTES: Final = _Wait.BYTES

#: What a command generator yields: a request for the adapter, or a wait for input.
Step = Request | _Wait
#: A command that cannot answer at once.
Steps = Generator[Step, Any, None]


class Expiry(Enum):
    """What a missed deadline was (for the adapter's log line)."""

    #: The client sent nothing for ``timeout`` seconds, or a DATA/BDAT/PROXY deadline passed.
    IDLE = auto()
    #: A handler hook (or other user code) did not answer within ``timeout`` seconds.
    HOOK = auto()


class _InvalidHookReply(Exception):
    """A hook returned something that is not a reply line; logged, answered 451."""


def check_reply(status: object, hook: str) -> str:
    """``status`` as a reply (CRLF removed) if it is one or more well-formed reply lines with
    one code, else :class:`ValueError` naming ``hook``."""
    if isinstance(status, str):
        lines = status.removesuffix("\r\n").split("\r\n")
        if (
            all(_REPLY_LINE.fullmatch(line) for line in lines)
            and all(line[3:4] == "-" for line in lines[:-1])
            and lines[-1][3:4] != "-"
            and all(line[:3] == lines[-1][:3] for line in lines)
        ):
            return status.removesuffix("\r\n")
    raise _InvalidHookReply(
        f"{hook} returned {repr(status)[:80]}, which is not a reply line such as '250 OK'"
    )


def _check_line(line: object, hook: str) -> str:
    """One line of a multi-line reply (its separator is set by the caller)."""
    if isinstance(line, str) and _REPLY_LINE.fullmatch(line.removesuffix("\r\n")):
        return line.removesuffix("\r\n")
    raise _InvalidHookReply(f"{hook} returned {repr(line)[:80]}, which is not a reply line")


S = TypeVar("S", bound=SessionState)
E = TypeVar("E", bound=EnvelopeState)


class ServerEngine(Generic[S, E]):
    """The protocol state of one connection.

    >>> from types import SimpleNamespace as NS
    >>> def envelope():
    ...     return NS(mail_from=None, mail_options=[], rcpt_tos=[], rcpt_options=[],
    ...               rcpt_dsn=[], content=None, original_content=None, smtp_utf8=False,
    ...               body=None, size=None, dsn_ret=None, dsn_envid=None, auth=None,
    ...               requiretls=False)
    >>> def session():
    ...     return NS(host_name=None, extended_smtp=False, authenticated=None,
    ...               auth_data=None, _login_data=None)
    >>> config = EngineConfig(hostname="mx.test", ident="ESMTP", commands=frozenset(
    ...     {"HELO", "EHLO", "MAIL", "RCPT", "DATA", "QUIT", "NOOP", "RSET"}))
    >>> engine = ServerEngine(config, new_session=session, new_envelope=envelope,
    ...                       clock=lambda: 0.0)
    >>> engine.start()
    >>> engine.receive_data(b"HELO client.test\\r\\nNOOP\\r\\nQUIT\\r\\n")
    >>> engine.next_request()
    CLOSED
    >>> engine.data_to_send()
    b'220 mx.test ESMTP\\r\\n250 mx.test\\r\\n250 OK\\r\\n221 Bye\\r\\n'
    """

    __slots__ = (
        "_aiosmtpd",
        "_auth_failures",
        "_auth_mechanism",
        "_auth_user",
        "_bdat_chunks",
        "_bdat_size",
        "_bogus",
        "_busy",
        "_busy_since",
        "_call_counts",
        "_clock",
        "_enhanced_codes",
        "_envelope",
        "_eof",
        "_expect",
        "_fresh",
        "_gated",
        "_last_activity",
        "_message_open",
        "_message_size",
        "_new_envelope",
        "_out",
        "_partial_since",
        "_peer_host",
        "_receiver",
        "_shutdown_requested",
        "_step",
        "_steps",
        "_stream",
        "_tls_refused",
        "_verb",
        "closed",
        "config",
        "final_replies",
        "hard_deadline",
        "monitor",
        "peer",
        "session",
        "state",
        "tls_active",
    )

    def __init__(
        self,
        config: EngineConfig,
        *,
        new_session: Callable[[], S],
        new_envelope: Callable[[], E],
        clock: Callable[[], float],
        tls: bool = False,
        peer: object = None,
        peer_host: str | None = None,
        monitor: Monitor = SILENT,
    ) -> None:
        self.config: EngineConfig = config
        #: Told of each event an operator counts or logs.
        self.monitor: Monitor = monitor
        self._new_envelope = new_envelope
        self._clock = clock
        #: The session object (replaced by a new one after STARTTLS).
        self.session: S = new_session()
        # Made when first asked for (see the envelope property): an idle connection holds none.
        self._envelope: E | None = None
        #: Where the dialog stands; only the transition table moves it.
        self.state: State = State.GREETED
        #: Whether the connection is encrypted (implicit TLS, or after STARTTLS).
        self.tls_active: bool = tls
        #: Set once the connection is to be closed; output queued after that is dropped.
        self.closed: bool = False
        #: How many final (not ``3xx``, not ``250-``) replies were sent.
        self.final_replies: int = 0
        limits = config.limits
        self._receiver = Receiver(
            max_line=limits.max_command_line, policy=limits.bare_newline, utf8=config.smtputf8
        )
        #: The client's address, as the adapter names it in log lines.
        self.peer: object = peer
        self._peer_host = peer_host
        self._out: list[bytes] = []
        self._eof = False
        self._fresh = False
        self._steps: Steps | None = None
        self._step: Step | None = None
        #: What takes the next input event when a command waits for content without user code.
        self._expect: Callable[[Event], Steps | None] | None = None
        self._tls_refused = False
        self._gated = config.require_starttls or config.call_limits is not None
        self._aiosmtpd = config.aiosmtpd
        self._enhanced_codes = config.enhanced_status_codes and not config.aiosmtpd
        self._shutdown_requested = False
        self._bogus = 0
        self._auth_failures = 0
        self._call_counts: Counter[str] | None = None if config.call_limits is None else Counter()
        self._bdat_chunks: list[bytes] | None = None  # made by the first BDAT chunk kept
        self._bdat_size = 0
        self._stream: ContentStream | None = None
        self._verb: str | None = None  # the command being answered
        self._message_open = False  # the next final reply is a message's
        self._message_size = 0
        self._auth_mechanism = ""
        self._auth_user: str | None = None
        now = clock()
        self._last_activity = now
        self._busy = False
        self._busy_since = now
        self._partial_since: float | None = None
        #: The deadline of the DATA, BDAT or PROXY phase in progress, if any.
        self.hard_deadline: float | None = None

    @property
    def envelope(self) -> E:
        """The envelope of the transaction in progress: a new one after each message and RSET,
        made by ``new_envelope`` when first asked for (so a connection that sits idle, or only
        greets and leaves, makes none)."""
        envelope = self._envelope
        if envelope is None:
            envelope = self._envelope = self._new_envelope()
        return envelope

    @envelope.setter
    def envelope(self, value: E) -> None:
        self._envelope = value

    # --- the adapter's interface ----------------------------------------------------------------

    def start(self) -> None:
        """The connection is open: send the greeting (or first read the PROXY header)."""
        if self.config.proxy_timeout is None:
            self._greet()
        else:
            self._begin(self._proxy_phase())

    def _greet(self) -> None:
        refusal = self.monitor.connected()
        if refusal is None:
            self.reply(self.config.greeting)
        else:
            self.refuse(refusal)

    def refuse(self, reply: Reply) -> None:
        """Answer a connection that is not served (``421`` when the server is full) and close."""
        self.reply(reply)
        self.close()

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes from the client."""
        self._receiver.receive_data(data)
        self._fresh = True
        self._last_activity = self._clock()

    def receive_eof(self) -> None:
        """The client will send nothing more: what is buffered is answered, then the engine
        closes."""
        self._eof = True
        self._fresh = True

    @property
    def buffered(self) -> int:
        """How many received octets wait to be processed (for the adapter's flow control)."""
        return self._receiver.buffered

    @property
    def busy(self) -> bool:
        """Whether a request is out with the adapter."""
        return self._busy

    def wait_on_client(self, waiting: bool) -> None:
        """Say that the request out now waits on the client (a TLS handshake, an answer to a
        SASL challenge, a client that is behind with its replies): the idle timeout applies
        then, not the deadline for slow user code; ``False`` when user code runs again."""
        now = self._clock()
        if waiting:
            self._busy = False
            self._last_activity = now
        elif self._step is not None and not isinstance(self._step, _Wait):
            self._busy = True
            self._busy_since = now

    def next_request(self) -> Request | _NeedData | _Closed:
        """Process the input until user code must run (a request), the input runs dry
        (:data:`NEED_DATA`) or the connection is to be closed (:data:`CLOSED`).

        The output to send is in :meth:`data_to_send` in every case.
        """
        while not self.closed:
            step = self._step
            if step is None:
                event = self._receiver.next_event()
                if event is NEED_DATA:
                    if self._eof or self._busy:
                        return self._idle()
                    if self._partial_since is None and self._receiver.partial:
                        self._partial_since = self._clock()  # as _idle() does, inline
                    return NEED_DATA
                self._partial_since = None
                expect = self._expect
                try:
                    if expect is not None:  # the content of DATA, or a BDAT chunk
                        self._expect = None
                        steps = expect(event)
                    elif type(event) is Line:
                        steps = self._on_line(event)
                    else:
                        steps = self._on_event(event)
                except Exception as error:
                    steps = self._on_error(error)
                if steps is not None:
                    self._begin(steps)
                elif self._shutdown_requested:
                    self._shut_down_if_idle()
            elif step is _WAIT:
                event = self._receiver.next_event()
                if event is NEED_DATA:
                    if self._eof:
                        self._abandon()  # the client left half way: nothing is accepted
                        break
                    return self._idle()
                self._partial_since = None
                self._advance(event)
            elif step is _WAIT_BYTES:
                if not self._fresh:
                    if self._eof:
                        self._abandon()
                        break
                    return self._idle()
                self._fresh = False
                self._advance(None)
            else:
                if not self._busy:
                    self._busy = True
                    self._busy_since = self._clock()
                return step
        return CLOSED

    def resume(self, result: object) -> None:
        """The adapter ran the request :meth:`next_request` returned; this is its result."""
        self._ready_to_resume()
        self._advance(result)

    def fail(self, error: Exception) -> None:
        """The request :meth:`next_request` returned raised ``error``."""
        self._ready_to_resume()
        self._advance(None, error)

    def data_to_send(self) -> bytes:
        """The output queued so far (and forget it)."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    @property
    def has_output(self) -> bool:
        """Whether :meth:`data_to_send` has anything."""
        return bool(self._out)

    def reply(self, reply: Reply) -> None:
        """Queue one reply from the catalogue (enhanced codes once the client sent EHLO; with
        ``replies="aiosmtpd"``, aiosmtpd's line)."""
        code = reply.code
        if not 300 <= code < 400:
            self.final_replies += 1
            if code >= 400 or self._message_open:
                self._report(reply)
        if not self.closed:
            if self._enhanced_codes and self.session.extended_smtp:
                self._out.append(reply._wire_enhanced)
            else:
                self._out.append(reply._wire_aiosmtpd if self._aiosmtpd else reply._wire)

    def send_line(self, line: bytes) -> None:
        """Queue raw reply lines (CRLF included), as a hook's ``push()`` sends them."""
        end_of_previous = line.rfind(b"\r\n", 0, len(line) - 2)
        start = end_of_previous + 2 if end_of_previous >= 0 else 0
        if line[start + 3 : start + 4] != b"-" and line[start : start + 1] != b"3":
            self.final_replies += 1
            if self._message_open or line[start : start + 1] in _REFUSALS:
                self._report(line[start:-2])
        if not self.closed:
            self._out.append(line)

    def _report(self, reply: Reply | bytes) -> None:
        """Tell the monitor about a final reply: a message's, or a refusal."""
        limit = _limit_of(reply) if isinstance(reply, Reply) else None
        if self._message_open:
            self._message_open = False
            self.monitor.message(reply, self._message_size, limit)
        elif self._verb is not None:
            self.monitor.refused(self._verb, reply, limit)

    def send_status(self, status: object, hook: str) -> str:
        """Queue what a hook returned as its reply, after checking it is one."""
        text = check_reply(status, hook)
        self.send_line(text.encode(self._encoding, "replace") + b"\r\n")
        return text

    def close(self) -> None:
        """Close the connection (what is queued is still sent)."""
        self.closed = True

    @property
    def enhanced(self) -> bool:
        """Whether replies carry enhanced status codes now (ESMTP clients, when enabled; never
        with ``replies="aiosmtpd"``, whose replies carry the codes aiosmtpd gave them)."""
        return self._enhanced_codes and self.session.extended_smtp

    def request_shutdown(self) -> None:
        """The server is stopping: close at once when idle, else after the current command or
        message (with ``421``)."""
        self._shutdown_requested = True
        self._shut_down_if_idle()

    # --- time -----------------------------------------------------------------------------------

    def next_deadline(self) -> float:
        """When the engine must next be looked at (:meth:`expire`), on the ``clock``'s scale."""
        timeout = self.config.limits.timeout
        if self._busy:
            due = self._busy_since + timeout
        else:
            due = self._last_activity + timeout
            if self._partial_since is not None:
                due = min(due, self._partial_since + timeout)
        deadline = self.hard_deadline
        return due if deadline is None else min(due, deadline)

    def expire(self) -> Expiry | None:
        """Called at or after :meth:`next_deadline`: ``None`` if nothing is due yet; else the
        ``421`` is queued, the engine closed, and the kind of deadline missed returned."""
        now = self._clock()
        if now < self.next_deadline():
            return None
        deadline = self.hard_deadline
        kind = Expiry.HOOK if self._busy and (deadline is None or now < deadline) else Expiry.IDLE
        self._verb = None  # the 421 answers no command (the monitor hears of the time-out)
        self._message_open = False
        self.reply(R.TIMEOUT)
        self.close()
        return kind

    # --- nested use by the adapter --------------------------------------------------------------

    def command(self, verb: str, arg: str | None) -> Steps | None:
        """The built-in command ``verb``, for an adapter method that a subclass calls itself
        (``await super().smtp_MAIL(arg)``): ``None`` when it was answered at once, else the
        steps for the caller to drive (each a request, or a wait for the next input event,
        which :meth:`next_input` gives)."""
        run = (_BUILTIN_LMTP if self.config.lmtp else _BUILTIN_SMTP)[verb]
        steps = run(self, arg)
        if steps is None and self._expect is not None:
            return self._expected()  # its caller waits for the content too
        return steps

    def _expected(self) -> Steps:
        while self._expect is not None:  # a continuation may hand on to the next one
            expect, self._expect = self._expect, None
            event = yield _WAIT
            steps = expect(event)
            if steps is not None:
                yield from steps

    def next_input(self) -> Event | _NeedData:
        """The next framed input event, for steps driven by the adapter."""
        event = self._receiver.next_event()
        if event is not NEED_DATA:
            self._partial_since = None
        return event

    @property
    def phase(self) -> str | None:
        """What the dialog is in the middle of: ``"DATA"`` or ``"BDAT"`` (message content),
        ``"AUTH"`` (a SASL exchange), ``"MAIL"`` (a transaction before its content), or ``None``
        (between transactions)."""
        mode = self._receiver.mode
        if mode is Mode.DATA or (self._stream is not None and not self._stream.bdat):
            return "DATA"
        if mode is Mode.BDAT or self.state is State.IN_BDAT:
            return "BDAT"
        if mode is Mode.SASL:
            return "AUTH"
        if self.state in (State.HAVE_SENDER, State.HAVE_RECIPIENT):
            return "MAIL"
        return None

    @property
    def eof(self) -> bool:
        """Whether the client closed its side."""
        return self._eof

    def start_challenge(self, challenge: bytes, *, encode: bool = True) -> None:
        """Send a ``334`` SASL challenge; the next input event is the client's answer."""
        payload = base64.b64encode(challenge) if encode else challenge
        self.send_line(b"334 " + payload + b"\r\n")
        self._receiver.start_sasl(self.config.limits.auth_line_limit)

    def challenge_answer(self, event: Event | None) -> bytes | _Missing:
        """The decoded answer to a challenge, or :data:`MISSING` (after replying) when the
        client cancelled with ``*``, sent bad base64 or an over-long line (``None``: the client
        left)."""
        if event is None:
            self.close()
            return MISSING
        if isinstance(event, BadLine):
            bad = event.reply
            if self._aiosmtpd and bad in (R.NOT_ASCII, R.NON_ASCII_VERB):
                bad = R.AUTH_BAD_BASE64  # what aiosmtpd's base64 decoder made of it
            self.reply(bad)
            return MISSING
        assert isinstance(event, Line)
        line = event.text.strip()
        if line == "*":
            self.reply(R.AUTH_ABORTED)
            return MISSING
        decoded = decode_response(line) if line != "=" else None
        if decoded is None:
            self.reply(R.AUTH_BAD_BASE64)
            return MISSING
        return decoded

    def settle_auth(self, outcome: object, *, answered_before: int) -> None:
        """Record what an AUTH exchange decided, and answer unless its mechanism did."""
        session = self.session
        result = self._auth_result(outcome)
        if result is None:  # legacy: an identity means success
            session._login_data = outcome
            result = AuthResult(success=True, auth_data=outcome)
        self.monitor.authenticated(self._auth_mechanism, self._auth_user, result.success)
        if result.success:
            session.authenticated = True
            session.auth_data = result.auth_data
            login = getattr(result.auth_data, "login", None)
            if login is not None:
                session._login_data = login
            if result.message is not None:
                self.send_status(result.message, "authenticator")
            else:
                self.reply(R.AUTH_SUCCESS)
            return
        session.authenticated = False
        unanswered = self.final_replies == answered_before
        if result.handled and unanswered:
            # "Handled" but nothing answered the client: never leave it waiting.
            log.warning("%r AUTH failure marked handled, but no reply was sent", self.peer)
        if not result.handled or unanswered:
            if result.message is not None:
                self.send_status(result.message, "authenticator")
            else:
                self.reply(R.AUTH_FAILED)
        self._auth_failures += 1
        if self._auth_failures >= self.config.limits.max_auth_failures:
            self.reply(R.AUTH_TOO_MANY_FAILURES)
            self.close()

    # --- driving the steps ----------------------------------------------------------------------

    def _idle(self) -> _NeedData | _Closed:
        if self._eof:
            self.close()
            return CLOSED
        if self._busy:
            self._busy = False
            self._last_activity = self._clock()
        if self._partial_since is None and self._receiver.partial:
            # A line has begun: it must end within the timeout, however it trickles in.
            self._partial_since = self._clock()
        return NEED_DATA

    def _ready_to_resume(self) -> None:
        step = self._step
        if step is None or isinstance(step, _Wait):
            raise EngineError("resume() or fail() without a request out")
        self._busy = False
        self._last_activity = self._clock()

    def _begin(self, steps: Steps) -> None:
        self._steps = steps
        self._advance(None)

    def _advance(self, value: object, error: Exception | None = None) -> None:
        steps = self._steps
        assert steps is not None
        try:
            self._step = steps.send(value) if error is None else steps.throw(error)
        except StopIteration:
            self._steps = self._step = None
            if self._shutdown_requested:
                self._shut_down_if_idle()
        except Exception as raised:  # answered, never raised to the adapter
            self._steps = self._step = None
            self._begin(self._on_error(raised))

    def _abandon(self) -> None:
        steps = self._steps
        self._steps = self._step = None
        self.hard_deadline = None
        if steps is not None:
            steps.close()
        self.close()

    def _shut_down_if_idle(self) -> None:
        if self._step is None and self._expect is None and self.state in _IDLE_STATES:
            self.reply(R.SHUTTING_DOWN)
            self.close()

    def _on_error(self, error: Exception) -> Steps:
        """Answer an exception from user code (or a bug): logged, and ``451`` or what the
        handler's ``handle_exception`` returns; exception text never reaches the client."""
        self.monitor.hook_failed(error)
        if isinstance(error, _InvalidHookReply):
            log.error("%r %s", self.peer, error)
            self.reply(R.INTERNAL_ERROR)
            return
        log.error("%r error while handling a command", self.peer, exc_info=error)
        if "handle_exception" not in self.config.hooks:
            self.reply(R.INTERNAL_ERROR)
            return
        try:
            status = yield HandleError(error)
            self.send_status(status, "handle_exception")
        except Exception as failure:
            log.error("%r handle_exception failed", self.peer, exc_info=failure)
            self.reply(R.INTERNAL_ERROR)

    def _hook(self, name: str, *args: object) -> Generator[Step, Any, str]:
        """Call a handler hook and send the reply it returns; the reply's text."""
        status = yield CallHook(name, args)
        return self.send_status(status, name)

    @property
    def _encoding(self) -> str:
        return "utf-8" if self.config.smtputf8 else "ascii"

    # --- commands -------------------------------------------------------------------------------

    def _on_event(self, event: Event) -> Steps | None:
        if type(event) is Line:
            return self._on_line(event)
        if isinstance(event, BadLine):
            self.reply(event.reply)
            if not self._aiosmtpd:  # aiosmtpd counted unknown commands only
                self._count_bogus()
            return None
        raise EngineError(f"unexpected event outside DATA/BDAT: {event!r}")

    def _count_bogus(self) -> None:
        self._bogus += 1
        if self._bogus >= self.config.limits.bogus_limit:
            self.reply(R.TOO_MANY_UNRECOGNIZED)
            self.close()

    def _unknown(self, verb: str) -> None:
        """Answer a command the server does not know; aiosmtpd answered the last one tolerated
        with the farewell alone."""
        if self._aiosmtpd and self._bogus + 1 >= self.config.limits.bogus_limit:
            self._bogus += 1
            self.reply(R.TOO_MANY_UNRECOGNIZED)
            self.close()
            return
        self.reply(R.unrecognized(verb))
        self._count_bogus()

    def _on_line(self, line: Line) -> Steps | None:
        # parse_command(), inline: this runs for every command line.
        verb, _, rest = line.text.partition(" ")
        verb = verb.upper()
        arg = rest.strip() or None
        self._verb = verb
        if log.isEnabledFor(logging.DEBUG):
            name = getattr(self.monitor, "id", None) or repr(self.peer)  # the session id, if any
            log.debug("%s >> %s", name, sanitize(line.text))
        malformed = self._malformed(verb, line)
        if malformed is not None:
            self.reply(malformed)
            if not self._aiosmtpd:  # aiosmtpd counted unknown commands only
                self._count_bogus()
            return None
        if self._gated or self._tls_refused:
            refusal = self._gate(verb)
            if refusal is not None:
                return self.refuse_command(verb, arg, refusal)
            if self.closed:  # over a call limit
                return None
        run = self.config.dispatch.get(verb, _UNKNOWN)
        if run is _UNKNOWN:
            self._unknown(verb)
            return None
        if self.config.auth_required and verb in AUTH_GATED and not self.session.authenticated:
            return self.refuse_command(verb, arg, R.AUTH_REQUIRED)
        if verb == "AUTH" or self.state is State.IN_BDAT:
            misplaced = self._misplaced(verb)
            if misplaced is not None:
                self.reply(misplaced)
                return None
        if run is None:  # the server class's own smtp_VERB method
            return self._run_custom(verb, arg)
        return run(self, arg)

    def _malformed(self, verb: str, line: Line) -> Reply | None:
        """The refusal of a line that is no command at all (counted as a bad command)."""
        if (not verb or not verb.isascii() or not verb.isalnum()) and not (
            # aiosmtpd took any ASCII word (even an empty one) for a verb it did not know.
            self._aiosmtpd and line.text and verb.isascii()
        ):
            return R.BAD_SYNTAX
        size = line.size
        limits = self.config.limits
        if size > limits.command_size_limit and size > self._command_limit(verb):
            return R.COMMAND_TOO_LONG
        return None

    def _command_limit(self, verb: str) -> int:
        """The longest command line accepted for ``verb`` now, CRLF included."""
        limits = self.config.limits
        extended = self.session.extended_smtp
        if not self._aiosmtpd:
            return limits.command_limit(verb, extended=extended)
        # aiosmtpd did not count the CRLF, and after EHLO let MAIL grow by what SIZE and
        # SMTPUTF8 add to it (RFC 1870, RFC 6531) only.
        limit = limits.command_size_limit + 2
        if extended and verb == "MAIL":
            limit += 26 if limits.data_size_limit else 0
            limit += 10 if self.config.smtputf8 else 0
        return limit

    def _misplaced(self, verb: str) -> Reply | None:
        """The refusal of a known command that the dialog so far rules out before it runs."""
        state = self.state
        if verb == "AUTH" and state is not State.GREETED and not self.session.extended_smtp:
            # An ESMTP extension (RFC 4954): a client that greeted with HELO does not know it.
            return R.AUTH_AFTER_HELO
        if state is State.IN_BDAT and verb not in _BDAT_ALLOWED:
            # Between BDAT chunks only what the state table allows (RFC 3030 section 2).
            known = _VERBS.get(verb)  # a subclass's own command is no Verb of the table
            return BAD_SEQUENCE if known is None else sequence_error(state, known)
        return None

    def _gate(self, verb: str) -> Reply | None:
        """The connection-wide refusals, before the command is looked at."""
        if self._tls_refused and verb != "QUIT":
            return R.SECURITY_REFUSED
        config = self.config
        if config.require_starttls and not self.tls_active and verb not in config.before_starttls:
            return R.STARTTLS_FIRST
        counts = self._call_counts
        if counts is not None:
            assert config.call_limits is not None
            counts[verb] += 1
            limit = config.call_limits.get(verb, config.call_limits["*"])
            if counts[verb] > limit:
                self.reply(R.call_limit_exceeded(verb))
                self.close()
        return None

    def refuse_command(self, verb: str, arg: str | None, reply: Reply | str) -> Steps | None:
        """Refuse a command instead of running it; a refused BDAT still has its chunk read
        (and dropped) first, or those octets would be taken for commands (RFC 3030 section 2).
        ``reply`` is a catalogue value or a reply line."""
        if verb != "BDAT":
            self._answer(reply)
            return None
        match = _BDAT_ARG.fullmatch(arg or "")
        if match is None:
            self.reply(R.BDAT_BAD_SIZE)
            self.close()
            return None
        self._receiver.start_bdat(int(match.group(1)), discard=True)
        return self._refuse_chunk(reply)

    def _refuse_chunk(self, reply: Reply | str) -> Steps:
        yield _WAIT
        self._answer(reply)

    def _answer(self, reply: Reply | str) -> None:
        if isinstance(reply, Reply):
            self.reply(reply)
        else:
            self.send_status(reply, "refusal")

    def _run_custom(self, verb: str, arg: str | None) -> Steps:
        yield RunCommand(verb, arg)

    def _sequence_ok(self, verb: Verb) -> bool:
        state = self.state
        if (state, verb) in TRANSITIONS:
            return True
        self.reply(sequence_error(state, verb))
        return False

    def _accepted(self, verb: Verb) -> None:
        self.state = TRANSITIONS[self.state, verb]

    def _reset_transaction(self) -> None:
        self._envelope = None  # the next one is made when asked for
        self._bdat_chunks = None
        self._bdat_size = 0
        if self.state is not State.GREETED:
            self.state = State.READY

    def _usage(self, usage: tuple[str, str, str]) -> None:
        """Answer 501 with the command's syntax (its ESMTP parameters only after EHLO)."""
        if self.session.extended_smtp:
            self.reply(R.syntax(usage[0] + usage[1], usage[0] + usage[2]))
        else:
            self.reply(R.syntax(usage[0]))

    # HELO, EHLO, LHLO

    def _helo(self, hostname: str | None) -> Steps | None:
        if not hostname:
            self.reply(R.syntax("HELO hostname"))
            return None
        session = self.session
        self._reset_transaction()
        session.extended_smtp = False
        if "handle_HELO" not in self.config.hooks:
            session.host_name = hostname
            self.send_line(self.config.helo_reply)
            self._accepted(Verb.HELO)
            return None
        return self._helo_hooked(hostname)

    def _helo_hooked(self, hostname: str) -> Steps:
        status = yield from self._hook("handle_HELO", hostname)
        self._hello_done(Verb.HELO, positive=status[0] == "2")

    def _hello_done(self, verb: Verb, *, positive: bool) -> None:
        """After a HELO or EHLO hook: the client is greeted only if the hook recorded a host
        name. A false-y ``session.host_name`` means the greeting failed and must be repeated."""
        if not self.session.host_name:
            self.state = State.GREETED
        elif positive:
            self._accepted(verb)

    def _ehlo(self, hostname: str | None, verb: Verb = Verb.EHLO) -> Steps | None:
        if not hostname:
            # aiosmtpd's LHLO ran its EHLO command, syntax error included.
            self.reply(R.syntax(f"{verb.value} hostname", "EHLO hostname"))
            return None
        session = self.session
        self._reset_transaction()
        session.extended_smtp = True
        config = self.config
        if not ("handle_EHLO" in self.config.hooks or "ehlo_hook" in config.legacy):
            lines = config.ehlo_lines(tls_active=self.tls_active)
            self.send_line(("\r\n".join(lines) + "\r\n").encode("utf-8", "replace"))
            session.host_name = hostname
            self._accepted(verb)
            return None
        return self._ehlo_hooked(hostname, verb)

    def _ehlo_hooked(self, hostname: str, verb: Verb) -> Steps:
        responses = self.config.ehlo_lines(tls_active=self.tls_active)
        hooks = self.config.hooks
        if "handle_EHLO" in hooks and "handle_EHLO:legacy" not in hooks:
            result = yield CallHook("handle_EHLO", (hostname, responses))
            self._send_ehlo_lines(result)
            self._hello_done(verb, positive=str(result[-1]).startswith("2"))
            return
        # The server's own lines go out first; the deprecated forms (the four-argument
        # handle_EHLO, an aiosmtpd subclass's ehlo_hook) may push more "250-" lines.
        for line in responses[:-1]:
            self.send_line(line.encode("utf-8", "replace") + b"\r\n")
        if "handle_EHLO" in hooks:
            status = yield from self._hook("handle_EHLO", hostname)  # its reply is the last line
            self._hello_done(verb, positive=status[0] == "2")
            return
        yield CallLegacy("ehlo_hook")
        self.send_line(responses[-1].encode("ascii") + b"\r\n")
        self.session.host_name = hostname
        self._accepted(verb)

    def _send_ehlo_lines(self, result: object) -> None:
        if not isinstance(result, list) or not result:
            raise _InvalidHookReply(
                f"handle_EHLO returned {type(result).__name__}, not a list of reply lines"
            )
        # Every line is checked before any is sent: half a reply would desynchronise.
        texts = [_check_line(line, "handle_EHLO") for line in result]
        last = len(texts) - 1
        encoding = self._encoding
        self.send_line(
            b"".join(
                f"{text[:3]}{'-' if index < last else ' '}{text[4:]}".encode(encoding, "replace")
                + b"\r\n"
                for index, text in enumerate(texts)
            )
        )

    def _lhlo(self, hostname: str | None) -> Steps | None:
        return self._ehlo(hostname, Verb.LHLO)

    # NOOP, QUIT, RSET, VRFY, EXPN, HELP

    def _noop(self, arg: str | None) -> Steps | None:
        if "handle_NOOP" not in self.config.hooks:
            self.reply(R.OK)
            return None
        return self._hooked("handle_NOOP", arg or "")

    def _hooked(self, name: str, *args: object) -> Steps:
        yield from self._hook(name, *args)

    def _quit(self, arg: str | None) -> Steps | None:
        if arg:
            self.reply(R.syntax("QUIT"))
            return None
        if "handle_QUIT" not in self.config.hooks:
            self.reply(R.BYE)
            self.close()
            return None
        return self._quit_hooked()

    def _quit_hooked(self) -> Steps:
        try:
            yield from self._hook("handle_QUIT")
        except Exception as error:
            yield from self._on_error(error)  # answered before the close, never silently
        self.close()

    def _rset(self, arg: str | None) -> Steps | None:
        if arg:
            self.reply(R.syntax("RSET"))
            return None
        self._reset_transaction()
        self.state = TRANSITIONS[self.state, Verb.RSET]
        if "handle_RSET" in self.config.hooks:
            return self._hooked("handle_RSET")
        if "rset_hook" in self.config.legacy:
            return self._rset_legacy()
        self.reply(R.OK)
        return None

    def _rset_legacy(self) -> Steps:
        yield CallLegacy("rset_hook")
        self.reply(R.OK)

    def _vrfy(self, arg: str | None) -> Steps | None:
        if not arg:
            self.reply(R.syntax("VRFY <address>"))
            return None
        try:
            address = parse_path(
                arg if arg.startswith("<") else f"<{arg}>", allow_null=False, allow_postmaster=True
            )
        except PathError:
            self.reply(R.vrfy_unparsable(arg))
            return None
        if self._aiosmtpd and self._local_part_too_long(address):
            self.reply(R.vrfy_unparsable(arg))
            return None
        if "handle_VRFY" not in self.config.hooks:
            self.reply(R.CANNOT_VRFY)
            return None
        return self._hooked("handle_VRFY", address)

    def _expn(self, arg: str | None) -> None:
        self.reply(R.EXPN_NOT_IMPLEMENTED)

    def _help(self, arg: str | None) -> None:
        config = self.config
        verbs = list(config.help_verbs)
        if not arg:
            self.reply(R.help_commands(verbs))
            return
        verb = arg.upper()
        if verb not in verbs:
            self.reply(R.help_commands(verbs, refused=True))
            return
        entry = config.help.get(verb, HelpEntry(verb))
        text = entry.usage + entry.extended if self.session.extended_smtp else entry.usage
        self.reply(R.help_syntax(text))

    # MAIL, RCPT

    def _path_command(
        self, verb: Verb, arg: str | None, keyword: str, usage: tuple[str, str, str]
    ) -> tuple[str, list[str]] | None:
        """The address and parameters of ``MAIL FROM:`` or ``RCPT TO:``, or ``None`` after
        refusing the command (out of sequence, no path, malformed)."""
        if self._aiosmtpd:
            return self._path_command_as_aiosmtpd(verb, arg, keyword, usage)
        if not self._sequence_ok(verb):
            return None
        if not arg or arg[: len(keyword)].upper() != keyword:
            self._usage(usage)
            return None
        path, params_text = split_path_and_params(arg[len(keyword) :])
        # Nothing after the colon, or words instead of a <path>: a syntax error (501), as from
        # aiosmtpd and Postfix; 553 is for a path that is no acceptable address.
        if not path.startswith("<") or (params_text and not self.session.extended_smtp):
            self._usage(usage)
            return None
        try:
            mail = verb is Verb.MAIL
            address = parse_path(path, allow_null=mail, allow_postmaster=not mail)
            params = parse_params(params_text)
        except PathError:
            self.reply(R.MALFORMED_ADDRESS)
            return None
        except ParamError:
            self._usage(usage)
            return None
        return address, params

    def _path_command_as_aiosmtpd(
        self, verb: Verb, arg: str | None, keyword: str, usage: tuple[str, str, str]
    ) -> tuple[str, list[str]] | None:
        """:meth:`_path_command` in aiosmtpd's order: the address and its local part first,
        then parameters where none are allowed, then a ``MAIL`` during a transaction."""
        nested = verb is Verb.MAIL and self.state in _IN_TRANSACTION
        if not nested and not self._sequence_ok(verb):
            return None
        if not arg or arg[: len(keyword)].upper() != keyword:
            self._usage(usage)
            return None
        path, params_text = split_path_and_params(arg[len(keyword) :])
        if not path.startswith("<"):
            self._usage(usage)
            return None
        try:
            mail = verb is Verb.MAIL
            address = parse_path(path, allow_null=mail, allow_postmaster=not mail)
        except PathError:
            self.reply(R.MALFORMED_ADDRESS)
            return None
        if self._local_part_too_long(address):
            self.reply(R.LOCAL_PART_TOO_LONG)
            return None
        if params_text and not self.session.extended_smtp:
            self._usage(usage)
            return None
        if nested and not self._sequence_ok(verb):
            return None
        try:
            params = parse_params(params_text)
        except ParamError:
            self._usage(usage)
            return None
        return address, params

    def _local_part_too_long(self, address: str) -> bool:
        limit = self.config.limits.local_part_limit
        return bool(limit) and len(address.rpartition("@")[0]) > limit

    def _mail(self, arg: str | None) -> Steps | None:
        command = self._path_command(Verb.MAIL, arg, "FROM:", _MAIL_USAGE)
        if command is None:
            return None
        address, params = command
        if self._local_part_too_long(address):
            self.reply(R.LOCAL_PART_TOO_LONG)
            return None
        parsed = mail_params(params, self.config.mail_policy(tls_active=self.tls_active))
        if isinstance(parsed, Reply):
            self.reply(parsed)
            return None
        if not address.isascii() and not parsed.smtp_utf8:
            self.reply(R.NEED_UTF8)
            return None
        if "handle_MAIL" not in self.config.hooks:
            self.reply(R.MAIL_OK)
            self._mail_accepted(address, params, parsed)
            return None
        return self._mail_hooked(address, params, parsed)

    def _mail_hooked(self, address: str, params: list[str], parsed: MailParams) -> Steps:
        status = yield from self._hook("handle_MAIL", address, params)
        if status[0] == "2":
            self._mail_accepted(address, params, parsed)

    def _mail_accepted(self, address: str, params: list[str], parsed: MailParams) -> None:
        envelope = self.envelope
        if envelope.mail_from is None:
            envelope.mail_from = address
        if not envelope.mail_options:
            envelope.mail_options.extend(params)
        envelope.size, envelope.body = parsed.size, parsed.body
        envelope.smtp_utf8, envelope.requiretls = parsed.smtp_utf8, parsed.requiretls
        envelope.dsn_ret, envelope.dsn_envid = parsed.dsn_ret, parsed.dsn_envid
        envelope.auth = parsed.auth
        self._accepted(Verb.MAIL)

    def _rcpt(self, arg: str | None) -> Steps | None:
        command = self._path_command(Verb.RCPT, arg, "TO:", _RCPT_USAGE)
        if command is None:
            return None
        address, params = command
        parsed = rcpt_params(params, dsn=not self._aiosmtpd)
        if isinstance(parsed, Reply):
            self.reply(parsed)
            return None
        dsn = (
            _NO_DSN
            if not parsed.notify and parsed.orcpt is None
            else RecipientDSN(parsed.notify, parsed.orcpt)
        )
        envelope = self.envelope
        if not address.isascii() and not envelope.smtp_utf8:
            self.reply(R.NEED_UTF8)
            return None
        limit = self.config.limits.max_recipients
        if limit is not None and len(envelope.rcpt_tos) >= limit:
            self.reply(R.TOO_MANY_RECIPIENTS)
            return None
        if "handle_RCPT" not in self.config.hooks:
            self.reply(R.RCPT_OK)
            self._rcpt_accepted(address, params, dsn, len(envelope.rcpt_tos))
            return None
        return self._rcpt_hooked(address, params, dsn)

    def _rcpt_hooked(self, address: str, params: list[str], dsn: RecipientDSN) -> Steps:
        count = len(self.envelope.rcpt_tos)
        status = yield from self._hook("handle_RCPT", address, params)
        if status[0] == "2":
            self._rcpt_accepted(address, params, dsn, count)

    def _rcpt_accepted(
        self, address: str, params: list[str], dsn: RecipientDSN, count: int
    ) -> None:
        envelope = self.envelope
        # A hook that recorded the recipient itself is not second-guessed.
        if len(envelope.rcpt_tos) == count:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(params)
        while len(envelope.rcpt_dsn) < len(envelope.rcpt_tos):
            envelope.rcpt_dsn.append(dsn)
        self._accepted(Verb.RCPT)

    # DATA, BDAT

    def _data(self, arg: str | None) -> Steps | None:
        # aiosmtpd looked at the sequence first, then at the argument.
        if arg and not (self._aiosmtpd and not allowed(self.state, Verb.DATA)):
            self.reply(R.syntax("DATA"))
            return None
        if not self._sequence_ok(Verb.DATA):
            return None
        self.reply(R.ENTER_DATA)
        self._message_open = True
        self._message_size = 0
        limits = self.config.limits
        config = self.config
        self._receiver.start_data(
            limits.max_data_size, stream=config.streaming or config.discarding
        )
        self.hard_deadline = self._clock() + limits.data_timeout
        if config.streaming:
            return self._deliver_stream(None)
        self._expect = self._drop_data if config.discarding else self._data_done
        return None

    def _data_done(self, event: Event) -> Steps | None:
        assert isinstance(event, DataDone)
        return self._finish(self._whole_content(event))

    def _whole_content(self, event: DataDone) -> bytes | Reply:
        """DATA content that came in one piece: the message, or the reply that refuses it."""
        self.hard_deadline = None
        if event.raw is None:
            return event.error or R.DATA_TOO_LARGE
        limits = self.config.limits
        return process_content(
            event.raw,
            policy=limits.bare_newline,
            line_length_limit=limits.line_length_limit,
            stuffed=event.stuffed,
        )

    def _drop_data(self, event: Event, stream: ContentStream | None = None) -> None:
        """The content of DATA when nothing takes it: checked as it arrives, then dropped;
        ``250`` if it passes. Content that came whole is checked in one go."""
        if stream is None:
            if type(event) is DataDone:
                assert isinstance(event, DataDone)
                self._message_size = 0 if event.raw is None else len(event.raw)
                content = self._whole_content(event)
                self._dropped(content if isinstance(content, Reply) else None)
                return
            stream = ContentStream(self._content_filter(None), bdat=False)
        self._stream_event(stream, event)
        if stream.done:
            self._message_size = stream.size
            self._dropped(stream.reply)
        else:
            self._expect = functools.partial(self._drop_data, stream=stream)

    def _dropped(self, refusal: Reply | None) -> None:
        if refusal is not None:
            self._refuse_message(refusal)
        else:
            self.reply(R.OK)
            self._reset_transaction()

    def _bdat(self, arg: str | None) -> Steps | None:
        match = _BDAT_ARG.fullmatch(arg or "")
        if match is None:
            # Without a size the chunk cannot be skipped: its bytes would be read as commands.
            self.reply(R.BDAT_BAD_SIZE)
            self.close()
            return None
        size = int(match.group(1))
        last = match.group(2) is not None
        verb = Verb.BDAT_LAST if last else Verb.BDAT
        refusal: Reply | None = None
        state = self.state
        limits = self.config.limits
        if not allowed(state, verb):
            refusal = sequence_error(state, verb)
        elif limits.max_data_size is not None and self._bdat_size + size > limits.max_data_size:
            refusal = R.DATA_TOO_LARGE
        if last and (refusal is None or refusal is R.DATA_TOO_LARGE):
            self._message_open = True  # its reply is the message's
            self._message_size = self._bdat_size + size
        # The chunk is read in full even when it is refused (RFC 3030 section 2).
        self.hard_deadline = self._clock() + limits.data_timeout
        stream = self._stream
        if stream is not None:  # the next chunk of a message being streamed
            self._receiver.start_bdat(size, discard=refusal is not None, stream=True)
            stream.chunk = (size, last, refusal)
            return None
        config = self.config
        if refusal is None and (config.streaming or config.discarding):
            self._receiver.start_bdat(size, stream=True)
            return self._deliver_stream((size, last), hook=config.streaming)
        self._receiver.start_bdat(size, discard=refusal is not None)
        self._expect = functools.partial(self._bdat_done, size, verb, refusal)
        return None

    def _bdat_done(
        self, size: int, verb: Verb, refusal: Reply | None, event: Event
    ) -> Steps | None:
        self.hard_deadline = None
        assert isinstance(event, ChunkDone)
        if refusal is not None or event.data is None:
            if refusal is None or refusal is R.DATA_TOO_LARGE:
                if verb is Verb.BDAT_LAST:
                    self._refuse_message(R.DATA_TOO_LARGE)
                else:
                    self._message_open = True  # this reply ends the message
                    self.reply(R.DATA_TOO_LARGE)
                    self._reset_transaction()
            else:
                self.reply(refusal)
            return None
        chunks = self._bdat_chunks
        if chunks is None:
            chunks = self._bdat_chunks = []
        chunks.append(event.data)
        self._bdat_size += size
        if verb is Verb.BDAT:
            self.reply(R.chunk_received(size))
            self._accepted(verb)
            return None
        raw = b"".join(chunks)
        binary = self.envelope.body == "BINARYMIME"
        limits = self.config.limits
        content = process_content(
            raw,
            policy="accept" if binary else limits.bare_newline,
            line_length_limit=None if binary else limits.line_length_limit,
            unstuff=False,
        )
        return self._finish(content)

    def _finish(self, content: bytes | Reply) -> Steps | None:
        """Deliver a complete message, then end its transaction whatever the outcome; the
        steps of the delivery when user code takes the message."""
        if isinstance(content, Reply):
            self._refuse_message(content)
            return None
        envelope = self.envelope
        envelope.original_content = content
        self._message_size = len(content)
        if self.config.decode_data:
            try:
                envelope.content = content.decode(self._encoding)
            except UnicodeDecodeError:
                self._refuse_message(R.DECODE_ERROR)
                return None
        else:
            envelope.content = content
        config = self.config
        if config.lmtp or "handle_DATA" in config.hooks or "process_message" in config.hooks:
            return self._deliver()
        self.reply(R.OK)
        self._reset_transaction()
        return None

    def _deliver(self) -> Steps:
        try:
            if self.config.lmtp:
                yield from self._deliver_lmtp()
            elif "handle_DATA" in self.config.hooks:
                yield from self._hook("handle_DATA")
            else:
                result = yield CallLegacy("process_message")
                if result is None:
                    self.reply(R.OK)
                else:
                    self.send_status(result, "process_message")
        finally:
            self._reset_transaction()

    def _refuse_message(self, reply: Reply) -> None:
        """Refuse a complete message: once, or under LMTP once per recipient."""
        count = len(self.envelope.rcpt_tos) if self.config.lmtp else 1
        for _ in range(count):
            self.reply(reply)
        self._reset_transaction()

    def _deliver_lmtp(self) -> Steps:
        """RFC 2033 section 4.2: one final reply per accepted recipient, in RCPT order."""
        if "handle_DATA" not in self.config.hooks:
            yield from self._recipient_replies()
            return
        try:
            status = yield CallHook("handle_DATA", ())
        except Exception as error:
            yield from self._failed_delivery(error)
            return
        yield from self._lmtp_replies(status, "handle_DATA")

    def _lmtp_replies(self, status: object, hook: str) -> Steps:
        """The LMTP replies after ``hook`` returned ``status``: a list holds one reply per
        recipient; one reply is for every recipient, or, if positive, ``handle_DATA_recipient``
        gives each its own."""
        count = len(self.envelope.rcpt_tos)
        try:
            if isinstance(status, list):
                if len(status) != count:
                    raise _InvalidHookReply(
                        f"{hook} returned {len(status)} replies for {count} recipients"
                    )
                replies = [check_reply(line, hook) for line in status]
            else:
                common = check_reply(status, hook)
                if common[0] == "2" and "handle_DATA_recipient" in self.config.hooks:
                    yield from self._recipient_replies()
                    return
                replies = [common] * count
        except Exception as error:
            yield from self._failed_delivery(error)
            return
        for line in replies:
            self.send_status(line, hook)

    def _recipient_replies(self) -> Steps:
        per_recipient = "handle_DATA_recipient" in self.config.hooks
        for recipient in list(self.envelope.rcpt_tos):
            if not per_recipient:
                self.reply(R.recipient_delivered(recipient))
                continue
            try:
                yield from self._hook("handle_DATA_recipient", recipient)
            except Exception as error:
                # This recipient's reply comes from the error path; later ones get theirs.
                yield from self._on_error(error)

    def _failed_delivery(self, error: Exception) -> Steps:
        """The replies when delivery raised ``error``: one, or under LMTP one per recipient."""
        for _ in range(len(self.envelope.rcpt_tos) if self.config.lmtp else 1):
            yield from self._on_error(error)

    # Streaming (the handle_DATA_stream hook)

    def stream_next(self) -> bytes | _NeedData | _End | Steps:
        """The next piece of the message being streamed, for the reader given to the
        ``handle_DATA_stream`` hook: bytes (dot-unstuffed, checked as buffered content is),
        :data:`NEED_DATA` (wait for input, then ask again), :data:`END` after the last piece,
        or the steps of a command sent between BDAT chunks, to drive first.

        Raises the stream's :class:`~typed_smtpd.proto.stream.StreamError` (again on every
        call) once the message cannot be delivered.
        """
        stream = self._stream
        if stream is None:
            raise EngineError("stream_next() while no message is being streamed")
        while True:
            self._check_abandoned(stream)
            if stream.error is not None:
                raise stream.error
            if stream.done:
                return END
            event = self._receiver.next_event()
            if event is NEED_DATA:
                if not self._eof:
                    return NEED_DATA
                stream.abandon("the client left before the end of the message")
                self.close()
                continue
            self._partial_since = None
            item = self._stream_event(stream, event)
            if item is not None:
                return item

    def _check_abandoned(self, stream: ContentStream) -> None:
        """Between BDAT chunks the client may end the transaction (RSET, a greeting, QUIT)."""
        between_chunks = stream.bdat and stream.chunk is None
        if not stream.done and (
            self.closed or (between_chunks and self.state is not State.IN_BDAT)
        ):
            stream.abandon("the transaction ended before the end of the message")

    def _deliver_stream(self, chunk: tuple[int, bool] | None, *, hook: bool = True) -> Steps:
        """Run ``handle_DATA_stream`` while the content arrives; read and drop what it leaves,
        then send its reply, or the refusal of the content. Without ``hook`` all of it is
        checked and dropped as it arrives, and a message that passes is answered ``250``."""
        stream = self._stream = ContentStream(self._content_filter(chunk), bdat=chunk is not None)
        if chunk is not None:
            stream.chunk = (*chunk, None)
        result: object = None
        failure: Exception | None = None
        try:
            try:
                if hook:
                    result = yield StreamMessage(stream)
            except StreamError as error:
                if error is not stream.error:  # not the reader's own: a hook error like any
                    failure = error
            except Exception as error:
                failure = error
            while not stream.done:
                event = yield _WAIT
                if event is None:  # driven by the adapter, whose client left
                    stream.abandon("the client left before the end of the message")
                    self.close()
                    break
                item = self._stream_event(stream, event)
                if isinstance(item, Generator):
                    yield from item
                self._check_abandoned(stream)
        finally:
            self._stream = None
        self._message_size = stream.size
        if stream.answered:
            self._message_open = False  # abandoned, or answered already
            return
        try:
            if stream.reply is not None:
                self._refuse_message(stream.reply)
            elif failure is not None:
                yield from self._failed_delivery(failure)
            elif not hook:
                self.reply(R.OK)
            elif self.config.lmtp:
                yield from self._lmtp_replies(result, "handle_DATA_stream")
            else:
                self.send_status(result, "handle_DATA_stream")
        finally:
            self._reset_transaction()

    def _content_filter(self, chunk: tuple[int, bool] | None) -> ContentFilter:
        """The checks of DATA content (``chunk`` is ``None``) or of BDAT content."""
        limits = self.config.limits
        binary = chunk is not None and self.envelope.body == "BINARYMIME"
        return ContentFilter(
            policy="accept" if binary else limits.bare_newline,
            line_length_limit=None if binary else limits.line_length_limit,
            unstuff=chunk is None,
        )

    def _stream_event(self, stream: ContentStream, event: Event) -> bytes | Steps | None:
        """Take one input event into ``stream``: the bytes for the handler, the steps of a
        command between BDAT chunks, or ``None``."""
        kind = type(event)
        if kind is DataChunk:
            assert isinstance(event, DataChunk)
            if event.data is None:
                stream.fail(_too_large())
                return None
            return stream.take(stream.filter.feed(event.data, stuffed=event.stuffed)) or None
        if kind is DataDone:
            assert isinstance(event, DataDone)
            self.hard_deadline = None
            stream.done = True
            if event.raw is None:
                stream.fail(_too_large())
                return None
            return self._stream_tail(stream, event.raw)
        if kind is ChunkDone:
            assert isinstance(event, ChunkDone)
            return self._stream_chunk(stream, event)
        try:  # a command between BDAT chunks
            return self._on_event(event)
        except Exception as error:
            return self._on_error(error)

    def _stream_chunk(self, stream: ContentStream, event: ChunkDone) -> bytes | None:
        self.hard_deadline = None
        assert stream.chunk is not None
        size, last, refusal = stream.chunk
        stream.chunk = None
        if refusal is not None or event.data is None:
            if refusal is not None and refusal is not R.DATA_TOO_LARGE:
                self.reply(refusal)
                return None
            stream.fail(_too_large())
            stream.done = True
            if not last:  # the reply to this chunk ends the transaction
                self._message_open = True
                self._message_size = stream.size
                self.reply(R.DATA_TOO_LARGE)
                self._reset_transaction()
                stream.answered = True
            return None
        self._bdat_size += size
        if last:
            stream.done = True
            return self._stream_tail(stream, event.data)
        self.reply(R.chunk_received(size))
        self._accepted(Verb.BDAT)
        return stream.take(stream.filter.feed(event.data)) or None

    @staticmethod
    def _stream_tail(stream: ContentStream, raw: bytes) -> bytes | None:
        content_filter = stream.filter
        piece = stream.take(content_filter.feed(raw)) if raw else None
        tail = stream.take(content_filter.finish())
        return (piece + tail if piece and tail else piece or tail) or None

    # STARTTLS

    def _starttls(self, arg: str | None) -> Steps | None:
        if arg:
            self.reply(R.syntax("STARTTLS"))
            return None
        if self.tls_active:
            self.reply(R.TLS_ALREADY_ACTIVE)
            return None
        if not self.config.tls_available:
            self.reply(R.TLS_NOT_AVAILABLE)
            return None
        if not self._sequence_ok(Verb.STARTTLS):
            return None
        self.reply(R.READY_FOR_TLS)
        # RFC 3207 section 4.2: whatever the client pipelined after STARTTLS was sent in the
        # clear and must not be acted on.
        self._receiver.clear()
        return self._starttls_phase()

    def _starttls_phase(self) -> Steps:
        session = yield StartTLS()
        # Nothing learnt before TLS survives it (RFC 3207 section 4.2).
        self.session = session
        self.tls_active = True
        self._reset_transaction()
        self._accepted(Verb.STARTTLS)
        if "handle_STARTTLS" in self.config.hooks:
            verdict = yield CallHook("handle_STARTTLS", ())
            if not verdict:
                self._tls_refused = True

    # AUTH

    def _auth(self, arg: str | None) -> Steps | None:
        session = self.session
        config = self.config
        refusal: Reply | None = None
        if self.state is State.GREETED:
            refusal = R.EHLO_FIRST
        elif config.auth_require_tls and not self.tls_active:
            refusal = R.AUTH_ENCRYPTION_REQUIRED
        elif session.authenticated:
            refusal = R.AUTH_ALREADY
        elif self.state is not State.READY:
            refusal = R.AUTH_IN_TRANSACTION
        elif not arg:
            refusal = R.AUTH_NOT_ENOUGH_VALUE
        if refusal is not None or arg is None:
            self.reply(refusal or R.AUTH_NOT_ENOUGH_VALUE)
            return None
        args = arg.split()
        if len(args) > 2:
            self.reply(R.AUTH_TOO_MANY_VALUES)
            return None
        refusal = self.monitor.auth_allowed()
        if refusal is not None:  # this client's address failed too often, on any connection
            self.refuse(refusal)
            return None
        if "handle_AUTH" in self.config.hooks:
            return self._auth_hooked(args)
        # aiosmtpd compared the name as sent (its names are upper case).
        mechanism = args[0] if self._aiosmtpd else args[0].upper()
        if mechanism not in config.mechanisms:
            self.reply(R.AUTH_NO_MECHANISM)
            return None
        args[0] = mechanism
        return self._auth_exchange(mechanism, args)

    def _auth_hooked(self, args: list[str]) -> Steps:
        status = yield CallHook("handle_AUTH", (args,))
        if status is not None:
            self.send_status(status, "handle_AUTH")

    def _auth_exchange(self, mechanism: str, args: list[str]) -> Steps:
        before = self.final_replies
        self._auth_mechanism, self._auth_user = mechanism, None
        if mechanism in self.config.engine_mechanisms:
            outcome = yield from _MECHANISMS[mechanism](self, args)
        else:
            outcome = yield RunMechanism(mechanism, tuple(args))
        self.settle_auth(outcome, answered_before=before)

    @staticmethod
    def _auth_result(outcome: object) -> AuthResult | None:
        """What a mechanism's outcome means; ``None`` for a legacy login identity."""
        if isinstance(outcome, AuthResult):
            return outcome
        if outcome is None:  # legacy: the hook handled a failure itself
            return AuthResult(success=False, handled=True)
        if outcome is MISSING or outcome is False:
            return AuthResult(success=False, handled=False)
        return None

    def _challenge(self, challenge: bytes) -> Generator[Step, Any, bytes | _Missing]:
        self.start_challenge(challenge)
        event = yield _WAIT
        return self.challenge_answer(event)

    def _initial(self, args: list[str]) -> bytes | None:
        decoded = decode_response(args[1])
        if decoded is None:
            self.reply(R.AUTH_BAD_BASE64)
        return decoded

    def _authenticate(self, mechanism: str, data: object) -> Generator[Step, Any, object]:
        login = getattr(data, "login", None)
        if isinstance(login, bytes):
            self._auth_user = login.decode("utf-8", "backslashreplace")
        result = yield Authenticate(mechanism, data)
        return result

    def auth_plain(self, args: list[str]) -> Generator[Step, Any, object]:
        """The PLAIN mechanism (RFC 4616) as steps; the authorization identity is ignored."""
        response: bytes | _Missing | None
        if len(args) == 1:
            response = yield from self._challenge(b"")
        else:
            response = self._initial(args)
        if response is MISSING or response is None:
            return AuthResult(success=False, handled=True)
        credentials = split_plain(response)
        if credentials is None:
            self.reply(R.AUTH_CANT_SPLIT)
            return AuthResult(success=False, handled=True)
        return (yield from self._authenticate("PLAIN", credentials))

    def auth_login(self, args: list[str]) -> Generator[Step, Any, object]:
        """The LOGIN mechanism (draft-murchison-sasl-login) as steps."""
        user_prompt, password_prompt = self.config.login_challenges
        login: bytes | _Missing | None
        if len(args) == 1:
            login = yield from self._challenge(user_prompt.encode("utf-8"))
        else:
            login = self._initial(args)
        if login is MISSING or login is None:
            return AuthResult(success=False, handled=True)
        password = yield from self._challenge(password_prompt.encode("utf-8"))
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        return (yield from self._authenticate("LOGIN", LoginPassword(login, password)))

    def auth_cram_md5(self, args: list[str]) -> Generator[Step, Any, object]:
        """The CRAM-MD5 mechanism (RFC 2195) as steps."""
        if len(args) > 1:
            self.reply(R.AUTH_TOO_MANY_VALUES)
            return AuthResult(success=False, handled=True)
        hostname = self.config.hostname
        challenge = f"<{secrets.token_hex(8)}.{int(time.time())}@{hostname}>".encode()
        response = yield from self._challenge(challenge)
        if response is MISSING:
            return AuthResult(success=False, handled=True)
        answer = split_cram_md5(response, challenge)
        if answer is None:
            self.reply(R.AUTH_CANT_SPLIT)
            return AuthResult(success=False, handled=True)
        return (yield from self._authenticate("CRAM-MD5", answer))

    # PROXY protocol

    def _proxy_phase(self) -> Steps:
        config = self.config
        assert config.proxy_timeout is not None
        if config.proxy_trusted:
            host = self._peer_host
            if host is None or not is_trusted_peer(host, config.proxy_trusted):
                log.warning("%r PROXY header refused: peer is not a trusted proxy", self.peer)
                self.close()
                return
        self.hard_deadline = self._clock() + config.proxy_timeout
        while (result := parse_proxy_header(self._receiver.peek())) is None:
            yield _WAIT_BYTES
        self.hard_deadline = None
        if not result:
            log.warning("%r invalid PROXY header: %s", self.peer, result.error)
            self.close()
            return
        self._receiver.consume(len(result.whole_raw))
        self.session.proxy_data = result
        if result.src_addr is not None and not isinstance(result.src_addr, bytes):
            # Log lines name the client the proxy speaks for, not the proxy.
            self.peer = (str(result.src_addr), result.src_port)
        if "handle_PROXY" in self.config.hooks:
            verdict = yield CallHook("handle_PROXY", (result,))
            if not verdict:
                log.info("%r connection refused by handle_PROXY", self.peer)
                self.close()
                return
        self._greet()


_AUTH_LINE: Final = re.compile(r"(\s*AUTH\s+\S+)\s+\S+", re.IGNORECASE)
_AUTH_LINE_BYTES: Final = re.compile(rb"(\s*AUTH\s+\S+)\s+\S+", re.IGNORECASE)


#: The first digit of a refusal, on the wire.
_REFUSALS: Final = (b"4", b"5")
#: The refusals that mean a limit of the server was hit, by the name of the limit.
_LIMITS: Final[dict[Reply, str]] = {
    R.TOO_MANY_RECIPIENTS: "recipients",
    R.TOO_MANY_UNRECOGNIZED: "bad-commands",
    R.AUTH_TOO_MANY_FAILURES: "auth-failures",
    R.DATA_TOO_LARGE: "size",
    R.MAIL_SIZE_TOO_LARGE: "size",
    R.COMMAND_TOO_LONG: "line-length",
    R.DATA_LINE_TOO_LONG: "line-length",
    R.AUTH_LINE_TOO_LONG: "line-length",
    R.TOO_MANY_CONNECTIONS: "connections",
    TOO_MANY_FROM_CLIENT: "client-connections",
    TOO_MANY_AUTH_FAILURES_FROM_CLIENT: "client-auth-failures",
}


def _limit_of(reply: Reply) -> str | None:
    if reply.code < 400:  # every limit refuses: an accepted message's reply is not hashed
        return None
    limit = _LIMITS.get(reply)
    if limit is None and reply.code == 421 and reply.text.endswith(" sent too many times"):
        return "calls"  # R.call_limit_exceeded()
    return limit


def _too_large() -> MessageTooLarge:
    return MessageTooLarge("the message is larger than the server accepts", R.DATA_TOO_LARGE)


@overload
def sanitize(text: str) -> str: ...
@overload
def sanitize(text: bytes) -> bytes: ...
def sanitize(text: str | bytes) -> str | bytes:
    """Mask the argument of an ``AUTH`` command line so credentials never reach a log."""
    if isinstance(text, bytes):
        match = _AUTH_LINE_BYTES.match(text)
        return match.group(1) + b" ********" if match else text
    found = _AUTH_LINE.match(text)
    return found.group(1) + " ********" if found else text


_Builtin = Callable[[ServerEngine[Any, Any], "str | None"], "Steps | None"]

#: The built-in commands, by verb: one definition each.
_BUILTIN: Final[dict[str, _Builtin]] = {
    "HELO": ServerEngine._helo,
    "EHLO": ServerEngine._ehlo,
    "NOOP": ServerEngine._noop,
    "QUIT": ServerEngine._quit,
    "RSET": ServerEngine._rset,
    "VRFY": ServerEngine._vrfy,
    "EXPN": ServerEngine._expn,
    "HELP": ServerEngine._help,
    "MAIL": ServerEngine._mail,
    "RCPT": ServerEngine._rcpt,
    "DATA": ServerEngine._data,
    "BDAT": ServerEngine._bdat,
    "STARTTLS": ServerEngine._starttls,
    "AUTH": ServerEngine._auth,
}
#: What LMTP does differently (RFC 2033 section 4.1): LHLO, and no HELO or EHLO.
_LMTP_CHANGES: Final[dict[str, _Builtin]] = {
    "LHLO": ServerEngine._lhlo,
    "HELO": lambda engine, arg: engine.reply(R.unrecognized("HELO")),
    "EHLO": lambda engine, arg: engine.reply(R.unrecognized("EHLO")),
}
#: The SASL mechanisms the engine runs itself.
_MECHANISMS: Final[
    dict[str, Callable[[ServerEngine[Any, Any], list[str]], Generator[Step, Any, object]]]
] = {
    "PLAIN": ServerEngine.auth_plain,
    "LOGIN": ServerEngine.auth_login,
    "CRAM-MD5": ServerEngine.auth_cram_md5,
}
#: The verbs that have a member in the state table.
_VERBS: Final = {verb.value: verb for verb in Verb if verb is not Verb.BDAT_LAST}
#: What may be sent between BDAT chunks (from the table; BDAT stands for BDAT LAST too).
_BDAT_ALLOWED: Final = frozenset(
    verb.value for (state, verb) in TRANSITIONS if state is State.IN_BDAT
) | {"BDAT"}
_BUILTIN_SMTP: Final = _BUILTIN
_BUILTIN_LMTP: Final = {**_BUILTIN, **_LMTP_CHANGES}


class _Unknown(Enum):
    """A verb the server does not know."""

    UNKNOWN = auto()


_UNKNOWN: Final = _Unknown.UNKNOWN
