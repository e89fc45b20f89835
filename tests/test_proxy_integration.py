"""The PROXY protocol through the server: raw headers over real sockets, and a real HAProxy.

Covers: version 1 and 2 headers (built with the project's own builders) before the greeting, with
and without the client's first command in the same write; TLVs and the CRC32C check; malformed
headers, the header timeout and the trusted upstream networks, all refused before any greeting;
``handle_PROXY`` (sync and async) accepting or refusing; ``proxy_data`` surviving STARTTLS; and
HAProxy, started here on loopback with a generated configuration, in front of the server with
``send-proxy`` and ``send-proxy-v2``: the handler sees the real client's address.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from tests.support import TIMEOUT, RawClient, Recorder, running
from tests.tls_support import start_tls
from typed_smtpd.controller import Controller
from typed_smtpd.proxy_protocol import AF, PROTO, V2_CMD, ProxyData, build_v1, build_v2
from typed_smtpd.session import Envelope, Session
from typed_smtpd.smtp import SMTP

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.tls_fixtures"]

#: proxy_protocol_timeout for the tests that send their header at once.
HEADER_TIMEOUT = 5.0
#: A client address outside the test machine: only a PROXY header can carry it.
CLIENT_V4 = "192.0.2.10"
CLIENT_V6 = "2001:db8::10"


@dataclass
class ProxyHandler(Recorder):
    """Records what ``handle_PROXY`` is given, and answers :attr:`verdict`."""

    verdict: bool = True
    headers: list[ProxyData] = field(default_factory=list)
    session_headers: list[ProxyData | None] = field(default_factory=list)

    def handle_PROXY(
        self, server: SMTP, session: Session, envelope: Envelope, proxy_data: ProxyData
    ) -> bool:
        self.headers.append(proxy_data)
        self.session_headers.append(session.proxy_data)
        return self.verdict


@dataclass
class AsyncProxyHandler(Recorder):
    """``handle_PROXY`` as a coroutine, as aiosmtpd's handlers write it."""

    verdict: bool = True
    headers: list[ProxyData] = field(default_factory=list)

    async def handle_PROXY(
        self, server: SMTP, session: Session, envelope: Envelope, proxy_data: ProxyData
    ) -> bool:
        self.headers.append(proxy_data)
        return self.verdict


class ProxiedClient(RawClient):
    """A :class:`RawClient` that sends ``header`` (and ``then``) before reading the greeting."""

    def __init__(
        self,
        host: str,
        port: int,
        header: bytes,
        *,
        then: bytes = b"",
        source: str | None = None,
        timeout: float = TIMEOUT,
    ) -> None:
        self.sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        if header or then:
            self.sock.sendall(header + then)
        self.greeting = self.reply()


@contextmanager
def proxied(controller: Controller, header: bytes, *, then: bytes = b"") -> Iterator[RawClient]:
    client = ProxiedClient(controller.hostname, controller.port, header, then=then)
    try:
        yield client
    finally:
        client.close()


def refused_silently(controller: Controller, data: bytes, *, timeout: float = TIMEOUT) -> bytes:
    """Send ``data`` on a new connection and read until the server closes; what it sent."""
    with socket.create_connection((controller.hostname, controller.port), timeout=timeout) as sock:
        if data:
            sock.sendall(data)
        received = b""
        for _ in range(64):
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        return received


def deliver(client: RawClient) -> None:
    assert client.cmd("EHLO client.test")[0] == 250
    assert client.cmd("MAIL FROM:<sender@example.test>")[0] == 250
    assert client.cmd("RCPT TO:<rcpt@example.test>")[0] == 250
    assert client.cmd("DATA")[0] == 354
    assert client.cmd("Subject: proxied\r\n\r\nbody\r\n.")[0] == 250


# --- headers before the greeting ------------------------------------------------------------------

