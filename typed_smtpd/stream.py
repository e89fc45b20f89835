"""Streamed message content: what a ``handle_DATA_stream`` hook receives, and the errors it may
see.

A handler that defines ``handle_DATA_stream`` is handed the content of each message as it
arrives, instead of the whole message in ``envelope.content`` at the end::

    class Hashing:
        async def handle_DATA_stream(
            self, server: SMTP, session: Session, envelope: Envelope, stream: MessageStream
        ) -> str:
            digest = hashlib.sha256()
            async for piece in stream:
                digest.update(piece)
            return f"250 OK {digest.hexdigest()[:16]}"

The server reads from the client only as fast as the hook takes the pieces, so a connection
holds a bounded amount of the message whatever its size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Final

from typed_smtpd._connections import HIGH_WATER, READ_SIZE
from typed_smtpd.proto.data import ContentFilter
from typed_smtpd.proto.framing import NEED_DATA
from typed_smtpd.proto.stream import (
    END,
    ContentStream,
    MessageAbandoned,
    MessageRefused,
    MessageTooLarge,
    StreamError,
)

if TYPE_CHECKING:
    from typing_extensions import Self

    from typed_smtpd.smtp import SMTP

__all__ = [
    "MAX_BUFFERED",
    "MessageAbandoned",
    "MessageRefused",
    "MessageStream",
    "MessageTooLarge",
    "StreamError",
]

#: The most octets of a message a connection holds while its hook does not read: the server
#: stops reading from the client past :data:`HIGH_WATER`, and one read may be under way.
MAX_BUFFERED: Final = HIGH_WATER + READ_SIZE


class MessageStream:
    """The content of one message, as an async iterator of :class:`bytes` pieces.

    The pieces are dot-unstuffed, with the server's bare CR / LF / NUL policy and line length
    limit applied exactly as for buffered content; joined, they are the bytes ``handle_DATA``
    would find in ``envelope.original_content`` (BDAT: every chunk, in order). A piece holds at
    least 64 KiB but the last, is never empty, and never ends in the middle of a CRLF.

    Iterating raises a :class:`StreamError` when the message will not be delivered:
    :class:`MessageTooLarge` past the size limit, :class:`MessageRefused` for content the
    server refuses, :class:`MessageAbandoned` when the client leaves or ends the transaction
    first. The server then reads and drops the rest and answers the client itself, whatever
    the hook returns.
    """

    __slots__ = ("_content", "_given", "_given_error", "_observers", "_server")

    def __init__(self, server: SMTP, content: ContentStream) -> None:
        self._server: SMTP | None = server
        self._content = content
        self._given: Iterator[bytes] | None = None
        self._given_error: StreamError | None = None
        self._observers: list[Callable[[bytes], object]] = []

    @classmethod
    def of(cls, pieces: Iterable[bytes], *, error: StreamError | None = None) -> MessageStream:
        """A stream that hands out ``pieces`` (empty ones left out) and then ends, or raises
        ``error``: for testing a ``handle_DATA_stream`` hook without a server.

        >>> import asyncio
        >>> asyncio.run(MessageStream.of([b"Subject: x\\r\\n", b"\\r\\nbody\\r\\n"]).read())
        b'Subject: x\\r\\n\\r\\nbody\\r\\n'
        """
        content = ContentStream(
            ContentFilter(policy="accept", line_length_limit=None, unstuff=False), bdat=False
        )
        stream = cls.__new__(cls)
        stream._server = None
        stream._content = content
        stream._given = (piece for piece in pieces if piece)
        stream._given_error = error
        stream._observers = []
        return stream

    def observe(self, callback: Callable[[bytes], object]) -> None:
        """Call ``callback`` with each piece as it is handed out (a recording test double
        keeps a copy of what the hook read this way)."""
        self._observers.append(callback)

    @property
    def size(self) -> int:
        """Octets handed to the hook so far."""
        return self._content.size

    @property
    def done(self) -> bool:
        """Whether the content is over (read to its end, or abandoned)."""
        return self._content.done

    @property
    def error(self) -> StreamError | None:
        """Why the message will not be delivered, once that is known."""
        return self._content.error

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        piece = await self._next()
        for callback in self._observers:
            callback(piece)
        return piece

    async def _next(self) -> bytes:
        server = self._server
        if server is None:
            return self._next_given()
        engine = server.engine
        while True:
            item = engine.stream_next()
            if isinstance(item, bytes):
                return item
            if item is END:
                raise StopAsyncIteration
            if item is NEED_DATA:
                await server.wait_for_input()
            else:  # a command between BDAT chunks that runs user code
                await server.drive(item)

    def _next_given(self) -> bytes:
        content = self._content
        if content.error is not None:
            raise content.error
        if self._given is not None:
            for piece in self._given:
                content.size += len(piece)
                return piece
            self._given = None
        content.done = True
        if self._given_error is not None:
            content.fail(self._given_error)
            raise self._given_error
        raise StopAsyncIteration

    async def read(self) -> bytes:
        """The rest of the content, joined (it is held in memory whole: for small messages)."""
        return b"".join([piece async for piece in self])
