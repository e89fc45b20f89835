"""The SMTP server: one :class:`SMTP` instance per client connection.

:class:`SMTP` is the asyncio adapter of the sans-IO :class:`~typed_smtpd.proto.engine.ServerEngine`,
which makes every protocol decision. The adapter reads into a buffer shared by its thread's
connections, feeds the engine, writes what the engine queued, runs what the engine asks for
(handler hooks, ``smtp_VERB`` methods of subclasses, AUTH mechanisms, the TLS upgrade) in a task,
and keeps one timer at the engine's next deadline. Commands that need no user code are answered
inside the read callback, with no task at all.

The class keeps aiosmtpd's constructor, attributes and subclassing model: add a command by
defining ``async def smtp_PING(self, arg)`` in a subclass; it is collected once, when the
subclass is created, and listed by HELP. Override a built-in command the same way and call
``await super().smtp_MAIL(arg)`` to run the built-in one.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import re
import socket
import ssl
import sys
import threading
import warnings
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeVar

from typed_smtpd._version import __version__
from typed_smtpd.hooks import AuthHook, HookRegistry, auth_mechanism, mechanism_name
from typed_smtpd.proto import replies as R
from typed_smtpd.proto.engine import (
    ALLOWED_BEFORE_STARTTLS,
    CLOSED,
    WAIT_EVENT,
    Authenticate,
    CallHook,
    CallLegacy,
    EngineConfig,
    Expiry,
    HandleError,
    HelpEntry,
    Request,
    RunCommand,
    RunMechanism,
    ServerEngine,
    StartTLS,
    Step,
)
from typed_smtpd.proto.framing import NEED_DATA, Event
from typed_smtpd.proto.limits import (
    BOGUS_LIMIT,
    DATA_SIZE_DEFAULT,
    DATA_TIMEOUT,
    MAX_AUTH_FAILURES,
    MAX_RECIPIENTS,
    BareNewlinePolicy,
    Limits,
)
from typed_smtpd.proto.proxy import parse_trusted_networks
from typed_smtpd.session import (
    MISSING,
    AuthResult,
    Envelope,
    LoginPassword,
    PeerType,
    Session,
    _Missing,
)

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
#: A receive buffer larger than this while user code runs pauses reading from the client.
_HIGH_WATER: Final = 1 << 20
_TLS_HANDSHAKE_TIMEOUT: Final = 30.0
_READ_SIZE: Final = 1 << 18  # 256 KiB, what asyncio itself asks of one recv()
#: The modules whose ``smtp_VERB`` methods only hand the command to the engine.
_OWN_MODULES: Final = frozenset({__name__, "typed_smtpd.lmtp"})
#: The registry attribute of each hook the engine calls by name.
_HOOK_ATTRS: Final = {
    "handle_HELO": "helo",
    "handle_MAIL": "mail",
    "handle_RCPT": "rcpt",
    "handle_DATA": "data",
    "handle_DATA_recipient": "data_recipient",
    "handle_RSET": "rset",
    "handle_NOOP": "noop",
    "handle_QUIT": "quit",
    "handle_VRFY": "vrfy",
    "handle_AUTH": "auth",
    "handle_PROXY": "proxy",
    "handle_STARTTLS": "starttls",
    "handle_exception": "exception",
}
_C = TypeVar("_C", bound=Callable[..., Any])

#: The deprecated ``auth_callback(mechanism, login, password) -> bool``.
AuthCallbackType = Callable[[str, bytes, bytes], bool]
#: ``authenticator(server, session, envelope, mechanism, auth_data)``, sync or async.
AuthenticatorType = Callable[
    ["SMTP", Session, Envelope, str, Any], "AuthResult | Awaitable[AuthResult]"
]
#: An ``smtp_<VERB>`` command method, unbound: ``await method(server, arg)``.
CommandMethod = Callable[["SMTP", "str | None"], Awaitable[None]]


class TLSSetupException(Exception):
    """The TLS handshake after STARTTLS failed; the connection is closed."""


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


_thread_state = threading.local()


class _WriteBatch:
    """The replies of a thread's connections, written together at the end of a loop turn.

    When several connections are open, the replies produced while the event loop works through
    one turn's ready sockets are written in one burst at the start of the next turn instead of
    one by one between reads: the peers are woken together, and the engine's code stays hot in
    the CPU's caches while it reads. A lone connection is answered at once.
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
                connection.flush()
            except Exception:  # one broken transport must not keep the others' replies
                log.exception("%r could not write its replies", connection._peer)
                connection._abort()


