"""Interception: the application's own SMTP clients reach an in-memory server, unmodified.

What lives here: :class:`Interception`, the context manager behind
:meth:`FakeSMTPServer.intercept <typed_smtpd.testing.fake.FakeSMTPServer.intercept>` and
:meth:`SocketpairSMTPServer.intercept <typed_smtpd.testing.fake.SocketpairSMTPServer.intercept>`;
:class:`Target`, one intercepted ``host:port``; and the in-memory stand-ins it hands to clients:
:class:`MemorySocket` and :class:`MemoryTLSSocket` for :mod:`smtplib` (and everything built on it,
such as Django's SMTP backend), and an :class:`asyncio.Transport` for clients that call
:meth:`asyncio.loop.create_connection <asyncio.loop.create_connection>`, such as aiosmtplib.

While an interception is active, three functions are replaced, and each passes every call that is
not for one of its targets on to the original unchanged:

* :func:`socket.create_connection` (what :class:`smtplib.SMTP` and :class:`smtplib.SMTP_SSL`
  connect with) returns a :class:`MemorySocket`;
* :meth:`ssl.SSLContext.wrap_socket` (SMTP_SSL, ``starttls()``) given a :class:`MemorySocket`
  returns a :class:`MemoryTLSSocket`, which speaks real TLS over :class:`ssl.MemoryBIO`;
* ``create_connection`` and ``start_tls`` of asyncio's own event loops connect to the server
  through memory (TLS from the first byte or after STARTTLS included).

Limits: only those three entry points are intercepted, by host name as the client passes it
(a client that resolves the name itself, or calls :func:`socket.socket` and ``connect()``
directly, is not caught); uvloop's loop cannot be patched; the replacements are process-wide while
the interception is active, so tests running in threads of one process see each other's targets.

What must not live here: anything that opens a socket; imports of pytest or hypothesis.
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import collections
import contextlib
import io
import logging
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Protocol

from typing_extensions import Self

if TYPE_CHECKING:
    from typed_smtpd.smtp import SMTP
    from typed_smtpd.testing.fake import MemoryTransport
    from typed_smtpd.testing.server import TestCertificates

__all__ = [
    "IMPLICIT_TLS_PORT",
    "Interception",
    "InterceptionEndpoint",
    "MemorySocket",
    "MemoryTLSSocket",
    "Target",
]

log: logging.Logger = logging.getLogger("mail.log")

#: The submissions port with TLS from the first byte (RFC 8314): a target on it is implicit TLS
#: unless told otherwise.
IMPLICIT_TLS_PORT: Final = 465
_RECV_SIZE: Final = 65536
#: The address an intercepted client's socket reports as its own.
_CLIENT_ADDRESS: Final = ("127.0.0.1", 54321)


@dataclass(frozen=True, slots=True)
class Target:
    """One intercepted address: ``host`` (compared without case) and ``port``."""

    host: str
    port: int
    implicit_tls: bool = False
    """Whether connections speak TLS from their first byte (SMTPS) rather than plain SMTP."""

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("an intercepted host must not be empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"port out of range: {self.port}")

    def matches(self, host: object, port: object) -> bool:
        """Whether a client connecting to ``host:port`` is meant."""
        return isinstance(host, str) and host.lower() == self.host.lower() and port == self.port


class InterceptionEndpoint(Protocol):
    """What serves intercepted connections: the fakes of :mod:`typed_smtpd.testing.fake`."""

    @property
    def timeout(self) -> float:
        """Seconds any wait may take."""
        ...

    def intercept_loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the server runs in (raises when not started)."""
        ...

    def intercept_protocol(self, tls_context: ssl.SSLContext | None) -> SMTP:
        """A server protocol for one connection, built in the server's loop; ``tls_context``
        offers STARTTLS when the server has no TLS context of its own."""
        ...

    def intercept_tls_context(self) -> ssl.SSLContext | None:
        """The server's own context for implicit TLS, if it has one."""
        ...

    def intercept_has_tls(self) -> bool:
        """Whether the server was given a STARTTLS context of its own."""
        ...


