"""A coverage-guided fuzzer (atheris) over the sans-IO core, and the oracles it checks.

Run a campaign with ``python tests/fuzz/atheris_sans_io.py -atheris_runs=N`` (any libFuzzer flag
works: ``-max_total_time=600``, a corpus directory, ``-print_final_stats=1``). atheris comes from
PyPI (``pip install atheris``); it is not a test dependency, and without it this module still
imports, so the property tests of ``tests/fuzz`` reuse its oracles and :func:`one_input` runs on
the saved regression inputs.

What lives here: :func:`one_input`, which reads a target selector, a bare-newline policy, limits
and split points from the fuzzer's bytes and then runs one target with its oracle:

* the receive buffer driven the way the engine drives it (command lines, SASL lines, DATA up to
  ``CRLF.CRLF``, BDAT chunks): the same events whatever the split into reads, bounded memory, a
  terminator never inside a message, and DATA checked against a reference scan;
* command, path, parameter and xtext parsing: only the documented exceptions, and round trips;
* message content processing: the bare-newline policy against a byte-by-byte reference;
* the PROXY v1/v2 parser: never raises, a valid header is a prefix of its input and is not
  changed by what follows it.

An oracle that fails raises :class:`OracleError`; anything else that escapes is a crash. What must
not live here: tests (they are in ``test_sans_io.py`` and ``test_regressions.py``) and I/O.
"""

from __future__ import annotations

import importlib
import itertools
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from typed_smtpd.proto.commands import (
    ParamError,
    PathError,
    parse_command,
    parse_params,
    parse_path,
    render_path,
    split_path_and_params,
    xtext_decode,
)
from typed_smtpd.proto.data import dot_unstuff, has_long_line, process_content
from typed_smtpd.proto.framing import NEED_DATA, BadLine, ChunkDone, DataDone, Line, Mode, Receiver
from typed_smtpd.proto.limits import BARE_NEWLINE_POLICIES, BareNewlinePolicy
from typed_smtpd.proto.params import MailPolicy, mail_params, rcpt_params
from typed_smtpd.proto.proxy import parse_proxy_header
from typed_smtpd.proto.replies import DATA_BAD_LINE_ENDING as R_BAD_ENDING
from typed_smtpd.proto.replies import DATA_LINE_TOO_LONG as R_LINE_TOO_LONG
from typed_smtpd.proto.replies import Reply

__all__ = [
    "TARGETS",
    "Cursor",
    "OracleError",
    "check_command_parsing",
    "check_content",
    "check_params",
    "check_proxy",
    "drive_receiver",
    "has_bare_newline_or_nul_reference",
    "long_line_reference",
    "normalize_reference",
    "one_input",
    "same_events",
]


class OracleError(AssertionError):
    """An invariant of the sans-IO core does not hold for some input."""


def check(condition: bool, message: str) -> None:
    """Raise :class:`OracleError` with ``message`` unless ``condition``."""
    if not condition:
        raise OracleError(message)


