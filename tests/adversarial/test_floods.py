"""Floods: more connections than the cap, 10,000 recipients, endless NOOPs and junk, a 100 MiB
line, messages larger than SIZE.

Each flood gets the reply the RFCs prescribe, the server's memory stays bounded (the server runs
in a child process, so ``VmHWM`` from ``/proc`` is its own peak), it keeps no file descriptor of
the attack, and an honest client is served right after.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from typed_smtpd.proto import replies as R
from typed_smtpd.proto.limits import BOGUS_LIMIT, MAX_RECIPIENTS
from typed_smtpd.proto.replies import Reply

from .helpers import (
    HOST,
    MIB,
    Figures,
    Refused,
    ServerProcess,
    deliver_on,
    honest_delivery,
    pipelined,
    read_reply_lines,
    read_until_closed,
    record,
    reply_codes,
    served_within,
    server_process,
)

pytestmark = pytest.mark.integration

#: What a flood may add to the server's peak resident memory. The attacks stream 100 MiB or
#: more; a server that buffered them would grow by at least that much.
MEMORY_BOUND = 24 * MIB
#: The SIZE of the server that takes the oversized messages.
SIZE_LIMIT = 1 * MIB


def line(reply: Reply, *, enhanced: bool = True) -> bytes:
    """A catalogue reply as it appears on the wire, CRLF removed."""
    return reply.line(enhanced=enhanced).encode()


def repeat(data: bytes, total: int) -> Iterator[bytes]:
    """``data`` repeated to ``total`` octets in all, in writes of about 1 MiB."""
    block = data * max(MIB // len(data), 1)
    sent = 0
    while sent < total:
        piece = block[: total - sent]
        sent += len(piece)
        yield piece


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server with the default limits for the floods that need nothing else (AUTH LOGIN
    allowed in the clear, so that its exchange can be flooded without TLS)."""
    with server_process(
        tmp_path_factory.mktemp("floods"), auth_require_tls=False, password="secret"
    ) as running_server:
        yield running_server


@pytest.fixture(scope="module")
def sized_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server whose SIZE is 1 MiB."""
    with server_process(tmp_path_factory.mktemp("sized"), data_size_limit=SIZE_LIMIT) as running:
        yield running


def fds_settle(server: ServerProcess, baseline: int, budget: float = 5.0) -> int:
    """Wait (bounded) for the server's descriptor count to fall back to ``baseline``."""
    deadline = time.monotonic() + budget
    while (count := server.fd_count()) > baseline and time.monotonic() < deadline:
        time.sleep(0.02)
    return count


# --- connections ----------------------------------------------------------------------------------


def test_connections_beyond_the_cap_get_421_until_slots_free(tmp_path: Path) -> None:
    cap = 4
    with server_process(tmp_path, max_connections=cap, timeout=1.0) as server:
        baseline_fds = server.fd_count()
        before = server.reset_peak()
        started = time.monotonic()
        holders = [server.client() for _ in range(cap)]
        assert all(holder.greeting[0] == 220 for holder in holders)
        refused = []
        for _ in range(20):
            extra = server.client()
            refused.append(extra.greeting)
            assert extra.is_closed()
            extra.close()
        assert set(refused) == {(421, R.TOO_MANY_CONNECTIONS.text)}
        # The cap is global (there is no per-address cap): while the slots are held, an honest
        # client is refused too ...
        with pytest.raises(Refused):
            honest_delivery(server.port)
        # ... until the idle timeout frees them.
        for holder in holders:
            assert holder.reply() == (421, R.TIMEOUT.text)
            assert holder.is_closed()
            holder.close()
        freed_after = time.monotonic() - started
        assert honest_delivery(server.port) == 250
        growth = server.memory().peak - before.rss
        assert fds_settle(server, baseline_fds) <= baseline_fds
    assert growth < MEMORY_BOUND
    record(
        Figures(
            "connections beyond max_connections (4 held + 20)",
            f"421 {R.TOO_MANY_CONNECTIONS.text}",
            cut_off_after=freed_after,
            peak_growth=growth,
            honest_served=True,
            extra={"note": "honest client refused until the idle timeout freed a slot"},
        )
    )