# --- the registry of active interceptions -------------------------------------------------------

_LOCK: Final = threading.Lock()
_ACTIVE: list[Interception] = []
_ORIGINALS: dict[str, Any] = {}


# Every replaced function: (owner, attribute name, replacement).
def _replacements() -> list[tuple[object, str, object]]:
    base = asyncio.base_events.BaseEventLoop
    return [
        (socket, "create_connection", _create_connection),
        (ssl.SSLContext, "wrap_socket", _wrap_socket),
        (base, "create_connection", _loop_create_connection),
        (base, "start_tls", _loop_start_tls),
    ]


def _key(owner: object, name: str) -> str:
    return f"{getattr(owner, '__name__', owner)}.{name}"


def _install() -> None:
    for owner, name, replacement in _replacements():
        _ORIGINALS[_key(owner, name)] = getattr(owner, name)
        setattr(owner, name, replacement)


def _uninstall() -> None:
    for owner, name, _ in _replacements():
        setattr(owner, name, _ORIGINALS.pop(_key(owner, name)))


def _original(owner: object, name: str) -> Any:
    return _ORIGINALS[_key(owner, name)]


def _lookup(host: object, port: object) -> tuple[Interception, Target] | None:
    """The innermost interception of ``host:port``; refuses when a strict one misses it."""
    with _LOCK:
        active = list(_ACTIVE)
    for interception in reversed(active):
        for target in interception.targets:
            if target.matches(host, port):
                return interception, target
    if any(interception.strict for interception in active):
        raise ConnectionRefusedError(
            f"{host}:{port} is not an intercepted address and interception is strict"
        )
    return None


def _create_connection(address: tuple[Any, ...], *args: Any, **kwargs: Any) -> Any:
    found = _lookup(address[0], address[1])
    if found is None:
        return _original(socket, "create_connection")(address, *args, **kwargs)
    interception, target = found
    timeout = args[0] if args else kwargs.get("timeout", socket._GLOBAL_DEFAULT_TIMEOUT)  # type: ignore[attr-defined]
    return interception.connect_socket(target, timeout)


_WRAP_PARAMETERS: Final = (
    "server_side",
    "do_handshake_on_connect",
    "suppress_ragged_eofs",
    "server_hostname",
    "session",
)


def _wrap_socket(context: ssl.SSLContext, sock: Any, *args: Any, **kwargs: Any) -> Any:
    if not isinstance(sock, MemorySocket):
        return _original(ssl.SSLContext, "wrap_socket")(context, sock, *args, **kwargs)
    options = dict(zip(_WRAP_PARAMETERS, args, strict=False)) | kwargs
    if options.get("server_side"):
        raise ValueError("an intercepted connection is the client's side")
    return sock.interception.wrap(
        context,
        sock,
        server_hostname=options.get("server_hostname"),
        suppress_ragged_eofs=options.get("suppress_ragged_eofs", True),
        handshake=options.get("do_handshake_on_connect", True),
    )


async def _loop_create_connection(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    host: str | None = None,
    port: int | None = None,
    **kwargs: Any,
) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
    original: Callable[..., Awaitable[tuple[asyncio.BaseTransport, asyncio.BaseProtocol]]]
    original = _original(asyncio.base_events.BaseEventLoop, "create_connection")
    found = None if kwargs.get("sock") is not None or host is None else _lookup(host, port)
    if found is None:
        return await original(loop, protocol_factory, host, port, **kwargs)
    interception, target = found
    return await interception.connect_transport(
        loop,
        protocol_factory,
        target,
        ssl_option=kwargs.get("ssl"),
        server_hostname=kwargs.get("server_hostname"),
        handshake_timeout=kwargs.get("ssl_handshake_timeout"),
    )


async def _loop_start_tls(
    loop: asyncio.AbstractEventLoop, transport: Any, protocol: Any, sslcontext: Any, **kwargs: Any
) -> Any:
    if isinstance(transport, _ClientTransport) and isinstance(sslcontext, ssl.SSLContext):
        transport.interception.trust(sslcontext)
    start_tls = _original(asyncio.base_events.BaseEventLoop, "start_tls")
    return await start_tls(loop, transport, protocol, sslcontext, **kwargs)


