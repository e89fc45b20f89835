"""Tools shared by the adversarial tests.

What lives here: :func:`server_process`, a :class:`~typed_smtpd.controller.Controller` in a child
process, so that the memory (``VmHWM``, ``VmRSS``) and the file descriptors read from ``/proc``
are the server's alone; :func:`honest_delivery`, the client that must keep being served during
and after every attack; :class:`Dribbler`, a slowloris client in a thread; :func:`pipelined`,
which writes a flood from a thread while the caller reads the replies; :func:`loop_task_count`
and :func:`open_fds` for leak checks on an in-process server; and :func:`record`, which appends
the figures of an attack (reply, time to cut off, peak memory) to the file named by
``TYPED_SMTPD_ADVERSARIAL_REPORT`` when it is set.

What must not live here: tests, and anything that talks to another address than 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tests.support import TIMEOUT, RawClient
from typed_smtpd.controller import BaseController

HOST: Final = "127.0.0.1"
MIB: Final = 1 << 20
#: The environment variable naming a JSON-lines file that collects the measured figures.
REPORT_ENV: Final = "TYPED_SMTPD_ADVERSARIAL_REPORT"
#: A whole, well-formed transaction: what every honest client sends.
HONEST_MESSAGE: Final = b"From: honest@example.test\r\nSubject: still served\r\n\r\nhello\r\n"

# The child process: a threaded Controller whose handler is Sink (or Mailbox), configured from
# the JSON in argv[1]. It prints its port, serves until its standard input closes, then stops.
_SERVER_SCRIPT: Final = r"""
import json, logging, ssl, sys
from typed_smtpd.controller import Controller
from typed_smtpd.handlers import Mailbox, Sink
from typed_smtpd.session import AuthResult

config = json.loads(sys.argv[1])
logging.basicConfig(
    level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s"
)
kwargs = dict(config["smtp"])
if config["tls"] is not None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config["tls"][0], config["tls"][1])
    kwargs["tls_context"] = context
if config["password"] is not None:
    password = config["password"].encode()

    def authenticator(server, session, envelope, mechanism, data):
        return AuthResult(success=getattr(data, "password", None) == password, handled=False)

    kwargs["authenticator"] = authenticator
handler = Mailbox(config["mail_dir"]) if config["mail_dir"] else Sink()
controller = Controller(
    handler,
    hostname="127.0.0.1",
    port=0,
    server_hostname="adversarial.test",
    max_connections=config["max_connections"],
    **kwargs,
)
controller.start()
print(controller.port, flush=True)
sys.stdin.read()
controller.stop()
"""


@dataclass(frozen=True)
class Memory:
    """The resident memory of a process, in bytes: now and at its peak."""

    rss: int
    peak: int


@dataclass
class ServerProcess:
    """A server running in a child process, with its port and its log."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def memory(self) -> Memory:
        """``VmRSS`` and ``VmHWM`` from ``/proc/<pid>/status``."""
        fields: dict[str, int] = {}
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    fields[name] = int(value.split()[0]) * 1024
        return Memory(rss=fields["VmRSS"], peak=fields["VmHWM"])

    def reset_peak(self) -> Memory:
        """Reset ``VmHWM`` to the current RSS (``clear_refs``), so the next peak is the attack's.

        Where the kernel refuses, the peak keeps counting from the start; it is then only ever
        larger, which can make a bound fail but never pass wrongly.
        """
        try:
            with open(f"/proc/{self.process.pid}/clear_refs", "w") as clear_refs:
                clear_refs.write("5")
        except OSError:
            pass
        return self.memory()

    def fd_count(self) -> int:
        """How many file descriptors the server has open."""
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def log(self) -> str:
        """Everything the server logged so far."""
        return self.log_path.read_text("utf-8", "replace")

    def client(self, *, timeout: float = TIMEOUT) -> RawClient:
        """A new connection, greeting read."""
        return RawClient(HOST, self.port, timeout=timeout)


