"""LMTP (RFC 2033): the SMTP engine with LHLO, and one final reply per recipient.

An LMTP server delivers to each recipient separately, so after the message it answers once for
every accepted recipient, in RCPT order. A handler can decide per recipient with the
``handle_DATA_recipient`` hook (:class:`~typed_smtpd.hooks.HandleLMTPRecipient`).
"""

from __future__ import annotations

import asyncio

from typed_smtpd.proto import replies as R
from typed_smtpd.proto.replies import Reply
from typed_smtpd.smtp import SMTP, syntax

__all__ = ["LMTP"]


class LMTP(SMTP):
    """The LMTP protocol for one connection: ``lambda: LMTP(handler)``.

    HELO and EHLO are refused (RFC 2033 section 4.1); LHLO works as EHLO does, and is allowed
    before STARTTLS under ``require_starttls``.
    """

    @property
    def _ehlo_keyword(self) -> str:
        return "LHLO"

    @syntax("LHLO hostname")
    async def smtp_LHLO(self, hostname: str | None) -> None:
        """LHLO: the LMTP greeting."""
        if not hostname:
            self._reply(R.syntax("LHLO hostname"))
            return
        await self._greet_extended(hostname)

    async def smtp_HELO(self, hostname: str | None) -> None:
        """Refused in LMTP."""
        self._reply(R.unrecognized("HELO"))

    async def smtp_EHLO(self, hostname: str | None) -> None:
        """Refused in LMTP."""
        self._reply(R.unrecognized("EHLO"))

    def _refuse_message(self, reply: Reply) -> None:
        # The client waits for one reply per accepted recipient, whatever happened.
        for _ in self._envelope.rcpt_tos:
            self._reply(reply)

    async def _deliver(self) -> None:
        session, envelope = self.session, self._envelope
        assert session is not None
        hooks = self._hooks
        try:
            if hooks.data is not None:
                common = self._check_status(
                    await hooks.data(self, session, envelope), "handle_DATA"
                )
                if common[0] != "2" or hooks.data_recipient is None:
                    for _ in envelope.rcpt_tos:
                        self._queue_status(common, "handle_DATA")
                    return
        except asyncio.CancelledError:
            raise
        except Exception as error:
            await self._replies_for_error(error, len(envelope.rcpt_tos))
            return
        for recipient in envelope.rcpt_tos:
            if hooks.data_recipient is None:
                self._reply(R.recipient_delivered(recipient))
                continue
            try:
                await self._run_hook(
                    hooks.data_recipient(self, session, envelope, recipient),
                    "handle_DATA_recipient",
                )
            except asyncio.CancelledError:
                raise
            except Exception as error:
                # This recipient's reply comes from the error path; later ones still get theirs.
                await self._replies_for_error(error, 1)

    async def _replies_for_error(self, error: Exception, count: int) -> None:
        for _ in range(count):
            await self._handle_error(error)
