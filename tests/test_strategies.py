"""Tests of typed_smtpd.testing.strategies: each strategy keeps the grammar and limits it promises.

The checks here are written independently of the module: regular expressions transcribed from
the RFC 5321 / RFC 6531 ABNF, the standard library's ipaddress, and a separate dot-unstuffer.
"""

from __future__ import annotations

import importlib
import ipaddress
import re
import sys
import unicodedata
from collections.abc import Callable
from typing import TypeVar

import pytest
from hypothesis import Phase, given, settings
from hypothesis import find as hypothesis_find
from hypothesis import strategies as st

from typed_smtpd.testing import strategies as s

# -- the ABNF, transcribed ---------------------------------------------------------------------

NON_ASCII = r"[^\x00-\x7f]"
LET_DIG = r"[A-Za-z0-9]"
SUB_DOMAIN = rf"{LET_DIG}(?:[A-Za-z0-9-]*{LET_DIG})?"
DOMAIN = rf"{SUB_DOMAIN}(?:\.{SUB_DOMAIN})*"
SNUM = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4 = rf"{SNUM}(?:\.{SNUM}){{3}}"
HEX = r"[0-9A-Fa-f]{1,4}"
IPV6_FULL = rf"{HEX}(?::{HEX}){{7}}"
IPV6_COMP = rf"(?:{HEX}(?::{HEX}){{0,5}})?::(?:{HEX}(?::{HEX}){{0,5}})?"
IPV6V4_FULL = rf"{HEX}(?::{HEX}){{5}}:{IPV4}"
IPV6V4_COMP = rf"(?:{HEX}(?::{HEX}){{0,3}})?::(?:{HEX}(?::{HEX}){{0,3}}:)?{IPV4}"
IPV6 = rf"(?:{IPV6_FULL}|{IPV6_COMP}|{IPV6V4_FULL}|{IPV6V4_COMP})"
ADDRESS_LITERAL = rf"\[(?:{IPV4}|IPv6:{IPV6})\]"
ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
ATEXT_UTF8 = rf"(?:{ATEXT}|{NON_ASCII})"
QTEXT = r"[\x20\x21\x23-\x5b\x5d-\x7e]"
QTEXT_UTF8 = rf"(?:{QTEXT}|{NON_ASCII})"
QUOTED_PAIR = r"\\[\x20-\x7e]"
DOT_STRING = rf"{ATEXT}+(?:\.{ATEXT}+)*"
DOT_STRING_UTF8 = rf"{ATEXT_UTF8}+(?:\.{ATEXT_UTF8}+)*"
QUOTED_STRING = rf'"(?:{QTEXT}|{QUOTED_PAIR})*"'
QUOTED_STRING_UTF8 = rf'"(?:{QTEXT_UTF8}|{QUOTED_PAIR})*"'
LOCAL_PART = rf"(?:{DOT_STRING}|{QUOTED_STRING})"
LOCAL_PART_UTF8 = rf"(?:{DOT_STRING_UTF8}|{QUOTED_STRING_UTF8})"
# RFC 6531 section 3.3: sub-domain =/ U-label. The U-label's own rules are checked separately.
U_LABEL_CHARS = r"(?:[a-z0-9]|[^\x00-\x7f])+"
DOMAIN_UTF8 = rf"(?:{SUB_DOMAIN}|{U_LABEL_CHARS})(?:\.(?:{SUB_DOMAIN}|{U_LABEL_CHARS}))*"
MAILBOX = rf"{LOCAL_PART}@(?:{DOMAIN}|{ADDRESS_LITERAL})"
MAILBOX_UTF8 = rf"{LOCAL_PART_UTF8}@(?:{DOMAIN_UTF8}|{ADDRESS_LITERAL})"
ESMTP_KEYWORD = r"[A-Za-z0-9][A-Za-z0-9-]*"
ESMTP_VALUE = r"[\x21-\x3c\x3e-\x7e]+"
ESMTP_PARAM = rf"{ESMTP_KEYWORD}(?:={ESMTP_VALUE})?"
PARAMS = rf"(?: {ESMTP_PARAM})*"
MAIL_LINE = rf"MAIL FROM:<(?P<path>{MAILBOX})?>(?P<params>{PARAMS})"
MAIL_LINE_UTF8 = rf"MAIL FROM:<(?P<path>{MAILBOX_UTF8})?>(?P<params>{PARAMS})"
RCPT_LINE = rf"RCPT TO:<(?:(?i:postmaster)|{MAILBOX})>{PARAMS}"
RCPT_LINE_UTF8 = rf"RCPT TO:<(?:(?i:postmaster)|{MAILBOX_UTF8})>{PARAMS}"
STRING = rf"(?:{ATEXT}+|{QUOTED_STRING})"
# RFC 5322 section 3.6.8: field-name = 1*ftext; ftext = %d33-57 / %d59-126.
HEADER_START = r"[\x21-\x39\x3b-\x7e]+:"

