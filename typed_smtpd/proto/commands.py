"""Command-line parsing: the verb, RFC 5321 paths, and ESMTP parameters.

Parsing is strict where RFC 5321 is strict (a path needs its angle brackets; ``<>`` is the null
reverse-path, given to hooks as ``""``) and preserving where aiosmtpd was destructive (parameter
values keep their case; keywords may contain hyphens).

No I/O here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "Command",
    "ParamError",
    "PathError",
    "parse_command",
    "parse_params",
    "parse_path",
    "render_command",
    "render_params",
    "render_path",
    "split_path_and_params",
    "xtext_decode",
]


class PathError(ValueError):
    """A reverse-path or forward-path does not follow RFC 5321 section 4.1.2."""


class ParamError(ValueError):
    """An ESMTP parameter list does not follow RFC 5321 section 4.1.2."""


@dataclass(frozen=True, slots=True)
class Command:
    """One command line: the upper-cased verb and the argument (``None`` when there is none)."""

    verb: str
    arg: str | None


def parse_command(line: str) -> Command:
    """Split a command line (CRLF already removed) into verb and argument.

    >>> parse_command("MAIL FROM:<a@example.com> SIZE=10")
    Command(verb='MAIL', arg='FROM:<a@example.com> SIZE=10')
    >>> parse_command("noop")
    Command(verb='NOOP', arg=None)
    """
    verb, _, arg = line.partition(" ")
    arg = arg.strip()
    return Command(verb.upper(), arg or None)


def render_command(command: Command) -> str:
    """The inverse of :func:`parse_command` (for tests and clients)."""
    return command.verb if command.arg is None else f"{command.verb} {command.arg}"


# RFC 5321 section 4.1.2 ABNF, as regular expressions over str (UTF-8 allowed where SMTPUTF8
# extends atext, RFC 6531 section 3.3).
_ATEXT: Final = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]"
_DOT_STRING: Final = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QUOTED_STRING: Final = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"'
_LOCAL_PART: Final = rf"(?:{_DOT_STRING}|{_QUOTED_STRING})"
_LABEL: Final = (
    r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]*[A-Za-z0-9\u0080-\U0010ffff])?"
)
_DOMAIN: Final = rf"{_LABEL}(?:\.{_LABEL})*"
_ADDRESS_LITERAL: Final = r"\[[^\[\]\\\s]+\]"
_MAILBOX: Final = rf"{_LOCAL_PART}@(?:{_DOMAIN}|{_ADDRESS_LITERAL})"
_AT_DOMAIN: Final = rf"@{_DOMAIN}"
_ADL: Final = rf"{_AT_DOMAIN}(?:,{_AT_DOMAIN})*"
# Source routes are obsolete but must be accepted and ignored (RFC 5321 section 4.1.2, C.).
_PATH_RE: Final = re.compile(rf"<(?:{_ADL}:)?(?P<mailbox>{_MAILBOX})>")
_POSTMASTER_RE: Final = re.compile(r"<(?P<mailbox>postmaster)>", re.IGNORECASE)
_KEYWORD_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")
_VALUE_RE: Final = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+")

#: RFC 5321 section 4.5.3.1: domain 255 octets, path 256 including brackets (the local part's
#: 64 octets are the engine's ``local_part_limit``, which a server may raise or turn off).
MAX_PATH_OCTETS: Final = 256


def split_path_and_params(arg: str) -> tuple[str, str]:
    """Split ``<path> params`` at the closing bracket of the path (paths may hold spaces only in
    quoted local parts, so a plain split on the first space is wrong)."""
    arg = arg.lstrip()
    if arg.startswith("<"):
        if '"' not in arg:  # no quoted local part: the path ends at the first ">"
            end = arg.find(">")
            if end < 0:
                return arg, ""
            return arg[: end + 1], arg[end + 1 :].strip()
        in_quotes = False
        escaped = False
        for index, char in enumerate(arg):
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = in_quotes
            elif char == '"':
                in_quotes = not in_quotes
            elif char == ">" and not in_quotes:
                return arg[: index + 1], arg[index + 1 :].strip()
        return arg, ""
    path, _, params = arg.partition(" ")
    return path, params.strip()


def parse_path(text: str, *, allow_null: bool, allow_postmaster: bool = False) -> str:
    """Parse a reverse-path or forward-path and return the mailbox.

    The null path ``<>`` gives ``""`` (when ``allow_null``); ``<postmaster>`` without a domain is
    accepted for RCPT (RFC 5321 section 4.5.1). Raises :class:`PathError` otherwise.

    >>> parse_path("<a@example.com>", allow_null=True)
    'a@example.com'
    >>> parse_path("<>", allow_null=True)
    ''
    """
    # An ASCII path is as many octets as characters (and str.isascii() costs nothing).
    octets = len(text) if text.isascii() else len(text.encode("utf-8", "surrogateescape"))
    if octets > MAX_PATH_OCTETS:
        raise PathError("path too long")
    if text == "<>":
        if allow_null:
            return ""
        raise PathError("null path not allowed here")
    match = _PATH_RE.fullmatch(text)
    if match is None and allow_postmaster:
        match = _POSTMASTER_RE.fullmatch(text)
    if match is None:
        raise PathError(f"malformed path: {text[:64]!r}")
    mailbox = match.group("mailbox")
    _, at, domain = mailbox.rpartition("@")
    # The local part's length is a server setting (``local_part_limit``), checked by the engine.
    if at and len(domain) > 255:
        raise PathError("domain too long")
    return mailbox


def render_path(mailbox: str) -> str:
    """The inverse of :func:`parse_path`."""
    return f"<{mailbox}>"


def parse_params(text: str) -> list[str]:
    """Split ESMTP parameters into ``KEYWORD=value`` / ``KEYWORD`` strings, case preserved.

    >>> parse_params("SIZE=100 BODY=8bitmime X-Custom-Key=AbC SMTPUTF8")
    ['SIZE=100', 'BODY=8bitmime', 'X-Custom-Key=AbC', 'SMTPUTF8']
    """
    params: list[str] = []
    for word in text.split():
        keyword, sep, value = word.partition("=")
        if not _KEYWORD_RE.fullmatch(keyword):
            raise ParamError(f"malformed parameter keyword: {keyword[:32]!r}")
        if sep and not _VALUE_RE.fullmatch(value):
            raise ParamError(f"malformed value for {keyword}")
        params.append(word)
    return params


def render_params(params: list[str]) -> str:
    """The inverse of :func:`parse_params`."""
    return " ".join(params)


_XTEXT_RE: Final = re.compile(r"\+([0-9A-F]{2})")


def xtext_decode(value: str) -> str:
    """Decode RFC 3461 xtext (``+XX`` hex escapes). CR, LF and NUL are refused, so a decoded value
    can never smuggle a line break into a log or a relayed command."""
    decoded = _XTEXT_RE.sub(lambda m: chr(int(m.group(1), 16)), value)
    if any(ch in decoded for ch in "\r\n\x00"):
        raise ParamError("xtext decodes to a control character")
    return decoded
