"""Clients that vanish: mid-command, mid-DATA, mid-BDAT, mid-AUTH, mid-TLS handshake, mid-PROXY
header, with replies unread, while a handler is still working.

Each vanishes twice, once with a FIN (``close()``) and once with a TCP RST. Afterwards nothing is
left behind: no task in the server's event loop, no file descriptor in the process, nothing
logged at ERROR, and the next client is served.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trustme

from tests.support import TIMEOUT, RawClient, Recorder, running
from typed_smtpd.controller import Controller
from typed_smtpd.proxy_protocol import ProxyData
from typed_smtpd.session import AuthResult, Envelope, Session
from typed_smtpd.smtp import SMTP

from .helpers import (
    HOST,
    Figures,
    PrefixedClient,
    honest_delivery,
    loop_task_count,
    open_fds,
    record,
    reset_on_close,
    served_within,
)

pytestmark = pytest.mark.integration

PROXY_HEADER = b"PROXY TCP4 192.0.2.1 192.0.2.2 40000 25\r\n"
SLOW_RECIPIENT = "slow@example.test"


@dataclass
class SlowRecorder(Recorder):
    """Records messages; takes its time over those for :data:`SLOW_RECIPIENT`, and accepts
    every PROXY header."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Records the message; waits 0.3 s first for :data:`SLOW_RECIPIENT`."""
        if SLOW_RECIPIENT in envelope.rcpt_tos:
            await asyncio.sleep(0.3)
        return await super().handle_DATA(server, session, envelope)

    async def handle_PROXY(
        self, server: SMTP, session: Session, envelope: Envelope, proxy_data: ProxyData
    ) -> bool:
        """Accepts every PROXY header."""
        return True


def authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    """Accepts alice/wonderland."""
    ok = getattr(data, "login", None) == b"alice" and data.password == b"wonderland"
    return AuthResult(success=ok, handled=False)


@dataclass
class Servers:
    """The servers the clients vanish from."""

    #: STARTTLS, AUTH in the clear, a slow handler.
    main: Controller
    #: Every connection starts with a PROXY header.
    proxy: Controller
    #: Implicit TLS.
    smtps: Controller
    client_context: ssl.SSLContext


@dataclass(frozen=True)
class Pki:
    """A server certificate and a client context that trusts it."""

    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="module")
