"""AUTH (RFC 4954) over real sockets: every documented path, the limits, and property tests.

Covers the built-in PLAIN, LOGIN and CRAM-MD5 mechanisms with an ``authenticator`` (sync and
async) and with the deprecated ``auth_callback``; ``AuthResult`` and its ``message``, ``handled``
and ``auth_data``; the legacy ``auth_MECHANISM`` return values (``None``, ``MISSING``, ``False``,
an identity); mechanisms on handlers and on SMTP subclasses, ``@auth_mechanism``;
``handle_AUTH``; ``auth_required``, ``auth_require_tls`` and ``auth_exclude_mechanism``; every
refusal; SASL line lengths; the failure counter; AUTH under implicit TLS; and that no password ever
reaches a log or a repr.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import RawClient, Recorder, connected, running
from tests.tls_support import TLSClient
from typed_smtpd.controller import Controller
from typed_smtpd.proto import replies as R
from typed_smtpd.proto.replies import Reply
from typed_smtpd.session import CramMD5Response
from typed_smtpd.smtp import (
    MISSING,
    SMTP,
    AuthResult,
    Envelope,
    LoginPassword,
    Session,
    auth_mechanism,
)
from typed_smtpd.testing.client import ClientReply
from typed_smtpd.testing.fake import FakeClient, FakeSMTPServer

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.tls_fixtures"]

LOGIN = b"alice"
PASSWORD = b"wonderland"


def b64(data: bytes | str) -> str:
    """Base64 of ``data`` (UTF-8 for text), as a client sends it."""
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode("ascii")


PLAIN_OK = b64(b"\x00alice\x00wonderland")
PLAIN_BAD = b64(b"\x00alice\x00mirror")


def wire(reply: Reply, *, enhanced: bool = True) -> tuple[int, str]:
    """What :meth:`RawClient.reply` reads for a catalogue reply."""
    return reply.code, reply.line(enhanced=enhanced)[4:]


def challenge(reply: tuple[int, str]) -> bytes:
    """The decoded text of a ``334`` challenge."""
    code, text = reply
    assert code == 334, reply
    return base64.b64decode(text)


def ehlo_auth(client: RawClient) -> str | None:
    """Send EHLO; the AUTH line of the answer (without ``AUTH``), or None."""
    code, text = client.cmd("EHLO client.test")
    assert code == 250, text
    for line in text.splitlines():
        if line.startswith("AUTH"):
            return line[4:].strip()
    return None


def cram_response(challenge_bytes: bytes, login: bytes, password: bytes) -> str:
    digest = hmac.new(password, challenge_bytes, hashlib.md5).hexdigest()
    return b64(login + b" " + digest.encode())


# --- handlers and authenticators ------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    """What the test authenticator returns as ``auth_data``."""

    name: str


@dataclass
class Credentials:
    """A sync authenticator: alice/wonderland for PLAIN, LOGIN and CRAM-MD5."""

    calls: list[tuple[str, Any]] = field(default_factory=list)
    envelopes: list[object] = field(default_factory=list)

    def check(self, data: Any) -> bool:
        if isinstance(data, LoginPassword):
            return data.login == LOGIN and data.password == PASSWORD
        if isinstance(data, CramMD5Response):
            return data.login == LOGIN and data.verify(PASSWORD)
        return False

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        self.calls.append((mechanism, data))
        self.envelopes.append(envelope)
        if self.check(data):
            return AuthResult(success=True, auth_data=User("alice"))
        return AuthResult(success=False, handled=False)


@dataclass
class Observer(Recorder):
    """Records ``session.authenticated`` and ``session.auth_data`` at every NOOP."""

    states: list[tuple[bool | None, Any]] = field(default_factory=list)
    sessions_seen: list[Session] = field(default_factory=list)

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str
    ) -> str:
        self.states.append((session.authenticated, session.auth_data))
        self.sessions_seen.append(session)
        return "250 2.0.0 OK"


@contextmanager
def plain_server(handler: object | None = None, **kwargs: Any) -> Iterator[Controller]:
    """A server offering AUTH on a plain connection (``auth_require_tls=False``)."""
    kwargs.setdefault("authenticator", Credentials())
    kwargs.setdefault("enable_CRAM_MD5", True)  # opt-in; most tests exercise all three
    with running(
        handler if handler is not None else Observer(), auth_require_tls=False, **kwargs
    ) as server:
        yield server


@contextmanager
def plain_client(handler: object | None = None, **kwargs: Any) -> Iterator[RawClient]:
    """A client greeted with EHLO on a :func:`plain_server`."""
    with plain_server(handler, **kwargs) as server, connected(server) as c:
        assert c.cmd("EHLO client.test")[0] == 250
        yield c


@contextmanager
def smtps_client(
    handler: object, server_context: ssl.SSLContext, client_context: ssl.SSLContext, **kwargs: Any
) -> Iterator[RawClient]:
    """A client over implicit TLS, greeted with EHLO."""
    kwargs.setdefault("enable_CRAM_MD5", True)
    with running(handler, ssl_context=server_context, **kwargs) as server:
        c = TLSClient(server.hostname, server.port, client_context)
        try:
            assert c.cmd("EHLO client.test")[0] == 250
            yield c
        finally:
            c.close()


# --- the built-in mechanisms ----------------------------------------------------------------------


def _plain_initial(c: RawClient) -> tuple[int, str]:
    return c.cmd(f"AUTH PLAIN {PLAIN_OK}")


def _plain_challenge(c: RawClient) -> tuple[int, str]:
    assert c.cmd("AUTH PLAIN") == (334, "")
    return c.cmd(PLAIN_OK)


def _plain_with_authzid(c: RawClient) -> tuple[int, str]:
    return c.cmd("AUTH PLAIN " + b64(b"admin\x00alice\x00wonderland"))


def _plain_lower_case(c: RawClient) -> tuple[int, str]:
    return c.cmd(f"auth plain {PLAIN_OK}")


def _login_challenges(c: RawClient) -> tuple[int, str]:
    assert challenge(c.cmd("AUTH LOGIN")) == b"User Name\x00"
    assert challenge(c.cmd(b64(LOGIN))) == b"Password\x00"
    return c.cmd(b64(PASSWORD))


def _login_initial(c: RawClient) -> tuple[int, str]:
    assert challenge(c.cmd(f"AUTH LOGIN {b64(LOGIN)}")) == b"Password\x00"
    return c.cmd(b64(PASSWORD))


def _cram_md5(c: RawClient) -> tuple[int, str]:
    text = challenge(c.cmd("AUTH CRAM-MD5"))
    assert re.fullmatch(rb"<[0-9a-f]+\.[0-9]+@test\.local>", text), text
    return c.cmd(cram_response(text, LOGIN, PASSWORD))


SUCCESSES: dict[str, Callable[[RawClient], tuple[int, str]]] = {
    "plain-initial": _plain_initial,
    "plain-challenge": _plain_challenge,
    "plain-authzid": _plain_with_authzid,
    "plain-lower-case": _plain_lower_case,
    "login-challenges": _login_challenges,
    "login-initial": _login_initial,
    "cram-md5": _cram_md5,
}


@pytest.mark.parametrize("dialog", list(SUCCESSES.values()), ids=list(SUCCESSES))
def test_authenticator_success(dialog: Callable[[RawClient], tuple[int, str]]) -> None:
    handler, credentials = Observer(), Credentials()
    with plain_server(handler, authenticator=credentials) as server, connected(server) as c:
        assert ehlo_auth(c) == "CRAM-MD5 LOGIN PLAIN"
        assert c.cmd("NOOP")[0] == 250
        assert dialog(c) == wire(R.AUTH_SUCCESS)
        assert c.cmd("NOOP")[0] == 250
        assert c.cmd("AUTH PLAIN =") == wire(R.AUTH_ALREADY)
    assert handler.states == [(None, None), (True, User("alice"))]
    ((mechanism, data),) = credentials.calls
    assert data.login == LOGIN
    if isinstance(data, LoginPassword):
        assert data.password == PASSWORD and mechanism in ("PLAIN", "LOGIN")
    else:
        assert isinstance(data, CramMD5Response) and mechanism == "CRAM-MD5"
    assert all(isinstance(e, Envelope) for e in credentials.envelopes)


def test_authenticator_failure() -> None:
    handler, credentials = Observer(), Credentials()
    with plain_client(handler, authenticator=credentials) as c:
        assert c.cmd(f"AUTH PLAIN {PLAIN_BAD}") == wire(R.AUTH_FAILED)
        assert c.cmd("NOOP")[0] == 250
        assert c.cmd(f"AUTH PLAIN {PLAIN_OK}") == wire(R.AUTH_SUCCESS)
        assert c.cmd("NOOP")[0] == 250
    assert handler.states == [(False, None), (True, User("alice"))]


async def _async_authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    if data.login == b"busy":
        await server.push("454 4.7.0 Temporary authentication failure")
        return AuthResult(success=False, handled=True)
    return AuthResult(success=data.password == PASSWORD, handled=False, auth_data=data.login)


def test_async_authenticator() -> None:
    handler = Observer()
    with plain_client(handler, authenticator=_async_authenticator) as c:
        assert c.cmd("AUTH PLAIN " + b64(b"\x00busy\x00x")) == (
            454,
            "4.7.0 Temporary authentication failure",
        )
        assert c.cmd("NOOP")[0] == 250  # handled=True: nothing else was sent
        assert c.cmd(f"AUTH PLAIN {PLAIN_BAD}") == wire(R.AUTH_FAILED)
        assert c.cmd(f"AUTH PLAIN {PLAIN_OK}") == wire(R.AUTH_SUCCESS)
        assert c.cmd("NOOP")[0] == 250
    assert handler.states == [(False, None), (True, b"alice")]


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (
            AuthResult(success=True, message="235 2.7.0 Welcome, alice"),
            (235, "2.7.0 Welcome, alice"),
        ),
        (
            AuthResult(success=False, handled=False, message="535 5.7.8 Go away"),
            (535, "5.7.8 Go away"),
        ),
        (AuthResult(success=False, handled=False), wire(R.AUTH_FAILED)),
    ],
    ids=["success-message", "failure-message", "failure-default"],
)
def test_auth_result_message(result: AuthResult, expected: tuple[int, str]) -> None:
    def authenticator(*args: Any) -> AuthResult:
        return result

    with plain_client(authenticator=authenticator) as c:
        assert c.cmd(f"AUTH PLAIN {PLAIN_OK}") == expected
        assert c.cmd("NOOP")[0] == 250


def test_auth_data_and_deprecated_login_data() -> None:
    def authenticator(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        return AuthResult(success=True, auth_data=data)

    handler = Observer()
    with plain_client(handler, authenticator=authenticator) as c:
        assert c.cmd(f"AUTH PLAIN {PLAIN_OK}") == wire(R.AUTH_SUCCESS)
        assert c.cmd("NOOP")[0] == 250
    (session,) = handler.sessions_seen
    assert session.auth_data == LoginPassword(LOGIN, PASSWORD)
    with pytest.warns(DeprecationWarning, match="login_data"):
        assert session.login_data == LOGIN


def test_authenticator_exception_is_451() -> None:
    def authenticator(*args: Any) -> AuthResult:
        raise RuntimeError("the user database is down")

    with plain_client(authenticator=authenticator) as c:
        code, text = c.cmd(f"AUTH PLAIN {PLAIN_OK}")
        assert (code, text) == wire(R.INTERNAL_ERROR)
        assert "database" not in text
        assert c.cmd("NOOP")[0] == 250


def test_authenticator_returning_something_else_is_451() -> None:
    def authenticator(*args: Any) -> Any:
        return True

    with plain_client(authenticator=authenticator) as c:
        assert c.cmd(f"AUTH PLAIN {PLAIN_OK}") == wire(R.INTERNAL_ERROR)
        assert c.cmd("NOOP")[0] == 250


# --- the deprecated auth_callback -----------------------------------------------------------------


@dataclass
class PasswordCallback:
    calls: list[tuple[str, bytes, bytes]] = field(default_factory=list)

    def __call__(self, mechanism: str, login: bytes, password: bytes) -> bool:
        self.calls.append((mechanism, login, password))
        return login == LOGIN and password == PASSWORD


@contextmanager
def callback_client(handler: object, callback: PasswordCallback) -> Iterator[RawClient]:
    # Every connection builds an SMTP with auth_callback, which warns each time.
    with (  # noqa: PT031 - the warnings come from the server thread during the whole dialog
        pytest.warns(DeprecationWarning, match="auth_callback"),
        running(handler, auth_callback=callback, auth_require_tls=False) as server,
        connected(server) as c,
    ):
        assert ehlo_auth(c) == "LOGIN PLAIN"  # a password callback cannot check CRAM-MD5
        yield c


def test_auth_callback() -> None:
    handler, callback = Observer(), PasswordCallback()
    with callback_client(handler, callback) as c:
        assert c.cmd(f"AUTH PLAIN {PLAIN_BAD}") == wire(R.AUTH_FAILED)
        assert c.cmd("AUTH CRAM-MD5") == wire(R.AUTH_NO_MECHANISM)
        assert _login_challenges(c) == wire(R.AUTH_SUCCESS)
        assert c.cmd("NOOP")[0] == 250
    assert callback.calls == [("PLAIN", LOGIN, b"mirror"), ("LOGIN", LOGIN, PASSWORD)]
    assert handler.states[-1][0] is True


def test_auth_callback_sets_login_data() -> None:
    handler, callback = Observer(), PasswordCallback()
    with callback_client(handler, callback) as c:
        assert c.cmd(f"AUTH PLAIN {PLAIN_OK}") == wire(R.AUTH_SUCCESS)
        assert c.cmd("NOOP")[0] == 250
    (session,) = handler.sessions_seen
    with pytest.warns(DeprecationWarning, match="login_data"):
        assert session.login_data == LOGIN


# --- mechanisms on handlers and on SMTP subclasses ------------------------------------------------


@dataclass
class LegacyMechanism(Observer):
    """``auth_XLEGACY`` returns :attr:`outcome`, the aiosmtpd way."""

    outcome: object = None

    async def auth_XLEGACY(self, server: SMTP, args: list[str]) -> object:
        if self.outcome is None:
            await server.push("535 5.7.8 Refused by the hook itself")
        return self.outcome


@pytest.mark.parametrize(
    ("outcome", "reply", "authenticated"),
    [
        (None, (535, "5.7.8 Refused by the hook itself"), False),
        (MISSING, wire(R.AUTH_FAILED), False),
        (False, wire(R.AUTH_FAILED), False),
        ("alice", wire(R.AUTH_SUCCESS), True),
    ],
    ids=["none", "missing", "false", "identity"],
)
def test_legacy_mechanism_return_values(
    outcome: object, reply: tuple[int, str], authenticated: bool
) -> None:
    handler = LegacyMechanism(outcome=outcome)
    with plain_server(handler) as server, connected(server) as c:
        assert ehlo_auth(c) == "CRAM-MD5 LOGIN PLAIN XLEGACY"
        assert c.cmd("AUTH XLEGACY") == reply
        assert c.cmd("NOOP")[0] == 250  # nothing more was sent
    assert handler.states == [(authenticated, outcome if authenticated else None)]
    if authenticated:
        with pytest.warns(DeprecationWarning, match="login_data"):
            assert handler.sessions_seen[0].login_data == "alice"


def test_legacy_identity_passes_auth_required(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    # aiosmtpd #452: an identity from a legacy hook did not set session.authenticated, so
    # auth_required kept refusing MAIL after a successful AUTH.
    handler = LegacyMechanism(outcome="alice")
    with smtps_client(handler, server_context, client_context, auth_required=True) as c:
        assert c.cmd("MAIL FROM:<a@example.test>") == wire(R.AUTH_REQUIRED)
        assert c.cmd("AUTH XLEGACY") == wire(R.AUTH_SUCCESS)
        assert c.cmd("MAIL FROM:<a@example.test>")[0] == 250
        assert c.cmd("RCPT TO:<b@example.test>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        assert c.cmd("Subject: x\r\n\r\nbody\r\n.")[0] == 250
    assert handler.sessions[0].authenticated is True


@dataclass
class TokenMechanisms(Observer):
    """Mechanisms that run their own exchange with ``server.challenge_auth``."""

    tokens: list[object] = field(default_factory=list)

    async def auth_XTOKEN(self, server: SMTP, args: list[str]) -> AuthResult | None:
        token = await server.challenge_auth("token?")
        self.tokens.append(token)
        if token is MISSING:
            return None  # challenge_auth already answered
        return AuthResult(success=token == b"s3cret", handled=False, auth_data=token)

    async def auth_XRAW(self, server: SMTP, args: list[str]) -> AuthResult:
        answer = await server.challenge_auth(b"raw-challenge", encode_to_b64=False)
        return AuthResult(success=answer == b"ok", handled=False)

    @auth_mechanism("X-DASH-NAME")
    async def auth_dashed(self, server: SMTP, args: list[str]) -> AuthResult:
        return AuthResult(success=True, auth_data=("dashed", args))

    async def auth_X__OAUTH(self, server: SMTP, args: list[str]) -> AuthResult:
        return AuthResult(success=len(args) == 2, handled=False, auth_data=("oauth", args))

    async def auth_helper(self, server: SMTP, args: list[str]) -> AuthResult:
        raise AssertionError("a lower-case auth_ attribute is not a mechanism")


def test_handler_mechanisms_are_advertised_sorted() -> None:
    with plain_client(TokenMechanisms()) as c:
        assert ehlo_auth(c) == "CRAM-MD5 LOGIN PLAIN X-DASH-NAME X-OAUTH XRAW XTOKEN"
        assert c.cmd("AUTH HELPER") == wire(R.AUTH_NO_MECHANISM)


def test_handler_mechanism_with_challenges() -> None:
    handler = TokenMechanisms()
    with plain_client(handler) as c:
        assert challenge(c.cmd("AUTH XTOKEN")) == b"token?"
        assert c.cmd("*") == wire(R.AUTH_ABORTED)
        assert challenge(c.cmd("AUTH XTOKEN")) == b"token?"
        assert c.cmd("%%%") == wire(R.AUTH_BAD_BASE64)
        assert challenge(c.cmd("AUTH xtoken")) == b"token?"
        assert c.cmd(b64("wrong")) == wire(R.AUTH_FAILED)
    assert handler.tokens == [MISSING, MISSING, b"wrong"]
    handler = TokenMechanisms()
    with plain_client(handler, max_auth_failures=10) as c:
        assert challenge(c.cmd("AUTH XTOKEN")) == b"token?"
        assert c.cmd(b64("s3cret")) == wire(R.AUTH_SUCCESS)
        assert c.cmd("NOOP")[0] == 250
    assert handler.states == [(True, b"s3cret")]


def test_challenge_without_base64() -> None:
    with plain_client(TokenMechanisms()) as c:
        assert c.cmd("AUTH XRAW") == (334, "raw-challenge")
        assert c.cmd(b64("ok")) == wire(R.AUTH_SUCCESS)


def test_auth_mechanism_decorator_and_double_underscore() -> None:
    handler = TokenMechanisms()
    with plain_client(handler, max_auth_failures=10) as c:
        assert c.cmd("AUTH x-oauth") == wire(R.AUTH_FAILED)  # no initial response
        assert c.cmd("AUTH X-OAUTH dG9rZW4=") == wire(R.AUTH_SUCCESS)
        assert c.cmd("NOOP")[0] == 250
    assert handler.states == [(True, ("oauth", ["X-OAUTH", "dG9rZW4="]))]
    handler = TokenMechanisms()
    with plain_client(handler) as c:
        assert c.cmd("AUTH x-dash-name") == wire(R.AUTH_SUCCESS)
        assert c.cmd("NOOP")[0] == 250
    assert handler.states == [(True, ("dashed", ["X-DASH-NAME"]))]


def test_invalid_mechanism_names_are_refused() -> None:
    for name in ("bad name", "", "SCRAM/SHA"):
        with pytest.raises(ValueError, match="mechanism"):
            auth_mechanism(name)


@dataclass
class PlainOverride(Observer):
    """Replaces the built-in PLAIN (the seeds: handler hooks override the built-ins)."""

    args_seen: list[list[str]] = field(default_factory=list)

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> object:
        self.args_seen.append(args)
        return "plain-override"


def test_handler_overrides_builtin_mechanism() -> None:
    handler, credentials = PlainOverride(), Credentials()
    with plain_client(handler, authenticator=credentials) as c:
        assert c.cmd(f"AUTH plain {PLAIN_BAD}") == wire(R.AUTH_SUCCESS)
        assert c.cmd("NOOP")[0] == 250
    assert handler.args_seen == [["PLAIN", PLAIN_BAD]]
    assert credentials.calls == []
    assert handler.states == [(True, "plain-override")]


class ServerMechanismSMTP(SMTP):
    """An SMTP subclass adding a mechanism, as aiosmtpd allows."""

    async def auth_XSERVER(self, args: list[str]) -> AuthResult:
        return AuthResult(success=True, auth_data=("server", type(self).__name__))


def test_smtp_subclass_mechanism() -> None:
    handler = Observer()
    with (
        running(handler, server_class=ServerMechanismSMTP, auth_require_tls=False) as server,
        connected(server) as c,
    ):
        assert ehlo_auth(c) == "LOGIN PLAIN XSERVER"
        assert c.cmd("AUTH XSERVER") == wire(R.AUTH_SUCCESS)
        assert c.cmd("NOOP")[0] == 250
    assert handler.states == [(True, ("server", "ServerMechanismSMTP"))]


# --- auth_exclude_mechanism -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exclude", "advertised"),
    [
        (["LOGIN"], "CRAM-MD5 PLAIN X-DASH-NAME X-OAUTH XRAW XTOKEN"),
        (["login", "plain"], "CRAM-MD5 X-DASH-NAME X-OAUTH XRAW XTOKEN"),
        (["PLAIN", "LOGIN", "XTOKEN", "X-OAUTH"], "CRAM-MD5 X-DASH-NAME XRAW"),
        (
            ["PLAIN", "LOGIN", "CRAM-MD5", "XTOKEN", "X-OAUTH", "XRAW", "X-DASH-NAME"],
            None,
        ),
    ],
)
def test_auth_exclude_mechanism(exclude: list[str], advertised: str | None) -> None:
    with plain_server(TokenMechanisms(), auth_exclude_mechanism=exclude) as server:
        with connected(server) as c:
            assert ehlo_auth(c) == advertised
            for mechanism in exclude:
                assert c.cmd(f"AUTH {mechanism} {PLAIN_OK}")[0] == 504
                assert c.cmd(f"AUTH {mechanism}") == wire(R.AUTH_NO_MECHANISM)
        with connected(server) as c:
            c.cmd("EHLO client.test")
            if "PLAIN" not in advertised_set(advertised):
                assert c.cmd(f"AUTH PLAIN {PLAIN_OK}") == wire(R.AUTH_NO_MECHANISM)
            else:
                assert c.cmd(f"AUTH PLAIN {PLAIN_OK}") == wire(R.AUTH_SUCCESS)


def advertised_set(advertised: str | None) -> set[str]:
    return set(advertised.split()) if advertised else set()


# --- handle_AUTH ----------------------------------------------------------------------------------


@dataclass
class WholeAuth(Observer):
    """``handle_AUTH`` takes over the whole command."""

    calls: list[list[str]] = field(default_factory=list)

    async def handle_AUTH(
        self, server: SMTP, session: Session, envelope: Envelope, args: list[str]
    ) -> str | None:
        self.calls.append(args)
        if args[0] == "QUIET":
            await server.push("535 5.7.8 pushed by handle_AUTH")
            return None
        session.authenticated = True
        session.auth_data = "whole"
        return "235 2.7.0 Custom welcome"

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> object:
        raise AssertionError("handle_AUTH replaces every mechanism")


def test_handle_auth_replaces_the_mechanisms() -> None:
    handler, credentials = WholeAuth(), Credentials()
    with plain_client(handler, authenticator=credentials) as c:
        assert c.cmd("AUTH QUIET") == (535, "5.7.8 pushed by handle_AUTH")
        assert c.cmd("NOOP")[0] == 250
        assert c.cmd("AUTH plain dGVzdA==") == (235, "2.7.0 Custom welcome")
        assert c.cmd("NOOP")[0] == 250
    assert handler.calls == [["QUIET"], ["plain", "dGVzdA=="]]
    assert credentials.calls == []
    assert handler.states[-1] == (True, "whole")


# --- auth_required, auth_require_tls --------------------------------------------------------------

GATED = [
    "HELP",
    "HELP MAIL",
    "VRFY postmaster",
    "MAIL FROM:<a@example.test>",
    "RCPT TO:<b@example.test>",
    "DATA",
    "BDAT 0 LAST",
]


def test_auth_required_gates_commands(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    handler = Observer()
    with smtps_client(
        handler, server_context, client_context, auth_required=True, authenticator=Credentials()
    ) as c:
        for command in GATED:
            assert c.cmd(command) == wire(R.AUTH_REQUIRED), command
        # A refused BDAT chunk is still read, never taken for commands.
        c.send("BDAT 6 LAST\r\nQUIT\r\n")
        assert c.reply() == wire(R.AUTH_REQUIRED)
        for command in ("NOOP", "RSET", "EHLO client.test"):
            assert c.cmd(command)[0] == 250, command
        assert c.cmd(f"AUTH PLAIN {PLAIN_BAD}") == wire(R.AUTH_FAILED)
        assert c.cmd("MAIL FROM:<a@example.test>") == wire(R.AUTH_REQUIRED)
        assert c.cmd(f"AUTH PLAIN {PLAIN_OK}") == wire(R.AUTH_SUCCESS)
        assert c.cmd("HELP")[0] == 250
        assert c.cmd("VRFY postmaster")[0] == 252
        assert c.cmd("MAIL FROM:<a@example.test>")[0] == 250
        assert c.cmd("RCPT TO:<b@example.test>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        assert c.cmd("Subject: x\r\n\r\nbody\r\n.")[0] == 250
        assert c.cmd("QUIT")[0] == 221
    assert len(handler.envelopes) == 1


def test_auth_required_without_tls_warns() -> None:
    with pytest.warns(UserWarning, match="clear text"):
        SMTP(Recorder(), auth_required=True, auth_require_tls=False)


def test_auth_without_tls_is_538() -> None:
    credentials = Credentials()
    with running(authenticator=credentials, enable_CRAM_MD5=True) as server, connected(server) as c:
        assert ehlo_auth(c) is None
        assert c.cmd(f"AUTH PLAIN {PLAIN_OK}") == wire(R.AUTH_ENCRYPTION_REQUIRED)
        assert c.cmd("AUTH LOGIN") == wire(R.AUTH_ENCRYPTION_REQUIRED)
    assert credentials.calls == []


def test_auth_under_implicit_tls(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    # aiosmtpd never advertised nor accepted AUTH under SMTPS unless auth_require_tls=False.
    handler = Observer()
    with running(
        handler, ssl_context=server_context, authenticator=Credentials(), enable_CRAM_MD5=True
    ) as server:
        c = TLSClient(server.hostname, server.port, client_context)
        try:
            assert ehlo_auth(c) == "CRAM-MD5 LOGIN PLAIN"
            assert _cram_md5(c) == wire(R.AUTH_SUCCESS)
            assert c.cmd("NOOP")[0] == 250
        finally:
            c.close()
    assert handler.states == [(True, User("alice"))]


# --- refusals -------------------------------------------------------------------------------------


def test_auth_sequence_refusals() -> None:
    with plain_server() as server:
        with connected(server) as c:
            assert c.cmd(f"AUTH PLAIN {PLAIN_OK}") == (503, "Error: send EHLO first")
            assert c.cmd("HELO client.test")[0] == 250
            assert c.cmd(f"AUTH PLAIN {PLAIN_OK}") == wire(R.unrecognized("AUTH"), enhanced=False)
        with connected(server) as c:
            c.cmd("EHLO client.test")
            assert c.cmd("AUTH") == wire(R.AUTH_NOT_ENOUGH_VALUE)
            assert c.cmd("AUTH PLAIN a b") == wire(R.AUTH_TOO_MANY_VALUES)
            assert c.cmd("AUTH FOO") == wire(R.AUTH_NO_MECHANISM)
            assert c.cmd("MAIL FROM:<a@example.test>")[0] == 250
            assert c.cmd(f"AUTH PLAIN {PLAIN_OK}")[0] == 503  # not inside a transaction
            assert c.cmd("RSET")[0] == 250
            assert c.cmd(f"AUTH PLAIN {PLAIN_OK}") == wire(R.AUTH_SUCCESS)
            assert c.cmd(f"AUTH PLAIN {PLAIN_OK}") == wire(R.AUTH_ALREADY)
            assert c.cmd("AUTH FOO") == wire(R.AUTH_ALREADY)


@pytest.mark.parametrize(
    ("lines", "last"),
    [
        (["AUTH PLAIN !!!!"], R.AUTH_BAD_BASE64),
        (["AUTH PLAIN", "not base64"], R.AUTH_BAD_BASE64),
        (["AUTH LOGIN", "%%%"], R.AUTH_BAD_BASE64),
        (["AUTH LOGIN", b64(LOGIN), "%%%"], R.AUTH_BAD_BASE64),
        (["AUTH PLAIN", "*"], R.AUTH_ABORTED),
        (["AUTH LOGIN", "*"], R.AUTH_ABORTED),
        (["AUTH LOGIN", b64(LOGIN), "*"], R.AUTH_ABORTED),
        ([f"AUTH LOGIN {b64(LOGIN)}", "*"], R.AUTH_ABORTED),
        (["AUTH CRAM-MD5", "*"], R.AUTH_ABORTED),
        (["AUTH PLAIN ="], R.AUTH_CANT_SPLIT),
        (["AUTH PLAIN " + b64(b"alice\x00wonderland")], R.AUTH_CANT_SPLIT),
        (["AUTH PLAIN " + b64(b"a\x00b\x00c\x00d")], R.AUTH_CANT_SPLIT),
        (["AUTH PLAIN", b64(b"alice")], R.AUTH_CANT_SPLIT),
        (["AUTH CRAM-MD5", b64("alice")], R.AUTH_CANT_SPLIT),
        (["AUTH CRAM-MD5", b64("alice 1234")], R.AUTH_CANT_SPLIT),
        (["AUTH CRAM-MD5 YWxpY2U="], R.AUTH_TOO_MANY_VALUES),
    ],
)
def test_malformed_exchanges(lines: list[str], last: Reply) -> None:
    credentials = Credentials()
    with plain_client(authenticator=credentials) as c:
        for line in lines[:-1]:
            assert c.cmd(line)[0] == 334, line
        assert c.cmd(lines[-1]) == wire(last)
        assert c.cmd("NOOP")[0] == 250
        assert c.cmd(f"AUTH PLAIN {PLAIN_OK}") == wire(R.AUTH_SUCCESS)
    assert len(credentials.calls) == 1


def test_empty_initial_response() -> None:
    # "=" is an empty initial response (RFC 4954 section 4): LOGIN gets an empty user name.
    credentials = Credentials()
    with plain_client(authenticator=credentials) as c:
        assert challenge(c.cmd("AUTH LOGIN =")) == b"Password\x00"
        assert c.cmd(b64(PASSWORD)) == wire(R.AUTH_FAILED)
    assert credentials.calls == [("LOGIN", LoginPassword(b"", PASSWORD))]


# --- SASL line length -----------------------------------------------------------------------------


def test_sasl_line_of_12288_octets_is_read() -> None:
    credentials = Credentials()
    with plain_client(authenticator=credentials) as c:
        assert c.cmd("AUTH PLAIN") == (334, "")
        # 12,286 characters and CRLF: read whole, then refused as base64 (not as too long).
        assert c.cmd("A" * 12286) == wire(R.AUTH_BAD_BASE64)
        assert c.cmd("AUTH PLAIN") == (334, "")
        assert c.cmd("A" * 12287) == wire(R.AUTH_LINE_TOO_LONG)
        assert c.cmd("NOOP")[0] == 250
    assert credentials.calls == []


def test_long_sasl_response_is_accepted() -> None:
    long_password = b"p" * 9200
    blob = b64(b"\x00alice\x00" + long_password)
    assert len(blob) + 2 <= 12288
    credentials = Credentials()
    with plain_client(authenticator=credentials) as c:
        assert c.cmd("AUTH PLAIN") == (334, "")
        assert c.cmd(blob) == wire(R.AUTH_FAILED)
        assert challenge(c.cmd("AUTH LOGIN")) == b"User Name\x00"
        assert challenge(c.cmd(b64(b"u" * 9000))) == b"Password\x00"
        assert c.cmd(b64(long_password)) == wire(R.AUTH_FAILED)
    assert credentials.calls == [
        ("PLAIN", LoginPassword(LOGIN, long_password)),
        ("LOGIN", LoginPassword(b"u" * 9000, long_password)),
    ]


def test_much_longer_sasl_line_is_refused_without_buffering() -> None:
    with plain_client(max_auth_failures=10) as c:
        assert c.cmd("AUTH PLAIN") == (334, "")
        c.send(b"A" * 1_000_000)
        c.send(b"\r\n")
        assert c.reply() == wire(R.AUTH_LINE_TOO_LONG)
        assert c.cmd("NOOP")[0] == 250


# --- failure counting -----------------------------------------------------------------------------


def test_five_failures_then_421() -> None:
    with plain_server() as server:
        with connected(server) as c:
            c.cmd("EHLO client.test")
            assert c.cmd(f"AUTH PLAIN {PLAIN_BAD}") == wire(R.AUTH_FAILED)
            assert _login_initial_bad(c) == wire(R.AUTH_FAILED)
            for _ in range(3):
                assert c.cmd(f"AUTH PLAIN {PLAIN_BAD}") == wire(R.AUTH_FAILED)
            assert c.reply() == wire(R.AUTH_TOO_MANY_FAILURES)
            assert c.is_closed()
        with connected(server) as c:  # the count is per connection
            c.cmd("EHLO client.test")
            assert c.cmd(f"AUTH PLAIN {PLAIN_BAD}") == wire(R.AUTH_FAILED)
            assert c.cmd(f"AUTH PLAIN {PLAIN_OK}") == wire(R.AUTH_SUCCESS)


def _login_initial_bad(c: RawClient) -> tuple[int, str]:
    assert challenge(c.cmd(f"AUTH LOGIN {b64(LOGIN)}")) == b"Password\x00"
    return c.cmd(b64("mirror"))


@pytest.mark.parametrize("limit", [1, 5])
def test_configured_failure_limit(limit: int) -> None:
    with plain_client(max_auth_failures=limit) as c:
        for _ in range(limit - 1):
            assert c.cmd(f"AUTH PLAIN {PLAIN_BAD}") == wire(R.AUTH_FAILED)
        assert c.cmd(f"AUTH PLAIN {PLAIN_BAD}") == wire(R.AUTH_FAILED)
        assert c.reply() == wire(R.AUTH_TOO_MANY_FAILURES)
        assert c.is_closed()


# --- secrets stay secret --------------------------------------------------------------------------


def test_passwords_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = b"Sup3r-S3cret"
    secrets = [secret.decode(), b64(secret), b64(b"\x00alice\x00" + secret)]

    def authenticator(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        logging.getLogger("mail.log").debug("authenticating %r", data)
        return AuthResult(success=False, handled=False, auth_data=data)

    with plain_client(authenticator=authenticator, max_auth_failures=10) as c:
        assert c.cmd(f"AUTH PLAIN {secrets[2]}")[0] == 535
        assert c.cmd("AUTH PLAIN")[0] == 334
        assert c.cmd(secrets[2])[0] == 535
        assert c.cmd("AUTH LOGIN")[0] == 334
        assert c.cmd(b64(LOGIN))[0] == 334
        assert c.cmd(secrets[1])[0] == 535
        assert c.cmd(f"AUTH LOGIN {b64(LOGIN)}")[0] == 334
        assert c.cmd(secrets[1])[0] == 535
        text = challenge(c.cmd("AUTH CRAM-MD5"))
        assert c.cmd(cram_response(text, LOGIN, secret))[0] == 535
    assert "AUTH" in caplog.text  # the commands were logged, their arguments masked
    for value in secrets:
        assert value not in caplog.text


def test_reprs_hide_passwords() -> None:
    credentials = LoginPassword(LOGIN, b"Sup3r-S3cret")
    session = Session(auth_data=credentials)
    session._login_data = LOGIN
    result = AuthResult(success=True, auth_data=credentials)
    cram = CramMD5Response(LOGIN, b"<1.2@test>", b"0" * 32)
    for shown in (repr(credentials), str(credentials), repr(session), repr(result), repr(cram)):
        assert "Sup3r-S3cret" not in shown
        assert "0" * 32 not in shown


# --- properties of the SASL exchanges (in memory: the real engine, no socket) ---------------------


@dataclass
class Recording:
    """An authenticator that records what it saw; only CRAM-MD5 with :attr:`cram_password`
    succeeds."""

    seen: list[tuple[str, Any]] = field(default_factory=list)
    cram_password: bytes = b""

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        self.seen.append((mechanism, data))
        if isinstance(data, CramMD5Response):
            return AuthResult(success=data.verify(self.cram_password), handled=False)
        return AuthResult(success=False, handled=False)


T = TypeVar("T")


def in_memory(
    recording: Recording, dialog: Callable[[FakeClient], Awaitable[T]], **smtp_kwargs: Any
) -> T:
    """Run ``dialog`` on a client of :class:`FakeSMTPServer` greeted with EHLO."""

    async def main() -> T:
        async with FakeSMTPServer(
            authenticator=recording,
            auth_require_tls=False,
            max_auth_failures=1_000,
            hostname="test.local",
            enable_CRAM_MD5=True,
            **smtp_kwargs,
        ) as server:
            client = await server.connect()
            assert (await client.ehlo()).code == 250
            return await dialog(client)

    return asyncio.run(main())


def answer(reply: ClientReply) -> tuple[int, str]:
    """A fake client's reply in the shape :func:`wire` gives."""
    text = reply.text if reply.enhanced is None else f"{reply.enhanced} {reply.text}"
    return reply.code, text


