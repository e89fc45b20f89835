"""Property-based fuzzing of the sans-IO core, with the oracles of ``atheris_sans_io``.

Examples mix the tokens the core reacts to (CRLF, bare CR and LF, NUL, ``CRLF.CRLF``, DATA,
BDAT, AUTH, PROXY signatures) with arbitrary bytes, so that Hypothesis reaches the interesting
states quickly. The number of examples comes from the Hypothesis profile: ``HYPOTHESIS_PROFILE=
fuzz`` (``nox -s fuzz``) runs 20,000 per test.

Targets: the receive buffer in every mode, command/path/parameter/xtext parsing, message content
processing, the PROXY v1/v2 parser, and the SASL exchanges through the real engine (in memory).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import re
from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st

from typed_smtpd.proto.commands import parse_command
from typed_smtpd.proto.data import has_long_line
from typed_smtpd.proto.limits import BARE_NEWLINE_POLICIES, BareNewlinePolicy
from typed_smtpd.proto.proxy import build_v1, build_v2, parse_proxy_header
from typed_smtpd.session import AuthResult, Envelope, LoginPassword, Session
from typed_smtpd.smtp import SMTP
from typed_smtpd.testing.fake import FakeSMTPServer
from typed_smtpd.testing.strategies import SMUGGLING_SEQUENCES

from .atheris_sans_io import (
    Limits,
    check_command_parsing,
    check_content,
    check_proxy,
    drive_receiver,
    long_line_reference,
    one_input,
    same_events,
)

TOKENS = [
    b"\r\n",
    b"\n",
    b"\r",
    b"\x00",
    b".",
    b"..",
    b"\r\n.\r\n",
    b".\r\n",
    b"DATA\r\n",
    b"BDAT 0 LAST\r\n",
    b"BDAT 5\r\n",
    b"BDAT 7 LAST\r\n",
    b"BDAT 12\r\n",
    b"AUTH LOGIN\r\n",
    b"EHLO x\r\n",
    b"MAIL FROM:<a@b.example>\r\n",
    b"NOOP\r\n",
    b"x" * 70,
    "é".encode(),
    *SMUGGLING_SEQUENCES,
]


def streams(max_parts: int = 40) -> st.SearchStrategy[bytes]:
    """Byte streams built from :data:`TOKENS` and arbitrary bytes."""
    part = st.one_of(st.sampled_from(TOKENS), st.binary(max_size=12))
    return st.lists(part, max_size=max_parts).map(b"".join)


limits_strategy = st.builds(
    Limits,
    max_line=st.sampled_from([8, 16, 64, 512]),
    data_limit=st.sampled_from([None, 0, 8, 100]),
    policy=st.sampled_from(BARE_NEWLINE_POLICIES),
    utf8=st.booleans(),
)


# --- the receive buffer ---------------------------------------------------------------------------


@given(stream=streams(), limits=limits_strategy, data=st.data())
def test_receiver_events_do_not_depend_on_how_bytes_arrive(
    stream: bytes, limits: Limits, data: st.DataObject
) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8).map(sorted))
    assert same_events(stream, cuts, limits)


@given(stream=streams(20), limits=limits_strategy)
def test_receiver_byte_by_byte(stream: bytes, limits: Limits) -> None:
    assert same_events(stream, range(1, len(stream)), limits)


@given(
    before=st.binary(max_size=30),
    sequence=st.sampled_from(SMUGGLING_SEQUENCES),
    after=streams(10),
    limits=limits_strategy,
)
def test_no_smuggling_sequence_ends_data(
    before: bytes, sequence: bytes, after: bytes, limits: Limits
) -> None:
    assume(b"\r\n.\r\n" not in b"\r\n" + before + sequence + after)
    stream = b"DATA\r\n" + before + sequence + after
    events = drive_receiver(stream, [], limits)
    assert not [e for e in events if e[0] == "data"]


# --- parsing --------------------------------------------------------------------------------------

path_text = st.text(
    alphabet=st.sampled_from(list('<>@.:[]"\\ ,=+-_aAzZ09é\x7f\u202e')), max_size=40
)


@given(st.one_of(st.text(max_size=80), path_text.map(lambda t: "MAIL FROM:" + t)))
def test_command_parsing(text: str) -> None:
    check_command_parsing(text)


@given(st.text(max_size=60).filter(lambda t: not set(t) & {"\r", "\n", "\x00"}))
def test_the_verb_is_the_first_word(line: str) -> None:
    command = parse_command(line)
    assert command.verb == line.partition(" ")[0].upper()


# --- content --------------------------------------------------------------------------------------


@given(
    content=streams(),
    policy=st.sampled_from(BARE_NEWLINE_POLICIES),
    limit=st.sampled_from([None, 1, 3, 16, 1001]),
)
def test_content_processing(content: bytes, policy: BareNewlinePolicy, limit: int | None) -> None:
    check_content(content, policy, limit)


@given(content=streams(), limit=st.integers(1, 120))
def test_has_long_line_matches_the_reference(content: bytes, limit: int) -> None:
    assert has_long_line(content, limit) == long_line_reference(content, limit)


# --- PROXY ----------------------------------------------------------------------------------------

ipv4 = st.ip_addresses(v=4)
ipv6 = st.ip_addresses(v=6)
ports = st.integers(0, 65535)


@st.composite
def proxy_headers(draw: st.DrawFn) -> bytes:
    """A valid v1 or v2 header, then perhaps truncated, flipped at one octet, or extended."""
    version = draw(st.sampled_from([1, 2]))
    addresses = draw(st.sampled_from([ipv4, ipv6]))
    src, dst = draw(addresses), draw(addresses)
    if version == 1:
        header = build_v1(src, dst, draw(ports), draw(ports))
    else:
        header = build_v2(src, dst, draw(ports), draw(ports))
    mutation = draw(st.sampled_from(["none", "truncate", "flip", "append"]))
    if mutation == "truncate":
        header = header[: draw(st.integers(0, len(header)))]
    elif mutation == "flip" and header:
        index = draw(st.integers(0, len(header) - 1))
        header = header[:index] + bytes([header[index] ^ draw(st.integers(1, 255))])
        header += header[index + 1 :]
    elif mutation == "append":
        header += draw(st.binary(max_size=30))
    return header


@given(st.one_of(proxy_headers(), st.binary(max_size=64), streams(8)))
def test_proxy_parser(data: bytes) -> None:
    check_proxy(data)


@given(
    version=st.sampled_from([1, 2]),
    family=st.sampled_from([4, 6]),
    data=st.data(),
)
def test_proxy_round_trip(version: int, family: int, data: st.DataObject) -> None:
    addresses = ipv4 if family == 4 else ipv6
    src, dst = data.draw(addresses), data.draw(addresses)
    sport, dport = data.draw(ports), data.draw(ports)
    build = build_v1 if version == 1 else build_v2
    header = build(src, dst, sport, dport)
    parsed = parse_proxy_header(header + b"EHLO next\r\n")
    assert parsed is not None and parsed.valid, parsed
    assert parsed.whole_raw == header
    assert (parsed.src_addr, parsed.dst_addr) == (src, dst)
    assert (parsed.src_port, parsed.dst_port) == (sport, dport)
    assert isinstance(parsed.src_addr, ipaddress.IPv4Address | ipaddress.IPv6Address)


# --- SASL, through the engine ---------------------------------------------------------------------


class CountingAuthenticator:
    """Accepts alice/wonderland; records the types it was handed."""

    def __init__(self) -> None:
        self.seen: list[type] = []
        self.successes = 0

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        self.seen.append(type(data))
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            b"alice",
            b"wonderland",
        )
        self.successes += ok
        return AuthResult(success=ok, handled=False)


sasl_words = st.one_of(
    st.sampled_from(["*", "=", "", "YWxpY2U=", "d29uZGVybGFuZA==", "AGFsaWNlAHdyb25n", "@@", "A"]),
    st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
    st.text(alphabet="ABCabc012+/=*! ", max_size=30),
)
auth_commands = st.tuples(
    st.sampled_from(["PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", "plain", "", "LOGIN LOGIN"]),
    st.one_of(st.none(), sasl_words),
    st.lists(sasl_words, max_size=3),
)

_REPLY = re.compile(rb"[2-5][0-9]{2}[ -][^\r\n]*")


def _dialog(attempts: list[tuple[str, str | None, list[str]]]) -> bytes:
    lines = ["EHLO fuzz.example.test"]
    for mechanism, initial, responses in attempts:
        lines.append(f"AUTH {mechanism}" + (f" {initial}" if initial is not None else ""))
        lines.extend(responses)
    lines += ["NOOP", "QUIT"]
    return "".join(line + "\r\n" for line in lines).encode()


async def _run_dialog(stream: bytes, authenticator: CountingAuthenticator) -> bytes:
    async with FakeSMTPServer(
        auth_require_tls=False, authenticator=authenticator, timeout=5
    ) as server:
        client = server.client()
        client.send_bytes(stream)
        # The end of the input: a dialog that leaves the server waiting (AUTH LOGIN taking
        # NOOP and QUIT as its answers) ends here instead of at the timeout.
        client.send_eof()
        return await client.read_until_closed()


class ErrorLog(logging.Handler):
    """Collects the ERROR records of the server's logger."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the record."""
        self.records.append(record)


