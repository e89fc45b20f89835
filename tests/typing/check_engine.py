"""Type tests of the engine and of SMTP's subclassing surface, checked by ``mypy --strict`` and
never run.

Correct uses must type-check; each wrong one carries a ``# type: ignore[code]`` that
``warn_unused_ignores`` turns into a failing check if mypy ever stops flagging it.
"""

from __future__ import annotations

from typed_smtpd.proto import replies as R
from typed_smtpd.proto.engine import (
    CLOSED,
    NEED_DATA,
    Authenticate,
    CallHook,
    EngineConfig,
    Request,
    ServerEngine,
    StartTLS,
)
from typed_smtpd.proto.state import State
from typed_smtpd.session import AuthResult, Envelope, Session
from typed_smtpd.smtp import SMTP


class Audited(SMTP):
    """Overrides a built-in command and adds one, as aiosmtpd subclasses do."""

    async def smtp_MAIL(self, arg: str | None) -> None:
        await self.push("250-audited")  # an extra line before the engine's reply
        await super().smtp_MAIL(arg)

    async def smtp_PING(self, arg: str | None) -> None:
        self.engine.reply(R.OK)
        state: State = self.engine.state
        del state


class WrongOverride(SMTP):
    async def smtp_RCPT(self, arg: int) -> None:  # type: ignore[override]
        del arg


def serve_one(engine: ServerEngine[Session, Envelope], request: Request) -> None:
    """A synchronous adapter's step, written against the closed union of requests."""
    match request:
        case CallHook(name=name, args=args):
            del name, args
            engine.resume("250 OK")
        case Authenticate():
            engine.resume(AuthResult(success=False, handled=False))
        case StartTLS():
            engine.resume(Session())
        case _:
            engine.fail(RuntimeError("not served here"))


def pump(engine: ServerEngine[Session, Envelope], data: bytes) -> bytes:
    engine.receive_data(data)
    while (step := engine.next_request()) is not NEED_DATA and step is not CLOSED:
        serve_one(engine, step)
    return engine.data_to_send()


engine = ServerEngine(
    EngineConfig(hostname="mx.test", ident="ESMTP"),
    new_session=Session,
    new_envelope=Envelope,
    clock=lambda: 0.0,
)
reveal_session: Session = engine.session
wrong_config = EngineConfig(hostname=25, ident="ESMTP")  # type: ignore[arg-type]
engine.resume()  # type: ignore[call-arg]
