"""SMTP smuggling and STARTTLS injection over real sockets, as the public scanners attack servers.

The smuggling matrix: every malformed end-of-data sequence of the SEC Consult and smtpsmug
scanners, in DATA (in the middle of the content, as its first line, and trickled byte by byte)
and in BDAT (one chunk, or split across two chunks at the sequence), as 7-bit text and as
BINARYMIME, under each bare-newline policy. In every cell the smuggled ``MAIL``/``RCPT``/``DATA``
is never answered, at most one message is delivered, with the real envelope and the smuggled
text still inside its content.

The STARTTLS cases are the injection and response-timing variants of the NO STARTTLS test set
that apply to servers and that ``test_starttls`` does not already cover: injection in a separate
segment, a command split across the upgrade, a ClientHello sent before the ``220``, two pipelined
STARTTLS, and plaintext sent after a TLS ``close_notify`` (also in the middle of a BDAT chunk).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support import RECORDERS, RawClient, Recorder, connected, running
from tests.tls_support import MemoryTLS, nothing_arrives, start_tls
from typed_smtpd.proto import replies as R
from typed_smtpd.proto.data import has_bare_newline_or_nul
from typed_smtpd.testing.strategies import SMUGGLING_SEQUENCES

from .helpers import HOST, PrefixedClient, read_until_closed, reply_codes

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.tls_fixtures"]

POLICIES = ["reject", "normalize", "accept"]
SMUGGLED = (
    b"MAIL FROM:<smuggled@evil.test>\r\nRCPT TO:<victim@evil.test>\r\nDATA\r\n"
    b"Subject: smuggled\r\n\r\nsecond\r\n"
)
SENDER, RECIPIENT = "sender@example.test", "rcpt@example.test"
ENVELOPE = f"EHLO client.example.test\r\nMAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\n"


@pytest.fixture(params=sorted(RECORDERS))
def recorder(request: pytest.FixtureRequest) -> Recorder:
    """Each case with a handler that takes the whole message, and one that streams it."""
    return RECORDERS[request.param]()


def ids(sequence: bytes) -> str:
    """A readable test id for a byte sequence."""
    return repr(sequence)[2:-1]


def expected_final(policy: str, binary: bool = False) -> int:
    """Every scanner sequence holds a bare CR, a bare LF or a NUL: refused under ``reject``."""
    return 250 if binary or policy != "reject" else R.DATA_BAD_LINE_ENDING.code


def check_delivery(recorder: Recorder, final: int, policy: str, *, binary: bool = False) -> bytes:
    """At most one message, with the real envelope, the smuggled text inside; its content."""
    if final != 250:
        assert recorder.envelopes == []
        return b""
    (envelope,) = recorder.envelopes
    assert envelope.mail_from == SENDER
    assert envelope.rcpt_tos == [RECIPIENT]
    content = envelope.original_content
    assert isinstance(content, bytes)
    assert b"MAIL FROM:<smuggled@evil.test>" in content
    assert b"second" in content
    if policy == "normalize" and not binary:
        assert not has_bare_newline_or_nul(content)
    return content


def finish(client: RawClient) -> list[int]:
    """Send NOOP and QUIT; the codes of everything the server still says until it closes."""
    client.send(b"NOOP\r\nQUIT\r\n")
    return reply_codes(read_until_closed(client))


# --- DATA -----------------------------------------------------------------------------------------


def send_trickled(client: RawClient, data: bytes, around: int, width: int) -> None:
    """Send ``data`` with the ``width`` octets at ``around`` one per write (separate segments)."""
    client.send(data[:around])
    for index in range(around, around + width):
        time.sleep(0.002)
        client.send(data[index : index + 1])
    time.sleep(0.002)
    client.send(data[around + width :])


@pytest.mark.parametrize("where", ["in the middle", "as the first line", "trickled"])
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("sequence", SMUGGLING_SEQUENCES, ids=ids)
def test_data(sequence: bytes, policy: str, where: str, recorder: Recorder) -> None:
    if where == "as the first line":
        # Right after the 354: the CRLF that ended "DATA" stands in for a leading CRLF, so the
        # first line is ".\n", ".\r", ".\x00\r\n" ...; a sequence with a bare newline in front
        # is sent whole (dropping it would leave the real ".\r\n").
        first = sequence[2:] if sequence.startswith(b"\r\n") else sequence
        body = first + SMUGGLED
    else:
        body = b"Subject: one\r\n\r\nfirst" + sequence + SMUGGLED
    with running(recorder, bare_newline=policy) as server, connected(server) as client:
        client.send(ENVELOPE + "DATA\r\n")
        assert [code for code, _ in client.replies(4)] == [250, 250, 250, 354]
        if where == "trickled":
            start = body.index(sequence)
            send_trickled(client, body + b".\r\n", start, len(sequence))
        else:
            client.send(body + b".\r\n")
        final = client.reply()[0]
        # Exactly three replies: the message's, NOOP's, QUIT's. A smuggled MAIL, RCPT or DATA
        # would have added its own.
        assert final == expected_final(policy)
        assert finish(client) == [250, 221]
    check_delivery(recorder, final, policy)


# --- BDAT -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunks", ["one chunk", "split at the sequence"])
@pytest.mark.parametrize("body", ["7BIT", "BINARYMIME"])
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("sequence", SMUGGLING_SEQUENCES, ids=ids)
def test_bdat(sequence: bytes, policy: str, body: str, chunks: str, recorder: Recorder) -> None:
    # A chunk is counted, never scanned: even a real CRLF.CRLF inside it is content.
    content = b"Subject: one\r\n\r\nfirst" + sequence + SMUGGLED + b".\r\n"
    binary = body == "BINARYMIME"
    if chunks == "one chunk":
        parts = [content]
    else:
        cut = content.index(sequence) + len(sequence) // 2 + 1
        parts = [content[:cut], content[cut:]]
    with running(recorder, bare_newline=policy) as server, connected(server) as client:
        mail = f"MAIL FROM:<{SENDER}> BODY={body}\r\n"
        client.send(ENVELOPE.replace(f"MAIL FROM:<{SENDER}>\r\n", mail))
        assert [code for code, _ in client.replies(3)] == [250, 250, 250]
        for index, part in enumerate(parts):
            last = b" LAST" if index == len(parts) - 1 else b""
            client.send(b"BDAT %d%s\r\n" % (len(part), last) + part)
            if last:
                break
            assert client.reply()[0] == 250
        final = client.reply()[0]
        assert final == expected_final(policy, binary)
        assert finish(client) == [250, 221]
    delivered = check_delivery(recorder, final, policy, binary=binary)
    if final == 250 and (binary or policy == "accept"):
        assert delivered == content  # byte for byte: no unstuffing, no newline rewriting


# --- commands -------------------------------------------------------------------------------------

COMMAND_TRICKS = {
    # A bare CR inside a command never splits it in two.
    "bare CR between commands": b"MAIL FROM:<a@example.test>\rRCPT TO:<smuggled@evil.test>\r\n",
    "NUL between commands": b"MAIL FROM:<a@example.test>\x00RCPT TO:<smuggled@evil.test>\r\n",
}


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("trick", list(COMMAND_TRICKS.values()), ids=list(COMMAND_TRICKS))
def test_a_command_never_hides_a_second_one(trick: bytes, policy: str, recorder: Recorder) -> None:
    with running(recorder, bare_newline=policy) as server, connected(server) as client:
        assert client.cmd("EHLO client.example.test")[0] == 250
        client.send(trick)
        code, _ = client.reply()
        assert code in (500, 501, 553)  # refused as one malformed line, whatever the policy
        # No transaction was opened by the hidden MAIL, no recipient added by the hidden RCPT.
        assert client.cmd("RCPT TO:<victim@example.test>")[0] == 503
        assert finish(client) == [250, 221]


@pytest.mark.parametrize("policy", POLICIES)
def test_bare_lf_command_terminators(policy: str, recorder: Recorder) -> None:
    with running(recorder, bare_newline=policy) as server, connected(server) as client:
        assert client.cmd("EHLO client.example.test")[0] == 250
        client.send(b"MAIL FROM:<a@example.test>\nRCPT TO:<b@example.test>\r\n")
        codes = [client.reply()[0], client.reply()[0]]
        if policy == "reject":
            assert codes == [R.BAD_LINE_ENDING.code, 503]  # the MAIL line was refused
        else:
            assert codes == [250, 250]  # LF ends a line, as Postfix's "normalize" does
        assert finish(client) == [250, 221]


# --- STARTTLS: injection and response timing ------------------------------------------------------


@dataclass(frozen=True)
class TLSPair:
    """The server's and the client's contexts."""

    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture
def tls(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> TLSPair:
    """The test PKI's server and client contexts."""
    return TLSPair(server_context, client_context)


