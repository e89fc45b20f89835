"""The built-in handlers: :class:`Sink`, :class:`Debugging`, :class:`Proxy`, :class:`Message`,
:class:`AsyncMessage` and :class:`Mailbox`.

They keep the names, constructors and ``from_cli`` classmethods that aiosmtpd users know, and they
never block the event loop: :class:`Mailbox` writes to disk and :class:`Proxy` talks to its relay in
a worker thread. A message is answered ``250`` only once it is safely stored or relayed; a failure
answers ``4xx`` or ``5xx`` and is logged (exception text never reaches the client).

This module holds handlers only: no protocol logic, no server or socket setup.
"""

from __future__ import annotations

import asyncio
import contextvars
import email
import email.message
import itertools
import logging
import mailbox
import os
import re
import smtplib
import socket
import sys
import threading
import time
from abc import ABC, abstractmethod
from argparse import ArgumentParser
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, Generic, NamedTuple, TextIO, cast

from typing_extensions import Self, TypeVar

from typed_smtpd.monitoring import format_peer
from typed_smtpd.proto.replies import INTERNAL_ERROR, Reply
from typed_smtpd.stream import StreamError

if TYPE_CHECKING:
    from typed_smtpd.session import Envelope, Session
    from typed_smtpd.smtp import SMTP
    from typed_smtpd.stream import MessageStream

__all__ = [
    "AsyncMessage",
    "Debugging",
    "Mailbox",
    "Message",
    "MessageBase",
    "Proxy",
    "Sink",
]

log: logging.Logger = logging.getLogger("mail.log")

#: The reply to a message that was stored or relayed.
OK_REPLY: Final = "250 OK"
#: The reply when storing a message failed: the client keeps it and tries again later.
LOCAL_ERROR_REPLY: Final = INTERNAL_ERROR.line()
#: The reply when the relay cannot be reached, stops answering or drops the connection.
RELAY_UNAVAILABLE_REPLY: Final = Reply(451, "Relay unavailable, try again later", "4.4.1").line()
#: The reply when no recipient is left to relay to.
NO_RECIPIENTS_REPLY: Final = Reply(554, "No valid recipients", "5.5.1").line()
#: The reply when the message needs SMTPUTF8 and the relay does not offer it (RFC 6531 section 3.2).
RELAY_NO_SMTPUTF8_REPLY: Final = Reply(554, "Relay does not support SMTPUTF8", "5.6.7").line()
#: The reply to BINARYMIME content: it cannot travel through DATA unchanged (RFC 3030 section 3).
BINARYMIME_REPLY: Final = Reply(554, "Relay cannot carry BINARYMIME content", "5.6.1").line()

#: Seconds the Proxy waits for any one network operation with its relay. RFC 5321 section 4.5.3.2
#: allows far longer waits between a client and a server; a relay on the same network that is
#: silent this long is treated as unavailable, and the client retries later.
RELAY_TIMEOUT: Final = 60.0

#: The replies a relay's refusal may be passed through as, at the end of DATA (RFC 5321 4.3.2).
_DATA_END_CODES: Final = frozenset({450, 451, 452, 550, 551, 552, 553, 554})
#: Relayed reply text is cut to this length, well under the 512-octet reply line of RFC 5321.
_MAX_RELAY_TEXT: Final = 200

_LINE_BREAK: Final = re.compile(r"\r\n|\r|\n")
_LINE_BREAK_BYTES: Final = re.compile(rb"\r\n|\r|\n")
_ENHANCED_PREFIX: Final = re.compile(r"([245])\.\d{1,3}\.\d{1,3}(?:\s+|$)")
#: C0 controls (tab aside) and DEL: shown escaped so that message content cannot drive a terminal.
_CONTROL_CHARS: Final = {c: f"\\x{c:02x}" for c in (*range(0x09), *range(0x0A, 0x20), 0x7F)}
_CR_LF_NUL: Final = {0x0D: None, 0x0A: None, 0x00: None}

#: The most of a header block :class:`Mailbox` holds, when it streams, to leave out forged trace
#: fields: a header block longer than this (Postfix's ``header_size_limit``) is stored as it came.
_HEADER_BLOCK_LIMIT: Final = 102_400
#: Makes the names of the Maildir files :class:`Mailbox` writes itself unique within the process.
_MAILDIR_COUNTER: Final = itertools.count()

