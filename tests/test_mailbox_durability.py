"""Tests that the Mailbox handler keeps every accepted message exactly once, whole, on disk.

Many clients deliver at once over real sockets to a threaded controller; then server processes
are killed with SIGKILL while they write a message, and what is left in the Maildir is checked:
``new/`` holds only complete messages (``tmp/`` may keep a partial file, as Maildir allows).
"""

from __future__ import annotations

import email
import email.message
import mailbox
import os
import queue
import signal
import smtplib
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from typed_smtpd.controller import Controller
from typed_smtpd.handlers import Mailbox

#: Bounds every wait, so that a broken server fails the test instead of hanging it.
WAIT = 30.0

SENDER = "anne@example.com"
RECIPIENTS = ["bart@example.com"]


def make_message(tag: str, *, lines: int = 5) -> tuple[bytes, str]:
    """A message and its body as the Maildir file should hold it (as received, CRLF)."""
    body_lines = [
        f"{tag} line {n}: the quick brown fox jumps over the lazy dog" for n in range(lines)
    ]
    body_lines.insert(1, f".{tag} starts with a dot")  # dot-stuffed on the wire, unstuffed on disk
    head = (
        f"From: {SENDER}\r\nTo: {RECIPIENTS[0]}\r\nSubject: {tag}\r\nMessage-ID: <{tag}@test>\r\n"
    )
    body = "\r\n".join(body_lines) + "\r\n"
    return (head + "\r\n" + body).encode("ascii"), body


def stored_bodies(maildir: Path) -> list[str]:
    """The bodies of the messages in ``new/``, each checked to parse as a whole message."""
    bodies = []
    for path in sorted((maildir / "new").iterdir()):
        message = email.message_from_bytes(path.read_bytes())
        assert message["Message-ID"], f"{path.name} has no Message-ID"
        assert message["X-MailFrom"] == SENDER
        payload = message.get_payload()
        assert isinstance(payload, str)
        bodies.append(payload)
    return bodies


# --- many clients at once ------------------------------------------------------------------------


@pytest.mark.integration
def test_concurrent_clients_each_message_stored_exactly_once(tmp_path: Path) -> None:
    clients, per_client = 8, 12
    maildir = tmp_path / "Maildir"
    controller = Controller(Mailbox(maildir), hostname="127.0.0.1", port=0)
    controller.start()
    try:

        def deliver(client: int) -> list[str]:
            accepted = []
            with smtplib.SMTP(controller.hostname, controller.port, timeout=WAIT) as smtp:
                for number in range(per_client):
                    data, body = make_message(f"c{client}m{number}", lines=3 + number)
                    # sendmail returns normally only when DATA was answered 250.
                    assert smtp.sendmail(SENDER, RECIPIENTS, data) == {}
                    accepted.append(body)
            return accepted

        with ThreadPoolExecutor(max_workers=clients) as pool:
            results = list(pool.map(deliver, range(clients)))
    finally:
        controller.stop()
    accepted = [body for bodies in results for body in bodies]
    assert len(accepted) == clients * per_client
    assert Counter(stored_bodies(maildir)) == Counter(accepted)
    assert list((maildir / "tmp").iterdir()) == []
    ids = sorted(str(message["Message-ID"]) for message in mailbox.Maildir(maildir))
    assert ids == sorted(f"<c{c}m{m}@test>" for c in range(clients) for m in range(per_client))


# --- killed while writing ------------------------------------------------------------------------

#: A Mailbox whose write of message number STALL_AFTER (counting from 0) stops half way: it writes
#: the first half of the file, flushes it to disk, creates the file STALL_MARKER (atomically,
#: holding the file's name), then sleeps.
SLOW_MAILBOX = textwrap.dedent(
    """
    import os
    import time

    from typed_smtpd.handlers import Mailbox

    STALL_AFTER = int(os.environ["STALL_AFTER"])
    STALL_MARKER = os.environ["STALL_MARKER"]


    class HalfWritten:
        def __init__(self, file):
            self._file = file

        def write(self, data):
            self._file.write(data[: len(data) // 2])
            self._file.flush()
            os.fsync(self._file.fileno())
            # Written beside the marker, then renamed: the test sees the marker only once
            # it holds the whole name.
            with open(STALL_MARKER + ".part", "w") as marker:
                marker.write(self._file.name)
            os.replace(STALL_MARKER + ".part", STALL_MARKER)
            time.sleep(3600)

        def __getattr__(self, name):
            return getattr(self._file, name)


    class SlowMailbox(Mailbox):
        count = 0

        def handle_message(self, message):
            if SlowMailbox.count == STALL_AFTER:
                create = self.mailbox._create_tmp
                self.mailbox._create_tmp = lambda: HalfWritten(create())
            SlowMailbox.count += 1
            super().handle_message(message)
    """
)


