"""What an operator sees: the event lines, the live counters and the Prometheus endpoint, after a
scripted run of good and bad clients over real sockets."""

from __future__ import annotations

import base64
import dataclasses
import logging
import re
import socket
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import running
from typed_smtpd.controller import Controller
from typed_smtpd.monitoring import ConnectionMonitor, ServerStats, StatsSnapshot, format_peer
from typed_smtpd.session import AuthResult, Envelope, LoginPassword, Session
from typed_smtpd.smtp import SMTP

pytest.importorskip("prometheus_client")
from typed_smtpd.metrics import serve_metrics

EVENT_LINE = re.compile(r"^(?P<sid>[0-9A-F]{10}) (?P<event>[a-z-]+)(?: (?P<fields>.*))?$")


class Accepting:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 Stored"


def authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: object
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and data.password == b"right"
    return AuthResult(success=ok)


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""
        self.reply()

    def reply(self) -> bytes:
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            if line[3:4] != b"-":
                return line

    def cmd(self, line: str | bytes) -> int:
        self.sock.sendall(line if isinstance(line, bytes) else line.encode() + b"\r\n")
        return int(self.reply()[:3])

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def scripted(
    caplog: pytest.LogCaptureFixture,
) -> Iterator[tuple[Controller, list[logging.LogRecord]]]:
    caplog.set_level(logging.INFO, logger="mail.log")
    with running(
        Accepting(),
        authenticator=authenticator,
        auth_require_tls=False,
        data_size_limit=10_000,
    ) as controller:
        port = controller.port
        good = Client(port)  # two messages, one with two recipients
        assert good.cmd("EHLO good.test") == 250
        for recipients in (["a@x.test"], ["b@x.test", "c@x.test"]):
            assert good.cmd("MAIL FROM:<anne@example.com>") == 250
            for rcpt in recipients:
                assert good.cmd(f"RCPT TO:<{rcpt}>") == 250
            assert good.cmd("DATA") == 354
            assert good.cmd(b"Subject: hi\r\n\r\nhello\r\n.\r\n") == 250
        assert good.cmd("QUIT") == 221
        good.close()

        bad = Client(port)  # two refused commands
        assert bad.cmd("EHLO bad.test") == 250
        assert bad.cmd("FROB") == 500
        assert bad.cmd("RCPT TO:<x@y.test>") == 503
        assert bad.cmd("QUIT") == 221
        bad.close()

        guesser = Client(port)  # two AUTH failures, then a success
        assert guesser.cmd("EHLO guess.test") == 250
        assert guesser.cmd(f"AUTH PLAIN {plain('anne', 'wrong')}") == 535
        assert guesser.cmd(f"AUTH PLAIN {plain('anne', 'nope')}") == 535
        assert guesser.cmd(f"AUTH PLAIN {plain('anne', 'right')}") == 235
        assert guesser.cmd("QUIT") == 221
        guesser.close()

        big = Client(port)  # one message over the size limit
        assert big.cmd("EHLO big.test") == 250
        assert big.cmd("MAIL FROM:<bart@example.com>") == 250
        assert big.cmd("RCPT TO:<a@x.test>") == 250
        assert big.cmd("DATA") == 354
        assert big.cmd(b"x" * 998 + b"\r\n" * 1 + (b"y" * 998 + b"\r\n") * 20 + b".\r\n") == 552
        assert big.cmd("QUIT") == 221
        big.close()

        gone = Client(port)  # leaves in the middle of a message
        assert gone.cmd("EHLO gone.test") == 250
        assert gone.cmd("MAIL FROM:<cate@example.com>") == 250
        assert gone.cmd("RCPT TO:<a@x.test>") == 250
        assert gone.cmd("DATA") == 354
        gone.sock.sendall(b"Subject: half\r\n\r\nsome of it\r\n")
        gone.close()
        deadline = time.monotonic() + 10
        while controller.stats.connections_open and time.monotonic() < deadline:
            time.sleep(0.01)
        yield controller, [r for r in caplog.records if r.name == "mail.log"]


def events(records: list[logging.LogRecord]) -> Counter[str]:
    return Counter(
        getattr(record, "smtp_event", None) for record in records if hasattr(record, "smtp_event")
    )


def test_the_counters_equal_what_was_sent(scripted: tuple[Controller, Any]) -> None:
    controller, _ = scripted
    stats = controller.stats
    assert stats.connections_total == 5 and stats.connections_open == 0
    assert stats.messages_accepted == 2 and stats.recipients == 3
    assert stats.messages_refused == 1 and stats.limits == {"size": 1}
    assert stats.messages_abandoned == 1
    assert stats.auth_failures == 2 and stats.auth_successes == 1
    assert stats.commands_refused == 4  # FROB, the early RCPT and the two 535s
    assert stats.hook_errors == 0 and stats.timeouts == 0
    assert stats.bytes_received > 20 * 1000


def test_one_line_per_event(scripted: tuple[Controller, Any]) -> None:
    _, records = scripted
    counts = events(records)
    assert counts["connect"] == 5 and counts["disconnect"] == 5
    assert counts["accepted"] == 2 and counts["refused"] == 1
    assert counts["auth-failed"] == 2 and counts["auth"] == 1
    assert counts["reject"] == 2  # the 535s are said by the auth-failed lines
    for record in records:
        if hasattr(record, "smtp_event"):
            assert record.levelno == logging.INFO
            match = EVENT_LINE.match(record.getMessage())
            assert (
                match
                and match["sid"] == record.smtp_session
                and match["event"] == record.smtp_event
            )


