"""Tests of RecordingHandler and FaultInjector: rules, the compact syntax, and every action as
smtplib and aiosmtplib see it over a real local socket."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage

import aiosmtplib
import pytest

from typed_smtpd.lmtp import LMTP
from typed_smtpd.main import build_parser
from typed_smtpd.session import Envelope, Session
from typed_smtpd.smtp import SMTP
from typed_smtpd.testing import (
    AcceptAndDrop,
    Always,
    Delay,
    Disconnect,
    Drop,
    FakeSMTPServer,
    FaultInjector,
    Greylist,
    Nth,
    Probability,
    RecordingHandler,
    Respond,
    Rule,
    Stage,
    Throttle,
    parse_rule,
)
from typed_smtpd.testing.handlers import FaultSMTP, server_class_for
from typed_smtpd.testing.server import LocalSMTPServer, ServerOptions

MESSAGE = b"From: a@client.test\r\nTo: b@server.test\r\nSubject: hi\r\n\r\nHello.\r\n"
SLOW_CLIENT_TIMEOUT = 0.3  # far below the injected delays: the client must give up first


def email_message() -> EmailMessage:
    message = EmailMessage()
    message["From"] = "a@client.test"
    message["To"] = "b@server.test"
    message["Subject"] = "hi"
    message.set_content("Hello.")
    return message


@contextlib.contextmanager
def faulty(*rules: str, **options: object) -> Iterator[LocalSMTPServer]:
    with LocalSMTPServer(ServerOptions(handler=FaultInjector(rules)), **options) as server:
        yield server


async def aio_send(server: LocalSMTPServer, *, timeout: float = 5.0, **kwargs: object) -> None:
    await aiosmtplib.send(
        email_message(),
        hostname=server.hostname,
        port=server.port,
        timeout=timeout,
        start_tls=False,
        **kwargs,  # type: ignore[arg-type]
    )


# --- the compact syntax -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        (
            "rcpt~*@bad.test=550 5.1.1 No",
            Rule(Stage.RCPT, Respond(550, "5.1.1 No"), Always(), "*@bad.test"),
        ),
        ("MAIL/3=421", Rule(Stage.MAIL, Respond(421), Nth(3))),
        ("helo=drop", Rule(Stage.EHLO, Drop())),
        ("end-of-data/50%=accept-drop", Rule(Stage.END_OF_DATA, AcceptAndDrop(), Probability(0.5))),
        ("greeting=delay:1.5", Rule(Stage.GREETING, Delay(1.5))),
        ("connect=throttle:300", Rule(Stage.CONNECT, Throttle(300))),
        ("rcpt/0.25=greylist:2", Rule(Stage.RCPT, Greylist(2), Probability(0.25))),
        ("quit/always=disconnect", Rule(Stage.QUIT, Disconnect())),
        ("eod=disconnect:4.3.0 going", Rule(Stage.END_OF_DATA, Disconnect(text="4.3.0 going"))),
        ("bdat=blackhole", None),
    ],
)
def test_parse_rule(text: str, rule: Rule | None) -> None:
    if rule is None:
        with pytest.raises(ValueError, match="accept-drop applies"):
            parse_rule(text)
    else:
        assert parse_rule(text) == rule


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("rcpt", "STAGE"),
        ("nowhere=550", "unknown stage"),
        ("rcpt=hello", "unknown action"),
        ("rcpt=999 no", "out of range"),
        ("rcpt/0=550", "counts from 1"),
        ("rcpt/150%=550", "within"),
        ("data~x@y=550", "address pattern"),
        ("rcpt=delay:soon", "bad action"),
        ("connect=greylist", "not at connect"),
    ],
)
def test_parse_rule_errors(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_rule(text)


def test_actions_validate_themselves() -> None:
    with pytest.raises(ValueError, match="CR, LF"):
        Respond(550, "a\r\nb")
    with pytest.raises(ValueError, match="4xx or 5xx"):
        Disconnect(250)
    with pytest.raises(ValueError):
        Delay(-1)
    with pytest.raises(ValueError):
        Throttle(0)
    with pytest.raises(ValueError):
        Greylist(0)
    with pytest.raises(ValueError, match="4xx"):
        Greylist(code=550)
    assert Respond(421).line.startswith("421 4.3.2")
    assert Respond(550).line == "550 Refused"


def test_from_cli() -> None:
    parser = build_parser()
    injector = FaultInjector.from_cli(parser, "seed=7", "rcpt~*@bad.test=550 No")
    assert injector.seed == 7
    assert injector.rules == (Rule(Stage.RCPT, Respond(550, "No"), pattern="*@bad.test"),)
    with pytest.raises(SystemExit):
        FaultInjector.from_cli(parser, "rcpt=maybe")
    with pytest.raises(SystemExit):
        FaultInjector.from_cli(parser, "seed=x")


# --- deciding -----------------------------------------------------------------------------------


def test_selectors_and_greylisting_are_deterministic() -> None:
    def run(seed: int) -> list[bool]:
        injector = FaultInjector([Rule(Stage.MAIL, Respond(451), Probability(0.5))], seed=seed)
        return [bool(injector.plan(Stage.MAIL, "a@b")) for _ in range(64)]

    assert run(1) == run(1)
    assert run(1) != run(2)
    assert 0 < sum(run(1)) < 64

    nth = FaultInjector([Rule(Stage.RCPT, Drop(), Nth(3))])
    assert [bool(nth.plan(Stage.RCPT, "x@y")) for _ in range(5)] == [
        False,
        False,
        True,
        False,
        False,
    ]

    grey = FaultInjector([Rule(Stage.RCPT, Greylist(2))])
    assert [bool(grey.plan(Stage.RCPT, "a@x")) for _ in range(3)] == [True, True, False]
    assert bool(grey.plan(Stage.RCPT, "B@x"))  # another address is greylisted afresh
    grey.reset()
    assert grey.events == []
    assert bool(grey.plan(Stage.RCPT, "a@x"))


def test_modifiers_let_later_rules_decide() -> None:
    injector = FaultInjector(["mail=delay:0", "mail=throttle:10", "mail=550 no", "mail=drop"])
    plan = injector.plan(Stage.MAIL, "a@b")
    assert plan == [Delay(0), Throttle(10), Respond(550, "no")]
    assert [event.action for event in injector.events] == plan


def test_patterns_are_case_insensitive_globs() -> None:
    injector = FaultInjector(["rcpt~*@Bad.test=550"])
    assert injector.plan(Stage.RCPT, "X@BAD.TEST")
    assert not injector.plan(Stage.RCPT, "x@good.test")
    assert not injector.plan(Stage.MAIL, "x@bad.test")


def test_server_class_for() -> None:
    injector = FaultInjector()
    cls = injector.server_class_for(LMTP)
    assert isinstance(cls, type)
    assert issubclass(cls, FaultSMTP)
    assert issubclass(cls, LMTP)
    assert injector.server_class_for(LMTP) is cls
    assert server_class_for(RecordingHandler(injector), SMTP) is injector.server_class_for(SMTP)
    assert server_class_for(object(), SMTP) is SMTP

    def factory(handler: object, **kwargs: object) -> SMTP:
        return SMTP(handler)

    assert injector.server_class_for(factory) is factory


# --- over the fake ------------------------------------------------------------------------------


class Inner:
    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Inner OK"


@pytest.mark.asyncio
async def test_injector_defers_to_the_wrapped_handler() -> None:
    injector = FaultInjector(["rcpt~*@bad.test=550 5.1.1 No"], handler=Inner())
    async with FakeSMTPServer(injector) as server:
        client = server.client()
        await client.ehlo()
        await client.mail("a@c.test")
        assert str(await client.rcpt("x@bad.test")) == "550 5.1.1 No"
        assert str(await client.rcpt("x@good.test")) == "250 2.1.5 Inner OK"
        assert (await client.data(MESSAGE)).code == 250
        assert [m.rcpt_tos for m in server.messages] == [("x@good.test",)]
        assert injector.events[0].peer == ("127.0.0.1", 54321)


@pytest.mark.asyncio
async def test_bdat_and_data_command_faults_over_the_fake() -> None:
    injector = FaultInjector(["bdat/1=452 4.3.1 Full", "data/1=554 5.3.0 No data"])
    async with FakeSMTPServer(injector) as server:
        client = server.client()
        await client.ehlo()
        await client.mail("a@c.test")
        await client.rcpt("b@c.test")
        assert str(await client.bdat(b"chunk that is discarded")) == "452 4.3.1 Full"
        assert (await client.noop()).code == 250  # the chunk was not read as commands
        assert str(await client.send("DATA")) == "554 5.3.0 No data"
        assert (await client.data(MESSAGE)).code == 250


@pytest.mark.asyncio
async def test_throttle_slices_the_replies() -> None:
    async with FakeSMTPServer(FaultInjector(["ehlo=throttle:100"])) as server:
        client = server.client()
        await client.read_greeting()
        before = client.transport.writes
        reply = await client.ehlo()
        assert reply.code == 250
        # 10 bytes per slice: the EHLO reply (over 100 bytes) came in many writes.
        assert client.transport.writes - before > 10


@pytest.mark.asyncio
async def test_quit_and_rset_stage_faults_over_the_fake() -> None:
    async with FakeSMTPServer(FaultInjector(["rset=greylist", "quit=554 no"])) as server:
        client = server.client()
        await client.helo()
        assert (await client.rset()).code == 451
        assert (await client.rset()).code == 250
        assert str(await client.quit()) == "554 no"


@pytest.mark.asyncio
async def test_lmtp_with_injector_keeps_recipient_replies() -> None:
    async with FakeSMTPServer(FaultInjector(["rcpt/2=550 no"]), server_class=LMTP) as server:
        client = server.client()
        await client.lhlo()
        await client.mail("a@c.test")
        await client.rcpt("b@c.test")
        assert (await client.rcpt("c@c.test")).code == 550
        await client.rcpt("d@c.test")
        replies = await client.lmtp_data(MESSAGE)
        assert [r.text for r in replies] == ["<b@c.test> OK", "<d@c.test> OK"]


# --- every action, as smtplib and aiosmtplib see it ---------------------------------------------


@pytest.mark.asyncio
async def test_respond_is_seen_by_both_clients() -> None:
    with faulty("rcpt~*@bad.test=550 5.1.1 No such user") as server:
        with smtplib.SMTP(*server.address, timeout=5) as client:
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                client.sendmail("a@client.test", ["x@bad.test"], MESSAGE)
            assert refused.value.recipients == {"x@bad.test": (550, b"5.1.1 No such user")}
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as aio_refused:
            await aio_send(server, recipients=["y@bad.test"])
        assert aio_refused.value.recipients[0].code == 550
        assert server.messages == []


@pytest.mark.asyncio
async def test_disconnect_is_seen_by_both_clients() -> None:
    with faulty("mail=disconnect") as server:
        with smtplib.SMTP(*server.address, timeout=5) as client:
            with pytest.raises(smtplib.SMTPSenderRefused) as refused:
                client.sendmail("a@client.test", ["b@server.test"], MESSAGE)
            assert refused.value.smtp_code == 421
        with pytest.raises(aiosmtplib.SMTPResponseException) as aio_refused:
            await aio_send(server)
        assert aio_refused.value.code == 421


@pytest.mark.asyncio
async def test_drop_is_seen_by_both_clients() -> None:
    with faulty("eod=drop") as server:
        with (
            smtplib.SMTP(*server.address, timeout=5) as client,
            pytest.raises(smtplib.SMTPServerDisconnected),
        ):
            client.sendmail("a@client.test", ["b@server.test"], MESSAGE)
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await aio_send(server)
        assert server.messages == []


@pytest.mark.asyncio
async def test_connect_drop_is_seen_by_both_clients() -> None:
    with faulty("connect=drop") as server:
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtplib.SMTP(*server.address, timeout=5)
        with pytest.raises(aiosmtplib.SMTPConnectError, match="Unexpected EOF"):
            await aio_send(server)


@pytest.mark.asyncio
async def test_greeting_refusal_is_seen_by_both_clients() -> None:
    with faulty("greeting=554 5.3.2 No service") as server:
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP(*server.address, timeout=5)
        assert refused.value.smtp_code == 554
        with pytest.raises(aiosmtplib.SMTPConnectResponseError) as aio_refused:
            await aio_send(server)
        assert aio_refused.value.code == 554


@pytest.mark.asyncio
async def test_delay_is_seen_by_both_clients() -> None:
    with faulty("greeting/1=delay:30", "greeting/2=delay:30") as server:
        with pytest.raises((TimeoutError, smtplib.SMTPServerDisconnected)):
            smtplib.SMTP(*server.address, timeout=SLOW_CLIENT_TIMEOUT)
        with pytest.raises(aiosmtplib.SMTPTimeoutError):
            await aio_send(server, timeout=SLOW_CLIENT_TIMEOUT)
        # Later connections are not delayed, and a delay then lets the dialog go on.
        with smtplib.SMTP(*server.address, timeout=5) as client:
            assert client.sendmail("a@client.test", ["b@server.test"], MESSAGE) == {}
    with faulty("mail=delay:0.01") as server:
        await aio_send(server)
        assert len(server.wait_for_messages(1)) == 1


@pytest.mark.asyncio
async def test_throttle_is_seen_by_both_clients() -> None:
    with faulty("connect/1=throttle:2", "connect/2=throttle:2") as server:
        # One byte every half second: each read waits longer than these clients allow.
        with pytest.raises((TimeoutError, smtplib.SMTPServerDisconnected)):
            smtplib.SMTP(*server.address, timeout=SLOW_CLIENT_TIMEOUT)
        with pytest.raises(aiosmtplib.SMTPTimeoutError):
            await aio_send(server, timeout=SLOW_CLIENT_TIMEOUT)
    with faulty("connect=throttle:100000") as server:
        with smtplib.SMTP(*server.address, timeout=5) as client:
            assert client.sendmail("a@client.test", ["b@server.test"], MESSAGE) == {}
        await aio_send(server)
        assert len(server.wait_for_messages(2)) == 2


@pytest.mark.asyncio
async def test_accept_and_drop_is_seen_by_both_clients() -> None:
    injector = FaultInjector(["eod=accept-drop"])
    with LocalSMTPServer(ServerOptions(handler=injector)) as server:
        with smtplib.SMTP(*server.address, timeout=5) as client:
            assert client.sendmail("a@client.test", ["b@server.test"], MESSAGE) == {}
        await aio_send(server)  # no exception: the client believes it was delivered
        assert server.messages == []
        assert [event.action for event in injector.events] == [AcceptAndDrop(), AcceptAndDrop()]


@pytest.mark.asyncio
async def test_greylisting_is_seen_by_both_clients() -> None:
    with faulty("rcpt=greylist") as server:
        with smtplib.SMTP(*server.address, timeout=5) as client:
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                client.sendmail("a@client.test", ["b@server.test"], MESSAGE)
            assert refused.value.recipients["b@server.test"][0] == 451
            assert client.sendmail("a@client.test", ["b@server.test"], MESSAGE) == {}
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as aio_refused:
            await aio_send(server, recipients=["c@server.test"])
        assert aio_refused.value.recipients[0].code == 451
        await aio_send(server, recipients=["c@server.test"])
        assert [m.rcpt_tos for m in server.wait_for_messages(2)] == [
            ("b@server.test",),
            ("c@server.test",),
        ]


@pytest.mark.asyncio
async def test_data_refusal_is_seen_by_both_clients() -> None:
    with faulty("data=554 5.3.0 No data today") as server:
        with smtplib.SMTP(*server.address, timeout=5) as client:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail("a@client.test", ["b@server.test"], MESSAGE)
            assert refused.value.smtp_code == 554
        with pytest.raises(aiosmtplib.SMTPDataError) as aio_refused:
            await aio_send(server)
        assert aio_refused.value.code == 554


@pytest.mark.asyncio
async def test_starttls_refusal_is_seen_by_both_clients() -> None:
    with faulty("starttls=454 4.7.0 TLS not available", tls="starttls") as server:
        with smtplib.SMTP(*server.address, timeout=5) as client:
            client.ehlo()
            with pytest.raises(smtplib.SMTPResponseException) as refused:
                client.starttls(context=server.client_tls_context())
            assert refused.value.smtp_code == 454
        client_tls = server.client_tls_context()
        async with aiosmtplib.SMTP(
            hostname=server.hostname, port=server.port, timeout=5, start_tls=False
        ) as aio:
            with pytest.raises(aiosmtplib.SMTPResponseException) as aio_refused:
                await aio.starttls(tls_context=client_tls)
            assert aio_refused.value.code == 454


@pytest.mark.asyncio
async def test_auth_refusal_is_seen_by_both_clients() -> None:
    with faulty("auth=454 4.7.0 Temporary authentication failure", auth="user:pw") as server:
        with smtplib.SMTP(*server.address, timeout=5) as client:
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                client.login("user", "pw")
            assert refused.value.smtp_code == 454
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as aio_refused:
            await aio_send(server, username="user", password="pw")
        assert aio_refused.value.code == 454


# --- the command line ---------------------------------------------------------------------------


def test_fault_injector_from_the_command_line() -> None:
    """Code in any language can be tested against the CLI; here smtplib plays that role."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "typed_smtpd",
            "-n",
            "-l",
            "127.0.0.1:0",
            "-c",
            "typed_smtpd.testing.FaultInjector",
            "rcpt~*@bad.test=550 5.1.1 No such user",
            "rcpt~*@slow.test=greylist",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert found, line
        with smtplib.SMTP("127.0.0.1", int(found.group(1)), timeout=5) as client:
            refused = client.sendmail(
                "a@client.test", ["x@bad.test", "y@good.test", "z@slow.test"], MESSAGE
            )
            assert refused == {
                "x@bad.test": (550, b"5.1.1 No such user"),
                "z@slow.test": (451, b"4.7.1 Greylisted, please try again later"),
            }
            assert client.sendmail("a@client.test", ["z@slow.test"], MESSAGE) == {}
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=10)
    assert process.returncode == 0


def test_recording_handler_waits_across_threads() -> None:
    recorder = RecordingHandler()

    def send(server: LocalSMTPServer) -> None:
        with smtplib.SMTP(*server.address, timeout=5) as client:
            client.sendmail("a@client.test", ["b@server.test"], MESSAGE)

    async def wait_while_sending(server: LocalSMTPServer) -> list[object]:
        waiting = asyncio.ensure_future(recorder.await_messages(1, timeout=5))
        await asyncio.sleep(0)
        assert not waiting.done()
        await asyncio.to_thread(send, server)
        return list(await waiting)

    with LocalSMTPServer(ServerOptions(handler=recorder)) as server:
        messages = asyncio.run(wait_while_sending(server))
        assert len(messages) == 1
        assert len(server.messages) == 1  # the server's own recorder wraps this one
