"""Tests of the built-in handlers: their hooks called directly, then the Proxy between servers.

For the direct calls, the Proxy handler is pointed at a small scripted relay, written here with
asyncio streams, that records what it receives and answers as each test tells it to. The last
tests put a typed_smtpd server with a Proxy in front of a second typed_smtpd server, over real
sockets: relay accepting, refusing some recipients, down, and slow.
"""

from __future__ import annotations

import argparse
import asyncio
import email.message
import io
import logging
import mailbox
import os
import smtplib
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st

from typed_smtpd import handlers
from typed_smtpd.handlers import (
    AsyncMessage,
    Debugging,
    Mailbox,
    Message,
    MessageBase,
    Proxy,
    Sink,
)
from typed_smtpd.proto.replies import Reply
from typed_smtpd.session import Envelope, Session

SERVER: Any = None  # the hooks do not use their server argument

CONTENT = (
    b"From: Anne Person <anne@example.com>\r\n"
    b"To: Bart Person <bart@example.com>\r\n"
    b"Subject: A test\r\n"
    b"Message-ID: <ant>\r\n"
    b"\r\n"
    b"Hi Bart, this is Anne.\r\n"
)


def make_session(peer: Any = ("127.0.0.1", 40000)) -> Session:
    return Session(peer=peer)


def make_envelope(
    content: bytes | str = CONTENT,
    *,
    mail_from: str = "anne@example.com",
    rcpt_tos: list[str] | None = None,
    mail_options: list[str] | None = None,
) -> Envelope:
    original = content.encode("utf-8") if isinstance(content, str) else content
    return Envelope(
        mail_from=mail_from,
        rcpt_tos=["bart@example.com"] if rcpt_tos is None else rcpt_tos,
        mail_options=mail_options or [],
        content=content,
        original_content=original,
    )


class ParserError(Exception):
    """Raised instead of exiting by :class:`RaisingParser`."""


class RaisingParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise ParserError(message)


# --- Sink ----------------------------------------------------------------------------------------


def test_sink_from_cli_without_arguments() -> None:
    assert isinstance(Sink.from_cli(RaisingParser()), Sink)


def test_sink_from_cli_rejects_arguments() -> None:
    with pytest.raises(ParserError, match="no arguments"):
        Sink.from_cli(RaisingParser(), "extra")


def test_sink_has_no_hooks() -> None:
    assert not [name for name in dir(Sink) if name.startswith("handle_")]


# --- Debugging -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_debugging_prints_to_stdout_at_call_time(capsys: pytest.CaptureFixture[str]) -> None:
    handler = Debugging()
    reply = await handler.handle_DATA(
        SERVER, make_session(), make_envelope(mail_options=["SIZE=200", "BODY=8BITMIME"])
    )
    assert reply == "250 OK"
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "---------- MESSAGE FOLLOWS ----------"
    assert lines[-1] == "------------ END MESSAGE ------------"
    assert "Peer: 127.0.0.1:40000" in lines
    assert "MAIL FROM: anne@example.com" in lines
    assert "RCPT TO: bart@example.com" in lines
    assert "MAIL options: SIZE=200 BODY=8BITMIME" in lines
    # X-Peer goes last in the headers, right before the blank line that ends them.
    peer_at = lines.index("X-Peer: 127.0.0.1")
    assert lines[peer_at - 1] == "Message-ID: <ant>"
    assert lines[peer_at + 1] == ""
    assert lines[peer_at + 2] == "Hi Bart, this is Anne."


@pytest.mark.asyncio
async def test_debugging_explicit_stream_and_decoded_content() -> None:
    stream = io.StringIO()
    handler = Debugging(stream)
    content = "Subject: h\u00e9llo\n\nbody \u00e9\n"
    await handler.handle_DATA(SERVER, make_session(), make_envelope(content))
    out = stream.getvalue()
    assert "Subject: h\u00e9llo\nX-Peer: 127.0.0.1\n\nbody \u00e9\n" in out
    assert handler.stream is stream
    other = io.StringIO()
    handler.stream = other
    await handler.handle_DATA(SERVER, make_session(), make_envelope(content))
    assert other.getvalue() == out