def test_the_lines_carry_what_operators_grep_for(scripted: tuple[Controller, Any]) -> None:
    _, records = scripted
    lines = [r.getMessage() for r in records if hasattr(r, "smtp_event")]
    accepted = [line for line in lines if " accepted " in line]
    assert re.search(
        r" id=[0-9A-F]{10}\.2 from=<anne@example.com> rcpts=2 size=\d+ reply=\"250 Stored\"",
        accepted[1],
    )
    (refused,) = [line for line in lines if " refused " in line]
    assert "limit=size" in refused and 'reply="552 5.3.4 Error: Too much mail data"' in refused
    failures = [line for line in lines if " auth-failed " in line]
    assert all(
        re.search(r"client=127\.0\.0\.1:\d+ mechanism=PLAIN user=anne$", f) for f in failures
    )
    assert not any("wrong" in line or "nope" in line for line in lines)  # never the secret
    (vanished,) = [line for line in lines if "vanished=" in line]
    assert " disconnect " in vanished and "vanished=DATA" in vanished
    (bad,) = [line for line in lines if "command=FROB" in line]
    assert 'reply="500 5.5.1 Error: command \\"FROB\\" not recognized"' in bad


def test_json_formatters_get_the_fields(scripted: tuple[Controller, Any]) -> None:
    _, records = scripted
    (refused,) = [r for r in records if getattr(r, "smtp_event", None) == "refused"]
    assert refused.smtp_limit == "size"
    assert refused.smtp_rcpts == 1
    assert refused.smtp_from == "<bart@example.com>"


def test_metrics_over_http(scripted: tuple[Controller, Any]) -> None:
    controller, _ = scripted
    server, port = serve_metrics(lambda: controller.stats)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("typed_smtpd_")
    }
    assert values["typed_smtpd_messages_accepted_total"] == 2
    assert values["typed_smtpd_messages_refused_total"] == 1
    assert values["typed_smtpd_recipients_total"] == 3
    assert values["typed_smtpd_auth_failures_total"] == 2
    assert values["typed_smtpd_connections_total"] == 5
    assert values["typed_smtpd_connections_open"] == 0
    assert values['typed_smtpd_limit_refusals_total{limit="size"}'] == 1


def test_connections_turned_away_at_the_cap(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mail.log")
    with running(Accepting(), max_connections=1) as controller:
        first = Client(controller.port)
        with socket.create_connection(("127.0.0.1", controller.port), timeout=10) as second:
            assert second.recv(1024).startswith(b"421 Too many connections")
        first.close()
    assert controller.stats.connections_refused == 1
    assert controller.stats.limits["connections"] == 1
    assert any("limit=connections" in r.getMessage() for r in caplog.records)


def test_nothing_is_formatted_while_info_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("formatted a line nobody logs")

    monkeypatch.setattr(ConnectionMonitor, "_emit", refuse)
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    try:
        with running(Accepting()) as controller:
            client = Client(controller.port)
            assert client.cmd("EHLO c.test") == 250
            assert client.cmd("FROB") == 500
            assert client.cmd("QUIT") == 221
            client.close()
    finally:
        logging.getLogger("mail.log").setLevel(logging.NOTSET)
    assert controller.stats.commands_refused == 1


def test_values_cannot_forge_lines() -> None:
    stats = ServerStats()
    monitor = ConnectionMonitor(stats, time.monotonic)
    assert monitor.id != ConnectionMonitor(stats, time.monotonic).id
    logger = logging.getLogger("mail.log")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        monitor.refused("RCPT", b"550 no\r\nFAKE 0000000000 accepted", None)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    (record,) = records
    assert "\n" not in record.getMessage() and "\\r\\n" in record.getMessage()


def test_snapshots_add_up() -> None:
    stats = ServerStats(messages_accepted=2, limits={"size": 1})
    other = ServerStats(messages_accepted=3, limits={"size": 2, "recipients": 1})
    total = stats.snapshot() + other.snapshot()
    assert total.messages_accepted == 5
    assert dict(total.limits) == {"size": 3, "recipients": 1}
    assert StatsSnapshot() + StatsSnapshot() == StatsSnapshot()


def test_a_snapshot_has_every_counter_of_the_live_stats() -> None:
    # The two classes list the counters twice (one mutable, one frozen): they must agree.
    live = [f.name for f in dataclasses.fields(ServerStats)]
    assert [f.name for f in dataclasses.fields(StatsSnapshot)] == live
    stats = ServerStats(**{name: index + 1 for index, name in enumerate(live[:-1])})
    snapshot = stats.snapshot()
    assert [getattr(snapshot, name) for name in live[:-1]] == list(range(1, len(live)))


def test_peers_are_shown_as_operators_read_them() -> None:
    assert format_peer(("192.0.2.1", 25)) == "192.0.2.1:25"
    assert format_peer(("2001:db8::1", 25, 0, 0)) == "[2001:db8::1]:25"
    assert format_peer("/run/smtp.sock") == "/run/smtp.sock"
    assert format_peer(None) == "unknown"