@contextmanager
def server_process(
    maildir: Path, handler: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``python -m typed_smtpd -c HANDLER MAILDIR``; yields the process and its port."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "typed_smtpd",
            "-n",
            "-l",
            "127.0.0.1:0",
            "-c",
            handler,
            str(maildir),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stderr is not None
        for raw in iter(process.stderr.readline, b""):
            lines.put(raw.decode("utf-8", "replace"))
        process.stderr.close()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    port = 0
    try:
        while not port:
            try:
                line = lines.get(timeout=WAIT)
            except queue.Empty:
                pytest.fail("the server did not start")
            if " listening on " in line:
                port = int(line.split(" listening on ", 1)[1].split(" ", 1)[0].rsplit(":", 1)[1])
            elif process.poll() is not None:
                pytest.fail(f"the server exited with {process.returncode}: {line}")
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(WAIT)
        reader.join(WAIT)


def send_in_background(port: int, data: bytes) -> tuple[threading.Thread, list[BaseException]]:
    """Send one message from a thread; the errors it met (the server is killed) are collected."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as smtp:
                smtp.sendmail(SENDER, RECIPIENTS, data)
        except (OSError, smtplib.SMTPException) as error:
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def send(port: int, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as smtp:
        assert smtp.sendmail(SENDER, RECIPIENTS, data) == {}


@pytest.mark.integration
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_killed_half_way_through_a_write_leaves_new_complete(tmp_path: Path) -> None:
    helpers = tmp_path / "helpers"
    helpers.mkdir()
    (helpers / "slow_mailbox.py").write_text(SLOW_MAILBOX, "utf-8")
    maildir, marker = tmp_path / "Maildir", tmp_path / "stalled"
    env = {
        "PYTHONPATH": os.pathsep.join([str(helpers), os.environ.get("PYTHONPATH", "")]),
        "STALL_AFTER": "3",
        "STALL_MARKER": str(marker),
    }
    complete = [make_message(f"whole{n}") for n in range(3)]
    big, _ = make_message("big", lines=20_000)
    with server_process(maildir, "slow_mailbox.SlowMailbox", env) as (process, port):
        for data, _ in complete:
            send(port, data)
        thread, errors = send_in_background(port, big)
        deadline = time.monotonic() + WAIT
        while not marker.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.01)
        assert marker.exists(), "the write never started"
        process.send_signal(signal.SIGKILL)
        assert process.wait(WAIT) == -signal.SIGKILL
        thread.join(WAIT)
    assert not thread.is_alive()
    assert errors, "the message interrupted by the kill must not have been accepted"
    assert sorted(stored_bodies(maildir)) == sorted(body for _, body in complete)
    # The half-written file stays in tmp/, where Maildir readers never look.
    leftovers = list((maildir / "tmp").iterdir())
    assert [path.name for path in leftovers] == [Path(marker.read_text()).name]
    assert 0 < leftovers[0].stat().st_size < len(big)
    assert len(mailbox.Maildir(maildir)) == 3


@pytest.mark.integration
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_killed_while_storing_a_big_message(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    small = [make_message(f"small{n}") for n in range(2)]
    big, big_body = make_message("big", lines=250_000)  # about 17 MB
    with server_process(maildir, "typed_smtpd.handlers.Mailbox") as (process, port):
        for data, _ in small:
            send(port, data)
        thread, _ = send_in_background(port, big)
        # Kill as soon as the big message's file has content in tmp/ (or it is already stored).
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and thread.is_alive():
            if any(path.stat().st_size for path in (maildir / "tmp").iterdir()):
                break
            time.sleep(0.001)
        process.send_signal(signal.SIGKILL)
        assert process.wait(WAIT) == -signal.SIGKILL
        thread.join(WAIT)
    assert not thread.is_alive()
    bodies = stored_bodies(maildir)
    expected = [body for _, body in small]
    # Whatever the moment of the kill, new/ holds whole messages only: the two small ones, and
    # the big one only if it was completely written before the kill.
    assert sorted(bodies) in (sorted(expected), sorted([*expected, big_body]))
