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
    "has_long_line",
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
    return raw.replace(b"\r\n.", b"\r\n")


def dot_stuff(content: bytes) -> bytes:
    """The inverse of :func:`dot_unstuff`: double the leading dot of every line."""
    if content.startswith(b"."):
        content = b"." + content
    return content.replace(b"\r\n.", b"\r\n..")


_BARE_CR: Final = re.compile(rb"\r(?!\n)")
_BARE_LF: Final = re.compile(rb"\n(?<!\r\n)")


def has_bare_newline_or_nul(content: bytes) -> bool:
    """True when ``content`` holds a CR not followed by LF, an LF not preceded by CR, or a NUL.

    Each pattern starts with a literal, so the regular expression engine scans for it in C.
    """
    return (
        b"\x00" in content
        or _BARE_CR.search(content) is not None
        or _BARE_LF.search(content) is not None
    )


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


def has_long_line(content: bytes, limit: int) -> bool:
    """True when a line of ``content`` is longer than ``limit`` octets, CRLF included.

    Jumps from line start to line start by the last LF within ``limit`` octets (one ``rfind``,
    a backwards ``memchr``, per ``limit`` octets of ordinary mail): a window of ``limit``
    octets without any LF is a line that is too long.
    """
    end = len(content)
    if end + 2 <= limit:  # even an unterminated line this short is within it
        return False
    rfind = content.rfind
    start = 0
    while start < end:
        stop = start + limit
        if stop >= end:
            # What is left is shorter than the limit: only an unterminated last line (BDAT),
            # which counts as if CRLF followed, can still be too long.
            last = rfind(b"\n", start)
            tail = end - (last + 1 if last >= 0 else start)
            return tail > 0 and tail + 2 > limit
        last = rfind(b"\n", start, stop)
        if last < 0:
            return True
        start = last + 1
    return False


def process_content(
    raw: bytes,
    *,
    policy: BareNewlinePolicy,
    line_length_limit: int | None,
    unstuff: bool = True,
) -> bytes | Reply:
    """Turn raw DATA (or BDAT) content into the message, or the reply that refuses it.

    Checks, in order: bare CR/LF/NUL per ``policy``, text-line length on the wire form (the
    stuffed dot counts, as in aiosmtpd), then dot-unstuffing (DATA only).
    """
    checked = apply_newline_policy(raw, policy)
    if checked is None:
        return DATA_BAD_LINE_ENDING
    if line_length_limit is not None and has_long_line(checked, line_length_limit):
        return DATA_LINE_TOO_LONG
    return dot_unstuff(checked) if unstuff else checked
