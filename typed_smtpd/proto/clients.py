"""Limits per client address, across the connections of one listening server (in the spirit of
Postfix's ``anvil``): concurrent connections, new connections per minute, and failed AUTH
attempts, each counted by the client's IP address (behind a PROXY protocol proxy, the address
the proxy speaks for).

A :class:`ClientLimits` value states the limits; a :class:`ClientTable` (one per listening
server) counts. Addresses in ``exempt`` are never limited (the loopback networks by default, as
Postfix exempts ``$mynetworks``). Memory is bounded: an address leaves the table once it has no
connection open and no event inside the windows, and the table holds at most ``max_tracked``
addresses (the oldest entries are dropped first).

No I/O here.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Final

from typed_smtpd.proto.proxy import IPNetwork, is_trusted_peer, parse_trusted_networks
from typed_smtpd.proto.replies import Reply

__all__ = [
    "CLIENT_AUTH_FAILURES",
    "CLIENT_CONNECTIONS",
    "CLIENT_RATE",
    "TOO_MANY_AUTH_FAILURES_FROM_CLIENT",
    "TOO_MANY_FROM_CLIENT",
    "UNLIMITED",
    "ClientLimits",
    "ClientTable",
]

#: Concurrent connections from one address (Postfix: ``smtpd_client_connection_count_limit``).
CLIENT_CONNECTIONS: Final = 50
#: New connections from one address per minute: far above any honest client's pace.
CLIENT_RATE: Final = 600
#: Failed AUTH attempts from one address per ten minutes, over all its connections.
CLIENT_AUTH_FAILURES: Final = 10
_LOOPBACK: Final = parse_trusted_networks(["127.0.0.0/8", "::1/128"])
#: Addresses whose exemption is remembered (the answer is recomputed after a clear).
_EXEMPT_CACHE: Final = 4096

#: The reply to a connection past a per-address limit (before the greeting).
TOO_MANY_FROM_CLIENT: Final = Reply(421, "Too many connections from your address", "4.7.0")
#: The reply to AUTH from an address past its failure budget (the connection is closed).
TOO_MANY_AUTH_FAILURES_FROM_CLIENT: Final = Reply(
    421, "Too many authentication failures from your address, try again later", "4.7.0"
)


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """The per-address limits of a server; ``None`` lifts one.

    :param connections: connections open at once from one address.
    :param rate: new connections from one address within ``rate_window`` seconds.
    :param auth_failures: failed AUTH attempts from one address within ``auth_window`` seconds;
        past it, AUTH from that address is answered ``421`` and the connection closed.
    :param exempt: networks never limited (addresses or CIDR networks).
    :param max_tracked: addresses counted at most (memory bound).
    """

    connections: int | None = CLIENT_CONNECTIONS
    rate: int | None = CLIENT_RATE
    rate_window: float = 60.0
    auth_failures: int | None = CLIENT_AUTH_FAILURES
    auth_window: float = 600.0
    exempt: tuple[IPNetwork, ...] = field(default=_LOOPBACK)
    max_tracked: int = 100_000

    def __post_init__(self) -> None:
        for name in ("connections", "rate", "auth_failures"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or None for no limit), not {value}")
        if self.rate_window <= 0 or self.auth_window <= 0:
            raise ValueError("rate_window and auth_window must be positive")
        if self.max_tracked < 1:
            raise ValueError("max_tracked must be at least 1")


#: No per-address limit at all.
UNLIMITED: Final = ClientLimits(connections=None, rate=None, auth_failures=None)


class _Client:
    __slots__ = ("auth_failures", "connects", "open")

    def __init__(self) -> None:
        self.open = 0
        self.connects: deque[float] = deque()
        self.auth_failures: deque[float] = deque()


class ClientTable:
    """The counts of one listening server, by client address."""

    def __init__(self, limits: ClientLimits | None = None) -> None:
        self.limits: ClientLimits = limits if limits is not None else ClientLimits()
        self._clients: dict[str, _Client] = {}
        self._exempt: dict[str, bool] = {}  # answers of exempt(), by address

    def __len__(self) -> int:
        return len(self._clients)

    def exempt(self, host: str | None) -> bool:
        """Whether ``host`` is never limited (also: not an IP address, such as a Unix socket)."""
        if host is None:
            return True
        known = self._exempt.get(host)
        if known is None:
            try:
                known = is_trusted_peer(ip_address(host), self.limits.exempt)
            except ValueError:
                known = True
            if len(self._exempt) >= _EXEMPT_CACHE:
                self._exempt.clear()
            self._exempt[host] = known
        return known

    def connect(self, host: str | None, now: float) -> Reply | None:
        """A connection from ``host`` wants its greeting: ``None`` to let it in (it is counted
        until :meth:`disconnect`), or the refusal when it is past a limit."""
        limits = self.limits
        if self.exempt(host):
            return None
        assert host is not None
        client = self._client(host)
        self._prune(client.connects, now - limits.rate_window)
        if limits.connections is not None and client.open >= limits.connections:
            return TOO_MANY_FROM_CLIENT
        if limits.rate is not None and len(client.connects) >= limits.rate:
            return TOO_MANY_FROM_CLIENT
        client.open += 1
        client.connects.append(now)
        return None

    def disconnect(self, host: str | None, now: float) -> None:
        """A connection :meth:`connect` let in is gone."""
        if self.exempt(host):
            return
        assert host is not None
        client = self._clients.get(host)
        if client is None:
            return
        client.open = max(client.open - 1, 0)
        self._forget_if_idle(host, client, now)

    def auth_allowed(self, host: str | None, now: float) -> Reply | None:
        """``None`` if ``host`` may try AUTH, else the refusal (its failures used its budget)."""
        limits = self.limits
        if limits.auth_failures is None or self.exempt(host):
            return None
        assert host is not None
        client = self._clients.get(host)
        if client is None:
            return None
        self._prune(client.auth_failures, now - limits.auth_window)
        if len(client.auth_failures) >= limits.auth_failures:
            return TOO_MANY_AUTH_FAILURES_FROM_CLIENT
        return None

    def auth_failed(self, host: str | None, now: float) -> None:
        """An AUTH attempt from ``host`` failed."""
        if self.limits.auth_failures is None or self.exempt(host):
            return
        assert host is not None
        self._client(host).auth_failures.append(now)

    # --- memory -----------------------------------------------------------------------------------

    def _client(self, host: str) -> _Client:
        client = self._clients.get(host)
        if client is None:
            clients = self._clients
            if len(clients) >= self.limits.max_tracked:
                # Drop the oldest entries without an open connection (insertion order).
                for old in [h for h, c in clients.items() if not c.open][: len(clients) // 4 + 1]:
                    del clients[old]
            client = clients[host] = _Client()
        return client

    def _forget_if_idle(self, host: str, client: _Client, now: float) -> None:
        limits = self.limits
        self._prune(client.connects, now - limits.rate_window)
        self._prune(client.auth_failures, now - limits.auth_window)
        if not client.open and not client.connects and not client.auth_failures:
            del self._clients[host]

    @staticmethod
    def _prune(events: deque[float], before: float) -> None:
        while events and events[0] < before:
            events.popleft()
