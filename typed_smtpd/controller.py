"""Controllers: run an SMTP (or LMTP) server on a TCP port or a Unix socket.

What lives here:

* the four controllers of the aiosmtpd API: :class:`Controller` and :class:`UnixSocketController`
  (the event loop runs in a daemon thread) and :class:`UnthreadedController` and
  :class:`UnixSocketUnthreadedController` (the caller runs the loop);
* their abstract bases :class:`BaseController`, :class:`BaseThreadedController` and
  :class:`BaseUnthreadedController`;
* :func:`serve`, an ``async with`` server for code that already runs inside an event loop;
* :func:`get_localhost`, :class:`IP6_IS` and :data:`DEFAULT_READY_TIMEOUT`.

Every way of running a server goes through the same two coroutines of :class:`BaseController`:
``_start_serving()`` checks that :meth:`~BaseController.factory` works, creates the
:class:`~typed_smtpd.smtp.ConnectionTracker` and binds; ``_shutdown()`` stops listening, lets the
open connections finish within the grace period and releases the endpoint. The threaded
controllers, ``begin()``/``end()`` and :func:`serve` only differ in how they drive those two.

What must not live here: anything that speaks SMTP. Replies, limits and the connection cap itself
are enforced by :mod:`typed_smtpd.smtp`; a controller only creates the protocol instances and hands
them the shared tracker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import os
import socket
import ssl
import stat
import sys
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, ClassVar, Final, Literal

from typing_extensions import Self, Unpack

from typed_smtpd._connections import implicit_tls, tls_listen_options
from typed_smtpd.monitoring import ServerStats, StatsSnapshot
from typed_smtpd.options import ControllerOptions, TCPControllerOptions
from typed_smtpd.proto.clients import ClientLimits
from typed_smtpd.smtp import SMTP, ConnectionTracker

__all__ = [
    "DEFAULT_GRACE_PERIOD",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_READY_TIMEOUT",
    "IP6_IS",
    "READY_TIMEOUT_ENV",
    "BaseController",
    "BaseThreadedController",
    "BaseUnthreadedController",
    "Controller",
    "RunningServer",
    "UnixSocketController",
    "UnixSocketUnthreadedController",
    "UnthreadedController",
    "get_localhost",
    "serve",
]

log: logging.Logger = logging.getLogger("mail.log")

#: Seconds :meth:`BaseThreadedController.start` waits for the server thread to report back. It is a
#: limit, not a delay: a server that binds in a millisecond is ready in a millisecond.
DEFAULT_READY_TIMEOUT: Final = 5.0

#: Seconds that connections in the middle of a command or transaction get to finish when the
#: server stops, before they are aborted.
DEFAULT_GRACE_PERIOD: Final = 5.0

#: Concurrent connections one listening server accepts; each further client gets a 421 reply.
DEFAULT_MAX_CONNECTIONS: Final = 1000

#: Environment variable that overrides the ``ready_timeout`` of the threaded controllers (a float,
#: in seconds). ``AIOSMTPD_CONTROLLER_TIMEOUT`` is honoured too when this one is not set, so that
#: existing CI configuration keeps working.
READY_TIMEOUT_ENV: Final = "TYPED_SMTPD_CONTROLLER_TIMEOUT"
_LEGACY_READY_TIMEOUT_ENV: Final = "AIOSMTPD_CONTROLLER_TIMEOUT"

# Bounds on the clean-up steps after the grace period, so that stopping never hangs on a
# misbehaving connection or loop. Stragglers have already been aborted when these apply.
_CLOSE_TIMEOUT: Final = 2.0  # Server.wait_closed() once every connection was told to go
_STOP_SLACK: Final = 5.0  # stop(): extra wait, beyond the grace period, for the drain to report
_JOIN_TIMEOUT: Final = 10.0  # stop(): wait for the loop thread to end
_UNWIND_TIMEOUT: Final = 1.0  # cancelled tasks get this long to unwind before the loop closes

# Binding one ephemeral port on several addresses ("localhost", "") can lose a race against
# another process taking the port in between; a few fresh attempts make that practically moot.
_PORT_PROBE_ATTEMPTS: Final = 5

_ProtocolFactory = Callable[[], asyncio.BaseProtocol]


class IP6_IS:  # noqa: N801 (the aiosmtpd name)
    """``errno`` values that binding a socket to ``::1`` may fail with, sorted by what they mean.

    :func:`get_localhost` consults these sets. They are ordinary mutable sets on purpose: a system
    that reports IPv6 support differently can be accommodated by adding or removing values.
    """

    #: The bind failed because the system has no usable IPv6: fall back to ``127.0.0.1``.
    NO: ClassVar[set[int]] = {errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT}
    #: The bind failed for a reason that proves IPv6 works: use ``::1``.
    YES: ClassVar[set[int]] = {errno.EADDRINUSE}


def get_localhost() -> Literal["::1", "127.0.0.1"]:
    """Return the numeric loopback address to listen on: ``"::1"`` if IPv6 works, else IPv4's.

    ``socket.has_ipv6`` only says whether Python was built with IPv6; whether the system supports
    it is found out by binding a throw-away socket to ``::1`` on an ephemeral port. An ``OSError``
    whose ``errno`` is in neither :attr:`IP6_IS.NO` nor :attr:`IP6_IS.YES` is re-raised.
    """
    if not socket.has_ipv6:
        return "127.0.0.1"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        if exc.errno in IP6_IS.NO:
            return "127.0.0.1"
        if exc.errno in IP6_IS.YES:
            return "::1"
        raise
    return "::1"


def _ready_timeout(default: float) -> float:
    """The ready timeout: from the environment if set there, else ``default``."""
    for name in (READY_TIMEOUT_ENV, _LEGACY_READY_TIMEOUT_ENV):
        value = os.environ.get(name)
        if value:
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"{name} must be a number of seconds, not {value!r}") from None
    return default


def _warn_deprecated(message: str) -> None:
    """Emit a DeprecationWarning attributed to the first caller outside this module."""
    level = 1
    frame = sys._getframe(0)
    while frame.f_back is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
        level += 1
    warnings.warn(message, DeprecationWarning, stacklevel=level)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in the current thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


# --- binding and releasing endpoints (shared by every controller and by serve()) -------------


async def _passive_addresses(
    loop: asyncio.AbstractEventLoop, hostname: str
) -> list[tuple[int, tuple[Any, ...]]]:
    """The distinct ``(family, sockaddr)`` pairs ``create_server`` would listen on."""
    infos = await loop.getaddrinfo(
        hostname or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    seen: list[tuple[int, tuple[Any, ...]]] = []
    for family, _type, _proto, _canonname, sockaddr in infos:
        entry = (int(family), tuple(sockaddr))
        if entry not in seen:
            seen.append(entry)
    return seen


def _ephemeral_port(family: int, sockaddr: tuple[Any, ...]) -> int:
    """A port the kernel considers free on ``sockaddr`` right now (its port must be 0)."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind(sockaddr)
        port: int = probe.getsockname()[1]
        return port


