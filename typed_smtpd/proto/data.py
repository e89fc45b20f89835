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
    "ContentFilter",
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

    Each pattern starts with a literal, so the regular expression engine scans for it in C
    (faster than counting CRLFs, a two-octet search). The NUL is looked for as the integer 0:
    ``b"\\x00" in content`` first tries its argument as an integer, and the exception that
    raises and clears costs more than the search itself.
    """
    return (
        0 in content or _BARE_CR.search(content) is not None or _BARE_LF.search(content) is not None
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


def has_long_line(content: bytes, limit: int, start: int = 0, end: int | None = None) -> bool:
    """True when a line of ``content[start:end]`` is longer than ``limit`` octets, CRLF
    included.

    Jumps from line start to line start by the last LF within ``limit`` octets (one ``rfind``,
    a backwards ``memchr``, per ``limit`` octets of ordinary mail): a window of ``limit``
    octets without any LF is a line that is too long.
    """
    if end is None:
        end = len(content)
    if end - start + 2 <= limit:  # even an unterminated line this short is within it
        return False
    rfind = content.rfind
    while start < end:
        stop = start + limit
        if stop >= end:
            # What is left is shorter than the limit: only an unterminated last line (BDAT),
            # which counts as if CRLF followed, can still be too long.
            last = rfind(b"\n", start, end)
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
    stuffed: bool = True,
) -> bytes | Reply:
    """Turn raw DATA (or BDAT) content into the message, or the reply that refuses it.

    Checks, in order: bare CR/LF/NUL per ``policy``, text-line length on the wire form (the
    stuffed dot counts, as in aiosmtpd), then dot-unstuffing (``unstuff``: DATA only).
    ``stuffed=False`` says that no line of ``raw`` starts with "." (unstuffing is skipped,
    unless normalizing made new lines). :class:`ContentFilter` gives the same result piece by
    piece.
    """
    checked = apply_newline_policy(raw, policy)
    if checked is None:
        return DATA_BAD_LINE_ENDING
    if line_length_limit is not None and has_long_line(checked, line_length_limit):
        return DATA_LINE_TOO_LONG
    if unstuff and (stuffed or checked is not raw):
        return dot_unstuff(checked)
    return checked


class ContentFilter:
    """:func:`process_content` for content that arrives in pieces, with memory bounded by the
    piece: feed each piece, then call :meth:`finish`. The output pieces, joined, are what
    :func:`process_content` makes of the joined input, or a :class:`Reply` refuses it.

    A CR at the end of a piece is held back until the next one shows whether LF follows it,
    so no check and no unstuffing ever looks at half a line ending.

    >>> f = ContentFilter(policy="reject", line_length_limit=1001, unstuff=True)
    >>> f.feed(b"..one\\r"), f.feed(b"\\n.two\\r\\n"), f.finish()
    (b'.one', b'\\r\\ntwo\\r\\n', b'')
    """

    __slots__ = ("_cr", "_line", "_line_start", "limit", "policy", "refusal", "unstuff")

    def __init__(
        self, *, policy: BareNewlinePolicy, line_length_limit: int | None, unstuff: bool
    ) -> None:
        self.policy: BareNewlinePolicy = policy
        self.limit: int | None = line_length_limit
        #: Whether the content is dot-stuffed (DATA) rather than sent as it is (BDAT).
        self.unstuff: bool = unstuff
        self._cr = False  # a CR held back from the end of the last piece
        self._line = 0  # the length of the line not yet ended, in the checked form
        self._line_start = True  # whether the checked content so far ends a line (CRLF)
        #: Why the content is refused, once it is: a bare CR, LF or NUL outranks a long line
        #: found earlier, as in :func:`process_content`, so the rest is still checked.
        self.refusal: Reply | None = None

    def feed(self, piece: bytes, *, stuffed: bool = True) -> bytes | Reply:
        """The output for one more piece of raw content, or the reply that refuses it all.
        ``stuffed=False`` says that no CRLF "." is in ``piece`` (unstuffing has less to do)."""
        if self._cr:
            piece = b"\r" + piece
            stuffed = True
        self._cr = piece.endswith(b"\r")
        if self._cr:
            piece = piece[:-1]
        return self._process(piece, final=False, stuffed=stuffed)

    def finish(self) -> bytes | Reply:
        """The output for the end of the content (a CR held back, if any)."""
        piece = b"\r" if self._cr else b""
        self._cr = False
        return self._process(piece, final=True, stuffed=True)

    def _process(self, piece: bytes, *, final: bool, stuffed: bool) -> bytes | Reply:
        if self.refusal is DATA_BAD_LINE_ENDING:
            return self.refusal
        checked = apply_newline_policy(piece, self.policy)
        if checked is None:
            self.refusal = DATA_BAD_LINE_ENDING
            return self.refusal
        if self.refusal is not None:
            return self.refusal
        if self.limit is not None and self._too_long(checked, final=final):
            self.refusal = DATA_LINE_TOO_LONG
            return self.refusal
        if not checked or not self.unstuff:
            return checked
        at_line_start, self._line_start = self._line_start, checked.endswith(b"\r\n")
        if at_line_start and checked.startswith(b"."):
            checked = checked[1:]
        if stuffed or checked is not piece:
            return checked.replace(b"\r\n.", b"\r\n")
        return checked

    def _too_long(self, checked: bytes, *, final: bool) -> bool:
        limit = self.limit
        assert limit is not None
        first = checked.find(b"\n")
        if first >= 0:
            if self._line + first + 1 > limit:
                return True
            last = checked.rfind(b"\n")
            if last > first and has_long_line(checked, limit, first + 1, last + 1):
                return True
            self._line = len(checked) - last - 1
        else:
            self._line += len(checked)
        if final:  # an unterminated last line counts as if CRLF followed
            return self._line > 0 and self._line + 2 > limit
        # However this line goes on, its end adds at least one octet.
        return self._line + 1 > limit