def test_a_connect_and_vanish_storm_leaves_nothing_behind(tmp_path: Path) -> None:
    with server_process(tmp_path, max_connections=50) as server:
        baseline_fds = server.fd_count()
        before = server.reset_peak()
        started = time.monotonic()
        for _ in range(100):
            sock = socket.create_connection((HOST, server.port), timeout=5)
            sock.close()
        elapsed = time.monotonic() - started
        # Connections the clients already closed still hold their slots until the server has
        # read their end (some wait in the listen backlog): a newcomer may be refused briefly.
        waited = served_within(server.port)
        assert fds_settle(server, baseline_fds) <= baseline_fds
        growth = server.memory().peak - before.rss
        assert "Traceback" not in server.log()
    assert growth < MEMORY_BOUND
    record(
        Figures(
            "100 connect-and-close (max_connections=50)",
            "220 or 421 (over the cap)",
            elapsed,
            growth,
            True,
            extra={"honest_waited_s": round(waited, 3)},
        )
    )


# --- recipients -----------------------------------------------------------------------------------


def test_ten_thousand_pipelined_recipients(server: ServerProcess) -> None:
    count = 10_000
    before = server.reset_peak()
    client = server.client()
    assert client.cmd("EHLO flood.example.test")[0] == 250
    assert client.cmd("MAIL FROM:<flood@example.test>")[0] == 250
    started = time.monotonic()
    rcpts = b"".join(b"RCPT TO:<r%d@example.test>\r\n" % n for n in range(count))
    writer = pipelined(client.sock, iter([rcpts]))
    replies = read_reply_lines(client, count)
    elapsed = time.monotonic() - started
    writer.join()
    assert replies[:MAX_RECIPIENTS] == [line(R.RCPT_OK)] * MAX_RECIPIENTS
    assert replies[MAX_RECIPIENTS:] == [line(R.TOO_MANY_RECIPIENTS)] * (count - MAX_RECIPIENTS)
    # The transaction still completes with the recipients it accepted.
    assert client.cmd("DATA")[0] == 354
    client.send(b"Subject: flood\r\n\r\nbody\r\n.\r\n")
    assert client.reply()[0] == 250
    client.close()
    assert honest_delivery(server.port) == 250
    growth = server.memory().peak - before.rss
    assert growth < MEMORY_BOUND
    record(
        Figures(
            "10,000 pipelined RCPT",
            f"1000 x 250, then 452 {R.TOO_MANY_RECIPIENTS.line(enhanced=True)[4:]}",
            cut_off_after=elapsed,
            peak_growth=growth,
            honest_served=True,
        )
    )


# --- junk commands --------------------------------------------------------------------------------


def test_a_noop_flood_meets_the_command_call_limit(tmp_path: Path) -> None:
    limit = 100
    with server_process(tmp_path, command_call_limit=limit) as server:
        before = server.reset_peak()
        client = server.client()
        started = time.monotonic()
        writer = pipelined(client.sock, repeat(b"NOOP\r\n", 100_000 * 6))
        data = read_until_closed(client)
        elapsed = time.monotonic() - started
        writer.join()
        lines = data.split(b"\r\n")
        assert lines[:limit] == [line(R.OK, enhanced=False)] * limit
        assert lines[limit:] == [line(R.call_limit_exceeded("NOOP"), enhanced=False), b""]
        client.close()
        assert honest_delivery(server.port) == 250
        growth = server.memory().peak - before.rss
    assert growth < MEMORY_BOUND
    record(
        Figures(
            "100,000 pipelined NOOP (command_call_limit=100)",
            f"100 x 250, then 421 {R.call_limit_exceeded('NOOP').text}",
            elapsed,
            growth,
            True,
        )
    )


def test_a_noop_flood_without_a_call_limit_is_answered_in_bounded_memory(
    server: ServerProcess,
) -> None:
    # command_call_limit is off by default (as in aiosmtpd): every NOOP is answered, and what
    # bounds the attack is that the server never holds more than a window of it.
    count = 50_000
    before = server.reset_peak()
    client = server.client()
    started = time.monotonic()
    writer = pipelined(client.sock, repeat(b"NOOP\r\n", count * 6))
    replies = read_reply_lines(client, count)
    elapsed = time.monotonic() - started
    writer.join()
    assert set(replies) == {line(R.OK, enhanced=False)}
    assert client.cmd("QUIT")[0] == 221
    client.close()
    assert honest_delivery(server.port) == 250
    growth = server.memory().peak - before.rss
    assert growth < MEMORY_BOUND
    record(
        Figures(
            "50,000 pipelined NOOP (default: no call limit)",
            "250 to every one",
            elapsed,
            growth,
            True,
            extra={"note": "not refused by default; set command_call_limit"},
        )
    )


JUNK = {
    "unknown verb": b"XYZZY\r\n",
    "empty line": b"\r\n",
    "bad syntax": b"!!\r\n",
    "bare LF": b"NOOP\n",
    "bare CR": b"NO\rOP\r\n",
    "NUL": b"NO\x00OP\r\n",
    "line too long": b"NOOP " + b"x" * 4000 + b"\r\n",
}