no_nul = st.binary(max_size=64).filter(lambda b: b"\x00" not in b)


@settings(deadline=None)
@given(login=no_nul, password=no_nul, initial=st.booleans())
def test_plain_round_trip(login: bytes, password: bytes, initial: bool) -> None:
    blob = b64(b"\x00" + login + b"\x00" + password)

    async def dialog(client: FakeClient) -> tuple[int, str]:
        if initial:
            return answer(await client.send(f"AUTH PLAIN {blob}"))
        assert (await client.send("AUTH PLAIN")).code == 334
        return answer(await client.send(blob))

    recording = Recording()
    assert in_memory(recording, dialog) == wire(R.AUTH_FAILED)
    assert recording.seen == [("PLAIN", LoginPassword(login, password))]


@settings(deadline=None)
@given(login=st.binary(max_size=64), password=st.binary(max_size=64), initial=st.booleans())
def test_login_round_trip(login: bytes, password: bytes, initial: bool) -> None:
    async def dialog(client: FakeClient) -> tuple[int, str]:
        if initial:
            # An empty initial response is "=" (RFC 4954 section 4).
            first = await client.send(f"AUTH LOGIN {b64(login) or '='}")
            assert base64.b64decode(first.text) == b"Password\x00"
        else:
            first = await client.send("AUTH LOGIN")
            assert base64.b64decode(first.text) == b"User Name\x00"
            assert (await client.send(b64(login))).code == 334
        return answer(await client.send(b64(password)))

    recording = Recording()
    assert in_memory(recording, dialog) == wire(R.AUTH_FAILED)
    assert recording.seen == [("LOGIN", LoginPassword(login, password))]


