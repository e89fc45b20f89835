"""How the engine and SMTP's subclassing surface look to a type checker (never run).

A subclass overriding and adding commands, and a synchronous adapter written against the closed
union of requests, must pass ``mypy --strict``; each misuse below is marked with the error code
mypy must report (``warn_unused_ignores`` fails the run if it ever stops reporting one).
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