T = TypeVar("T")

SMUGGLING_LIST = (
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


# find() is used to show a strategy reaches a case. The test needs an example, not the smallest
# one, so shrinking is off; max_examples here bounds the search, it is not a count of test runs.
FIND_SETTINGS = settings(phases=[Phase.generate], max_examples=2000, database=None)


def find(strategy: st.SearchStrategy[T], condition: Callable[[T], bool]) -> T:
    return hypothesis_find(strategy, condition, settings=FIND_SETTINGS)


def octets(text: str) -> int:
    return len(text.encode("utf-8"))


def full(pattern: str, text: str) -> bool:
    return re.fullmatch(pattern, text) is not None


def check_ascii_domain(domain: str) -> None:
    assert full(DOMAIN, domain), domain
    assert len(domain) <= 255
    assert all(len(label) <= 63 for label in domain.split("."))


def check_u_label(label: str) -> None:
    assert label == label.lower()
    assert unicodedata.is_normalized("NFC", label)
    assert all(char.isalnum() for char in label)
    assert len(b"xn--" + label.encode("punycode")) <= 63


def check_utf8_domain(domain: str) -> None:
    assert full(DOMAIN_UTF8, domain), domain
    assert octets(domain) <= 255
    ascii_form = 0
    for label in domain.split("."):
        if label.isascii():
            assert full(SUB_DOMAIN, label)
            assert len(label) <= 63
            ascii_form += len(label) + 1
        else:
            check_u_label(label)
            ascii_form += len(b"xn--" + label.encode("punycode")) + 1
    assert ascii_form - 1 <= 255


def check_address_literal(literal: str) -> None:
    assert full(ADDRESS_LITERAL, literal), literal
    inner = literal[1:-1]
    if inner.startswith("IPv6:"):
        text = inner.removeprefix("IPv6:")
        ipaddress.IPv6Address(text)
        if "::" in text:
            # RFC 5321 section 4.1.3: no more than 6 groups besides "::" (which stands for >= 2).
            groups = [group for group in text.split(":") if group]
            assert len(groups) <= 6
    else:
        ipaddress.IPv4Address(inner)


def check_mailbox(mailbox: str, *, utf8: bool) -> None:
    assert full(MAILBOX_UTF8 if utf8 else MAILBOX, mailbox), mailbox
    assert octets(mailbox) <= 254
    local, at, domain = mailbox.rpartition("@")
    assert at
    assert octets(local) <= 64
    if domain.startswith("["):
        check_address_literal(domain)
    elif utf8:
        check_utf8_domain(domain)
    else:
        check_ascii_domain(domain)


def unstuff(wire: bytes) -> bytes:
    """The content a DATA reader recovers from ``wire`` (which must end at its end-of-data)."""
    assert (b"\r\n" + wire).find(b"\r\n.\r\n") == len(wire) - 3, "end-of-data before the end"
    lines = wire[:-3].split(b"\r\n")
    assert lines[-1] == b""
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines[:-1])


def check_message(body: bytes, *, eight_bit: bool) -> None:
    assert body == b"" or body.endswith(b"\r\n")
    if not eight_bit:
        assert body.isascii()
    body.decode("utf-8")
    for line in body.split(b"\r\n")[:-1]:
        assert b"\r" not in line
        assert b"\n" not in line
        assert b"\x00" not in line
        assert len(line) <= 998


# -- domains and literals ----------------------------------------------------------------------


@given(s.domains())
def test_domains_follow_rfc5321(domain: str) -> None:
    check_ascii_domain(domain)


@given(s.domains(utf8=True))
def test_utf8_domains_follow_rfc6531(domain: str) -> None:
    check_utf8_domain(domain)