def pki() -> Pki:
    """A test CA's server context and a client context that trusts it."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return Pki(server_context, client_context)


@contextmanager
def serving(pki: Pki, **kwargs: Any) -> Iterator[Servers]:
    """Fresh servers for one test, so that whatever one attack leaves behind is its own."""
    kwargs.setdefault("grace_period", 0.2)  # a leaked connection must not slow the teardown
    common: dict[str, Any] = {"authenticator": authenticator, "auth_require_tls": False, **kwargs}
    with (
        running(SlowRecorder(), tls_context=pki.server, **common) as main,
        running(SlowRecorder(), proxy_protocol_timeout=5.0, **kwargs) as proxy,
        running(SlowRecorder(), ssl_context=pki.server, **common) as smtps,
    ):
        yield Servers(main, proxy, smtps, pki.client)


@pytest.fixture
def servers(pki: Pki) -> Iterator[Servers]:
    """Fresh servers for one test."""
    with serving(pki) as fresh:
        yield fresh


# --- the ways to vanish ---------------------------------------------------------------------------
# Each takes the servers, opens its connection, brings it to the point where it vanishes, and
# returns the socket to drop (plus the server it talks to).


def greeted(servers: Servers) -> RawClient:
    """A client of the main server that has said EHLO."""
    client = RawClient(HOST, servers.main.port)
    assert client.cmd("EHLO vanishing.example.test")[0] == 250
    return client


def in_transaction(servers: Servers, recipient: str = "rcpt@example.test") -> RawClient:
    """A greeted client with MAIL and RCPT accepted."""
    client = greeted(servers)
    assert client.cmd("MAIL FROM:<vanishing@example.test>")[0] == 250
    assert client.cmd(f"RCPT TO:<{recipient}>")[0] == 250
    return client


def before_the_greeting(servers: Servers) -> socket.socket:
    """Connects and leaves before reading anything."""
    return socket.create_connection((HOST, servers.main.port), timeout=TIMEOUT)


def mid_command(servers: Servers) -> socket.socket:
    """Leaves in the middle of a command line."""
    client = greeted(servers)
    client.send(b"MAIL FROM:<half-way@exam")
    return client.sock


def mid_pipeline_with_replies_unread(servers: Servers) -> socket.socket:
    """Pipelines 20,000 NOOPs and leaves without reading a reply."""
    client = greeted(servers)
    client.send(b"NOOP\r\n" * 20_000 + b"RCPT TO:<")
    return client.sock


def mid_data(servers: Servers) -> socket.socket:
    """Leaves in the middle of the message content."""
    client = in_transaction(servers)
    assert client.cmd("DATA")[0] == 354
    client.send(b"Subject: gone\r\n\r\nhalf a mess")
    return client.sock


def mid_data_terminator(servers: Servers) -> socket.socket:
    """Leaves one octet short of CRLF.CRLF."""
    client = in_transaction(servers)
    assert client.cmd("DATA")[0] == 354
    client.send(b"Subject: gone\r\n\r\nbody\r\n.\r")  # one octet short of the end
    return client.sock


def mid_bdat(servers: Servers) -> socket.socket:
    """Leaves in the middle of a BDAT chunk."""
    client = in_transaction(servers)
    client.send(b"BDAT 100000 LAST\r\n" + b"c" * 5000)
    return client.sock


def mid_auth(servers: Servers) -> socket.socket:
    """Leaves in the middle of the AUTH LOGIN password."""
    client = greeted(servers)
    assert client.cmd("AUTH LOGIN")[0] == 334
    assert client.cmd("YWxpY2U=")[0] == 334  # "alice"; now the password is awaited
    client.send(b"d29uZGVy")
    return client.sock


def mid_auth_plain_challenge(servers: Servers) -> socket.socket:
    """Leaves when AUTH PLAIN has asked for the credentials."""
    client = greeted(servers)
    assert client.cmd("AUTH PLAIN")[0] == 334
    return client.sock


def while_the_handler_works(servers: Servers) -> socket.socket:
    """Sends a whole message and QUIT, and leaves while handle_DATA runs."""
    client = in_transaction(servers, SLOW_RECIPIENT)
    assert client.cmd("DATA")[0] == 354
    client.send(b"Subject: slow\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    return client.sock


def _client_hello(context: ssl.SSLContext) -> bytes:
    tls = context.wrap_bio(ssl.MemoryBIO(), (out := ssl.MemoryBIO()), server_hostname=HOST)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def mid_starttls_handshake(servers: Servers) -> socket.socket:
    """Leaves after half a ClientHello."""
    client = greeted(servers)
    assert client.cmd("STARTTLS")[0] == 220
    hello = _client_hello(servers.client_context)
    client.send(hello[: len(hello) // 2])
    return client.sock


def after_starttls_mid_command(servers: Servers) -> socket.socket:
    """Leaves inside TLS, mid-command, without a close_notify."""
    client = greeted(servers)
    assert client.cmd("STARTTLS")[0] == 220
    tls = servers.client_context.wrap_socket(client.sock, server_hostname=HOST)
    tls.sendall(b"EHLO again.example.test\r\nMAIL FROM:<x@exa")
    # Vanish without close_notify: drop the TCP socket under the TLS layer.
    return socket.socket(fileno=tls.detach())


def mid_implicit_tls_handshake(servers: Servers) -> socket.socket:
    """Leaves during the handshake of implicit TLS."""
    sock = socket.create_connection((HOST, servers.smtps.port), timeout=TIMEOUT)
    hello = _client_hello(servers.client_context)
    sock.sendall(hello[:100])
    return sock


def mid_implicit_tls_auth(servers: Servers) -> socket.socket:
    """Leaves during AUTH LOGIN under implicit TLS."""
    sock = socket.create_connection((HOST, servers.smtps.port), timeout=TIMEOUT)
    tls = servers.client_context.wrap_socket(sock, server_hostname=HOST)
    tls.sendall(b"EHLO vanishing.example.test\r\nAUTH LOGIN\r\n")
    return socket.socket(fileno=tls.detach())


def mid_proxy_header(servers: Servers) -> socket.socket:
    """Leaves in the middle of the PROXY header."""
    sock = socket.create_connection((HOST, servers.proxy.port), timeout=TIMEOUT)
    sock.sendall(PROXY_HEADER[:20])
    return sock


def after_proxy_header_mid_command(servers: Servers) -> socket.socket:
    """Leaves mid-command after a complete PROXY header."""
    client = PrefixedClient(HOST, servers.proxy.port, PROXY_HEADER)
    client.send(b"EHLO x\r\nMAIL FROM")
    return client.sock


VANISHES: dict[str, Callable[[Servers], socket.socket]] = {
    fn.__name__.replace("_", " "): fn
    for fn in (
        before_the_greeting,
        mid_command,
        mid_pipeline_with_replies_unread,
        mid_data,
        mid_data_terminator,
        mid_bdat,
        mid_auth,
        mid_auth_plain_challenge,
        while_the_handler_works,
        mid_starttls_handshake,
        after_starttls_mid_command,
        mid_implicit_tls_handshake,
        mid_implicit_tls_auth,
        mid_proxy_header,
        after_proxy_header_mid_command,
    )
}


def vanish(sock: socket.socket, how: str) -> None:
    """Close ``sock`` with a FIN (``close``) or an RST (``reset``)."""
    if how == "reset":
        reset_on_close(sock)
    sock.close()


def all_controllers(servers: Servers) -> list[Controller]:
    """The three servers."""
    return [servers.main, servers.proxy, servers.smtps]


def open_slots(controller: Controller) -> int:
    """How many connections the controller's connection cap counts as open."""
    latest = controller.smtpd
    tracker = latest.connection_tracker if latest is not None else None
    return tracker.count if tracker is not None else 0


