"""The built-in commands and SASL mechanisms of :class:`~typed_smtpd.smtp.SMTP`, as methods.

aiosmtpd's subclassing model: a server class adds a command by defining
``async def smtp_PING(self, arg)``, overrides a built-in one the same way (and runs the original
with ``await super().smtp_MAIL(arg)``), removes one by setting ``smtp_VRFY = None``, and adds an
AUTH mechanism as an ``auth_NAME`` method. :class:`BuiltinCommands`, a base of ``SMTP``, holds
the built-in ones. Each is made by one factory and only hands its command to the engine
(:meth:`~typed_smtpd.proto.engine.ServerEngine.command`), where the command is defined once:
a connection whose class overrides nothing never calls them at all.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, ClassVar

from typed_smtpd._settings import CommandMethod, syntax
from typed_smtpd.hooks import auth_mechanism

if TYPE_CHECKING:
    from typed_smtpd.proto.auth import _Missing
    from typed_smtpd.proto.engine import ServerEngine, Step
    from typed_smtpd.proto.framing import Event
    from typed_smtpd.session import Envelope, Session

log: logging.Logger = logging.getLogger("mail.log")

__all__ = ["BuiltinCommands"]


def _builtin(
    verb: str, usage: str, extended: str | None = None, when: str | None = None
) -> CommandMethod:
    """The ``smtp_VERB`` method of a built-in command: it runs the engine's definition."""

    async def command(self: BuiltinCommands, arg: str | None) -> None:
        await self.drive(self.engine.command(verb, arg))

    command.__name__ = f"smtp_{verb}"
    command.__qualname__ = f"SMTP.smtp_{verb}"
    return syntax(usage, extended, when)(command)


class BuiltinCommands:
    """The ``smtp_VERB`` and ``auth_NAME`` methods of the built-in commands and mechanisms."""

    __slots__ = ()

    if TYPE_CHECKING:

        @property
        def engine(self) -> ServerEngine[Session, Envelope]: ...

        async def drive(self, steps: Generator[Step, Any, object] | None) -> object: ...

        async def _next_event(self) -> Event | None: ...

    #: HELO: greet without ESMTP.
    smtp_HELO: ClassVar[CommandMethod] = _builtin("HELO", "HELO hostname")
    #: EHLO: greet with ESMTP; the reply lists the extensions.
    smtp_EHLO: ClassVar[CommandMethod] = _builtin("EHLO", "EHLO hostname")
    #: NOOP: do nothing, successfully.
    smtp_NOOP: ClassVar[CommandMethod] = _builtin("NOOP", "NOOP [ignored]")
    #: QUIT: say goodbye and close.
    smtp_QUIT: ClassVar[CommandMethod] = _builtin("QUIT", "QUIT")
    #: RSET: abandon the transaction.
    smtp_RSET: ClassVar[CommandMethod] = _builtin("RSET", "RSET")
    #: VRFY: never verifies, as recommended (RFC 5321 section 7.3).
    smtp_VRFY: ClassVar[CommandMethod] = _builtin("VRFY", "VRFY <address>")
    #: EXPN: not implemented (RFC 5321 section 7.3 allows refusing it).
    smtp_EXPN: ClassVar[CommandMethod] = _builtin("EXPN", "EXPN")
    #: HELP: list the commands, or show one command's syntax.
    smtp_HELP: ClassVar[CommandMethod] = _builtin("HELP", "HELP [command]")
    #: MAIL FROM: open a transaction.
    smtp_MAIL: ClassVar[CommandMethod] = _builtin(
        "MAIL", "MAIL FROM: <address>", " [SP <mail-parameters>]"
    )
    #: RCPT TO: add a recipient.
    smtp_RCPT: ClassVar[CommandMethod] = _builtin(
        "RCPT", "RCPT TO: <address>", " [SP <rcpt-parameters>]"
    )
    #: DATA: receive the message, up to CRLF.CRLF.
    smtp_DATA: ClassVar[CommandMethod] = _builtin("DATA", "DATA")
    #: BDAT: receive one chunk of the message (RFC 3030).
    smtp_BDAT: ClassVar[CommandMethod] = _builtin("BDAT", "BDAT <chunk-size> [LAST]")
    #: STARTTLS: upgrade the connection to TLS (RFC 3207); listed by HELP when TLS is set up.
    smtp_STARTTLS: ClassVar[CommandMethod] = _builtin("STARTTLS", "STARTTLS", when="tls_context")
    #: AUTH: authenticate with a SASL mechanism (RFC 4954).
    smtp_AUTH: ClassVar[CommandMethod] = _builtin("AUTH", "AUTH <mechanism>")

    async def auth_PLAIN(self, args: list[str]) -> object:
        """The PLAIN mechanism (RFC 4616); the authorization identity is ignored."""
        return await self.drive(self.engine.auth_plain(args))

    async def auth_LOGIN(self, args: list[str]) -> object:
        """The LOGIN mechanism (draft-murchison-sasl-login)."""
        return await self.drive(self.engine.auth_login(args))

    @auth_mechanism("CRAM-MD5")
    async def auth_CRAM__MD5(self, args: list[str]) -> object:
        """The CRAM-MD5 mechanism (RFC 2195): the authenticator gets a
        :class:`~typed_smtpd.session.CramMD5Response` and checks a password with ``verify()``."""
        return await self.drive(self.engine.auth_cram_md5(args))

    async def challenge_auth(
        self,
        challenge: str | bytes,
        encode_to_b64: bool = True,
        log_client_response: bool = False,
    ) -> bytes | _Missing:
        """Send a ``334`` challenge and return the client's decoded answer.

        Returns :data:`MISSING` (after replying) when the client cancels with ``*``, sends bad
        base64, or a line over 12,288 octets.
        """
        if isinstance(challenge, str):
            challenge = challenge.encode("utf-8")
        engine = self.engine
        engine.start_challenge(challenge, encode=encode_to_b64)
        event = await self._next_event()
        if log_client_response and event is not None:
            log.debug("%r AUTH response received", engine.peer)
        return engine.challenge_answer(event)