# --- the interception ---------------------------------------------------------------------------


class Interception:
    """While active (``with``), clients connecting to a :class:`Target` reach ``endpoint``.

    Made by the fakes' ``intercept()`` methods, rarely directly. A target on port 465 speaks
    implicit TLS, any other plain SMTP with STARTTLS offered.

    TLS: a server without TLS contexts of its own gets, for each target host, a certificate from a
    throw-away CA (:class:`~typed_smtpd.testing.server.TestCertificates`, which needs trustme);
    a client context that checks certificates and wraps an intercepted connection is made to
    trust that CA (:meth:`trust`), so the application's own ``ssl.create_default_context()``
    works unchanged. ``tls=False`` offers no TLS at all.

    ``strict=True`` refuses (:class:`ConnectionRefusedError`) every connection made through the
    intercepted functions to an address that is not a target, instead of letting it through.
    """

    def __init__(
        self,
        endpoint: InterceptionEndpoint,
        targets: Sequence[Target],
        *,
        strict: bool = False,
        tls: bool = True,
    ) -> None:
        if not targets:
            raise ValueError("intercept at least one host and port")
        self.endpoint = endpoint
        """The server the connections reach."""
        self.targets: tuple[Target, ...] = tuple(targets)
        """The intercepted addresses."""
        self.strict = strict
        """Whether other addresses are refused rather than let through."""
        self.tls = tls
        """Whether TLS is offered (with certificates of our own where the server has none)."""
        self.connections: int = 0
        """How many connections were intercepted."""
        self._certificates: dict[str, TestCertificates] = {}
        self._server_contexts: dict[str, ssl.SSLContext] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._active = False

    def __enter__(self) -> Self:
        """Start intercepting."""
        if self._active:
            raise RuntimeError("this interception is already active")
        for target in self.targets:  # certificates are made now, not inside a connection
            self._server_context(target)
        with _LOCK:
            if not _ACTIVE:
                _install()
            _ACTIVE.append(self)
        self._active = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop intercepting; connections already made go on."""
        with _LOCK:
            if self in _ACTIVE:
                _ACTIVE.remove(self)
            if not _ACTIVE and _ORIGINALS:
                _uninstall()
        self._active = False

    @property
    def active(self) -> bool:
        """Whether the interception is in force."""
        return self._active

    # --- TLS ------------------------------------------------------------------------------------

    def certificates(self, host: str) -> TestCertificates | None:
        """The throw-away certificates made for ``host``; ``None`` when the server's own TLS
        contexts are used (or TLS is off)."""
        return self._certificates.get(host.lower())

    def _server_context(self, target: Target) -> ssl.SSLContext | None:
        endpoint = self.endpoint
        if not self.tls:
            return None
        if target.implicit_tls and endpoint.intercept_tls_context() is not None:
            return endpoint.intercept_tls_context()
        if not target.implicit_tls and endpoint.intercept_has_tls():
            return None  # the server's own STARTTLS context applies
        key = target.host.lower()
        context = self._server_contexts.get(key)
        if context is None:
            from typed_smtpd.testing.server import TestCertificates

            certificates = self._certificates[key] = TestCertificates.for_hostname(key)
            context = self._server_contexts[key] = certificates.server_context()
        return context

    def trust(self, context: ssl.SSLContext) -> None:
        """Make a client context that checks certificates trust the CA of our certificates."""
        if context.verify_mode == ssl.CERT_NONE:
            return
        for certificates in self._certificates.values():
            context.load_verify_locations(cadata=certificates.ca_pem.decode("ascii"))

    # --- the server's side ----------------------------------------------------------------------

    async def _open(self, target: Target, sink: Any) -> MemoryTransport:
        """Make the server's side of a connection (in the server's loop)."""
        from typed_smtpd.testing.fake import MemoryTransport

        loop = asyncio.get_running_loop()
        context = self._server_context(target)
        protocol = self.endpoint.intercept_protocol(None if target.implicit_tls else context)
        transport = MemoryTransport(
            loop, protocol, sockname=(target.host, target.port), client=sink
        )
        self.connections += 1
        if target.implicit_tls:
            if context is None:
                raise ConnectionRefusedError(f"{target.host}:{target.port}: no TLS to offer")
            task = loop.create_task(self._server_handshake(transport, protocol, context))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            protocol.connection_made(transport)
        return transport

    async def _server_handshake(
        self, transport: MemoryTransport, protocol: SMTP, context: ssl.SSLContext
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(
                transport,
                protocol,
                context,
                server_side=True,
                ssl_handshake_timeout=self.endpoint.timeout,
            )
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as error:
            log.info("intercepted connection: TLS handshake failed: %s", error)
            transport.abort()
            return
        if tls is None:
            transport.abort()
            return
        protocol.connection_made(tls)

    def _server_loop(self) -> asyncio.AbstractEventLoop:
        return self.endpoint.intercept_loop()

    # --- blocking clients (smtplib) -------------------------------------------------------------

    def connect_socket(self, target: Target, timeout: object = None) -> MemorySocket:
        """A connected :class:`MemorySocket` (what :func:`socket.create_connection` returns)."""
        loop = self._server_loop()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError(
                f"a blocking client connected to {target.host}:{target.port} from the event loop "
                "that runs the fake server, which would then never answer: run the client in a "
                "thread (await asyncio.to_thread(...)) or serve it with SocketpairSMTPServer "
                "(the smtpd_intercept fixture)"
            )
        end = _BlockingEnd(loop)
        future = asyncio.run_coroutine_threadsafe(self._open(target, end), loop)
        end.transport = future.result(self.endpoint.timeout)
        if timeout is socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
            timeout = socket.getdefaulttimeout()
        return MemorySocket(self, end, (target.host, target.port), _seconds(timeout))

    def wrap(
        self,
        context: ssl.SSLContext,
        sock: MemorySocket,
        *,
        server_hostname: str | None,
        suppress_ragged_eofs: bool = True,
        handshake: bool = True,
    ) -> MemoryTLSSocket:
        """TLS over an intercepted socket (what :meth:`ssl.SSLContext.wrap_socket` returns)."""
        self.trust(context)
        tls = MemoryTLSSocket(
            sock,
            context,
            server_hostname=server_hostname,
            suppress_ragged_eofs=suppress_ragged_eofs,
        )
        if handshake:
            tls.do_handshake()
        return tls

    # --- asyncio clients (aiosmtplib) -----------------------------------------------------------

    async def connect_transport(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        target: Target,
        *,
        ssl_option: object = None,
        server_hostname: str | None = None,
        handshake_timeout: float | None = None,
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        """What ``loop.create_connection`` returns, connected through memory."""
        server_loop = self._server_loop()
        transport = _ClientTransport(self, loop, (target.host, target.port))
        sink = _TransportSink(loop, transport)
        if server_loop is loop:
            server_side = await self._open(target, sink)
        else:
            future = asyncio.run_coroutine_threadsafe(self._open(target, sink), server_loop)
            server_side = await asyncio.wrap_future(future)
        transport.attach(server_loop, server_side)
        protocol = protocol_factory()
        transport.set_protocol(protocol)
        if not ssl_option:
            protocol.connection_made(transport)
            transport.resume_reading()
            return transport, protocol
        context = ssl_option if isinstance(ssl_option, ssl.SSLContext) else None
        if context is None:
            context = ssl.create_default_context()
        self.trust(context)
        try:
            tls = await loop.start_tls(
                transport,
                protocol,
                context,
                server_side=False,
                server_hostname=server_hostname or target.host,
                ssl_handshake_timeout=handshake_timeout,
            )
        except BaseException:
            transport.abort()
            raise
        if tls is None:
            raise ConnectionResetError("the TLS handshake did not complete")
        protocol.connection_made(tls)
        return tls, protocol


def _seconds(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, int | float):
        return float(timeout)
    raise TypeError(f"a timeout is a number of seconds or None, not {timeout!r}")


# --- the blocking socket ------------------------------------------------------------------------


class _BlockingEnd:
    """The client's end for a blocking client: the server's bytes, behind a lock."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: MemoryTransport | None = None
        self._buffer = bytearray()
        self._eof = False
        self._closed = False
        self._condition = threading.Condition()

    def feed(self, data: bytes) -> None:
        """The server wrote ``data``."""
        with self._condition:
            self._buffer += data
            self._condition.notify_all()

    def feed_eof(self) -> None:
        """The server closed the connection."""
        with self._condition:
            self._eof = True
            self._condition.notify_all()

    def read(self, size: int, timeout: float | None) -> bytes:
        """Up to ``size`` octets, waiting at most ``timeout`` seconds for them."""
        with self._condition:
            if not self._condition.wait_for(lambda: self._buffer or self._eof, timeout):
                raise TimeoutError("timed out")
            data = bytes(self._buffer[:size])
            del self._buffer[:size]
        return data

    def _call(self, method: Callable[..., None], *args: object) -> bool:
        try:
            self.loop.call_soon_threadsafe(method, *args)
        except RuntimeError:  # the server's loop is closed: the server is gone
            return False
        return True

    def write(self, data: bytes) -> None:
        """Hand ``data`` to the server, in its loop."""
        transport = self.transport
        if self._closed or transport is None:
            raise OSError("the intercepted connection is closed")
        if self._eof and not self._buffer:
            raise BrokenPipeError("the server closed the intercepted connection")
        if not self._call(transport.client_write, data):
            raise ConnectionResetError("the fake server stopped")

    def close(self) -> None:
        """Tell the server the client is gone."""
        if self._closed:
            return
        self._closed = True
        if self.transport is not None:
            self._call(self.transport.client_eof)


