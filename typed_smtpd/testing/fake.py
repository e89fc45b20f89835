"""The in-memory fake server: the real engine over in-memory streams.

What lives here: :class:`FakeSMTPServer`, which runs the real :class:`~typed_smtpd.smtp.SMTP`
(or :class:`~typed_smtpd.lmtp.LMTP`, or a subclass) with all its parsing, sequencing, hooks,
limits, AUTH and STARTTLS, connected to :class:`FakeClient` through :class:`MemoryTransport`: no
socket, no port, no thread, no sleep; and :class:`SocketpairSMTPServer`, the same server for
synchronous clients such as :mod:`smtplib`, reached through :func:`socket.socketpair` (a
connected pair of sockets, not a listening port) with the event loop in a background thread.

How STARTTLS works without sockets: :meth:`asyncio.loop.start_tls` accepts any transport marked
``_start_tls_compatible``, which :class:`MemoryTransport` is; the client does its side of TLS by
hand with :class:`ssl.MemoryBIO` (see :mod:`typed_smtpd.testing.client`). Bytes travel through
memory in both directions, encrypted, exactly as they would over TCP.

What must not live here: anything that opens a listening socket, and imports of hypothesis or
pytest.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import smtplib
import socket
import ssl
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Protocol

from typing_extensions import Self, Unpack

from typed_smtpd.options import FakeServerOptions
from typed_smtpd.smtp import SMTP, ConnectionTracker
from typed_smtpd.testing.client import (
    DEFAULT_TIMEOUT,
    SMTPTestClient,
    TranscriptEntry,
    format_transcript,
    insecure_client_context,
)
from typed_smtpd.testing.handlers import ReceivedMessage, RecordingHandler, server_class_for
from typed_smtpd.testing.intercept import IMPLICIT_TLS_PORT, Interception, Target

__all__ = [
    "DEFAULT_PEER",
    "DEFAULT_SOCKNAME",
    "ClientSink",
    "FakeClient",
    "FakeSMTPServer",
    "MemoryTransport",
    "SocketpairSMTPServer",
]

#: The client address the fake reports as ``peername`` unless told otherwise.
DEFAULT_PEER: Final = ("127.0.0.1", 54321)
#: The server address the fake reports as ``sockname``.
DEFAULT_SOCKNAME: Final = ("127.0.0.1", 25)
#: The name the fake server announces unless ``hostname=`` is given (no DNS lookup).
_FAKE_HOSTNAME: Final = "fake-smtpd.test"
_STOP_TIMEOUT: Final = 5.0


def feed_protocol(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Deliver ``data`` to a streaming or a buffered protocol."""
    if isinstance(protocol, asyncio.BufferedProtocol):
        view = memoryview(data)
        while view:
            buffer = memoryview(protocol.get_buffer(len(view)))
            count = min(len(buffer), len(view))
            if count == 0:
                raise RuntimeError("get_buffer() returned an empty buffer")
            buffer[:count] = view[:count]
            protocol.buffer_updated(count)
            view = view[count:]
    else:
        assert isinstance(protocol, asyncio.Protocol)
        protocol.data_received(data)


class ClientSink(Protocol):
    """Where a :class:`MemoryTransport` puts what the server writes: the client's end."""

    def feed(self, data: bytes) -> None:
        """The server wrote ``data``."""

    def feed_eof(self) -> None:
        """The server closed its side (or the connection)."""