def _thread_local(name: str, make: Callable[[], Any]) -> Any:
    value = getattr(_thread_state, name, None)
    if value is None:
        value = make()
        setattr(_thread_state, name, value)
    return value


@functools.lru_cache(maxsize=1)
def _fqdn() -> str:
    # Looked up once per process, never per connection (it can mean a DNS query).
    return socket.getfqdn()


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


@dataclass(frozen=True, slots=True)
class _Server:
    """What the connections of one server share: built once, never changed."""

    config: EngineConfig
    hooks: HookRegistry
    #: The AUTH mechanisms run here rather than by the engine, as ``mechanism(server, args)``.
    mechanisms: Mapping[str, AuthHook]
    authenticator: AuthenticatorType | None
    auth_callback: AuthCallbackType | None


_SERVERS: dict[tuple[object, ...], tuple[object, _Server]] = {}
_SERVERS_MAX: Final = 64


def _freeze(value: object) -> object:
    if isinstance(value, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple | set | frozenset):
        return tuple(_freeze(v) for v in value)
    try:
        hash(value)
    except TypeError:
        return id(value)
    return value


def _is_builtin(method: object) -> bool:
    return getattr(method, "__module__", None) in _OWN_MODULES


class SMTP(asyncio.BufferedProtocol):
    """The SMTP protocol for one connection: give ``lambda: SMTP(handler)`` to ``create_server``.

    Every keyword argument of aiosmtpd's ``SMTP`` is accepted with its meaning and default; the
    new ones set limits and policies that aiosmtpd did not have (see :class:`Limits`). The
    connections built with the same handler and arguments share one configuration.
    """

    # The per-connection state lives in slots: an idle connection then holds no instance
    # dictionary (subclasses and hooks may still add attributes, which go to __dict__).
    __slots__ = (
        "__dict__",
        "__weakref__",
        "_batch",
        "_closed",
        "_drain_waiter",
        "_engine",
        "_loop_given",
        "_read_view",
        "_reading_paused",
        "_server",
        "_task",
        "_timer",
        "_timer_when",
        "_waiter",
        "_write_paused",
        "connection_tracker",
        "data_size_limit",
        "enable_SMTPUTF8",
        "event_handler",
        "hostname",
        "limits",
        "require_starttls",
        "tls_context",
        "transport",
    )

    #: aiosmtpd-compatible class-level knobs, read when a server's configuration is built.
    command_size_limit: ClassVar[int] = 512
    line_length_limit: ClassVar[int] = 1001
    local_part_limit: ClassVar[int] = 0
    AuthLoginUsernameChallenge: ClassVar[str] = "User Name\x00"
    AuthLoginPasswordChallenge: ClassVar[str] = "Password\x00"

    _commands: ClassVar[dict[str, CommandMethod]] = {}
    _server_mechanisms: ClassVar[dict[str, str]] = {}
    _lmtp: ClassVar[bool] = False

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
        self.data_size_limit: int | None = data_size_limit
        self.enable_SMTPUTF8: bool = enable_SMTPUTF8
        self.hostname: str = _fqdn() if hostname is None else hostname
        self.tls_context: ssl.SSLContext | None = tls_context
        self.require_starttls: bool = tls_context is not None and require_starttls
        self.connection_tracker: ConnectionTracker | None = connection_tracker
        if auth_required and not auth_require_tls:
            warnings.warn(
                "auth_required=True with auth_require_tls=False lets credentials cross the "
                "network in clear text",
                UserWarning,
                stacklevel=2,
            )
        if auth_callback is not None:
            warnings.warn(
                "auth_callback is deprecated; use authenticator", DeprecationWarning, stacklevel=2
            )
        options: dict[str, Any] = {
            "data_size_limit": data_size_limit,
            "enable_SMTPUTF8": enable_SMTPUTF8,
            "decode_data": decode_data,
            "ident": __ident__ if ident is None else ident,
            "timeout": timeout,
            "auth_required": auth_required,
            "auth_require_tls": auth_require_tls,
            "auth_exclude_mechanism": tuple(auth_exclude_mechanism or ()),
            "auth_callback": auth_callback,
            "command_call_limit": command_call_limit,
            "authenticator": authenticator,
            "proxy_protocol_timeout": proxy_protocol_timeout,
            "bare_newline": bare_newline,
            "max_recipients": max_recipients,
            "bogus_limit": bogus_limit,
            "data_timeout": data_timeout,
            "max_auth_failures": max_auth_failures,
            "proxy_trusted_networks": tuple(proxy_trusted_networks or ()),
            "enhanced_status_codes": enhanced_status_codes,
            "enable_CRAM_MD5": enable_CRAM_MD5,
        }
        self._server = server = self._shared_server(handler, options)
        self.limits: Limits = server.config.limits
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        self._loop_given = loop
        self.transport: asyncio.BaseTransport | None = None
        self._engine: ServerEngine[Session, Envelope] | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._reading_paused = False
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._batch: _WriteBatch | None = None
        self._read_view: memoryview = _thread_local(
            "view", lambda: memoryview(bytearray(_READ_SIZE))
        )

    # --- the configuration, shared by a server's connections ------------------------------------

    def _shared_server(self, handler: object, options: dict[str, Any]) -> _Server:
        cls = type(self)
        key = (
            cls,
            id(handler),
            self.hostname,
            id(self.tls_context),
            self.require_starttls,
            cls.command_size_limit,
            cls.line_length_limit,
            cls.local_part_limit,
            cls.AuthLoginUsernameChallenge,
            cls.AuthLoginPasswordChallenge,
            _freeze(options),
        )
        found = _SERVERS.get(key)
        if found is not None and found[0] is handler:
            return found[1]
        server = self._build_server(handler, options)
        if len(_SERVERS) >= _SERVERS_MAX:
            _SERVERS.clear()
        _SERVERS[key] = (handler, server)  # the handler is kept, so its id is not reused
        return server

    def _build_server(self, handler: object, options: dict[str, Any]) -> _Server:
        cls = type(self)
        tls_context = self.tls_context
        if tls_context is not None:
            if tls_context.verify_mode == ssl.CERT_REQUIRED:
                log.warning(
                    "tls_context.verify_mode is CERT_REQUIRED: clients without a "
                    "certificate cannot start TLS"
                )
            if tls_context.check_hostname:
                log.warning("tls_context.check_hostname is set: it has no meaning on a server")
        proxy_timeout = options["proxy_protocol_timeout"]
        if proxy_timeout is not None:
            if proxy_timeout <= 0:
                raise ValueError("proxy_protocol_timeout must be > 0")
            if proxy_timeout < 3.0:
                log.warning("proxy_protocol_timeout below 3 s may cut off slow proxies")
        limits = Limits(
            data_size_limit=options["data_size_limit"],
            command_size_limit=cls.command_size_limit,
            line_length_limit=cls.line_length_limit,
            max_recipients=options["max_recipients"],
            bogus_limit=options["bogus_limit"],
            timeout=options["timeout"],
            data_timeout=options["data_timeout"],
            max_auth_failures=options["max_auth_failures"],
            local_part_limit=cls.local_part_limit,
            bare_newline=options["bare_newline"],
        )
        hooks = HookRegistry(handler)
        engine_run, adapter_run = self._mechanisms(hooks, options)
        config = EngineConfig(
            hostname=self.hostname,
            ident=options["ident"],
            limits=limits,
            lmtp=cls._lmtp,
            enhanced_status_codes=options["enhanced_status_codes"],
            smtputf8=options["enable_SMTPUTF8"],
            decode_data=options["decode_data"],
            tls_available=tls_context is not None,
            require_starttls=self.require_starttls,
            auth_required=options["auth_required"],
            auth_require_tls=options["auth_require_tls"],
            mechanisms=frozenset(engine_run) | frozenset(adapter_run),
            engine_mechanisms=frozenset(engine_run),
            login_challenges=(cls.AuthLoginUsernameChallenge, cls.AuthLoginPasswordChallenge),
            call_limits=self._parse_call_limit(options["command_call_limit"]),
            proxy_timeout=proxy_timeout,
            proxy_trusted=parse_trusted_networks(options["proxy_trusted_networks"]),
            hooks=self._hook_names(hooks),
            legacy=frozenset(
                name for name in ("ehlo_hook", "rset_hook") if getattr(self, name, None)
            ),
            commands=frozenset(cls._commands),
            custom_commands=frozenset(
                verb for verb, method in cls._commands.items() if not _is_builtin(method)
            ),
            help=self._help_entries(),
            help_verbs=self._help_verbs(),
        )
        return _Server(
            config, hooks, adapter_run, options["authenticator"], options["auth_callback"]
        )

    def _hook_names(self, hooks: HookRegistry) -> frozenset[str]:
        names = {name for name, attribute in _HOOK_ATTRS.items() if getattr(hooks, attribute)}
        if hooks.ehlo is not None:
            names.add("handle_EHLO")
        if hooks.ehlo_legacy is not None:
            names |= {"handle_EHLO", "handle_EHLO:legacy"}
        if getattr(self.event_handler, "process_message", None) is not None:
            names.add("process_message")
        return frozenset(names)

    def _mechanisms(
        self, hooks: HookRegistry, options: Mapping[str, Any]
    ) -> tuple[set[str], dict[str, AuthHook]]:
        """The mechanisms offered: those the engine runs, and those run here."""
        engine_run: set[str] = set()
        adapter_run: dict[str, AuthHook] = {}
        for mechanism, attribute in type(self)._server_mechanisms.items():
            if mechanism == "CRAM-MD5" and not (
                options["enable_CRAM_MD5"] and options["authenticator"]
            ):
                # Opt-in: an authenticator written for PLAIN/LOGIN reads auth_data.password,
                # which a CRAM-MD5 exchange cannot give it.
                continue
            method = getattr(type(self), attribute)
            if _is_builtin(method):
                engine_run.add(mechanism)
            else:
                adapter_run[mechanism] = method
        for mechanism, hook in hooks.auth_mechanisms.items():
            engine_run.discard(mechanism)
            adapter_run[mechanism] = hook
        excluded = {m.upper() for m in options["auth_exclude_mechanism"]}
        return engine_run - excluded, {m: f for m, f in adapter_run.items() if m not in excluded}

    def _help_entries(self) -> dict[str, HelpEntry]:
        entries = {}
        for verb, method in type(self)._commands.items():
            usage = getattr(method, "__smtp_syntax__", None) or verb
            extended = getattr(method, "__smtp_syntax_extended__", None) or ""
            entries[verb] = HelpEntry(usage, extended)
        return entries

    def _help_verbs(self) -> tuple[str, ...]:
        verbs = []
        for verb, method in type(self)._commands.items():
            when = getattr(method, "__smtp_syntax_when__", None)
            if verb == "EXPN" or (when and not getattr(self, when, None)):
                continue
            verbs.append(verb)
        return tuple(sorted(verbs))

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

    # --- the public surface ---------------------------------------------------------------------

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

    @property
    def engine(self) -> ServerEngine[Session, Envelope]:
        """The protocol engine of this connection (once connected): its state, and the way to
        queue replies (``engine.reply()``, ``engine.send_status()``) from an extension."""
        if self._engine is None:
            raise RuntimeError("the connection is not made yet")
        return self._engine

    @property
    def session(self) -> Session | None:
        """The :class:`Session` of this connection (``None`` before it is made)."""
        return None if self._engine is None else self._engine.session

    @session.setter
    def session(self, value: Session) -> None:
        self.engine.session = value

    @property
    def envelope(self) -> Envelope | None:
        """The :class:`Envelope` of the transaction in progress (``None`` before connecting)."""
        return None if self._engine is None else self._engine.envelope

    @envelope.setter
    def envelope(self, value: Envelope) -> None:
        self.engine.envelope = value

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The task running user code for this connection, if any runs now."""
        return self._task

    def _create_session(self) -> Session:
        """Make the :class:`Session` of a new connection (override for a subclass of it)."""
        return Session(loop=self.loop)

    def _create_envelope(self) -> Envelope:
        """Make the :class:`Envelope` of a new transaction (override for a subclass of it)."""
        return Envelope()

    @property
    def _peer(self) -> PeerType:
        return None if self._engine is None else self._engine.session.peer

    # --- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """A client connected: start its session (or refuse it when the server is full)."""
        self.loop = loop = asyncio.get_running_loop()
        self._read_view = _thread_local("view", lambda: memoryview(bytearray(_READ_SIZE)))
        self.transport = transport
        peer = transport.get_extra_info("peername")
        tls = transport.get_extra_info("sslcontext") is not None
        engine = self._engine = ServerEngine(
            self._server.config,
            new_session=self._create_session,
            new_envelope=self._create_envelope,
            clock=loop.time,
            tls=tls,
            peer=peer,
            peer_host=peer[0] if isinstance(peer, tuple) and peer else None,
        )
        engine.session.peer = peer
        if tls:
            engine.session.ssl = self._tls_info(transport)
        tracker = self.connection_tracker
        if tracker is not None and not tracker._register(self):
            log.warning("%r refused: too many connections", peer)
            engine.refuse(R.TOO_MANY_CONNECTIONS)
            self._close()
            return
        self._batch = _thread_local("batch", _WriteBatch)
        self._batch.live += 1
        engine.start()
        if engine.closed:  # a PROXY header from an untrusted peer
            self._close()
            return
        self.flush()  # the greeting goes at once, never batched
        self._arm_timer()

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
        """Give what the client sent to the engine, and answer it if nothing else runs."""
        engine = self._engine
        if engine is None or self._closed:
            return
        engine.receive_data(data)
        if self._waiter is not None:
            self._wake()
        elif self._task is None:
            self._pump()
        elif not self._reading_paused and engine.buffered > _HIGH_WATER:
            # User code is busy (a slow hook, say): stop reading until it catches up.
            self._reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def eof_received(self) -> bool | None:
        """The client stopped sending: answer what is buffered, then close."""
        engine = self._engine
        if engine is not None:
            engine.receive_eof()
            if self._waiter is not None:
                self._wake()
            elif self._task is None and not self._closed:
                self._pump()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection is gone: free its slot and timer, and stop waiting for input."""
        self._closed = True
        if self._engine is not None:
            self._engine.close()
        batch, self._batch = self._batch, None
        if batch is not None:
            batch.live -= 1
        if exc is not None:
            log.info("%r connection lost: %s", self._peer, exc)
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

    # --- running the engine ---------------------------------------------------------------------

    def _pump(self) -> None:
        """Let the engine answer what it can, right here in the read callback; user code it
        asks for runs in a task (:meth:`_serve_requests`)."""
        engine = self.engine
        request = engine.next_request()
        if request is NEED_DATA:
            if engine.has_output:
                batch = self._batch
                if batch is not None and batch.live > 1:
                    batch.defer(self)
                else:
                    self.flush()
            if self._write_paused:
                self._spawn(None)  # the task waits for the client to catch up
            self._check_deadline()
        elif request is CLOSED:
            self._close()
        else:
            self._spawn(request)

    def _spawn(self, request: Request | None) -> None:
        """Go on as a task that serves ``request`` first and ends when the input runs dry.

        From Python 3.12 the task starts eagerly: a hook that answers at once is answered
        inside this very callback, with no extra turn of the event loop.
        """
        coro = self._serve_requests(request)
        if sys.version_info >= (3, 12):
            task = asyncio.Task(coro, loop=self.loop, eager_start=True)
        else:
            task = self.loop.create_task(coro)
        if not task.done():
            self._task = task

    async def _serve_requests(self, request: Request | None) -> None:
        engine = self.engine
        try:
            while not self._closed:
                if request is not None:
                    await self._serve_one(request)
                self._check_deadline()
                step = engine.next_request()
                if step is CLOSED:
                    break
                if step is not NEED_DATA:
                    request = step
                    continue
                request = None
                self.flush()
                if self._write_paused:
                    await self._drain()
                    continue
                self._task = None  # idle: the next read starts the next pass
                if self._reading_paused and self.transport is not None:
                    self._reading_paused = False
                    self.transport.resume_reading()  # type: ignore[attr-defined]
                return
        except asyncio.CancelledError:
            self._close()
            raise
        except Exception:
            log.exception("%r internal error", self._peer)
            engine.reply(R.INTERNAL_ERROR)
        self._close()

    async def _serve_one(self, request: Request) -> None:
        engine = self.engine
        try:
            result = await self._run_request(request)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if not self._closed:
                engine.fail(error)
            return
        if not self._closed:
            engine.resume(result)

    async def _run_request(self, request: Request) -> object:
        """Run what the engine asked for; its result."""
        match request:
            case CallHook(name=name, args=args):
                return await self._call_hook(name, args)
            case HandleError(error=error):
                hook = self._server.hooks.exception
                assert hook is not None
                return await _settle(hook(error))
            case CallLegacy(name=name):
                return await self._call_legacy(name)
            case RunCommand(verb=verb, arg=arg):
                await self._commands[verb](self, arg)
                return None
            case RunMechanism(mechanism=mechanism, args=args):
                return await self._server.mechanisms[mechanism](self, list(args))
            case Authenticate(mechanism=mechanism, auth_data=auth_data):
                return await self._authenticate(mechanism, auth_data)
            case StartTLS():
                return await self._upgrade()
        raise AssertionError(f"unknown request {request!r}")  # pragma: no cover

    async def _call_hook(self, name: str, args: tuple[Any, ...]) -> object:
        hooks = self._server.hooks
        hook: Callable[..., object] | None
        if name == "handle_EHLO":
            hook = hooks.ehlo if hooks.ehlo is not None else hooks.ehlo_legacy
        else:
            hook = getattr(hooks, _HOOK_ATTRS[name])
        assert hook is not None, name
        engine = self.engine
        return await _settle(hook(self, engine.session, engine.envelope, *args))

    async def _call_legacy(self, name: str) -> object:
        if name == "process_message":
            warnings.warn(
                "process_message is deprecated; use handle_DATA", DeprecationWarning, stacklevel=2
            )
            envelope = self.engine.envelope
            legacy = getattr(self.event_handler, "process_message")  # noqa: B009
            return await _settle(
                legacy(self._peer, envelope.mail_from, envelope.rcpt_tos, envelope.content)
            )
        hook = "handle_EHLO" if name == "ehlo_hook" else "handle_RSET"
        warnings.warn(
            f"SMTP.{name} is deprecated; use the {hook} handler hook",
            DeprecationWarning,
            stacklevel=2,
        )
        await getattr(self, name)()
        return None

    async def drive(self, steps: Generator[Step, Any, object] | None) -> object:
        """Run steps of the engine (from :meth:`ServerEngine.command`, say) to their end: serve
        each request, feed each wait with the next input event; what the steps return."""
        if steps is None:
            return None
        value: object = None
        error: Exception | None = None
        while True:
            try:
                step = steps.send(value) if error is None else steps.throw(error)
            except StopIteration as stop:
                return stop.value
            value, error = None, None
            if step is WAIT_EVENT:
                value = await self._next_event()
                continue
            try:
                value = await self._run_request(step)  # type: ignore[arg-type]
            except asyncio.CancelledError:
                raise
            except Exception as raised:
                error = raised

    async def _next_event(self) -> Event | None:
        """The next framed input event, for steps run by :meth:`drive`; ``None`` once the client
        is gone."""
        engine = self.engine
        while True:
            event = engine.next_input()
            if event is not NEED_DATA:
                return event
            if self._closed or engine.closed or engine.eof:
                return None
            self.flush()
            if self._write_paused:
                await self._drain()
                continue
            waiter = self._waiter = self.loop.create_future()
            engine.wait_on_client(True)
            try:
                await waiter
            finally:
                engine.wait_on_client(False)

    # --- output ---------------------------------------------------------------------------------

    def flush(self) -> None:
        """Write what the engine has queued."""
        engine = self._engine
        if engine is None or not engine.has_output:
            return
        data = engine.data_to_send()
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
        self.engine.send_line(status + b"\r\n")
        # Written now, not batched: hooks written for aiosmtpd may close the transport next.
        self.flush()
        if self._write_paused:
            await self._drain()

    async def _drain(self) -> None:
        self.flush()
        if self._write_paused and not self._closed:
            # A client that does not read its replies is idle, not a slow hook.
            engine = self.engine
            self._drain_waiter = self.loop.create_future()
            engine.wait_on_client(True)
            try:
                await self._drain_waiter
            finally:
                engine.wait_on_client(False)

    def close(self) -> None:
        """Send what is queued, then close the connection."""
        if self._engine is not None:
            self._engine.close()
        self._close()

    def _close(self) -> None:
        self.flush()
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

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _request_shutdown(self) -> None:
        engine = self._engine
        if engine is None:
            return
        engine.request_shutdown()
        if engine.closed and self._task is None:
            self._close()

    # --- the timer ------------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        when = self._timer_when = self.engine.next_deadline()
        self._timer = self.loop.call_at(when, self._on_timer)

    def _check_deadline(self) -> None:
        """The one timer only ever moves earlier here (for a DATA, BDAT or PROXY deadline);
        one that fires early finds out what is due then and re-arms itself."""
        deadline = self.engine.hard_deadline
        if deadline is not None and deadline < self._timer_when and not self._closed:
            if self._timer is not None:
                self._timer.cancel()
            self._arm_timer()

    def _on_timer(self) -> None:
        self._timer = None
        engine = self._engine
        if self._closed or engine is None:
            return
        expired = engine.expire()
        if expired is None:
            self._arm_timer()
            return
        if expired is Expiry.HOOK:
            log.error(
                "%r a handler hook did not answer within %s s", self._peer, self.limits.timeout
            )
        else:
            log.info("%r timed out", self._peer)
        self._close()
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    # --- STARTTLS -------------------------------------------------------------------------------

    async def _upgrade(self) -> Session | None:
        """The TLS handshake after STARTTLS; the TLS session's new :class:`Session`."""
        transport = self.transport
        assert transport is not None and self.tls_context is not None
        self.flush()
        # The handshake goes at the client's pace: the idle timeout governs it.
        self.engine.wait_on_client(True)
        try:
            new_transport = await self.loop.start_tls(
                transport,
                self,
                self.tls_context,
                server_side=True,
                ssl_handshake_timeout=min(_TLS_HANDSHAKE_TIMEOUT, self.limits.timeout),
            )
        except BaseException as error:  # CancelledError too: the timer may cut the handshake
            if not isinstance(error, asyncio.CancelledError):
                log.info("%r TLS handshake failed: %s", self._peer, error)
            self._closed = True
            transport.abort()  # type: ignore[attr-defined]
            # asyncio does not report connection_lost for a handshake that never completed:
            # release the connection slot and the timer here.
            self.connection_lost(None)
            if isinstance(error, asyncio.CancelledError):
                raise
            return None
        if new_transport is None:
            self._close()
            return None
        # No clear of the input here: what arrives now was decrypted, so it was sent inside TLS
        # (a client may send its first command right behind its Finished message).
        self.transport = new_transport
        old = self.engine.session
        session = self._create_session()
        session.peer = old.peer
        session.proxy_data = old.proxy_data
        session.ssl = self._tls_info(new_transport)
        return session

    @staticmethod
    def _tls_info(transport: asyncio.BaseTransport) -> dict[str, Any]:
        ssl_object = transport.get_extra_info("ssl_object")
        return {
            "ssl_object": ssl_object,
            "sslcontext": transport.get_extra_info("sslcontext"),
            "peercert": transport.get_extra_info("peercert"),
            "cipher": transport.get_extra_info("cipher"),
            "compression": transport.get_extra_info("compression"),
            "peername": transport.get_extra_info("peername"),
            "sockname": transport.get_extra_info("sockname"),
            "version": ssl_object.version() if ssl_object is not None else None,
        }

    # --- AUTH -----------------------------------------------------------------------------------

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
        engine = self.engine
        engine.start_challenge(challenge, encode=encode_to_b64)
        event = await self._next_event()
        if log_client_response and event is not None:
            log.debug("%r AUTH response received", self._peer)
        return engine.challenge_answer(event)

    async def _authenticate(self, mechanism: str, auth_data: object) -> AuthResult:
        server = self._server
        engine = self.engine
        if server.authenticator is not None:
            result = await _settle(
                server.authenticator(self, engine.session, engine.envelope, mechanism, auth_data)
            )
            if not isinstance(result, AuthResult):
                raise TypeError(f"authenticator returned {type(result).__name__}, not AuthResult")
            return result
        if server.auth_callback is not None and isinstance(auth_data, LoginPassword):
            ok = server.auth_callback(mechanism, auth_data.login, auth_data.password)
            return AuthResult(success=bool(ok), handled=False, auth_data=auth_data)
        return AuthResult(success=False, handled=False)

    async def auth_PLAIN(self, args: list[str]) -> object:
        """The PLAIN mechanism (RFC 4616); the authorization identity is ignored."""
        return await self.drive(self.engine.auth_plain(args))

    async def auth_LOGIN(self, args: list[str]) -> object:
        """The LOGIN mechanism (draft-murchison-sasl-login)."""
        return await self.drive(self.engine.auth_login(args))

    @auth_mechanism("CRAM-MD5")
    async def auth_CRAM__MD5(self, args: list[str]) -> object:
        """The CRAM-MD5 mechanism (RFC 2195): the authenticator gets a
        :class:`~typed_smtpd.session.CramMD5Response` and checks a password with ``verify()``."""
        return await self.drive(self.engine.auth_cram_md5(args))

    # --- the commands: each is the engine's; these run it for subclasses that call them ---------

    async def _builtin(self, verb: str, arg: str | None) -> None:
        await self.drive(self.engine.command(verb, arg))

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str | None) -> None:
        """HELO: greet without ESMTP."""
        await self._builtin("HELO", hostname)

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str | None) -> None:
        """EHLO: greet with ESMTP; the reply lists the extensions."""
        await self._builtin("EHLO", hostname)

    @syntax("NOOP [ignored]")
    async def smtp_NOOP(self, arg: str | None) -> None:
        """NOOP: do nothing, successfully."""
        await self._builtin("NOOP", arg)

    @syntax("QUIT")
    async def smtp_QUIT(self, arg: str | None) -> None:
        """QUIT: say goodbye and close."""
        await self._builtin("QUIT", arg)

    @syntax("RSET")
    async def smtp_RSET(self, arg: str | None) -> None:
        """RSET: abandon the transaction."""
        await self._builtin("RSET", arg)

    @syntax("VRFY <address>")
    async def smtp_VRFY(self, arg: str | None) -> None:
        """VRFY: never verifies, as recommended (RFC 5321 section 7.3)."""
        await self._builtin("VRFY", arg)

    async def smtp_EXPN(self, arg: str | None) -> None:
        """EXPN: not implemented (RFC 5321 section 7.3 allows refusing it)."""
        await self._builtin("EXPN", arg)

    @syntax("HELP [command]")
    async def smtp_HELP(self, arg: str | None) -> None:
        """HELP: list the commands, or show one command's syntax."""
        await self._builtin("HELP", arg)

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        """MAIL FROM: open a transaction."""
        await self._builtin("MAIL", arg)

    @syntax("RCPT TO: <address>", extended=" [SP <rcpt-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        """RCPT TO: add a recipient."""
        await self._builtin("RCPT", arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        """DATA: receive the message, up to CRLF.CRLF."""
        await self._builtin("DATA", arg)

    @syntax("BDAT <chunk-size> [LAST]")
    async def smtp_BDAT(self, arg: str | None) -> None:
        """BDAT: receive one chunk of the message (RFC 3030)."""
        await self._builtin("BDAT", arg)

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str | None) -> None:
        """STARTTLS: upgrade the connection to TLS (RFC 3207)."""
        await self._builtin("STARTTLS", arg)

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str | None) -> None:
        """AUTH: authenticate with a SASL mechanism (RFC 4954)."""
        await self._builtin("AUTH", arg)


async def _settle(result: object) -> Any:
    """``result``, awaited if it is awaitable (hooks may be sync or async)."""
    if inspect.isawaitable(result):
        return await result
    return result


SMTP._collect_commands()
