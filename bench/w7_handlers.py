"""The buffered handlers of the W7 benchmark (bench/streaming.py): typed_smtpd's Sink and Mailbox
made to take each message whole through ``handle_DATA``, as before content streamed."""

from __future__ import annotations

from typed_smtpd.handlers import Mailbox
from typed_smtpd.session import Envelope, Session
from typed_smtpd.smtp import SMTP


class BufferedSink:
    """Accepts every message once it has arrived whole, and discards it."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 OK"


class BufferedMailbox(Mailbox):
    """Mailbox storing each message from the whole of it (``handle_DATA``)."""

    handle_DATA_stream = None  # type: ignore[assignment]