HEADERS: dict[str, tuple[bytes, dict[str, object]]] = {
    "v1-tcp4": (
        build_v1(CLIENT_V4, "198.51.100.1", 40000, 25),
        {
            "version": 1,
            "family": AF.INET,
            "protocol": PROTO.STREAM,
            "src_addr": IPv4Address(CLIENT_V4),
            "src_port": 40000,
            "dst_addr": IPv4Address("198.51.100.1"),
            "dst_port": 25,
        },
    ),
    "v1-tcp6": (
        build_v1(CLIENT_V6, "2001:db8::1", 40001, 587),
        {"version": 1, "src_addr": IPv6Address(CLIENT_V6), "dst_port": 587},
    ),
    "v1-unknown": (
        build_v1(unknown_tail=b" whatever"),
        {"version": 1, "family": AF.UNSPEC, "src_addr": None},
    ),
    "v2-inet": (
        build_v2(CLIENT_V4, "198.51.100.1", 40002, 25),
        {
            "version": 2,
            "command": V2_CMD.PROXY,
            "family": AF.INET,
            "protocol": PROTO.STREAM,
            "src_addr": IPv4Address(CLIENT_V4),
            "src_port": 40002,
        },
    ),
    "v2-inet6-no-crc": (
        build_v2(CLIENT_V6, "2001:db8::1", 40003, 465, with_crc=False),
        {"version": 2, "family": AF.INET6, "src_addr": IPv6Address(CLIENT_V6)},
    ),
    "v2-local": (
        build_v2(command=V2_CMD.LOCAL),
        {"version": 2, "command": V2_CMD.LOCAL, "family": AF.UNSPEC},
    ),
    "v2-unix": (
        build_v2(b"/run/client.sock", b"/run/smtpd.sock"),
        {"version": 2, "family": AF.UNIX, "protocol": PROTO.STREAM},
    ),
}


@pytest.mark.parametrize(("header", "expected"), list(HEADERS.values()), ids=list(HEADERS))
@pytest.mark.parametrize("together", [False, True], ids=["alone", "with-ehlo"])
def test_header_then_smtp(header: bytes, expected: dict[str, object], together: bool) -> None:
    handler = ProxyHandler()
    with running(handler, proxy_protocol_timeout=HEADER_TIMEOUT) as server:
        then = b"EHLO first.test\r\n" if together else b""
        with proxied(server, header, then=then) as c:
            assert c.greeting[0] == 220
            if together:
                code, text = c.reply()
                assert code == 250 and text.startswith("test.local")
            deliver(c)
    (data,) = handler.headers
    assert data.valid and data.whole_raw == header
    for name, value in expected.items():
        assert getattr(data, name) == value, name
    assert handler.session_headers == [data]
    (session,) = handler.sessions
    assert session.proxy_data is data
    assert isinstance(session.peer, tuple) and session.peer[0] == "127.0.0.1"  # the proxy


def test_v2_tlvs_reach_the_handler() -> None:
    header = build_v2(
        CLIENT_V4,
        "198.51.100.1",
        40004,
        25,
        tlvs=[("AUTHORITY", b"mail.example.test"), ("UNIQUE_ID", b"conn-42")],
    )
    handler = ProxyHandler()
    with (
        running(handler, proxy_protocol_timeout=HEADER_TIMEOUT) as server,
        proxied(server, header) as c,
    ):
        deliver(c)
    (data,) = handler.headers
    tlv = data.tlv
    assert tlv is not None
    assert tlv["AUTHORITY"] == b"mail.example.test"
    assert tlv["UNIQUE_ID"] == b"conn-42"
    assert "CRC32C" in tlv


def test_header_trickled_byte_by_byte() -> None:
    header = build_v2(CLIENT_V4, "198.51.100.1", 40005, 25, tlvs=[("NOOP", b"x" * 40)])
    handler = ProxyHandler()
    with (
        running(handler, proxy_protocol_timeout=HEADER_TIMEOUT) as server,
        socket.create_connection((server.hostname, server.port), timeout=TIMEOUT) as sock,
    ):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for index in range(len(header)):
            sock.sendall(header[index : index + 1])
        assert sock.recv(4).startswith(b"220")
    assert [h.src_port for h in handler.headers] == [40005]


def _corrupted_crc() -> bytes:
    header = bytearray(build_v2(CLIENT_V4, "198.51.100.1", 40006, 25))
    header[16] ^= 0x01  # one bit of the source address
    return bytes(header)


