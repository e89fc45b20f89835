"""The SMTP engine over real sockets: every command, its replies, limits and hook behaviour."""

from __future__ import annotations

import asyncio
import logging
import smtplib
import time
from typing import Any

import aiosmtplib
import pytest

from tests.support import Recorder, connected, running
from typed_smtpd.handlers import Sink
from typed_smtpd.proto import replies as R
from typed_smtpd.session import Envelope, Session
from typed_smtpd.smtp import SMTP, syntax

pytestmark = pytest.mark.integration


def text(reply: R.Reply, *, enhanced: bool = True) -> str:
    """The text part of a catalogue reply as a client reads it."""
    return reply.line(enhanced=enhanced)[4:]


# --- greeting, HELO, EHLO -------------------------------------------------------------------------


def test_greeting_helo_and_quit() -> None:
    with running() as server, connected(server) as c:
        code, greeting = c.greeting
        assert code == 220 and greeting.startswith("test.local ESMTP typed_smtpd")
        assert c.cmd("HELO") == (501, "Syntax: HELO hostname")
        assert c.cmd("HELO client.test") == (250, "test.local")
        assert c.cmd("NOOP") == (250, "OK")  # no enhanced codes without EHLO
        assert c.cmd("QUIT") == (221, "Bye")
        assert c.is_closed()


def test_ehlo_lists_extensions() -> None:
    with running() as server, smtplib.SMTP(server.hostname, server.port) as client:
        code, message = client.ehlo("client.test")
        assert code == 250
        assert message.decode().splitlines() == [
            "test.local",
            "SIZE 33554432",
            "8BITMIME",
            "SMTPUTF8",
            "PIPELINING",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
            "BINARYMIME",
            "DSN",
            "HELP",
        ]
        assert client.noop() == (250, b"2.0.0 OK")


@pytest.mark.parametrize(
    ("kwargs", "present", "absent"),
    [
        ({"decode_data": True}, [], ["8BITMIME"]),
        ({"enable_SMTPUTF8": False}, [], ["SMTPUTF8"]),
        ({"data_size_limit": None}, [], ["SIZE"]),
        ({"data_size_limit": 1000}, ["SIZE 1000"], []),
        ({"enhanced_status_codes": False}, [], ["ENHANCEDSTATUSCODES"]),
        ({"auth_require_tls": False}, ["AUTH LOGIN PLAIN"], []),
    ],
)
def test_ehlo_follows_configuration(
    kwargs: dict[str, Any], present: list[str], absent: list[str]
) -> None:
    with running(**kwargs) as server, connected(server) as c:
        code, lines = c.cmd("EHLO client.test")
        assert code == 250
        listed = lines.splitlines()
        for keyword in present:
            assert keyword in listed
        for keyword in absent:
            assert not any(line.startswith(keyword) for line in listed)


def test_ehlo_needs_hostname_and_resets_transaction() -> None:
    with running() as server, connected(server) as c:
        assert c.cmd("EHLO")[0] == 501
        c.cmd("EHLO a.test")
        assert c.cmd("MAIL FROM:<a@b.test>")[0] == 250
        c.cmd("EHLO a.test")
        assert c.cmd("RCPT TO:<c@d.test>") == (503, "5.5.1 Error: need MAIL command")


# --- simple commands ------------------------------------------------------------------------------


def test_noop_rset_vrfy_expn_help() -> None:
    with running() as server, connected(server) as c:
        c.cmd("EHLO client.test")
        assert c.cmd("NOOP anything at all") == (250, "2.0.0 OK")
        assert c.cmd("RSET") == (250, "2.0.0 OK")
        assert c.cmd("RSET now") == (501, "5.5.4 Syntax: RSET")
        assert c.cmd("VRFY <someone@example.test>") == (252, text(R.CANNOT_VRFY))
        assert c.cmd("VRFY postmaster")[0] == 252
        assert c.cmd("VRFY")[0] == 501
        assert c.cmd("VRFY not an address")[0] == 502
        assert c.cmd("EXPN list") == (502, text(R.EXPN_NOT_IMPLEMENTED))
        code, help_text = c.cmd("HELP")
        assert code == 250
        assert help_text == (
            "2.0.0 Supported commands: AUTH BDAT DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET VRFY"
        )
        assert c.cmd("HELP mail") == (
            250,
            "2.0.0 Syntax: MAIL FROM: <address> [SP <mail-parameters>]",
        )
        assert c.cmd("HELP FROB")[0] == 501
        assert c.cmd("QUIT please") == (501, "5.5.4 Syntax: QUIT")