@dataclass(frozen=True)
class Counts:
    """What a server holds: loop tasks, connection slots, and the process's descriptors."""

    tasks: int
    slots: int
    fds: int

    def within(self, other: Counts) -> bool:
        """Whether every count is at most ``other``'s."""
        return self.tasks <= other.tasks and self.slots <= other.slots and self.fds <= other.fds


def counts(servers: Servers) -> Counts:
    """Tasks and connection slots of the three servers, and this process's descriptors."""
    controllers = all_controllers(servers)
    return Counts(
        tasks=sum(loop_task_count(c) for c in controllers),
        slots=sum(open_slots(c) for c in controllers),
        fds=open_fds(),
    )


IDLE = Counts(0, 0, 1 << 30)


def settled(servers: Servers, target: Counts, budget: float = 3.0) -> Counts:
    """Wait (bounded) until the servers hold no more than ``target``; return what they hold."""
    deadline = time.monotonic() + budget
    while True:
        now = counts(servers)
        if now.within(target) or time.monotonic() > deadline:
            return now
        time.sleep(0.02)


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What was logged at ERROR or with a traceback."""
    return [
        f"{r.name} {r.levelname} {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR or r.exc_info is not None
    ]


def _vanish_params() -> list[Any]:
    params: list[Any] = []
    for name in VANISHES:
        for how in ("close", "reset"):
            params.append(pytest.param(name, how, id=f"{name}-{how}"))
    return params


@pytest.mark.parametrize(("name", "how"), _vanish_params())
def test_a_vanishing_client_leaves_nothing_behind(
    name: str, how: str, servers: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    before = settled(servers, IDLE)
    sock = VANISHES[name](servers)
    vanish(sock, how)
    after = settled(servers, before)
    assert after == before
    assert errors(caplog) == []
    assert honest_delivery(servers.main.port) == 250
    assert honest_delivery(servers.proxy.port, prefix=PROXY_HEADER) == 250
    record(
        Figures(
            f"vanish ({how}) {name}",
            "-",
            honest_served=True,
            extra={"before": vars(before), "after": vars(after)},
        )
    )


def test_hundreds_of_vanishing_clients_leave_nothing_behind(
    servers: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    before = settled(servers, IDLE)
    chooser = random.Random(20231218)
    names = list(VANISHES)
    for _ in range(150):
        name = chooser.choice(names)
        how = chooser.choice(["close", "reset"])
        vanish(VANISHES[name](servers), how)
    assert settled(servers, before) == before
    assert errors(caplog) == []
    assert honest_delivery(servers.main.port) == 250


def test_handshakes_reset_by_their_clients_do_not_use_up_the_connection_cap(pki: Pki) -> None:
    with serving(pki, max_connections=3) as servers:
        for _ in range(3):
            client = greeted(servers)
            assert client.cmd("STARTTLS")[0] == 220
            vanish(client.sock, "reset")
        settled(servers, IDLE, budget=1.0)
        # Expected: 250. Observed: every later client is greeted "421 Too many connections".
        assert served_within(servers.main.port, budget=1.0) >= 0


def test_handshakes_cut_off_by_the_timeout_do_not_use_up_the_connection_cap(pki: Pki) -> None:
    with serving(pki, max_connections=2, timeout=0.3) as servers:
        clients = [greeted(servers) for _ in range(2)]
        for client in clients:
            assert client.cmd("STARTTLS")[0] == 220
        for client in clients:
            client.sock.settimeout(5.0)
            assert client.sock.recv(4096).startswith(b"421")  # cut off by the timer
            client.close()
        settled(servers, IDLE, budget=1.0)
        # Expected: 250. Observed: every later client is greeted "421 Too many connections".
        assert served_within(servers.main.port, budget=1.0) >= 0