@given(s.domains(utf8=True))
def test_u_labels_are_idna2008_valid(domain: str) -> None:
    idna = pytest.importorskip("idna")
    for label in domain.split("."):
        if not label.isascii():
            assert len(idna.alabel(label)) <= 63


def test_utf8_domains_include_non_ascii_labels() -> None:
    found = find(s.domains(utf8=True), lambda domain: not domain.isascii())
    assert not found.isascii()


@given(s.address_literals())
def test_address_literals_follow_rfc5321(literal: str) -> None:
    check_address_literal(literal)


def test_address_literals_cover_both_families() -> None:
    assert find(s.address_literals(), lambda literal: "IPv6:" in literal).startswith("[IPv6:")
    assert full(rf"\[{IPV4}\]", find(s.address_literals(), lambda lit: "IPv6:" not in lit))


# -- local parts, mailboxes, paths -------------------------------------------------------------


@given(s.local_parts())
def test_local_parts_follow_rfc5321(local: str) -> None:
    assert full(LOCAL_PART, local), local
    assert len(local) <= 64


@given(s.local_parts(utf8=True))
def test_utf8_local_parts_follow_rfc6531(local: str) -> None:
    assert full(LOCAL_PART_UTF8, local), local
    assert octets(local) <= 64


def test_local_parts_come_in_both_forms() -> None:
    assert find(s.local_parts(), lambda local: local.startswith('"')).endswith('"')
    dotted = find(s.local_parts(), lambda local: "." in local and not local.startswith('"'))
    assert full(DOT_STRING, dotted)


@given(s.mailboxes())
def test_mailboxes_follow_rfc5321(mailbox: str) -> None:
    check_mailbox(mailbox, utf8=False)


@given(s.mailboxes(utf8=True))
def test_utf8_mailboxes_follow_rfc6531(mailbox: str) -> None:
    check_mailbox(mailbox, utf8=True)


@given(s.mailboxes(literals=False))
def test_mailboxes_without_literals(mailbox: str) -> None:
    check_mailbox(mailbox, utf8=False)
    assert not mailbox.endswith("]")


@given(s.reverse_paths())
def test_reverse_paths_are_null_or_mailboxes(path: str) -> None:
    if path:
        check_mailbox(path, utf8=False)


def test_reverse_paths_include_the_null_path() -> None:
    assert find(s.reverse_paths(), lambda path: path == "") == ""


@pytest.mark.parametrize(
    ("name", "strategy", "size", "limit"),
    [
        ("label", s.domains(), lambda d: max(len(label) for label in d.split(".")), 63),
        ("domain", s.domains(), len, 255),
        ("local part", s.local_parts(), len, 64),
        ("UTF-8 local part", s.local_parts(utf8=True), octets, 64),
        ("mailbox", s.mailboxes(), len, 254),
        ("UTF-8 mailbox", s.mailboxes(utf8=True), octets, 254),
    ],
)
def test_lengths_reach_their_limits(
    name: str, strategy: st.SearchStrategy[str], size: Callable[[str], int], limit: int
) -> None:
    assert size(find(strategy, lambda value: size(value) == limit)) == limit, name


# -- ESMTP parameters --------------------------------------------------------------------------


@given(s.esmtp_keywords())
def test_esmtp_keywords_follow_rfc5321(keyword: str) -> None:
    assert full(ESMTP_KEYWORD, keyword), keyword


@given(s.esmtp_values())
def test_esmtp_values_follow_rfc5321(value: str) -> None:
    assert full(ESMTP_VALUE, value), value


def test_esmtp_values_keep_mixed_case() -> None:
    value = find(s.esmtp_values(), lambda v: v != v.upper() and v != v.lower())
    assert full(ESMTP_VALUE, value)


@given(s.esmtp_params())
def test_esmtp_params_follow_rfc5321(params: list[str]) -> None:
    assert all(full(ESMTP_PARAM, param) for param in params), params
    keywords = [param.partition("=")[0].upper() for param in params]
    assert len(keywords) == len(set(keywords))


# -- command lines -----------------------------------------------------------------------------


def check_command_line(line: str) -> None:
    assert not {"\r", "\n", "\x00"} & set(line)
    assert octets(line) <= 510


