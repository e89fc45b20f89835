"""Slowloris: clients that dribble one byte at a time to hold a connection open forever.

Each attack sends one byte every :data:`INTERVAL` seconds, ten times more often than the idle
timeout, so only a deadline can end it: in a command line, in DATA, in a BDAT chunk, in an AUTH
exchange, in the PROXY header and in the TLS handshake. The timeouts are scaled down (one second
instead of five minutes) so the suite stays fast; the ratios are what matter.

All attacks run at once, each against its own server, and while they run an honest client is
served by every one of those servers. Then each attack must have been cut off by its deadline.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support import TIMEOUT, RawClient, running
from typed_smtpd.controller import Controller
from typed_smtpd.proto import replies as R
from typed_smtpd.proxy_protocol import ProxyData
from typed_smtpd.session import AuthResult, Envelope, Session
from typed_smtpd.smtp import SMTP

from .helpers import HOST, Dribbler, Figures, Outcome, honest_delivery, record

pytestmark = pytest.mark.integration

#: Seconds between two bytes of an attack.
INTERVAL = 0.1
#: The idle timeout: ten intervals, so a dribble never lets it fire.
IDLE = 1.0
#: The deadline of one DATA or BDAT transfer, and of the PROXY header.
DEADLINE = 1.5
#: How long an attack may go on before the test gives its verdict: well past every deadline.
BUDGET = 4.0

PROXY_HEADER = b"PROXY TCP4 192.0.2.1 192.0.2.2 40000 25\r\n"


def authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    """Accepts nobody: the attacks never get that far."""
    return AuthResult(success=False, handled=False)


class ProxyAcceptor:
    """A handler that accepts every PROXY header."""

    async def handle_PROXY(
        self, server: SMTP, session: Session, envelope: Envelope, proxy_data: ProxyData
    ) -> bool:
        """Accepts every header."""
        return True


def greeted(port: int) -> RawClient:
    """A client that has said EHLO."""
    client = RawClient(HOST, port)
    assert client.cmd("EHLO slow.example.test")[0] == 250
    return client


def in_command(port: int) -> socket.socket:
    """A greeted connection: the attack is a command line."""
    return greeted(port).sock


def in_data(port: int) -> socket.socket:
    """A connection after the 354 to DATA."""
    client = greeted(port)
    assert client.cmd("MAIL FROM:<slow@example.test>")[0] == 250
    assert client.cmd("RCPT TO:<rcpt@example.test>")[0] == 250
    assert client.cmd("DATA")[0] == 354
    return client.sock


def in_bdat(port: int) -> socket.socket:
    """A connection after ``BDAT 100000 LAST``."""
    client = greeted(port)
    assert client.cmd("MAIL FROM:<slow@example.test>")[0] == 250
    assert client.cmd("RCPT TO:<rcpt@example.test>")[0] == 250
    client.send(b"BDAT 100000 LAST\r\n")
    return client.sock


def in_auth(port: int) -> socket.socket:
    """A connection after the first 334 of AUTH LOGIN."""
    client = greeted(port)
    assert client.cmd("AUTH LOGIN")[0] == 334
    return client.sock


def in_proxy_header(port: int) -> socket.socket:
    """A new connection to a PROXY protocol port: the header is the attack."""
    return socket.create_connection((HOST, port), timeout=TIMEOUT)


def in_tls_handshake(port: int) -> socket.socket:
    """A connection after the 220 to STARTTLS."""
    client = greeted(port)
    assert client.cmd("STARTTLS")[0] == 220
    return client.sock


def client_hello() -> bytes:
    """The first flight of a TLS client: what a handshake dribbler sends."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls = context.wrap_bio(incoming, outgoing)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


@dataclass(frozen=True)
class Attack:
    """One slowloris: how to reach the point of attack, and what to dribble from there."""

    name: str
    reach: Callable[[int], socket.socket]
    payload: bytes
    server: dict[str, Any] = field(default_factory=dict)
    handler: Callable[[], object] | None = None
    #: What an honest client must send first on this server.
    honest_prefix: bytes = b""
    #: What the server says when it cuts the attack off.
    cut_off_reply: str = R.TIMEOUT.line(enhanced=True)