@pytest.mark.asyncio
async def test_debugging_escapes_control_characters_and_bad_bytes() -> None:
    stream = io.StringIO()
    content = b"Subject: \x1b[31mred\r\n\r\n\xff\x00\r\n"
    await Debugging(stream).handle_DATA(SERVER, make_session(), make_envelope(content))
    out = stream.getvalue()
    assert "\x1b" not in out
    assert "\x00" not in out
    assert "Subject: \\x1b[31mred" in out
    assert "\\xff\\x00" in out


@pytest.mark.asyncio
async def test_debugging_headers_only_message_gets_x_peer_at_the_end() -> None:
    stream = io.StringIO()
    await Debugging(stream).handle_DATA(
        SERVER, make_session("/run/smtp.sock"), make_envelope(b"Subject: only\r\n")
    )
    assert "Peer: /run/smtp.sock\n" in stream.getvalue()
    assert "Subject: only\nX-Peer: /run/smtp.sock\n---" in stream.getvalue()


def test_debugging_from_cli() -> None:
    assert Debugging.from_cli(RaisingParser()).stream is __import__("sys").stdout
    assert Debugging.from_cli(RaisingParser(), "stderr").stream is __import__("sys").stderr
    assert Debugging.from_cli(RaisingParser(), "stdout").stream is __import__("sys").stdout
    with pytest.raises(ParserError, match="stdout or stderr"):
        Debugging.from_cli(RaisingParser(), "stdin")
    with pytest.raises(ParserError):
        Debugging.from_cli(RaisingParser(), "stdout", "stderr")


# --- Message and AsyncMessage --------------------------------------------------------------------


class Collector(Message):
    def __init__(self, message_class: Any = None) -> None:
        super().__init__(message_class)
        self.messages: list[email.message.Message] = []

    def handle_message(self, message: email.message.Message) -> None:
        self.messages.append(message)


class AsyncCollector(AsyncMessage):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[email.message.Message] = []

    async def handle_message(self, message: email.message.Message) -> None:
        await asyncio.sleep(0)
        self.messages.append(message)


def test_message_classes_are_abstract() -> None:
    with pytest.raises(TypeError):
        Message()  # type: ignore[abstract]
    with pytest.raises(TypeError):
        AsyncMessage()  # type: ignore[abstract]


def test_prepare_message_adds_trace_headers() -> None:
    envelope = make_envelope(rcpt_tos=["bart@example.com", "cate@example.com"])
    message = MessageBase().prepare_message(make_session(), envelope)
    assert type(message) is email.message.Message
    assert message["X-Peer"] == "127.0.0.1"
    assert message["X-MailFrom"] == "anne@example.com"
    assert message["X-RcptTo"] == "bart@example.com, cate@example.com"
    assert message["Subject"] == "A test"


def test_prepare_message_replaces_forged_trace_headers() -> None:
    forged = b"X-MailFrom: ceo@example.com\r\nX-Peer: 10.0.0.1\r\n" + CONTENT
    message = MessageBase().prepare_message(make_session(), make_envelope(forged))
    assert message.get_all("X-MailFrom") == ["anne@example.com"]
    assert message.get_all("X-Peer") == ["127.0.0.1"]


def test_prepare_message_keeps_header_values_on_one_line() -> None:
    envelope = make_envelope(mail_from="anne@example.com\r\nBcc: victim@example.com")
    message = MessageBase().prepare_message(make_session(), envelope)
    assert message["X-MailFrom"] == "anne@example.comBcc: victim@example.com"
    reparsed = email.message_from_string(message.as_string())
    assert reparsed["Bcc"] is None


def test_prepare_message_with_message_class_and_str_content() -> None:
    base = MessageBase(email.message.EmailMessage)
    message = base.prepare_message(make_session(), make_envelope(CONTENT.decode()))
    assert isinstance(message, email.message.EmailMessage)
    assert message["Message-ID"] == "<ant>"


@pytest.mark.asyncio
async def test_message_handle_data() -> None:
    handler = Collector()
    assert await handler.handle_DATA(SERVER, make_session(), make_envelope()) == "250 OK"
    assert [m["Subject"] for m in handler.messages] == ["A test"]