class _ClientEnd:
    """The client's end of the memory pipe: what the server wrote, waiting to be read."""

    __slots__ = ("buffer", "eof", "on_read", "waiter")

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.eof = False
        self.waiter: asyncio.Future[None] | None = None
        self.on_read: Callable[[int], None] | None = None

    def _wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def feed(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def feed_eof(self) -> None:
        self.eof = True
        self._wake()

    async def read(self) -> bytes:
        while not self.buffer and not self.eof:
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        data = bytes(self.buffer)
        self.buffer.clear()
        if self.on_read is not None and data:
            self.on_read(len(data))
        return data


class MemoryTransport(asyncio.Transport):
    """The server side of an in-memory connection: an :class:`asyncio.Transport` with no socket.

    The server's writes go straight to the client's buffer; the client's bytes reach the
    protocol through ``loop.call_soon`` (never from inside a protocol callback), in order, and
    only while reading is not paused. ``get_extra_info("peername")`` and ``"sockname"`` report the
    addresses given. :attr:`writes` counts the server's ``write()`` calls (handy for tests of
    batching or throttling).

    Flow control, as a socket transport does it: with ``high_water`` set, once more than that many
    octets the server wrote are unread by the client, the transport calls the protocol's
    ``pause_writing()``; when the client has read enough to bring them down to ``low_water``
    (default: a quarter of ``high_water``), ``resume_writing()``. Without it (the default) writes
    never push back. ``client`` replaces the client's end (anything with ``feed`` and
    ``feed_eof``, see :class:`ClientSink`); such an end reports what it consumed through
    :meth:`client_consumed`.
    """

    _start_tls_compatible = True

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol: asyncio.BaseProtocol,
        *,
        peername: object = DEFAULT_PEER,
        sockname: object = DEFAULT_SOCKNAME,
        extra: dict[str, object] | None = None,
        high_water: int | None = None,
        low_water: int | None = None,
        client: ClientSink | None = None,
    ) -> None:
        super().__init__({"peername": peername, "sockname": sockname, **(extra or {})})
        self._loop = loop
        self._protocol = protocol
        self._client = _ClientEnd()
        self._client.on_read = self.client_consumed
        self._sink: ClientSink = self._client if client is None else client
        self._high_water: int | None = None
        self._low_water = 0
        self._unread = 0
        self._writing_paused = False
        self.set_write_buffer_limits(high_water, low_water)
        self._incoming: collections.deque[bytes] = collections.deque()
        self._incoming_eof = False
        self._reading = True
        self._closing = False
        self._lost = False
        self._scheduled = False
        self.writes: int = 0
        """How many times the server called :meth:`write` (or :meth:`writelines`)."""

    # --- asyncio.Transport (the server's side) --------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Hand ``data`` to the client."""
        if self._closing:
            return
        self.writes += 1
        self._unread += len(data)
        self._sink.feed(bytes(data))
        high = self._high_water
        if high is not None and not self._writing_paused and self._unread > high:
            self._writing_paused = True
            self._protocol.pause_writing()

    def client_consumed(self, count: int) -> None:
        """The client read ``count`` octets of what the server wrote: resume the server's writes
        once no more than ``low_water`` octets are left unread."""
        self._unread = max(0, self._unread - count)
        if self._writing_paused and self._unread <= self._low_water:
            self._writing_paused = False
            if not self._lost:
                self._protocol.resume_writing()

    @property
    def writing_paused(self) -> bool:
        """Whether the protocol was told to pause writing and not yet to resume."""
        return self._writing_paused

    def writelines(self, list_of_data: Any) -> None:
        """Hand every buffer to the client, as one write."""
        self.write(b"".join(bytes(item) for item in list_of_data))

    def write_eof(self) -> None:
        """Half-close: the client sees end of stream."""
        self._sink.feed_eof()

    def can_write_eof(self) -> bool:
        """Half-close is supported."""
        return True

    def close(self) -> None:
        """Close: the client sees end of stream, the protocol gets ``connection_lost(None)``."""
        self._force_close(None)

    def abort(self) -> None:
        """Close at once (there is never unsent data in memory)."""
        self._force_close(None)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._closing:
            return
        self._closing = True
        self._incoming.clear()
        self._sink.feed_eof()
        self._loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._protocol.connection_lost(exc)  # type: ignore[arg-type]

    def is_closing(self) -> bool:
        """True once closed."""
        return self._closing

    def pause_reading(self) -> None:
        """Hold the client's bytes until :meth:`resume_reading`."""
        self._reading = False

    def resume_reading(self) -> None:
        """Deliver held bytes again."""
        if not self._reading:
            self._reading = True
            self._schedule()

    def is_reading(self) -> bool:
        """Whether the client's bytes are delivered."""
        return self._reading and not self._closing

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Replace the protocol (``loop.start_tls`` does this)."""
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The protocol receiving the client's bytes."""
        return self._protocol

    def get_write_buffer_size(self) -> int:
        """With flow control, the octets written and not yet read by the client; else 0."""
        return 0 if self._high_water is None else self._unread

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """``(low, high)``; ``(0, 0)`` without flow control."""
        return (0, 0) if self._high_water is None else (self._low_water, self._high_water)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Switch flow control on at ``high`` unread octets (``None``: off, as by default);
        writes resume at ``low`` (default ``high // 4``)."""
        if high is None:
            if low is not None:
                raise ValueError("low_water needs high_water")
            self._high_water, self._low_water = None, 0
            return
        low = high // 4 if low is None else low
        if not 0 <= low <= high:
            raise ValueError(f"need 0 <= low_water <= high_water, not {low} and {high}")
        self._high_water, self._low_water = high, low

    # --- the client's side ----------------------------------------------------------------------

    def client_write(self, data: bytes) -> None:
        """The client sent ``data`` (call it in the transport's event loop)."""
        self._client_write(data)

    def client_eof(self) -> None:
        """The client closed its sending side (call it in the transport's event loop)."""
        self._client_eof()

    def _client_write(self, data: bytes) -> None:
        if self._closing or self._incoming_eof:
            return
        self._incoming.append(data)
        self._schedule()

    def _client_eof(self) -> None:
        if self._closing or self._incoming_eof:
            return
        self._incoming_eof = True
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and not self._closing:
            self._scheduled = True
            self._loop.call_soon(self._deliver)

    def _deliver(self) -> None:
        # One client write per loop iteration, as separate TCP segments would arrive: whatever
        # a protocol callback schedules (a task waking up after a TLS handshake) runs before
        # the next write is delivered.
        self._scheduled = False
        if self._reading and not self._closing and self._incoming:
            feed_protocol(self._protocol, self._incoming.popleft())
            if self._incoming or self._incoming_eof:
                self._schedule()
            return
        if self._incoming_eof and not self._incoming and self._reading and not self._closing:
            self._incoming_eof = False
            keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
            if not keep_open:
                self.close()


class FakeClient(SMTPTestClient):
    """A test client connected to a :class:`FakeSMTPServer` through memory.

    All command methods come from :class:`~typed_smtpd.testing.client.SMTPTestClient`; the
    greeting is read before the first command (or by ``async with``/:meth:`read_greeting`).
    """

    def __init__(
        self,
        transport: MemoryTransport,
        protocol: SMTP,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transcript: list[TranscriptEntry] | None = None,
        server_hostname: str = "localhost",
    ) -> None:
        super().__init__(timeout=timeout, transcript=transcript, server_hostname=server_hostname)
        self.transport = transport
        """The server side of this connection."""
        self.protocol = protocol
        """The server's protocol instance for this connection (its session, envelope...)."""

    def _pipe_write(self, data: bytes) -> None:
        self.transport._client_write(data)

    async def _pipe_read(self) -> bytes:
        return await self.transport._client.read()

    def _pipe_close(self) -> None:
        self.transport._client_eof()

    def _pipe_write_eof(self) -> None:
        self.transport._client_eof()


class FakeSMTPServer:
    """The real engine over in-memory streams, for ``async`` tests::

        async with FakeSMTPServer(MyHandler()) as server:
            client = server.client()
            assert (await client.ehlo("c.test")).code == 250
            assert (await client.rcpt("x@evil.test")).code == 503
            assert server.messages == []

    :param handler: the handler under test (``None``: accept every message). It is wrapped in
        a :class:`~typed_smtpd.testing.handlers.RecordingHandler`, so :attr:`messages` lists
        every message the handler answered 2xx; the handler itself sees the very same calls it
        would see from a real server.
    :param server_class: :class:`~typed_smtpd.smtp.SMTP`, :class:`~typed_smtpd.lmtp.LMTP`, a
        subclass, or any callable taking ``(handler, **smtp_kwargs)``.
    :param peer: the ``peername`` connections report (``session.peer``).
    :param implicit_tls_context: server-side context for implicit TLS: :meth:`connect` then
        speaks TLS from the first byte (for STARTTLS pass ``tls_context`` as to SMTP).
    :param client_tls_context: the client context :meth:`connect` uses for implicit TLS
        (default: one that checks no certificate).
    :param timeout: seconds any wait of the clients may take.
    :param max_connections: the connection cap of the shared
        :class:`~typed_smtpd.smtp.ConnectionTracker` (``None``: none).
    :param smtp_kwargs: keyword arguments for ``server_class``, typed by
        :class:`~typed_smtpd.options.FakeServerOptions`; ``hostname`` defaults to
        ``"fake-smtpd.test"`` (the engine's default would look up this host's name).
    """

    def __init__(
        self,
        handler: object = None,
        *,
        server_class: Callable[..., SMTP] = SMTP,
        peer: object = DEFAULT_PEER,
        implicit_tls_context: ssl.SSLContext | None = None,
        client_tls_context: ssl.SSLContext | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_connections: int | None = None,
        **smtp_kwargs: Unpack[FakeServerOptions],
    ) -> None:
        self.handler = handler
        """The handler under test, as given."""
        self.recorder: RecordingHandler = (
            handler if isinstance(handler, RecordingHandler) else RecordingHandler(handler)
        )
        """The recording wrapper the server actually calls."""
        self.server_class: Callable[..., SMTP] = server_class_for(handler, server_class)
        self.peer = peer
        self.implicit_tls_context = implicit_tls_context
        self.client_tls_context = client_tls_context
        """The client context :meth:`connect` uses for implicit TLS unless given one."""
        self.timeout = timeout
        smtp_kwargs.setdefault("hostname", _FAKE_HOSTNAME)
        self.smtp_kwargs: dict[str, Any] = dict(smtp_kwargs)
        self.tracker: ConnectionTracker = ConnectionTracker(max_connections)
        self.transcript: list[TranscriptEntry] = []
        """Every connection's dialog, interleaved in the order things happened."""
        self.clients: list[FakeClient] = []
        """Every client made, in order."""
        self.connections: list[SMTP] = []
        """The protocol instance of every connection, in order."""
        self._pending_tls: list[asyncio.Future[Any]] = []
        self._running = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> Self:
        """Start (nothing to bind: this only checks that the server class can be built)."""
        self._make_protocol()
        self._loop = asyncio.get_running_loop()
        self._running = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close every client and wait (bounded) for the server side to finish.

        A failed ``assert`` inside the block gets the dialog's transcript as a note (shown by
        pytest under the assertion, on Python 3.11 and later).
        """
        if isinstance(exc, AssertionError) and hasattr(exc, "add_note") and self.transcript:
            exc.add_note(f"--- SMTP transcript ---\n{self.transcript_text()}")
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection and wait for their tasks to end."""
        self._running = False
        for client in self.clients:
            client.close()
        for future in self._pending_tls:
            future.cancel()
        # Let EOFs and close_notify exchanges run, then cut what is left.
        for _ in range(3):
            await asyncio.sleep(0)
        for client in self.clients:
            if not client.transport.is_closing():
                client.transport.abort()
        for protocol in self.connections:
            transport = protocol.transport
            if transport is not None and not transport.is_closing():
                transport.abort()  # type: ignore[attr-defined]
        tasks = [c.task for c in self.connections if c.task is not None and not c.task.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_STOP_TIMEOUT)
            for task in pending:
                task.cancel()
        await asyncio.sleep(0)

    # --- results --------------------------------------------------------------------------------

    @property
    def messages(self) -> list[ReceivedMessage]:
        """The messages delivered so far (a copy), oldest first."""
        return self.recorder.messages

    def clear(self) -> None:
        """Forget the recorded messages."""
        self.recorder.clear()

    async def wait_for_messages(
        self, count: int = 1, timeout: float | None = None
    ) -> list[ReceivedMessage]:
        """Wait until at least ``count`` messages were delivered; return them all."""
        return await self.recorder.await_messages(
            count, self.timeout if timeout is None else timeout
        )

    def transcript_text(self) -> str:
        """:attr:`transcript` as text, for assertion messages."""
        return format_transcript(self.transcript)

    # --- connections ----------------------------------------------------------------------------

    def _make_protocol(self, **overrides: Any) -> SMTP:
        return self.server_class(self.recorder, **{**self.smtp_kwargs, **overrides})

    def intercept(
        self,
        host: str,
        port: int,
        *more: tuple[str, int],
        implicit_tls: bool | None = None,
        strict: bool = False,
        tls: bool = True,
    ) -> Interception:
        """Make the application's own clients reach this server: a context manager.

        Inside ``with server.intercept("smtp.example.com", 587):``, :mod:`smtplib` (``SMTP``,
        ``SMTP_SSL``, ``starttls()``) and asyncio clients such as aiosmtplib connecting to that
        host and port talk to this server through memory: no socket is opened. More
        ``(host, port)`` pairs may follow. ``implicit_tls`` (default: for port 465) makes the
        targets speak TLS from the first byte; ``strict`` refuses connections to any other
        address; ``tls=False`` offers no TLS. See :class:`~typed_smtpd.testing.Interception`
        for the certificates and the limits.

        Asyncio clients run in this server's loop; a blocking client (smtplib) must run in
        another thread: ``await asyncio.to_thread(app.send_welcome)``.
        """
        return Interception(self, _targets(host, port, more, implicit_tls), strict=strict, tls=tls)

    def intercept_loop(self) -> asyncio.AbstractEventLoop:
        """The event loop this server runs in (for :class:`Interception`)."""
        if self._loop is None or not self._running:
            raise RuntimeError("use 'async with FakeSMTPServer(...)' before intercepting")
        return self._loop

    def intercept_protocol(self, tls_context: ssl.SSLContext | None) -> SMTP:
        """A protocol for one intercepted connection (for :class:`Interception`)."""
        overrides: dict[str, Any] = {}
        if tls_context is not None and self.smtp_kwargs.get("tls_context") is None:
            overrides["tls_context"] = tls_context
        protocol = self._make_protocol(**overrides)
        protocol.connection_tracker = self.tracker
        self.connections.append(protocol)
        return protocol

    def intercept_tls_context(self) -> ssl.SSLContext | None:
        """The server's context for implicit TLS (for :class:`Interception`)."""
        return self.implicit_tls_context

    def intercept_has_tls(self) -> bool:
        """Whether the server has a STARTTLS context (for :class:`Interception`)."""
        return self.smtp_kwargs.get("tls_context") is not None

    def _new_connection(self, peer: object) -> tuple[SMTP, MemoryTransport, FakeClient]:
        if not self._running:
            raise RuntimeError("use 'async with FakeSMTPServer(...)' before making clients")
        protocol = self._make_protocol()
        protocol.connection_tracker = self.tracker
        loop = asyncio.get_running_loop()
        transport = MemoryTransport(loop, protocol, peername=self.peer if peer is None else peer)
        client = FakeClient(transport, protocol, timeout=self.timeout, transcript=self.transcript)
        self.clients.append(client)
        self.connections.append(protocol)
        return protocol, transport, client

    def client(self, *, peer: object = None) -> FakeClient:
        """A new connection; its greeting is read before its first command.

        ``peer`` overrides the ``peername`` for this connection only.
        """
        protocol, transport, client = self._new_connection(peer)
        protocol.connection_made(transport)
        return client

    async def connect(
        self, *, peer: object = None, tls_context: ssl.SSLContext | None = None
    ) -> FakeClient:
        """A new connection with its greeting read.

        With ``implicit_tls_context`` set (or ``tls_context``, the client's, given), the
        connection speaks implicit TLS from its first byte.
        """
        if tls_context is None and self.implicit_tls_context is not None:
            tls_context = self.client_tls_context or insecure_client_context()
        if tls_context is None:
            client = self.client(peer=peer)
            await client.read_greeting()
            return client
        if self.implicit_tls_context is None:
            raise ValueError("implicit TLS needs FakeSMTPServer(implicit_tls_context=...)")
        protocol, transport, client = self._new_connection(peer)
        loop = asyncio.get_running_loop()
        server_side = asyncio.ensure_future(
            loop.start_tls(transport, protocol, self.implicit_tls_context, server_side=True)
        )
        self._pending_tls.append(server_side)
        try:
            await client.start_tls(tls_context)
            tls_transport = await asyncio.wait_for(server_side, self.timeout)
        except BaseException:
            server_side.cancel()
            client.close()
            raise
        finally:
            self._pending_tls.remove(server_side)
        if tls_transport is None:
            raise ConnectionError("the TLS handshake did not complete")
        protocol.connection_made(tls_transport)
        await client.read_greeting()
        return client