INVALID = {
    "smtp-first": b"EHLO client.test\r\n",
    "http": b"GET / HTTP/1.0\r\n\r\n",
    "v1-bad-address": b"PROXY TCP4 300.1.1.1 198.51.100.1 1 25\r\n",
    "v1-family-mismatch": b"PROXY TCP4 2001:db8::1 198.51.100.1 1 25\r\n",
    "v1-too-long": b"PROXY UNKNOWN " + b"x" * 200 + b"\r\n",
    "v1-no-crlf": b"PROXY TCP4 192.0.2.10 198.51.100.1 1 25\n",
    "v2-crc-mismatch": _corrupted_crc(),
    "v2-bad-version": b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + bytes(12),
    "v2-truncated-address": b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x04" + bytes(4),
}


@pytest.mark.parametrize("data", list(INVALID.values()), ids=list(INVALID))
def test_invalid_header_closes_before_the_greeting(data: bytes) -> None:
    handler = ProxyHandler()
    with running(handler, proxy_protocol_timeout=HEADER_TIMEOUT) as server:
        assert refused_silently(server, data) == b""
        # The server goes on serving proper clients.
        with proxied(server, build_v1(CLIENT_V4, "198.51.100.1", 1, 25)) as c:
            deliver(c)
    assert len(handler.headers) == 1 and len(handler.envelopes) == 1


def test_eof_inside_the_header() -> None:
    with (
        running(ProxyHandler(), proxy_protocol_timeout=HEADER_TIMEOUT) as server,
        socket.create_connection((server.hostname, server.port), timeout=TIMEOUT) as sock,
    ):
        sock.sendall(b"PROXY TCP4 192.0.2.10 ")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b""


@pytest.mark.parametrize(
    "partial",
    [b"", b"PROXY TCP4 ", b"\r\n\r\n\x00\r\nQUIT\n\x21"],
    ids=["nothing", "v1-partial", "v2-partial"],
)
def test_header_timeout(partial: bytes) -> None:
    handler = ProxyHandler()
    with running(handler, proxy_protocol_timeout=1.0) as server:
        received = refused_silently(server, partial, timeout=8.0)
    assert not received.startswith(b"220")
    assert handler.headers == []


# --- trusted networks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("networks", "trusted"),
    [
        (["127.0.0.0/8"], True),
        (["10.0.0.0/8", "127.0.0.1/32"], True),
        (["::1/128", "127.0.0.1"], True),
        (["10.0.0.0/8"], False),
        (["::1/128", "192.0.2.0/24"], False),
    ],
)
def test_trusted_networks(networks: list[str], trusted: bool) -> None:
    handler = ProxyHandler()
    header = build_v1(CLIENT_V4, "198.51.100.1", 40007, 25)
    with running(
        handler, proxy_protocol_timeout=HEADER_TIMEOUT, proxy_trusted_networks=networks
    ) as server:
        if trusted:
            with proxied(server, header) as c:
                deliver(c)
        else:
            assert refused_silently(server, header) == b""
            assert refused_silently(server, b"") == b""  # refused without waiting for a header
    assert len(handler.headers) == (1 if trusted else 0)
    assert len(handler.envelopes) == (1 if trusted else 0)


# --- handle_PROXY ---------------------------------------------------------------------------------


@pytest.mark.parametrize("handler_class", [ProxyHandler, AsyncProxyHandler], ids=["sync", "async"])
def test_handle_proxy_verdict(handler_class: Callable[..., ProxyHandler]) -> None:
    header = build_v2(CLIENT_V4, "198.51.100.1", 40008, 25)
    refusing = handler_class(verdict=False)
    with running(refusing, proxy_protocol_timeout=HEADER_TIMEOUT) as server:
        assert refused_silently(server, header) == b""
    assert [h.src_port for h in refusing.headers] == [40008]
    accepting = handler_class(verdict=True)
    with (
        running(accepting, proxy_protocol_timeout=HEADER_TIMEOUT) as server,
        proxied(server, header) as c,
    ):
        deliver(c)
    assert accepting.sessions[0].proxy_data == accepting.headers[0]