async def _bind_inet(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: _ProtocolFactory,
    hostname: str,
    port: int,
    tls: Mapping[str, Any],
) -> asyncio.Server:
    """Listen on ``hostname:port``; with port 0, on one ephemeral port shared by all addresses.

    ``tls``: ``create_server()``'s TLS arguments, if asyncio runs the implicit-TLS handshakes.
    """
    if port == 0:
        addresses = await _passive_addresses(loop, hostname)
        if len(addresses) > 1:
            # asyncio would give every address its own ephemeral port, and a controller reports
            # one port; so pick a port that is free on the first address and bind them all to it.
            attempt = 1
            while True:
                candidate = _ephemeral_port(*addresses[0])
                try:
                    return await loop.create_server(
                        protocol_factory, host=hostname, port=candidate, **tls
                    )
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE or attempt >= _PORT_PROBE_ATTEMPTS:
                        raise
                attempt += 1
    return await loop.create_server(protocol_factory, host=hostname, port=port, **tls)


def _server_class(handler: object, base: Callable[..., SMTP]) -> Callable[..., SMTP]:
    """``base``, or the server class the handler asks for with ``server_class_for(base)``: the
    fault injector's connect, greeting, STARTTLS, AUTH, DATA and BDAT stages live there."""
    provider = getattr(handler, "server_class_for", None)
    return provider(base) if callable(provider) else base


def _bound_port(server: asyncio.Server) -> int:
    """The TCP port ``server`` listens on."""
    port: int = server.sockets[0].getsockname()[1]
    return port


_SocketIdentity = tuple[int, int]


def _socket_mode(mode: int | None) -> int | None:
    """Check a ``socket_mode`` argument: permission bits, as for :func:`os.chmod`."""
    if mode is not None and not 0 <= mode <= 0o7777:
        raise ValueError(f"socket_mode must be permission bits from 0 to 0o7777, not {mode:#o}")
    return mode


def _socket_group(group: str | int | None) -> int | None:
    """The group id of a ``socket_group`` argument: a group name or a numeric id."""
    if group is None or isinstance(group, int):
        if group is not None and group < 0:
            raise ValueError(f"socket_group must be a group name or id, not {group}")
        return group
    import grp  # Unix only, as Unix sockets are

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"socket_group: there is no group named {group!r}") from None


def _set_socket_access(path: str, mode: int | None, gid: int | None) -> None:
    """Give the socket file at ``path`` its group, then its mode (``None`` leaves either alone).

    Clients need write permission on a socket file to connect. The group goes first: changing it
    clears the set-group-id bit on some systems, and the mode must be the one asked for.
    """
    if path.startswith("\0"):  # Linux abstract namespace: there is no file
        return
    if gid is not None:
        os.chown(path, -1, gid)
    if mode is not None:
        os.chmod(path, mode)


async def _bind_unix(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: _ProtocolFactory,
    path: str,
    tls: Mapping[str, Any],
    mode: int | None = None,
    gid: int | None = None,
) -> tuple[asyncio.Server, _SocketIdentity | None]:
    """Listen on the Unix socket ``path``; also return the identity of the socket file created.

    The file gets its group and mode before the socket listens, so that no client connects while
    the file still has the permissions the umask gave it. The identity (device and inode) lets
    :func:`_remove_socket_file` delete the file only if it is still the one this server created,
    not a socket another server has put there since.
    """
    server = await loop.create_unix_server(protocol_factory, path, start_serving=False, **tls)
    identity = _file_identity(path)
    try:
        _set_socket_access(path, mode, gid)
        await server.start_serving()
    except BaseException:
        server.close()
        _remove_socket_file(path, identity)
        raise
    return server, identity


