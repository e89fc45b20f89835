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
import logging
import ssl
import sys
from collections.abc import Generator, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Final, cast

from typed_smtpd._connections import (
    HIGH_WATER,
    TLS_HANDSHAKE_TIMEOUT,
    ConnectionTracker,
    loop_clock,
    read_buffer,
    tls_info,
    unsent,
    write_batch,
)
from typed_smtpd._settings import (
    CALL_LIMIT_DEFAULT,
    IDENT,
    AuthCallbackType,
    AuthenticatorType,
    CommandMethod,
    collect_commands,
    fqdn,
    shared_settings,
    syntax,
)
from typed_smtpd.commands import BuiltinCommands
from typed_smtpd.hooks import auth_mechanism
from typed_smtpd.monitoring import ConnectionMonitor
from typed_smtpd.proto import replies as R
from typed_smtpd.proto.engine import (
    ALLOWED_BEFORE_STARTTLS,
    CLOSED,
    WAIT_EVENT,
    Expiry,
    Request,
    ServerEngine,
    StartTLS,
    Step,
    sanitize,
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
from typed_smtpd.session import (
    MISSING,
    AuthResult,
    Envelope,
    LoginPassword,
    PeerType,
    Session,
)

if TYPE_CHECKING:
    from typed_smtpd._connections import WriteBatch

__all__ = [
    "ALLOWED_BEFORE_STARTTLS",
    "BOGUS_LIMIT",
    "CALL_LIMIT_DEFAULT",
    "CLOSE_GRACE",
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

__ident__: Final = IDENT
#: Seconds a closed connection's last replies get to reach a client that is not reading.
CLOSE_GRACE: Final = 2.0


class TLSSetupException(Exception):
    """The TLS handshake after STARTTLS failed; the connection is closed."""


class SMTP(BuiltinCommands, asyncio.BufferedProtocol):
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
        "_monitor",
        "_read_view",
        "_reading_paused",
        "_server",
        "_task",
        "_timer",
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

    def __init_subclass__(cls, *, lmtp: bool | None = None, **kwargs: Any) -> None:
        """Collect a subclass's commands; ``class LMTP(SMTP, lmtp=True)`` speaks LMTP."""
        super().__init_subclass__(**kwargs)
        cls._commands, cls._server_mechanisms = collect_commands(cls)
        if lmtp is not None:
            cls._lmtp = lmtp

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
        bogus_limit: int | None = None,
        data_timeout: float = DATA_TIMEOUT,
        max_auth_failures: int = MAX_AUTH_FAILURES,
        proxy_trusted_networks: Iterable[str] | None = None,
        enhanced_status_codes: bool = True,
        replies: R.ReplyStyle = "typed",
        enable_CRAM_MD5: bool = False,
        connection_tracker: ConnectionTracker | None = None,
    ) -> None:
        options = locals()  # the settings take the arguments that configure the server
        self.event_handler: object = handler
        self.data_size_limit: int | None = data_size_limit
        self.enable_SMTPUTF8: bool = enable_SMTPUTF8
        self.hostname: str = fqdn() if hostname is None else hostname
        self.tls_context: ssl.SSLContext | None = tls_context
        self.require_starttls: bool = tls_context is not None and require_starttls
        self.connection_tracker: ConnectionTracker | None = connection_tracker
        cls = type(self)
        self._server = server = shared_settings(
            self,
            handler,
            options,
            commands=cls._commands,
            mechanisms=cls._server_mechanisms,
            lmtp=cls._lmtp,
        )
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
        self._batch: WriteBatch | None = None
        self._read_view = read_buffer()  # implicit TLS may read before connection_made()

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
        """Make the :class:`Envelope` of a transaction when first asked for (override for a
        subclass of it)."""
        return Envelope()

    # --- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """A client connected: start its session (or refuse it when the server is full)."""
        self.loop = loop = asyncio.get_running_loop()
        self._read_view = read_buffer()
        self.transport = transport
        peer = transport.get_extra_info("peername")
        tls = transport.get_extra_info("sslcontext") is not None
        tracker = self.connection_tracker
        stats = tracker.stats if tracker is not None else self._server.stats
        clients = tracker.clients if tracker is not None else None
        clock = loop_clock(loop)
        monitor = self._monitor = ConnectionMonitor(stats, clock, clients)
        make = self._create_envelope  # the class itself unless replaced: no bound method kept
        make = Envelope if getattr(make, "__func__", None) is SMTP._create_envelope else make
        engine = monitor.engine = self._engine = ServerEngine(
            self._server.config,
            new_session=self._create_session,
            new_envelope=make,
            clock=clock,
            tls=tls,
            peer=peer,
            peer_host=peer[0] if isinstance(peer, tuple) and peer else None,
            monitor=monitor,
        )
        engine.session.peer = peer
        if tracker is not None and not tracker._register(self):
            monitor.turned_away(peer)
            engine.refuse(R.TOO_MANY_CONNECTIONS)
            self.close()
            return
        monitor.opened()
        if tls:
            engine.session.ssl = info = tls_info(transport)
            monitor.tls(info)
        self._batch = write_batch()
        self._batch.live += 1
        engine.start()
        if engine.closed:  # a PROXY header from an untrusted peer
            self.close()
            return
        self.flush()  # the greeting goes at once, never batched
        self._arm_timer()

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the event loop reads the next bytes to: a buffer shared by the thread's
        connections (this call and buffer_updated() come back to back), so that a read makes no
        bytes object and an idle connection holds no buffer."""
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
        self._monitor.stats.bytes_received += len(data)
        if self._waiter is not None:
            self._wake()
        elif self._task is None:
            self._pump()
        elif not self._reading_paused and engine.buffered > HIGH_WATER:
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
        engine, vanished, self._closed = self._engine, not self._closed, True
        if engine is not None:  # the client left if it closed, broke off or hung up first
            engine.close()
            self._monitor.closed(vanished=vanished or engine.eof or exc is not None, error=exc)
        batch, self._batch = self._batch, None
        if batch is not None:
            batch.live -= 1
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
        engine = self._engine
        assert engine is not None
        request = engine.next_request()
        if request is NEED_DATA:
            batch = self._batch
            if batch is None or batch.live < 2:
                self.flush()
            elif engine.has_output:
                batch.defer(self)
            if self._write_paused:
                self._spawn(None)  # the task waits for the client to catch up
            if engine.hard_deadline is not None:
                self._check_deadline()
        elif request is CLOSED:
            self.close()
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
                    try:
                        result = await self._run_request(request)
                    except Exception as error:
                        if engine.closed:  # the connection went away meanwhile
                            break
                        engine.fail(error)
                    else:
                        if engine.closed:
                            break
                        engine.resume(result)
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
            self.close()
            raise
        except Exception:
            log.exception("%r internal error", engine.peer)
            engine.reply(R.INTERNAL_ERROR)
        self.close()

    async def _run_request(self, request: Request) -> object:
        """Run what the engine asked for; its result."""
        if isinstance(request, StartTLS):
            return await self._upgrade()
        return await self._server.run(self, request)

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
        """The next framed input event, for :meth:`drive`; ``None`` once the client left."""
        engine = self.engine
        while True:
            event = engine.next_input()
            if event is not NEED_DATA:
                return event
            if self._closed or engine.closed or engine.eof:
                return None
            await self.wait_for_input()

    async def wait_for_input(self) -> None:
        """Send what is queued, then wait for the client to send more (or leave, or catch up)."""
        self.flush()
        if self._write_paused:
            await self._drain()
            return
        if self._closed:
            return
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()  # type: ignore[attr-defined]
        waiter = self._waiter = self.loop.create_future()
        self.engine.wait_on_client(True)
        try:
            await waiter
        finally:
            self.engine.wait_on_client(False)

    # --- output ---------------------------------------------------------------------------------

    def flush(self) -> None:
        """Write what the engine has queued."""
        engine = self._engine
        data = engine.data_to_send() if engine is not None else None
        if not data:
            return
        if log.isEnabledFor(logging.DEBUG):
            self._monitor.sent(data)
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)  # type: ignore[attr-defined]

    async def push(self, status: bytes | str) -> None:
        """Send one reply line (CRLF is added). ``str`` is encoded as ASCII, or UTF-8 when
        SMTPUTF8 is enabled; a line holding CR or LF is refused with :class:`ValueError`."""
        if isinstance(status, str):
            status = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        if 13 in status or 10 in status:  # CR, LF (integer needles: no exception inside)
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
        """Send what is queued, then close the connection; a client that does not read what
        is left is cut off after :data:`CLOSE_GRACE` seconds, and its slot is free at once."""
        if self._engine is not None:
            self._engine.close()
        self.flush()
        self._closed = True
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()
            if unsent(transport):
                self.loop.call_later(CLOSE_GRACE, transport.abort)  # type: ignore[attr-defined]
                if self.connection_tracker is not None:
                    self.connection_tracker._unregister(self)
        self._wake()

    def abort(self) -> None:
        """Drop the connection at once, without sending what is queued."""
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

    def request_shutdown(self) -> None:
        """The server is stopping: close now if idle, else after the current command or
        message (with ``421``)."""
        engine = self._engine
        if engine is None:
            return
        engine.request_shutdown()
        if engine.closed and self._task is None:
            self.close()

    # --- the timer ------------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        self._timer = self.loop.call_at(self.engine.next_deadline(), self._on_timer)

    def _check_deadline(self) -> None:
        """The one timer only ever moves earlier here (for a DATA, BDAT or PROXY deadline);
        one that fires early finds out what is due then and re-arms itself."""
        deadline, timer = self.engine.hard_deadline, self._timer
        if deadline is not None and timer is not None and deadline < timer.when():
            timer.cancel()
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
            log.error("%r a handler hook did not answer in %s s", engine.peer, self.limits.timeout)
        self._monitor.timed_out("hook" if expired is Expiry.HOOK else "idle")
        self.close()
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
                cast("asyncio.WriteTransport", transport),  # as every stream transport is
                self,
                self.tls_context,
                server_side=True,
                ssl_handshake_timeout=min(TLS_HANDSHAKE_TIMEOUT, self.limits.timeout),
            )
        except BaseException as error:  # CancelledError too: the timer may cut the handshake
            if not isinstance(error, asyncio.CancelledError):
                self._monitor.tls_failed(error)
            self._closed = True
            transport.abort()  # type: ignore[attr-defined]
            # asyncio does not report connection_lost for a handshake that never completed:
            # release the connection slot and the timer here.
            self.connection_lost(None)
            if isinstance(error, asyncio.CancelledError):
                raise
            return None
        if new_transport is None:
            self.close()
            return None
        # No clear of the input here: what arrives now was decrypted, so it was sent inside TLS
        # (a client may send its first command right behind its Finished message).
        self.transport = new_transport
        old = self.engine.session
        session = self._create_session()
        session.peer = old.peer
        session.proxy_data = old.proxy_data
        session.ssl = info = tls_info(new_transport)
        self._monitor.tls(info)
        return session


SMTP._commands, SMTP._server_mechanisms = collect_commands(SMTP)