@pytest.mark.asyncio
async def test_async_message_handle_data_and_loop() -> None:
    handler = AsyncCollector()
    assert await handler.handle_DATA(SERVER, make_session(), make_envelope()) == "250 OK"
    assert [m["X-RcptTo"] for m in handler.messages] == ["bart@example.com"]
    assert handler.loop is asyncio.get_running_loop()


# --- Mailbox -------------------------------------------------------------------------------------


def message_ids(maildir: Path) -> list[str]:
    return sorted(str(message["Message-ID"]) for message in mailbox.Maildir(maildir))


@pytest.mark.asyncio
async def test_mailbox_stores_in_new(tmp_path: Path) -> None:
    handler = Mailbox(tmp_path / "Maildir")
    reply = await handler.handle_DATA(SERVER, make_session(), make_envelope())
    assert reply == "250 OK"
    new = list((tmp_path / "Maildir" / "new").iterdir())
    assert len(new) == 1
    assert list((tmp_path / "Maildir" / "tmp").iterdir()) == []
    stored = email.message_from_bytes(new[0].read_bytes())
    assert stored["Message-ID"] == "<ant>"
    assert stored["X-MailFrom"] == "anne@example.com"
    assert stored["X-Peer"] == "127.0.0.1"


@pytest.mark.asyncio
async def test_mailbox_concurrent_writes_each_land_once(tmp_path: Path) -> None:
    handler = Mailbox(tmp_path / "Maildir")
    count = 40
    envelopes = [make_envelope(CONTENT.replace(b"<ant>", f"<m{i}>".encode())) for i in range(count)]
    replies = await asyncio.gather(
        *(handler.handle_DATA(SERVER, make_session(), envelope) for envelope in envelopes)
    )
    assert replies == ["250 OK"] * count
    assert message_ids(tmp_path / "Maildir") == sorted(f"<m{i}>" for i in range(count))
    assert len(list((tmp_path / "Maildir" / "new").iterdir())) == count
    assert list((tmp_path / "Maildir" / "tmp").iterdir()) == []


@pytest.mark.asyncio
async def test_mailbox_writes_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = Mailbox(tmp_path / "Maildir")
    threads: list[threading.Thread] = []
    original_add = handler.mailbox.add

    def recording_add(message: Any) -> str:
        threads.append(threading.current_thread())
        return original_add(message)

    monkeypatch.setattr(handler.mailbox, "add", recording_add)
    assert await handler.handle_DATA(SERVER, make_session(), make_envelope()) == "250 OK"
    assert threads
    assert threads[0] is not threading.current_thread()
    assert message_ids(tmp_path / "Maildir") == ["<ant>"]


