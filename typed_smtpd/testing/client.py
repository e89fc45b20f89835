"""A small, typed SMTP test client: the same interface over memory and over a real socket.

What lives here: :class:`ClientReply` (a parsed server reply) and :class:`ReplyReader` (the
incremental reply parser), the dialog transcript (:class:`TranscriptEntry`,
:func:`format_transcript`), the client base class :class:`SMTPTestClient` with one typed
``async`` method per command, STARTTLS done by hand over :class:`ssl.MemoryBIO` (so the very same
code runs over the in-memory fake and over a socket), and :class:`SocketClient`, the client for
any ``host:port`` built on asyncio streams.

This is a client for tests: it sends exactly what it is told (``send()`` and ``send_bytes()``
can break the protocol on purpose), it never retries, and every wait is bounded by
:attr:`SMTPTestClient.timeout`.

What must not live here: anything that runs a server, and imports of hypothesis or pytest.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Literal, NamedTuple

from typing_extensions import Self

from typed_smtpd.proto.replies import Reply

__all__ = [
    "DEFAULT_TIMEOUT",
    "ClientReply",
    "Direction",
    "ReplyFormatError",
    "ReplyReader",
    "SMTPTestClient",
    "ServerDisconnected",
    "SocketClient",
    "TranscriptEntry",
    "dot_stuff",
    "format_transcript",
    "insecure_client_context",
]

#: Seconds any single wait of a test client may take before it gives up with
#: :class:`TimeoutError`. A limit, never a delay: replies over memory arrive at once.
DEFAULT_TIMEOUT: Final = 10.0

#: Who sent a piece of a dialog.
Direction = Literal["client", "server"]

_REPLY_LINE: Final = re.compile(rb"([2-5][0-9]{2})([ -]?)(.*)", re.DOTALL)
_ENHANCED: Final = re.compile(r"([245]\.[0-9]{1,3}\.[0-9]{1,3})(?: |$)")
# RFC 5321 section 4.5.3.1.5: a reply line is at most 512 octets; a test client allows far more
# (a misbehaving server should fail an assertion, not exhaust memory).
_MAX_REPLY_BUFFER: Final = 1 << 20
_READ_SIZE: Final = 65536


class ReplyFormatError(ValueError):
    """The server sent something that is not an SMTP reply (RFC 5321 section 4.2)."""


class ServerDisconnected(ConnectionError):
    """The server closed the connection while the client waited for a reply."""


class TranscriptEntry(NamedTuple):
    """One piece of a dialog: who sent it and the bytes (plain text, also under TLS)."""

    direction: Direction
    data: bytes


def format_transcript(entries: Iterable[TranscriptEntry], *, limit: int = 200) -> str:
    """Render a transcript for a failure message: ``C:`` and ``S:`` lines, escapes for the rest.

    Only the last ``limit`` lines are shown; control characters other than the CRLF that ends a
    line are shown escaped, so a bare LF or NUL is visible.
    """
    lines: list[str] = []
    for direction, data in entries:
        prefix = "C: " if direction == "client" else "S: "
        for piece in data.splitlines(keepends=True):
            text = piece.removesuffix(b"\r\n")
            shown = repr(text)[2:-1]
            lines.append(prefix + shown)
    if len(lines) > limit:
        lines = [f"... {len(lines) - limit} earlier lines", *lines[-limit:]]
    return "\n".join(lines) if lines else "(empty transcript)"


@dataclass(frozen=True, slots=True)
class ClientReply:
    """One complete server reply as a client reads it.

    ``lines`` holds the text of each line without the code, the separator and the enhanced
    status code (when the reply has one, RFC 2034); ``enhanced`` is that code, or ``None``.

    >>> reply = ClientReply.parse(b"250 2.1.0 OK\\r\\n")
    >>> reply.code, reply.enhanced, reply.text, reply.ok
    (250, '2.1.0', 'OK', True)
    """

    code: int
    lines: tuple[str, ...] = ("",)
    enhanced: str | None = None

    @property
    def text(self) -> str:
        """The text of all lines, joined with newlines."""
        return "\n".join(self.lines)

    @property
    def ok(self) -> bool:
        """True for a positive reply (2xx completion or 3xx intermediate)."""
        return self.code < 400

    @property
    def keywords(self) -> frozenset[str]:
        """For an EHLO/LHLO reply: the upper-cased first word of every line after the first."""
        return frozenset(line.split(" ", 1)[0].upper() for line in self.lines[1:] if line)

    def matches(self, expected: Reply) -> bool:
        """Whether this is the catalogue reply ``expected``: same code and text, and the same
        enhanced code when this reply carries one (clients that sent HELO get none)."""
        if self.code != expected.code or self.text != expected.text:
            return False
        return self.enhanced is None or self.enhanced == expected.enhanced

    @classmethod
    def parse(cls, data: bytes) -> ClientReply:
        """Parse one complete reply (all its lines, CRLF-terminated)."""
        reader = ReplyReader()
        reader.feed(data)
        reply = reader.next_reply()
        if reply is None or reader.buffered:
            raise ReplyFormatError(f"not exactly one complete reply: {data!r}")
        return reply

    def __str__(self) -> str:
        head = f"{self.code} {self.enhanced} " if self.enhanced else f"{self.code} "
        return head + " / ".join(self.lines)


class ReplyReader:
    """Incremental reply parser: :meth:`feed` bytes, take complete replies with
    :meth:`next_reply`. Lines must end with CRLF (RFC 5321 section 4.2)."""

    __slots__ = ("_buffer", "_pending")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pending: list[tuple[int, str]] = []

    @property
    def buffered(self) -> int:
        """Octets received but not yet part of a returned reply."""
        return len(self._buffer) + sum(len(text) + 6 for _, text in self._pending)

    def feed(self, data: bytes) -> None:
        """Add received bytes."""
        self._buffer += data
        if len(self._buffer) > _MAX_REPLY_BUFFER:
            raise ReplyFormatError("reply line without CRLF longer than 1 MiB")

    def clear(self) -> None:
        """Forget everything buffered (after STARTTLS nothing from before counts)."""
        self._buffer.clear()
        self._pending.clear()

    def next_reply(self) -> ClientReply | None:
        """The next complete reply, or ``None`` until more bytes arrive."""
        while True:
            end = self._buffer.find(b"\r\n")
            if end < 0:
                return None
            raw = bytes(self._buffer[:end])
            del self._buffer[: end + 2]
            match = _REPLY_LINE.fullmatch(raw)
            if match is None or (match.group(3) and not match.group(2)):
                raise ReplyFormatError(f"malformed reply line: {raw!r}")
            code = int(match.group(1))
            if self._pending and self._pending[0][0] != code:
                raise ReplyFormatError(
                    f"reply code changed inside a multi-line reply: {self._pending[0][0]} "
                    f"then {code}"
                )
            text = match.group(3).decode("utf-8", "backslashreplace")
            self._pending.append((code, text))
            if match.group(2) != b"-":
                lines = [line for _, line in self._pending]
                self._pending.clear()
                return _build_reply(code, lines)


def _build_reply(code: int, lines: list[str]) -> ClientReply:
    found = _ENHANCED.match(lines[0])
    if found is None or int(found.group(1)[0]) != code // 100:
        return ClientReply(code, tuple(lines))
    enhanced = found.group(1)
    stripped: list[str] = []
    for line in lines:
        if line == enhanced:
            stripped.append("")
        elif line.startswith(enhanced + " "):
            stripped.append(line[len(enhanced) + 1 :])
        else:
            stripped.append(line)
    return ClientReply(code, tuple(stripped), enhanced)


def dot_stuff(content: bytes) -> bytes:
    """The DATA wire form of ``content``: dot-stuffed, CRLF-terminated, then ``.`` CRLF.

    >>> dot_stuff(b".hidden\\r\\nline")
    b'..hidden\\r\\nline\\r\\n.\\r\\n'
    """
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if stuffed and not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


def insecure_client_context() -> ssl.SSLContext:
    """A client TLS context that checks no certificate: for tests against throw-away keys.

    Pass a context trusting your test CA (``trustme``'s ``ca.configure_trust(ctx)``) to check
    the server's certificate instead.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


class SMTPTestClient:
    """The client side of an SMTP dialog: one ``async`` method per command.

    Subclasses supply the byte pipe (:meth:`_pipe_write`, :meth:`_pipe_read`,
    :meth:`_pipe_close`); everything else, TLS included, is here. Every method that sends a
    command returns the server's :class:`ClientReply`; none raises on a negative reply. A server
    that closes the connection while a reply is awaited raises :class:`ServerDisconnected`, and a
    reply that does not come within :attr:`timeout` seconds raises :class:`TimeoutError`; both
    carry the transcript.
    """

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transcript: list[TranscriptEntry] | None = None,
        server_hostname: str = "localhost",
    ) -> None:
        self.timeout = timeout
        """Seconds one wait may take."""
        self.transcript: list[TranscriptEntry] = []
        """The dialog of this connection, in order (plain text under TLS too)."""
        self.server_hostname = server_hostname
        """The name sent in TLS SNI and checked when the TLS context checks host names."""
        self.greeting: ClientReply | None = None
        """The server's greeting, once read."""
        self.ssl_object: ssl.SSLObject | None = None
        """The TLS state after :meth:`starttls` (or implicit TLS); ``None`` in the clear."""
        self.recipients_accepted: int = 0
        """RCPT commands answered 2xx in the current transaction (for :meth:`lmtp_data`)."""
        self._shared = transcript
        self._reader = ReplyReader()
        self._eof = False
        self._closed = False
        self._in_bio: ssl.MemoryBIO | None = None
        self._out_bio: ssl.MemoryBIO | None = None
        self._tls_closed = False

    # --- the pipe (subclasses) ------------------------------------------------------------------

    def _pipe_write(self, data: bytes) -> None:
        raise NotImplementedError

    async def _pipe_read(self) -> bytes:
        """Wait for bytes from the server; ``b""`` at end of stream."""
        raise NotImplementedError

    def _pipe_close(self) -> None:
        raise NotImplementedError

    def _pipe_write_eof(self) -> None:
        raise NotImplementedError

    def send_eof(self) -> None:
        """Half-close: tell the server nothing more comes; replies can still be read."""
        self._close_tls()
        self._pipe_write_eof()

    # --- context manager ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Read the greeting (if not yet read) and return the client."""
        await self.read_greeting()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the connection (no QUIT is sent)."""
        self.close()

    # --- state ----------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the server closed the connection (end of stream seen) or :meth:`close`."""
        return self._eof or self._closed

    @property
    def tls(self) -> bool:
        """True while the connection is encrypted."""
        return self.ssl_object is not None

    def transcript_text(self) -> str:
        """The transcript as text, for assertion messages."""
        return format_transcript(self.transcript)

    def _record(self, direction: Direction, data: bytes) -> None:
        entry = TranscriptEntry(direction, data)
        self.transcript.append(entry)
        if self._shared is not None:
            self._shared.append(entry)

    # --- low level ------------------------------------------------------------------------------

    def send_bytes(self, data: bytes) -> None:
        """Send ``data`` exactly as given; no reply is read."""
        if self._closed:
            raise ServerDisconnected("the client connection is closed")
        self._record("client", data)
        if self.ssl_object is not None:
            self.ssl_object.write(data)
            self._flush_tls()
        else:
            self._pipe_write(data)

    def _flush_tls(self) -> None:
        out = self._out_bio
        if out is not None and out.pending:
            self._pipe_write(out.read())

    async def _fill(self, deadline: float) -> None:
        """Wait for more bytes from the server and feed them to the reply reader."""
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError(self._why("no reply within the timeout"))
        try:
            raw = await asyncio.wait_for(self._pipe_read(), remaining)
        except asyncio.TimeoutError:
            raise TimeoutError(self._why("no reply within the timeout")) from None
        if not raw:
            self._eof = True
            return
        if self.ssl_object is None:
            self._received(raw)
            return
        assert self._in_bio is not None
        self._in_bio.write(raw)
        self._read_tls()

    def _read_tls(self) -> None:
        ssl_object = self.ssl_object
        assert ssl_object is not None
        while True:
            try:
                plain = ssl_object.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError as error:
                if not isinstance(error, ssl.SSLZeroReturnError):
                    self._eof = True
                    raise ServerDisconnected(self._why(f"TLS error: {error}")) from error
                plain = b""
            if not plain:  # the server's close_notify: answer it, the stream is over
                self._close_tls()
                self._eof = True
                break
            self._received(plain)
        self._flush_tls()

    def _close_tls(self) -> None:
        if self.ssl_object is None or self._tls_closed:
            return
        self._tls_closed = True
        try:
            self.ssl_object.unwrap()
        except (ssl.SSLError, OSError, ValueError):
            pass
        try:
            self._flush_tls()
        except (OSError, ServerDisconnected):
            pass

    def _received(self, data: bytes) -> None:
        self._record("server", data)
        self._reader.feed(data)

    def _why(self, message: str) -> str:
        return f"{message}\n--- transcript ---\n{self.transcript_text()}"

    async def read_reply(self) -> ClientReply:
        """Wait for the next complete reply."""
        deadline = asyncio.get_running_loop().time() + self.timeout
        while True:
            reply = self._reader.next_reply()
            if reply is not None:
                return reply
            if self._eof:
                raise ServerDisconnected(self._why("the server closed the connection"))
            await self._fill(deadline)

    async def read_replies(self, count: int) -> tuple[ClientReply, ...]:
        """Wait for the next ``count`` replies."""
        return tuple([await self.read_reply() for _ in range(count)])

    async def read_until_closed(self) -> bytes:
        """Wait until the server closes the connection; return what it sent meanwhile."""
        deadline = asyncio.get_running_loop().time() + self.timeout
        start = len(self.transcript)
        while not self._eof:
            await self._fill(deadline)
        return b"".join(
            entry.data for entry in self.transcript[start:] if entry.direction == "server"
        )

    async def read_greeting(self) -> ClientReply:
        """The server's greeting (read on first use)."""
        if self.greeting is None:
            self.greeting = await self.read_reply()
        return self.greeting

    def close(self) -> None:
        """Close the connection (a TLS close_notify is sent first); safe to call twice."""
        if self._closed:
            return
        try:
            self._close_tls()
        finally:
            self._closed = True
            self._pipe_close()

    # --- commands -------------------------------------------------------------------------------

    async def send(self, line: str) -> ClientReply:
        """Send one raw command line (CRLF is added) and read one reply."""
        await self.read_greeting()
        self.send_bytes(line.encode("utf-8") + b"\r\n")
        return await self.read_reply()

    async def pipeline(self, *lines: str) -> tuple[ClientReply, ...]:
        """Send several command lines in one write (RFC 2920) and read one reply for each."""
        await self.read_greeting()
        self.send_bytes(b"".join(line.encode("utf-8") + b"\r\n" for line in lines))
        return await self.read_replies(len(lines))

    async def ehlo(self, hostname: str = "client.test") -> ClientReply:
        """``EHLO hostname``; the reply's :attr:`ClientReply.keywords` are the extensions."""
        self.recipients_accepted = 0
        return await self.send(f"EHLO {hostname}")

    async def helo(self, hostname: str = "client.test") -> ClientReply:
        """``HELO hostname``."""
        self.recipients_accepted = 0
        return await self.send(f"HELO {hostname}")

    async def lhlo(self, hostname: str = "client.test") -> ClientReply:
        """``LHLO hostname`` (LMTP)."""
        self.recipients_accepted = 0
        return await self.send(f"LHLO {hostname}")

    async def mail(self, address: str, *params: str) -> ClientReply:
        """``MAIL FROM:<address> [params]``; ``""`` is the null reverse path."""
        reply = await self.send(" ".join([f"MAIL FROM:<{address}>", *params]))
        if reply.ok:
            self.recipients_accepted = 0
        return reply

    async def rcpt(self, address: str, *params: str) -> ClientReply:
        """``RCPT TO:<address> [params]``."""
        reply = await self.send(" ".join([f"RCPT TO:<{address}>", *params]))
        if reply.ok:
            self.recipients_accepted += 1
        return reply

    async def data(self, content: bytes | str) -> ClientReply:
        """``DATA``, then ``content`` dot-stuffed and terminated; returns the final reply (or the
        refusal of ``DATA`` itself). ``str`` content is sent as UTF-8 with CRLF line ends."""
        reply = await self.send("DATA")
        if reply.code != 354:
            return reply
        self.send_bytes(dot_stuff(_content_bytes(content)))
        self.recipients_accepted = 0
        return await self.read_reply()

    async def lmtp_data(self, content: bytes | str) -> tuple[ClientReply, ...]:
        """LMTP ``DATA``: one final reply per accepted recipient (RFC 2033 section 4.2)."""
        expected = self.recipients_accepted
        reply = await self.send("DATA")
        if reply.code != 354:
            return (reply,)
        self.send_bytes(dot_stuff(_content_bytes(content)))
        self.recipients_accepted = 0
        return await self.read_replies(max(expected, 1))

    async def bdat(self, chunk: bytes, *, last: bool = False) -> ClientReply:
        """``BDAT size [LAST]`` followed by the chunk, in one write (RFC 3030)."""
        await self.read_greeting()
        head = f"BDAT {len(chunk)}{' LAST' if last else ''}\r\n".encode("ascii")
        self.send_bytes(head + chunk)
        if last:
            self.recipients_accepted = 0
        return await self.read_reply()

    async def rset(self) -> ClientReply:
        """``RSET``."""
        self.recipients_accepted = 0
        return await self.send("RSET")

    async def noop(self, text: str | None = None) -> ClientReply:
        """``NOOP [text]``."""
        return await self.send("NOOP" if text is None else f"NOOP {text}")

    async def vrfy(self, address: str) -> ClientReply:
        """``VRFY address``."""
        return await self.send(f"VRFY {address}")

    async def help(self, command: str | None = None) -> ClientReply:
        """``HELP [command]``."""
        return await self.send("HELP" if command is None else f"HELP {command}")

    async def quit(self) -> ClientReply:
        """``QUIT``; the server closes the connection after its reply."""
        return await self.send("QUIT")

    async def starttls(
        self, context: ssl.SSLContext | None = None, *, server_hostname: str | None = None
    ) -> ClientReply:
        """``STARTTLS``; on ``220`` the TLS handshake follows at once.

        ``context`` defaults to :func:`insecure_client_context`. After a successful handshake
        the client must greet again (RFC 3207 section 4.2). A failed handshake raises
        :class:`ssl.SSLError`.
        """
        reply = await self.send("STARTTLS")
        if reply.code != 220:
            return reply
        self._reader.clear()
        await self.start_tls(context, server_hostname=server_hostname)
        self.recipients_accepted = 0
        return reply

    async def start_tls(
        self, context: ssl.SSLContext | None = None, *, server_hostname: str | None = None
    ) -> None:
        """Run the TLS handshake now (implicit TLS, or after a ``220`` to STARTTLS)."""
        if self.ssl_object is not None:
            raise RuntimeError("TLS is already active")
        context = insecure_client_context() if context is None else context
        self._in_bio, self._out_bio = ssl.MemoryBIO(), ssl.MemoryBIO()
        ssl_object = context.wrap_bio(
            self._in_bio,
            self._out_bio,
            server_side=False,
            server_hostname=server_hostname or self.server_hostname,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            try:
                ssl_object.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush_tls()
                remaining = deadline - loop.time()
                try:
                    raw = await asyncio.wait_for(self._pipe_read(), max(remaining, 0.0))
                except asyncio.TimeoutError:
                    raise TimeoutError(self._why("TLS handshake timed out")) from None
                if not raw:
                    self._eof = True
                    raise ServerDisconnected(self._why("closed during the TLS handshake")) from None
                self._in_bio.write(raw)
        self.ssl_object = ssl_object
        self._flush_tls()
        if self._in_bio.pending:
            self._read_tls()

    async def auth(
        self,
        mechanism: str,
        login: str | bytes,
        password: str | bytes,
        *,
        initial_response: bool = True,
    ) -> ClientReply:
        """``AUTH`` with PLAIN, LOGIN or CRAM-MD5; returns the final reply.

        With ``initial_response`` (the default) PLAIN and LOGIN put the first answer on the
        AUTH line (RFC 4954 section 4). An unexpected intermediate reply is returned as is.
        """
        user, secret = _as_bytes(login), _as_bytes(password)
        name = mechanism.upper()
        if name == "PLAIN":
            token = _b64(b"\x00" + user + b"\x00" + secret)
            if initial_response:
                return await self.send(f"AUTH PLAIN {token}")
            reply = await self.send("AUTH PLAIN")
            return await self.send(token) if reply.code == 334 else reply
        if name == "LOGIN":
            if initial_response:
                reply = await self.send(f"AUTH LOGIN {_b64(user)}")
            else:
                reply = await self.send("AUTH LOGIN")
                if reply.code != 334:
                    return reply
                reply = await self.send(_b64(user))
            return await self.send(_b64(secret)) if reply.code == 334 else reply
        if name == "CRAM-MD5":
            reply = await self.send("AUTH CRAM-MD5")
            if reply.code != 334:
                return reply
            challenge = base64.b64decode(reply.lines[0])
            digest = hmac.new(secret, challenge, hashlib.md5).hexdigest().encode("ascii")
            return await self.send(_b64(user + b" " + digest))
        raise ValueError(f"no built-in client support for AUTH {mechanism}; use send()")


def _content_bytes(content: bytes | str) -> bytes:
    if isinstance(content, bytes):
        return content
    return "\r\n".join(content.splitlines()).encode("utf-8") + (b"\r\n" if content else b"")


class SocketClient(SMTPTestClient):
    """The test client over a real TCP connection (asyncio streams): :meth:`open`.

    ::

        async with await SocketClient.open("127.0.0.1", port) as client:
            assert (await client.ehlo()).code == 250
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transcript: list[TranscriptEntry] | None = None,
        server_hostname: str = "localhost",
    ) -> None:
        super().__init__(timeout=timeout, transcript=transcript, server_hostname=server_hostname)
        self._stream_reader = reader
        self._writer = writer

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        tls_context: ssl.SSLContext | None = None,
        server_hostname: str = "localhost",
        transcript: list[TranscriptEntry] | None = None,
    ) -> SocketClient:
        """Connect to ``host:port``; with ``tls_context``, speak implicit TLS from the first byte.

        The greeting is read before returning.
        """
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"could not connect to {host}:{port} within {timeout}s") from None
        client = cls(
            reader,
            writer,
            timeout=timeout,
            transcript=transcript,
            server_hostname=server_hostname,
        )
        try:
            if tls_context is not None:
                await client.start_tls(tls_context)
            await client.read_greeting()
        except BaseException:
            client.close()
            raise
        return client

    def _pipe_write(self, data: bytes) -> None:
        if self._writer.is_closing():
            raise ServerDisconnected(self._why("the connection is closed"))
        self._writer.write(data)

    async def _pipe_read(self) -> bytes:
        try:
            return await self._stream_reader.read(_READ_SIZE)
        except ConnectionError:
            return b""

    def _pipe_close(self) -> None:
        self._writer.close()

    def _pipe_write_eof(self) -> None:
        if self._writer.can_write_eof():
            self._writer.write_eof()

    async def wait_closed(self) -> None:
        """Wait until the socket is closed after :meth:`close`."""
        try:
            await asyncio.wait_for(self._writer.wait_closed(), self.timeout)
        except (ConnectionError, asyncio.TimeoutError):
            pass