@pytest.fixture
def tls_recorder(tls: TLSPair, recorder: Recorder) -> Iterator[tuple[Recorder, RawClient]]:
    """A recording STARTTLS server and a client connected to it."""
    with (
        running(recorder, tls_context=tls.server, timeout=2.0, grace_period=0.2) as server,
        connected(server) as client,
    ):
        yield recorder, client


def deliver_inside_tls(client: RawClient) -> None:
    """Greet again and deliver one message; every reply positive."""
    assert client.cmd("EHLO real.example.test")[0] == 250
    assert client.cmd(f"MAIL FROM:<{SENDER}>")[0] == 250
    assert client.cmd(f"RCPT TO:<{RECIPIENT}>")[0] == 250
    assert client.cmd("DATA")[0] == 354
    assert client.cmd("Subject: real\r\n\r\nbody\r\n.")[0] == 250


def test_starttls_pipelined_behind_ehlo(
    tls: TLSPair, tls_recorder: tuple[Recorder, RawClient]
) -> None:
    recorder, client = tls_recorder
    client.send(b"EHLO probe.example.test\r\nSTARTTLS\r\n")
    assert client.reply()[0] == 250
    assert client.reply()[0] == 220
    start_tls(client, tls.client)
    assert client.cmd(f"MAIL FROM:<{SENDER}>") == (503, R.HELLO_FIRST.text)
    deliver_inside_tls(client)
    assert [e.mail_from for e in recorder.envelopes] == [SENDER]


