"""Soak: many clients for a bounded time against one server storing into a Maildir.

The server (a :class:`~typed_smtpd.controller.Controller` with the
:class:`~typed_smtpd.handlers.Mailbox` handler, STARTTLS and AUTH) runs in a child process, so
its resident memory can be sampled from ``/proc``. Client threads loop until the time is up, each
session choosing at random: plain or STARTTLS, authenticated or not, one to three messages of
mixed sizes (a few hundred octets to 4 MiB), sent with pipelined DATA or with BDAT chunks, to one
or more recipients.

At the end every message answered ``250`` is in the Maildir exactly once, byte for byte as the
Mailbox handler writes it (the client's headers, then ``X-Peer``, ``X-MailFrom`` and
``X-RcptTo``, then the body, with LF line ends); no message is there that was not answered
``250``; and the server's memory after the warm-up stays flat.

Skipped unless ``TYPED_SMTPD_SOAK=1``; ``TYPED_SMTPD_SOAK_SECONDS`` sets the duration (90 s by
default), ``TYPED_SMTPD_SOAK_CLIENTS`` the number of client threads (16).
"""

from __future__ import annotations

import base64
import itertools
import json
import mailbox
import os
import random
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest
import trustme

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.skipif(
        os.environ.get("TYPED_SMTPD_SOAK") != "1", reason="set TYPED_SMTPD_SOAK=1 to soak"
    ),
]

HOST: Final = "127.0.0.1"
MIB: Final = 1 << 20
PASSWORD: Final = "soak-password"
SECONDS: Final = float(os.environ.get("TYPED_SMTPD_SOAK_SECONDS", "90"))
CLIENTS: Final = int(os.environ.get("TYPED_SMTPD_SOAK_CLIENTS", "16"))
#: Share of the run before memory is expected to be flat.
WARM_UP: Final = 0.3
#: How far the server's late peak may rise above its peak just after the warm-up.
RSS_SLACK: Final = 32 * MIB

_SERVER: Final = r"""
import json, logging, ssl, sys
from typed_smtpd.controller import Controller
from typed_smtpd.handlers import Mailbox
from typed_smtpd.session import AuthResult

config = json.loads(sys.argv[1])
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(config["cert"], config["key"])
password = config["password"].encode()


def authenticator(server, session, envelope, mechanism, data):
    return AuthResult(success=getattr(data, "password", None) == password, handled=False)


controller = Controller(
    Mailbox(config["maildir"]),
    hostname="127.0.0.1",
    port=0,
    server_hostname="soak.test",
    tls_context=context,
    authenticator=authenticator,
)
controller.start()
print(controller.port, flush=True)
sys.stdin.read()
controller.stop()
"""


# --- the server -----------------------------------------------------------------------------------