class SocketpairSMTPServer:
    """The fake for synchronous clients: ``smtplib`` over :func:`socket.socketpair`.

    The real engine runs on an event loop in a daemon thread; each :meth:`smtp` or
    :meth:`connect_socket` call makes a connected pair of sockets (no listening port) and serves
    one end. Use it as a context manager::

        with SocketpairSMTPServer(MyHandler()) as server:
            with server.smtp() as client:
                client.sendmail("a@example.com", ["b@example.com"], b"Subject: hi\\r\\n\\r\\nhi")
            assert server.wait_for_messages(1)[0].rcpt_tos == ("b@example.com",)

    The parameters are those of :class:`FakeSMTPServer`.
    """

    def __init__(
        self,
        handler: object = None,
        *,
        server_class: Callable[..., SMTP] = SMTP,
        timeout: float = DEFAULT_TIMEOUT,
        max_connections: int | None = None,
        **smtp_kwargs: Unpack[FakeServerOptions],
    ) -> None:
        self.handler = handler
        self.recorder: RecordingHandler = (
            handler if isinstance(handler, RecordingHandler) else RecordingHandler(handler)
        )
        """The recording wrapper the server actually calls."""
        self.server_class: Callable[..., SMTP] = server_class_for(handler, server_class)
        self.timeout = timeout
        smtp_kwargs.setdefault("hostname", _FAKE_HOSTNAME)
        self.smtp_kwargs: dict[str, Any] = dict(smtp_kwargs)
        self.max_connections = max_connections
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tracker: ConnectionTracker | None = None
        self._sockets: list[socket.socket] = []

    def __enter__(self) -> Self:
        """Start the loop thread."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the loop thread and close every socket."""
        self.stop()

    def start(self) -> None:
        """Start the event loop thread (checking that the server class can be built)."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self.server_class(self.recorder, **self.smtp_kwargs)
        loop = self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            self._tracker = ConnectionTracker(self.max_connections)
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                asyncio.set_event_loop(None)

        self._thread = threading.Thread(target=run, name="SocketpairSMTPServer", daemon=True)
        self._thread.start()
        if not ready.wait(self.timeout):
            raise TimeoutError("the server thread did not start")

    def stop(self) -> None:
        """Close every connection, stop the loop and join its thread."""
        loop, thread = self.loop, self._thread
        if loop is None or thread is None:
            return
        if thread.is_alive():
            tracker = self._tracker

            async def shutdown() -> None:
                if tracker is not None:
                    await tracker.shutdown(0.0)

            future = asyncio.run_coroutine_threadsafe(shutdown(), loop)
            with contextlib.suppress(Exception):
                future.result(self.timeout)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(self.timeout)
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        if not loop.is_running():
            loop.close()
        self.loop = None
        self._thread = None

    @property
    def messages(self) -> list[ReceivedMessage]:
        """The messages delivered so far (a copy), oldest first."""
        return self.recorder.messages

    def clear(self) -> None:
        """Forget the recorded messages."""
        self.recorder.clear()

    def intercept(
        self,
        host: str,
        port: int,
        *more: tuple[str, int],
        implicit_tls: bool | None = None,
        strict: bool = False,
        tls: bool = True,
    ) -> Interception:
        """Make the application's own clients reach this server: a context manager.

        As :meth:`FakeSMTPServer.intercept`, with the server in its own thread: blocking clients
        (smtplib, Django's SMTP backend) and asyncio clients (aiosmtplib, in any event loop)
        both work, from any thread::

            with SocketpairSMTPServer() as server, server.intercept("smtp.example.com", 587):
                app.send_welcome("anne@example.com")
            [message] = server.messages
        """
        return Interception(self, _targets(host, port, more, implicit_tls), strict=strict, tls=tls)

    def intercept_loop(self) -> asyncio.AbstractEventLoop:
        """The event loop of the server's thread (for :class:`Interception`)."""
        if self.loop is None:
            raise RuntimeError("use 'with SocketpairSMTPServer(...)' before intercepting")
        return self.loop

    def intercept_protocol(self, tls_context: ssl.SSLContext | None) -> SMTP:
        """A protocol for one intercepted connection (for :class:`Interception`)."""
        kwargs = dict(self.smtp_kwargs)
        if tls_context is not None and kwargs.get("tls_context") is None:
            kwargs["tls_context"] = tls_context
        protocol = self.server_class(self.recorder, **kwargs)
        protocol.connection_tracker = self._tracker
        return protocol

    def intercept_tls_context(self) -> ssl.SSLContext | None:
        """``None``: this server has no context for implicit TLS of its own."""
        return None

    def intercept_has_tls(self) -> bool:
        """Whether the server has a STARTTLS context (for :class:`Interception`)."""
        return self.smtp_kwargs.get("tls_context") is not None

    def wait_for_messages(
        self, count: int = 1, timeout: float | None = None
    ) -> list[ReceivedMessage]:
        """Block until at least ``count`` messages were delivered; return them all."""
        return self.recorder.wait_for_messages(count, self.timeout if timeout is None else timeout)

    def connect_socket(self) -> socket.socket:
        """A new connection: the client's socket of a fresh socket pair (greeting unread)."""
        loop = self.loop
        if loop is None:
            raise RuntimeError("use 'with SocketpairSMTPServer(...)' first")
        client_sock, server_sock = socket.socketpair()
        self._sockets.append(client_sock)
        tracker = self._tracker

        def factory() -> SMTP:
            protocol = self.server_class(self.recorder, **self.smtp_kwargs)
            protocol.connection_tracker = tracker
            return protocol

        async def serve() -> None:
            await loop.connect_accepted_socket(factory, server_sock)

        asyncio.run_coroutine_threadsafe(serve(), loop).result(self.timeout)
        client_sock.settimeout(self.timeout)
        return client_sock

    def smtp(self, *, lmtp: bool = False) -> smtplib.SMTP:
        """An :class:`smtplib.SMTP` (or :class:`smtplib.LMTP`) client connected to the fake, with
        the greeting read."""
        sock = self.connect_socket()
        client = smtplib.LMTP(timeout=self.timeout) if lmtp else smtplib.SMTP(timeout=self.timeout)
        client.sock = sock
        client.file = None
        code, message = client.getreply()
        if code != 220:
            client.close()
            raise smtplib.SMTPConnectError(code, message)
        client._host = "localhost"  # type: ignore[attr-defined]
        return client


def _targets(
    host: str, port: int, more: tuple[tuple[str, int], ...], implicit_tls: bool | None
) -> list[Target]:
    return [
        Target(name, number, number == IMPLICIT_TLS_PORT if implicit_tls is None else implicit_tls)
        for name, number in ((host, port), *more)
    ]
