"""The fault injector at every stage, whichever way the server is run, and the drop in the middle
of an upload.

Served by the server class of ``FaultInjector.server_class_for()`` (the fakes, the fixtures, the
interception and the command line use it by themselves) every stage works; served by a plain
``SMTP`` (a plain ``Controller`` or ``serve()``), an injector with rules for the stages only that
class serves refuses the client with a ``421`` saying so, rather than letting a retry test pass
without a fault.
"""

from __future__ import annotations

import asyncio
import smtplib

import pytest

from typed_smtpd.controller import Controller, serve
from typed_smtpd.smtp import SMTP
from typed_smtpd.testing import (
    Drop,
    DropAfter,
    FakeSMTPServer,
    FaultInjector,
    Nth,
    Rule,
    ServerDisconnected,
    Stage,
    parse_rule,
)
from typed_smtpd.testing.handlers import HOOK_STAGES

MESSAGE = (
    b"From: a@client.test\r\nTo: b@server.test\r\nSubject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 50
)
SERVER_CLASS_STAGES = sorted(set(Stage) - HOOK_STAGES, key=lambda stage: stage.value)


def test_drop_after_is_parsed_and_checked() -> None:
    assert parse_rule("data=drop-after:1000") == Rule(Stage.DATA, DropAfter(1000))
    assert parse_rule("bdat/2=drop-after:0").action == DropAfter(0)
    with pytest.raises(ValueError, match="data and bdat stages only"):
        parse_rule("rcpt=drop-after:10")
    with pytest.raises(ValueError, match=">= 0"):
        DropAfter(-1)
    with pytest.raises(ValueError, match="bad action"):
        parse_rule("data=drop-after:lots")


@pytest.mark.parametrize("stage", SERVER_CLASS_STAGES, ids=lambda stage: stage.value)
def test_an_injector_knows_when_it_needs_its_server_class(stage: Stage) -> None:
    assert FaultInjector([Rule(stage, Drop())]).needs_server_class
    assert not FaultInjector(["rcpt=550", "eod/2=451", "mail=delay:0"]).needs_server_class


# --- a plain controller ---------------------------------------------------------------------------


def test_a_plain_controller_serves_every_stage() -> None:
    injector = FaultInjector(["data/1=drop"])
    with Controller(injector, hostname="127.0.0.1", port=0) as controller:
        client = smtplib.SMTP("127.0.0.1", controller.port, timeout=5)
        try:
            client.ehlo()
            with pytest.raises(smtplib.SMTPServerDisconnected):
                client.sendmail("a@client.test", ["b@server.test"], MESSAGE)
        finally:
            client.close()
    assert injector.events


def test_a_plain_controller_serves_hook_stage_rules() -> None:
    injector = FaultInjector(["rcpt~*@gone.test=550 5.1.1 No such user", "eod/1=451 4.3.0 Later"])
    with (
        Controller(injector, hostname="127.0.0.1", port=0) as controller,
        smtplib.SMTP("127.0.0.1", controller.port, timeout=5) as client,
    ):
        client.ehlo()
        client.mail("a@client.test")
        assert client.rcpt("x@gone.test")[0] == 550
        assert client.rcpt("b@server.test")[0] == 250
        assert client.data(MESSAGE)[0] == 451
    assert [event.stage for event in injector.events] == [Stage.RCPT, Stage.END_OF_DATA]


@pytest.mark.asyncio
async def test_serve_with_the_injectors_server_class_drops_mid_upload() -> None:
    injector = FaultInjector(["data/1=drop-after:100"])
    server_class = injector.server_class_for(SMTP)
    async with serve(injector, hostname="127.0.0.1", port=0, server_class=server_class) as server:

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=5) as client:
                client.sendmail("a@client.test", ["b@server.test"], MESSAGE)

        with pytest.raises(smtplib.SMTPServerDisconnected):
            await asyncio.to_thread(send)
        await asyncio.to_thread(send)  # the retry goes through
    assert [event.stage for event in injector.events] == [Stage.DATA]


@pytest.mark.asyncio
async def test_serve_serves_every_stage() -> None:
    async with serve(
        FaultInjector(["auth=535"]), hostname="127.0.0.1", port=0, auth_require_tls=False
    ) as server:

        def auth() -> int:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=5) as client:
                client.ehlo()
                return client.docmd("AUTH", "PLAIN AGFubmUAcGFzcw==")[0]

        assert await asyncio.to_thread(auth) == 535


# --- the drop in the middle of an upload ----------------------------------------------------------


@pytest.mark.asyncio
async def test_data_drops_after_the_given_octets() -> None:
    injector = FaultInjector(["data/1=drop-after:200"])
    async with FakeSMTPServer(injector) as server:
        client = server.client()
        await client.ehlo()
        await client.mail("a@client.test")
        await client.rcpt("b@server.test")
        with pytest.raises(ServerDisconnected):
            await client.data(MESSAGE)
        assert server.messages == []
        retry = server.client()
        await retry.ehlo()
        await retry.mail("a@client.test")
        await retry.rcpt("b@server.test")
        assert (await retry.data(MESSAGE)).code == 250
        assert len(server.messages) == 1


@pytest.mark.asyncio
async def test_a_message_shorter_than_the_mark_gets_through() -> None:
    async with FakeSMTPServer(FaultInjector(["data=drop-after:100000"])) as server:
        client = server.client()
        await client.ehlo()
        await client.mail("a@client.test")
        await client.rcpt("b@server.test")
        assert (await client.data(MESSAGE)).code == 250


@pytest.mark.asyncio
async def test_bdat_drops_across_chunks() -> None:
    injector = FaultInjector([Rule(Stage.BDAT, DropAfter(1500), when=Nth(1))])
    async with FakeSMTPServer(injector) as server:
        client = server.client()
        await client.ehlo()
        await client.mail("a@client.test")
        await client.rcpt("b@server.test")
        assert (await client.bdat(b"y" * 1000)).code == 250
        with pytest.raises(ServerDisconnected):
            await client.bdat(b"z" * 1000, last=True)
        assert server.messages == []


@pytest.mark.asyncio
async def test_drop_after_nothing_drops_at_once() -> None:
    async with FakeSMTPServer(FaultInjector(["data=drop-after:0"])) as server:
        client = server.client()
        await client.ehlo()
        await client.mail("a@client.test")
        await client.rcpt("b@server.test")
        with pytest.raises(ServerDisconnected):
            await client.data(MESSAGE)