class MemorySocket:
    """A connected socket look-alike, backed by memory: what an intercepted
    :func:`socket.create_connection` returns.

    It has what :mod:`smtplib` and similar blocking clients use: ``sendall``, ``send``,
    ``recv``, ``recv_into``, ``makefile("rb")``, ``settimeout``, ``close``... A read waits at
    most the socket's timeout (or, with none, the fake server's, so that a test cannot hang).
    """

    family: Final = socket.AF_INET
    type: Final = socket.SOCK_STREAM
    proto: Final = 0

    def __init__(
        self,
        interception: Interception,
        end: _BlockingEnd,
        address: tuple[str, int],
        timeout: float | None,
    ) -> None:
        self.interception = interception
        """The interception this connection went through."""
        self._end = end
        self._address = address
        self._timeout = timeout

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        host, port = self._address
        return f"<MemorySocket to {host}:{port}{' closed' if self._end._closed else ''}>"

    def settimeout(self, timeout: float | None) -> None:
        """Seconds a read may wait (``None``: the fake server's timeout)."""
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        """The read timeout."""
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        """``False`` makes reads fail at once when nothing is there, as a socket's do."""
        self._timeout = None if flag else 0.0

    def setsockopt(self, *args: object) -> None:
        """Accepted and ignored: there is no socket."""

    def fileno(self) -> int:
        """``-1``: there is no file descriptor."""
        return -1

    def getpeername(self) -> tuple[str, int]:
        """The intercepted address."""
        return self._address

    def getsockname(self) -> tuple[str, int]:
        """A made-up local address."""
        return _CLIENT_ADDRESS

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        """Send every octet of ``data``."""
        self._end.write(bytes(data))

    def send(self, data: bytes | bytearray | memoryview, flags: int = 0) -> int:
        """Send ``data``; all of it, always."""
        self._end.write(bytes(data))
        return len(data)

    def recv(self, size: int, flags: int = 0) -> bytes:
        """Up to ``size`` octets; ``b""`` once the server closed."""
        timeout = self._timeout
        if timeout is None:
            timeout = self.interception.endpoint.timeout
        elif timeout == 0.0 and not self._end._buffer and not self._end._eof:
            raise BlockingIOError("no data")
        return self._end.read(size, timeout)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        """:meth:`recv` into ``buffer``."""
        view = memoryview(buffer).cast("B")
        data = self.recv(nbytes or len(view))
        view[: len(data)] = data
        return len(data)

    def makefile(self, mode: str = "r", buffering: int | None = None, **kwargs: Any) -> Any:
        """A file reading from the connection (``"rb"`` or ``"r"``)."""
        if set(mode) - {"r", "b"}:
            raise ValueError(f"an intercepted socket's file is for reading, not {mode!r}")
        reader = io.BufferedReader(_Reader(self))
        if "b" in mode:
            return reader
        return io.TextIOWrapper(reader, **kwargs)

    def shutdown(self, how: int) -> None:
        """Close the sending side (and with it the connection: the server sees end of input)."""
        self._end.close()

    def detach(self) -> int:
        """``-1``: there is no file descriptor."""
        return -1

    def close(self) -> None:
        """Close the connection."""
        self._end.close()