def test_injection_in_its_own_segment_before_the_220_is_read(
    tls: TLSPair, tls_recorder: tuple[Recorder, RawClient]
) -> None:
    recorder, client = tls_recorder
    assert client.cmd("EHLO probe.example.test")[0] == 250
    client.send(b"STARTTLS\r\n")
    client.send(b"EHLO injected\r\nMAIL FROM:<attacker@evil.test>\r\nRCPT TO:<v@evil.test>\r\n")
    assert client.reply()[0] == 220
    # The injected bytes were either buffered with STARTTLS (and discarded) or arrived after
    # it, where the server expects a ClientHello (and the handshake fails). Never answered.
    try:
        start_tls(client, tls.client)
    except (ssl.SSLError, ConnectionError, OSError):
        assert recorder.envelopes == []
        return
    assert client.cmd(f"RCPT TO:<{RECIPIENT}>") == (503, R.HELLO_FIRST.text)
    deliver_inside_tls(client)
    assert [e.mail_from for e in recorder.envelopes] == [SENDER]


def test_a_command_split_across_the_upgrade_is_not_reassembled(
    tls: TLSPair, tls_recorder: tuple[Recorder, RawClient]
) -> None:
    recorder, client = tls_recorder
    assert client.cmd("EHLO probe.example.test")[0] == 250
    client.send(b"STARTTLS\r\nMAIL FR")
    assert client.reply()[0] == 220
    start_tls(client, tls.client)
    # "OM:<...>" is all that counts after TLS: not a MAIL command.
    code, _ = client.cmd("OM:<attacker@evil.test>")
    assert code == 500
    assert client.cmd(f"RCPT TO:<{RECIPIENT}>") == (503, R.HELLO_FIRST.text)
    deliver_inside_tls(client)
    assert [e.mail_from for e in recorder.envelopes] == [SENDER]


