"""The SMTP server: one :class:`SMTP` instance per client connection.

:class:`SMTP` is an :class:`asyncio.Protocol`. Bytes from the transport go into the sans-IO
:class:`~typed_smtpd.proto.framing.Receiver`; one task per connection takes framed events out and
runs the ``smtp_<VERB>`` command methods, which call the handler's hooks through a
:class:`~typed_smtpd.hooks.HookRegistry` and answer with values from the reply catalogue. Replies
are batched and written when the server next waits for input, so pipelined commands cost one
write.

The class keeps aiosmtpd's constructor, attributes and subclassing model: add a command by
defining ``async def smtp_PING(self, arg)`` in a subclass; it is collected once, when the
subclass is created, and listed by HELP.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import functools
import inspect
import logging
import re
import secrets
import socket
import ssl
import sys
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar, cast

from typed_smtpd import __version__
from typed_smtpd.hooks import AuthHook, HookRegistry, auth_mechanism, mechanism_name
from typed_smtpd.proto import replies as R
from typed_smtpd.proto.commands import (
    ParamError,
    PathError,
    parse_command,
    parse_params,
    parse_path,
    split_path_and_params,
)
from typed_smtpd.proto.data import process_content
from typed_smtpd.proto.framing import NEED_DATA, BadLine, ChunkDone, DataDone, Event, Line, Receiver
from typed_smtpd.proto.limits import (
    BOGUS_LIMIT,
    DATA_SIZE_DEFAULT,
    DATA_TIMEOUT,
    MAX_AUTH_FAILURES,
    MAX_RECIPIENTS,
    BareNewlinePolicy,
    Limits,
)
from typed_smtpd.proto.params import MailParams, MailPolicy, mail_params, rcpt_params
from typed_smtpd.proto.proxy import is_trusted_peer, parse_proxy_header, parse_trusted_networks
from typed_smtpd.proto.replies import Reply
from typed_smtpd.proto.state import (
    State,
    Verb,
    allowed,
    allowed_verbs,
    sequence_error,
    state_of,
)
from typed_smtpd.session import (
    MISSING,
    AuthResult,
    CramMD5Response,
    Envelope,
    LoginPassword,
    PeerType,
    RecipientDSN,
    Session,
    _Missing,
)

if TYPE_CHECKING:
    pass

__all__ = [
    "ALLOWED_BEFORE_STARTTLS",
    "BOGUS_LIMIT",
    "CALL_LIMIT_DEFAULT",
    "DATA_SIZE_DEFAULT",
    "MISSING",
    "SMTP",
    "AuthCallbackType",
    "AuthResult",
    "AuthenticatorType",
    "ConnectionTracker",
    "Envelope",
    "LoginPassword",
    "PeerType",
    "Session",
    "TLSSetupException",
    "auth_mechanism",
    "sanitize",
    "syntax",
]

log: logging.Logger = logging.getLogger("mail.log")

__ident__: Final = f"ESMTP typed_smtpd {__version__}"
#: The default of each per-command limit when ``command_call_limit`` is a dict without ``"*"``.
CALL_LIMIT_DEFAULT: Final = 20
#: Before STARTTLS under ``require_starttls``, only these commands are accepted (RFC 3207).
ALLOWED_BEFORE_STARTTLS: Final = frozenset({"NOOP", "EHLO", "LHLO", "STARTTLS", "QUIT", "HELP"})
#: Commands that need a successful AUTH first when ``auth_required`` is set.
_AUTH_GATED: Final = frozenset({"HELP", "VRFY", "MAIL", "RCPT", "DATA", "BDAT"})
#: A receive buffer larger than this while a command runs pauses reading from the client.
_HIGH_WATER: Final = 1 << 20
#: Outgoing replies are written at once past this size, even while input is pending.
_OUT_FLUSH: Final = 1 << 16
_TLS_HANDSHAKE_TIMEOUT: Final = 30.0
_REPLY_LINE: Final = re.compile(r"[2-5][0-9]{2}(?:[ -][^\r\n\x00]*)?")
_ALLOWED_IN_BDAT: Final = frozenset(
    verb.value for verb in allowed_verbs(State.IN_BDAT) if verb is not Verb.BDAT_LAST
) | {"BDAT"}
#: The limits of a server's connections: immutable, so one record serves all of them.
_shared_limits: Final = functools.lru_cache(maxsize=64)(Limits)
_NO_COUNTS: Final[collections.Counter[str]] = collections.Counter()
_NOTHING_EXCLUDED: Final[frozenset[str]] = frozenset()
#: The greeting of a server (a Reply is immutable; building one validates and renders it).
_greeting: Final = functools.lru_cache(maxsize=16)(R.greeting)
#: The DSN record of a recipient without NOTIFY or ORCPT (immutable, so shared).
_NO_DSN: Final = RecipientDSN()
_BDAT_ARG: Final = re.compile(r"(\d{1,12})(?: +(LAST))?", re.IGNORECASE)

#: The deprecated ``auth_callback(mechanism, login, password) -> bool``.
AuthCallbackType = Callable[[str, bytes, bytes], bool]
#: ``authenticator(server, session, envelope, mechanism, auth_data)``, sync or async.
AuthenticatorType = Callable[
    ["SMTP", Session, Envelope, str, Any], "AuthResult | Awaitable[AuthResult]"
]
#: An ``smtp_<VERB>`` command method, unbound: ``await method(server, arg)``.
CommandMethod = Callable[["SMTP", "str | None"], Awaitable[None]]
#: The synchronous form of a built-in command: it answers at once and returns ``None``, or
#: returns what is left to await (a handler hook) when the command cannot finish without it.
_FastCommand = Callable[["SMTP", "str | None"], "_Later | None"]
#: What a command leaves to do when a hook must be awaited: nothing of it (not even the hook's
#: coroutine) exists until the connection's task calls it, so a connection that ends before the
#: task runs leaves no coroutine behind un-awaited.
_Later = Callable[[], Awaitable[object]]
#: The commands that have a synchronous form, used while a class keeps their ``smtp_<VERB>``.
_FAST_VERBS: Final = ("HELO", "EHLO", "NOOP", "QUIT", "RSET", "MAIL", "RCPT", "DATA")
_C = TypeVar("_C", bound=Callable[..., Any])


class TLSSetupException(Exception):
    """The TLS handshake after STARTTLS failed; the connection is closed."""


class _InvalidHookReply(Exception):
    """A hook returned something that is not a reply line; logged, answered 451."""


def sanitize(text: str | bytes) -> str | bytes:
    """Mask the argument of an ``AUTH`` command line so credentials never reach a log."""
    if isinstance(text, bytes):
        match = re.match(rb"(\s*AUTH\s+\S+)\s+\S+", text, re.IGNORECASE)
        return match.group(1) + b" ********" if match else text
    found = re.match(r"(\s*AUTH\s+\S+)\s+\S+", text, re.IGNORECASE)
    return found.group(1) + " ********" if found else text


def syntax(text: str, extended: str | None = None, when: str | None = None) -> Callable[[_C], _C]:
    """Give a command method its HELP text (``extended`` is appended for ESMTP clients; ``when``
    names a server attribute that must be truthy for the command to be listed)."""

    def decorator(func: _C) -> _C:
        func.__smtp_syntax__ = text  # type: ignore[attr-defined]
        func.__smtp_syntax_extended__ = extended  # type: ignore[attr-defined]
        func.__smtp_syntax_when__ = when  # type: ignore[attr-defined]
        return func

    return decorator


_READ_SIZE: Final = 1 << 18  # 256 KiB, what asyncio itself asks of one recv()
_thread_state = threading.local()


class _WriteBatch:
    """The replies of a thread's connections, written together at the end of a loop turn.

    When several connections are open, the replies produced while the event loop works through
    one turn's ready sockets are written in one burst at the start of the next turn instead of
    one by one between reads: the peers are woken together, and the engine's code stays hot in
    the CPU's caches while it reads. A lone connection is answered at once (no extra loop turn
    on its round trips).
    """

    __slots__ = ("live", "loop", "pending")

    def __init__(self) -> None:
        #: Open connections served by this thread.
        self.live = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pending: list[SMTP] = []

    def defer(self, connection: SMTP) -> None:
        loop = connection.loop
        if loop is not self.loop:
            # Another event loop in this thread: what an earlier, stopped one left is moot.
            self.loop, self.pending = loop, []
        if not self.pending:
            loop.call_soon(self.flush)
        self.pending.append(connection)

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for connection in pending:
            try:
                connection._flush()
            except Exception:  # one broken transport must not keep the others' replies
                session = connection.session
                log.exception("%r could not write its replies", session and session.peer)
                connection._abort()


def _write_batch() -> _WriteBatch:
    batch: _WriteBatch | None = getattr(_thread_state, "batch", None)
    if batch is None:
        batch = _thread_state.batch = _WriteBatch()
    return batch


def _read_buffer() -> memoryview:
    view: memoryview | None = getattr(_thread_state, "view", None)
    if view is None:
        view = _thread_state.view = memoryview(bytearray(_READ_SIZE))
    return view


@functools.lru_cache(maxsize=1)
def _fqdn() -> str:
    # Looked up once per process, never per connection (it can mean a DNS query).
    return socket.getfqdn()


@functools.lru_cache(maxsize=512)
def _render(reply: Reply, enhanced: bool) -> bytes:
    return reply.render(enhanced=enhanced)


class ConnectionTracker:
    """The open connections of one listening server, and its connection cap.

    A controller creates one and gives it to every :class:`SMTP` it builds; a connection past
    ``max_connections`` is answered ``421 4.7.0`` and closed.
    """

    def __init__(self, max_connections: int | None = None) -> None:
        if max_connections is not None and max_connections < 1:
            raise ValueError("max_connections must be at least 1 (or None for no cap)")
        self.max_connections: int | None = max_connections
        self._connections: set[SMTP] = set()
        self._empty: asyncio.Event | None = None

    @property
    def count(self) -> int:
        """How many connections are open."""
        return len(self._connections)

    def _register(self, connection: SMTP) -> bool:
        if self.max_connections is not None and len(self._connections) >= self.max_connections:
            return False
        self._connections.add(connection)
        return True

    def _unregister(self, connection: SMTP) -> None:
        self._connections.discard(connection)
        if not self._connections and self._empty is not None:
            self._empty.set()

    async def shutdown(self, grace_period: float) -> None:
        """Close every connection: idle ones at once with 421, busy ones when their current
        command or message is done, and whatever is left after ``grace_period`` seconds by force.
        """
        for connection in list(self._connections):
            connection._request_shutdown()
        if self._connections:
            self._empty = asyncio.Event()
            try:
                await asyncio.wait_for(self._empty.wait(), timeout=max(grace_period, 0.0))
            except asyncio.TimeoutError:
                pass
        for connection in list(self._connections):
            connection._abort()
        self._connections.clear()


class SMTP(asyncio.BufferedProtocol):
    """The SMTP protocol for one connection: give ``lambda: SMTP(handler)`` to ``create_server``.

    Every keyword argument of aiosmtpd's ``SMTP`` is accepted with its meaning and default; the
    new ones set limits and policies that aiosmtpd did not have (see :class:`Limits`).
    """

    # The per-connection state lives in slots: an idle connection then holds no instance
    # dictionary (subclasses and hooks may still add attributes, which go to __dict__).
    __slots__ = (
        "__dict__",
        "__weakref__",
        "_auth_callback",
        "_auth_exclude",
        "_auth_failures",
        "_auth_require_tls",
        "_auth_required",
        "_authenticator",
        "_batch",
        "_bdat_chunks",
        "_bdat_size",
        "_bogus",
        "_busy",
        "_busy_since",
        "_call_counts",
        "_call_limits",
        "_clock",
        "_closed",
        "_cram_md5",
        "_data_pending",
        "_deadline",
        "_decode_data",
        "_drain_waiter",
        "_enhanced",
        "_eof",
        "_final_replies",
        "_greeted",
        "_hooks",
        "_ident",
        "_last_activity",
        "_loop_given",
        "_mechanisms",
        "_out",
        "_out_size",
        "_partial_since",
        "_policy",
        "_proxy_timeout",
        "_proxy_trusted",
        "_read_view",
        "_reading_paused",
        "_receiver",
        "_shutdown_requested",
        "_task",
        "_timer",
        "_tls_active",
        "_tls_refused",
        "_waiter",
        "_write_paused",
        "connection_tracker",
        "data_size_limit",
        "enable_SMTPUTF8",
        "envelope",
        "event_handler",
        "hostname",
        "limits",
        "require_starttls",
        "session",
        "tls_context",
        "transport",
    )

    #: aiosmtpd-compatible class-level knobs, read once per connection into :attr:`limits`.
    command_size_limit: ClassVar[int] = 512
    line_length_limit: ClassVar[int] = 1001
    local_part_limit: ClassVar[int] = 0
    AuthLoginUsernameChallenge: ClassVar[str] = "User Name\x00"
    AuthLoginPasswordChallenge: ClassVar[str] = "Password\x00"

    _commands: ClassVar[dict[str, CommandMethod]] = {}
    _fast: ClassVar[dict[str, _FastCommand]] = {}
    _plain_delivery: ClassVar[bool] = True
    _server_mechanisms: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._collect_commands()

    @classmethod
    def _collect_commands(cls) -> None:
        commands: dict[str, CommandMethod] = {}
        mechanisms: dict[str, str] = {}
        for name in dir(cls):
            if name.startswith("smtp_"):
                method = getattr(cls, name)
                if method is None:  # a subclass removing a command
                    continue
                if not inspect.iscoroutinefunction(method):
                    raise TypeError(
                        f"{cls.__qualname__}.{name} must be a coroutine function: "
                        f"async def {name}(self, arg)"
                    )
                commands[name[5:].upper()] = method
            elif name.startswith("auth_"):
                mechanism = mechanism_name(name, getattr(cls, name))
                if mechanism is not None:
                    mechanisms[mechanism] = name
        cls._commands = commands
        cls._server_mechanisms = mechanisms
        # A command a subclass overrides always runs its own coroutine; the others are
        # answered synchronously when no hook is involved (no task, no extra loop turn).
        cls._fast = {
            verb: getattr(SMTP, f"_{verb.lower()}")
            for verb in _FAST_VERBS
            if commands.get(verb) is getattr(SMTP, f"smtp_{verb}")
        }
        cls._plain_delivery = cls._deliver is SMTP._deliver

    def __init__(
        self,
        handler: object,
        *,
        data_size_limit: int | None = DATA_SIZE_DEFAULT,
        enable_SMTPUTF8: bool = False,
        decode_data: bool = False,
        hostname: str | None = None,
        ident: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        timeout: float = 300,
        auth_required: bool = False,
        auth_require_tls: bool = True,
        auth_exclude_mechanism: Iterable[str] | None = None,
        auth_callback: AuthCallbackType | None = None,
        command_call_limit: int | dict[str, int] | None = None,
        authenticator: AuthenticatorType | None = None,
        proxy_protocol_timeout: float | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        bare_newline: BareNewlinePolicy = "reject",
        max_recipients: int | None = MAX_RECIPIENTS,
        bogus_limit: int = BOGUS_LIMIT,
        data_timeout: float = DATA_TIMEOUT,
        max_auth_failures: int = MAX_AUTH_FAILURES,
        proxy_trusted_networks: Iterable[str] | None = None,
        enhanced_status_codes: bool = True,
        enable_CRAM_MD5: bool = False,
        connection_tracker: ConnectionTracker | None = None,
    ) -> None:
        self.event_handler: object = handler
        self._hooks = HookRegistry(handler)
        self.data_size_limit: int | None = data_size_limit
        self.enable_SMTPUTF8: bool = enable_SMTPUTF8
        self._decode_data = decode_data
        self.hostname: str = _fqdn() if hostname is None else hostname
        self._ident = __ident__ if ident is None else ident
        if "\r" in self.hostname + self._ident or "\n" in self.hostname + self._ident:
            raise ValueError("hostname and ident must not contain CR or LF")
        self.tls_context: ssl.SSLContext | None = tls_context
        if tls_context is not None:
            if tls_context.verify_mode == ssl.CERT_REQUIRED:
                log.warning(
                    "tls_context.verify_mode is CERT_REQUIRED: clients without a "
                    "certificate cannot start TLS"
                )
            if tls_context.check_hostname:
                log.warning("tls_context.check_hostname is set: it has no meaning on a server")
        self.require_starttls: bool = tls_context is not None and require_starttls
        self.limits: Limits = _shared_limits(
            data_size_limit=data_size_limit,
            command_size_limit=type(self).command_size_limit,
            line_length_limit=type(self).line_length_limit,
            max_recipients=max_recipients,
            bogus_limit=bogus_limit,
            timeout=timeout,
            data_timeout=data_timeout,
            max_auth_failures=max_auth_failures,
            local_part_limit=type(self).local_part_limit,
            bare_newline=bare_newline,
        )
        self._auth_required = auth_required
        self._auth_require_tls = auth_require_tls
        if auth_required and not auth_require_tls:
            warnings.warn(
                "auth_required=True with auth_require_tls=False lets credentials cross the "
                "network in clear text",
                UserWarning,
                stacklevel=2,
            )
        self._auth_exclude = (
            frozenset(m.upper() for m in auth_exclude_mechanism)
            if auth_exclude_mechanism
            else _NOTHING_EXCLUDED
        )
        if auth_callback is not None:
            warnings.warn(
                "auth_callback is deprecated; use authenticator", DeprecationWarning, stacklevel=2
            )
        self._auth_callback = auth_callback
        self._authenticator = authenticator
        self._cram_md5 = enable_CRAM_MD5
        self._call_limits = self._parse_call_limit(command_call_limit)
        if proxy_protocol_timeout is not None:
            if proxy_protocol_timeout <= 0:
                raise ValueError("proxy_protocol_timeout must be > 0")
            if proxy_protocol_timeout < 3.0:
                log.warning("proxy_protocol_timeout below 3 s may cut off slow proxies")
        self._proxy_timeout = proxy_protocol_timeout
        # Parsed once here: a bad network is a clear ValueError when the server is built.
        self._proxy_trusted = (
            parse_trusted_networks(proxy_trusted_networks) if proxy_trusted_networks else ()
        )
        self._enhanced = enhanced_status_codes
        self.connection_tracker: ConnectionTracker | None = connection_tracker
        self._mechanisms = self._collect_mechanisms()
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        self._loop_given = loop
        # Connection state
        self.transport: asyncio.BaseTransport | None = None
        self.session: Session | None = None
        self.envelope: Envelope | None = None
        self._receiver = Receiver(
            max_line=self.limits.max_command_line,
            policy=bare_newline,
            utf8=enable_SMTPUTF8,
        )
        self._task: asyncio.Task[None] | None = None
        self._greeted = False
        self._data_pending = False
        self._policy: MailPolicy | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._out: list[bytes] = []
        self._out_size = 0
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._eof = False
        self._closed = False
        self._shutdown_requested = False
        self._tls_active = False
        self._tls_refused = False
        self._bogus = 0
        self._auth_failures = 0
        self._final_replies = 0
        # Only counted under a call limit (an empty, never-written Counter otherwise).
        self._call_counts: collections.Counter[str] = (
            _NO_COUNTS if self._call_limits is None else collections.Counter()
        )
        self._bdat_chunks: list[bytes] | None = None
        self._bdat_size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._last_activity = 0.0
        self._clock: Callable[[], float] = time.monotonic  # the loop's clock once connected
        self._batch: _WriteBatch | None = None  # set while connected
        self._read_view = _read_buffer()
        self._deadline: float | None = None
        self._busy = False
        self._busy_since = 0.0
        self._partial_since: float | None = None

    # --- configuration helpers ------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop this connection runs on."""
        if self._loop_given is None:
            self._loop_given = asyncio.get_running_loop()
        return self._loop_given

    @loop.setter
    def loop(self, value: asyncio.AbstractEventLoop) -> None:
        self._loop_given = value

    @property
    def max_command_size_limit(self) -> int:
        """The longest command line accepted for any verb, CRLF included."""
        return self.limits.max_command_line

    @staticmethod
    def _parse_call_limit(limit: object) -> dict[str, int] | None:
        if limit is None:
            return None
        if isinstance(limit, bool):
            raise TypeError("command_call_limit must be an int or a dict of str to int")
        if isinstance(limit, int):
            return {"*": limit}
        if not isinstance(limit, dict):
            raise TypeError("command_call_limit must be an int or a dict of str to int")
        for key, value in limit.items():
            if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, int):
                raise TypeError("command_call_limit must map command names to int")
        result = {key.upper(): value for key, value in limit.items()}
        result.setdefault("*", CALL_LIMIT_DEFAULT)
        return result

    def _collect_mechanisms(self) -> dict[str, AuthHook]:
        found: dict[str, AuthHook] = {}
        for mechanism, attribute in type(self)._server_mechanisms.items():
            if mechanism == "CRAM-MD5" and not (self._cram_md5 and self._authenticator):
                # Opt-in: an authenticator written for PLAIN/LOGIN reads auth_data.password,
                # which a CRAM-MD5 exchange cannot give it.
                continue
            found[mechanism] = getattr(self, attribute).__func__
        found.update(self._hooks.auth_mechanisms)
        return {m: f for m, f in found.items() if m not in self._auth_exclude}

    def _create_session(self) -> Session:
        """Make the :class:`Session` of a new connection (override for a subclass of it)."""
        return Session(loop=self.loop)

    def _create_envelope(self) -> Envelope:
        """Make the :class:`Envelope` of a new transaction (override for a subclass of it)."""
        return Envelope()

    @property
    def _ehlo_keyword(self) -> str:
        return "EHLO"

    # --- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """A client connected: start its session (or refuse it when the server is full)."""
        self.loop = loop = asyncio.get_running_loop()
        self._clock = loop.time
        self._read_view = _read_buffer()  # the buffer of the thread that runs the loop
        self.transport = transport
        session = self.session = self._create_session()
        session.peer = transport.get_extra_info("peername")
        self.envelope = self._create_envelope()
        if transport.get_extra_info("sslcontext") is not None:
            self._tls_active = True
            session.ssl = self._tls_info(transport)
        tracker = self.connection_tracker
        if tracker is not None and not tracker._register(self):
            log.warning("%r refused: too many connections", session.peer)
            self._closed = True
            self._write_now(_render(R.TOO_MANY_CONNECTIONS, False))
            transport.close()
            return
        self._last_activity = self.loop.time()
        self._timer = self.loop.call_later(self.limits.timeout, self._on_timer)
        batch = self._batch = _write_batch()
        batch.live += 1
        if self._proxy_timeout is not None:
            self._start_pass()  # the PROXY header comes before the greeting
            return
        self._greeted = True
        self._reply(_greeting(self.hostname, self._ident))
        self._flush()

    # The event loop reads straight into a buffer shared by the connections of its thread
    # (get_buffer() and buffer_updated() are always called back to back), so a read neither
    # allocates a fresh bytes object per recv() nor holds a buffer per idle connection.

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the event loop reads the next bytes to (shared by the thread's connections)."""
        return self._read_view

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` arrived in the read buffer: hand them to :meth:`data_received`."""
        self.data_received(self._read_view[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        """Buffer what the client sent and let the command processing take it from there."""
        self._receiver.receive_data(data)
        self._last_activity = self._clock()
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        elif self._task is None:
            if not self._closed:
                self._process()
        elif (
            not self._reading_paused
            and self._receiver.buffered > _HIGH_WATER
            and self.transport is not None
        ):
            # The command task is busy (a slow hook, say): stop reading until it catches up.
            self._reading_paused = True
            self.transport.pause_reading()  # type: ignore[attr-defined]

    def eof_received(self) -> bool | None:
        """The client stopped sending: answer what is buffered, then close."""
        self._eof = True
        if self._waiter is not None:
            self._wake()
        elif self._task is None and not self._closed:
            self._process()  # answers what is buffered, then closes
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection is gone: free its slot and timer, and stop waiting for input."""
        self._closed = True
        batch, self._batch = self._batch, None
        if batch is not None:
            batch.live -= 1
        if exc is not None:
            log.info("%r connection lost: %s", self.session.peer if self.session else None, exc)
        if self.connection_tracker is not None:
            self.connection_tracker._unregister(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake()
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)
        self.transport = None

    def pause_writing(self) -> None:
        """The client is not reading its replies: stop reading its commands until it does."""
        self._write_paused = True

    def resume_writing(self) -> None:
        """The client caught up with its replies."""
        self._write_paused = False
        drain = self._drain_waiter
        if drain is not None:
            self._drain_waiter = None
            if not drain.done():
                drain.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # --- timers ---------------------------------------------------------------------------------

    def _set_busy(self, busy: bool) -> None:
        self._busy = busy
        if busy:
            self._busy_since = self.loop.time()

    def _set_deadline(self, seconds: float | None) -> None:
        """Start (or, with ``None``, end) a hard deadline; the timer fires at the earlier of it
        and the idle timeout.

        The timer only ever moves earlier here: one that fires before it is due finds out
        what is due then and re-arms itself, so most messages never touch the timer heap.
        """
        if seconds is None:
            self._deadline = None
            return
        deadline = self._deadline = self.loop.time() + seconds
        timer = self._timer
        if timer is not None:
            if timer.when() <= deadline:
                return
            timer.cancel()
        if not self._closed:
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        """One timer per connection, re-armed lazily: the idle timeout counts from the client's
        last byte, a hook gets as long to answer, and DATA/BDAT/PROXY have a hard deadline."""
        self._timer = None
        if self._closed:
            return
        now = self.loop.time()
        timeout = self.limits.timeout
        due = (self._busy_since if self._busy else self._last_activity) + timeout
        if self._partial_since is not None and not self._busy:
            due = min(due, self._partial_since + timeout)
        if self._deadline is not None:
            due = min(due, self._deadline)
        if now < due:
            self._timer = self.loop.call_later(due - now, self._on_timer)
            return
        peer = self.session.peer if self.session else None
        if self._busy and (self._deadline is None or now < self._deadline):
            log.error("%r a handler hook did not answer within %s s", peer, timeout)
        else:
            log.info("%r timed out", peer)
        self._reply(R.TIMEOUT)
        self._close()
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    # --- output ---------------------------------------------------------------------------------

    @property
    def _use_enhanced(self) -> bool:
        return self._enhanced and self.session is not None and self.session.extended_smtp

    def _reply(self, reply: Reply) -> None:
        # _queue, specialised: a Reply is one line, final unless it is a 3xx.
        session = self.session
        data = reply.render(
            enhanced=self._enhanced and session is not None and session.extended_smtp
        )
        if not 300 <= reply.code < 400:
            self._final_replies += 1
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size > _OUT_FLUSH:
            self._flush()

    def _queue(self, data: bytes) -> None:
        # Count final replies (not "334" challenges, not "250-" continuation lines), so a
        # command can tell whether anything answered it.
        end_of_previous = data.rfind(b"\r\n", 0, len(data) - 2)
        start = end_of_previous + 2 if end_of_previous >= 0 else 0
        if data[start + 3 : start + 4] != b"-" and data[start : start + 1] != b"3":
            self._final_replies += 1
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size > _OUT_FLUSH:
            self._flush()

    def _flush(self) -> None:
        if not self._out:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        self._out_size = 0
        self._write_now(data)

    def _write_now(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)  # type: ignore[attr-defined]

    async def push(self, status: bytes | str) -> None:
        """Send one reply line (CRLF is added). ``str`` is encoded as ASCII, or UTF-8 when
        SMTPUTF8 is enabled; a line holding CR or LF is refused with :class:`ValueError`."""
        if isinstance(status, str):
            status = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        if b"\r" in status or b"\n" in status:
            raise ValueError("a reply line must not contain CR or LF")
        self._queue(status + b"\r\n")
        # Written now, not batched: hooks written for aiosmtpd may close the transport next.
        self._flush()
        if self._write_paused:
            await self._drain()

    async def _drain(self) -> None:
        self._flush()
        if self._write_paused and not self._closed:
            # A client that does not read its replies is idle, not a slow hook.
            self._set_busy(False)
            self._drain_waiter = self.loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._set_busy(True)

    def _close(self) -> None:
        self._flush()
        self._closed = True
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()
        self._wake()

    def _abort(self) -> None:
        self._closed = True
        transport = self.transport
        if transport is not None:
            transport.abort()  # type: ignore[attr-defined]
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def _request_shutdown(self) -> None:
        self._shutdown_requested = True
        if self._task is None and self._state() in (State.GREETED, State.READY):
            self._reply(R.SHUTTING_DOWN)
            self._close()

    # --- input ----------------------------------------------------------------------------------

    async def _next_event(self) -> Event | None:
        """The next framed event; ``None`` once the client is gone."""
        receiver = self._receiver
        while True:
            event = receiver.next_event()
            if event is not NEED_DATA:
                self._partial_since = None
                return event
            if self._closed or self._eof:
                return None
            if not await self._ready_to_wait():
                continue
            waiter = self._waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                self._set_busy(True)

    async def _ready_to_wait(self) -> bool:
        """Send what is queued and settle flow control before waiting for the client.

        ``False`` when it had to wait for the client to read its replies first: more input may
        have arrived meanwhile, so look again.
        """
        self._flush()
        if self._write_paused:
            await self._drain()
            return False
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()  # type: ignore[attr-defined]
        self._set_busy(False)
        now = self._last_activity = self.loop.time()
        if self._partial_since is None and self._receiver.partial:
            # A line has begun: it must end within the timeout, however it trickles in.
            self._partial_since = now
        return True

    # --- the connection task --------------------------------------------------------------------

    def _process(self) -> None:
        """Answer what the client sent, right here in the event loop's callback.

        Commands that need no awaiting (no hook involved) are answered synchronously, and the
        replies to all of them leave in one write. The first command that has a hook to await
        hands over to a task (:meth:`_start_pass`), which goes on until the input runs dry.
        """
        receiver = self._receiver
        try:
            while not self._closed:
                event = receiver.next_event()
                if event is NEED_DATA:
                    if self._eof:
                        break
                    if self._out:
                        batch = self._batch
                        if batch is not None and batch.live > 1:
                            batch.defer(self)
                        else:
                            self._flush()
                    if self._write_paused:
                        self._start_pass()  # the task waits for the client to catch up
                    elif self._partial_since is None and receiver.partial:
                        # A line has begun: it must end within the timeout.
                        self._partial_since = self.loop.time()
                    return
                self._partial_since = None
                if type(event) is Line:
                    pending = self._dispatch(event)
                else:
                    pending = self._handle_event(event)
                if pending is not None:
                    self._start_pass(pending)
                    return
                if self._shutdown_requested and self._state() in (State.GREETED, State.READY):
                    self._reply(R.SHUTTING_DOWN)
                    self._close()
        except Exception:
            log.exception("%r internal error", self.session.peer if self.session else None)
            self._reply(R.INTERNAL_ERROR)
        self._close()

    def _start_pass(self, pending: _Later | None = None) -> None:
        """Go on as a task that awaits ``pending`` first and ends when the input runs dry.

        From Python 3.12 the task starts eagerly: a hook that answers at once is answered
        inside this very callback, with no extra turn of the event loop.
        """
        coro = self._run_pass(pending)
        if sys.version_info >= (3, 12):
            task = asyncio.Task(coro, loop=self.loop, eager_start=True)
        else:
            task = self.loop.create_task(coro)
        if not task.done():
            self._task = task

    async def _run_pass(self, pending: _Later | None = None) -> None:
        self._set_busy(True)
        receiver = self._receiver
        try:
            if not self._greeted:
                self._greeted = True
                if self._proxy_timeout is not None and not await self._read_proxy_header():
                    self._close()
                    return
                self._reply(_greeting(self.hostname, self._ident))
            while not self._closed:
                if pending is None:
                    event = receiver.next_event()
                    if event is NEED_DATA:
                        if self._eof:
                            break
                        if not await self._ready_to_wait():
                            continue
                        self._task = None  # idle: the next read starts the next pass
                        return
                    self._partial_since = None
                    pending = self._handle_event(event)
                if pending is not None:
                    await pending()
                    pending = None
                if self._shutdown_requested and self._state() in (State.GREETED, State.READY):
                    self._reply(R.SHUTTING_DOWN)
                    self._close()
        except asyncio.CancelledError:
            self._close()
            raise
        except Exception:
            log.exception("%r internal error", self.session.peer if self.session else None)
            self._reply(R.INTERNAL_ERROR)
        self._close()

    def _handle_event(self, event: Event) -> _Later | None:
        """Act on one event; what is left to await, if anything."""
        if isinstance(event, Line):
            return self._dispatch(event)
        if isinstance(event, BadLine):
            self._reply(event.reply)
            self._count_bogus()
            return None
        if isinstance(event, DataDone) and self._data_pending:
            # The content of a DATA begun by the synchronous command (see _data).
            self._data_pending = False
            self._set_deadline(None)
            try:
                pending = self._end_data(event)
            except Exception as error:
                return functools.partial(self._handle_error, error)
            return None if pending is None else functools.partial(self._guard, pending)
        raise AssertionError(  # pragma: no cover - only the command methods switch modes
            f"unexpected event outside DATA/BDAT: {event!r}"
        )

    async def _guard(self, pending: _Later) -> None:
        """Do what a command left to do; an error in it is answered, not raised."""
        try:
            await pending()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            await self._handle_error(error)

    def _count_bogus(self) -> None:
        self._bogus += 1
        if self._bogus >= self.limits.bogus_limit:
            self._reply(R.TOO_MANY_UNRECOGNIZED)
            self._close()

    def _dispatch(self, line: Line) -> _Later | None:
        """Run one command line; what is left to await, if anything."""
        command = parse_command(line.text)
        verb, arg = command.verb, command.arg
        session = self.session
        assert session is not None
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%r >> %s", session.peer, sanitize(line.text))
        if not verb or not verb.isascii() or not verb.isalnum():
            self._reply(R.BAD_SYNTAX)
            self._count_bogus()
            return None
        limits = self.limits
        if line.size > limits.command_size_limit and line.size > limits.command_limit(
            verb, extended=session.extended_smtp
        ):
            self._reply(R.COMMAND_TOO_LONG)
            self._count_bogus()
            return None
        if self._tls_refused and verb != "QUIT":
            return self._refuse(verb, arg, R.SECURITY_REFUSED)
        if self.require_starttls and not self._tls_active and verb not in ALLOWED_BEFORE_STARTTLS:
            return self._refuse(verb, arg, R.STARTTLS_FIRST)
        if self._call_limits is not None:
            self._call_counts[verb] += 1
            limit = self._call_limits.get(verb, self._call_limits["*"])
            if self._call_counts[verb] > limit:
                self._reply(R.call_limit_exceeded(verb))
                self._close()
                return None
        if (
            self._bdat_chunks is not None
            and verb not in _ALLOWED_IN_BDAT
            and verb in self._commands
        ):
            # Between BDAT chunks only what the state table allows (RFC 3030 section 2); an
            # unknown verb is still just unknown (500, and counted as such).
            if verb == "DATA":
                self._reply(R.BDAT_AFTER_DATA)
            else:
                verb_enum = Verb.MAIL if verb == "MAIL" else Verb.HELP
                self._reply(sequence_error(State.IN_BDAT, verb_enum))
            return None
        fast = self._fast.get(verb)
        if fast is not None:
            try:
                pending = fast(self, arg)
            except Exception as error:
                return functools.partial(self._handle_error, error)
            return None if pending is None else functools.partial(self._guard, pending)
        method = self._commands.get(verb)
        if method is None:
            self._reply(R.unrecognized(verb))
            self._count_bogus()
            return None
        return functools.partial(self._guard, functools.partial(method, self, arg))

    def _refuse(self, verb: str, arg: str | None, reply: Reply) -> _Later | None:
        """Refuse a command before it runs; a refused BDAT still has its chunk read (and
        dropped), or those octets would be taken for commands (RFC 3030 section 2)."""
        if verb != "BDAT":
            self._reply(reply)
            return None
        match = _BDAT_ARG.fullmatch(arg or "")
        if match is None:
            self._reply(R.BDAT_BAD_SIZE)
            self._close()
            return None
        self._receiver.start_bdat(int(match.group(1)), discard=True)
        return functools.partial(self._refuse_chunk, reply)

    async def _refuse_chunk(self, reply: Reply) -> None:
        if await self._next_event() is not None:
            self._reply(reply)

    async def _handle_error(self, error: Exception) -> None:
        peer = self.session.peer if self.session else None
        if isinstance(error, _InvalidHookReply):
            log.error("%r %s", peer, error)
            self._reply(R.INTERNAL_ERROR)
            return
        log.exception("%r error while handling a command", peer)
        hook = self._hooks.exception
        if hook is None:
            self._reply(R.INTERNAL_ERROR)
            return
        try:
            status = hook(error)
            if inspect.isawaitable(status):
                status = await status
            self._queue_status(status, "handle_exception")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%r handle_exception failed", peer)
            self._reply(R.INTERNAL_ERROR)

    # --- hook plumbing --------------------------------------------------------------------------

    @staticmethod
    def _check_status(status: object, hook: str) -> str:
        if isinstance(status, str):
            lines = status.removesuffix("\r\n").split("\r\n")
            if (
                all(_REPLY_LINE.fullmatch(line) for line in lines)
                and all(line[3:4] == "-" for line in lines[:-1])
                and lines[-1][3:4] != "-"
                and all(line[:3] == lines[-1][:3] for line in lines)
            ):
                return status.removesuffix("\r\n")
        shown = repr(status)
        raise _InvalidHookReply(
            f"{hook} returned {shown[:80]}, which is not a reply line such as '250 OK'"
        )

    @staticmethod
    def _check_line(line: object, hook: str) -> str:
        """One line of a multi-line reply (its separator is set by the caller)."""
        if isinstance(line, str) and _REPLY_LINE.fullmatch(line.removesuffix("\r\n")):
            return line.removesuffix("\r\n")
        raise _InvalidHookReply(f"{hook} returned {repr(line)[:80]}, which is not a reply line")

    def _queue_status(self, status: object, hook: str) -> str:
        text = self._check_status(status, hook)
        encoding = "utf-8" if self.enable_SMTPUTF8 else "ascii"
        self._queue(text.encode(encoding, "replace") + b"\r\n")
        return text

    async def _run_hook(self, awaitable: Awaitable[object], hook: str) -> str:
        return self._queue_status(await awaitable, hook)

    # --- state ----------------------------------------------------------------------------------

    def _state(self) -> State:
        session, envelope = self.session, self.envelope
        if session is None or envelope is None:
            return State.GREETED
        return state_of(
            greeted=bool(session.host_name),
            has_sender=envelope.mail_from is not None,
            recipients=len(envelope.rcpt_tos),
            in_bdat=self._bdat_chunks is not None,
        )

    def _sequence_ok(self, verb: Verb) -> bool:
        state = self._state()
        if allowed(state, verb):
            return True
        self._reply(sequence_error(state, verb))
        return False

    def _reset_transaction(self) -> None:
        self.envelope = self._create_envelope()
        self._bdat_chunks = None
        self._bdat_size = 0

    def _usage(self, usage: str, extended: str) -> None:
        """Answer 501 with the command's syntax (its ESMTP parameters only after EHLO)."""
        if self.session is not None and self.session.extended_smtp:
            usage += extended
        self._reply(R.syntax(usage))

    def _auth_needed(self) -> bool:
        if self._auth_required and not (self.session and self.session.authenticated):
            self._reply(R.AUTH_REQUIRED)
            return True
        return False

    # --- HELO / EHLO ----------------------------------------------------------------------------

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str | None) -> None:
        """HELO: greet without ESMTP."""
        pending = self._helo(hostname)
        if pending is not None:
            await pending()

    def _helo(self, hostname: str | None) -> _Later | None:
        if not hostname:
            self._reply(R.syntax("HELO hostname"))
            return None
        session = self.session
        assert session is not None
        self._reset_transaction()
        session.extended_smtp = False
        hook = self._hooks.helo
        if hook is None:
            session.host_name = hostname
            encoding = "utf-8" if self.enable_SMTPUTF8 else "ascii"
            self._queue(f"250 {self.hostname}\r\n".encode(encoding))
            return None
        before = session.host_name
        return lambda: self._helo_hooked(
            hook(self, session, self._envelope, hostname), session, hostname, before
        )

    async def _helo_hooked(
        self, awaitable: Awaitable[object], session: Session, hostname: str, before: str | None
    ) -> None:
        status = await self._run_hook(awaitable, "handle_HELO")
        if status[0] == "2" and session.host_name is before:
            session.host_name = hostname

    @property
    def _envelope(self) -> Envelope:
        envelope = self.envelope
        if envelope is None:
            envelope = self.envelope = self._create_envelope()
        return envelope

    def _ehlo_responses(self) -> list[str]:
        lines = [f"250-{self.hostname}"]
        if self.data_size_limit:
            lines.append(f"250-SIZE {self.data_size_limit}")
        if not self._decode_data:
            lines.append("250-8BITMIME")
        if self.enable_SMTPUTF8:
            lines.append("250-SMTPUTF8")
        lines.append("250-PIPELINING")
        if self._enhanced:
            lines.append("250-ENHANCEDSTATUSCODES")
        lines.append("250-CHUNKING")
        if self.tls_context is not None and not self._tls_active:
            lines.append("250-STARTTLS")
        if self._mechanisms and (self._tls_active or not self._auth_require_tls):
            lines.append("250-AUTH " + " ".join(sorted(self._mechanisms)))
        lines.append("250 HELP")
        return lines

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str | None) -> None:
        """EHLO: greet with ESMTP; the reply lists the extensions."""
        pending = self._ehlo(hostname)
        if pending is not None:
            await pending()

    def _ehlo(self, hostname: str | None) -> _Later | None:
        if not hostname:
            self._reply(R.syntax(f"{self._ehlo_keyword} hostname"))
            return None
        hooks = self._hooks
        if hooks.ehlo is None and hooks.ehlo_legacy is None and self._ehlo_hook is None:
            session = self.session
            assert session is not None
            self._reset_transaction()
            session.extended_smtp = True
            self._queue(self._ehlo_reply())
            session.host_name = hostname
            return None
        return functools.partial(self._greet_extended, hostname)

    @property
    def _ehlo_hook(self) -> Callable[[], Awaitable[None]] | None:
        """The deprecated ``ehlo_hook`` method of an aiosmtpd subclass, if it has one."""
        hook: Callable[[], Awaitable[None]] | None = getattr(self, "ehlo_hook", None)
        return hook

    def _ehlo_reply(self) -> bytes:
        """The whole EHLO reply as it goes on the wire, in one write."""
        return ("\r\n".join(self._ehlo_responses()) + "\r\n").encode("utf-8", "replace")

    async def _greet_extended(self, hostname: str) -> None:
        session = self.session
        assert session is not None
        self._reset_transaction()
        session.extended_smtp = True
        responses = self._ehlo_responses()
        before = session.host_name
        hooks = self._hooks
        if hooks.ehlo is not None:
            result = await hooks.ehlo(self, session, self._envelope, hostname, responses)
            if not isinstance(result, list) or not result:
                raise _InvalidHookReply(
                    f"handle_EHLO returned {type(result).__name__}, not a list of reply lines"
                )
            # Every line is checked before any is sent: half a reply would desynchronise.
            texts = [self._check_line(line, "handle_EHLO") for line in result]
            last = len(texts) - 1
            encoding = "utf-8" if self.enable_SMTPUTF8 else "ascii"
            wire = b"".join(
                f"{text[:3]}{'-' if index < last else ' '}{text[4:]}".encode(encoding, "replace")
                + b"\r\n"
                for index, text in enumerate(texts)
            )
            self._queue(wire)
            positive = str(result[-1]).startswith("2")
        elif hooks.ehlo_legacy is not None:
            await self.push(responses[0])
            status = await self._run_hook(
                hooks.ehlo_legacy(self, session, self._envelope, hostname), "handle_EHLO"
            )
            positive = status[0] == "2"
        else:
            for line in responses[:-1]:
                self._queue(line.encode("utf-8", "replace") + b"\r\n")
            legacy = self._ehlo_hook
            if legacy is not None:
                warnings.warn(
                    "SMTP.ehlo_hook is deprecated; use the handle_EHLO handler hook",
                    DeprecationWarning,
                    stacklevel=2,
                )
                await legacy()
            self._queue(responses[-1].encode("ascii") + b"\r\n")
            session.host_name = hostname
            return
        if positive and session.host_name is before:
            session.host_name = hostname

    # --- simple commands ------------------------------------------------------------------------

    @syntax("NOOP [ignored]")
    async def smtp_NOOP(self, arg: str | None) -> None:
        """NOOP: do nothing, successfully."""
        pending = self._noop(arg)
        if pending is not None:
            await pending()

    def _noop(self, arg: str | None) -> _Later | None:
        hook = self._hooks.noop
        if hook is None:
            self._reply(R.OK)
            return None
        session = self.session
        assert session is not None
        return lambda: self._run_hook(hook(self, session, self._envelope, arg or ""), "handle_NOOP")

    @syntax("QUIT")
    async def smtp_QUIT(self, arg: str | None) -> None:
        """QUIT: say goodbye and close."""
        pending = self._quit(arg)
        if pending is not None:
            await pending()

    def _quit(self, arg: str | None) -> _Later | None:
        if arg:
            self._reply(R.syntax("QUIT"))
            return None
        if self._hooks.quit is None:
            self._reply(R.BYE)
            self._close()
            return None
        return self._quit_hooked

    async def _quit_hooked(self) -> None:
        hook = self._hooks.quit
        assert hook is not None and self.session is not None
        try:
            await self._run_hook(hook(self, self.session, self._envelope), "handle_QUIT")
        except asyncio.CancelledError:
            raise
        except Exception as error:
            await self._handle_error(error)  # answered before the close, never silently
        finally:
            self._close()

    @syntax("RSET")
    async def smtp_RSET(self, arg: str | None) -> None:
        """RSET: abandon the transaction."""
        pending = self._rset(arg)
        if pending is not None:
            await pending()

    def _rset(self, arg: str | None) -> _Later | None:
        if arg:
            self._reply(R.syntax("RSET"))
            return None
        self._reset_transaction()
        hook = self._hooks.rset
        if hook is not None:
            session = self.session
            assert session is not None
            return lambda: self._run_hook(hook(self, session, self._envelope), "handle_RSET")
        legacy: Callable[[], Awaitable[None]] | None = getattr(self, "rset_hook", None)
        if legacy is not None:
            warnings.warn(
                "SMTP.rset_hook is deprecated; use the handle_RSET handler hook",
                DeprecationWarning,
                stacklevel=2,
            )
            return functools.partial(self._rset_legacy, legacy)
        self._reply(R.OK)
        return None

    async def _rset_legacy(self, legacy: Callable[[], Awaitable[None]]) -> None:
        await legacy()
        self._reply(R.OK)

    @syntax("VRFY <address>")
    async def smtp_VRFY(self, arg: str | None) -> None:
        """VRFY: never verifies, as recommended (RFC 5321 section 7.3)."""
        if self._auth_needed():
            return
        if not arg:
            self._reply(R.syntax("VRFY <address>"))
            return
        try:
            address = parse_path(
                arg if arg.startswith("<") else f"<{arg}>", allow_null=False, allow_postmaster=True
            )
        except PathError:
            self._reply(R.VRFY_UNPARSABLE)
            return
        hook = self._hooks.vrfy
        if hook is None:
            self._reply(R.CANNOT_VRFY)
        else:
            assert self.session is not None
            await self._run_hook(hook(self, self.session, self._envelope, address), "handle_VRFY")

    async def smtp_EXPN(self, arg: str | None) -> None:
        """EXPN: not implemented (RFC 5321 section 7.3 allows refusing it)."""
        self._reply(R.EXPN_NOT_IMPLEMENTED)

    def _help_verbs(self) -> list[str]:
        verbs = []
        for verb, method in self._commands.items():
            if verb == "EXPN":
                continue
            when = getattr(method, "__smtp_syntax_when__", None)
            if when and not getattr(self, when, None):
                continue
            verbs.append(verb)
        return sorted(verbs)

    @syntax("HELP [command]")
    async def smtp_HELP(self, arg: str | None) -> None:
        """HELP: list the commands, or show one command's syntax."""
        if self._auth_needed():
            return
        verbs = self._help_verbs()
        if arg:
            method = self._commands.get(arg.upper())
            text = getattr(method, "__smtp_syntax__", None) if method is not None else None
            if method is not None and arg.upper() in verbs:
                if text is None:
                    text = arg.upper()
                extended = getattr(method, "__smtp_syntax_extended__", None)
                assert self.session is not None
                if extended and self.session.extended_smtp:
                    text += extended
                self._reply(R.help_syntax(text))
                return
            self._reply(R.help_commands(verbs, refused=True))
            return
        self._reply(R.help_commands(verbs))

    # --- MAIL / RCPT ----------------------------------------------------------------------------

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        """MAIL FROM: open a transaction."""
        pending = self._mail(arg)
        if pending is not None:
            await pending()

    def _mail(self, arg: str | None) -> _Later | None:
        if self._auth_needed() or not self._sequence_ok(Verb.MAIL):
            return None
        session = self.session
        assert session is not None
        if not arg or arg[:5].upper() != "FROM:":
            self._usage("MAIL FROM: <address>", " [SP <mail-parameters>]")
            return None
        path, params_text = split_path_and_params(arg[5:])
        if params_text and not session.extended_smtp:
            self._usage("MAIL FROM: <address>", " [SP <mail-parameters>]")
            return None
        try:
            address = parse_path(path, allow_null=True)
            params = parse_params(params_text)
        except PathError:
            self._reply(R.MALFORMED_ADDRESS)
            return None
        except ParamError:
            self._usage("MAIL FROM: <address>", " [SP <mail-parameters>]")
            return None
        if (
            self.limits.local_part_limit
            and len(address.rpartition("@")[0]) > self.limits.local_part_limit
        ):
            self._reply(R.LOCAL_PART_TOO_LONG)
            return None
        parsed = mail_params(params, self._mail_policy())
        if isinstance(parsed, Reply):
            self._reply(parsed)
            return None
        if not address.isascii() and not parsed.smtp_utf8:
            self._reply(R.NEED_UTF8)
            return None
        envelope = self._envelope
        hook = self._hooks.mail
        if hook is None:
            self._reply(R.MAIL_OK)
            self._mail_accepted(envelope, address, params, parsed)
            return None
        return lambda: self._mail_hooked(
            hook(self, session, envelope, address, params), envelope, address, params, parsed
        )

    async def _mail_hooked(
        self,
        awaitable: Awaitable[object],
        envelope: Envelope,
        address: str,
        params: list[str],
        parsed: MailParams,
    ) -> None:
        if (await self._run_hook(awaitable, "handle_MAIL"))[0] == "2":
            self._mail_accepted(envelope, address, params, parsed)

    @staticmethod
    def _mail_accepted(
        envelope: Envelope, address: str, params: list[str], parsed: MailParams
    ) -> None:
        if envelope.mail_from is None:
            envelope.mail_from = address
        if not envelope.mail_options:
            envelope.mail_options.extend(params)
        envelope.size, envelope.body = parsed.size, parsed.body
        envelope.smtp_utf8, envelope.requiretls = parsed.smtp_utf8, parsed.requiretls
        envelope.dsn_ret, envelope.dsn_envid = parsed.dsn_ret, parsed.dsn_envid
        envelope.auth = parsed.auth

    def _mail_policy(self) -> MailPolicy:
        """What MAIL parameters this connection accepts now (kept until it changes)."""
        policy = self._policy
        if (
            policy is None
            or policy.tls_active != self._tls_active
            or policy.size_limit != self.data_size_limit
            or policy.smtputf8 != self.enable_SMTPUTF8
        ):
            policy = self._policy = MailPolicy(
                size_limit=self.data_size_limit,
                smtputf8=self.enable_SMTPUTF8,
                binarymime=not self._decode_data,
                tls_active=self._tls_active,
            )
        return policy

    @syntax("RCPT TO: <address>", extended=" [SP <rcpt-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        """RCPT TO: add a recipient."""
        pending = self._rcpt(arg)
        if pending is not None:
            await pending()

    def _rcpt(self, arg: str | None) -> _Later | None:
        if self._auth_needed() or not self._sequence_ok(Verb.RCPT):
            return None
        session = self.session
        assert session is not None
        if not arg or arg[:3].upper() != "TO:":
            self._usage("RCPT TO: <address>", " [SP <rcpt-parameters>]")
            return None
        path, params_text = split_path_and_params(arg[3:])
        if params_text and not session.extended_smtp:
            self._usage("RCPT TO: <address>", " [SP <rcpt-parameters>]")
            return None
        try:
            address = parse_path(path, allow_null=False, allow_postmaster=True)
            params = parse_params(params_text)
        except PathError:
            self._reply(R.MALFORMED_ADDRESS)
            return None
        except ParamError:
            self._usage("RCPT TO: <address>", " [SP <rcpt-parameters>]")
            return None
        parsed = rcpt_params(params)
        if isinstance(parsed, Reply):
            self._reply(parsed)
            return None
        dsn = (
            _NO_DSN
            if not parsed.notify and parsed.orcpt is None
            else RecipientDSN(parsed.notify, parsed.orcpt)
        )
        envelope = self._envelope
        if not address.isascii() and not envelope.smtp_utf8:
            self._reply(R.NEED_UTF8)
            return None
        limit = self.limits.max_recipients
        if limit is not None and len(envelope.rcpt_tos) >= limit:
            self._reply(R.TOO_MANY_RECIPIENTS)
            return None
        hook = self._hooks.rcpt
        if hook is None:
            self._reply(R.RCPT_OK)
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(params)
            while len(envelope.rcpt_dsn) < len(envelope.rcpt_tos):
                envelope.rcpt_dsn.append(dsn)
            return None
        count = len(envelope.rcpt_tos)
        return lambda: self._rcpt_hooked(
            hook(self, session, envelope, address, params), envelope, address, params, dsn, count
        )

    async def _rcpt_hooked(
        self,
        awaitable: Awaitable[object],
        envelope: Envelope,
        address: str,
        params: list[str],
        dsn: RecipientDSN,
        count: int,
    ) -> None:
        if (await self._run_hook(awaitable, "handle_RCPT"))[0] == "2":
            if len(envelope.rcpt_tos) == count:
                envelope.rcpt_tos.append(address)
                envelope.rcpt_options.extend(params)
            while len(envelope.rcpt_dsn) < len(envelope.rcpt_tos):
                envelope.rcpt_dsn.append(dsn)

    # --- DATA / BDAT ----------------------------------------------------------------------------

    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        """DATA: receive the message, up to CRLF.CRLF."""
        if not self._start_data(arg):
            return
        try:
            event = await self._next_event()
        finally:
            self._set_deadline(None)
        pending = self._end_data(event)
        if pending is not None:
            await pending()

    def _data(self, arg: str | None) -> None:
        # The content arrives as a later event of the same pass: see _handle_event.
        self._data_pending = self._start_data(arg)

    def _start_data(self, arg: str | None) -> bool:
        """Check DATA and answer 354: whether the content is to be read now."""
        if self._auth_needed():
            return False
        if arg:
            self._reply(R.syntax("DATA"))
            return False
        if self._bdat_chunks is not None:
            self._reply(R.BDAT_AFTER_DATA)
            return False
        if not self._sequence_ok(Verb.DATA):
            return False
        self._reply(R.ENTER_DATA)
        self._receiver.start_data(self.limits.max_data_size)
        self._set_deadline(self.limits.data_timeout)
        return True

    def _end_data(self, event: Event | None) -> _Later | None:
        """The content of DATA arrived (or, with ``None``, the client left half way)."""
        if not isinstance(event, DataDone):
            return None  # the client went away mid-message: nothing was accepted
        if event.raw is None:
            self._refuse_message(event.error or R.DATA_TOO_LARGE)
            self._reset_transaction()
            return None
        content = process_content(
            event.raw,
            policy=self.limits.bare_newline,
            line_length_limit=self.limits.line_length_limit,
            unstuff=event.stuffed,
        )
        return self._finish(content)

    async def _finish_message(self, content: bytes | Reply) -> None:
        pending = self._finish(content)
        if pending is not None:
            await pending()

    def _finish(self, content: bytes | Reply) -> _Later | None:
        """Deliver a complete message; what is left to await when a hook takes it."""
        if isinstance(content, Reply):
            self._refuse_message(content)
            self._reset_transaction()
            return None
        envelope = self._envelope
        envelope.original_content = content
        if self._decode_data:
            try:
                envelope.content = content.decode("utf-8" if self.enable_SMTPUTF8 else "ascii")
            except UnicodeDecodeError:
                self._refuse_message(R.DECODE_ERROR)
                self._reset_transaction()
                return None
        else:
            envelope.content = content
        if (
            self._plain_delivery
            and self._hooks.data is None
            and getattr(self.event_handler, "process_message", None) is None
        ):
            self._reply(R.OK)
            self._reset_transaction()
            return None
        return self._deliver_and_reset

    async def _deliver_and_reset(self) -> None:
        try:
            await self._deliver()
        finally:
            self._reset_transaction()

    def _refuse_message(self, reply: Reply) -> None:
        """Refuse a complete message (LMTP answers once per recipient instead)."""
        self._reply(reply)

    async def _deliver(self) -> None:
        """Hand the complete message to the handler and send the final reply."""
        session, envelope = self.session, self._envelope
        assert session is not None
        hook = self._hooks.data
        if hook is not None:
            await self._run_hook(hook(self, session, envelope), "handle_DATA")
            return
        legacy = getattr(self.event_handler, "process_message", None)
        if legacy is not None:
            warnings.warn(
                "process_message is deprecated; use handle_DATA", DeprecationWarning, stacklevel=2
            )
            result = legacy(session.peer, envelope.mail_from, envelope.rcpt_tos, envelope.content)
            if inspect.isawaitable(result):
                result = await result
            if result is None:
                self._reply(R.OK)
            else:
                self._queue_status(result, "process_message")
            return
        self._reply(R.OK)

    @syntax("BDAT <chunk-size> [LAST]")
    async def smtp_BDAT(self, arg: str | None) -> None:
        """BDAT: receive one chunk of the message (RFC 3030)."""
        match = _BDAT_ARG.fullmatch(arg or "")
        if match is None:
            # Without a size the chunk cannot be skipped: its bytes would be read as commands.
            self._reply(R.BDAT_BAD_SIZE)
            self._close()
            return
        size = int(match.group(1))
        last = match.group(2) is not None
        verb = Verb.BDAT_LAST if last else Verb.BDAT
        refusal: Reply | None = None
        state = self._state()
        if self._auth_required and not (self.session and self.session.authenticated):
            refusal = R.AUTH_REQUIRED
        elif not allowed(state, verb):
            refusal = sequence_error(state, verb)
        else:
            limit = self.limits.max_data_size
            if limit is not None and self._bdat_size + size > limit:
                refusal = R.DATA_TOO_LARGE
        # The chunk is read in full even when it is refused (RFC 3030 section 2).
        self._receiver.start_bdat(size, discard=refusal is not None)
        self._set_deadline(self.limits.data_timeout)
        try:
            event = await self._next_event()
        finally:
            self._set_deadline(None)
        if not isinstance(event, ChunkDone):
            return
        if refusal is not None or event.data is None:
            refusal = refusal or R.DATA_TOO_LARGE
            if refusal is R.DATA_TOO_LARGE:
                if last:
                    self._refuse_message(refusal)
                else:
                    self._reply(refusal)
                self._reset_transaction()
            else:
                self._reply(refusal)
            return
        chunks = self._bdat_chunks
        if chunks is None:
            chunks = self._bdat_chunks = []
        chunks.append(event.data)
        self._bdat_size += size
        if not last:
            self._reply(R.chunk_received(size))
            return
        raw = b"".join(chunks)
        binary = self._envelope.body == "BINARYMIME"
        content = process_content(
            raw,
            policy="accept" if binary else self.limits.bare_newline,
            line_length_limit=None if binary else self.limits.line_length_limit,
            unstuff=False,
        )
        await self._finish_message(content)

    # --- STARTTLS -------------------------------------------------------------------------------

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str | None) -> None:
        """STARTTLS: upgrade the connection to TLS (RFC 3207)."""
        if arg:
            self._reply(R.syntax("STARTTLS"))
            return
        if self._tls_active:
            self._reply(R.TLS_ALREADY_ACTIVE)
            return
        if self.tls_context is None:
            self._reply(R.TLS_NOT_AVAILABLE)
            return
        if not self._sequence_ok(Verb.STARTTLS):
            return
        self._reply(R.READY_FOR_TLS)
        self._flush()
        # RFC 3207 section 4.2: whatever the client pipelined after STARTTLS was sent in the
        # clear and must not be acted on.
        self._receiver.clear()
        transport = self.transport
        if transport is None:
            return
        # The handshake goes at the client's pace: the idle timeout governs it, not the
        # deadline for slow hooks.
        self._set_busy(False)
        self._last_activity = self.loop.time()
        try:
            new_transport = await self.loop.start_tls(
                cast("asyncio.WriteTransport", transport),
                self,
                self.tls_context,
                server_side=True,
                ssl_handshake_timeout=min(_TLS_HANDSHAKE_TIMEOUT, self.limits.timeout),
            )
        except BaseException as error:  # CancelledError too: the timer may cut the handshake
            if not isinstance(error, asyncio.CancelledError):
                log.info(
                    "%r TLS handshake failed: %s",
                    self.session.peer if self.session else None,
                    error,
                )
            self._closed = True
            transport.abort()  # type: ignore[attr-defined]
            # asyncio does not report connection_lost for a handshake that never completed:
            # release the connection slot and the timer here.
            self.connection_lost(None)
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        finally:
            self._set_busy(True)
        if new_transport is None:
            self._close()
            return
        # No second clear here: what arrives now was decrypted, so it was sent inside TLS (a
        # client may send its first command right behind its Finished message).
        self.transport = new_transport
        self._tls_active = True
        old_peer = self.session.peer if self.session else None
        proxy_data = self.session.proxy_data if self.session else None
        session = self.session = self._create_session()
        session.peer = old_peer
        session.proxy_data = proxy_data
        session.ssl = self._tls_info(new_transport)
        self._reset_transaction()
        hook = self._hooks.starttls
        if hook is not None and not hook(self, session, self._envelope):
            self._tls_refused = True

    @staticmethod
    def _tls_info(transport: asyncio.BaseTransport) -> dict[str, Any]:
        ssl_object = transport.get_extra_info("ssl_object")
        info: dict[str, Any] = {
            "ssl_object": ssl_object,
            "sslcontext": transport.get_extra_info("sslcontext"),
            "peercert": transport.get_extra_info("peercert"),
            "cipher": transport.get_extra_info("cipher"),
            "compression": transport.get_extra_info("compression"),
            "peername": transport.get_extra_info("peername"),
            "sockname": transport.get_extra_info("sockname"),
            "version": ssl_object.version() if ssl_object is not None else None,
        }
        return info

    # --- AUTH -----------------------------------------------------------------------------------

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str | None) -> None:
        """AUTH: authenticate with a SASL mechanism (RFC 4954)."""
        session = self.session
        assert session is not None
        if not session.host_name:
            self._reply(R.EHLO_FIRST)
            return
        if not session.extended_smtp:
            self._reply(R.unrecognized("AUTH"))
            return
        if self._auth_require_tls and not self._tls_active:
            self._reply(R.AUTH_ENCRYPTION_REQUIRED)
            return
        if session.authenticated:
            self._reply(R.AUTH_ALREADY)
            return
        if self._state() is not State.READY:
            self._reply(R.AUTH_IN_TRANSACTION)
            return
        if not arg:
            self._reply(R.AUTH_NOT_ENOUGH_VALUE)
            return
        args = arg.split()
        if len(args) > 2:
            self._reply(R.AUTH_TOO_MANY_VALUES)
            return
        hook = self._hooks.auth
        if hook is not None:
            status = await hook(self, session, self._envelope, args)
            if status is not None:
                self._queue_status(status, "handle_AUTH")
            return
        mechanism = args[0].upper()
        method = self._mechanisms.get(mechanism)
        if method is None:
            self._reply(R.AUTH_NO_MECHANISM)
            return
        args[0] = mechanism
        answered = self._final_replies
        outcome = await method(self, args)
        self._settle_auth(outcome, answered_before=answered)

    def _settle_auth(self, outcome: object, *, answered_before: int) -> None:
        session = self.session
        assert session is not None
        if isinstance(outcome, AuthResult):
            result = outcome
        elif outcome is None:  # legacy: the hook handled a failure itself
            result = AuthResult(success=False, handled=True)
        elif outcome is MISSING or outcome is False:
            result = AuthResult(success=False, handled=False)
        else:  # legacy: an identity means success
            result = AuthResult(success=True, auth_data=outcome)
            session._login_data = outcome
        if result.success:
            session.authenticated = True
            session.auth_data = result.auth_data
            login = getattr(result.auth_data, "login", None)
            if login is not None:
                session._login_data = login
            if result.message is not None:
                self._queue_status(result.message, "authenticator")
            else:
                self._reply(R.AUTH_SUCCESS)
            return
        session.authenticated = False
        if result.handled and self._final_replies == answered_before:
            # "Handled" but nothing answered the client: never leave it waiting.
            log.warning("%r AUTH failure marked handled, but no reply was sent", session.peer)
        if not result.handled or self._final_replies == answered_before:
            if result.message is not None:
                self._queue_status(result.message, "authenticator")
            else:
                self._reply(R.AUTH_FAILED)
        self._auth_failures += 1
        if self._auth_failures >= self.limits.max_auth_failures:
            self._reply(R.AUTH_TOO_MANY_FAILURES)
            self._close()

    async def challenge_auth(
        self,
        challenge: str | bytes,
        encode_to_b64: bool = True,
        log_client_response: bool = False,
    ) -> bytes | _Missing:
        """Send a ``334`` challenge and return the client's decoded answer.

        Returns :data:`MISSING` (after replying) when the client cancels with ``*``, sends bad
        base64, or a line over 12,288 octets.
        """
        if isinstance(challenge, str):
            challenge = challenge.encode("utf-8")
        payload = base64.b64encode(challenge) if encode_to_b64 else challenge
        self._queue(b"334 " + payload + b"\r\n")
        self._receiver.start_sasl(self.limits.auth_line_limit)
        event = await self._next_event()
        if event is None:
            self._closed = True
            return MISSING
        if isinstance(event, BadLine):
            self._reply(
                R.AUTH_LINE_TOO_LONG if event.reply is R.AUTH_LINE_TOO_LONG else event.reply
            )
            return MISSING
        assert isinstance(event, Line)
        line = event.text.strip()
        if log_client_response:
            log.debug("%r AUTH response received", self.session.peer if self.session else None)
        if line == "*":
            self._reply(R.AUTH_ABORTED)
            return MISSING
        try:
            return base64.b64decode(line.encode("ascii", "surrogateescape"), validate=True)
        except (binascii.Error, ValueError):
            self._reply(R.AUTH_BAD_BASE64)
            return MISSING

    def _decode_initial(self, value: str) -> bytes | _Missing:
        if value == "=":
            return b""
        try:
            return base64.b64decode(value.encode("ascii", "surrogateescape"), validate=True)
        except (binascii.Error, ValueError):
            self._reply(R.AUTH_BAD_BASE64)
            return MISSING

    async def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        session = self.session
        assert session is not None
        if self._authenticator is not None:
            result = self._authenticator(self, session, self._envelope, mechanism, auth_data)
            if inspect.isawaitable(result):
                result = await result
            if not isinstance(result, AuthResult):
                raise TypeError(f"authenticator returned {type(result).__name__}, not AuthResult")
            return result
        if self._auth_callback is not None and isinstance(auth_data, LoginPassword):
            ok = self._auth_callback(mechanism, auth_data.login, auth_data.password)
            return AuthResult(success=bool(ok), handled=False, auth_data=auth_data)
        return AuthResult(success=False, handled=False)

    async def auth_PLAIN(self, args: list[str]) -> AuthResult:
        """The PLAIN mechanism (RFC 4616); the authorization identity is ignored."""
        if len(args) == 1:
            response = await self.challenge_auth("")
        else:
            response = self._decode_initial(args[1])
        if response is MISSING:
            return AuthResult(success=False, handled=True)
        parts = response.split(b"\x00")
        if len(parts) != 3:
            self._reply(R.AUTH_CANT_SPLIT)
            return AuthResult(success=False, handled=True)
        return await self._authenticate("PLAIN", LoginPassword(parts[1], parts[2]))

    async def auth_LOGIN(self, args: list[str]) -> AuthResult:
        """The LOGIN mechanism (draft-murchison-sasl-login)."""
        if len(args) == 1:
            login = await self.challenge_auth(self.AuthLoginUsernameChallenge)
        else:
            login = self._decode_initial(args[1])
        if login is MISSING:
            return AuthResult(success=False, handled=True)
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        return await self._authenticate("LOGIN", LoginPassword(login, password))

    @auth_mechanism("CRAM-MD5")
    async def auth_CRAM__MD5(self, args: list[str]) -> AuthResult:
        """The CRAM-MD5 mechanism (RFC 2195): the authenticator gets a
        :class:`~typed_smtpd.session.CramMD5Response` and checks a password with ``verify()``."""
        if len(args) > 1:
            self._reply(R.AUTH_TOO_MANY_VALUES)
            return AuthResult(success=False, handled=True)
        challenge = f"<{secrets.token_hex(8)}.{int(time.time())}@{self.hostname}>".encode()
        response = await self.challenge_auth(challenge)
        if response is MISSING:
            return AuthResult(success=False, handled=True)
        login, sep, digest = response.rpartition(b" ")
        if not sep or not login or len(digest) != 32:
            self._reply(R.AUTH_CANT_SPLIT)
            return AuthResult(success=False, handled=True)
        return await self._authenticate("CRAM-MD5", CramMD5Response(login, challenge, digest))

    # --- PROXY protocol -------------------------------------------------------------------------

    async def _read_proxy_header(self) -> bool:
        session = self.session
        assert session is not None and self._proxy_timeout is not None
        peer = session.peer
        if self._proxy_trusted:
            host = peer[0] if isinstance(peer, tuple) and peer else None
            if host is None or not is_trusted_peer(host, self._proxy_trusted):
                log.warning("%r PROXY header refused: peer is not a trusted proxy", peer)
                return False
        self._set_deadline(self._proxy_timeout)
        try:
            while True:
                result = parse_proxy_header(self._receiver.peek())
                if result is not None:
                    break
                if self._closed or self._eof:
                    return False
                self._set_busy(False)
                waiter = self._waiter = self.loop.create_future()
                try:
                    await waiter
                finally:
                    self._set_busy(True)
        finally:
            self._set_deadline(None)
        if not result:
            log.warning("%r invalid PROXY header: %s", peer, result.error)
            return False
        self._receiver.consume(len(result.whole_raw))
        session.proxy_data = result
        hook = self._hooks.proxy
        if hook is not None:
            verdict = hook(self, session, self._envelope, result)
            if inspect.isawaitable(verdict):
                verdict = await verdict
            if not verdict:
                log.info("%r connection refused by handle_PROXY", peer)
                return False
        return True


SMTP._collect_commands()
