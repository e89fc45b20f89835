"""Type tests of the handler Protocols, checked by ``mypy --strict`` and never run.

Correct handlers must type-check; each wrong one carries a ``# type: ignore[code]`` that
``warn_unused_ignores`` turns into a failing check if mypy ever stops flagging it.
"""

from __future__ import annotations

from typed_smtpd.hooks import (
    HandleDATA,
    HandleEHLO,
    HandleException,
    HandleHELO,
    HandleMAIL,
    HandleRCPT,
    HandleSTARTTLS,
)
from typed_smtpd.session import Envelope, Session
from typed_smtpd.smtp import SMTP


class Good:
    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        return responses

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if not address.endswith("@example.com"):
            return "550 not relaying to that domain"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        return "250 Message accepted for delivery"

    def handle_STARTTLS(self, server: SMTP, session: Session, envelope: Envelope) -> bool:
        return session.ssl is not None

    async def handle_exception(self, error: Exception) -> str:
        return "542 Internal server error"


good_helo: HandleHELO = Good()
good_ehlo: HandleEHLO = Good()
good_mail: HandleMAIL = Good()
good_rcpt: HandleRCPT = Good()
good_data: HandleDATA = Good()
good_starttls: HandleSTARTTLS = Good()
good_exception: HandleException = Good()


class SyncData:
    def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 OK"


class MissingArgument:
    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str
    ) -> str:
        return "250 OK"


class WrongReturn:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> int:
        return 250


class WrongArgumentType:
    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: bytes,
        mail_options: list[str],
    ) -> str:
        return "250 OK"


bad_sync: HandleDATA = SyncData()  # type: ignore[assignment]
bad_missing: HandleRCPT = MissingArgument()  # type: ignore[assignment]
bad_return: HandleDATA = WrongReturn()  # type: ignore[assignment]
bad_argument: HandleMAIL = WrongArgumentType()  # type: ignore[assignment]