def test_without_proxy_protocol_a_header_is_just_a_bad_command() -> None:
    handler = ProxyHandler()
    with running(handler) as server, proxied(server, b"") as c:
        assert c.cmd(build_v1(CLIENT_V4, "198.51.100.1", 1, 25).decode().strip())[0] == 500
        deliver(c)
    assert handler.headers == [] and handler.sessions[0].proxy_data is None


def test_proxy_data_survives_starttls(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    handler = ProxyHandler()
    header = build_v2(CLIENT_V4, "198.51.100.1", 40009, 25)
    with (
        running(handler, proxy_protocol_timeout=HEADER_TIMEOUT, tls_context=server_context) as s,
        proxied(s, header) as c,
    ):
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("STARTTLS")[0] == 220
        start_tls(c, client_context)
        deliver(c)
    (session,) = handler.sessions
    assert session.ssl is not None
    assert session.proxy_data is handler.headers[0]
    assert session.proxy_data.src_port == 40009


# --- a real HAProxy in front ----------------------------------------------------------------------

HAPROXY = shutil.which("haproxy")
#: A second loopback address for the client, so that its address differs from the proxy's.
CLIENT_LOOPBACK = "127.0.0.2"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_bound(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


@contextmanager
def haproxy(workdir: Path, backend_port: int, server_options: str) -> Iterator[int]:
    """HAProxy in the foreground on 127.0.0.1, forwarding to ``backend_port``; yields its port."""
    assert HAPROXY is not None
    port = free_port()
    config = workdir / "haproxy.cfg"
    config.write_text(
        "global\n"
        "    maxconn 64\n"
        "defaults\n"
        "    mode tcp\n"
        "    timeout connect 5s\n"
        "    timeout client 30s\n"
        "    timeout server 30s\n"
        "frontend smtp_in\n"
        f"    bind 127.0.0.1:{port}\n"
        "    unique-id-format conn-%ci-%cp\n"
        "    default_backend typed_smtpd\n"
        "backend typed_smtpd\n"
        f"    server smtpd 127.0.0.1:{backend_port} {server_options}\n"
    )
    log = (workdir / "haproxy.log").open("wb")
    process = subprocess.Popen(
        [HAPROXY, "-f", str(config), "-db"], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 10
        while not port_is_bound(port):
            if process.poll() is not None:
                pytest.fail(f"haproxy exited: {(workdir / 'haproxy.log').read_text()}")
            if time.monotonic() > deadline:
                pytest.fail("haproxy did not start listening within 10 s")
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()


@pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (apt-get install haproxy)")
@pytest.mark.parametrize(
    ("options", "version"),
    [
        ("send-proxy", 1),
        ("send-proxy-v2", 2),
        ("send-proxy-v2 proxy-v2-options crc32c,unique-id", 2),
    ],
    ids=["send-proxy", "send-proxy-v2", "send-proxy-v2-crc32c-unique-id"],
)
def test_behind_haproxy(options: str, version: int, tmp_path: Path) -> None:
    handler = ProxyHandler()
    with (
        running(handler, proxy_protocol_timeout=HEADER_TIMEOUT) as server,
        haproxy(tmp_path, server.port, options) as front_port,
    ):
        c = ProxiedClient("127.0.0.1", front_port, b"", source=CLIENT_LOOPBACK)
        try:
            client_address, client_port = c.sock.getsockname()[:2]
            assert c.greeting[0] == 220
            deliver(c)
            assert c.cmd("QUIT")[0] == 221
        finally:
            c.close()
    (data,) = handler.headers
    assert data.valid and data.version == version
    assert data.src_addr == IPv4Address(client_address) == IPv4Address(CLIENT_LOOPBACK)
    assert data.src_port == client_port
    assert data.dst_addr == IPv4Address("127.0.0.1") and data.dst_port == front_port
    (session,) = handler.sessions
    assert session.proxy_data is data
    assert isinstance(session.peer, tuple)
    assert session.peer[0] == "127.0.0.1"  # the connection itself comes from HAProxy
    if "unique-id" in options:
        tlv = data.tlv
        assert tlv is not None and "CRC32C" in tlv
        assert tlv["UNIQUE_ID"] == f"conn-{CLIENT_LOOPBACK}-{client_port}".encode()