def test_unknown_commands_then_421() -> None:
    with running(bogus_limit=3) as server, connected(server) as c:
        assert c.cmd("FROB") == (500, text(R.unrecognized("FROB"), enhanced=False))
        assert c.cmd("") == (500, "Error: bad syntax")
        assert c.cmd("FROB") == (500, text(R.unrecognized("FROB"), enhanced=False))
        assert c.reply() == (421, "Too many unrecognized commands, goodbye.")
        assert c.is_closed()


def test_command_call_limit() -> None:
    with running(command_call_limit={"NOOP": 2}) as server, connected(server) as c:
        assert c.cmd("NOOP")[0] == 250
        assert c.cmd("NOOP")[0] == 250
        assert c.cmd("NOOP") == (421, "NOOP sent too many times")
        assert c.is_closed()


def test_command_call_limit_type_checked() -> None:
    with pytest.raises(TypeError):
        SMTP(Recorder(), command_call_limit="many")  # type: ignore[arg-type]


def test_command_line_too_long() -> None:
    with running() as server, connected(server) as c:
        assert c.cmd("NOOP " + "x" * 600) == (500, "Command line too long")
        c.cmd("EHLO client.test")
        # MAIL gets the extension allowance after EHLO; far beyond it is framed out.
        assert c.cmd("MAIL FROM:<a@b.test> ENVID=" + "x" * 90)[0] == 250
        assert c.cmd("NOOP " + "x" * 100_000) == (500, "5.5.2 Command line too long")
        assert c.cmd("NOOP") == (250, "2.0.0 OK")


@pytest.mark.parametrize(
    ("line", "policy", "expected"),
    [
        (b"NOOP\n", "reject", 500),
        (b"NOOP\n", "normalize", 250),
        (b"NOOP\n", "accept", 250),
        (b"NO\x00OP\r\n", "accept", 500),
        (b"NOOP\rx\r\n", "reject", 500),
    ],
)
def test_bare_line_endings_in_commands(line: bytes, policy: str, expected: int) -> None:
    with running(bare_newline=policy) as server, connected(server) as c:
        c.send(line)
        assert c.reply()[0] == expected
        assert c.cmd("NOOP")[0] == 250  # the session stays usable