#: Serialises ``Maildir.add`` across threads: the unique file name it picks relies on a counter
#: shared by every Maildir in the process, which is not thread-safe.
_MAILDIR_ADD_LOCK: Final = threading.Lock()

#: The names (lower case) of the trace headers the Message handlers add.
_TRACE_NAMES: Final = frozenset({b"x-peer", b"x-mailfrom", b"x-rcptto"})
#: A line the :mod:`email` parser reads as part of a header block (its ``headerRE``): a field, a
#: continuation line, or a misplaced ``From`` envelope line. Any other line ends the block.
_HEADER_BLOCK_LINE: Final = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")

_MessageT = TypeVar(
    "_MessageT",
    bound="email.message.Message[Any, Any]",
    default="email.message.Message[str, str]",
)


def _peer_host(session: Session) -> str:
    """The client's IP address (behind a PROXY protocol proxy, the one the proxy speaks for),
    the Unix socket peer name, or ``"unknown"``."""
    proxied = session.proxy_data.src_addr if session.proxy_data is not None else None
    if proxied is not None and not isinstance(proxied, bytes):
        return str(proxied)
    peer = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    if isinstance(peer, str) and peer:
        return peer
    return "unknown"


def _peer_display(session: Session) -> str:
    """The peer as ``host:port`` (``[v6]:port`` for IPv6), or as :func:`_peer_host` gives it."""
    peer = session.peer
    if isinstance(peer, tuple) and len(peer) >= 2:
        return format_peer(peer)
    return _peer_host(session)


def _header_value(value: str) -> str:
    """``value`` without CR, LF or NUL, so that it cannot start a header of its own."""
    return value.translate(_CR_LF_NUL)


def _trace_headers(session: Session, envelope: Envelope) -> list[tuple[str, str]]:
    """The ``X-Peer``, ``X-MailFrom`` and ``X-RcptTo`` headers for one message, in that order."""
    return [
        ("X-Peer", _header_value(_peer_host(session))),
        ("X-MailFrom", _header_value(envelope.mail_from or "")),
        ("X-RcptTo", _header_value(", ".join(envelope.rcpt_tos))),
    ]


def _received_bytes(envelope: Envelope) -> bytes:
    """The content as received: ``original_content``, else ``content`` encoded back."""
    if envelope.original_content is not None:
        return envelope.original_content
    if isinstance(envelope.content, str):
        return envelope.content.encode("utf-8", "surrogateescape")
    return envelope.content or b""


def _without_trace_headers(content: bytes) -> bytes:
    """``content`` without its ``X-Peer``, ``X-MailFrom`` and ``X-RcptTo`` fields.

    The header block and its fields are found as the :mod:`email` parser finds them; a dropped
    field goes with its continuation lines. Every other byte is kept as it is.
    """
    dropped: list[tuple[int, int]] = []
    pos = 0
    dropping = False
    while pos < len(content):
        line_break = _LINE_BREAK_BYTES.search(content, pos)
        end = line_break.end() if line_break else len(content)
        line = content[pos:end]
        if not _HEADER_BLOCK_LINE.match(line):
            break  # the separator, or the first line of a body without one
        if line[:1] not in (b" ", b"\t"):  # any other line ends the field before it
            colon = line.find(b":")
            dropping = (
                colon > 0 and not line.startswith(b"From ") and line[:colon].lower() in _TRACE_NAMES
            )
        if dropping:
            dropped.append((pos, end))
        pos = end
    if not dropped:
        return content
    pieces, last = [], 0
    for start, stop in dropped:
        pieces.append(content[last:start])
        last = stop
    pieces.append(content[last:])
    return b"".join(pieces)


def _stored_bytes(session: Session, envelope: Envelope) -> bytes:
    """What :class:`Mailbox` stores: the trace headers, then the content exactly as received.

    The trace header lines end like the content's first line (CRLF unless that is a bare LF).
    """
    content = _without_trace_headers(_received_bytes(envelope))
    line_break = _LINE_BREAK_BYTES.search(content)
    eol = b"\n" if line_break and line_break.group() == b"\n" else b"\r\n"
    return _trace_bytes(session, envelope, eol) + content