class Cursor:
    """Reads small integers and byte strings from the fuzzer's input, like atheris'
    ``FuzzedDataProvider`` but without atheris (so the same input replays anywhere)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        """The next octet (0 once the input is used up)."""
        if self.pos >= len(self.data):
            return 0
        value = self.data[self.pos]
        self.pos += 1
        return value

    def choice(self, options: Sequence[Any]) -> Any:
        """One of ``options``, chosen by the next octet."""
        return options[self.byte() % len(options)]

    def splits(self, total: int, count: int) -> list[int]:
        """Up to ``count`` sorted cut points inside ``[0, total]``."""
        if total == 0:
            return []
        return sorted({(self.byte() * 257 + self.byte()) % (total + 1) for _ in range(count)})

    def rest(self) -> bytes:
        """Every octet not read yet."""
        tail = self.data[self.pos :]
        self.pos = len(self.data)
        return tail


# --- the receive buffer, driven like the engine drives it -----------------------------------------

_BDAT: Final = re.compile(r"BDAT (\d{1,6})( LAST)?", re.IGNORECASE)
#: The SASL line limit the engine uses (RFC 4954 section 4), scaled down with the command limit.
_SASL_FACTOR: Final = 4


@dataclass(frozen=True)
class Limits:
    """The limits one fuzz run gives the receiver."""

    max_line: int
    data_limit: int | None
    policy: BareNewlinePolicy
    utf8: bool


def _chunks(stream: bytes, cuts: Sequence[int]) -> list[bytes]:
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def _reference_data(after: bytes) -> tuple[bytes, int] | None:
    """What a DATA reader must return for the bytes after ``DATA CRLF``: the raw content (still
    stuffed) and how many octets it used, or ``None`` when no terminator has come yet."""
    if after.startswith(b".\r\n"):
        return b"", 3
    found = (b"\r\n" + after).find(b"\r\n.\r\n")
    if found <= 0:
        return None
    return after[:found], found + 3


def drive_receiver(stream: bytes, cuts: Sequence[int], limits: Limits) -> list[tuple[Any, ...]]:
    """Feed ``stream`` in the pieces ``cuts`` makes, switching modes after the events the way
    the engine does (``DATA``, ``BDAT n [LAST]``, ``AUTH``); return the events, summarised.

    Checks on the way: memory stays bounded in every mode, lines carry no CR/LF/NUL and respect
    the limit, chunks have their announced size, and each message matches a reference scan.
    """
    receiver = Receiver(max_line=limits.max_line, policy=limits.policy, utf8=limits.utf8)
    events: list[tuple[Any, ...]] = []
    consumed = 0  # octets of ``stream`` fed so far
    data_start: int | None = None  # where the current DATA content starts in ``stream``
    bdat_size = 0
    for piece in _chunks(stream, cuts):
        receiver.receive_data(piece)
        consumed += len(piece)
        while True:
            mode = receiver.mode
            event = receiver.next_event()
            if event is NEED_DATA:
                _check_bounded(receiver, mode, limits, bdat_size)
                break
            if isinstance(event, Line):
                check(not any(c in event.text for c in "\r\n\x00"), f"control char: {event.text!r}")
                limit = limits.max_line * (_SASL_FACTOR if mode is Mode.SASL else 1)
                check(event.size <= limit, f"line of {event.size} octets over {limit}")
                events.append(("line", mode.name, event.text))
                if mode is Mode.COMMAND:
                    data_start, bdat_size = _switch(receiver, event.text, limits, consumed)
            elif isinstance(event, BadLine):
                events.append(("bad", mode.name, event.reply.code))
            elif isinstance(event, DataDone):
                _check_data(event, stream, data_start, limits)
                events.append(("data", event.raw, event.error, event.stuffed))
                data_start = None
            elif isinstance(event, ChunkDone):
                check(
                    event.data is None or len(event.data) == bdat_size,
                    f"chunk of {len(event.data or b'')} octets, {bdat_size} announced",
                )
                events.append(("chunk", event.data))
            else:  # pragma: no cover - Event is a closed union
                raise OracleError(f"unknown event {event!r}")
    return events


def _switch(receiver: Receiver, text: str, limits: Limits, consumed: int) -> tuple[int | None, int]:
    """Change mode after a command line as the engine would; where DATA starts, BDAT's size."""
    verb = text.split(" ", 1)[0].upper()
    if verb == "DATA" and text.upper() == "DATA":
        receiver.start_data(limits.data_limit)
        return consumed - receiver.buffered, 0
    if verb == "AUTH":
        receiver.start_sasl(limits.max_line * _SASL_FACTOR)
        return None, 0
    match = _BDAT.fullmatch(text)
    if verb == "BDAT" and match is not None:
        size = int(match.group(1))
        receiver.start_bdat(size, discard=size % 3 == 0)
        return None, size
    return None, 0


def _check_bounded(receiver: Receiver, mode: Mode, limits: Limits, bdat_size: int) -> None:
    held = receiver.buffered
    if mode is Mode.COMMAND:
        check(held <= limits.max_line, f"command buffer holds {held} > {limits.max_line}")
    elif mode is Mode.SASL:
        bound = limits.max_line * _SASL_FACTOR
        check(held <= bound, f"SASL buffer holds {held} > {bound}")
    elif mode is Mode.DATA and limits.data_limit is not None:
        bound = limits.data_limit + 4
        check(held <= bound, f"DATA buffer holds {held} > {bound}")
    elif mode is Mode.BDAT:
        check(held < max(bdat_size, 1), f"BDAT buffer holds {held} of a {bdat_size} chunk")


def _check_data(event: DataDone, stream: bytes, start: int | None, limits: Limits) -> None:
    check(start is not None, "DATA content without a DATA command")
    assert start is not None
    expected = _reference_data(stream[start:])
    check(expected is not None, "a message ended where the reference finds no terminator")
    assert expected is not None
    raw, _ = expected
    if event.raw is None:
        check(limits.data_limit is not None, "DATA refused without a size limit")
        assert limits.data_limit is not None
        check(len(raw) > limits.data_limit, f"refused {len(raw)} octets under the limit")
        return
    check(event.raw == raw, f"DATA content {event.raw[:60]!r} != reference {raw[:60]!r}")
    check(b"\r\n.\r\n" not in b"\r\n" + event.raw, "a terminator inside the content")
    check(
        limits.data_limit is None or len(event.raw) <= limits.data_limit,
        "content over the size limit accepted",
    )
    check(event.stuffed or b"\r\n." not in b"\r\n" + event.raw, "stuffed content not flagged")


