"""Tests that the Mailbox handler stores each message exactly as it was received.

The trace headers ``X-Peer``, ``X-MailFrom`` and ``X-RcptTo`` are put first; copies of them sent
by the client are left out; every other byte, header whitespace included (which DKIM "simple"
header canonicalisation depends on), is stored as it came. Messages go through the in-memory
server, so the stored file is compared with what the client sent after DATA's dot-unstuffing.
"""

from __future__ import annotations

import email
import email.message
import mailbox
from pathlib import Path

import pytest

from typed_smtpd.handlers import Mailbox
from typed_smtpd.session import Envelope, Session
from typed_smtpd.testing import FakeSMTPServer

PEER = ("192.0.2.7", 4242)
SENDER = "anne@example.com"
RECIPIENTS = ["bart@example.com", "cate@example.com"]
TRACE = (
    b"X-Peer: 192.0.2.7\r\n"
    b"X-MailFrom: anne@example.com\r\n"
    b"X-RcptTo: bart@example.com, cate@example.com\r\n"
)


async def deliver(
    maildir: Path, content: bytes, *, sender: str = SENDER, utf8: bool = False
) -> bytes:
    """Send ``content`` to a Mailbox through the in-memory server; the stored file's bytes."""
    async with FakeSMTPServer(Mailbox(maildir), peer=PEER, enable_SMTPUTF8=utf8) as server:
        client = await server.connect()
        assert (await client.ehlo("client.test")).code == 250
        assert (await client.mail(sender, *(["SMTPUTF8"] if utf8 else []))).code == 250
        for rcpt in RECIPIENTS:
            assert (await client.rcpt(rcpt)).code == 250
        assert (await client.data(content)).code == 250
    [stored] = list((maildir / "new").iterdir())
    assert list((maildir / "tmp").iterdir()) == []
    return stored.read_bytes()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"X-No-Space:value\r\nSubject: hi\r\n\r\nbody\r\n", id="no-space"),
        pytest.param(b"X-Empty:\r\nSubject: hi\r\n\r\nbody\r\n", id="empty-value"),
        pytest.param(
            b"Subject: a long\r\n subject, folded\r\n\ttwice\r\nTo: b@example.com\r\n\r\nbody\r\n",
            id="folded",
        ),
        pytest.param(b"Subject:\thi\tthere\r\nX-Tab:\t \t\r\n\r\nbody\r\n", id="tabs"),
        pytest.param(b"Subject: hi   \r\nX-Trailing: value \t \r\n\r\nbody\r\n", id="trailing"),
        pytest.param(b"subject:  Mixed  CASE  \r\nFROM :x@example.com\r\n\r\nbody\r\n", id="case"),
        pytest.param(
            b"Subject: dots\r\n\r\n.starts with a dot\r\n..two dots\r\n.\r\n\r\nlast\r\n",
            id="dot-stuffed-body",
        ),
    ],
)
async def test_received_bytes_are_stored_unchanged(tmp_path: Path, content: bytes) -> None:
    assert await deliver(tmp_path / "Maildir", content) == TRACE + content


@pytest.mark.asyncio
async def test_eight_bit_headers_with_smtputf8(tmp_path: Path) -> None:
    content = "Subject: Grüße aus Köln\r\nTo: Jürgen <jürgen@example.com>\r\n\r\nHallo\r\n"
    stored = await deliver(
        tmp_path / "Maildir", content.encode("utf-8"), sender="änne@example.com", utf8=True
    )
    trace = TRACE.replace(b"anne@", "änne@".encode())
    assert stored == trace + content.encode("utf-8")


@pytest.mark.asyncio
async def test_trace_headers_come_first_with_their_values(tmp_path: Path) -> None:
    content = b"From: anne@example.com\r\nSubject: hi\r\n\r\nbody\r\n"
    stored = await deliver(tmp_path / "Maildir", content)
    lines = stored.split(b"\r\n")
    assert lines[:4] == [
        b"X-Peer: 192.0.2.7",
        b"X-MailFrom: anne@example.com",
        b"X-RcptTo: bart@example.com, cate@example.com",
        b"From: anne@example.com",
    ]
    parsed = email.message_from_bytes(stored)
    assert parsed["X-Peer"] == "192.0.2.7"
    assert parsed["X-MailFrom"] == SENDER
    assert parsed["X-RcptTo"] == ", ".join(RECIPIENTS)
    assert parsed.get_payload() == "body\r\n"


@pytest.mark.asyncio
async def test_forged_trace_headers_are_left_out(tmp_path: Path) -> None:
    content = (
        b"X-Peer: 203.0.113.66\r\n"
        b"Subject: hi\r\n"
        b"x-mailfrom:forged@example.com\r\n"
        b"X-RCPTTO: someone@example.com,\r\n"
        b"\tsomeone-else@example.com\r\n"
        b"  and a third line\r\n"
        b"X-Peered: kept, another name\r\n"
        b"To: b@example.com\r\n"
        b"\r\n"
        b"X-Peer: in the body, kept\r\n"
    )
    stored = await deliver(tmp_path / "Maildir", content)
    assert stored == TRACE + (
        b"Subject: hi\r\n"
        b"X-Peered: kept, another name\r\n"
        b"To: b@example.com\r\n"
        b"\r\n"
        b"X-Peer: in the body, kept\r\n"
    )
    parsed = email.message_from_bytes(stored)
    assert parsed.get_all("X-Peer") == ["192.0.2.7"]
    assert parsed.get_all("X-MailFrom") == [SENDER]
    assert parsed.get_all("X-RcptTo") == [", ".join(RECIPIENTS)]