def _file_identity(path: str) -> _SocketIdentity | None:
    """The device and inode of the socket file at ``path``; ``None`` if there is no file."""
    if path.startswith("\0"):  # Linux abstract namespace: there is no file
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _remove_socket_file(path: str, identity: _SocketIdentity | None) -> None:
    """Delete the socket file at ``path`` if it is still the one with ``identity``.

    asyncio removes the file itself on Python 3.13 and later, so an absent file is normal. A file
    that cannot be removed (a server that gave up root no longer may write to the directory) is
    logged and left; binding to the path again replaces it.
    """
    if identity is None:
        return
    try:
        info = os.stat(path)
        if stat.S_ISSOCK(info.st_mode) and (info.st_dev, info.st_ino) == identity:
            os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("cannot remove the socket file %s: %s", path, exc.strerror or exc)


async def _wait_closed(server: asyncio.Server) -> None:
    """Wait, within a bound, until ``server`` and (on 3.12+) all its connections are closed."""
    # Every connection has had its grace period and a 421 by now; anything left is stuck.
    # asyncio 3.13+ servers can drop their clients; uvloop's (and older) cannot.
    abort_clients = getattr(server, "abort_clients", None)
    if abort_clients is not None:
        abort_clients()
    try:
        await asyncio.wait_for(server.wait_closed(), _CLOSE_TIMEOUT)
    except asyncio.TimeoutError:
        log.warning("listening server did not report closed within %s seconds", _CLOSE_TIMEOUT)