ATTACKS = {
    "command": Attack("command", in_command, b"MAIL FROM:<" + b"a" * 1000),
    "DATA": Attack("DATA", in_data, b"x" * 1000),
    "BDAT": Attack("BDAT", in_bdat, b"x" * 1000),
    "AUTH": Attack(
        "AUTH",
        in_auth,
        b"YWxpY2U" * 100,
        server={"auth_require_tls": False, "authenticator": authenticator},
    ),
    "PROXY header": Attack(
        "PROXY header",
        in_proxy_header,
        PROXY_HEADER[:-2] + b" " * 100,
        server={"proxy_protocol_timeout": DEADLINE},
        handler=ProxyAcceptor,
        honest_prefix=PROXY_HEADER,
        cut_off_reply=R.TIMEOUT.line(enhanced=False),
    ),
    "TLS handshake": Attack("TLS handshake", in_tls_handshake, b""),
}

#: Attacks the server would not cut off: none (every line and transfer has a deadline).
NOT_CUT_OFF: dict[str, str] = {}


@dataclass
class Result:
    """What happened to one attack, and to the honest clients served during it."""

    outcome: Outcome
    honest_codes: list[int]
    attack_alive_while_honest_served: bool


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Result]]:
    """Run every attack at once, each against its own server, honest clients in between."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert = _server_certificate(tmp_path_factory)
    context.load_cert_chain(*cert)
    with ExitStack() as stack:
        servers: dict[str, Controller] = {}
        for name, attack in ATTACKS.items():
            kwargs: dict[str, Any] = {
                "timeout": IDLE,
                "data_timeout": DEADLINE,
                "grace_period": 0.2,
                **attack.server,
            }
            if name == "TLS handshake":
                kwargs["tls_context"] = context
            handler = attack.handler() if attack.handler is not None else None
            servers[name] = stack.enter_context(running(handler, **kwargs))
        dribblers: dict[str, Dribbler] = {}
        for name, attack in ATTACKS.items():
            sock = attack.reach(servers[name].port)
            stack.callback(sock.close)
            payload = attack.payload or client_hello()
            dribblers[name] = Dribbler(sock, payload, interval=INTERVAL, budget=BUDGET)
        for dribbler in dribblers.values():
            dribbler.start()
        for dribbler in dribblers.values():
            dribbler.started.wait(TIMEOUT)
        time.sleep(3 * INTERVAL)  # every attack is under way
        honest: dict[str, list[int]] = {}
        alive: dict[str, bool] = {}
        for name, attack in ATTACKS.items():
            codes = [
                honest_delivery(servers[name].port, prefix=attack.honest_prefix) for _ in range(3)
            ]
            honest[name] = codes
            alive[name] = dribblers[name].outcome.cut_off_after is None
        for dribbler in dribblers.values():
            dribbler.join(BUDGET + TIMEOUT)
            assert not dribbler.is_alive()
        yield {name: Result(dribblers[name].outcome, honest[name], alive[name]) for name in ATTACKS}


def _server_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    import trustme

    folder = tmp_path_factory.mktemp("slowloris-pki")
    cert = trustme.CA().issue_cert("127.0.0.1")
    chain, key = folder / "chain.pem", folder / "key.pem"
    for blob in cert.cert_chain_pems:
        blob.write_to_path(str(chain), append=True)
    cert.private_key_pem.write_to_path(str(key))
    return str(chain), str(key)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_honest_clients_are_served_during_the_attack(name: str, results: dict[str, Result]) -> None:
    result = results[name]
    assert result.honest_codes == [250, 250, 250]
    assert result.attack_alive_while_honest_served


def _cut_off_params() -> list[Any]:
    return [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=NOT_CUT_OFF[name]))
        if name in NOT_CUT_OFF
        else name
        for name in ATTACKS
    ]


@pytest.mark.parametrize("name", _cut_off_params())
def test_the_attack_is_cut_off_by_its_deadline(name: str, results: dict[str, Result]) -> None:
    result = results[name]
    outcome = result.outcome
    record(
        Figures(
            f"slowloris: one byte per {INTERVAL} s in {name}",
            outcome.last_reply or ("(closed)" if outcome.cut_off_after is not None else "-"),
            cut_off_after=outcome.cut_off_after,
            honest_served=result.honest_codes == [250, 250, 250],
            extra={"bytes_sent": outcome.sent, "cut_off": outcome.cut_off_after is not None},
        )
    )
    assert outcome.cut_off_after is not None, (
        f"still connected after {BUDGET} s and {outcome.sent} bytes"
    )
    assert outcome.last_reply == ATTACKS[name].cut_off_reply


def test_a_stalled_handshake_is_logged_as_a_timeout_not_an_error(
    tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*_server_certificate(tmp_path_factory))
    with running(tls_context=context, timeout=IDLE, grace_period=0.2) as server:
        sock = in_tls_handshake(server.port)
        try:
            sock.settimeout(IDLE + TIMEOUT)
            assert sock.recv(4096).startswith(b"421")
        finally:
            sock.close()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
