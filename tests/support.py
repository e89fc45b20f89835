"""Shared helpers for tests that talk to a real server over a real socket."""

from __future__ import annotations

import copy
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from typed_smtpd.controller import Controller
from typed_smtpd.session import Envelope, Session
from typed_smtpd.smtp import SMTP
from typed_smtpd.stream import MessageStream

TIMEOUT = 10.0

# A Unix socket's path has room for 107 bytes on Linux and 103 on macOS. pytest's tmp_path, and a
# TMPDIR such as the one nox gives each session inside the project, can be longer than that.
SOCKET_ROOT_MAX = 48


@contextmanager
def socket_dir() -> Iterator[Path]:
    """A fresh directory short enough for Unix socket paths; removed afterwards."""
    root = tempfile.gettempdir()
    if len(root) > SOCKET_ROOT_MAX and os.path.isdir("/tmp"):
        root = "/tmp"
    directory = tempfile.mkdtemp(prefix="tsmtpd", dir=root)
    try:
        yield Path(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class Recorder:
    """A handler that keeps every delivered envelope and every connection it saw."""

    envelopes: list[Envelope] = field(default_factory=list)
    sessions: list[Session] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        self.sessions.append(session)
        return "250 OK"


class StreamRecorder(Recorder):
    """A :class:`Recorder` that takes each message through ``handle_DATA_stream``: what it keeps
    is the envelope with the streamed content joined into ``content`` and ``original_content``."""

    async def handle_DATA_stream(
        self, server: SMTP, session: Session, envelope: Envelope, stream: MessageStream
    ) -> str:
        content = await stream.read()
        received = copy.copy(envelope)
        received.content = received.original_content = content
        return await self.handle_DATA(server, session, received)


#: The two ways a handler can take a message, for tests that must hold for both.
RECORDERS: Final = {"buffered": Recorder, "streamed": StreamRecorder}


class RawClient:
    """A blocking line-oriented client over a plain socket, for byte-exact dialogs."""

    def __init__(self, host: str, port: int, *, timeout: float = TIMEOUT) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.greeting = self.reply()

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed by server; pending {self.buffer!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def reply(self) -> tuple[int, str]:
        """Read one (possibly multi-line) reply: its code and its lines joined by newlines."""
        lines = []
        while True:
            line = self._line()
            lines.append(line[4:].decode("utf-8", "replace"))
            if line[3:4] != b"-":
                return int(line[:3]), "\n".join(lines)

    def cmd(self, line: str) -> tuple[int, str]:
        self.send(line + "\r\n")
        return self.reply()

    def replies(self, count: int) -> list[tuple[int, str]]:
        return [self.reply() for _ in range(count)]

    def is_closed(self) -> bool:
        """True when the server closed the connection (after any pending replies)."""
        try:
            data = self.sock.recv(1)
        except (ConnectionResetError, TimeoutError):
            return True
        return data == b""

    def close(self) -> None:
        self.sock.close()


@contextmanager
def running(
    handler: object | None = None, *, server_class: type[SMTP] = SMTP, **kwargs: Any
) -> Iterator[Controller]:
    """A threaded controller on 127.0.0.1 and a free port, stopped afterwards."""
    kwargs.setdefault("server_hostname", "test.local")

    class _Controller(Controller):
        def factory(self) -> SMTP:
            return server_class(self.handler, **self.SMTP_kwargs)

    controller = _Controller(
        handler if handler is not None else Recorder(), hostname="127.0.0.1", port=0, **kwargs
    )
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


@contextmanager
def connected(controller: Controller) -> Iterator[RawClient]:
    client = RawClient(controller.hostname, controller.port)
    try:
        yield client
    finally:
        client.close()