def _unwind(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left on a stopped loop and let it unwind, within a bound."""
    if loop.is_closed() or loop.is_running():
        return
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.wait(pending, timeout=_UNWIND_TIMEOUT))
        for task in pending:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("task failed while the server stopped", exc_info=task.exception())
    loop.run_until_complete(loop.shutdown_asyncgens())


# --- the controllers ----------------------------------------------------------------------------


class BaseController(ABC):
    """What every controller shares: the SMTP factory, the start-up check and graceful shutdown.

    :param handler: the handler object whose hooks the SMTP instances call.
    :param loop: the event loop the server runs in; ``None`` creates a new one with
        :func:`asyncio.new_event_loop` (the loop of the calling thread is never taken over).
    :param ssl_context: wrap every connection in TLS from its first byte (SMTPS, implicit TLS).
    :param server_hostname: passed to :class:`~typed_smtpd.smtp.SMTP` as ``hostname=``, the name
        used in the greeting and in HELO/EHLO replies.
    :param server_kwargs: deprecated; keyword arguments for SMTP. The explicit keyword arguments
        win over the ones in this mapping.
    :param max_connections: concurrent connections accepted; ``None`` means no limit.
    :param client_limits: limits per client address (concurrent and new connections, failed
        AUTH attempts); ``None`` keeps the defaults of
        :class:`~typed_smtpd.proto.clients.ClientLimits`;
        :data:`~typed_smtpd.proto.clients.UNLIMITED` lifts them.
    :param grace_period: default seconds connections get to finish when the server stops.
    :param SMTP_parameters: keyword arguments for :class:`~typed_smtpd.smtp.SMTP` (or for your own
        :meth:`factory`), typed by :class:`~typed_smtpd.options.ControllerOptions`.
        ``enable_SMTPUTF8`` defaults to ``True`` here.

    Subclasses implement :meth:`_create_server`, the coroutine that binds the listening endpoint.
    """

    handler: object
    """The handler passed to the constructor."""
    loop: asyncio.AbstractEventLoop
    """The event loop the server runs in."""
    ssl_context: ssl.SSLContext | None
    """TLS context for implicit TLS, or ``None``."""
    SMTP_kwargs: dict[str, Any]
    """Keyword arguments :meth:`factory` passes to :class:`~typed_smtpd.smtp.SMTP`."""
    max_connections: int | None
    """The connection cap given to each start's :class:`~typed_smtpd.smtp.ConnectionTracker`."""
    client_limits: ClientLimits | None
    """The limits per client address (``None``: the defaults of
    :class:`~typed_smtpd.proto.clients.ClientLimits`)."""
    grace_period: float
    """Default seconds in-flight connections get to finish when the server stops."""
    server: asyncio.Server | None
    """The listening server while the controller runs; its ``sockets`` are the bound sockets."""
    smtpd: SMTP | None
    """The protocol instance :meth:`factory` created: once started, the one made to check the
    factory, then the one made for the latest connection; ``None`` while not serving."""

    def __init__(
        self,
        handler: object,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        server_kwargs: Mapping[str, Any] | None = None,
        max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
        client_limits: ClientLimits | None = None,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        **SMTP_parameters: Unpack[ControllerOptions],
    ) -> None:
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"max_connections must be at least 1 or None, not {max_connections}")
        if grace_period < 0:
            raise ValueError(f"grace_period must not be negative, not {grace_period}")
        self.handler = handler
        self._owns_loop = loop is None
        self.loop = asyncio.new_event_loop() if loop is None else loop
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.client_limits = client_limits
        self.grace_period = grace_period
        kwargs: dict[str, Any] = {}
        if server_kwargs is not None:
            _warn_deprecated(
                "server_kwargs is deprecated: pass the SMTP keyword arguments directly to the "
                "controller"
            )
            kwargs.update(server_kwargs)
        kwargs.update(SMTP_parameters)
        if server_hostname is not None:
            kwargs["hostname"] = server_hostname
        # Controllers have always enabled SMTPUTF8 by default, unlike the SMTP class itself.
        kwargs.setdefault("enable_SMTPUTF8", True)
        self.SMTP_kwargs = kwargs
        self.server = None
        self.smtpd = None
        self._tracker: ConnectionTracker | None = None

    @property
    def stats(self) -> StatsSnapshot:
        """The live counters of the server's connections (those of its latest run once it
        stopped): a :class:`~typed_smtpd.monitoring.StatsSnapshot`."""
        stats: ServerStats | None = getattr(self, "_stats", None)
        return stats.snapshot() if stats is not None else StatsSnapshot()

    def factory(self) -> SMTP:
        """Create the protocol instance for one connection.

        Override this to serve something else than plain :class:`~typed_smtpd.smtp.SMTP`, for
        example :class:`~typed_smtpd.lmtp.LMTP` or a subclass with extra commands. It is called
        once when the server starts, to check that it works (that instance becomes :attr:`smtpd`
        but never sees a connection), and then once per accepted connection.
        """
        return _server_class(self.handler, SMTP)(self.handler, **self.SMTP_kwargs)

    def _factory_invoker(self) -> asyncio.BaseProtocol:
        """The protocol factory given to asyncio: :meth:`factory` plus the shared tracker; with
        implicit TLS, the server runs the handshake itself (bounded by ``timeout``, counted by
        the connection cap) before the instance gets the connection."""
        try:
            smtpd = self.factory()
        except Exception:
            # asyncio only drops the connection; without this line nobody would know why.
            log.exception("cannot create the protocol for a new connection; it is closed")
            raise
        smtpd.connection_tracker = self._tracker
        self.smtpd = smtpd
        return implicit_tls(smtpd, self.ssl_context)

    def _tls_options(self) -> dict[str, Any]:
        """``create_server()``'s TLS arguments (none where the server runs handshakes itself)."""
        timeout = float(self.SMTP_kwargs.get("timeout", 300.0))
        return tls_listen_options(self.ssl_context, timeout)

    @abstractmethod
    async def _create_server(self) -> asyncio.Server:
        """Bind the listening endpoint with :meth:`_factory_invoker` as protocol factory."""

    def _release_endpoint(self) -> None:
        """Free what binding left behind once the server is closed (a socket file, say)."""

    async def _start_serving(self) -> asyncio.Server:
        """Check the factory, then bind: the one start-up path of every controller.

        Runs in :attr:`loop`. An exception from :meth:`factory` or from binding propagates
        unchanged; nothing is listening then.
        """
        if self.server is not None:
            raise RuntimeError(f"{type(self).__name__} is already serving")
        # Build one instance up front so that a broken factory (or handler) fails the start
        # instead of every connection. Without a transport it never talks to anyone; it is
        # smtpd once listening (aiosmtpd users read it right after start()), until a connection
        # brings its own.
        checked = self.factory()
        self.smtpd = None
        self._tracker = checked.connection_tracker = ConnectionTracker(
            self.max_connections, client_limits=self.client_limits
        )
        self._stats = self._tracker.stats
        self.server = await self._create_server()
        if self.smtpd is None:
            self.smtpd = checked
        return self.server

    async def _shutdown(self, grace_period: float) -> None:
        """Stop listening, let open connections finish, then release the endpoint.

        The listening socket closes first, so no new client gets in. Then the tracker tells idle
        connections 421 and gives busy ones ``grace_period`` seconds to finish what they are
        doing; what is left after that is aborted.
        """
        server, tracker = self.server, self._tracker
        try:
            if server is not None:
                server.close()
            if tracker is not None:
                await tracker.shutdown(grace_period)
            if server is not None:
                await _wait_closed(server)
        finally:
            self.server = None
            self._tracker = None
            self._release_endpoint()

    def cancel_tasks(self, stop_loop: bool = True) -> None:
        """Cancel every task of :attr:`loop`, and first stop the loop if ``stop_loop`` is true.

        Call it from the loop's own thread, e.g. ``loop.call_soon_threadsafe(c.cancel_tasks)``.
        """
        if stop_loop:
            self.loop.stop()
        for task in asyncio.all_tasks(self.loop):
            task.cancel()