@given(s.mail_commands())
def test_mail_commands_follow_rfc5321(line: str) -> None:
    check_command_line(line)
    assert full(MAIL_LINE, line), line


@given(s.mail_commands(utf8=True))
def test_utf8_mail_commands_carry_smtputf8(line: str) -> None:
    check_command_line(line)
    match = re.fullmatch(MAIL_LINE_UTF8, line)
    assert match is not None
    if not (match["path"] or "").isascii():
        keywords = {param.partition("=")[0].upper() for param in match["params"].split()}
        assert "SMTPUTF8" in keywords


@given(s.mail_commands(params=st.just([])))
def test_mail_commands_with_given_params(line: str) -> None:
    check_command_line(line)
    assert full(rf"MAIL FROM:<(?:{MAILBOX})?>", line), line


@given(s.rcpt_commands())
def test_rcpt_commands_follow_rfc5321(line: str) -> None:
    check_command_line(line)
    assert full(RCPT_LINE, line), line


@given(s.rcpt_commands(utf8=True))
def test_utf8_rcpt_commands_follow_rfc6531(line: str) -> None:
    check_command_line(line)
    assert full(RCPT_LINE_UTF8, line), line


def test_rcpt_commands_include_postmaster() -> None:
    line = find(s.rcpt_commands(), lambda line: line.lower().startswith("rcpt to:<postmaster>"))
    assert full(RCPT_LINE, line)


@given(s.command_lines())
def test_command_lines_are_well_formed(line: str) -> None:
    check_command_line(line)
    verb, _, argument = line.partition(" ")
    assert full(r"[A-Za-z]+", verb), line
    canonical = verb.upper() + line[len(verb) :]
    match verb.upper():
        case "HELO":
            check_ascii_domain(argument)
        case "EHLO":
            if argument.startswith("["):
                check_address_literal(argument)
            else:
                check_ascii_domain(argument)
        case "MAIL":
            assert full(MAIL_LINE, canonical), line
        case "RCPT":
            assert full(RCPT_LINE, canonical), line
        case "RSET" | "QUIT":
            assert argument == ""
        case "NOOP" | "HELP":
            assert argument == "" or full(STRING, argument), line
        case "VRFY":
            assert full(STRING, argument) or full(MAILBOX, argument), line
        case other:
            # A random verb: never one that would leave command mode or is a real command.
            assert other not in {"DATA", "BDAT", "AUTH", "STARTTLS", "LHLO", "EXPN", "ETRN"}


@pytest.mark.parametrize("verb", ["HELO", "EHLO", "MAIL", "RCPT", "RSET", "NOOP", "VRFY", "QUIT"])
def test_command_lines_cover_the_verbs(verb: str) -> None:
    line = find(s.command_lines(), lambda line: line.partition(" ")[0].upper() == verb)
    assert line.upper().startswith(verb)


def test_command_lines_include_unknown_verbs_and_case_variants() -> None:
    known = {"HELO", "EHLO", "MAIL", "RCPT", "RSET", "NOOP", "VRFY", "QUIT", "HELP"}
    line = find(s.command_lines(), lambda line: line.partition(" ")[0].upper() not in known)
    assert full(r"[A-Za-z]+", line.partition(" ")[0])
    lower = find(s.command_lines(), lambda line: line.partition(" ")[0].islower())
    assert lower.partition(" ")[0].islower()


# -- messages, dot-stuffing, dialogs -----------------------------------------------------------


@given(s.message_bodies())
def test_message_bodies_are_crlf_text(body: bytes) -> None:
    check_message(body, eight_bit=False)


@given(s.message_bodies(eight_bit=True))
def test_eight_bit_message_bodies_are_utf8_crlf_text(body: bytes) -> None:
    check_message(body, eight_bit=True)


@given(s.message_bodies(headers=True))
def test_message_bodies_with_headers_start_with_a_header_block(body: bytes) -> None:
    check_message(body, eight_bit=False)
    lines = body.decode("ascii").split("\r\n")
    separator = lines.index("")
    assert separator >= 5
    assert full(HEADER_START + ".*", lines[0])
    for line in lines[1:separator]:
        assert re.match(HEADER_START, line) or line.startswith((" ", "\t")), line
    assert {line.partition(":")[0] for line in lines[:separator]} >= {
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
    }