def _trace_bytes(session: Session, envelope: Envelope, eol: bytes) -> bytes:
    return b"".join(
        name.encode("ascii") + b": " + _header_bytes(value) + eol
        for name, value in _trace_headers(session, envelope)
    )


def _header_block_end(content: bytes | bytearray) -> int | None:
    """Where the header block of the start of a message, ``content``, ends (the offset of its
    first line that is no header line), or ``None`` while that depends on what follows."""
    pos = 0
    size = len(content)
    while pos < size:
        line_break = _LINE_BREAK_BYTES.search(content, pos)
        if line_break is None or (line_break.end() == size and content[-1] == 13):
            return None  # a line not known to be complete: a CR may yet be CRLF
        if not _HEADER_BLOCK_LINE.match(content, pos, line_break.end()):
            return pos
        pos = line_break.end()
    return None


class _StoredForm:
    """:func:`_stored_bytes` for content that arrives in pieces: the header block is held
    (up to :data:`_HEADER_BLOCK_LIMIT`) until its end is known, then passed on with the trace
    headers first; the body passes straight through."""

    def __init__(self, session: Session, envelope: Envelope) -> None:
        self._session = session
        self._envelope = envelope
        self._head: bytearray | None = bytearray()

    def feed(self, piece: bytes) -> bytes:
        head = self._head
        if head is None:
            return piece
        head += piece
        if _header_block_end(head) is None and len(head) <= _HEADER_BLOCK_LIMIT:
            return b""
        return self._release()

    def finish(self) -> bytes:
        return b"" if self._head is None else self._release()

    def _release(self) -> bytes:
        head, self._head = self._head, None
        assert head is not None
        content = _without_trace_headers(bytes(head))
        line_break = _LINE_BREAK_BYTES.search(content)
        eol = b"\n" if line_break and line_break.group() == b"\n" else b"\r\n"
        return _trace_bytes(self._session, self._envelope, eol) + content


