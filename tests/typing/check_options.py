"""Type tests of the SMTP keyword arguments that controllers, ``serve()`` and the fakes pass on.

Checked by ``mypy --strict`` and never run: correct calls must type-check, and each wrong one
carries a ``# type: ignore[code]`` that ``warn_unused_ignores`` turns into a failing check if mypy
ever stops flagging it.
"""

from __future__ import annotations

from typing_extensions import Unpack

from typed_smtpd.controller import (
    Controller,
    UnixSocketController,
    UnixSocketUnthreadedController,
    UnthreadedController,
    serve,
)
from typed_smtpd.options import SMTPOptions
from typed_smtpd.smtp import SMTP
from typed_smtpd.testing import FakeSMTPServer, SocketpairSMTPServer


class Handler:
    pass


class QuietSMTP(SMTP):
    def __init__(self, handler: object, **kwargs: Unpack[SMTPOptions]) -> None:
        super().__init__(handler, **kwargs)


def controllers() -> None:
    Controller(Handler(), port=0, data_size_limit=None, bare_newline="normalize", timeout=30)
    UnthreadedController(Handler(), port=0, auth_exclude_mechanism=["PLAIN"])
    UnixSocketController(Handler(), "/run/smtp.sock", hostname="mx.example.com")
    UnixSocketUnthreadedController(Handler(), "/run/smtp.sock", max_recipients=10)
    Controller(Handler(), data_size_limit="10M")  # type: ignore[arg-type]
    Controller(Handler(), data_size_limt=1000)  # type: ignore[call-arg]
    Controller(Handler(), bare_newline="drop")  # type: ignore[arg-type]
    Controller(Handler(), port=0, replies="aiosmtpd", enhanced_status_codes=False)
    Controller(Handler(), replies="aiosmtp")  # type: ignore[arg-type]
    QuietSMTP(Handler(), enable_SMTPUTF8=True, command_call_limit={"NOOP": 5})
    QuietSMTP(Handler(), timeout="soon")  # type: ignore[arg-type]


async def in_loop() -> None:
    async with serve(Handler(), port=0, server_class=QuietSMTP, max_auth_failures=1):
        pass
    async with serve(Handler(), port=0, bogus_limit="5"):  # type: ignore[arg-type]
        pass


async def fakes() -> None:
    async with FakeSMTPServer(Handler(), decode_data=True, enhanced_status_codes=False):
        pass
    with SocketpairSMTPServer(Handler(), require_starttls=False):
        pass
    FakeSMTPServer(Handler(), auth_required="yes")  # type: ignore[arg-type]