@pytest.mark.asyncio
async def test_forged_trace_header_is_the_last_line(tmp_path: Path) -> None:
    content = b"Subject: hi\r\nX-Peer: 203.0.113.66\r\n folded"
    assert await deliver(tmp_path / "Maildir", content) == TRACE + b"Subject: hi\r\n"


@pytest.mark.asyncio
async def test_message_without_a_body_separator(tmp_path: Path) -> None:
    # The first line that is not a header starts the body, as the email parser reads it; a
    # "header" after it is body text and stays.
    content = b"Subject: hi\r\nthis line starts the body\r\nX-Peer: body text\r\n"
    stored = await deliver(tmp_path / "Maildir", content)
    assert stored == TRACE + content
    assert email.message_from_bytes(stored).get_all("X-Peer") == ["192.0.2.7"]


@pytest.mark.asyncio
async def test_headers_only_and_empty_messages(tmp_path: Path) -> None:
    assert await deliver(tmp_path / "a", b"Subject: only\r\n") == TRACE + b"Subject: only\r\n"
    assert await deliver(tmp_path / "b", b"") == TRACE


@pytest.mark.asyncio
async def test_maildir_reads_the_stored_message(tmp_path: Path) -> None:
    content = b"Message-ID: <ant>\r\nFrom: Anne Person <anne@example.com>\r\n\r\nHi.\r\n"
    await deliver(tmp_path / "Maildir", content)
    [message] = list(mailbox.Maildir(tmp_path / "Maildir"))
    assert message["Message-ID"] == "<ant>"
    assert message["From"] == "Anne Person <anne@example.com>"
    assert message["X-MailFrom"] == SENDER


# --- envelopes built by hand: line endings and subclasses ---------------------------------------


def envelope(content: bytes) -> Envelope:
    return Envelope(
        mail_from=SENDER, rcpt_tos=list(RECIPIENTS), content=content, original_content=content
    )


def stored_files(maildir: Path) -> list[bytes]:
    return [path.read_bytes() for path in (maildir / "new").iterdir()]


@pytest.mark.asyncio
async def test_trace_lines_end_like_the_message(tmp_path: Path) -> None:
    handler = Mailbox(tmp_path / "Maildir")
    content = b"X-No-Space:value\nX-Peer: forged\n\nbody\n"
    assert await handler.handle_DATA(None, Session(peer=PEER), envelope(content)) == "250 OK"
    assert stored_files(tmp_path / "Maildir") == [
        TRACE.replace(b"\r\n", b"\n") + b"X-No-Space:value\n\nbody\n"
    ]


@pytest.mark.asyncio
async def test_subclass_changing_the_message_stores_the_changed_message(tmp_path: Path) -> None:
    class Tagging(Mailbox):
        def handle_message(self, message: email.message.Message) -> None:
            message["X-Tag"] = "tagged"
            super().handle_message(message)

    handler = Tagging(tmp_path / "Maildir")
    content = b"Subject: hi\r\n\r\nbody\r\n"
    assert await handler.handle_DATA(None, Session(peer=PEER), envelope(content)) == "250 OK"
    [stored] = stored_files(tmp_path / "Maildir")
    assert email.message_from_bytes(stored)["X-Tag"] == "tagged"


@pytest.mark.asyncio
async def test_subclass_reading_the_message_keeps_the_bytes(tmp_path: Path) -> None:
    seen: list[str | None] = []

    class Reading(Mailbox):
        def handle_message(self, message: email.message.Message) -> None:
            seen.append(message["X-Peer"])
            super().handle_message(message)

    handler = Reading(tmp_path / "Maildir")
    content = b"X-Peer: forged\r\nX-No-Space:value\r\n\r\nbody\r\n"
    assert await handler.handle_DATA(None, Session(peer=PEER), envelope(content)) == "250 OK"
    assert seen == ["192.0.2.7"]
    assert stored_files(tmp_path / "Maildir") == [TRACE + b"X-No-Space:value\r\n\r\nbody\r\n"]


@pytest.mark.asyncio
async def test_content_without_a_line_break_gets_crlf_trace_lines(tmp_path: Path) -> None:
    handler = Mailbox(tmp_path / "Maildir")
    content = b"Subject: no line break"
    assert await handler.handle_DATA(None, Session(peer=PEER), envelope(content)) == "250 OK"
    assert stored_files(tmp_path / "Maildir") == [TRACE + content]


@pytest.mark.asyncio
async def test_crlf_is_kept_where_maildir_writes_line_ends_as_crlf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mailbox, "linesep", b"\r\n")  # as on Windows
    handler = Mailbox(tmp_path / "Maildir")
    content = b"X-No-Space:value\r\n\r\nbody\r\n"
    assert await handler.handle_DATA(None, Session(peer=PEER), envelope(content)) == "250 OK"
    assert stored_files(tmp_path / "Maildir") == [TRACE + content]


def test_handle_message_called_directly_stores_the_object(tmp_path: Path) -> None:
    handler = Mailbox(tmp_path / "Maildir")
    message = email.message_from_bytes(b"Subject: direct\r\n\r\nbody\r\n")
    handler.handle_message(message)
    [stored] = stored_files(tmp_path / "Maildir")
    assert email.message_from_bytes(stored)["Subject"] == "direct"
