"""The shipped conformance suite passes against the fake and against real socket servers, and
reports what a non-conforming server gets wrong."""

from __future__ import annotations

import ssl

import pytest

from typed_smtpd.controller import Controller, serve
from typed_smtpd.lmtp import LMTP
from typed_smtpd.session import Envelope, Session
from typed_smtpd.smtp import SMTP
from typed_smtpd.testing import (
    CHECKS,
    ConformanceError,
    FakeSMTPServer,
    RecordingHandler,
    SMTPTestClient,
    check_server,
)
from typed_smtpd.testing.client import SocketClient
from typed_smtpd.testing.conformance import SMUGGLING_SEQUENCES
from typed_smtpd.testing.server import LocalSMTPServer, ServerOptions

ALL = [check.name for check in CHECKS]


def test_check_names_are_unique_and_described() -> None:
    assert len(set(ALL)) == len(ALL)
    assert all(check.description for check in CHECKS)


def test_smuggling_sequences_match_the_strategies() -> None:
    strategies = pytest.importorskip("typed_smtpd.testing.strategies")
    assert strategies.SMUGGLING_SEQUENCES == SMUGGLING_SEQUENCES


@pytest.mark.asyncio
async def test_the_fake_conforms() -> None:
    async with FakeSMTPServer() as server:
        assert await check_server(server.connect, messages=lambda: server.messages) == ALL


@pytest.mark.asyncio
async def test_the_fake_lmtp_server_conforms() -> None:
    async with FakeSMTPServer(server_class=LMTP) as server:
        passed = await check_server(server.connect, messages=lambda: server.messages, lmtp=True)
        assert passed == ALL


@pytest.mark.asyncio
async def test_a_real_threaded_server_conforms() -> None:
    recorder = RecordingHandler()
    with Controller(recorder, hostname="127.0.0.1", port=0) as controller:
        passed = await check_server(
            host="127.0.0.1", port=controller.port, messages=lambda: recorder.messages
        )
    assert passed == ALL


@pytest.mark.asyncio
async def test_a_real_loop_server_conforms_over_starttls() -> None:
    with LocalSMTPServer(ServerOptions(tls="starttls")) as local:
        context = local.client_tls_context()

        async def connect() -> SMTPTestClient:
            client = await SocketClient.open(local.hostname, local.port)
            await client.ehlo()
            assert (await client.starttls(context)).code == 220
            return client

        passed = await check_server(connect, messages=lambda: local.messages)
    assert passed == ALL


@pytest.mark.asyncio
async def test_serve_conforms_without_message_access() -> None:
    async with serve(None, hostname="127.0.0.1", port=0) as running:
        assert running.port is not None
        assert await check_server(host="127.0.0.1", port=running.port) == ALL


@pytest.mark.asyncio
async def test_implicit_tls_fake_conforms(tmp_path: object) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    async with FakeSMTPServer(implicit_tls_context=server_context) as server:
        assert await check_server(server.connect, messages=lambda: server.messages) == ALL


class Grumpy:
    """Refuses every recipient: most checks cannot get a message through."""

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        return "550 5.7.1 No"


class Quiet(SMTP):
    """Advertises nothing beyond the bare minimum, and answers VRFY with 502."""

    async def smtp_EHLO(self, hostname: str | None) -> None:
        assert self.session is not None
        self.session.host_name = hostname
        self.session.extended_smtp = True
        await self.push("250 quiet.test")

    async def smtp_VRFY(self, arg: str | None) -> None:
        await self.push("502 5.5.1 Not here")


@pytest.mark.asyncio
async def test_failures_are_listed_with_their_transcripts() -> None:
    async with FakeSMTPServer(Grumpy()) as server:
        with pytest.raises(ConformanceError) as failed:
            await check_server(server.connect)
    failures = failed.value.failures
    assert {"null-reverse-path", "dot-stuffing", "bdat", "rset", "helo"} <= set(failures)
    assert "greeting" not in failures
    assert "550 5.7.1 No" in failures["rset"]
    assert "C: RCPT TO:<recipient@server.test>" in failures["rset"]
    assert "conformance check(s) failed" in str(failed.value)


@pytest.mark.asyncio
async def test_missing_extensions_and_vrfy_are_reported() -> None:
    async with FakeSMTPServer(server_class=Quiet) as server:
        with pytest.raises(ConformanceError) as failed:
            await check_server(server.connect, checks=[c for c in CHECKS if c.name != "bdat"])
    failures = failed.value.failures
    assert "PIPELINING" in failures["ehlo-extensions"]
    assert "VRFY: expected 250 or 251 or 252, got 502" in failures["vrfy"]


@pytest.mark.asyncio
async def test_check_server_needs_a_target() -> None:
    with pytest.raises(ValueError, match="host and port"):
        await check_server()


@pytest.mark.asyncio
async def test_a_real_implicit_tls_server_with_auth_conforms() -> None:
    with LocalSMTPServer(ServerOptions(tls="implicit", auth=("user", "pw"))) as local:
        client = await local.connect()
        try:
            assert client.tls
            await client.ehlo()
            assert (await client.auth("PLAIN", "user", "pw")).code == 235
        finally:
            client.close()
        assert await check_server(local.connect, messages=lambda: local.messages) == ALL
