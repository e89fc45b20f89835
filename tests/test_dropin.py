"""Behaviour aiosmtpd users rely on when they switch: the older EHLO hook, a greeting a hook
declares failed, long local parts, MAIL/RCPT without a path, mechanism names in any case, HELP
under ``require_starttls``, and LMTP's HELP."""

from __future__ import annotations

import ssl
from typing import Any

import pytest

from typed_smtpd.hooks import HookRegistry, auth_mechanism, mechanism_name
from typed_smtpd.lmtp import LMTP
from typed_smtpd.proto import replies as R
from typed_smtpd.proto.commands import parse_path
from typed_smtpd.session import AuthResult, Envelope, LoginPassword, Session
from typed_smtpd.smtp import SMTP
from typed_smtpd.testing import FakeSMTPServer

LONG_LOCAL = "a" * 65
MAIL_USAGE = "Syntax: MAIL FROM: <address>"
RCPT_USAGE = "Syntax: RCPT TO: <address>"


def accept_all(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: object
) -> AuthResult:
    return AuthResult(success=isinstance(data, LoginPassword))


def server_context() -> ssl.SSLContext:
    """A server context STARTTLS is offered with (no handshake happens in these tests)."""
    return ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)


# --- 1. the four-argument handle_EHLO -----------------------------------------------------------


class LegacyEhlo:
    """The older handle_EHLO: pushes a line of its own, returns the last line."""

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        session.host_name = hostname
        await server.push("250-X-EXTRA")
        return "250 HELP"


OPTIONS: dict[str, Any] = {
    "tls_context": server_context(),
    "authenticator": accept_all,
    "auth_require_tls": False,
}


@pytest.mark.asyncio
@pytest.mark.filterwarnings("ignore:.*4-argument:DeprecationWarning")
async def test_four_argument_ehlo_keeps_the_servers_lines() -> None:
    async with FakeSMTPServer(**OPTIONS) as plain:
        expected = (await plain.client().ehlo()).lines
    assert {"AUTH", "STARTTLS", "SIZE", "8BITMIME"} <= {line.split()[0] for line in expected}
    async with FakeSMTPServer(LegacyEhlo(), **OPTIONS) as server:
        client = server.client()
        reply = await client.ehlo("client.test")
        assert reply.code == 250
        # The server's lines in order, then the hook's own, then its return value.
        assert reply.lines == (*expected[:-1], "X-EXTRA", "HELP")
        assert (await client.mail("a@client.test")).code == 250


# --- 2. a hook that leaves session.host_name false-y ---------------------------------------------


class Greeter:
    """HELO and EHLO hooks answering 250 that set ``session.host_name`` to the client's name
    (``name=True``), to ``name`` (another value), or leave it as it is (``name=...``)."""

    def __init__(self, name: object = True) -> None:
        self.name = name

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        self._record(session, hostname)
        return f"250 {server.hostname}"

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        self._record(session, hostname)
        return responses

    def _record(self, session: Session, hostname: str) -> None:
        if self.name is True:
            session.host_name = hostname
        elif self.name is None or isinstance(self.name, str):
            session.host_name = self.name


@pytest.mark.asyncio
@pytest.mark.parametrize("verb", ["HELO", "EHLO"])
@pytest.mark.parametrize("name", [..., None, ""], ids=["left-unset", "none", "empty"])
async def test_greeting_without_host_name_is_not_a_greeting(verb: str, name: object) -> None:
    async with FakeSMTPServer(Greeter(name)) as server:
        client = server.client()
        assert (await client.send(f"{verb} client.test")).code == 250
        assert (await client.mail("a@client.test")).matches(R.HELLO_FIRST)


@pytest.mark.asyncio
@pytest.mark.parametrize("verb", ["HELO", "EHLO"])
async def test_greeting_with_host_name_is_a_greeting(verb: str) -> None:
    async with FakeSMTPServer(Greeter()) as server:
        client = server.client()
        assert (await client.send(f"{verb} client.test")).code == 250
        assert (await client.mail("a@client.test")).code == 250


@pytest.mark.asyncio
async def test_a_failed_second_greeting_undoes_the_first() -> None:
    handler = Greeter()
    async with FakeSMTPServer(handler) as server:
        client = server.client()
        assert (await client.ehlo()).code == 250
        handler.name = None
        assert (await client.ehlo()).code == 250
        assert (await client.mail("a@client.test")).matches(R.HELLO_FIRST)
        handler.name = True
        assert (await client.helo()).code == 250
        assert (await client.mail("a@client.test")).code == 250


# --- 3. local parts over 64 octets ---------------------------------------------------------------


def test_parse_path_leaves_the_local_part_length_to_the_server() -> None:
    assert parse_path(f"<{LONG_LOCAL}@example.com>", allow_null=True) == f"{LONG_LOCAL}@example.com"


class Limited(SMTP):
    local_part_limit = 64