@given(attempts=st.lists(auth_commands, max_size=5))
def test_sasl_exchanges_never_break_the_session(
    attempts: list[tuple[str, str | None, list[str]]],
) -> None:
    authenticator = CountingAuthenticator()
    errors = ErrorLog()
    logger = logging.getLogger("mail.log")
    logger.addHandler(errors)
    try:
        received = asyncio.run(_run_dialog(_dialog(attempts), authenticator))
    finally:
        logger.removeHandler(errors)
    lines = received.split(b"\r\n")
    assert lines[-1] == b""
    assert all(_REPLY.fullmatch(line) for line in lines[:-1]), received
    codes = [int(line[:3]) for line in lines[:-1]]
    assert 451 not in codes, received  # no internal error, whatever was sent
    # Authenticated exactly when the authenticator said so, never otherwise.
    assert codes.count(235) == authenticator.successes
    # The session ends with QUIT's 221, with one 421 after too many failures, or (the SASL
    # exchange having eaten QUIT) at the end of the input.
    assert codes.count(421) <= 1
    assert 421 not in codes[:-1]
    assert all(t is LoginPassword for t in authenticator.seen)
    assert [r.getMessage() for r in errors.records] == []


# --- the atheris entry point, on hypothesis' bytes ------------------------------------------------


@given(st.binary(max_size=300))
def test_atheris_entry_point_on_arbitrary_bytes(data: bytes) -> None:
    one_input(data)


@given(target=st.integers(0, 3), head=st.binary(max_size=6), body=streams(15))
def test_atheris_entry_point_on_smtp_like_bytes(target: int, head: bytes, body: bytes) -> None:
    one_input(bytes([target]) + head + body)
