"""The connections of a server: its connection cap, and the batching of its replies.

:class:`ConnectionTracker` counts the open connections of one listening server and closes them
on shutdown; :class:`WriteBatch` writes the replies of a thread's connections together once per
turn of the event loop. Both drive :class:`~typed_smtpd.smtp.SMTP` through its public methods.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from typed_smtpd.monitoring import ServerStats
from typed_smtpd.proto.clients import ClientLimits, ClientTable

if TYPE_CHECKING:
    from typed_smtpd.smtp import SMTP

__all__ = [
    "HIGH_WATER",
    "READ_SIZE",
    "TLS_BY_HAND",
    "TLS_HANDSHAKE_TIMEOUT",
    "ConnectionTracker",
    "ImplicitTLS",
    "WriteBatch",
    "implicit_tls",
    "loop_clock",
    "read_buffer",
    "thread_local",
    "tls_info",
    "tls_listen_options",
    "unsent",
    "write_batch",
]

log: logging.Logger = logging.getLogger("mail.log")
T = TypeVar("T")
_THREAD_STATE = threading.local()
#: The size of a thread's read buffer: what asyncio itself asks of one ``recv()``.
READ_SIZE: Final = 1 << 18
#: A receive buffer larger than this while user code runs (a slow hook, a streaming hook that
#: does not read) pauses reading from the client: one read more is the most a connection holds.
HIGH_WATER: Final = 1 << 18
#: Whether the server runs implicit-TLS handshakes itself (:class:`ImplicitTLS`): from Python
#: 3.11, where a paused transport stays paused until ``start_tls()`` takes it over. On 3.10
#: asyncio runs them (bounded by the same timeout, but counted by the cap only once done).
TLS_BY_HAND: Final = sys.version_info >= (3, 11)
#: The implicit-TLS handshakes under way in this process.
_HANDSHAKES: Final[set[asyncio.Task[None]]] = set()
#: The longest a TLS handshake may take (after STARTTLS, or on an implicit-TLS port).
TLS_HANDSHAKE_TIMEOUT: Final = 30.0
#: The transport's extra information copied into a TLS session's ``ssl`` record.
_TLS_EXTRA: Final = ("sslcontext", "peercert", "cipher", "compression", "peername", "sockname")


class ConnectionTracker:
    """The open connections of one listening server, and its connection cap.

    A controller creates one and gives it to every :class:`SMTP` it builds; a connection past
    ``max_connections`` is answered ``421 4.7.0`` and closed, and so is one from an address past
    its limits (``client_limits``: a :class:`~typed_smtpd.proto.clients.ClientLimits`; the
    defaults unless given).
    """

    def __init__(
        self, max_connections: int | None = None, client_limits: ClientLimits | None = None
    ) -> None:
        if max_connections is not None and max_connections < 1:
            raise ValueError("max_connections must be at least 1 (or None for no cap)")
        self.max_connections: int | None = max_connections
        #: The live counters of the server's connections.
        self.stats: ServerStats = ServerStats()
        #: The counts behind the limits per client address (``client_limits``, or the defaults).
        self.clients: ClientTable = ClientTable(client_limits)
        self._connections: set[SMTP] = set()
        self._empty: asyncio.Event | None = None
        #: Implicit-TLS connections whose handshake is under way (they count toward the cap).
        self.handshaking: int = 0

    @property
    def count(self) -> int:
        """How many connections are open."""
        return len(self._connections)

    @property
    def full(self) -> bool:
        """Whether the cap is reached (handshakes under way count)."""
        cap = self.max_connections
        return cap is not None and len(self._connections) + self.handshaking >= cap

    def _register(self, connection: SMTP) -> bool:
        if self.full:
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
            connection.request_shutdown()
        if self._connections:
            self._empty = asyncio.Event()
            try:
                await asyncio.wait_for(self._empty.wait(), timeout=max(grace_period, 0.0))
            except asyncio.TimeoutError:
                pass
        for connection in list(self._connections):
            connection.abort()
        self._connections.clear()


class ImplicitTLS(asyncio.Protocol):
    """One connection to an implicit-TLS (SMTPS) port, until its TLS handshake is over.

    The server listens in plain TCP and runs the handshake itself, so that a connection counts
    toward the cap from its first moment (one past the cap is dropped before any handshake),
    and the handshake is bounded by the server's own ``timeout`` (at most
    :data:`TLS_HANDSHAKE_TIMEOUT`), not asyncio's 60 s. Then the :class:`SMTP` instance takes
    over the TLS transport as its connection.
    """

    def __init__(self, smtp: SMTP, context: ssl.SSLContext) -> None:
        self.smtp = smtp
        self.context = context
        self.tracker = smtp.connection_tracker
        #: What the client sent inside TLS before the SMTP instance took over (a command that
        #: came right behind the handshake), handed to it then.
        self.early: list[bytes] = []
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tracker = self.tracker
        if tracker is not None and tracker.full:
            peer = transport.get_extra_info("peername")
            log.warning("%r refused before its TLS handshake: too many connections", peer)
            tracker.stats.connections_refused += 1
            transport.abort()  # type: ignore[attr-defined]
            return
        # Nothing may be read before start_tls() takes over: the ClientHello is the handshake's
        # (start_tls() resumes reading itself).
        transport.pause_reading()  # type: ignore[attr-defined]
        if tracker is not None:
            tracker.handshaking += 1
        task = asyncio.get_running_loop().create_task(self._handshake(transport))
        _HANDSHAKES.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(_HANDSHAKES.discard)

    async def _handshake(self, transport: asyncio.BaseTransport) -> None:
        loop = asyncio.get_running_loop()
        smtp = self.smtp
        timeout = min(TLS_HANDSHAKE_TIMEOUT, smtp.limits.timeout)
        try:
            tls = await loop.start_tls(
                cast("asyncio.WriteTransport", transport),  # as every stream transport is
                self,  # until the SMTP instance takes over: it keeps what arrives early
                self.context,
                server_side=True,
                ssl_handshake_timeout=timeout,
            )
        except (OSError, ssl.SSLError, ConnectionError, asyncio.TimeoutError) as error:
            log.info("%r TLS handshake failed: %r", transport.get_extra_info("peername"), error)
            if self.tracker is not None:
                self.tracker.stats.tls_failures += 1
            transport.abort()  # type: ignore[attr-defined]
            return
        finally:
            if self.tracker is not None:
                self.tracker.handshaking -= 1
        if tls is None or self.lost:
            transport.abort()  # type: ignore[attr-defined]
            return
        tls.set_protocol(smtp)
        smtp.connection_made(tls)
        for data in self.early:
            smtp.data_received(data)
        self.early.clear()

    def data_received(self, data: bytes) -> None:
        """Decrypted data that arrived before the SMTP instance took over (a command right
        behind the handshake), kept for it. Nothing arrives in clear: reading is paused until
        the handshake starts."""
        self.early.append(bytes(data))

    def connection_lost(self, exc: Exception | None) -> None:
        """The client left before (or during) the handshake: the task sees it."""
        self.lost = True


class WriteBatch:
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
                session = connection.session
                log.exception("%r could not write its replies", session and session.peer)
                connection.abort()


def thread_local(name: str, make: Callable[[], T]) -> T:
    """The value ``name`` of the running thread, made by ``make`` on first use."""
    value = getattr(_THREAD_STATE, name, None)
    if value is None:
        value = make()
        setattr(_THREAD_STATE, name, value)
    return cast(T, value)


def tls_info(transport: asyncio.BaseTransport) -> dict[str, Any]:
    """What :attr:`Session.ssl <typed_smtpd.session.Session.ssl>` holds for a TLS transport."""
    ssl_object = transport.get_extra_info("ssl_object")
    info = {name: transport.get_extra_info(name) for name in _TLS_EXTRA}
    info["ssl_object"] = ssl_object
    info["version"] = ssl_object.version() if ssl_object is not None else None
    return info


def implicit_tls(protocol: SMTP, context: ssl.SSLContext | None) -> asyncio.BaseProtocol:
    """What a listener's protocol factory returns for ``protocol``: itself, or, on an
    implicit-TLS port, the :class:`ImplicitTLS` that runs its handshake first."""
    if context is None or not TLS_BY_HAND:
        return protocol
    return ImplicitTLS(protocol, context)


def tls_listen_options(context: ssl.SSLContext | None, timeout: float) -> dict[str, Any]:
    """Keyword arguments of ``create_server()`` for a listener with ``context``: none when the
    server runs the handshakes itself (or there is no TLS), else asyncio's, with the handshake
    bounded by ``timeout`` and :data:`TLS_HANDSHAKE_TIMEOUT`."""
    if context is None or TLS_BY_HAND:
        return {}
    return {"ssl": context, "ssl_handshake_timeout": min(TLS_HANDSHAKE_TIMEOUT, timeout)}


def unsent(transport: asyncio.BaseTransport) -> int:
    """Octets written to ``transport`` that the client has not taken yet (0 if unknown)."""
    try:
        return transport.get_write_buffer_size()  # type: ignore[attr-defined, no-any-return]
    except (AttributeError, NotImplementedError):
        return 0


def loop_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """What reads ``loop``'s clock: ``time.monotonic`` itself when ``loop.time()`` is asyncio's
    own (which returns just that), else ``loop.time`` (uvloop's, a test's fake clock).

    The engine reads the clock at every read; calling ``time.monotonic`` directly saves a
    Python frame each time on asyncio's loops.
    """
    patched = "time" in getattr(loop, "__dict__", ())
    if type(loop).time is asyncio.BaseEventLoop.time and not patched:
        return time.monotonic
    return loop.time


def read_buffer() -> memoryview:
    """The running thread's read buffer, into which the event loop reads for every connection
    of the thread (its reads are handed on before the next one starts)."""
    return thread_local("view", lambda: memoryview(bytearray(READ_SIZE)))


def write_batch() -> WriteBatch:
    """The running thread's :class:`WriteBatch`."""
    return thread_local("batch", WriteBatch)
