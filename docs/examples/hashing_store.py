"""A streaming handler: each message is written to disk as it arrives, under the name of its
SHA-256 digest, which is computed on the way; memory stays bounded whatever the message size."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from pathlib import Path

from typed_smtpd.session import Envelope, Session
from typed_smtpd.smtp import SMTP
from typed_smtpd.stream import MessageStream, StreamError


class HashingStore:
    """Stores each message as ``<sha256>.eml`` in ``directory``, and answers with the digest."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    async def handle_DATA_stream(
        self, server: SMTP, session: Session, envelope: Envelope, stream: MessageStream
    ) -> str:
        digest = hashlib.sha256()
        fd, partial = tempfile.mkstemp(dir=self.directory, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as file:
                async for piece in stream:  # the server reads on only as we take
                    digest.update(piece)
                    await asyncio.to_thread(file.write, piece)  # disk I/O off the event loop
                await asyncio.to_thread(os.fsync, file.fileno())
        except StreamError:
            # Too large, refused content, or the client left: nothing is kept, and the
            # server sends the client its reply whatever this hook returns.
            os.unlink(partial)
            raise
        name = digest.hexdigest()
        os.replace(partial, self.directory / f"{name}.eml")
        return f"250 OK stored as {name[:16]}"