@settings(deadline=None)
@given(password=st.binary(max_size=64), wrong=st.booleans())
def test_cram_md5_round_trip(password: bytes, wrong: bool) -> None:
    async def dialog(client: FakeClient) -> tuple[int, str]:
        reply = await client.send("AUTH CRAM-MD5")
        text = base64.b64decode(reply.text)
        return answer(
            await client.send(cram_response(text, LOGIN, password + b"x" if wrong else password))
        )

    recording = Recording(cram_password=password)
    assert in_memory(recording, dialog) == wire(R.AUTH_FAILED if wrong else R.AUTH_SUCCESS)
    ((mechanism, data),) = recording.seen
    assert mechanism == "CRAM-MD5" and data.login == LOGIN


@settings(deadline=None)
@given(
    login=no_nul,
    password=no_nul,
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_exchange_split_anywhere(login: bytes, password: bytes, cuts: list[int]) -> None:
    # The same bytes, however the network cuts them, give the same exchange.
    wire_bytes = f"AUTH LOGIN\r\n{b64(login)}\r\n{b64(password)}\r\nNOOP\r\n".encode()
    points = sorted({min(cut, len(wire_bytes)) for cut in cuts} | {0, len(wire_bytes)})

    async def dialog(client: FakeClient) -> list[int]:
        for start, end in itertools.pairwise(points):
            client.send_bytes(wire_bytes[start:end])
            await asyncio.sleep(0)
        return [reply.code for reply in await client.read_replies(4)]

    recording = Recording()
    assert in_memory(recording, dialog) == [334, 334, 535, 250]
    assert recording.seen == [("LOGIN", LoginPassword(login, password))]


sasl_lines = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200)