def same_events(stream: bytes, cuts: Sequence[int], limits: Limits) -> bool:
    """Whether splitting ``stream`` at ``cuts`` gives the events of the unsplit stream."""
    return drive_receiver(stream, cuts, limits) == drive_receiver(stream, [], limits)


def check_receiver(cursor: Cursor) -> None:
    """Target: one engine-like run over arbitrary bytes, against the same run unsplit."""
    limits = Limits(
        max_line=cursor.choice([16, 64, 512, 1536]),
        data_limit=cursor.choice([None, 0, 8, 100, 4096]),
        policy=cursor.choice(BARE_NEWLINE_POLICIES),
        utf8=bool(cursor.byte() & 1),
    )
    cut_count = cursor.byte() % 8
    stream = cursor.rest()
    cuts = Cursor(stream[-16:]).splits(len(stream), cut_count)
    check(same_events(stream, cuts, limits), f"events depend on how the bytes were split: {cuts}")
    head = stream[:256]
    check(same_events(head, range(1, len(head)), limits), "byte-by-byte reads give other events")


# --- command parsing ------------------------------------------------------------------------------

_CONTROL: Final = frozenset("\r\n\x00")


def check_command_parsing(text: str) -> None:
    """Target: the command-line parsers never raise anything but their own errors, and what they
    return holds no line break and round-trips."""
    command = parse_command(text)
    check(command.verb == command.verb.upper(), "verb not upper-cased")
    check(command.arg is None or command.arg == command.arg.strip(), "argument not stripped")
    path, params = split_path_and_params(text)
    for allow_null in (True, False):
        try:
            mailbox = parse_path(path, allow_null=allow_null, allow_postmaster=not allow_null)
        except PathError:
            pass
        else:
            check(not _CONTROL & set(mailbox), f"path {mailbox!r} holds a control character")
            check(len(mailbox.encode("utf-8", "surrogateescape")) <= 256, "path over 256")
            if mailbox:
                again = parse_path(render_path(mailbox), allow_null=True, allow_postmaster=True)
                check(again == mailbox, f"path round trip {mailbox!r} -> {again!r}")
    try:
        parsed = parse_params(params)
    except ParamError:
        pass
    else:
        check(all(p and not any(c.isspace() for c in p) for p in parsed), f"params {parsed!r}")
        check(parse_params(" ".join(parsed)) == parsed, f"params round trip {parsed!r}")
        for param in parsed:
            _, _, value = param.partition("=")
            try:
                decoded = xtext_decode(value)
            except ParamError:
                continue
            check(not _CONTROL & set(decoded), f"xtext {value!r} decodes to a line break")
        check_params(parsed)


_POLICIES: Final = (
    MailPolicy(),
    MailPolicy(size_limit=1000, smtputf8=True, binarymime=False, tls_active=True),
)


def check_params(params: list[str]) -> None:
    """MAIL and RCPT parameter semantics: a typed value or a 5xx reply, never an exception, and
    no decoded value carrying a line break or over the size cap."""
    for policy in _POLICIES:
        mail = mail_params(params, policy)
        if isinstance(mail, Reply):
            check(500 <= mail.code < 600, f"MAIL parameters refused with {mail!r}")
        else:
            for text in (mail.dsn_envid, mail.auth):
                check(text is None or not _CONTROL & set(text), f"decoded {text!r}")
            size, cap = mail.size, policy.size_limit
            check(size is None or cap is None or size <= cap, f"SIZE={size} over {cap}")
    rcpt = rcpt_params(params)
    if isinstance(rcpt, Reply):
        check(500 <= rcpt.code < 600, f"RCPT parameters refused with {rcpt!r}")
    else:
        check(rcpt.orcpt is None or not _CONTROL & set(rcpt.orcpt), f"ORCPT {rcpt.orcpt!r}")


def _check_command_target(cursor: Cursor) -> None:
    raw = cursor.rest()
    check_command_parsing(raw.decode("utf-8", "surrogateescape"))


# --- message content ------------------------------------------------------------------------------


def has_bare_newline_or_nul_reference(content: bytes) -> bool:
    """The slow, obvious definition: a NUL, a CR not followed by LF, an LF not after a CR."""
    for index, octet in enumerate(content):
        if octet == 0:
            return True
        if octet == 13 and content[index + 1 : index + 2] != b"\n":
            return True
        if octet == 10 and (index == 0 or content[index - 1] != 13):
            return True
    return False


