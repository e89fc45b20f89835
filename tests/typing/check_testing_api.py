"""The public API of ``typed_smtpd.testing``, as a user's code meets it.

Checked by ``mypy --strict`` (see ``[tool.mypy] files``), never run: each ``assert_type`` pins a
type users rely on, and each ``# type: ignore[code]`` is a negative test that
``warn_unused_ignores`` turns into a failure if the mistake stops being caught.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage

from typing_extensions import assert_type

from typed_smtpd.lmtp import LMTP
from typed_smtpd.session import Envelope, Session
from typed_smtpd.smtp import SMTP
from typed_smtpd.testing import (
    AcceptAndDrop,
    ClientReply,
    Delay,
    FakeClient,
    FakeSMTPServer,
    FaultEvent,
    FaultInjector,
    Greylist,
    Nth,
    Probability,
    ReceivedMessage,
    RecordingHandler,
    Respond,
    Rule,
    SMTPTestClient,
    SocketClient,
    SocketpairSMTPServer,
    Stage,
    TranscriptEntry,
    check_server,
    parse_rule,
)
from typed_smtpd.testing.handlers import Action, Selector
from typed_smtpd.testing.server import LocalSMTPServer, ServerOptions


class Handler:
    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        return "250 OK"


async def fake_dialog() -> None:
    async with FakeSMTPServer(Handler(), hostname="fake.test", data_size_limit=1000) as server:
        client = server.client()
        assert_type(client, FakeClient)
        reply = await client.ehlo("client.test")
        assert_type(reply, ClientReply)
        assert_type(reply.code, int)
        assert_type(reply.enhanced, str | None)
        assert_type(reply.lines, tuple[str, ...])
        assert_type(reply.ok, bool)
        assert_type(reply.keywords, frozenset[str])
        assert_type(await client.mail("a@client.test", "SIZE=10"), ClientReply)
        assert_type(await client.rcpt("b@server.test"), ClientReply)
        assert_type(await client.data(b"Subject: x\r\n\r\ny\r\n"), ClientReply)
        assert_type(await client.bdat(b"chunk", last=True), ClientReply)
        assert_type(await client.pipeline("NOOP", "RSET"), tuple[ClientReply, ...])
        assert_type(await client.lmtp_data("text"), tuple[ClientReply, ...])
        assert_type(await client.auth("PLAIN", "user", b"password"), ClientReply)
        assert_type(await client.starttls(ssl.create_default_context()), ClientReply)
        assert_type(client.protocol, SMTP)
        client.send_bytes(b"NOOP\r\n")
        assert_type(await client.read_reply(), ClientReply)
        assert_type(await client.read_until_closed(), bytes)
        await client.mail(42)  # type: ignore[arg-type]
        client.send_bytes("NOOP\r\n")  # type: ignore[arg-type]

        messages = server.messages
        assert_type(messages, list[ReceivedMessage])
        first = messages[0]
        assert_type(first.message, EmailMessage)
        assert_type(first.rcpt_tos, tuple[str, ...])
        assert_type(first.content, bytes)
        assert_type(first.tls, bool)
        first.mail_from = "changed"  # type: ignore[misc]
        assert_type(await server.wait_for_messages(1, timeout=1.0), list[ReceivedMessage])
        assert_type(server.transcript, list[TranscriptEntry])
        assert_type(await server.connect(), FakeClient)

    async with FakeSMTPServer(server_class=LMTP) as lmtp_server:
        assert_type(lmtp_server.client(), FakeClient)


async def conformance() -> None:
    assert_type(await check_server(host="127.0.0.1", port=8025), list[str])

    async def connect() -> SMTPTestClient:
        return await SocketClient.open("127.0.0.1", 8025)

    assert_type(await check_server(connect, lmtp=False), list[str])
    await check_server(connect, port="25")  # type: ignore[arg-type]


def faults() -> None:
    injector = FaultInjector(
        [
            Rule(Stage.RCPT, Respond(550, "5.1.1 No"), pattern="*@gone.test"),
            Rule(Stage.END_OF_DATA, AcceptAndDrop(), Probability(0.5)),
            Rule(Stage.MAIL, Greylist(2), Nth(1)),
            "data/2=drop",
        ],
        handler=Handler(),
        seed=3,
    )
    action: Action = Delay(0.5)
    selector: Selector = Nth(2)
    assert_type(parse_rule("rcpt=550"), Rule)
    assert_type(injector.plan(Stage.MAIL, "a@b"), list[Action])
    assert_type(injector.events, list[FaultEvent])
    Rule(Stage.RCPT, "550 no")  # type: ignore[arg-type]
    Rule("rcpt", Respond(550))  # type: ignore[arg-type]
    del action, selector


def recording() -> None:
    recorder = RecordingHandler(Handler())
    assert_type(recorder.messages, list[ReceivedMessage])
    assert_type(recorder.wait_for_messages(1, 2.0), list[ReceivedMessage])


def synchronous() -> None:
    with SocketpairSMTPServer(Handler()) as server:
        assert_type(server.smtp(), smtplib.SMTP)
        assert_type(server.wait_for_messages(1), list[ReceivedMessage])
    with LocalSMTPServer(ServerOptions(tls="starttls", auth=("user", "pw"))) as local:
        assert_type(local.port, int)
        assert_type(local.hostname, str)
        assert_type(local.messages, list[ReceivedMessage])
        assert_type(local.smtp(), smtplib.SMTP)
        assert_type(local.client_tls_context(), ssl.SSLContext | None)
    ServerOptions(tls="sometimes")  # type: ignore[arg-type]


def a_user_test(smtpd: LocalSMTPServer) -> None:
    with smtplib.SMTP(smtpd.hostname, smtpd.port) as client:
        client.sendmail("a@client.test", ["b@server.test"], b"Subject: x\r\n\r\ny\r\n")
    assert smtpd.wait_for_messages(1)[0].message["Subject"] == "x"
