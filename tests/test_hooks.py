"""The HookRegistry: binding, shape checks with clear errors, near-miss warnings, legacy forms."""

from __future__ import annotations

import types
from typing import Any

import pytest

from typed_smtpd.hooks import (
    HOOK_NAMES,
    HandleDATA,
    HandleRCPT,
    HookRegistry,
    HookSignatureError,
    auth_mechanism,
    mechanism_name,
)
from typed_smtpd.session import Envelope, Session
from typed_smtpd.smtp import SMTP


class Complete:
    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        return "250 ok"

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        return responses

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 OK"

    def handle_STARTTLS(self, server: SMTP, session: Session, envelope: Envelope) -> bool:
        return True

    def handle_exception(self, error: Exception) -> str:
        return "451 nope"

    async def auth_XTOKEN(self, server: SMTP, args: list[str]) -> Any:
        return None

    async def auth_CRAM__SHA(self, server: SMTP, args: list[str]) -> Any:
        return None

    def auth_helper(self) -> None:
        """Lower-case auth_ names are helpers, not mechanisms."""


def test_binds_present_hooks_only() -> None:
    hooks = HookRegistry(Complete())
    assert hooks.helo is not None and hooks.ehlo is not None and hooks.data is not None
    assert hooks.mail is None and hooks.quit is None and hooks.ehlo_legacy is None
    assert set(hooks.auth_mechanisms) == {"XTOKEN", "CRAM-SHA"}


def test_protocols_are_runtime_checkable() -> None:
    assert isinstance(Complete(), HandleRCPT)
    assert isinstance(Complete(), HandleDATA)
    assert not isinstance(object(), HandleDATA)


class SyncData:
    def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


class MissingArgument:
    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: Any) -> str:
        return "250 OK"


class AsyncStartTLS:
    async def handle_STARTTLS(self, server: Any, session: Any, envelope: Any) -> bool:
        return True


class NotCallable:
    handle_QUIT = "221 Bye"


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (SyncData(), r"SyncData\.handle_DATA must be a coroutine function"),
        (MissingArgument(), r"MissingArgument\.handle_RCPT has the wrong parameters.*rcpt_options"),
        (AsyncStartTLS(), r"AsyncStartTLS\.handle_STARTTLS must be a plain function"),
        (NotCallable(), r"NotCallable\.handle_QUIT must be callable"),
    ],
)
def test_wrong_shapes_are_named(handler: object, message: str) -> None:
    with pytest.raises(HookSignatureError, match=message):
        HookRegistry(handler)
    assert issubclass(HookSignatureError, TypeError)


def test_wrong_shape_fails_when_the_server_is_built() -> None:
    with pytest.raises(TypeError, match="handle_DATA"):
        SMTP(SyncData())


class Typo:
    async def handle_RCTP(self, server: Any, session: Any, envelope: Any, a: Any, o: Any) -> str:
        return "250 OK"


def test_near_miss_names_warn() -> None:
    with pytest.warns(UserWarning, match=r"did you mean 'handle_RCPT'"):
        HookRegistry(Typo())


class LegacyEhlo:
    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str) -> str:
        session.host_name = hostname
        return "250 HELP"


def test_four_argument_ehlo_is_deprecated_but_works() -> None:
    with pytest.warns(DeprecationWarning, match="4-argument"):
        hooks = HookRegistry(LegacyEhlo())
    assert hooks.ehlo is None and hooks.ehlo_legacy is not None


def test_module_and_namespace_handlers() -> None:
    async def handle_DATA(server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"

    module = types.ModuleType("handler_module")
    module.handle_DATA = handle_DATA  # type: ignore[attr-defined]
    assert HookRegistry(module).data is handle_DATA
    namespace = types.SimpleNamespace(handle_DATA=handle_DATA)
    assert HookRegistry(namespace).data is handle_DATA


def test_validation_is_cached_per_class() -> None:
    first, second = HookRegistry(Complete()), HookRegistry(Complete())
    assert first.data is not None and second.data is not None
    assert first.data.__self__ is not second.data.__self__  # type: ignore[attr-defined]


def test_auth_mechanism_names() -> None:
    @auth_mechanism("SCRAM-SHA-256")
    async def auth_SCRAM(server: Any, args: list[str]) -> None:
        return None

    assert mechanism_name("auth_SCRAM", auth_SCRAM) == "SCRAM-SHA-256"
    assert mechanism_name("auth_CRAM__MD5", None) == "CRAM-MD5"
    assert mechanism_name("auth_helper", None) is None
    with pytest.raises(ValueError, match="invalid AUTH mechanism name"):
        auth_mechanism("bad name")


def test_hook_names() -> None:
    assert {"handle_DATA", "handle_EHLO", "handle_PROXY", "handle_exception"} <= HOOK_NAMES