class BaseThreadedController(BaseController, ABC):
    """A controller whose event loop runs in a daemon thread: :meth:`start` and :meth:`stop`.

    :param ready_timeout: the seconds :meth:`start` waits for the loop thread to answer; the
        ``TYPED_SMTPD_CONTROLLER_TIMEOUT`` environment variable overrides it.

    The other parameters are those of :class:`BaseController`. A threaded controller is also a
    context manager: ``with Controller(handler, port=0) as controller:`` starts and stops it.
    """

    ready_timeout: float
    """Seconds :meth:`start` waits for the server thread (the environment variable wins)."""

    def __init__(
        self,
        handler: object,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        server_kwargs: Mapping[str, Any] | None = None,
        max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
        client_limits: ClientLimits | None = None,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        **SMTP_parameters: Unpack[ControllerOptions],
    ) -> None:
        super().__init__(
            handler,
            loop,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            server_kwargs=server_kwargs,
            max_connections=max_connections,
            client_limits=client_limits,
            grace_period=grace_period,
            **SMTP_parameters,
        )
        self.ready_timeout = _ready_timeout(ready_timeout)
        self._thread: threading.Thread | None = None
        self._thread_exception: BaseException | None = None
        self._start_task: asyncio.Task[asyncio.Server] | None = None

    def start(self) -> None:
        """Run the loop in a daemon thread and return once the server listens.

        Raises the exception of a failed start unchanged: whatever :meth:`factory` raised, or the
        ``OSError`` of a failed bind (port in use, address not available). Raises
        :class:`TimeoutError` only if the loop thread does not answer within
        :attr:`ready_timeout`. After a failed start, call :meth:`stop` to clean up.
        """
        assert self._thread is None, "SMTP daemon already running"
        if self.loop.is_closed() and self._owns_loop:
            self.loop: asyncio.AbstractEventLoop = asyncio.new_event_loop()
        if self.loop.is_closed():
            raise RuntimeError("the controller's event loop is closed")
        if self.loop.is_running():
            raise RuntimeError("the controller's event loop is already running elsewhere")
        ready = threading.Event()
        self._thread_exception = None
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=f"{type(self).__name__}-loop", daemon=True
        )
        self._thread.start()
        if not ready.wait(self.ready_timeout):
            raise TimeoutError(f"SMTP server failed to start within {self.ready_timeout} seconds")
        if self._thread_exception is not None:
            raise self._thread_exception

    def _run(self, ready: threading.Event) -> None:
        """The loop thread: start serving, tell :meth:`start` how it went, run until stopped."""
        loop = self.loop
        asyncio.set_event_loop(loop)

        def report(task: asyncio.Task[asyncio.Server]) -> None:
            if task.cancelled():
                self._thread_exception = RuntimeError("SMTP server start-up was cancelled")
            else:
                self._thread_exception = task.exception()
            ready.set()

        def begin() -> None:
            self._start_task = loop.create_task(self._start_serving())
            self._start_task.add_done_callback(report)

        loop.call_soon(begin)
        try:
            loop.run_forever()
        except BaseException as exc:
            self._thread_exception = exc
            ready.set()
            raise
        finally:
            try:
                _unwind(loop)
            finally:
                self._start_task = None
                asyncio.set_event_loop(None)

    def stop(self, no_assert: bool = False, *, grace_period: float | None = None) -> None:
        """Stop gracefully, end the loop thread and free the port (or socket file).

        The listening socket is closed first; then connections in the middle of a command or
        transaction get ``grace_period`` seconds (default :attr:`grace_period`) to finish, idle
        ones get a 421 at once; then the remaining tasks are cancelled and the loop stops. Also
        cleans up after a failed :meth:`start`.

        :raises AssertionError: if the controller was never started and ``no_assert`` is false.
        """
        assert no_assert or self._thread is not None, "SMTP daemon not running"
        thread, self._thread = self._thread, None
        if thread is threading.current_thread():
            self._thread = thread
            raise RuntimeError("stop() cannot be called from the server's own loop thread")
        grace = self.grace_period if grace_period is None else grace_period
        if thread is not None and thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._shutdown(grace), self.loop)
            try:
                future.result(timeout=grace + _STOP_SLACK)
            except concurrent.futures.TimeoutError:
                future.cancel()
                log.warning("SMTP server did not drain within %s seconds", grace + _STOP_SLACK)
            except Exception:
                log.exception("error while stopping the SMTP server")
            self.loop.call_soon_threadsafe(self.cancel_tasks)
            thread.join(_JOIN_TIMEOUT)
            if thread.is_alive():
                log.warning("SMTP server thread did not end within %s seconds", _JOIN_TIMEOUT)
        if self._owns_loop and not self.loop.is_running() and not self.loop.is_closed():
            self.loop.close()
        self.server: asyncio.Server | None = None
        self.smtpd: SMTP | None = None
        self._tracker = None
        self._thread_exception = None

    def __enter__(self) -> Self:
        """Start the controller; a failed start is cleaned up before the exception propagates."""
        try:
            self.start()
        except BaseException:
            self.stop(no_assert=True)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the controller (gracefully, with the default grace period)."""
        self.stop(no_assert=True)


class BaseUnthreadedController(BaseController, ABC):
    """A controller for a loop the caller runs: :meth:`begin`, :meth:`finalize` and :meth:`end`.

    The parameters are those of :class:`BaseController`. It is a context manager in both worlds:
    ``with`` calls :meth:`begin` and :meth:`end` (for a loop that is not running yet), and
    ``async with``, used inside :attr:`loop`, starts and finalizes the server without blocking.
    """

    ended: threading.Event
    """Set once :meth:`finalize` has completed."""

    def __init__(
        self,
        handler: object,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        server_kwargs: Mapping[str, Any] | None = None,
        max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
        client_limits: ClientLimits | None = None,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        **SMTP_parameters: Unpack[ControllerOptions],
    ) -> None:
        super().__init__(
            handler,
            loop,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            server_kwargs=server_kwargs,
            max_connections=max_connections,
            client_limits=client_limits,
            grace_period=grace_period,
            **SMTP_parameters,
        )
        self.ended = threading.Event()
        # What end() started while the loop runs. Never read, but needed: the loop keeps only a
        # weak reference to a task, which could be collected before finalizing is done.
        self._end_future: asyncio.Future[None] | concurrent.futures.Future[None] | None = None

    def begin(self) -> None:
        """Start listening; the loop must not be running (run it yourself afterwards).

        Raises what :meth:`factory` or binding raised. Inside a running loop, use
        ``async with controller:`` or :func:`serve` instead.
        """
        if self.loop.is_running():
            raise RuntimeError(
                "begin() needs a loop that is not running; inside the loop use "
                "'async with controller' or typed_smtpd.controller.serve()"
            )
        self.ended.clear()
        self.loop.run_until_complete(self._start_serving())

    async def finalize(self) -> None:
        """Stop listening and drain the connections gracefully; then set :attr:`ended`."""
        try:
            await self._shutdown(self.grace_period)
        finally:
            self.smtpd: SMTP | None = None
            self.ended.set()

    def end(self) -> None:
        """Run :meth:`finalize` from synchronous code.

        If the loop is not running, this runs it until finalizing is done. If it runs in this
        thread (e.g. ``loop.call_soon_threadsafe(controller.end)``), finalizing is scheduled as a
        task; if it runs in another thread, it is submitted there. Wait on :attr:`ended` to know
        when it is over.
        """
        loop = self.loop
        if not loop.is_running():
            loop.run_until_complete(self.finalize())
        elif _running_loop() is loop:
            self._end_future = loop.create_task(self.finalize())
        else:
            self._end_future = asyncio.run_coroutine_threadsafe(self.finalize(), loop)

    def __enter__(self) -> Self:
        """:meth:`begin`; the loop must not be running."""
        self.begin()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """:meth:`end`."""
        self.end()

    async def __aenter__(self) -> Self:
        """Start listening from inside :attr:`loop`."""
        if _running_loop() is not self.loop:
            raise RuntimeError("'async with' must run inside the controller's own event loop")
        self.ended.clear()
        await self._start_serving()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """:meth:`finalize`."""
        await self.finalize()


class _TCPListener(BaseController):
    """Where the TCP controllers listen: :attr:`hostname` and :attr:`port` (no ``__init__``)."""

    hostname: str
    port: int

    async def _create_server(self) -> asyncio.Server:
        """Listen on :attr:`hostname` and :attr:`port`; record the bound port."""
        server = await _bind_inet(
            self.loop, self._factory_invoker, self.hostname, self.port, self._tls_options()
        )
        self.port = _bound_port(server)
        return server


class _UnixListener(BaseController):
    """Where the Unix socket controllers listen: :attr:`unix_socket` (no ``__init__``)."""

    unix_socket: str
    socket_mode: int | None
    socket_group: int | None
    _socket_identity: _SocketIdentity | None

    async def _create_server(self) -> asyncio.Server:
        """Listen on :attr:`unix_socket`, with the file's group and mode set first."""
        server, self._socket_identity = await _bind_unix(
            self.loop,
            self._factory_invoker,
            self.unix_socket,
            self._tls_options(),
            self.socket_mode,
            self.socket_group,
        )
        return server

    def _release_endpoint(self) -> None:
        """Remove the socket file this controller created."""
        _remove_socket_file(self.unix_socket, self._socket_identity)
        self._socket_identity = None


