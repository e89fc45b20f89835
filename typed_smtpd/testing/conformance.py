"""One conformance suite for SMTP servers: :func:`check_server`.

What lives here: the checks (:data:`CHECKS`, each a :class:`Check`) of what RFC 5321 and its
extensions (PIPELINING, ENHANCEDSTATUSCODES, CHUNKING) require of a server's replies and
sequencing, the smuggling sequences no server may take for the end of a message, and
:func:`check_server`, which runs the checks over fresh connections and raises
:class:`ConformanceError` listing every failure with its transcript.

The same function runs against the in-memory fake and against a real server on a socket::

    async with FakeSMTPServer(MyHandler()) as server:
        await check_server(server.connect, messages=lambda: server.messages)

    await check_server(host="127.0.0.1", port=controller.port)

What must not live here: a server, fixtures, imports of hypothesis or pytest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from typed_smtpd.testing.client import (
    ClientReply,
    ServerDisconnected,
    SMTPTestClient,
    SocketClient,
    format_transcript,
)
from typed_smtpd.testing.handlers import ReceivedMessage

__all__ = [
    "CHECKS",
    "SMUGGLING_SEQUENCES",
    "Check",
    "CheckContext",
    "ConformanceError",
    "check_server",
]

#: The malformed end-of-data sequences of the public SMTP smuggling scanners. RFC 5321 section
#: 4.1.1.4: only CRLF "." CRLF ends DATA, so none of these may end a message.
SMUGGLING_SEQUENCES: Final[tuple[bytes, ...]] = (
    b"\n.\n",
    b"\n.\r",
    b"\r.\n",
    b"\r.\r",
    b"\n.\r\n",
    b"\r.\r\n",
    b"\r\n.\n",
    b"\r\n.\r",
    b"\r\n\x00.\r\n",
    b"\r\n.\x00\r\n",
    b"\r\n.\r\r\n",
    b"\r\r\n.\r\r\n",
)

Connect = Callable[[], Awaitable[SMTPTestClient]]
Messages = Callable[[], Sequence[ReceivedMessage]]


class ConformanceError(AssertionError):
    """Some checks failed; :attr:`failures` maps each failed check's name to its explanation."""

    def __init__(self, failures: dict[str, str]) -> None:
        self.failures = failures
        parts = [f"{len(failures)} conformance check(s) failed:"]
        for name, why in failures.items():
            parts.append(f"\n=== {name} ===\n{why}")
        super().__init__("\n".join(parts))


@dataclass
class CheckContext:
    """What a check gets: how to connect, who to send as, and what the server stored."""

    connect: Connect
    sender: str
    recipient: str
    lmtp: bool
    messages: Messages | None
    clients: list[SMTPTestClient] = field(default_factory=list)

    async def open(self) -> SMTPTestClient:
        """A fresh connection, greeting read; closed by :func:`check_server` afterwards."""
        client = await self.connect()
        self.clients.append(client)
        await client.read_greeting()
        return client

    async def greeted(self) -> SMTPTestClient:
        """A fresh connection after a successful EHLO (LHLO for LMTP)."""
        client = await self.open()
        reply = await (client.lhlo() if self.lmtp else client.ehlo())
        expect(reply, 250, "EHLO")
        return client

    async def send_message(self, client: SMTPTestClient, content: bytes) -> ClientReply:
        """MAIL, RCPT, DATA with ``content``; the (first) final reply."""
        expect(await client.mail(self.sender), 250, "MAIL")
        expect(await client.rcpt(self.recipient), 250, "RCPT")
        if self.lmtp:
            return (await client.lmtp_data(content))[0]
        return await client.data(content)

    def stored(self) -> list[ReceivedMessage] | None:
        """The messages the server stored, when the caller said how to see them."""
        return None if self.messages is None else list(self.messages())


def expect(reply: ClientReply, code: int | tuple[int, ...], what: str) -> None:
    """Fail unless ``reply`` has the code (or one of the codes)."""
    codes = code if isinstance(code, tuple) else (code,)
    if reply.code not in codes:
        wanted = " or ".join(str(c) for c in codes)
        raise AssertionError(f"{what}: expected {wanted}, got {reply}")