# --- MAIL / RCPT ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("MAIL FROM:<a@b.test>", (250, "2.1.0 OK")),
        ("MAIL FROM:<>", (250, "2.1.0 OK")),
        ("MAIL FROM:<a@b.test> SIZE=1000 BODY=8bitmime", (250, "2.1.0 OK")),
        ("MAIL FROM:<a@b.test> BODY=BINARYMIME", (250, "2.1.0 OK")),
        ("MAIL FROM:<a@b.test> AUTH=<>", (250, "2.1.0 OK")),
        ("MAIL FROM:<a@b.test> RET=HDRS ENVID=QQ+2Bx", (250, "2.1.0 OK")),
        ("MAIL FROM:<a@b.test> SMTPUTF8", (250, "2.1.0 OK")),
        ("MAIL FROM:a@b.test", (501, "5.5.4 Syntax: MAIL FROM: <address> [SP <mail-parameters>]")),
        ("MAIL FROM:<a@@b>", (553, text(R.MALFORMED_ADDRESS))),
        ("MAIL TO:<a@b.test>", (501, "5.5.4 Syntax: MAIL FROM: <address> [SP <mail-parameters>]")),
        ("MAIL", (501, "5.5.4 Syntax: MAIL FROM: <address> [SP <mail-parameters>]")),
        ("MAIL FROM:<a@b.test> SIZE=99999999999", (552, text(R.MAIL_SIZE_TOO_LARGE))),
        (
            "MAIL FROM:<a@b.test> SIZE=big",
            (501, "5.5.4 Syntax: MAIL FROM: <address> SIZE=<number>"),
        ),
        ("MAIL FROM:<a@b.test> BODY=9BIT", (501, text(R.MAIL_BAD_BODY))),
        ("MAIL FROM:<a@b.test> SMTPUTF8=yes", (501, text(R.MAIL_SMTPUTF8_VALUE))),
        ("MAIL FROM:<a@b.test> X-Trace-Id=7", (555, text(R.MAIL_PARAM_UNRECOGNIZED))),
        (
            "MAIL FROM:<a@b.test> RET=SOME",
            (501, "5.5.4 Syntax: MAIL FROM: <address> RET=FULL|HDRS"),
        ),
        (
            "MAIL FROM:<a@b.test> ENVID=a+0D+0Ab",
            (501, "5.5.4 Syntax: MAIL FROM: <address> ENVID=<xtext>"),
        ),
        (
            "MAIL FROM:<a@b.test> SIZE=1 SIZE=2",
            (501, "5.5.4 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"),
        ),
        ("MAIL FROM:<j\u00f6rg@b.test>", (553, text(R.NEED_UTF8))),
    ],
)
def test_mail(command: str, expected: tuple[int, str]) -> None:
    with running(data_size_limit=10_000) as server, connected(server) as c:
        c.cmd("EHLO client.test")
        assert c.cmd(command) == expected


def test_mail_sequencing() -> None:
    with running(enable_SMTPUTF8=False) as server, connected(server) as c:
        assert c.cmd("MAIL FROM:<a@b.test>") == (503, "Error: send HELO first")
        c.cmd("HELO client.test")
        assert c.cmd("MAIL FROM:<a@b.test> SIZE=10")[0] == 501  # no parameters without EHLO
        assert c.cmd("MAIL FROM:<a@b.test>") == (250, "OK")
        assert c.cmd("MAIL FROM:<a@b.test>") == (503, "Error: nested MAIL command")
        c.cmd("EHLO client.test")
        assert c.cmd("MAIL FROM:<a@b.test> SMTPUTF8") == (501, text(R.MAIL_SMTPUTF8_DISABLED))


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("RCPT TO:<c@d.test>", 250),
        ("RCPT TO:<Postmaster>", 250),
        ("RCPT TO:<c@d.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;c+40d.test", 250),
        ("RCPT TO:<c@d.test> NOTIFY=NEVER", 250),
        ("RCPT TO:<c@d.test> NOTIFY=NEVER,SUCCESS", 501),
        ("RCPT TO:<c@d.test> ORCPT=nosemicolon", 501),
        ("RCPT TO:<c@d.test> X-Custom=1", 555),
        ("RCPT TO:<>", 553),
        ("RCPT TO:c@d.test", 501),
        ("RCPT FROM:<c@d.test>", 501),
    ],
)
def test_rcpt(command: str, expected: int) -> None:
    with running() as server, connected(server) as c:
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<a@b.test>")
        assert c.cmd(command)[0] == expected


def test_rcpt_needs_mail_and_recipient_cap() -> None:
    with running(max_recipients=2) as server, connected(server) as c:
        c.cmd("EHLO client.test")
        assert c.cmd("RCPT TO:<c@d.test>") == (503, text(R.NEED_MAIL))
        c.cmd("MAIL FROM:<a@b.test>")
        assert c.cmd("RCPT TO:<c1@d.test>")[0] == 250
        assert c.cmd("RCPT TO:<c2@d.test>")[0] == 250
        assert c.cmd("RCPT TO:<c3@d.test>") == (452, text(R.TOO_MANY_RECIPIENTS))