class Controller(_TCPListener, BaseThreadedController):
    """A threaded controller listening on TCP.

    :param hostname: the address to listen on. ``None`` means :func:`get_localhost`; ``""``
        means every interface; a name such as ``"localhost"`` listens on all its addresses. It is
        not the name the server announces: pass ``server_hostname`` for that.
    :param port: the port; ``0`` picks a free one, readable from :attr:`port` after
        :meth:`start`.

    The other parameters are those of :class:`BaseThreadedController`.
    """

    hostname: str
    """The address listened on."""
    port: int
    """The port listened on (the real one once started, also when ``0`` was asked for)."""

    def __init__(
        self,
        handler: object,
        hostname: str | None = None,
        port: int = 8025,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        server_kwargs: Mapping[str, Any] | None = None,
        max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
        client_limits: ClientLimits | None = None,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        **SMTP_parameters: Unpack[TCPControllerOptions],
    ) -> None:
        super().__init__(
            handler,
            loop,
            ready_timeout=ready_timeout,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            server_kwargs=server_kwargs,
            max_connections=max_connections,
            client_limits=client_limits,
            grace_period=grace_period,
            **SMTP_parameters,
        )
        self.hostname = get_localhost() if hostname is None else hostname
        self.port = port


class UnixSocketController(_UnixListener, BaseThreadedController):
    """A threaded controller listening on a Unix socket.

    :param unix_socket: the socket file's path (mind the OS limit of about 104 to 108 bytes).
        The file is removed when the controller stops.
    :param socket_mode: the socket file's permission bits, such as ``0o660``; ``None`` keeps
        what the process umask gives. A client needs write permission to connect.
    :param socket_group: the socket file's group, a name or a numeric id; ``None`` keeps the
        process's group. Changing it to a group the process is not a member of needs root.

    The other parameters are those of :class:`BaseThreadedController`.
    """

    unix_socket: str
    """The socket file's path, as a string."""
    socket_mode: int | None
    """The permission bits the socket file gets, or ``None``."""
    socket_group: int | None
    """The id of the group the socket file gets, or ``None``."""

    def __init__(
        self,
        handler: object,
        unix_socket: str | os.PathLike[str],
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        socket_mode: int | None = None,
        socket_group: str | int | None = None,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        server_kwargs: Mapping[str, Any] | None = None,
        max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
        client_limits: ClientLimits | None = None,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        **SMTP_parameters: Unpack[ControllerOptions],
    ) -> None:
        mode, gid = _socket_mode(socket_mode), _socket_group(socket_group)
        super().__init__(
            handler,
            loop,
            ready_timeout=ready_timeout,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            server_kwargs=server_kwargs,
            max_connections=max_connections,
            client_limits=client_limits,
            grace_period=grace_period,
            **SMTP_parameters,
        )
        self.unix_socket = os.fspath(unix_socket)
        self.socket_mode = mode
        self.socket_group = gid
        self._socket_identity: _SocketIdentity | None = None