@settings(deadline=None)
@given(
    mechanism=st.sampled_from(["PLAIN", "LOGIN", "CRAM-MD5"]),
    responses=st.lists(sasl_lines, min_size=1, max_size=3),
)
def test_arbitrary_responses_get_a_clean_reply(mechanism: str, responses: list[str]) -> None:
    async def dialog(client: FakeClient) -> None:
        reply = await client.send(f"AUTH {mechanism}")
        for line in responses:
            if reply.code != 334:
                break
            reply = await client.send(line)
        assert reply.code in (334, 501, 535), reply
        if reply.code == 334:
            assert answer(await client.send("*")) == wire(R.AUTH_ABORTED)
        assert answer(await client.send("NOOP")) == wire(R.OK)

    in_memory(Recording(), dialog)


def test_smtplib_with_a_wrong_password_gets_535_and_a_clean_quit() -> None:
    """smtplib.login() tries each offered mechanism in turn (here CRAM-MD5, PLAIN and LOGIN):
    one wrong password must end in SMTPAuthenticationError and a 221, not a 421."""
    import smtplib

    def authenticator(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        return AuthResult(success=False, handled=False)

    with running(authenticator=authenticator, auth_require_tls=False, enable_CRAM_MD5=True) as s:
        client = smtplib.SMTP(s.hostname, s.port, timeout=10)
        client.ehlo()
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            client.login("anne", "wrong")
        assert failed.value.smtp_code == 535
        assert client.quit()[0] == 221