def test_parameters_reach_envelope_with_case_kept() -> None:
    recorder = Recorder()
    with running(recorder) as server, connected(server) as c:
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<a@b.test> BODY=8bitmime ENVID=Id+2BX RET=hdrs AUTH=<> SIZE=20")
        c.cmd("RCPT TO:<c@d.test> NOTIFY=failure ORCPT=rfc822;C+40D.test")
        c.cmd("DATA")
        assert c.cmd("Subject: x\r\n\r\nbody\r\n.")[0] == 250
    (envelope,) = recorder.envelopes
    assert envelope.mail_options == [
        "BODY=8bitmime",
        "ENVID=Id+2BX",
        "RET=hdrs",
        "AUTH=<>",
        "SIZE=20",
    ]
    assert (envelope.body, envelope.dsn_envid, envelope.dsn_ret) == ("8BITMIME", "Id+X", "HDRS")
    assert (envelope.auth, envelope.size) == ("<>", 20)
    assert envelope.rcpt_options == ["NOTIFY=failure", "ORCPT=rfc822;C+40D.test"]
    assert envelope.rcpt_dsn[0].notify == ("FAILURE",)
    assert envelope.rcpt_dsn[0].orcpt == "rfc822;C@D.test"


# --- DATA -----------------------------------------------------------------------------------------


def test_sendmail_round_trip_with_dot_stuffing() -> None:
    recorder = Recorder()
    body = "Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nend\r\n"
    with running(recorder) as server, smtplib.SMTP(server.hostname, server.port) as client:
        assert client.sendmail("a@b.test", ["c@d.test", "e@f.test"], body) == {}
    (envelope,) = recorder.envelopes
    assert envelope.mail_from == "a@b.test"
    assert envelope.rcpt_tos == ["c@d.test", "e@f.test"]
    assert envelope.content == body.encode()
    assert envelope.original_content == body.encode()
    assert recorder.sessions[0].host_name is not None


def test_data_sequencing_and_syntax() -> None:
    with running() as server, connected(server) as c:
        assert c.cmd("DATA") == (503, "Error: send HELO first")
        c.cmd("EHLO client.test")
        assert c.cmd("DATA") == (503, text(R.NEED_RCPT))
        c.cmd("MAIL FROM:<a@b.test>")
        assert c.cmd("DATA") == (503, text(R.NEED_RCPT))
        c.cmd("RCPT TO:<c@d.test>")
        assert c.cmd("DATA now") == (501, "5.5.4 Syntax: DATA")
        assert c.cmd("DATA") == (354, "End data with <CR><LF>.<CR><LF>")
        assert c.cmd(".") == (250, "OK")  # an empty message is a message (hook text as given)


def test_message_too_large_is_refused_and_session_goes_on() -> None:
    recorder = Recorder()
    with running(recorder, data_size_limit=1000) as server, connected(server) as c:
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<a@b.test>")
        c.cmd("RCPT TO:<c@d.test>")
        c.cmd("DATA")
        c.send(("x" * 80 + "\r\n") * 200)
        assert c.cmd(".") == (552, text(R.DATA_TOO_LARGE))
        assert c.cmd("RCPT TO:<c@d.test>")[0] == 503  # the transaction is over
        assert c.cmd("NOOP")[0] == 250
    assert recorder.envelopes == []


def test_data_line_too_long() -> None:
    with running() as server, connected(server) as c:
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<a@b.test>")
        c.cmd("RCPT TO:<c@d.test>")
        c.cmd("DATA")
        c.send("x" * 1200 + "\r\n")
        assert c.cmd(".") == (500, text(R.DATA_LINE_TOO_LONG))


