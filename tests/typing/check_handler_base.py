"""Type tests of :class:`typed_smtpd.hooks.Handler`, checked by ``mypy --strict`` and never run.

A handler that subclasses ``Handler`` and marks its hooks ``@override`` type-checks when every
hook has the server's shape; each wrong one carries the ``# type: ignore[code]`` mypy must report
(``warn_unused_ignores`` fails the check if it ever stops). ``test_handler_base.py`` runs both
mypy and pyright on the same mistakes.
"""

from __future__ import annotations

from typing_extensions import override

from typed_smtpd.hooks import Handler
from typed_smtpd.proxy_protocol import ProxyData
from typed_smtpd.session import Envelope, Session
from typed_smtpd.smtp import SMTP


class Good(Handler):
    @override
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

    @override
    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        envelope.rcpt_tos.append(address)
        return "250 OK"

    @override
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 OK"

    @override
    def handle_STARTTLS(self, server: SMTP, session: Session, envelope: Envelope) -> bool:
        return True

    @override
    async def handle_PROXY(
        self, server: SMTP, session: Session, envelope: Envelope, proxy_data: ProxyData
    ) -> bool:
        return True

    @override
    async def handle_exception(self, error: Exception) -> str:
        return "451 4.3.0 Try again later"


class SyncHook(Handler):
    @override
    def handle_DATA(  # type: ignore[override]
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        return "250 OK"


class MissingParameter(Handler):
    @override
    async def handle_RCPT(  # type: ignore[override]
        self, server: SMTP, session: Session, envelope: Envelope, address: str
    ) -> str:
        return "250 OK"


class WrongReturn(Handler):
    @override
    async def handle_MAIL(  # type: ignore[override]
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> int:
        return 250


class Misspelled(Handler):
    @override
    async def handle_RCTP(  # type: ignore[misc]
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        return "250 OK"
