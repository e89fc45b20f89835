"""Limits per client address: one address cannot take every connection slot, open connections
faster than the limit, or spread AUTH guessing over many connections. Behind a PROXY protocol
proxy the limits apply to the client the proxy speaks for. Over real sockets."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from typed_smtpd.proto.clients import ClientLimits, ClientTable
from typed_smtpd.proto.proxy import build_v2
from typed_smtpd.session import AuthResult, Envelope, LoginPassword, Session
from typed_smtpd.smtp import SMTP, ConnectionTracker

pytestmark = pytest.mark.integration

NO_EXEMPTION = ()


def authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: object
) -> AuthResult:
    return AuthResult(success=isinstance(data, LoginPassword) and data.password == b"right")


@asynccontextmanager
async def listening(
    limits: ClientLimits, **options: object
) -> AsyncIterator[tuple[int, ConnectionTracker]]:
    tracker = ConnectionTracker(100, client_limits=limits)

    def factory() -> SMTP:
        return SMTP(
            None,
            hostname="mx.test",
            connection_tracker=tracker,
            authenticator=authenticator,
            auth_require_tls=False,
            **options,  # type: ignore[arg-type]
        )

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], tracker
    finally:
        server.close()
        await server.wait_closed()


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, prefix: bytes = b"") -> tuple[Client, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if prefix:
            writer.write(prefix)
        client = cls(reader, writer)
        return client, await client.line()

    async def line(self) -> bytes:
        return await asyncio.wait_for(self.reader.readline(), 10)

    async def cmd(self, text: str) -> bytes:
        self.writer.write(text.encode() + b"\r\n")
        while True:
            line = await self.line()
            if line[3:4] != b"-":
                return line

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 10) == b""

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def plain(password: str) -> str:
    return base64.b64encode(f"\0anne\0{password}".encode()).decode()


async def settle(tracker: ConnectionTracker, open_connections: int) -> None:
    for _ in range(200):
        if tracker.stats.connections_open == open_connections:
            return
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_one_address_cannot_take_every_slot() -> None:
    async with listening(ClientLimits(connections=2, exempt=NO_EXEMPTION)) as (port, tracker):
        first, greeting = await Client.connect(port)
        second, _ = await Client.connect(port)
        assert greeting.startswith(b"220")
        third, refusal = await Client.connect(port)
        assert refusal == b"421 Too many connections from your address\r\n"
        assert await third.closed()
        await first.close()
        await settle(tracker, 1)
        fourth, greeting = await Client.connect(port)
        assert greeting.startswith(b"220")
        await second.close()
        await fourth.close()
    assert tracker.stats.limits["client-connections"] == 1


@pytest.mark.asyncio
async def test_connection_rate_per_address() -> None:
    limits = ClientLimits(rate=3, rate_window=60.0, exempt=NO_EXEMPTION)
    async with listening(limits) as (port, tracker):
        for _ in range(3):
            client, greeting = await Client.connect(port)
            assert greeting.startswith(b"220")
            await client.close()
        client, refusal = await Client.connect(port)
        assert refusal.startswith(b"421 Too many connections from your address")
        await client.close()
    assert tracker.stats.limits["client-connections"] == 1


@pytest.mark.asyncio
async def test_auth_guessing_across_connections_is_stopped() -> None:
    limits = ClientLimits(auth_failures=3, exempt=NO_EXEMPTION)
    async with listening(limits) as (port, tracker):
        for password in ("a", "b", "c"):  # one wrong password per connection
            client, _ = await Client.connect(port)
            assert (await client.cmd("EHLO c.test")).startswith(b"250")
            assert (await client.cmd(f"AUTH PLAIN {plain(password)}")).startswith(b"535")
            await client.close()
        client, _ = await Client.connect(port)
        assert (await client.cmd("EHLO c.test")).startswith(b"250")
        refusal = await client.cmd(f"AUTH PLAIN {plain('right')}")  # even the right one
        assert refusal.startswith(b"421 4.7.0 Too many authentication failures from your address")
        assert await client.closed()
    assert tracker.stats.auth_failures == 3
    assert tracker.stats.limits["client-auth-failures"] == 1


@pytest.mark.asyncio
async def test_loopback_is_exempt_by_default() -> None:
    async with listening(ClientLimits(connections=1)) as (port, _):
        clients = [await Client.connect(port) for _ in range(3)]
        assert all(greeting.startswith(b"220") for _, greeting in clients)
        for client, _ in clients:
            await client.close()


@pytest.mark.asyncio
async def test_behind_a_proxy_the_limits_count_the_real_client() -> None:
    limits = ClientLimits(connections=1, exempt=NO_EXEMPTION)
    options = {"proxy_protocol_timeout": 5.0, "proxy_trusted_networks": ["127.0.0.1"]}

    def header(client: str) -> bytes:
        return build_v2(client, "198.51.100.1", 40000, 25)

    async with listening(limits, **options) as (port, _):
        anne, greeting = await Client.connect(port, header("192.0.2.10"))
        assert greeting.startswith(b"220")
        bart, greeting = await Client.connect(port, header("192.0.2.20"))
        assert greeting.startswith(b"220")  # another client, though the same proxy
        again, refusal = await Client.connect(port, header("192.0.2.10"))
        assert refusal.startswith(b"421 Too many connections from your address")
        for client in (anne, bart, again):
            await client.close()


def test_the_table_forgets_idle_addresses_and_stays_bounded() -> None:
    table = ClientTable(ClientLimits(rate=5, rate_window=10.0, exempt=(), max_tracked=100))
    now = 1000.0
    for n in range(1000):
        host = f"192.0.2.{n % 250}" if n < 500 else f"198.51.100.{n % 250}"
        table.connect(host, now)
        table.disconnect(host, now)
    assert len(table) <= 100
    table.connect("203.0.113.1", now)
    table.disconnect("203.0.113.1", now + 11.0)  # its window is over: nothing left to count
    assert "203.0.113.1" not in table._clients


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: ClientLimits(connections=0), "connections must be at least 1"),
        (lambda: ClientLimits(rate_window=0), "rate_window and auth_window must be positive"),
    ],
)
def test_limits_are_checked(make: Callable[[], ClientLimits], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        make()