class _Reader(io.RawIOBase):
    """The raw stream under :meth:`MemorySocket.makefile`; closing it leaves the socket open."""

    def __init__(self, sock: MemorySocket | MemoryTLSSocket) -> None:
        super().__init__()
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._sock.recv_into(buffer)


class MemoryTLSSocket:
    """TLS over a :class:`MemorySocket`, by :class:`ssl.SSLObject` and :class:`ssl.MemoryBIO`:
    what :meth:`ssl.SSLContext.wrap_socket` returns for an intercepted connection."""

    def __init__(
        self,
        raw: MemorySocket,
        context: ssl.SSLContext,
        *,
        server_hostname: str | None = None,
        suppress_ragged_eofs: bool = True,
    ) -> None:
        self.raw = raw
        """The plain connection under the TLS."""
        self.context = context
        """The client's context."""
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._object = context.wrap_bio(
            self._incoming, self._outgoing, server_side=False, server_hostname=server_hostname
        )
        self._suppress_ragged_eofs = suppress_ragged_eofs
        self._closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self.raw.sendall(data)

    def _fill(self) -> None:
        data = self.raw.recv(_RECV_SIZE)
        if data:
            self._incoming.write(data)
        elif not self._incoming.eof:
            self._incoming.write_eof()

    def do_handshake(self) -> None:
        """Run the TLS handshake (verifying the server as the context says)."""
        while True:
            try:
                self._object.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
                continue
            self._flush()
            return

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send every octet of ``data``."""
        view = memoryview(data).cast("B")
        while view:
            written = self._object.write(view)
            view = view[written:]
        self._flush()

    def send(self, data: bytes | bytearray | memoryview, flags: int = 0) -> int:
        """Encrypt and send ``data``; all of it, always."""
        self.sendall(data)
        return len(data)

    def recv(self, size: int = 1024, flags: int = 0) -> bytes:
        """Up to ``size`` decrypted octets; ``b""`` at the end."""
        while True:
            try:
                return self._object.read(size)
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
            except ssl.SSLZeroReturnError:
                return b""
            except ssl.SSLEOFError:
                if self._suppress_ragged_eofs:
                    return b""
                raise

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        """:meth:`recv` into ``buffer``."""
        view = memoryview(buffer).cast("B")
        data = self.recv(nbytes or len(view))
        view[: len(data)] = data
        return len(data)

    def read(self, size: int = 1024) -> bytes:
        """:meth:`recv`, under the name :class:`ssl.SSLSocket` has too."""
        return self.recv(size)

    def write(self, data: bytes) -> int:
        """:meth:`send`, under the name :class:`ssl.SSLSocket` has too."""
        return self.send(data)

    def makefile(self, mode: str = "r", buffering: int | None = None, **kwargs: Any) -> Any:
        """A file reading decrypted data (``"rb"`` or ``"r"``)."""
        if set(mode) - {"r", "b"}:
            raise ValueError(f"an intercepted socket's file is for reading, not {mode!r}")
        reader = io.BufferedReader(_Reader(self))
        return reader if "b" in mode else io.TextIOWrapper(reader, **kwargs)

    def version(self) -> str | None:
        """The TLS version negotiated."""
        return self._object.version()

    def cipher(self) -> tuple[str, str, int] | None:
        """The cipher negotiated."""
        return self._object.cipher()

    def getpeercert(self, binary_form: bool = False) -> Any:
        """The server's certificate."""
        return self._object.getpeercert(binary_form)

    @property
    def server_hostname(self) -> str | None:
        """The name the certificate was checked against."""
        return self._object.server_hostname

    def settimeout(self, timeout: float | None) -> None:
        """The plain connection's read timeout."""
        self.raw.settimeout(timeout)

    def gettimeout(self) -> float | None:
        """The plain connection's read timeout."""
        return self.raw.gettimeout()

    def fileno(self) -> int:
        """``-1``: there is no file descriptor."""
        return -1

    def getpeername(self) -> tuple[str, int]:
        """The intercepted address."""
        return self.raw.getpeername()

    def getsockname(self) -> tuple[str, int]:
        """A made-up local address."""
        return self.raw.getsockname()

    def unwrap(self) -> MemorySocket:
        """Send the TLS close alert; the plain connection, for what follows."""
        with contextlib.suppress(ssl.SSLError):
            self._object.unwrap()
        self._flush()
        return self.raw

    def shutdown(self, how: int) -> None:
        """Close the connection."""
        self.close()

    def close(self) -> None:
        """Say goodbye in TLS, then close the connection."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ssl.SSLError, OSError):
            self._object.unwrap()
            self._flush()
        self.raw.close()


# --- the asyncio transport ----------------------------------------------------------------------


class _TransportSink:
    """The client's end for an asyncio client: hands the server's bytes to its loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: _ClientTransport) -> None:
        self._loop = loop
        self._transport = transport

    def feed(self, data: bytes) -> None:
        with contextlib.suppress(RuntimeError):  # the client's loop is closed
            self._loop.call_soon_threadsafe(self._transport.receive, data)

    def feed_eof(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._transport.receive, None)


