"""Message content: dot-unstuffing and the bare CR / bare LF / NUL policy, on whole buffers.

Everything here works on the complete content with bytes methods implemented in C (``count``,
``replace``, ``split``), never line by line in Python.

No I/O here.
"""

from __future__ import annotations

import re
from typing import Final

from typed_smtpd.proto.limits import BareNewlinePolicy
from typed_smtpd.proto.replies import DATA_BAD_LINE_ENDING, DATA_LINE_TOO_LONG, Reply

__all__ = [
    "apply_newline_policy",
    "dot_stuff",
    "dot_unstuff",
    "has_bare_newline_or_nul",
    "longest_line",
    "process_content",
]

_ANY_NEWLINE: Final = re.compile(rb"\r\n|\r|\n")


def dot_unstuff(raw: bytes) -> bytes:
    """Remove the transparency dot of every line that starts with one (RFC 5321 section 4.5.2).

    ``raw`` is the DATA content without the terminating ``.CRLF`` (it ends with CRLF).

    >>> dot_unstuff(b"..leading\\r\\nplain\\r\\n.\\r\\n")
    b'.leading\\r\\nplain\\r\\n\\r\\n'
    """
    if raw.startswith(b"."):
        raw = raw[1:]
    if b"\r\n." in raw:
        raw = raw.replace(b"\r\n.", b"\r\n")
    return raw


def dot_stuff(content: bytes) -> bytes:
    """The inverse of :func:`dot_unstuff`: double the leading dot of every line."""
    if content.startswith(b"."):
        content = b"." + content
    return content.replace(b"\r\n.", b"\r\n..")


def has_bare_newline_or_nul(content: bytes) -> bool:
    """True when ``content`` holds a CR not followed by LF, an LF not preceded by CR, or a NUL."""
    crlf = content.count(b"\r\n")
    return content.count(b"\n") != crlf or content.count(b"\r") != crlf or b"\x00" in content


def apply_newline_policy(content: bytes, policy: BareNewlinePolicy) -> bytes | None:
    """Apply the bare-newline policy; ``None`` means the content is refused.

    ``normalize`` turns every bare CR and bare LF into CRLF and drops NUL (what Postfix's
    ``smtpd_forbid_bare_newline = normalize`` does for LF); ``accept`` keeps the bytes as sent.
    """
    if policy == "accept" or not has_bare_newline_or_nul(content):
        return content
    if policy == "reject":
        return None
    return _ANY_NEWLINE.sub(b"\r\n", content).replace(b"\x00", b"")


def longest_line(content: bytes) -> int:
    """The length of the longest CRLF-terminated line of ``content``, CRLF included."""
    return max(map(len, content.split(b"\r\n"))) + 2


def process_content(
    raw: bytes, *, policy: BareNewlinePolicy, line_length_limit: int | None, unstuff: bool = True
) -> bytes | Reply:
    """Turn raw DATA (or BDAT) content into the message, or the reply that refuses it.

    Checks, in order: bare CR/LF/NUL per ``policy``, text-line length on the wire form (the
    stuffed dot counts, as in aiosmtpd), then dot-unstuffing (DATA only).
    """
    checked = apply_newline_policy(raw, policy)
    if checked is None:
        return DATA_BAD_LINE_ENDING
    if (
        line_length_limit is not None
        and len(checked) > line_length_limit
        and longest_line(checked) > line_length_limit
    ):
        return DATA_LINE_TOO_LONG
    return dot_unstuff(checked) if unstuff else checked