def test_message_bodies_exercise_transparency() -> None:
    def has_dot_line(body: bytes) -> bool:
        return any(line.startswith(b".") for line in body.split(b"\r\n")[:-1])

    assert has_dot_line(find(s.message_bodies(headers=True), has_dot_line))
    first = find(s.message_bodies(headers=False), lambda body: body.startswith(b"."))
    assert first.startswith(b".")
    lone = find(s.message_bodies(), lambda body: b"\r\n.\r\n" in b"\r\n" + body)
    assert b"\r\n.\r\n" in b"\r\n" + lone


def test_message_bodies_reach_the_line_limit() -> None:
    body = find(s.message_bodies(), lambda body: any(len(x) == 998 for x in body.split(b"\r\n")))
    assert max(len(line) for line in body.split(b"\r\n")) == 998


@given(s.message_bodies(eight_bit=True))
def test_dot_stuff_round_trips_message_bodies(body: bytes) -> None:
    assert unstuff(s.dot_stuff(body)) == body


@given(st.binary())
def test_dot_stuff_round_trips_any_bytes(body: bytes) -> None:
    expected = body if body == b"" or body.endswith(b"\r\n") else body + b"\r\n"
    assert unstuff(s.dot_stuff(body)) == expected


@pytest.mark.parametrize(
    ("body", "wire"),
    [
        (b"", b".\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b"a\r\n.b\r\n..\r\n", b"a\r\n..b\r\n...\r\n.\r\n"),
        (b"no newline", b"no newline\r\n.\r\n"),
        (b"a\n.b\r\n", b"a\n.b\r\n.\r\n"),
        (b"a\r.b\r\n", b"a\r.b\r\n.\r\n"),
    ],
)
def test_dot_stuff_examples(body: bytes, wire: bytes) -> None:
    assert s.dot_stuff(body) == wire


def check_dialog(dialog: list[bytes], *, utf8: bool, max_transactions: int) -> int:
    """Walk ``dialog`` like a strict server would; return the number of messages sent."""
    assert all(line.endswith(b"\r\n") for line in dialog)
    assert all(b"\r" not in line[:-2] and b"\n" not in line[:-2] for line in dialog)
    assert b"".join(dialog).count(b"\x00") == 0
    commands = iter(dialog)
    first = next(commands).decode("ascii")[:-2]
    assert first.startswith("EHLO ")
    client = first[5:]
    if client.startswith("["):
        check_address_literal(client)
    else:
        check_ascii_domain(client)
    transactions = messages = 0
    recipients = 0
    mail: str | None = None
    for raw in commands:
        line = raw.decode("utf-8")[:-2]
        if not utf8:
            assert line.isascii()
        if line == "QUIT":
            assert mail is None
            assert next(commands, None) is None
            break
        if line == "RSET":
            mail = None
        elif line.startswith("MAIL "):
            assert mail is None
            assert full(MAIL_LINE_UTF8 if utf8 else MAIL_LINE, line), line
            mail, recipients = line, 0
            transactions += 1
        elif line.startswith("RCPT "):
            assert mail is not None
            assert full(RCPT_LINE_UTF8 if utf8 else RCPT_LINE, line), line
            recipients += 1
            assert recipients <= 5
        else:
            assert line == "DATA"
            assert mail is not None
            assert 1 <= recipients <= 5
            wire = b""
            for content_line in commands:
                wire += content_line
                if content_line == b".\r\n":
                    break
            body = unstuff(wire)
            check_message(body, eight_bit=utf8)
            match = re.fullmatch(MAIL_LINE_UTF8, mail)
            assert match is not None
            params = match["params"].split()
            size = [p for p in params if p.startswith("SIZE=")]
            assert size in ([], [f"SIZE={len(body)}"])
            if not body.isascii():
                assert "BODY=8BITMIME" in params
                assert "SMTPUTF8" in params
            if not mail.isascii():
                assert "SMTPUTF8" in params
            messages += 1
            mail = None
    else:
        pytest.fail("dialog does not end with QUIT")
    assert 1 <= transactions <= max_transactions
    return messages


@given(s.dialogs())
def test_dialogs_are_valid_client_dialogs(dialog: list[bytes]) -> None:
    check_dialog(dialog, utf8=False, max_transactions=3)


@given(s.dialogs(utf8=True, max_transactions=2))
def test_utf8_dialogs_announce_smtputf8(dialog: list[bytes]) -> None:
    check_dialog(dialog, utf8=True, max_transactions=2)


def test_dialogs_can_hold_several_messages() -> None:
    dialog = find(s.dialogs(), lambda d: check_dialog(d, utf8=False, max_transactions=3) >= 2)
    assert dialog.count(b"DATA\r\n") >= 2


def test_dialogs_need_a_transaction() -> None:
    with pytest.raises(ValueError, match="max_transactions"):
        s.dialogs(max_transactions=0)


# -- hostile input -----------------------------------------------------------------------------


def test_smuggling_sequences_are_the_public_list() -> None:
    assert s.SMUGGLING_SEQUENCES == SMUGGLING_LIST
    assert b"\r\n.\r\n" not in s.SMUGGLING_SEQUENCES


@given(s.smuggling_sequences())
def test_smuggling_sequences_are_malformed_ends_of_data(sequence: bytes) -> None:
    assert sequence in SMUGGLING_LIST
    assert b"." in sequence
    assert sequence != b"\r\n.\r\n"


def has_bare_lf(data: bytes) -> bool:
    return re.search(rb"(?<!\r)\n", data) is not None


def has_bare_cr(data: bytes) -> bool:
    return re.search(rb"\r(?!\n)", data) is not None


def has_long_line(data: bytes) -> bool:
    return any(len(line) > 1000 for line in re.split(rb"\r|\n", data))


def has_smuggling(data: bytes) -> bool:
    return any(sequence in data for sequence in SMUGGLING_LIST)


@pytest.mark.parametrize(
    "feature",
    [
        has_bare_lf,
        has_bare_cr,
        has_long_line,
        has_smuggling,
        lambda data: b"\x00" in data,
        lambda data: not data.isascii(),
        lambda data: b"MAIL FROM:<smuggled@" in data and data.startswith(b"EHLO"),
    ],
    ids=["bare-lf", "bare-cr", "long-line", "smuggling", "nul", "8-bit", "attack"],
)
def test_hostile_streams_contain(feature: Callable[[bytes], bool]) -> None:
    assert feature(find(s.hostile_streams(), feature))


@given(s.hostile_streams())
def test_hostile_streams_are_bounded_bytes(data: bytes) -> None:
    assert isinstance(data, bytes)
    assert len(data) <= 1024 * 1024


# -- chunking ----------------------------------------------------------------------------------


@given(st.binary(max_size=3000), st.data())
def test_splits_join_back(data: bytes, draw: st.DataObject) -> None:
    chunks = draw.draw(s.splits(data))
    assert b"".join(chunks) == data
    assert all(chunks)


def test_splits_of_nothing_is_no_chunks() -> None:
    assert find(s.splits(b""), lambda chunks: True) == []


def test_splits_include_trickle_and_whole() -> None:
    data = b"MAIL FROM:<a@b.c>\r\n"
    assert find(s.splits(data), lambda chunks: len(chunks) == len(data)) == [
        bytes([byte]) for byte in data
    ]
    assert find(s.splits(data), lambda chunks: len(chunks) == 1) == [data]


@given(s.chunked(s.hostile_streams()))
def test_chunked_gives_nonempty_chunks(chunks: list[bytes]) -> None:
    assert all(chunks)


@given(s.chunked(st.just(b"EHLO a.test\r\n")))
def test_chunked_keeps_the_value(chunks: list[bytes]) -> None:
    assert b"".join(chunks) == b"EHLO a.test\r\n"


# -- the module itself -------------------------------------------------------------------------


def test_public_names_are_documented() -> None:
    assert s.__all__ == sorted(s.__all__)
    for name in s.__all__:
        value = getattr(s, name)
        if callable(value):
            assert value.__doc__, name
    assert s.__doc__


def test_missing_hypothesis_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry makes the import of that name fail, as if hypothesis were not installed.
    monkeypatch.setitem(sys.modules, "hypothesis", None)
    monkeypatch.delitem(sys.modules, "typed_smtpd.testing.strategies")
    with pytest.raises(ImportError, match=r"pip install typed-smtpd\[testing\]"):
        importlib.import_module("typed_smtpd.testing.strategies")