@dataclass(frozen=True, slots=True)
class Check:
    """One conformance check: a name, what it checks (with the RFC), and the coroutine."""

    name: str
    description: str
    run: Callable[[CheckContext], Awaitable[None]]


# --- the checks ---------------------------------------------------------------------------------


async def _greeting(ctx: CheckContext) -> None:
    client = await ctx.open()
    expect(await client.read_greeting(), 220, "greeting")


async def _ehlo_extensions(ctx: CheckContext) -> None:
    client = await ctx.open()
    reply = await (client.lhlo() if ctx.lmtp else client.ehlo())
    expect(reply, 250, "EHLO")
    missing = {"PIPELINING", "ENHANCEDSTATUSCODES", "CHUNKING"} - reply.keywords
    if missing:
        raise AssertionError(f"EHLO does not advertise {', '.join(sorted(missing))}: {reply}")


async def _mail_before_ehlo(ctx: CheckContext) -> None:
    client = await ctx.open()
    expect(await client.mail(ctx.sender), 503, "MAIL before EHLO")


async def _rcpt_before_mail(ctx: CheckContext) -> None:
    client = await ctx.greeted()
    expect(await client.rcpt(ctx.recipient), 503, "RCPT before MAIL")


async def _data_before_rcpt(ctx: CheckContext) -> None:
    client = await ctx.greeted()
    expect(await client.send("DATA"), 503, "DATA before MAIL")
    expect(await client.mail(ctx.sender), 250, "MAIL")
    expect(await client.send("DATA"), 503, "DATA before RCPT")


async def _enhanced_codes(ctx: CheckContext) -> None:
    client = await ctx.greeted()
    reply = await client.mail(ctx.sender)
    expect(reply, 250, "MAIL")
    if reply.enhanced is None or not reply.enhanced.startswith("2."):
        raise AssertionError(f"a 250 after EHLO lacks its enhanced status code: {reply}")
    bad = await client.send("MAIL FROM:<" + ctx.sender + ">")
    if bad.enhanced is None or bad.enhanced[0] != str(bad.code)[0]:
        raise AssertionError(f"an error reply lacks a matching enhanced code: {bad}")


async def _null_reverse_path(ctx: CheckContext) -> None:
    client = await ctx.greeted()
    expect(await client.mail(""), 250, "MAIL FROM:<>")
    expect(await client.rcpt(ctx.recipient), 250, "RCPT after MAIL FROM:<>")
    expect(await client.data(b"Subject: bounce\r\n\r\nbounce\r\n"), 250, "DATA of a bounce")


async def _message_round_trip(ctx: CheckContext) -> None:
    client = await ctx.greeted()
    content = b"Subject: check\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nend\r\n"
    before = ctx.stored()
    expect(await ctx.send_message(client, content), 250, "end of DATA")
    after = ctx.stored()
    if before is None or after is None:
        return
    new = after[len(before) :]
    if len(new) != 1:
        raise AssertionError(f"one message sent, {len(new)} stored")
    if new[0].content != content:
        raise AssertionError(f"dot-stuffing broke the content: {new[0].content!r} != {content!r}")


async def _smuggling(ctx: CheckContext) -> None:
    client = await ctx.greeted()
    for sequence in SMUGGLING_SEQUENCES:
        before = ctx.stored()
        expect(await client.mail(ctx.sender), 250, "MAIL")
        expect(await client.rcpt(ctx.recipient), 250, "RCPT")
        expect(await client.send("DATA"), 354, "DATA")
        client.send_bytes(
            b"Subject: outer\r\n\r\nouter"
            + sequence
            + b"MAIL FROM:<smuggled@attacker.test>\r\nRCPT TO:<victim@server.test>\r\nDATA\r\n"
            + b"Subject: smuggled\r\n\r\nsmuggled\r\n.\r\n"
        )
        final = await client.read_reply()
        # A compliant server answers once for the whole payload (accepted or refused).
        probe = await client.noop()
        if probe.code != 250 or probe.text.startswith("smuggled"):
            raise AssertionError(
                f"after the end-of-data look-alike {sequence!r}, the next reply is {probe} "
                f"(final reply was {final}): a second transaction was run"
            )
        after = ctx.stored()
        if before is not None and after is not None and len(after) - len(before) > 1:
            raise AssertionError(f"{sequence!r} made the server store a second message")
        if after is not None and any(m.mail_from == "smuggled@attacker.test" for m in after):
            raise AssertionError(f"{sequence!r} smuggled a message from smuggled@attacker.test")
        if final.code == 250:
            continue
        expect(await client.rset(), 250, "RSET after a refused message")