@contextmanager
def server_process(
    log_dir: Path,
    *,
    max_connections: int | None = 1000,
    mail_dir: Path | None = None,
    tls: tuple[Path, Path] | None = None,
    password: str | None = None,
    **smtp_kwargs: Any,
) -> Iterator[ServerProcess]:
    """Run a Controller with ``smtp_kwargs`` in a child process; stop it afterwards.

    ``tls`` is a certificate chain and a key (for STARTTLS); ``password`` installs an
    authenticator that accepts any login with that password; ``mail_dir`` stores messages with
    :class:`~typed_smtpd.handlers.Mailbox` instead of discarding them.
    """
    config = {
        "smtp": smtp_kwargs,
        "max_connections": max_connections,
        "mail_dir": str(mail_dir) if mail_dir is not None else None,
        "tls": [str(tls[0]), str(tls[1])] if tls is not None else None,
        "password": password,
    }
    log_path = log_dir / f"server-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-c", _SERVER_SCRIPT, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_file,
        )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.strip().isdigit():
            process.kill()
            process.wait(TIMEOUT)
            raise RuntimeError(f"server did not start: {log_path.read_text()}")
        yield ServerProcess(process, int(line), log_path)
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(TIMEOUT)
        if process.stdout is not None:
            process.stdout.close()


# --- the honest client ----------------------------------------------------------------------------


def deliver_on(client: RawClient, *, greet: bool = True) -> int:
    """One message over an open connection; the code of the reply to the final dot."""
    if greet:
        assert client.cmd("EHLO honest.example.test")[0] == 250
    assert client.cmd("MAIL FROM:<honest@example.test>")[0] == 250
    assert client.cmd("RCPT TO:<rcpt@example.test>")[0] == 250
    assert client.cmd("DATA")[0] == 354
    client.send(HONEST_MESSAGE + b".\r\n")
    return client.reply()[0]


class PrefixedClient(RawClient):
    """:class:`~tests.support.RawClient` that sends ``prefix`` (a PROXY header, say) before it
    reads the greeting."""

    def __init__(self, host: str, port: int, prefix: bytes, *, timeout: float = TIMEOUT) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        if prefix:
            self.sock.sendall(prefix)
        self.greeting = self.reply()


class Refused(Exception):
    """The server greeted with something else than 220 (a 421 at the connection cap, say)."""


def honest_delivery(port: int, *, prefix: bytes = b"") -> int:
    """Connect, send one message, QUIT: the code of the reply to the final dot.

    ``prefix`` is sent before the greeting is read (a PROXY header, for instance). Raises
    :class:`Refused` when the greeting is not 220.
    """
    client = PrefixedClient(HOST, port, prefix)
    try:
        if client.greeting[0] != 220:
            raise Refused(client.greeting)
        code = deliver_on(client)
        assert client.cmd("QUIT")[0] == 221
        return code
    finally:
        client.close()


def served_within(port: int, budget: float = 5.0, *, prefix: bytes = b"") -> float:
    """Seconds until an honest client, retrying while refused with 421, gets its message
    accepted (250); fails after ``budget`` seconds."""
    started = time.monotonic()
    while True:
        try:
            code = honest_delivery(port, prefix=prefix)
        except Refused:
            if time.monotonic() - started > budget:
                raise
            time.sleep(0.02)
            continue
        assert code == 250
        return time.monotonic() - started


# --- slow and flooding clients --------------------------------------------------------------------


@dataclass
class Outcome:
    """How a hostile connection ended: what the server last sent, and when it cut us off."""

    received: bytes = b""
    #: Seconds from the start of the attack to the server closing the connection (None: never).
    cut_off_after: float | None = None
    #: How many bytes the attack sent before it stopped.
    sent: int = 0

    @property
    def last_reply(self) -> str:
        """The last reply line received, decoded (empty when none)."""
        lines = [line for line in self.received.split(b"\r\n") if line]
        return lines[-1].decode("utf-8", "replace") if lines else ""