@pytest.mark.parametrize(
    ("policy", "code", "stored"),
    [
        ("reject", 550, None),
        ("normalize", 250, b"a\r\nb\r\nc\r\n"),
        ("accept", 250, b"a\nb\rc\r\n"),
    ],
)
def test_bare_newlines_in_content(policy: str, code: int, stored: bytes | None) -> None:
    recorder = Recorder()
    with running(recorder, bare_newline=policy) as server, connected(server) as c:
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<a@b.test>")
        c.cmd("RCPT TO:<c@d.test>")
        c.cmd("DATA")
        c.send(b"a\nb\rc\r\n")
        assert c.cmd(".")[0] == code
        assert c.cmd("NOOP")[0] == 250
    assert [e.content for e in recorder.envelopes] == ([stored] if stored else [])


def test_decode_data() -> None:
    recorder = Recorder()
    with running(recorder, decode_data=True) as server, connected(server) as c:
        c.cmd("EHLO client.test")
        for body, code in ((b"caf\xc3\xa9\r\n", 250), (b"ascii only\r\n", 250)):
            c.cmd("MAIL FROM:<a@b.test>")
            c.cmd("RCPT TO:<c@d.test>")
            c.cmd("DATA")
            c.send(body)
            assert c.cmd(".")[0] == code
    assert [e.content for e in recorder.envelopes] == ["caf\u00e9\r\n", "ascii only\r\n"]
    assert recorder.envelopes[0].original_content == b"caf\xc3\xa9\r\n"


@pytest.mark.parametrize("handler", [None, Sink()], ids=["a DATA hook", "no hook"])
def test_decode_data_strict_ascii_without_smtputf8(handler: object) -> None:
    # Whether a hook takes the message or not, decode_data refuses what does not decode.
    options = {"decode_data": True, "enable_SMTPUTF8": False}
    with running(handler, **options) as server, connected(server) as c:
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<a@b.test>")
        c.cmd("RCPT TO:<c@d.test>")
        c.cmd("DATA")
        c.send(b"caf\xc3\xa9\r\n")
        assert c.cmd(".") == (500, text(R.DECODE_ERROR))


# --- BDAT -----------------------------------------------------------------------------------------


def test_bdat_chunks() -> None:
    recorder = Recorder()
    with running(recorder) as server, connected(server) as c:
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<a@b.test>")
        c.cmd("RCPT TO:<c@d.test>")
        c.send(b"BDAT 9\r\nSubject: ")
        assert c.reply() == (250, "2.0.0 9 octets received")
        c.send(b"BDAT 14 LAST\r\nx\r\n\r\n.\r\nbody\r\n")
        assert c.reply() == (250, "OK")
        c.cmd("MAIL FROM:<a@b.test>")
        c.cmd("RCPT TO:<c@d.test>")
        assert c.cmd("BDAT 0 LAST") == (250, "OK")
    assert [e.content for e in recorder.envelopes] == [b"Subject: x\r\n\r\n.\r\nbody\r\n", b""]


def test_bdat_refusals_still_read_the_chunk() -> None:
    with running(data_size_limit=10) as server, connected(server) as c:
        c.cmd("EHLO client.test")
        c.send(b"BDAT 5\r\nNOOP\n")
        assert c.reply() == (503, text(R.NEED_RCPT))  # not "NOOP" answered: the chunk was read
        c.cmd("MAIL FROM:<a@b.test>")
        c.cmd("RCPT TO:<c@d.test>")
        assert c.cmd("DATA")[0] == 354
        assert c.cmd(".")[0] == 250
        c.cmd("MAIL FROM:<a@b.test>")
        c.cmd("RCPT TO:<c@d.test>")
        c.send(b"BDAT 20 LAST\r\n" + b"y" * 20)
        assert c.reply() == (552, text(R.DATA_TOO_LARGE))
        c.cmd("MAIL FROM:<a@b.test>")
        c.cmd("RCPT TO:<c@d.test>")
        c.send(b"BDAT 3\r\nabc")
        c.reply()
        assert c.cmd("DATA") == (503, text(R.BDAT_AFTER_DATA))
        assert c.cmd("RSET")[0] == 250


