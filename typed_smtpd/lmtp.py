"""LMTP (RFC 2033): the SMTP engine with LHLO, and one final reply per recipient.

An LMTP server delivers to each recipient separately, so after the message it answers once for
every accepted recipient, in RCPT order. A handler can decide per recipient with the
``handle_DATA_recipient`` hook (:class:`~typed_smtpd.hooks.HandleLMTPRecipient`). The engine
does all of it (:class:`~typed_smtpd.proto.engine.EngineConfig` with ``lmtp=True``); this class
turns that mode on (``lmtp=True`` in its class statement) and names the LHLO command.
"""

from __future__ import annotations

from typed_smtpd.smtp import SMTP, syntax

__all__ = ["LMTP"]


class LMTP(SMTP, lmtp=True):
    """The LMTP protocol for one connection: ``lambda: LMTP(handler)``.

    HELO and EHLO are refused (RFC 2033 section 4.1); LHLO works as EHLO does, and is allowed
    before STARTTLS under ``require_starttls``.
    """

    @syntax("LHLO hostname")
    async def smtp_LHLO(self, hostname: str | None) -> None:
        """LHLO: the LMTP greeting, as EHLO."""
        await self.drive(self.engine.command("LHLO", hostname))