@pytest.mark.asyncio
async def test_local_part_limit_zero_means_no_limit() -> None:
    async with FakeSMTPServer() as server:
        client = server.client()
        await client.ehlo()
        assert (await client.mail(f"{LONG_LOCAL}@client.test")).code == 250
        assert (await client.rcpt(f"{'b' * 200}@server.test")).code == 250


@pytest.mark.asyncio
async def test_local_part_limit_is_applied_when_set() -> None:
    async with FakeSMTPServer(server_class=Limited) as server:
        client = server.client()
        await client.ehlo()
        assert (await client.mail(f"{LONG_LOCAL}@client.test")).matches(R.LOCAL_PART_TOO_LONG)
        assert (await client.mail(f"{'a' * 64}@client.test")).code == 250


# --- 4. MAIL and RCPT without a path -------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "command",
    ["MAIL FROM:", "MAIL FROM: ", "MAIL FROM:anne", "MAIL FROM:some words", "MAIL FROM:a@b.test"],
)
async def test_mail_without_a_path_is_a_syntax_error(command: str) -> None:
    async with FakeSMTPServer() as server:
        client = server.client()
        await client.ehlo()
        reply = await client.send(command)
        assert (reply.code, reply.enhanced) == (501, "5.5.4")
        assert reply.text == f"{MAIL_USAGE} [SP <mail-parameters>]"
        await client.helo()
        reply = await client.send(command)
        assert (reply.code, reply.text) == (501, MAIL_USAGE)  # as aiosmtpd words it after HELO


@pytest.mark.asyncio
@pytest.mark.parametrize("command", ["RCPT TO:", "RCPT TO:postmaster", "RCPT TO:two words"])
async def test_rcpt_without_a_path_is_a_syntax_error(command: str) -> None:
    async with FakeSMTPServer() as server:
        client = server.client()
        await client.ehlo()
        await client.mail("a@client.test")
        reply = await client.send(command)
        assert (reply.code, reply.text) == (501, f"{RCPT_USAGE} [SP <rcpt-parameters>]")


@pytest.mark.asyncio
@pytest.mark.parametrize("command", ["MAIL FROM:<a@@b>", "MAIL FROM:<two words>", "MAIL FROM:<"])
async def test_a_bracketed_bad_path_is_still_553(command: str) -> None:
    async with FakeSMTPServer() as server:
        client = server.client()
        await client.ehlo()
        assert (await client.send(command)).matches(R.MALFORMED_ADDRESS)


# --- 5. AUTH mechanism names in any case ---------------------------------------------------------


class DashedMechanisms:
    @auth_mechanism("with-dash")
    async def auth_DASH(self, server: SMTP, args: list[str]) -> AuthResult:
        return AuthResult(success=True)

    @auth_mechanism("x_Token2")
    async def auth_TOKEN(self, server: SMTP, args: list[str]) -> AuthResult:
        return AuthResult(success=True)


def test_auth_mechanism_accepts_any_case_and_upper_cases() -> None:
    assert mechanism_name("auth_DASH", DashedMechanisms.auth_DASH) == "WITH-DASH"
    assert mechanism_name("auth_TOKEN", DashedMechanisms.auth_TOKEN) == "X_TOKEN2"
    assert set(HookRegistry(DashedMechanisms()).auth_mechanisms) == {"WITH-DASH", "X_TOKEN2"}
    for name in ("with space", "", "a/b", "é"):
        with pytest.raises(ValueError, match="mechanism"):
            auth_mechanism(name)


@pytest.mark.asyncio
async def test_a_lower_case_mechanism_is_offered_and_runs() -> None:
    async with FakeSMTPServer(DashedMechanisms(), auth_require_tls=False) as server:
        client = server.client()
        assert "AUTH" in (await client.ehlo()).keywords
        assert (await client.send("AUTH with-dash")).matches(R.AUTH_SUCCESS)


# --- 7. HELP before STARTTLS ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_help_needs_starttls_first() -> None:
    async with FakeSMTPServer(tls_context=server_context(), require_starttls=True) as server:
        client = server.client()
        assert (await client.help()).code == 530
        assert "STARTTLS" in (await client.ehlo()).keywords
        assert (await client.help("MAIL")).matches(R.STARTTLS_FIRST)
        assert (await client.noop()).code == 250


# --- 8. LMTP's HELP ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_lmtp_help_leaves_out_helo_and_ehlo() -> None:
    async with FakeSMTPServer(server_class=LMTP) as server:
        client = server.client()
        verbs = (await client.help()).text.split(":", 1)[1].split()
        assert "LHLO" in verbs and "MAIL" in verbs
        assert "HELO" not in verbs and "EHLO" not in verbs
        assert (await client.help("EHLO")).code == 501
    async with FakeSMTPServer() as server:
        verbs = (await server.client().help()).text.split(":", 1)[1].split()
        assert {"HELO", "EHLO"} <= set(verbs) and "LHLO" not in verbs