@pytest.mark.parametrize("junk", list(JUNK.values()), ids=list(JUNK))
def test_endless_junk_is_cut_off_by_the_bogus_limit(junk: bytes, server: ServerProcess) -> None:
    before = server.reset_peak()
    client = server.client()
    started = time.monotonic()
    writer = pipelined(client.sock, repeat(junk, 20 * MIB))
    data = read_until_closed(client)
    elapsed = time.monotonic() - started
    writer.join()
    codes = reply_codes(data)
    assert codes[:BOGUS_LIMIT] == [500] * BOGUS_LIMIT
    assert codes[BOGUS_LIMIT:] == [421]
    assert data.endswith(line(R.TOO_MANY_UNRECOGNIZED, enhanced=False) + b"\r\n")
    client.close()
    assert honest_delivery(server.port) == 250
    growth = server.memory().peak - before.rss
    assert growth < MEMORY_BOUND
    record(
        Figures(
            f"endless junk: {junk[:12]!r}",
            f"10 x 500, then 421 {R.TOO_MANY_UNRECOGNIZED.text}",
            elapsed,
            growth,
            True,
        )
    )


# --- huge lines and messages ----------------------------------------------------------------------


def test_a_100_mib_command_line(server: ServerProcess) -> None:
    before = server.reset_peak()
    client = server.client()
    started = time.monotonic()
    client.sock.sendall(b"NOOP ")
    for chunk in repeat(b"x", 100 * MIB):
        client.sock.sendall(chunk)
    client.sock.sendall(b"\r\n")
    assert client.reply() == (R.COMMAND_TOO_LONG.code, R.COMMAND_TOO_LONG.text)
    elapsed = time.monotonic() - started
    # Refused, not fatal: the same connection goes on.
    assert deliver_on(client) == 250
    client.close()
    assert honest_delivery(server.port) == 250
    growth = server.memory().peak - before.rss
    assert growth < MEMORY_BOUND
    record(Figures("100 MiB command line", f"500 {R.COMMAND_TOO_LONG.text}", elapsed, growth, True))


def test_a_100_mib_line_in_a_sasl_response(server: ServerProcess) -> None:
    before = server.reset_peak()
    client = server.client()
    assert client.cmd("EHLO flood.example.test")[0] == 250
    assert client.cmd("AUTH LOGIN")[0] == 334
    started = time.monotonic()
    for chunk in repeat(b"A", 100 * MIB):
        client.sock.sendall(chunk)
    client.sock.sendall(b"\r\n")
    code, text = client.reply()
    elapsed = time.monotonic() - started
    assert (code, text) == (500, R.AUTH_LINE_TOO_LONG.line(enhanced=True)[4:])
    assert client.cmd("NOOP")[0] == 250
    client.close()
    assert honest_delivery(server.port) == 250
    growth = server.memory().peak - before.rss
    assert growth < MEMORY_BOUND
    record(
        Figures(
            "100 MiB AUTH LOGIN response", f"500 {R.AUTH_LINE_TOO_LONG.text}", elapsed, growth, True
        )
    )


def test_mail_declaring_more_than_size_is_refused_at_once(sized_server: ServerProcess) -> None:
    server = sized_server
    client = server.client()
    keywords = client.cmd("EHLO flood.example.test")[1].splitlines()
    assert f"SIZE {SIZE_LIMIT}" in keywords
    reply = client.cmd(f"MAIL FROM:<big@example.test> SIZE={100 * MIB}")
    assert reply == (552, R.MAIL_SIZE_TOO_LARGE.line(enhanced=True)[4:])
    assert deliver_on(client, greet=False) == 250
    client.close()
    assert honest_delivery(server.port) == 250
    record(Figures("MAIL SIZE=100 MiB over SIZE 1 MiB", f"552 {R.MAIL_SIZE_TOO_LARGE.text}"))


@pytest.mark.parametrize("shape", ["lines", "one line"])
def test_100_mib_of_data_over_the_size_limit(shape: str, sized_server: ServerProcess) -> None:
    server = sized_server
    before = server.reset_peak()
    client = server.client()
    assert client.cmd("EHLO flood.example.test")[0] == 250
    assert client.cmd("MAIL FROM:<big@example.test>")[0] == 250
    assert client.cmd("RCPT TO:<rcpt@example.test>")[0] == 250
    assert client.cmd("DATA")[0] == 354
    started = time.monotonic()
    unit = b"y" * 998 + b"\r\n" if shape == "lines" else b"y"
    for chunk in repeat(unit, 100 * MIB):
        client.sock.sendall(chunk)
    client.sock.sendall(b"\r\n.\r\n")
    assert client.reply() == (552, R.DATA_TOO_LARGE.line(enhanced=True)[4:])
    elapsed = time.monotonic() - started
    assert deliver_on(client, greet=False) == 250
    client.close()
    assert honest_delivery(server.port) == 250
    growth = server.memory().peak - before.rss
    assert growth < MEMORY_BOUND
    record(
        Figures(
            f"DATA of 100 MiB ({shape}) over SIZE 1 MiB",
            f"552 {R.DATA_TOO_LARGE.text}",
            elapsed,
            growth,
            True,
        )
    )