async def _rset_clears(ctx: CheckContext) -> None:
    client = await ctx.greeted()
    expect(await client.mail(ctx.sender), 250, "MAIL")
    expect(await client.rcpt(ctx.recipient), 250, "RCPT")
    expect(await client.rset(), 250, "RSET")
    expect(await client.send("DATA"), 503, "DATA after RSET")
    expect(await client.rcpt(ctx.recipient), 503, "RCPT after RSET")
    expect(await client.mail(ctx.sender), 250, "MAIL after RSET")


async def _noop(ctx: CheckContext) -> None:
    client = await ctx.open()
    expect(await client.noop(), 250, "NOOP before EHLO")
    client = await ctx.greeted()
    expect(await client.noop("with an argument"), 250, "NOOP text")


async def _vrfy(ctx: CheckContext) -> None:
    client = await ctx.greeted()
    expect(await client.vrfy(ctx.recipient), (250, 251, 252), "VRFY")


async def _unknown_command(ctx: CheckContext) -> None:
    client = await ctx.greeted()
    expect(await client.send("XYZZY plugh"), (500, 502), "an unknown command")
    expect(await client.noop(), 250, "NOOP after an unknown command")


async def _long_line(ctx: CheckContext) -> None:
    client = await ctx.greeted()
    # RFC 5321 section 4.5.3.1.4: a command line is at most 512 octets with its CRLF.
    reply = await client.send("NOOP " + "x" * 2000)
    expect(reply, (500, 501), "a 2,005-octet command line")
    expect(await client.noop(), 250, "NOOP after an over-long line")


async def _quit(ctx: CheckContext) -> None:
    client = await ctx.greeted()
    expect(await client.quit(), 221, "QUIT")
    rest = await client.read_until_closed()
    if rest:
        raise AssertionError(f"the server sent {rest!r} after 221")


async def _bdat(ctx: CheckContext) -> None:
    client = await ctx.greeted()
    expect(await client.mail(ctx.sender), 250, "MAIL")
    expect(await client.rcpt(ctx.recipient), 250, "RCPT")
    before = ctx.stored()
    expect(await client.bdat(b"Subject: chunks\r\n\r\n"), 250, "BDAT")
    expect(await client.bdat(b".not stuffed\r\n"), 250, "BDAT")
    if ctx.lmtp:
        client.send_bytes(b"BDAT 6 LAST\r\nlast\r\n")
        replies = await client.read_replies(1)
        expect(replies[0], 250, "BDAT LAST")
    else:
        expect(await client.bdat(b"last\r\n", last=True), 250, "BDAT LAST")
    after = ctx.stored()
    if before is not None and after is not None:
        new = after[len(before) :]
        want = b"Subject: chunks\r\n\r\n.not stuffed\r\nlast\r\n"
        if len(new) != 1 or new[0].content != want:
            raise AssertionError(f"BDAT chunks stored as {[m.content for m in new]!r}")


async def _pipelining(ctx: CheckContext) -> None:
    client = await ctx.greeted()
    replies = await client.pipeline(
        f"MAIL FROM:<{ctx.sender}>",
        "RCPT TO:<no-closing-bracket",
        f"RCPT TO:<{ctx.recipient}>",
        "NOOP",
        "RSET",
    )
    codes = [reply.code for reply in replies]
    if codes[0] != 250 or codes[1] < 500 or codes[2:] != [250, 250, 250]:
        raise AssertionError(f"pipelined replies out of order or wrong: {codes}")


async def _helo_plain(ctx: CheckContext) -> None:
    if ctx.lmtp:
        return
    client = await ctx.open()
    expect(await client.helo(), 250, "HELO")
    expect(await client.mail(ctx.sender), 250, "MAIL after HELO")
    expect(await client.rcpt(ctx.recipient), 250, "RCPT after HELO")
    expect(await client.data(b"Subject: helo\r\n\r\nplain\r\n"), 250, "DATA after HELO")