def test_malformed_bdat_closes() -> None:
    with running() as server, connected(server) as c:
        c.cmd("EHLO client.test")
        assert c.cmd("BDAT lots") == (501, text(R.BDAT_BAD_SIZE))
        assert c.is_closed()


# --- pipelining -----------------------------------------------------------------------------------


DIALOG = (
    b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n"
    b"RCPT TO:<bad>\r\nDATA\r\nSubject: p\r\n\r\nhello\r\n.\r\nNOOP\r\nQUIT\r\n"
)
EXPECTED = [250, 250, 250, 553, 354, 250, 250, 221]


def test_pipelined_dialog_in_one_write() -> None:
    recorder = Recorder()
    with running(recorder) as server, connected(server) as c:
        c.send(DIALOG)
        assert [code for code, _ in c.replies(len(EXPECTED))] == EXPECTED
        assert c.is_closed()
    assert [e.content for e in recorder.envelopes] == [b"Subject: p\r\n\r\nhello\r\n"]


def test_pipelined_dialog_byte_by_byte() -> None:
    recorder = Recorder()
    with running(recorder) as server, connected(server) as c:
        for i in range(len(DIALOG)):
            c.send(DIALOG[i : i + 1])
        assert [code for code, _ in c.replies(len(EXPECTED))] == EXPECTED
    assert len(recorder.envelopes) == 1


async def test_aiosmtplib_client() -> None:
    recorder = Recorder()
    with running(recorder) as server:
        async with aiosmtplib.SMTP(hostname=server.hostname, port=server.port) as client:
            errors, response = await client.sendmail(
                "a@b.test", ["c@d.test"], "Subject: async\r\n\r\nhi\r\n"
            )
            assert errors == {}
            assert response.startswith("2.0.0") or response == "OK"
            assert (await client.vrfy("someone@b.test")).code == 252
    assert recorder.envelopes[0].content == b"Subject: async\r\n\r\nhi\r\n"


test_aiosmtplib_client = pytest.mark.asyncio(test_aiosmtplib_client)


# --- hooks ----------------------------------------------------------------------------------------


class Recording:
    """Hooks that record addresses themselves (aiosmtpd style) or not."""

    def __init__(self, *, record: bool) -> None:
        self.record = record

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.startswith("bad"):
            return "550 5.7.1 sender refused"
        if self.record:
            envelope.mail_from = address
            envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.startswith("bad"):
            return "550 5.1.1 no such user"
        if self.record:
            envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return f"250 {envelope.mail_from} {','.join(envelope.rcpt_tos)}"


@pytest.mark.parametrize("record", [True, False])
def test_hooks_record_addresses_once(record: bool) -> None:
    with running(Recording(record=record)) as server, connected(server) as c:
        c.cmd("EHLO client.test")
        assert c.cmd("MAIL FROM:<bad@x.test>")[0] == 550
        assert c.cmd("RCPT TO:<c@d.test>")[0] == 503  # a refused MAIL opened nothing
        assert c.cmd("MAIL FROM:<a@b.test>")[0] == 250
        assert c.cmd("RCPT TO:<bad@d.test>")[0] == 550
        assert c.cmd("RCPT TO:<c@d.test>")[0] == 250
        assert c.cmd("RCPT TO:<e@d.test>")[0] == 250
        c.cmd("DATA")
        assert c.cmd(".") == (250, "a@b.test c@d.test,e@d.test")


class Faulty:
    def __init__(self, mode: str) -> None:
        self.mode = mode

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str
    ) -> Any:
        if self.mode == "raise":
            raise RuntimeError("secret internal detail")
        if self.mode == "none":
            return None
        return "250 fine\r\n250 injected"


