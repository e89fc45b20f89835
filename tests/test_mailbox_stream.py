"""Mailbox streams each message to disk: the same bytes as when it stores a whole message, a
partial file never left behind, and the whole-message path kept for subclasses that need it."""

from __future__ import annotations

import email.message
import os
import socket
import threading
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import running
from typed_smtpd.handlers import Mailbox, _stored_bytes, _StoredForm
from typed_smtpd.hooks import HookRegistry
from typed_smtpd.proto.data import dot_stuff
from typed_smtpd.session import Envelope, Session

HEAD = b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n"

header_lines = st.sampled_from(
    [
        b"Subject: hello\r\n",
        b"X-Peer: forged\r\n",
        b"x-rcptto: forged\r\n",
        b"\tcontinued\r\n",
        b"From someone\r\n",
        b"Received: from a\n",
        b"X-MailFrom: f\r",
        b"\r\n",
        b"body line\r\n",
        b"no colon here\r\n",
    ]
)
messages = st.lists(header_lines, max_size=12).map(b"".join)


def envelope_for(content: bytes) -> tuple[Session, Envelope]:
    session = Session(loop=None)  # type: ignore[arg-type]
    session.peer = ("192.0.2.7", 40000)
    envelope = Envelope()
    envelope.mail_from = "a@b.test"
    envelope.rcpt_tos = ["c@d.test", "e@f.test"]
    envelope.original_content = content
    envelope.content = content
    return session, envelope


@settings(max_examples=300)
@given(messages, st.lists(st.integers(0, 300), max_size=8))
def test_streamed_form_equals_the_stored_form(content: bytes, cuts: list[int]) -> None:
    session, envelope = envelope_for(content)
    expected = _stored_bytes(session, envelope)
    points = sorted({cut % (len(content) + 1) for cut in cuts})
    stored = _StoredForm(session, envelope)
    bounds = zip([0, *points], [*points, len(content)], strict=True)
    out = b"".join(stored.feed(content[a:b]) for a, b in bounds if b > a) + stored.finish()
    assert out == expected


def send(port: int, wire: bytes, *, until: bytes = b"221") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(wire)
        received = b""
        while until not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def files(maildir: Path, sub: str) -> list[Path]:
    return sorted((maildir / sub).iterdir())


def test_a_streamed_message_is_stored_byte_for_byte(tmp_path: Path) -> None:
    content = b"Subject: big\r\nX-Peer: forged\r\n\r\n" + b"".join(
        b".%06d line of the body\r\n" % n for n in range(60_000)
    )
    with running(Mailbox(tmp_path)) as controller:
        replies = send(controller.port, HEAD + b"DATA\r\n" + dot_stuff(content) + b".\r\nQUIT\r\n")
    assert b"250 OK" in replies
    (stored,) = files(tmp_path, "new")
    assert files(tmp_path, "tmp") == []
    assert stored.read_bytes() == (
        b"X-Peer: 127.0.0.1\r\nX-MailFrom: a@b.test\r\nX-RcptTo: c@d.test\r\n"
        + content.replace(b"X-Peer: forged\r\n", b"")
    )


def test_bdat_streams_too(tmp_path: Path) -> None:
    chunks = [b"Subject: chunked\r\n\r\n", b"first part, ", b"second part\r\n"]
    wire = HEAD + b"".join(
        f"BDAT {len(c)}{' LAST' if i == len(chunks) - 1 else ''}\r\n".encode() + c
        for i, c in enumerate(chunks)
    )
    with running(Mailbox(tmp_path)) as controller:
        replies = send(controller.port, wire + b"QUIT\r\n")
    assert replies.count(b"250") >= 6
    (stored,) = files(tmp_path, "new")
    assert stored.read_bytes().endswith(b"\r\n" + b"".join(chunks))


def test_a_vanished_client_leaves_no_file(tmp_path: Path) -> None:
    with running(Mailbox(tmp_path)) as controller:
        with socket.create_connection(("127.0.0.1", controller.port), timeout=10) as sock:
            sock.sendall(HEAD + b"DATA\r\nSubject: half\r\n\r\n" + b"body line\r\n" * 20_000)
            while b"354" not in sock.recv(65536):
                pass
        for _ in range(300):  # the server notices, and the partial file goes
            if not files(tmp_path, "tmp"):
                break
            threading.Event().wait(0.01)
    assert files(tmp_path, "tmp") == []
    assert files(tmp_path, "new") == []


def test_a_message_over_the_limit_leaves_no_file(tmp_path: Path) -> None:
    body = b"Subject: big\r\n\r\n" + b"x" * 998 + b"\r\n"
    with running(Mailbox(tmp_path), data_size_limit=100_000) as controller:
        replies = send(controller.port, HEAD + b"DATA\r\n" + body * 200 + b".\r\nNOOP\r\nQUIT\r\n")
    assert b"552 5.3.4" in replies and b"250 2.0.0 OK" in replies
    assert files(tmp_path, "tmp") == [] and files(tmp_path, "new") == []


def test_an_unwritable_maildir_answers_451(tmp_path: Path) -> None:
    handler = Mailbox(tmp_path)
    os.rmdir(tmp_path / "tmp")
    (tmp_path / "tmp").write_text("not a directory")
    with running(handler) as controller:
        replies = send(controller.port, HEAD + b"DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    assert b"451 4.3.0" in replies


class Tagging(Mailbox):
    def prepare_message(self, session: Session, envelope: Envelope) -> Any:
        message = super().prepare_message(session, envelope)
        message["X-Tag"] = "tagged"
        return message


def test_a_subclass_that_changes_the_message_keeps_the_whole_message_path(
    tmp_path: Path,
) -> None:
    hooks = HookRegistry(Tagging(tmp_path))
    assert hooks.data is not None and hooks.data_stream is None
    assert HookRegistry(Mailbox(tmp_path)).data_stream is not None
    with running(Tagging(tmp_path)) as controller:
        send(controller.port, HEAD + b"DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    (stored,) = files(tmp_path, "new")
    message = email.message_from_bytes(stored.read_bytes())
    assert isinstance(message, email.message.Message) and message["X-Tag"] == "tagged"
