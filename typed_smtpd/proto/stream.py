"""Streamed message content: the state of one message handed to a handler as it arrives, and the
errors its reader raises.

The engine fills a :class:`ContentStream` from its receive buffer only when the handler asks
for more (:meth:`~typed_smtpd.proto.engine.ServerEngine.stream_next`), so what a connection
holds never grows with the message: the bytes not yet asked for wait in the receive buffer,
and the adapter stops reading from the socket while that buffer is full.

No I/O here.
"""

from __future__ import annotations

from enum import Enum, auto
from typing import Final

from typed_smtpd.proto.data import ContentFilter
from typed_smtpd.proto.replies import Reply

__all__ = [
    "END",
    "ContentStream",
    "MessageAbandoned",
    "MessageRefused",
    "MessageTooLarge",
    "StreamError",
]


class StreamError(Exception):
    """The message being streamed will not be delivered; reading it raises this.

    ``reply`` is what the server answers at the end of the content (``None`` when nothing is
    answered: the client left, or ended the transaction itself). A handler may let the error
    out of its hook or catch it; either way the server reads and drops the rest of the content
    and sends ``reply``, whatever the hook returns.
    """

    def __init__(self, message: str, reply: Reply | None) -> None:
        super().__init__(message)
        #: The reply the server sends for the message (``None``: none is sent).
        self.reply: Reply | None = reply


class MessageTooLarge(StreamError):
    """The content passed the server's size limit (``data_size_limit``): answered ``552``."""


class MessageRefused(StreamError):
    """The content breaks the server's content rules (a bare CR or LF, a NUL, a line over
    ``line_length_limit``): answered as buffered content would be (``550 5.6.0``, ``500``)."""


class MessageAbandoned(StreamError):
    """The client left, or ended the transaction (``RSET``, ``QUIT``, a new greeting between
    BDAT chunks), before the end of the content: there is no message to deliver."""


class _End(Enum):
    """The type of :data:`END`."""

    END = auto()

    def __repr__(self) -> str:
        return "END"


#: Returned by :meth:`~typed_smtpd.proto.engine.ServerEngine.stream_next` after the last piece.
END: Final = _End.END


class ContentStream:
    """What the engine knows about the message it streams to a handler."""

    __slots__ = ("answered", "bdat", "chunk", "done", "error", "filter", "reply", "size")

    def __init__(self, content_filter: ContentFilter, *, bdat: bool) -> None:
        #: Applies the bare-newline policy, the line limit and dot-unstuffing piece by piece.
        self.filter: ContentFilter = content_filter
        #: Whether the content comes in BDAT chunks (else up to ``CRLF.CRLF`` after DATA).
        self.bdat: bool = bdat
        #: The chunk being read: its size, whether it is the last one, and why it is refused.
        self.chunk: tuple[int, bool, Reply | None] | None = None
        #: Octets handed to the handler so far.
        self.size: int = 0
        #: Whether the content is over (read in full, or abandoned).
        self.done: bool = False
        #: Why the message is not delivered, once that is known (what the handler was told).
        self.error: StreamError | None = None
        #: The refusal to send at the end: of several reasons, the one buffered content would
        #: be refused for (size, then a bare CR/LF/NUL, then line length).
        self.reply: Reply | None = None
        #: Whether the message needs no final reply any more (sent already, or none is due).
        self.answered: bool = False

    def fail(self, error: StreamError) -> None:
        """Record a reason the message cannot be delivered (the handler hears of the first)."""
        if self.error is None:
            self.error = error
        reply = error.reply
        if reply is not None and (self.reply is None or _rank(reply) > _rank(self.reply)):
            self.reply = reply

    def abandon(self, why: str) -> None:
        """The content ended before its end: no message, and no reply for it."""
        self.done = True
        self.answered = True
        self.error = MessageAbandoned(why, None)
        self.reply = None

    def take(self, output: bytes | Reply) -> bytes | None:
        """Account for the filter's ``output``: the bytes for the handler, or ``None`` when the
        message is refused (from now on nothing more is handed on)."""
        if isinstance(output, Reply):
            if output != self.reply:
                self.fail(MessageRefused(f"the content was refused: {output.line()}", output))
            return None
        if self.error is not None:
            return None
        self.size += len(output)
        return output


def _rank(reply: Reply) -> int:
    return {552: 3, 550: 2}.get(reply.code, 1)