def test_a_client_hello_sent_before_the_220_is_discarded(tls: TLSPair) -> None:
    # A client that does not wait for the 220 sends its ClientHello with STARTTLS; those bytes
    # came before the server agreed, so they are dropped like any other pipelined bytes. The
    # handshake then never starts, and the connection ends at the timeout.
    with running(tls_context=tls.server, timeout=1.0, grace_period=0.2) as server:
        client = PrefixedClient(HOST, server.port, b"", timeout=5)
        sock = client.sock
        try:
            assert client.greeting[0] == 220
            assert client.cmd("EHLO eager.example.test")[0] == 250
            tls_client = MemoryTLS(sock, tls.client)
            try:
                tls_client.tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            sock.sendall(b"STARTTLS\r\n" + tls_client.outgoing.read())
            assert client.reply()[0] == 220
            rest = read_until_closed(client)
            # No ServerHello (a TLS record starts with 0x16), at most the timeout's 421.
            assert not rest.startswith(b"\x16")
            assert rest in (b"", R.TIMEOUT.line(enhanced=True).encode() + b"\r\n")
        finally:
            sock.close()


def test_two_pipelined_starttls_upgrade_once(
    tls: TLSPair, tls_recorder: tuple[Recorder, RawClient]
) -> None:
    _, client = tls_recorder
    assert client.cmd("EHLO probe.example.test")[0] == 250
    client.send(b"STARTTLS\r\nSTARTTLS\r\n")
    assert client.reply()[0] == 220
    start_tls(client, tls.client)  # the second STARTTLS was discarded: nothing answers it
    assert client.cmd("EHLO real.example.test")[0] == 250
    assert client.cmd("STARTTLS") == (503, R.TLS_ALREADY_ACTIVE.line(enhanced=True)[4:])
    assert client.cmd("QUIT")[0] == 221


def _upgraded(client: RawClient, context: ssl.SSLContext) -> ssl.SSLSocket:
    assert client.cmd("EHLO probe.example.test")[0] == 250
    assert client.cmd("STARTTLS")[0] == 220
    return start_tls(client, context)


@pytest.mark.parametrize("where", ["between commands", "in a BDAT chunk"])
def test_plaintext_after_close_notify_is_never_processed(
    where: str, tls: TLSPair, tls_recorder: tuple[Recorder, RawClient]
) -> None:
    recorder, client = tls_recorder
    tls_sock = _upgraded(client, tls.client)
    assert client.cmd("EHLO real.example.test")[0] == 250
    if where == "in a BDAT chunk":
        assert client.cmd(f"MAIL FROM:<{SENDER}>")[0] == 250
        assert client.cmd(f"RCPT TO:<{RECIPIENT}>")[0] == 250
        tls_sock.sendall(b"BDAT 100 LAST\r\n" + b"x" * 10)
    try:
        raw = tls_sock.unwrap()  # close_notify, then back to the bare TCP socket
    except (ssl.SSLError, OSError):
        # Python 3.10's asyncio answers close_notify by closing the connection outright: no
        # cleartext can follow at all.
        assert recorder.envelopes == []
        return
    raw.settimeout(5)
    try:
        raw.sendall(b"X\r\nNOOP\r\nMAIL FROM:<cleartext@evil.test>\r\n")
    except OSError:
        pass
    received = b""
    try:
        while chunk := raw.recv(4096):
            received += chunk
    except (OSError, TimeoutError):
        pass
    raw.close()
    # Whatever came back is TLS (an alert or close_notify), never a cleartext reply.
    assert b"250" not in received and b"500" not in received
    assert recorder.envelopes == []


def test_the_server_still_serves_tls_after_the_injection_attempts(
    tls: TLSPair, tls_recorder: tuple[Recorder, RawClient]
) -> None:
    recorder, client = tls_recorder
    client.send(b"EHLO probe\r\nSTARTTLS\r\nEHLO injected\r\nAUTH PLAIN AGEAYg==\r\n")
    assert client.reply()[0] == 250
    assert client.reply()[0] == 220
    tls_sock = start_tls(client, tls.client)
    assert nothing_arrives(tls_sock)
    deliver_inside_tls(client)
    assert [e.mail_from for e in recorder.envelopes] == [SENDER]