@dataclass
class Server:
    """The child process and what is needed to talk to it."""

    process: subprocess.Popen[bytes]
    port: int
    maildir: Path
    client_context: ssl.SSLContext

    def rss(self) -> int:
        """The server's resident memory now, in octets."""
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """The server in its child process, with a fresh CA and Maildir."""
    ca = trustme.CA()
    cert = ca.issue_cert(HOST)
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    for blob in cert.cert_chain_pems:
        blob.write_to_path(str(chain), append=True)
    cert.private_key_pem.write_to_path(str(key))
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    maildir = tmp_path / "Maildir"  # created by the handler
    config = {"cert": str(chain), "key": str(key), "password": PASSWORD, "maildir": str(maildir)}
    with open(tmp_path / "server.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", _SERVER, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    assert process.stdout is not None and process.stdin is not None
    try:
        port = int(process.stdout.readline())
        yield Server(process, port, maildir, client_context)
    finally:
        if not process.stdin.closed:
            process.stdin.close()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        process.stdout.close()


def stop(server: Server) -> None:
    """Stop the server (it drains open connections first) and wait for it."""
    assert server.process.stdin is not None
    server.process.stdin.close()
    server.process.wait(30)


# --- messages -------------------------------------------------------------------------------------

_ids = itertools.count()
_ids_lock = threading.Lock()
WORDS: Final = [b"alpha", b"beta", b"gamma", b"delta", b"epsilon", b"zeta", b"eta", b"theta"]


def message_size(rng: random.Random) -> int:
    """A message size: mostly small, some large, a few of several MiB."""
    roll = rng.random()
    if roll < 0.6:
        return rng.randint(200, 4096)
    if roll < 0.9:
        return rng.randint(20_000, 100_000)
    if roll < 0.99:
        return rng.randint(300_000, MIB)
    return rng.randint(3 * MIB, 4 * MIB)


def make_message(rng: random.Random, sender: str) -> tuple[str, bytes]:
    """A message of a random size: its Message-ID and its content (CRLF line ends)."""
    with _ids_lock:
        number = next(_ids)
    message_id = f"<soak-{number}@example.test>"
    header = f"Message-ID: {message_id}\r\nFrom: {sender}\r\nSubject: soak {number}\r\n".encode()
    target = message_size(rng)
    lines = []
    size = 0
    while size < target:
        kind = rng.random()
        if kind < 0.05:
            line = b"." + rng.choice(WORDS)  # needs dot-stuffing in DATA
        elif kind < 0.08:
            line = b"From " + rng.choice(WORDS)  # must not be mangled
        elif kind < 0.1:
            line = b""
        else:
            line = b" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30)))
        lines.append(line)
        size += len(line) + 2
    body = b"\r\n".join(lines) + b"\r\n"
    return message_id, header + b"\r\n" + body


def stored_form(content: bytes, sender: str, recipients: list[str]) -> bytes:
    """What the Mailbox handler writes for ``content``: headers, X- headers, body, LF ends."""
    header, _, body = content.partition(b"\r\n\r\n")
    extra = f"X-Peer: {HOST}\r\nX-MailFrom: {sender}\r\nX-RcptTo: {', '.join(recipients)}\r\n"
    return (header + b"\r\n" + extra.encode() + b"\r\n" + body).replace(b"\r\n", b"\n")


def dot_stuff(content: bytes) -> bytes:
    """The DATA transparency procedure (RFC 5321 section 4.5.2)."""
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


# --- clients --------------------------------------------------------------------------------------


class Client:
    """A blocking client over a socket that STARTTLS can wrap."""

    def __init__(self, port: int) -> None:
        self.sock: socket.socket = socket.create_connection((HOST, port), timeout=60)
        self.buffer = b""

    def reply(self) -> tuple[int, bytes]:
        """The next reply: its code and its lines."""
        lines = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed by the server")
                self.buffer += chunk
            line, _, self.buffer = self.buffer.partition(b"\r\n")
            lines.append(line)
            if line[3:4] != b"-":
                return int(line[:3]), b"\n".join(lines)

    def cmd(self, line: str) -> int:
        """Send one command line; the code of its reply."""
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()[0]

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


@dataclass
class Tally:
    """What the clients did, shared by all threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0
    accepted: dict[str, bytes] = field(default_factory=dict)
    refused: Counter[int] = field(default_factory=Counter)
    sessions: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


def send_data(client: Client, sender: str, rcpts: list[str], content: bytes) -> int:
    """Pipelined MAIL, RCPTs and DATA in one write; the reply to the final dot."""
    commands = f"MAIL FROM:<{sender}>\r\n" + "".join(f"RCPT TO:<{r}>\r\n" for r in rcpts)
    client.sock.sendall(commands.encode() + b"DATA\r\n")
    codes = [client.reply()[0] for _ in range(len(rcpts) + 2)]
    if codes != [250] * (len(rcpts) + 1) + [354]:
        return codes[-1]
    client.sock.sendall(dot_stuff(content) + b".\r\n")
    return client.reply()[0]


def send_bdat(
    client: Client, sender: str, rcpts: list[str], content: bytes, rng: random.Random
) -> int:
    """MAIL, RCPTs and every BDAT chunk in one write; the reply to the LAST chunk."""
    cuts = sorted(rng.sample(range(1, len(content)), k=min(rng.randint(0, 3), len(content) - 1)))
    bounds = [0, *cuts, len(content)]
    chunks = [content[a:b] for a, b in itertools.pairwise(bounds)]
    out = f"MAIL FROM:<{sender}> BODY=8BITMIME\r\n" + "".join(f"RCPT TO:<{r}>\r\n" for r in rcpts)
    data = out.encode()
    for index, chunk in enumerate(chunks):
        last = " LAST" if index == len(chunks) - 1 else ""
        data += f"BDAT {len(chunk)}{last}\r\n".encode() + chunk
    client.sock.sendall(data)
    codes = [client.reply()[0] for _ in range(len(rcpts) + 1 + len(chunks))]
    return codes[-1] if all(code == 250 for code in codes[:-1]) else -1


def one_session(server: Server, rng: random.Random, tally: Tally) -> None:
    """One connection: greet, maybe STARTTLS and AUTH, one to three messages, QUIT."""
    client = Client(server.port)
    try:
        assert client.reply()[0] == 220
        assert client.cmd("EHLO soak-client.example.test") == 250
        kind = "plain"
        if rng.random() < 0.5:
            assert client.cmd("STARTTLS") == 220
            client.sock = server.client_context.wrap_socket(client.sock, server_hostname=HOST)
            assert client.cmd("EHLO soak-client.example.test") == 250
            kind = "tls"
            if rng.random() < 0.6:
                credentials = base64.b64encode(f"\0user{rng.randint(0, 9)}\0{PASSWORD}".encode())
                assert client.cmd(f"AUTH PLAIN {credentials.decode()}") == 235
                kind = "tls+auth"
        with tally.lock:
            tally.sessions[kind] += 1
        for _ in range(rng.randint(1, 3)):
            sender = f"sender{rng.randint(0, 99)}@example.test"
            rcpts = [f"rcpt{rng.randint(0, 999)}@example.test" for _ in range(rng.randint(1, 3))]
            message_id, content = make_message(rng, sender)
            with tally.lock:
                tally.sent += 1
            if rng.random() < 0.7:
                final = send_data(client, sender, rcpts, content)
            else:
                final = send_bdat(client, sender, rcpts, content, rng)
            with tally.lock:
                if final == 250:
                    tally.accepted[message_id] = stored_form(content, sender, rcpts)
                else:
                    tally.refused[final] += 1
        assert client.cmd("QUIT") == 221
    finally:
        client.close()


def worker(server: Server, seed: int, deadline: float, tally: Tally) -> None:
    """Run sessions until ``deadline``; count any error."""
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        try:
            one_session(server, rng, tally)
        except Exception as error:  # counted, and the test fails on any
            with tally.lock:
                tally.errors.append(f"{type(error).__name__}: {error}")


# --- the test -------------------------------------------------------------------------------------


def test_soak(server: Server) -> None:
    tally = Tally()
    samples: list[tuple[float, int]] = []
    started = time.monotonic()
    deadline = started + SECONDS
    threads = [
        threading.Thread(target=worker, args=(server, seed, deadline, tally), daemon=True)
        for seed in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        samples.append((time.monotonic() - started, server.rss()))
        time.sleep(0.5)
        if time.monotonic() > deadline + 120:
            break
    for thread in threads:
        thread.join(1)
    assert not any(thread.is_alive() for thread in threads), "clients still running"
    stop(server)

    stored: dict[str, bytes] = {}
    duplicates = 0
    maildir = mailbox.Maildir(server.maildir, create=False)
    assert list((server.maildir / "tmp").iterdir()) == []  # nothing half-written
    for key in maildir.iterkeys():
        raw = maildir.get_bytes(key)
        header = raw.partition(b"\n\n")[0]
        message_id = next(
            line.split(b" ", 1)[1].decode()
            for line in header.split(b"\n")
            if line.startswith(b"Message-ID: ")
        )
        duplicates += message_id in stored
        stored[message_id] = raw

    warm = [rss for t, rss in samples if WARM_UP * SECONDS <= t <= 0.5 * SECONDS]
    late = [rss for t, rss in samples if t >= 0.75 * SECONDS]
    figures = {
        "attack": f"soak: {CLIENTS} clients for {SECONDS:.0f} s",
        "sessions": dict(tally.sessions),
        "sent": tally.sent,
        "accepted": len(tally.accepted),
        "stored": len(stored),
        "refused": dict(tally.refused),
        "client_errors": len(tally.errors),
        "rss_after_warm_up_mib": round(max(warm) / MIB, 1) if warm else None,
        "rss_late_peak_mib": round(max(late) / MIB, 1) if late else None,
        "rss_peak_mib": round(max(rss for _, rss in samples) / MIB, 1),
        "rss_peak_by_tenth_mib": [
            round(max((rss for t, rss in samples if int(10 * t / SECONDS) == i), default=0) / MIB)
            for i in range(10)
        ],
    }
    print(json.dumps(figures))
    report = os.environ.get("TYPED_SMTPD_ADVERSARIAL_REPORT")
    if report:
        with open(report, "a", encoding="utf-8") as file:
            file.write(json.dumps(figures) + "\n")

    assert tally.errors == []
    assert tally.sent > 0 and tally.refused == Counter()
    assert len(tally.accepted) == tally.sent
    assert duplicates == 0
    assert stored.keys() == tally.accepted.keys()
    mismatched = [mid for mid, raw in stored.items() if raw != tally.accepted[mid]]
    assert mismatched == []
    assert warm and late
    assert max(late) <= max(warm) + RSS_SLACK