def long_line_reference(content: bytes, limit: int) -> bool:
    """The obvious definition of :func:`~typed_smtpd.proto.data.has_long_line`: a line (up to
    and including its LF) longer than ``limit``, an unterminated last line counting its CRLF."""
    pieces = content.split(b"\n")
    for piece in pieces[:-1]:
        if len(piece) + 1 > limit:
            return True
    last = pieces[-1]
    return bool(last) and len(last) + 2 > limit


def normalize_reference(content: bytes) -> bytes:
    """The obvious definition of the ``normalize`` policy: every bare CR, bare LF and CRLF
    becomes CRLF, and NUL is dropped."""
    out = bytearray()
    index = 0
    while index < len(content):
        octet = content[index]
        if octet == 13:
            out += b"\r\n"
            index += 2 if content[index + 1 : index + 2] == b"\n" else 1
            continue
        if octet == 10:
            out += b"\r\n"
        elif octet != 0:
            out.append(octet)
        index += 1
    return bytes(out)


def check_content(content: bytes, policy: BareNewlinePolicy, limit: int | None) -> None:
    """Target: the bare-newline policy and the line-length check against the references."""
    result = process_content(content, policy=policy, line_length_limit=limit)
    bare = has_bare_newline_or_nul_reference(content)
    if policy == "reject" and bare:
        check(result == R_BAD_ENDING, f"bare newline kept: {result!r}")
        return
    checked = normalize_reference(content) if policy == "normalize" and bare else content
    too_long = limit is not None and long_line_reference(checked, limit)
    if too_long:
        check(result == R_LINE_TOO_LONG, f"a line over {limit} accepted: {result!r}")
        return
    check(result == dot_unstuff(checked), f"content {content[:40]!r} became {result!r}")
    if isinstance(result, bytes) and policy == "normalize":
        check(not has_bare_newline_or_nul_reference(result), "normalize left a bare newline")


def _check_content_target(cursor: Cursor) -> None:
    policy: BareNewlinePolicy = cursor.choice(BARE_NEWLINE_POLICIES)
    limit: int | None = cursor.choice([None, 1, 4, 16, 1001])
    content = cursor.rest()
    check_content(content, policy, limit)
    if limit is not None:
        check(
            has_long_line(content, limit) == long_line_reference(content, limit),
            "has_long_line disagrees with the reference",
        )


# --- PROXY protocol -------------------------------------------------------------------------------


def check_proxy(data: bytes) -> None:
    """Target: the PROXY parser on arbitrary bytes, with and without EOF."""
    result = parse_proxy_header(data)
    final = parse_proxy_header(data, eof=True)
    check(final is not None, "eof=True returned None")
    if result is None:
        return
    check(data.startswith(result.whole_raw), "whole_raw is not a prefix of the input")
    if not result:
        check(bool(result.error) or result.version is None, "invalid header without an error")
        return
    check(final == result, "eof changed a complete header")
    tlv = result.tlv  # decoding the TLVs on demand must not raise either
    check(tlv is None or isinstance(tlv, dict), f"TLVs decoded to {tlv!r}")
    followed = parse_proxy_header(data + b"EHLO after.example\r\n")
    check(followed is not None and followed.whole_raw == result.whole_raw, "tail changed it")
    for cut in range(len(result.whole_raw)):
        partial = parse_proxy_header(data[:cut])
        check(partial is None or not partial, f"a {cut}-octet prefix parsed as valid")


def _check_proxy_target(cursor: Cursor) -> None:
    prefix = cursor.choice(
        [b"", b"PROXY ", b"PROXY TCP4 ", b"\r\n\r\n\x00\r\nQUIT\n", b"\r\n\r\n\x00\r\nQUIT\n\x21"]
    )
    check_proxy(prefix + cursor.rest())


# --- the entry point ------------------------------------------------------------------------------

TARGETS: Final[tuple[Callable[[Cursor], None], ...]] = (
    check_receiver,
    _check_command_target,
    _check_content_target,
    _check_proxy_target,
)


def one_input(data: bytes) -> None:
    """Run the target the first octet selects on the rest of ``data``."""
    cursor = Cursor(data)
    TARGETS[cursor.byte() % len(TARGETS)](cursor)


def main(argv: list[str]) -> int:
    """Run atheris over :func:`one_input` with libFuzzer's command-line flags."""
    try:
        atheris: Any = importlib.import_module("atheris")
    except ImportError:
        print("atheris is not installed: python3 -m pip install atheris", file=sys.stderr)
        return 2
    atheris.instrument_all()
    atheris.Setup(argv, one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