class _ClientTransport(asyncio.Transport):
    """The client's side of an intercepted asyncio connection."""

    _start_tls_compatible = True

    def __init__(
        self,
        interception: Interception,
        loop: asyncio.AbstractEventLoop,
        address: tuple[str, int],
    ) -> None:
        super().__init__({"peername": address, "sockname": _CLIENT_ADDRESS, "socket": None})
        self.interception = interception
        self._loop = loop
        self._protocol: asyncio.BaseProtocol | None = None
        self._server_loop: asyncio.AbstractEventLoop | None = None
        self._server: MemoryTransport | None = None
        self._queue: collections.deque[bytes | None] = collections.deque()
        self._reading = False  # until the protocol is connected
        self._scheduled = False
        self._closing = False
        self._lost = False

    def attach(self, loop: asyncio.AbstractEventLoop, server: MemoryTransport) -> None:
        self._server_loop = loop
        self._server = server

    def _to_server(self, method: Callable[..., None], *args: object) -> None:
        loop = self._server_loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the server's loop is closed
            loop.call_soon_threadsafe(method, *args)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._server is None:
            return
        self._to_server(self._server.client_write, bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(bytes(item) for item in list_of_data))

    def write_eof(self) -> None:
        if self._server is not None:
            self._to_server(self._server.client_eof)

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.write_eof()
        self._loop.call_soon(self._connection_lost)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._closing

    def _connection_lost(self) -> None:
        if self._lost:
            return
        self._lost = True
        if self._protocol is not None:
            self._protocol.connection_lost(None)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self._schedule()

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    def get_write_buffer_size(self) -> int:
        return 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, 0)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def receive(self, data: bytes | None) -> None:
        """What the server wrote (``None``: its end of stream), in the client's loop."""
        if self._lost:
            return
        self._queue.append(data)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and self._reading:
            self._scheduled = True
            self._loop.call_soon(self._deliver)

    def _deliver(self) -> None:
        from typed_smtpd.testing.fake import feed_protocol

        self._scheduled = False
        while self._reading and self._queue and not self._lost:
            data = self._queue.popleft()
            protocol = self._protocol
            assert protocol is not None
            if data is None:
                keep_open = protocol.eof_received()  # type: ignore[attr-defined]
                if not keep_open:
                    self.close()
                return
            feed_protocol(protocol, data)