@pytest.mark.parametrize("mode", ["raise", "none", "injection"])
def test_faulty_hooks_get_451_without_details(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    with running(Faulty(mode)) as server, connected(server) as c:
        c.cmd("EHLO client.test")
        code, message = c.cmd("NOOP")
        assert (code, message) == (451, text(R.INTERNAL_ERROR))
        assert "secret" not in message
        assert c.cmd("RSET")[0] == 250  # and the session goes on


class ExceptionHandler:
    def __init__(self, result: Any) -> None:
        self.result = result
        self.seen: list[Exception] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raise ValueError("boom")

    async def handle_exception(self, error: Exception) -> Any:
        self.seen.append(error)
        return self.result


@pytest.mark.parametrize(("result", "expected"), [("542 5.3.0 Internal", 542), (None, 451)])
def test_handle_exception(result: Any, expected: int) -> None:
    handler = ExceptionHandler(result)
    with running(handler) as server, smtplib.SMTP(server.hostname, server.port) as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail("a@b.test", ["c@d.test"], "x\r\n")
        assert info.value.smtp_code == expected
        assert client.noop()[0] == 250
    assert isinstance(handler.seen[0], ValueError)


class PingServer(SMTP):
    @syntax("PING [ignored]")
    async def smtp_PING(self, arg: str | None) -> None:
        await self.push("259 Pong")


def test_custom_command_and_help() -> None:
    with (
        running(server_class=PingServer) as server,
        smtplib.SMTP(server.hostname, server.port) as c,
    ):
        assert c.docmd("PING") == (259, b"Pong")
        assert b"PING" in c.docmd("HELP")[1]
        assert c.docmd("HELP PING") == (250, b"Syntax: PING [ignored]")


def test_sync_custom_command_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="smtp_PONG must be a coroutine function"):

        class Broken(SMTP):
            def smtp_PONG(self, arg: str | None) -> None:  # type: ignore[override]
                pass


def test_push_refuses_line_breaks() -> None:
    server = SMTP(Recorder())

    with pytest.raises(ValueError, match="CR or LF"):
        asyncio.run(server.push("250 a\r\n250 b"))


# --- timeouts -------------------------------------------------------------------------------------


def test_idle_timeout_sends_421() -> None:
    with running(timeout=0.3) as server, connected(server) as c:
        assert c.reply() == (421, "Error: timeout exceeded")
        assert c.is_closed()


def test_slow_but_steady_data_is_not_cut() -> None:
    recorder = Recorder()
    with running(recorder, timeout=0.4) as server, connected(server) as c:
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<a@b.test>")
        c.cmd("RCPT TO:<c@d.test>")
        c.cmd("DATA")
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:  # longer than the idle timeout, progress all along
            c.send(b"line\r\n")
            time.sleep(0.1)
        assert c.cmd(".")[0] == 250
    assert recorder.envelopes[0].content.startswith(b"line\r\n")  # type: ignore[union-attr]


def test_data_deadline() -> None:
    with running(timeout=5, data_timeout=0.5) as server, connected(server) as c:
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<a@b.test>")
        c.cmd("RCPT TO:<c@d.test>")
        c.cmd("DATA")
        for _ in range(3):  # steady progress, yet the whole transfer has a deadline
            c.send(b"x")
            time.sleep(0.1)
        assert c.reply() == (421, "4.4.2 Error: timeout exceeded")
        assert c.is_closed()


def test_logging_masks_auth(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="mail.log")
    with running(auth_require_tls=False) as server, connected(server) as c:
        c.cmd("EHLO client.test")
        c.cmd("AUTH PLAIN AHVzZXIAc2VjcmV0cGFzcw==")
    assert "AHVzZXIAc2VjcmV0cGFzcw" not in caplog.text


class Hanging:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await asyncio.sleep(3600)
        return "250 OK"  # pragma: no cover - never reached


def test_a_hook_that_hangs_is_cut_off(caplog: pytest.LogCaptureFixture) -> None:
    with running(Hanging(), timeout=0.5) as server, connected(server) as c:
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<a@b.test>")
        c.cmd("RCPT TO:<c@d.test>")
        c.cmd("DATA")
        assert c.cmd(".") == (421, "4.4.2 Error: timeout exceeded")
        assert c.is_closed()
    assert "did not answer" in caplog.text