@pytest.mark.asyncio
async def test_mailbox_disk_error_answers_451(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    handler = Mailbox(tmp_path / "Maildir")
    tmp_dir = tmp_path / "Maildir" / "tmp"
    tmp_dir.rmdir()
    tmp_dir.write_bytes(b"")  # tmp/ is now a file: creating a message in it fails
    with caplog.at_level(logging.ERROR, logger="mail.log"):
        reply = await handler.handle_DATA(SERVER, make_session(), make_envelope())
    assert reply == "451 4.3.0 Requested action aborted: local error in processing"
    assert list((tmp_path / "Maildir" / "new").iterdir()) == []
    assert any("could not store" in record.getMessage() for record in caplog.records)


@pytest.mark.asyncio
async def test_mailbox_failing_subclass_never_answers_250(tmp_path: Path) -> None:
    class Broken(Mailbox):
        def handle_message(self, message: email.message.Message) -> None:
            raise RuntimeError("secret detail")

    reply = await Broken(tmp_path / "Maildir").handle_DATA(SERVER, make_session(), make_envelope())
    assert reply.startswith("451 ")
    assert "secret" not in reply


@pytest.mark.asyncio
async def test_mailbox_reset(tmp_path: Path) -> None:
    handler = Mailbox(tmp_path / "Maildir")
    await handler.handle_DATA(SERVER, make_session(), make_envelope())
    handler.reset()
    assert message_ids(tmp_path / "Maildir") == []


@pytest.mark.asyncio
async def test_mailbox_with_maildir_message_class(tmp_path: Path) -> None:
    handler = Mailbox(tmp_path / "Maildir", mailbox.MaildirMessage)
    assert await handler.handle_DATA(SERVER, make_session(), make_envelope()) == "250 OK"
    assert message_ids(tmp_path / "Maildir") == ["<ant>"]


def test_mailbox_from_cli(tmp_path: Path) -> None:
    handler = Mailbox.from_cli(RaisingParser(), str(tmp_path / "box"))
    assert handler.mail_dir == str(tmp_path / "box")
    assert (tmp_path / "box" / "new").is_dir()
    with pytest.raises(ParserError, match="exactly one"):
        Mailbox.from_cli(RaisingParser())
    with pytest.raises(ParserError, match="exactly one"):
        Mailbox.from_cli(RaisingParser(), "a", "b")


# --- Proxy ---------------------------------------------------------------------------------------


@dataclass
class ScriptedRelay:
    """A tiny SMTP server that answers from a script and records what it receives."""

    extensions: list[str] = field(default_factory=lambda: ["8BITMIME", "SMTPUTF8", "SIZE 100000"])
    mail_reply: bytes = b"250 2.1.0 OK"
    rcpt_replies: dict[str, bytes] = field(default_factory=dict)
    data_reply: bytes = b"250 2.0.0 Queued"
    #: ``"greeting"``: close before greeting; ``"data"``: close after receiving the message.
    hang_up: str | None = None
    #: Never say anything: the client must time out.
    silent: bool = False
    commands: list[str] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._dialog(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _dialog(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.silent:
            await reader.read()  # until the client gives up
            return
        if self.hang_up == "greeting":
            return
        writer.write(b"220 relay.test ESMTP\r\n")
        while line := await reader.readline():
            verb, sep, rest = line.decode("utf-8").rstrip("\r\n").partition(" ")
            verb = verb.upper()  # smtplib sends its verbs in lower case
            if verb in ("MAIL", "RCPT"):  # and, from Python 3.13 on, "from:" and "to:" too
                keyword, colon, value = rest.partition(":")
                rest = keyword.upper() + colon + value
            command = verb + sep + rest
            self.commands.append(command)
            if verb == "EHLO":
                lines = ["relay.test", *self.extensions]
                for extension in lines[:-1]:
                    writer.write(f"250-{extension}\r\n".encode())
                writer.write(f"250 {lines[-1]}\r\n".encode())
            elif verb == "MAIL":
                writer.write(self.mail_reply + b"\r\n")
            elif verb == "RCPT":
                address = command.partition(":")[2].split(" ", 1)[0].strip("<>")
                writer.write(self.rcpt_replies.get(address, b"250 2.1.5 OK") + b"\r\n")
            elif verb == "DATA":
                writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                self.messages.append(await reader.readuntil(b"\r\n.\r\n"))
                if self.hang_up == "data":
                    return
                writer.write(self.data_reply + b"\r\n")
            elif verb == "QUIT":
                writer.write(b"221 Bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"250 OK\r\n")
            await writer.drain()


@pytest_asyncio.fixture
async def relay() -> AsyncIterator[tuple[ScriptedRelay, int]]:
    script = ScriptedRelay()
    server = await asyncio.start_server(script.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield script, port


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port where nothing listens (kept bound, so that nothing else takes it meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def commands_of(script: ScriptedRelay, verb: str) -> list[str]:
    return [c for c in script.commands if c.upper().startswith(verb)]


@pytest.mark.asyncio
async def test_proxy_relays_and_answers_250(relay: tuple[ScriptedRelay, int]) -> None:
    script, port = relay
    envelope = make_envelope(rcpt_tos=["bart@example.com", "cate@example.com"])
    reply = await Proxy("127.0.0.1", port).handle_DATA(SERVER, make_session(), envelope)
    assert reply == "250 OK"
    relayed = b"X-Peer: 127.0.0.1\r\n" + CONTENT
    assert commands_of(script, "MAIL") == [f"MAIL FROM:<anne@example.com> size={len(relayed)}"]
    assert commands_of(script, "RCPT") == [
        "RCPT TO:<bart@example.com>",
        "RCPT TO:<cate@example.com>",
    ]
    assert script.messages == [relayed + b".\r\n"]


@pytest.mark.asyncio
async def test_proxy_normalises_line_endings(relay: tuple[ScriptedRelay, int]) -> None:
    script, port = relay
    content = b"Subject: x\n\nbare LF\nbare CR\r.dot first\r\nend"
    reply = await Proxy("127.0.0.1", port).handle_DATA(
        SERVER, make_session(), make_envelope(content)
    )
    assert reply == "250 OK"
    assert script.messages == [
        b"X-Peer: 127.0.0.1\r\nSubject: x\r\n\r\nbare LF\r\nbare CR\r\n..dot first\r\nend\r\n.\r\n"
    ]


@pytest.mark.asyncio
async def test_proxy_strips_cr_lf_nul_from_addresses(relay: tuple[ScriptedRelay, int]) -> None:
    script, port = relay
    envelope = make_envelope(
        mail_from="anne@example.com\r\nRSET",
        rcpt_tos=["bart@example.com\r\nRCPT TO:<evil@example.net>", "cate@exa\x00mple.com"],
    )
    reply = await Proxy("127.0.0.1", port).handle_DATA(SERVER, make_session(), envelope)
    assert reply == "250 OK"
    assert [c.split(" ")[0] for c in script.commands] == [
        "EHLO",
        "MAIL",
        "RCPT",
        "RCPT",
        "DATA",
        "QUIT",
    ]
    assert commands_of(script, "MAIL")[0].startswith("MAIL FROM:<anne@example.comRSET>")
    assert "RCPT TO:<cate@example.com>" in script.commands
    assert "RCPT TO:<evil@example.net>" not in script.commands[:3]


@pytest.mark.asyncio
async def test_proxy_partial_refusal_still_250_and_logged(
    relay: tuple[ScriptedRelay, int], caplog: pytest.LogCaptureFixture
) -> None:
    script, port = relay
    script.rcpt_replies["cate@example.com"] = b"550 5.1.1 No such user"
    envelope = make_envelope(rcpt_tos=["bart@example.com", "cate@example.com"])
    with caplog.at_level(logging.WARNING, logger="mail.log"):
        reply = await Proxy("127.0.0.1", port).handle_DATA(SERVER, make_session(), envelope)
    assert reply == "250 OK"
    assert len(script.messages) == 1
    assert any(
        "refused 1 of 2" in r.getMessage() and "cate@example.com: 550" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.asyncio
async def test_proxy_all_recipients_refused_passes_the_refusal_on(
    relay: tuple[ScriptedRelay, int],
) -> None:
    script, port = relay
    script.rcpt_replies["bart@example.com"] = b"550 5.1.1 No such user"
    reply = await Proxy("127.0.0.1", port).handle_DATA(SERVER, make_session(), make_envelope())
    assert reply == "550 5.1.1 No such user"
    assert script.messages == []


@pytest.mark.asyncio
async def test_proxy_mixed_refusals_answer_transient(relay: tuple[ScriptedRelay, int]) -> None:
    script, port = relay
    script.rcpt_replies["bart@example.com"] = b"550 5.1.1 No such user"
    script.rcpt_replies["cate@example.com"] = b"450 4.2.1 Mailbox busy"
    envelope = make_envelope(rcpt_tos=["bart@example.com", "cate@example.com"])
    reply = await Proxy("127.0.0.1", port).handle_DATA(SERVER, make_session(), envelope)
    assert reply == "450 4.2.1 Mailbox busy"


@pytest.mark.asyncio
async def test_proxy_multiline_refusal_becomes_one_clean_line(
    relay: tuple[ScriptedRelay, int],
) -> None:
    script, port = relay
    script.rcpt_replies["bart@example.com"] = b"550-5.7.1 Rejected\r\n550 5.7.1 \x01policy"
    reply = await Proxy("127.0.0.1", port).handle_DATA(SERVER, make_session(), make_envelope())
    assert reply == "550 5.7.1 Rejected 5.7.1 policy"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("data_reply", "expected"),
    [
        (b"554 5.7.1 Spam", "554 5.7.1 Spam"),
        (b"452 4.3.1 Out of storage", "452 4.3.1 Out of storage"),
        (b"421 4.3.2 Going down", "451 4.3.2 Going down"),
        (b"501 Syntax", "554 5.0.0 Syntax"),
        (b"550 4.7.1 Inconsistent", "550 5.0.0 Inconsistent"),
    ],
)
async def test_proxy_data_refused(
    relay: tuple[ScriptedRelay, int], data_reply: bytes, expected: str
) -> None:
    script, port = relay
    script.data_reply = data_reply
    reply = await Proxy("127.0.0.1", port).handle_DATA(SERVER, make_session(), make_envelope())
    assert reply == expected


@pytest.mark.asyncio
async def test_proxy_sender_refused(relay: tuple[ScriptedRelay, int]) -> None:
    script, port = relay
    script.mail_reply = b"553 5.7.1 Sender not allowed"
    reply = await Proxy("127.0.0.1", port).handle_DATA(SERVER, make_session(), make_envelope())
    assert reply == "553 5.7.1 Sender not allowed"


@pytest.mark.asyncio
async def test_proxy_relay_unreachable_answers_451(closed_port: int) -> None:
    reply = await Proxy("127.0.0.1", closed_port).handle_DATA(
        SERVER, make_session(), make_envelope()
    )
    assert reply == handlers.RELAY_UNAVAILABLE_REPLY
    assert reply.startswith("451 4.4.1 ")


@pytest.mark.asyncio
@pytest.mark.parametrize("hang_up", ["greeting", "data"])
async def test_proxy_relay_hangs_up_answers_451(
    relay: tuple[ScriptedRelay, int], hang_up: str
) -> None:
    script, port = relay
    script.hang_up = hang_up
    reply = await Proxy("127.0.0.1", port).handle_DATA(SERVER, make_session(), make_envelope())
    assert reply == handlers.RELAY_UNAVAILABLE_REPLY


@pytest.mark.asyncio
async def test_proxy_relay_silent_times_out_with_451(relay: tuple[ScriptedRelay, int]) -> None:
    script, port = relay
    script.silent = True
    proxy = Proxy("127.0.0.1", port, timeout=0.2)
    assert await proxy.handle_DATA(SERVER, make_session(), make_envelope()) == (
        handlers.RELAY_UNAVAILABLE_REPLY
    )


@pytest.mark.asyncio
async def test_proxy_passes_8bitmime_and_smtputf8_on(relay: tuple[ScriptedRelay, int]) -> None:
    script, port = relay
    envelope = make_envelope(
        mail_from="j\u00f6rg@example.com", mail_options=["BODY=8BITMIME", "SMTPUTF8"]
    )
    envelope.body = "8BITMIME"
    envelope.smtp_utf8 = True
    assert await Proxy("127.0.0.1", port).handle_DATA(SERVER, make_session(), envelope) == "250 OK"
    mail = commands_of(script, "MAIL")[0]
    assert mail.startswith("MAIL FROM:<j\u00f6rg@example.com> ")
    assert "BODY=8BITMIME" in mail
    assert "SMTPUTF8" in mail


@pytest.mark.asyncio
async def test_proxy_smtputf8_needed_but_not_offered(relay: tuple[ScriptedRelay, int]) -> None:
    script, port = relay
    script.extensions = ["SIZE 100000"]
    envelope = make_envelope(mail_from="j\u00f6rg@example.com", mail_options=["SMTPUTF8"])
    reply = await Proxy("127.0.0.1", port).handle_DATA(SERVER, make_session(), envelope)
    assert reply == handlers.RELAY_NO_SMTPUTF8_REPLY
    assert script.messages == []


@pytest.mark.asyncio
async def test_proxy_smtputf8_not_needed_is_dropped(relay: tuple[ScriptedRelay, int]) -> None:
    script, port = relay
    script.extensions = []
    envelope = make_envelope(mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    assert await Proxy("127.0.0.1", port).handle_DATA(SERVER, make_session(), envelope) == "250 OK"
    assert commands_of(script, "MAIL") == ["MAIL FROM:<anne@example.com>"]


@pytest.mark.asyncio
async def test_proxy_refuses_binarymime(relay: tuple[ScriptedRelay, int]) -> None:
    script, port = relay
    envelope = make_envelope()
    envelope.body = "BINARYMIME"
    reply = await Proxy("127.0.0.1", port).handle_DATA(SERVER, make_session(), envelope)
    assert reply == handlers.BINARYMIME_REPLY
    assert script.commands == []


@pytest.mark.asyncio
async def test_proxy_without_recipients(relay: tuple[ScriptedRelay, int]) -> None:
    script, port = relay
    envelope = make_envelope(rcpt_tos=["\r\n"])
    reply = await Proxy("127.0.0.1", port).handle_DATA(SERVER, make_session(), envelope)
    assert reply == handlers.NO_RECIPIENTS_REPLY
    assert script.commands == []


@pytest.mark.asyncio
async def test_proxy_unexpected_error_answers_451_without_detail(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = Proxy("127.0.0.1", 25)

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("internal secret")

    monkeypatch.setattr(proxy, "_deliver", explode)
    with caplog.at_level(logging.ERROR, logger="mail.log"):
        reply = await proxy.handle_DATA(SERVER, make_session(), make_envelope())
    assert reply == "451 4.3.0 Requested action aborted: local error in processing"
    assert any(record.exc_info for record in caplog.records)


def test_proxy_from_cli() -> None:
    proxy = Proxy.from_cli(RaisingParser(), "relay.example.com", "2525")
    assert (proxy.hostname, proxy.port) == ("relay.example.com", 2525)
    for args in [
        (),
        ("relay.example.com",),
        ("h", "p"),
        ("h", "0"),
        ("h", "70000"),
        ("h", "1", "x"),
    ]:
        with pytest.raises(ParserError):
            Proxy.from_cli(RaisingParser(), *args)


@given(code=st.integers(min_value=-1, max_value=999), text=st.binary(max_size=600))
def test_relay_reply_is_always_a_valid_refusal(code: int, text: bytes) -> None:
    reply = handlers._relay_reply(code, text)
    reply_code, _, rest = reply.partition(" ")
    assert 400 <= int(reply_code) < 600
    enhanced, _, message = rest.partition(" ")
    # It is exactly what a Reply value renders, so it passed Reply's checks.
    assert Reply(int(reply_code), message, enhanced).line() == reply
    assert len(reply) < 512


def test_public_names_are_documented() -> None:
    assert set(handlers.__all__) == {
        "AsyncMessage",
        "Debugging",
        "Mailbox",
        "Message",
        "MessageBase",
        "Proxy",
        "Sink",
    }
    assert all(getattr(handlers, name).__doc__ for name in handlers.__all__)
    assert os.path.basename(handlers.__file__ or "") == "handlers.py"


# --- Proxy between two typed_smtpd servers -------------------------------------------------------


class RecordingRelay:
    """The far end: refuses the recipients it is told to, records what it accepts."""

    def __init__(self, refuse: frozenset[str] = frozenset()) -> None:
        self.refuse = refuse
        self.envelopes: list[Envelope] = []

    async def handle_RCPT(
        self,
        server: Any,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 Unknown user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 OK"


def send(port: int, rcpt_tos: list[str]) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        return client.sendmail("anne@example.com", rcpt_tos, CONTENT)


@pytest.mark.integration
@pytest.mark.asyncio
async def test_proxy_between_two_servers() -> None:
    from typed_smtpd.controller import serve

    far = RecordingRelay(refuse=frozenset({"nobody@example.com"}))
    async with (
        serve(far, hostname="127.0.0.1", port=0) as relay,
        serve(Proxy("127.0.0.1", relay.port or 0), hostname="127.0.0.1", port=0) as front,
    ):
        port = front.port or 0
        refused = await asyncio.to_thread(send, port, ["bart@example.com", "nobody@example.com"])
        assert refused == {}  # the front accepted the message: the relay took it for bart
        with pytest.raises(smtplib.SMTPDataError) as error:
            await asyncio.to_thread(send, port, ["nobody@example.com"])
        assert (error.value.smtp_code, error.value.smtp_error) == (550, b"5.1.1 Unknown user")
    assert [e.rcpt_tos for e in far.envelopes] == [["bart@example.com"]]
    relayed = far.envelopes[0].original_content or b""
    assert relayed.startswith(b"X-Peer: 127.0.0.1\r\nFrom: Anne Person")
    assert relayed.endswith(b"Hi Bart, this is Anne.\r\n")


@pytest.mark.integration
def test_proxy_relay_down_answers_451_over_sockets(closed_port: int) -> None:
    from typed_smtpd.controller import Controller

    with Controller(Proxy("127.0.0.1", closed_port), hostname="127.0.0.1", port=0) as front:
        with pytest.raises(smtplib.SMTPDataError) as error:
            send(front.port, ["bart@example.com"])
        assert error.value.smtp_code == 451
        assert error.value.smtp_error == handlers.RELAY_UNAVAILABLE_REPLY[4:].encode()
        # The front is still there, and still answers.
        with smtplib.SMTP("127.0.0.1", front.port, timeout=30) as client:
            assert client.noop()[0] == 250


class HeldRelay(RecordingRelay):
    """A relay whose DATA hook waits, in its own event loop, until the test lets it go on."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        self.entered.set()
        await asyncio.to_thread(self.release.wait, 30)
        return await super().handle_DATA(server, session, envelope)


@pytest.mark.integration
def test_proxy_slow_relay_does_not_hold_up_other_clients() -> None:
    from typed_smtpd.controller import Controller

    far = HeldRelay()
    with (
        Controller(far, hostname="127.0.0.1", port=0) as relay,
        Controller(Proxy("127.0.0.1", relay.port), hostname="127.0.0.1", port=0) as front,
    ):
        outcome: list[object] = []
        slow = threading.Thread(
            target=lambda: outcome.append(send(front.port, ["bart@example.com"])), daemon=True
        )
        slow.start()
        try:
            assert far.entered.wait(30), "the message never reached the relay"
            # The relay holds the first message; the front serves a second client meanwhile.
            with smtplib.SMTP("127.0.0.1", front.port, timeout=30) as client:
                assert client.ehlo()[0] == 250
                assert client.noop()[0] == 250
            assert slow.is_alive()
            assert outcome == []
        finally:
            far.release.set()
        slow.join(30)
    assert outcome == [{}]
    assert [e.rcpt_tos for e in far.envelopes] == [["bart@example.com"]]


@pytest.mark.integration
def test_proxy_relay_slower_than_the_timeout_answers_451() -> None:
    from typed_smtpd.controller import Controller

    far = HeldRelay()
    try:
        with (
            Controller(far, hostname="127.0.0.1", port=0) as relay,
            Controller(
                Proxy("127.0.0.1", relay.port, timeout=0.5), hostname="127.0.0.1", port=0
            ) as front,
        ):
            with pytest.raises(smtplib.SMTPDataError) as error:
                send(front.port, ["bart@example.com"])
            assert error.value.smtp_code == 451
            assert error.value.smtp_error == handlers.RELAY_UNAVAILABLE_REPLY[4:].encode()
            assert far.entered.is_set()
    finally:
        far.release.set()


async def test_mailbox_in_an_existing_empty_directory(tmp_path: Path) -> None:
    # An existing empty directory (a fresh volume) must work like a new path.
    handler = Mailbox(tmp_path)
    session, envelope = Session(), Envelope(mail_from="a@b.test", rcpt_tos=["c@d.test"])
    envelope.content = envelope.original_content = b"Subject: x\r\n\r\nbody\r\n"
    assert await handler.handle_DATA(SERVER, session, envelope) == "250 OK"
    assert len(list((tmp_path / "new").iterdir())) == 1


test_mailbox_in_an_existing_empty_directory = pytest.mark.asyncio(
    test_mailbox_in_an_existing_empty_directory
)