#: Every check, in the order :func:`check_server` runs them.
CHECKS: Final[tuple[Check, ...]] = (
    Check("greeting", "the greeting is 220 (RFC 5321 section 3.1)", _greeting),
    Check(
        "ehlo-extensions",
        "EHLO advertises PIPELINING, ENHANCEDSTATUSCODES and CHUNKING",
        _ehlo_extensions,
    ),
    Check("mail-before-ehlo", "MAIL before EHLO gets 503 (section 4.1.4)", _mail_before_ehlo),
    Check("rcpt-before-mail", "RCPT before MAIL gets 503", _rcpt_before_mail),
    Check("data-before-rcpt", "DATA before MAIL or RCPT gets 503", _data_before_rcpt),
    Check(
        "enhanced-status-codes",
        "replies after EHLO carry enhanced status codes (RFC 2034)",
        _enhanced_codes,
    ),
    Check("null-reverse-path", "MAIL FROM:<> is accepted (section 4.5.5)", _null_reverse_path),
    Check(
        "dot-stuffing",
        "a message with leading dots arrives unchanged (section 4.5.2)",
        _message_round_trip,
    ),
    Check(
        "smuggling",
        "no end-of-data look-alike ends a message (section 4.1.1.4)",
        _smuggling,
    ),
    Check("rset", "RSET clears the transaction (section 4.1.1.5)", _rset_clears),
    Check("noop", "NOOP gets 250 in any state (section 4.1.1.9)", _noop),
    Check("vrfy", "VRFY gets 250, 251 or 252 (section 3.5.3)", _vrfy),
    Check("unknown-command", "an unknown command gets 500 or 502", _unknown_command),
    Check("long-line", "an over-long command line is refused, the session goes on", _long_line),
    Check("quit", "QUIT gets 221, then the server closes (section 4.1.1.10)", _quit),
    Check("bdat", "BDAT chunks make one message, unstuffed (RFC 3030)", _bdat),
    Check(
        "pipelining",
        "pipelined commands are answered in order (RFC 2920)",
        _pipelining,
    ),
    Check("helo", "a HELO client can send mail", _helo_plain),
)


async def check_server(
    connect: Connect | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    checks: Iterable[Check] = CHECKS,
    sender: str = "sender@client.test",
    recipient: str = "recipient@server.test",
    lmtp: bool = False,
    messages: Messages | None = None,
    timeout: float = 10.0,
) -> list[str]:
    """Run the conformance checks; return the names of those that passed.

    :param connect: a coroutine function returning a new connected
        :class:`~typed_smtpd.testing.client.SMTPTestClient` (``FakeSMTPServer.connect``);
        or give ``host`` and ``port`` to use a :class:`~typed_smtpd.testing.client.SocketClient`.
    :param checks: which checks to run (default: all of :data:`CHECKS`).
    :param sender: the reverse path used; the server must accept it.
    :param recipient: the recipient used; the server must accept it.
    :param lmtp: greet with LHLO and read one DATA reply per recipient.
    :param messages: returns what the server stored so far; when given, the checks also verify
        what was stored (content unchanged, nothing smuggled).
    :param timeout: seconds any wait may take.
    :raises ConformanceError: listing every failed check with its transcript.
    """
    if connect is None:
        if host is None or port is None:
            raise ValueError("pass connect, or host and port")
        address = (host, port)

        async def connect_socket() -> SMTPTestClient:
            return await SocketClient.open(address[0], address[1], timeout=timeout)

        connect = connect_socket
    failures: dict[str, str] = {}
    passed: list[str] = []
    for check in checks:
        ctx = CheckContext(connect, sender, recipient, lmtp, messages)
        try:
            await asyncio.wait_for(check.run(ctx), timeout * 4)
        except (AssertionError, ServerDisconnected, TimeoutError, asyncio.TimeoutError) as error:
            transcript = [entry for client in ctx.clients for entry in client.transcript]
            failures[check.name] = (
                f"{check.description}\n{error}\n--- transcript ---\n{format_transcript(transcript)}"
            )
        else:
            passed.append(check.name)
        finally:
            for client in ctx.clients:
                client.close()
    if failures:
        raise ConformanceError(failures)
    return passed