class UnthreadedController(_TCPListener, BaseUnthreadedController):
    """An unthreaded controller listening on TCP; the caller runs :attr:`loop`.

    The parameters are those of :class:`Controller` without ``ready_timeout``.
    """

    hostname: str
    """The address listened on."""
    port: int
    """The port listened on (the real one once begun, also when ``0`` was asked for)."""

    def __init__(
        self,
        handler: object,
        hostname: str | None = None,
        port: int = 8025,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        server_kwargs: Mapping[str, Any] | None = None,
        max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
        client_limits: ClientLimits | None = None,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        **SMTP_parameters: Unpack[TCPControllerOptions],
    ) -> None:
        super().__init__(
            handler,
            loop,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            server_kwargs=server_kwargs,
            max_connections=max_connections,
            client_limits=client_limits,
            grace_period=grace_period,
            **SMTP_parameters,
        )
        self.hostname = get_localhost() if hostname is None else hostname
        self.port = port


class UnixSocketUnthreadedController(_UnixListener, BaseUnthreadedController):
    """An unthreaded controller listening on a Unix socket; the caller runs :attr:`loop`.

    The parameters are those of :class:`UnixSocketController` without ``ready_timeout``.
    """

    unix_socket: str
    """The socket file's path, as a string."""
    socket_mode: int | None
    """The permission bits the socket file gets, or ``None``."""
    socket_group: int | None
    """The id of the group the socket file gets, or ``None``."""

    def __init__(
        self,
        handler: object,
        unix_socket: str | os.PathLike[str],
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        socket_mode: int | None = None,
        socket_group: str | int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        server_kwargs: Mapping[str, Any] | None = None,
        max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
        client_limits: ClientLimits | None = None,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        **SMTP_parameters: Unpack[ControllerOptions],
    ) -> None:
        mode, gid = _socket_mode(socket_mode), _socket_group(socket_group)
        super().__init__(
            handler,
            loop,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            server_kwargs=server_kwargs,
            max_connections=max_connections,
            client_limits=client_limits,
            grace_period=grace_period,
            **SMTP_parameters,
        )
        self.unix_socket = os.fspath(unix_socket)
        self.socket_mode = mode
        self.socket_group = gid
        self._socket_identity: _SocketIdentity | None = None


# --- serve(): the loop-native way ---------------------------------------------------------------


class _LoopController(BaseController):
    """The controller behind :func:`serve`: TCP or Unix socket, any SMTP factory, current loop."""

    def __init__(
        self,
        handler: object,
        loop: asyncio.AbstractEventLoop,
        *,
        hostname: str | None,
        port: int,
        unix_socket: str | None,
        socket_mode: int | None,
        socket_group: int | None,
        server_class: Callable[..., SMTP],
        ssl_context: ssl.SSLContext | None,
        server_hostname: str | None,
        max_connections: int | None,
        client_limits: ClientLimits | None,
        grace_period: float,
        **SMTP_parameters: Unpack[TCPControllerOptions],
    ) -> None:
        super().__init__(
            handler,
            loop,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            max_connections=max_connections,
            client_limits=client_limits,
            grace_period=grace_period,
            **SMTP_parameters,
        )
        self.unix_socket: str | None = unix_socket
        self.hostname: str | None = None
        self.port: int | None = None
        if unix_socket is None:
            self.hostname = get_localhost() if hostname is None else hostname
            self.port = port
        self.socket_mode = socket_mode
        self.socket_group = socket_group
        self._server_class = server_class
        self._socket_identity: _SocketIdentity | None = None

    def factory(self) -> SMTP:
        """An instance of the ``server_class`` given to :func:`serve`."""
        return _server_class(self.handler, self._server_class)(self.handler, **self.SMTP_kwargs)

    async def _create_server(self) -> asyncio.Server:
        """Listen where :func:`serve` was asked to."""
        if self.unix_socket is not None:
            server, self._socket_identity = await _bind_unix(
                self.loop,
                self._factory_invoker,
                self.unix_socket,
                self._tls_options(),
                self.socket_mode,
                self.socket_group,
            )
            return server
        assert self.hostname is not None
        assert self.port is not None
        server = await _bind_inet(
            self.loop, self._factory_invoker, self.hostname, self.port, self._tls_options()
        )
        self.port = _bound_port(server)
        return server

    def _release_endpoint(self) -> None:
        """Remove the socket file, if this server created one."""
        if self.unix_socket is not None:
            _remove_socket_file(self.unix_socket, self._socket_identity)
            self._socket_identity = None