def test_a_100_mib_bdat_chunk_over_the_size_limit(sized_server: ServerProcess) -> None:
    server = sized_server
    before = server.reset_peak()
    client = server.client()
    assert client.cmd("EHLO flood.example.test")[0] == 250
    assert client.cmd("MAIL FROM:<big@example.test>")[0] == 250
    assert client.cmd("RCPT TO:<rcpt@example.test>")[0] == 250
    started = time.monotonic()
    size = 100 * MIB
    client.sock.sendall(b"BDAT %d LAST\r\n" % size)
    for chunk in repeat(b"z", size):
        client.sock.sendall(chunk)
    # The refused chunk is read in full and dropped (RFC 3030 section 2), so the next line
    # is a command again.
    assert client.reply() == (552, R.DATA_TOO_LARGE.line(enhanced=True)[4:])
    elapsed = time.monotonic() - started
    assert client.cmd("NOOP")[0] == 250
    assert deliver_on(client, greet=False) == 250
    client.close()
    assert honest_delivery(server.port) == 250
    growth = server.memory().peak - before.rss
    assert growth < MEMORY_BOUND
    record(
        Figures(
            "BDAT 100 MiB LAST over SIZE 1 MiB",
            f"552 {R.DATA_TOO_LARGE.text}",
            elapsed,
            growth,
            True,
        )
    )


def test_bdat_chunks_adding_up_past_the_size_limit(sized_server: ServerProcess) -> None:
    server = sized_server
    client = server.client()
    assert client.cmd("EHLO flood.example.test")[0] == 250
    assert client.cmd("MAIL FROM:<big@example.test>")[0] == 250
    assert client.cmd("RCPT TO:<rcpt@example.test>")[0] == 250
    half = SIZE_LIMIT // 2 + 1
    client.sock.sendall(b"BDAT %d\r\n" % half + b"a" * half)
    assert client.reply()[0] == 250
    client.sock.sendall(b"BDAT %d LAST\r\n" % half + b"b" * half)
    assert client.reply() == (552, R.DATA_TOO_LARGE.line(enhanced=True)[4:])
    # The transaction is gone with its chunks: a new one starts from MAIL.
    assert client.cmd("RCPT TO:<rcpt@example.test>")[0] == 503
    assert deliver_on(client, greet=False) == 250
    client.close()
    assert honest_delivery(server.port) == 250


def test_a_huge_bdat_size_does_not_reserve_memory(tmp_path: Path) -> None:
    # A client announcing a chunk of 10**12 octets and sending a few: nothing is allocated up
    # front, and vanishing leaves the server as it was.
    with server_process(tmp_path, data_size_limit=None) as server:
        before = server.reset_peak()
        client = server.client()
        assert client.cmd("EHLO flood.example.test")[0] == 250
        assert client.cmd("MAIL FROM:<big@example.test>")[0] == 250
        assert client.cmd("RCPT TO:<rcpt@example.test>")[0] == 250
        client.sock.sendall(b"BDAT 999999999999 LAST\r\n" + b"q" * 1000)
        client.close()
        assert honest_delivery(server.port) == 250
        growth = server.memory().peak - before.rss
    assert growth < MEMORY_BOUND


def test_no_traceback_in_the_server_log_after_the_floods(tmp_path: Path) -> None:
    # One server takes several floods in turn; its log has no error and no traceback.
    with server_process(tmp_path, command_call_limit=1000, data_size_limit=SIZE_LIMIT) as server:
        for junk in JUNK.values():
            client = server.client()
            writer = pipelined(client.sock, repeat(junk, MIB))
            read_until_closed(client)
            writer.join()
            client.close()
        client = server.client()
        writer = pipelined(client.sock, repeat(b"NOOP\r\n", MIB))
        assert reply_codes(read_until_closed(client))[-1] == 421
        writer.join()
        client.close()
        assert honest_delivery(server.port) == 250
        log = server.log()
    assert "Traceback" not in log
    assert "ERROR" not in log