class Dribbler(threading.Thread):
    """Sends ``payload`` one byte every ``interval`` seconds over ``sock`` (a slowloris).

    Stops when the payload is sent, when ``budget`` seconds have passed, or when the server
    closes the connection; :attr:`outcome` says which and what the server said.
    """

    def __init__(self, sock: socket.socket, payload: bytes, *, interval: float, budget: float):
        super().__init__(daemon=True)
        self.sock = sock
        self.payload = payload
        self.interval = interval
        self.budget = budget
        self.outcome = Outcome()
        self.started = threading.Event()

    def run(self) -> None:
        """Write every chunk, stopping quietly if the server closes."""
        start = time.monotonic()
        self.sock.settimeout(self.interval)
        self.started.set()
        for byte in self.payload:
            if time.monotonic() - start > self.budget:
                return
            try:
                self.sock.sendall(bytes([byte]))
                self.outcome.sent += 1
            except OSError:
                self.outcome.cut_off_after = time.monotonic() - start
                return
            if self._closed_by_server():
                self.outcome.cut_off_after = time.monotonic() - start
                return
        # Payload complete (it never is in the tests): wait out the budget for the verdict.
        while time.monotonic() - start <= self.budget:
            if self._closed_by_server():
                self.outcome.cut_off_after = time.monotonic() - start
                return

    def _closed_by_server(self) -> bool:
        """Wait up to one interval for the server; True once it has closed the connection."""
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except OSError:
            return True
        if not data:
            return True
        self.outcome.received += data
        return False


def pipelined(sock: socket.socket, chunks: Iterator[bytes]) -> threading.Thread:
    """Write ``chunks`` from a thread, so the caller can read the replies at the same time.

    A write the server refuses by closing the connection ends the thread quietly.
    """

    def run() -> None:
        """Write every chunk, stopping quietly if the server closes."""
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def read_until_closed(client: RawClient, *, limit: int = 64 * MIB) -> bytes:
    """Everything the server sends until it closes (at most ``limit`` octets)."""
    data = client.buffer
    client.buffer = b""
    while len(data) < limit:
        try:
            chunk = client.sock.recv(1 << 16)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def reply_codes(data: bytes) -> list[int]:
    """The code of every final reply line in ``data``."""
    return [int(line[:3]) for line in data.split(b"\r\n") if line[3:4] == b" "]


def reset_on_close(sock: socket.socket) -> None:
    """Make ``close()`` send a TCP RST instead of a FIN (a client that vanishes abruptly)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


# --- in-process leak checks -----------------------------------------------------------------------


async def _task_count() -> int:
    return len(asyncio.all_tasks()) - 1  # not counting the task that counts


def loop_task_count(controller: BaseController) -> int:
    """How many tasks the controller's event loop holds (run there, from the test's thread)."""
    future = asyncio.run_coroutine_threadsafe(_task_count(), controller.loop)
    return future.result(TIMEOUT)


def open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


def settle(
    controller: BaseController, tasks: int, fds: int, *, budget: float = 5.0
) -> tuple[int, int]:
    """Wait (bounded) until the task and fd counts fall back to ``tasks`` and ``fds``; return
    the counts seen last."""
    deadline = time.monotonic() + budget
    while True:
        now_tasks, now_fds = loop_task_count(controller), open_fds()
        if (now_tasks <= tasks and now_fds <= fds) or time.monotonic() > deadline:
            return now_tasks, now_fds
        time.sleep(0.02)


# --- figures for the closing table ----------------------------------------------------------------


@dataclass
class Figures:
    """What one attack measured."""

    attack: str
    reply: str
    cut_off_after: float | None = None
    peak_growth: int | None = None
    honest_served: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def record(figures: Figures) -> None:
    """Append ``figures`` as one JSON line to the file named by ``TYPED_SMTPD_ADVERSARIAL_REPORT``.

    Does nothing when the variable is unset: the tests assert behaviour, this only keeps the
    numbers for whoever asked for them.
    """
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    line = {
        "attack": figures.attack,
        "reply": figures.reply,
        "cut_off_after_s": (
            round(figures.cut_off_after, 3) if figures.cut_off_after is not None else None
        ),
        "peak_growth_mib": (
            round(figures.peak_growth / MIB, 2) if figures.peak_growth is not None else None
        ),
        "honest_served": figures.honest_served,
        **figures.extra,
    }
    with open(path, "a", encoding="utf-8") as report:
        report.write(json.dumps(line) + "\n")


def read_reply_lines(client: RawClient, count: int) -> list[bytes]:
    """The next ``count`` single-line replies (read in bulk: floods get thousands of them)."""
    data = client.buffer
    while data.count(b"\r\n") < count:
        chunk = client.sock.recv(1 << 16)
        if not chunk:
            got = data.count(b"\r\n")
            raise ConnectionError(f"closed by server after {got} of {count} replies")
        data += chunk
    lines = data.split(b"\r\n", count)
    client.buffer = lines.pop()
    return lines