class RunningServer:
    """A server started by :func:`serve`, as seen from inside its ``async with`` block."""

    __slots__ = ("_controller", "_server", "_stopped")

    def __init__(self, controller: _LoopController, server: asyncio.Server) -> None:
        self._controller = controller
        self._server = server
        self._stopped = False

    @property
    def server(self) -> asyncio.Server:
        """The underlying :class:`asyncio.Server`."""
        return self._server

    @property
    def hostname(self) -> str | None:
        """The TCP address listened on; ``None`` for a Unix socket."""
        return self._controller.hostname

    @property
    def port(self) -> int | None:
        """The TCP port listened on (the real one when ``0`` was asked for); ``None`` for Unix."""
        return self._controller.port

    @property
    def unix_socket(self) -> str | None:
        """The socket file's path; ``None`` for TCP."""
        return self._controller.unix_socket

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets (empty once stopped)."""
        return tuple(self._server.sockets)

    @property
    def smtpd(self) -> SMTP | None:
        """The protocol instance made to check the factory, then the latest connection's."""
        return self._controller.smtpd

    @property
    def stats(self) -> StatsSnapshot:
        """The live counters of the server's connections."""
        return self._controller.stats

    @property
    def is_serving(self) -> bool:
        """Whether the server still accepts connections."""
        return not self._stopped and self._server.is_serving()

    async def stop(self, grace_period: float | None = None) -> None:
        """Stop now, draining like leaving the ``async with`` block does; later calls do nothing.

        :param grace_period: seconds busy connections get to finish; default: the one given to
            :func:`serve`.
        """
        if self._stopped:
            return
        self._stopped = True
        controller = self._controller
        await controller._shutdown(
            controller.grace_period if grace_period is None else grace_period
        )


@asynccontextmanager
async def serve(
    handler: object,
    *,
    hostname: str | None = None,
    port: int = 8025,
    unix_socket: str | os.PathLike[str] | None = None,
    socket_mode: int | None = None,
    socket_group: str | int | None = None,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    server_class: Callable[..., SMTP] = SMTP,
    max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
    client_limits: ClientLimits | None = None,
    grace_period: float = DEFAULT_GRACE_PERIOD,
    **SMTP_parameters: Unpack[TCPControllerOptions],
) -> AsyncIterator[RunningServer]:
    """Serve SMTP in the running event loop for the duration of an ``async with`` block.

    ::

        async with serve(MyHandler(), port=0) as server:
            client = await aiosmtplib.SMTP(hostname=server.hostname, port=server.port).connect()

    :param handler: the handler object.
    :param hostname: TCP address as for :class:`Controller` (``None``: :func:`get_localhost`).
    :param port: TCP port; ``0`` picks a free one, then available as ``server.port``.
    :param unix_socket: listen on this Unix socket instead of TCP (do not pass ``hostname``).
    :param socket_mode: the Unix socket file's permission bits, as for
        :class:`UnixSocketController`.
    :param socket_group: the Unix socket file's group, a name or an id, as for
        :class:`UnixSocketController`.
    :param ssl_context: implicit TLS for every connection.
    :param server_hostname: the name the server announces (SMTP's ``hostname=``).
    :param server_class: :class:`~typed_smtpd.smtp.SMTP`, a subclass such as
        :class:`~typed_smtpd.lmtp.LMTP`, or any callable taking ``(handler, **SMTP_parameters)``
        and returning one.
    :param max_connections: concurrent connections accepted; ``None`` for no limit.
    :param client_limits: limits per client address (``None``: the defaults).
    :param grace_period: seconds busy connections get to finish when the block is left.
    :param SMTP_parameters: keyword arguments for ``server_class``, typed by
        :class:`~typed_smtpd.options.TCPControllerOptions`; ``enable_SMTPUTF8`` defaults to
        ``True``.

    The server is listening when the block is entered; a broken ``server_class`` or a failed bind
    raises from ``async with``. Leaving the block shuts down like :meth:`Controller.stop`.
    """
    if unix_socket is not None and hostname is not None:
        raise ValueError("pass either hostname (TCP) or unix_socket, not both")
    if unix_socket is None and (socket_mode is not None or socket_group is not None):
        raise ValueError("socket_mode and socket_group apply to a unix_socket only")
    mode, gid = _socket_mode(socket_mode), _socket_group(socket_group)
    controller = _LoopController(
        handler,
        asyncio.get_running_loop(),
        hostname=hostname,
        port=port,
        unix_socket=None if unix_socket is None else os.fspath(unix_socket),
        socket_mode=mode,
        socket_group=gid,
        server_class=server_class,
        ssl_context=ssl_context,
        server_hostname=server_hostname,
        max_connections=max_connections,
        client_limits=client_limits,
        grace_period=grace_period,
        **SMTP_parameters,
    )
    running = RunningServer(controller, await controller._start_serving())
    try:
        yield running
    finally:
        await running.stop()