class _MaildirFile:
    """One message being written into a Maildir: under ``tmp/`` until :meth:`commit` flushes
    it to disk and moves it into ``new/``; :meth:`discard` removes it (blocking: run these in a
    thread)."""

    def __init__(self, mail_dir: str) -> None:
        self._mail_dir = mail_dir
        now = time.time()
        self.name = (
            f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_MAILDIR_COUNTER)}."
            f"{_maildir_host()}"
        )
        self._path = os.path.join(mail_dir, "tmp", self.name)
        self._fd: int | None = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)

    def write(self, data: bytes) -> None:
        assert self._fd is not None
        with memoryview(data) as view:
            while view:
                view = view[os.write(self._fd, view) :]

    def commit(self, data: bytes) -> None:
        self.write(data)
        fd, self._fd = self._fd, None
        assert fd is not None
        try:
            if os.name == "posix":
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(self._path, os.path.join(self._mail_dir, "new", self.name))
        if os.name == "posix":
            _fsync(os.path.join(self._mail_dir, "new"))

    def discard(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            pass


def _maildir_host() -> str:
    # As mailbox.Maildir names its files: "/" and ":" cannot be part of the name.
    return socket.gethostname().replace("/", r"\057").replace(":", r"\072")


def _header_bytes(value: str) -> bytes:
    """``value`` as UTF-8 (RFC 6532); characters that cannot be encoded are shown escaped."""
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace")


class Sink:
    """Accepts every message and discards it: the "no-op" handler.

    It implements no hook, so the server gives its default reply to every command.
    """

    @classmethod
    def from_cli(cls, parser: ArgumentParser, *args: str) -> Self:
        """Build a Sink from the command line, which takes no positional arguments."""
        if args:
            parser.error("the Sink handler takes no arguments")
        return cls()


class Debugging:
    """Prints each message, with its envelope, to a text stream.

    ``stream`` defaults to whatever :data:`sys.stdout` is when a message arrives. The message is
    shown with an ``X-Peer`` header added after its headers; control characters are shown escaped
    and bytes that are not UTF-8 as ``\\xNN``. Each message is written in one piece between
    ``MESSAGE FOLLOWS`` and ``END MESSAGE`` marker lines, then the stream is flushed.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    @property
    def stream(self) -> TextIO:
        """Where messages are printed; setting ``None`` means :data:`sys.stdout` again."""
        return self._stream if self._stream is not None else sys.stdout

    @stream.setter
    def stream(self, stream: TextIO | None) -> None:
        self._stream = stream

    @classmethod
    def from_cli(cls, parser: ArgumentParser, *args: str) -> Self:
        """Build from the command line: no argument, ``stdout`` or ``stderr``."""
        if not args:
            return cls()
        if len(args) == 1 and args[0] in ("stdout", "stderr"):
            return cls(getattr(sys, args[0]))
        parser.error("the Debugging handler takes one optional argument: stdout or stderr")

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Print the envelope and the message, then accept it."""
        stream = self.stream
        stream.write(self.format_message(session, envelope))
        stream.flush()
        return OK_REPLY

    def format_message(self, session: Session, envelope: Envelope) -> str:
        """The text :meth:`handle_DATA` prints for one message."""
        out = [
            "---------- MESSAGE FOLLOWS ----------",
            f"Peer: {_printable(_peer_display(session))}",
        ]
        out.append(f"MAIL FROM: {_printable(envelope.mail_from or '')}")
        if envelope.mail_options:
            out.append(f"MAIL options: {_printable(' '.join(envelope.mail_options))}")
        out.extend(f"RCPT TO: {_printable(rcpt)}" for rcpt in envelope.rcpt_tos)
        if envelope.rcpt_options:
            out.append(f"RCPT options: {_printable(' '.join(envelope.rcpt_options))}")
        out.append("")
        content = envelope.content if envelope.content is not None else envelope.original_content
        lines = [_printable(line) for line in _split_lines(content or b"")]
        peer_header = f"X-Peer: {_printable(_peer_host(session))}"
        try:
            lines.insert(lines.index(""), peer_header)
        except ValueError:
            lines.append(peer_header)
        out.extend(lines)
        out.append("------------ END MESSAGE ------------")
        return "\n".join(out) + "\n"


def _split_lines(content: bytes | str) -> list[str]:
    """The lines of ``content``, split at CRLF, bare CR and bare LF alike, decoded for display."""
    text = content.decode("utf-8", "backslashreplace") if isinstance(content, bytes) else content
    lines = _LINE_BREAK.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _printable(text: str) -> str:
    """``text`` with control characters escaped as ``\\xNN``."""
    return text.translate(_CONTROL_CHARS)


class MessageBase(Generic[_MessageT]):
    """Turns the received content into an :mod:`email` message object.

    ``message_class`` is the class the content is parsed into (by :func:`email.message_from_bytes`
    or :func:`email.message_from_string`); it defaults to :class:`email.message.Message`.
    """

    def __init__(self, message_class: type[_MessageT] | None = None) -> None:
        self.message_class: type[_MessageT] = (
            message_class
            if message_class is not None
            else cast("type[_MessageT]", email.message.Message)
        )

    def prepare_message(self, session: Session, envelope: Envelope) -> _MessageT:
        """Parse the content and add the ``X-Peer``, ``X-MailFrom`` and ``X-RcptTo`` headers.

        ``X-Peer`` is the client's IP address; ``X-RcptTo`` lists the recipients separated by
        ``", "``. Headers of these names already in the content are removed first, so a client
        cannot forge them.
        """
        data = envelope.content if envelope.content is not None else envelope.original_content
        if isinstance(data, str):
            message = email.message_from_string(data, _class=self.message_class)
        else:
            message = email.message_from_bytes(data or b"", _class=self.message_class)
        for name, value in _trace_headers(session, envelope):
            del message[name]
            message[name] = value
        return message


class Message(MessageBase[_MessageT], ABC):
    """Base class of handlers that receive each message as an :mod:`email` message object.

    Subclasses implement :meth:`handle_message`; it runs on the event loop, so it must not block
    (:class:`AsyncMessage` is the asynchronous variant).
    """

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Prepare the message, pass it to :meth:`handle_message`, then accept it."""
        message = self.prepare_message(session, envelope)
        self.handle_message(message)
        return OK_REPLY

    @abstractmethod
    def handle_message(self, message: _MessageT) -> None:
        """Do something with one received message."""


class AsyncMessage(MessageBase[_MessageT], ABC):
    """Like :class:`Message`, but :meth:`handle_message` is a coroutine.

    ``loop`` is accepted for compatibility; :attr:`loop` is the running loop when it is not given.
    """

    def __init__(
        self,
        message_class: type[_MessageT] | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(message_class)
        self._loop = loop

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop given to the constructor (or set later), else the running one."""
        return self._loop if self._loop is not None else asyncio.get_running_loop()

    @loop.setter
    def loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Prepare the message, await :meth:`handle_message`, then accept it."""
        message = self.prepare_message(session, envelope)
        await self.handle_message(message)
        return OK_REPLY

    @abstractmethod
    async def handle_message(self, message: _MessageT) -> None:
        """Do something with one received message."""


class Mailbox(Message[_MessageT]):
    """Stores each message in a Maildir (created if missing).

    The stored file holds the message exactly as it was received, byte for byte, with the
    ``X-Peer``, ``X-MailFrom`` and ``X-RcptTo`` lines of :meth:`prepare_message` put before its
    headers; fields of those names that came with the message are left out (with their
    continuation lines). Only when a subclass overrides :meth:`prepare_message`, or changes the
    message object before :meth:`handle_message` stores it, is the message object itself stored,
    as the :mod:`email` package writes it. :meth:`handle_message` called directly stores the
    object it is given.

    The message streams to disk as it arrives (:meth:`handle_DATA_stream`), so a connection
    holds a bounded part of it whatever its size: it is written under ``tmp/`` piece by piece,
    flushed to disk, and moved into ``new/`` in one atomic step only once the content is over;
    the file is removed if the client leaves first or the message is refused. Every disk
    operation runs in a worker thread, never on the event loop. The file and the directory are
    flushed to disk before the client is answered ``250``. If anything fails the client gets
    ``451 4.3.0`` and keeps the message to try again later; the error is logged.

    A subclass that overrides :meth:`prepare_message` or :meth:`handle_message` gets the
    message object at the end instead (:meth:`handle_DATA`), as it expects: set
    ``handle_DATA_stream = None`` to choose that in any subclass. The forged trace fields are
    looked for in the first 100 KiB of the header block when streaming.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        overrides = {"prepare_message", "handle_message"} & set(vars(cls))
        if overrides and "handle_DATA_stream" not in vars(cls):
            cls.handle_DATA_stream = None  # type: ignore[assignment]

    def __init__(
        self, mail_dir: str | os.PathLike[str], message_class: type[_MessageT] | None = None
    ) -> None:
        super().__init__(message_class)
        self.mail_dir: str = os.path.abspath(mail_dir)
        self.mailbox: mailbox.Maildir = mailbox.Maildir(self.mail_dir)
        # mailbox.Maildir creates tmp/, new/ and cur/ only for a directory that does not exist
        # yet: an existing empty directory (a fresh volume, say) needs them too.
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(self.mail_dir, sub), exist_ok=True)

    @classmethod
    def from_cli(cls, parser: ArgumentParser, *args: str) -> Self:
        """Build from the command line: exactly one argument, the Maildir's path."""
        if len(args) != 1:
            parser.error("the Mailbox handler takes exactly one argument: the Maildir path")
        return cls(args[0])

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Store the message off the event loop; ``250`` once it is on disk, ``451`` otherwise."""
        token = None
        try:
            message = self.prepare_message(session, envelope)
            if type(self).prepare_message is MessageBase.prepare_message:
                received = _Received(message, _stored_bytes(session, envelope), _snapshot(message))
                token = _RECEIVED.set(received)
            await asyncio.to_thread(self.handle_message, message)
        except Exception:
            log.exception(
                "Mailbox %s: could not store a message from %s", self.mail_dir, _peer_host(session)
            )
            return LOCAL_ERROR_REPLY
        finally:
            if token is not None:
                _RECEIVED.reset(token)
        return OK_REPLY

    async def handle_DATA_stream(
        self, server: SMTP, session: Session, envelope: Envelope, stream: MessageStream
    ) -> str:
        """Write the message into the Maildir as it arrives; ``250`` once it is on disk."""
        stored = _StoredForm(session, envelope)
        target: _MaildirFile | None = None
        try:
            target = await asyncio.to_thread(_MaildirFile, self.mail_dir)
            async for piece in stream:
                data = stored.feed(piece)
                if data:
                    await asyncio.to_thread(target.write, data)
            await asyncio.to_thread(target.commit, stored.finish())
        except StreamError:
            if target is not None:
                await asyncio.to_thread(target.discard)
            raise  # the server answers, and the client learns why
        except Exception:
            log.exception(
                "Mailbox %s: could not store a message from %s", self.mail_dir, _peer_host(session)
            )
            if target is not None:
                await asyncio.to_thread(target.discard)
            return LOCAL_ERROR_REPLY
        except BaseException:  # cancelled (the connection timed out): no thread hop any more
            if target is not None:
                target.discard()
            raise
        return OK_REPLY

    def handle_message(self, message: _MessageT) -> None:
        """Add ``message`` to the Maildir and flush it to disk (blocking: run it in a thread).

        From :meth:`handle_DATA`, the received bytes are stored unless ``message`` was changed.
        """
        received = _RECEIVED.get()
        data: email.message.Message[Any, Any] | bytes = message
        if (
            received is not None
            and received.message is message
            and received.snapshot == _snapshot(message)
        ):
            data = received.data
            if mailbox.linesep == b"\r\n":  # Maildir writes each LF as CRLF (Windows)
                data = data.replace(b"\r\n", b"\n")
        with _MAILDIR_ADD_LOCK:
            key = self.mailbox.add(data)
        if os.name != "posix":  # fsync of a read-only descriptor or a directory is POSIX only
            return
        subdir, name = "new", key
        if isinstance(message, mailbox.MaildirMessage):
            subdir = message.get_subdir()
            if info := message.get_info():
                name = key + self.mailbox.colon + info
        directory = os.path.join(self.mail_dir, subdir)
        try:
            _fsync(os.path.join(directory, name))
        except FileNotFoundError:
            # A mail reader already took it from new/ to cur/: it is in its hands now.
            return
        _fsync(directory)

    def reset(self) -> None:
        """Delete every message in the Maildir."""
        self.mailbox.clear()


class _Received(NamedTuple):
    """A message being stored by :meth:`Mailbox.handle_DATA`."""

    message: email.message.Message[Any, Any]
    """The message object :meth:`Mailbox.handle_message` is given."""
    data: bytes
    """The bytes to store for it, when it is not changed."""
    snapshot: list[object]
    """What :func:`_snapshot` said of it before :meth:`Mailbox.handle_message` ran."""


#: The message :meth:`Mailbox.handle_DATA` is storing, seen by the worker thread that stores it.
_RECEIVED: Final[contextvars.ContextVar[_Received | None]] = contextvars.ContextVar(
    "typed_smtpd_mailbox_received", default=None
)


def _snapshot(message: email.message.Message[Any, Any]) -> list[object]:
    """Everything of ``message`` that Maildir stores, to tell whether a subclass changed it."""
    state: list[object] = []
    for part in message.walk():
        payload = None if part.is_multipart() else part.get_payload()
        state.append((part.items(), payload, part.preamble, part.epilogue))
    if isinstance(message, mailbox.MaildirMessage):
        state.append((message.get_subdir(), message.get_info()))
    return state


def _fsync(path: str) -> None:
    """Flush a file or a directory to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Proxy:
    """Relays each message to another SMTP server, ``remote_hostname:remote_port``.

    The relay is driven by :mod:`smtplib` in a worker thread, so the event loop never waits on it;
    every network operation gives up after ``timeout`` seconds. Before relaying, CR, LF and NUL are
    removed from the envelope addresses (nothing can be injected into the relay's commands), line
    endings in the content are made CRLF and NULs removed (so no end-of-data lookalike reaches the
    relay, whatever ``bare_newline`` accepted), and an ``X-Peer`` header naming the client is put
    first.

    Proxy takes the whole message (``handle_DATA``), not a stream: it relays with
    :mod:`smtplib`, whose ``sendmail`` sends a message whole, so each message is held in memory
    up to ``data_size_limit`` while it is relayed. Relaying large mail with bounded memory takes
    a ``handle_DATA_stream`` hook that sends each piece on as it arrives, with an SMTP client that
    can send DATA in pieces.
    ``SMTPUTF8`` and ``BODY=8BITMIME`` are passed on when the client used them and the relay offers
    them.

    The reply tells the client what happened, so that a message is never answered ``250`` unless
    the relay took it:

    * the relay accepted the message for every recipient, or for some of them: ``250 OK``. The
      recipients it refused are logged as a warning, with the relay's reply for each; as with any
      server that accepts a message, reporting them to the sender is the relay side's business;
    * the relay refused every recipient, the sender, or the content: its own reply is passed on
      (``550 5.1.1 ...``), text stripped of anything but printable ASCII. A code that cannot end
      DATA is mapped to ``451`` (4xx) or ``554`` (5xx). When recipients were refused with both
      4xx and 5xx codes, a 4xx one is passed on, so the client tries again later;
    * the relay cannot be reached, times out or drops the connection:
      ``451 4.4.1 Relay unavailable, try again later``;
    * the message needs SMTPUTF8 and the relay lacks it: ``554 5.6.7``; BINARYMIME content, which
      cannot travel through DATA unchanged: ``554 5.6.1``;
    * anything unexpected: ``451 4.3.0``, and the exception is logged.
    """

    def __init__(
        self, remote_hostname: str, remote_port: int, *, timeout: float = RELAY_TIMEOUT
    ) -> None:
        self.hostname = remote_hostname
        self.port = remote_port
        self.timeout = timeout

    @classmethod
    def from_cli(cls, parser: ArgumentParser, *args: str) -> Self:
        """Build from the command line: the relay's host name and port."""
        if len(args) != 2:
            parser.error("the Proxy handler takes exactly two arguments: HOST PORT")
        host, port = args
        if not port.isdigit() or not 0 < int(port) < 65536:
            parser.error(f"the Proxy handler's PORT must be a number from 1 to 65535, not {port!r}")
        return cls(host, int(port))

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Relay the message and answer with the outcome (see the class documentation)."""
        if envelope.body == "BINARYMIME":
            return BINARYMIME_REPLY
        mail_from = (envelope.mail_from or "").translate(_CR_LF_NUL)
        rcpt_tos = [rcpt.translate(_CR_LF_NUL) for rcpt in envelope.rcpt_tos]
        rcpt_tos = [rcpt for rcpt in rcpt_tos if rcpt]
        if not rcpt_tos:
            return NO_RECIPIENTS_REPLY
        options = {option.partition("=")[0].upper(): option for option in envelope.mail_options}
        smtputf8 = (
            envelope.smtp_utf8
            or "SMTPUTF8" in options
            or not all(address.isascii() for address in (mail_from, *rcpt_tos))
        )
        eightbit = envelope.body == "8BITMIME" or options.get("BODY", "").upper() == "BODY=8BITMIME"
        data = self.prepare_content(session, envelope)
        try:
            refused = await asyncio.to_thread(
                self._deliver, mail_from, rcpt_tos, data, smtputf8=smtputf8, eightbit=eightbit
            )
        except smtplib.SMTPRecipientsRefused as error:
            self._log_refused(error.recipients, len(rcpt_tos))
            return _refusal_reply(error.recipients.values())
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as error:
            log.warning(
                "relay %s:%d refused the message from %s: %s %s",
                self.hostname,
                self.port,
                _peer_host(session),
                error.smtp_code,
                error.smtp_error,
            )
            return _relay_reply(error.smtp_code, error.smtp_error)
        except smtplib.SMTPNotSupportedError:
            log.warning("relay %s:%d does not support SMTPUTF8", self.hostname, self.port)
            return RELAY_NO_SMTPUTF8_REPLY
        except OSError as error:  # smtplib's errors are OSErrors, as are timeouts and DNS errors
            log.warning("relay %s:%d unavailable: %r", self.hostname, self.port, error)
            return RELAY_UNAVAILABLE_REPLY
        except Exception:
            log.exception("relaying to %s:%d failed", self.hostname, self.port)
            return LOCAL_ERROR_REPLY
        if refused:
            self._log_refused(refused, len(rcpt_tos))
        return OK_REPLY

    def prepare_content(self, session: Session, envelope: Envelope) -> bytes:
        """The content to relay: CRLF line endings, with ``X-Peer: <client IP>`` first."""
        if envelope.original_content is not None:
            content = envelope.original_content
        elif isinstance(envelope.content, str):
            content = envelope.content.encode("utf-8", "surrogateescape")
        else:
            content = envelope.content or b""
        peer = _header_value(_peer_host(session)).encode("utf-8", "backslashreplace")
        # Whatever the server's bare_newline policy let in: no NUL, bare CR or bare LF goes on.
        content = _LINE_BREAK_BYTES.sub(b"\r\n", content.replace(b"\x00", b""))
        return b"X-Peer: " + peer + b"\r\n" + content

    def _deliver(
        self,
        mail_from: str,
        rcpt_tos: Sequence[str],
        data: bytes,
        *,
        smtputf8: bool = False,
        eightbit: bool = False,
    ) -> dict[str, tuple[int, bytes]]:
        """Send one message to the relay (blocking: run it in a thread).

        Returns the recipients the relay refused, as :meth:`smtplib.SMTP.sendmail` does, and
        raises its exceptions.
        """
        client = smtplib.SMTP(timeout=self.timeout)
        try:
            client.connect(self.hostname, self.port)
            client.ehlo_or_helo_if_needed()
            mail_options: list[str] = []
            if eightbit and client.has_extn("8bitmime"):
                mail_options.append("BODY=8BITMIME")
            if smtputf8:
                if client.has_extn("smtputf8"):
                    mail_options.append("SMTPUTF8")
                elif not all(address.isascii() for address in (mail_from, *rcpt_tos)):
                    raise smtplib.SMTPNotSupportedError("the relay does not support SMTPUTF8")
            return client.sendmail(mail_from, list(rcpt_tos), data, mail_options=mail_options)
        finally:
            try:
                client.quit()
            except OSError:
                pass  # the message is already accepted or refused: QUIT changes nothing
            client.close()

    def _log_refused(self, refused: dict[str, tuple[int, bytes]], total: int) -> None:
        """Log the recipients the relay refused, with its reply to each."""
        log.warning(
            "relay %s:%d refused %d of %d recipients: %s",
            self.hostname,
            self.port,
            len(refused),
            total,
            "; ".join(
                f"{rcpt}: {code} {_relay_text(text)}" for rcpt, (code, text) in refused.items()
            ),
        )


def _relay_text(text: bytes | str) -> str:
    """A relay's reply text made safe for a reply line: printable ASCII, one line, short."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    text = " ".join("".join(c if " " <= c <= "~" else " " for c in text).split())
    return text[:_MAX_RELAY_TEXT]


def _relay_reply(code: int, text: bytes | str) -> str:
    """The reply that passes a relay's refusal ``code text`` on to the client."""
    if code in _DATA_END_CODES:
        reply_code = code
    elif 400 <= code < 500:
        reply_code = 451
    elif 500 <= code < 600:
        reply_code = 554
    else:  # not a refusal at all (smtplib says -1 when the reply was unreadable)
        return RELAY_UNAVAILABLE_REPLY
    clean = _relay_text(text)
    enhanced = f"{reply_code // 100}.0.0"
    if match := _ENHANCED_PREFIX.match(clean):
        if int(match.group(1)) == reply_code // 100:
            enhanced = match.group(0).strip()
        clean = clean[match.end() :]
    return Reply(reply_code, clean or "Relay refused the message", enhanced).line()


def _refusal_reply(refusals: Iterable[tuple[int, bytes]]) -> str:
    """One reply for a set of recipient refusals: the first transient one, else the first."""
    refusals = list(refusals)
    if not refusals:
        return NO_RECIPIENTS_REPLY
    transient = [refusal for refusal in refusals if 400 <= refusal[0] < 500]
    code, text = (transient or refusals)[0]
    return _relay_reply(code, text)
