"""A real SMTP server on a free local port, for tests: :class:`LocalSMTPServer`.

What lives here: :class:`ServerOptions` (what the pytest fixtures and environment variables can
switch: STARTTLS or implicit TLS, AUTH, LMTP, the announced name, the handler), reading them from
``TYPED_SMTPD_*`` environment variables (:func:`options_from_env`), certificates made on the fly
(:class:`TestCertificates`, with trustme, imported only when TLS is asked for), and
:class:`LocalSMTPServer`, a threaded :class:`~typed_smtpd.controller.Controller` on port 0 whose
handler records every message (``messages``, ``wait_for_messages``) and which hands out clients
configured to match (:meth:`LocalSMTPServer.smtp` for :mod:`smtplib`,
:meth:`LocalSMTPServer.connect` for the async test client).

The pytest plugin (:mod:`typed_smtpd.testing.plugin`) builds its fixtures from these.

What must not live here: pytest imports, and a trustme import outside :class:`TestCertificates`.
"""

from __future__ import annotations

import functools
import hmac
import os
import smtplib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Final, Literal

from typing_extensions import Self

from typed_smtpd.session import AuthResult, Envelope, LoginPassword, Session
from typed_smtpd.smtp import SMTP
from typed_smtpd.testing.client import DEFAULT_TIMEOUT, SocketClient
from typed_smtpd.testing.handlers import (
    FaultInjector,
    ReceivedMessage,
    RecordingHandler,
    Rule,
    parse_rule,
    server_class_for,
)

__all__ = [
    "ENV_PREFIX",
    "LocalSMTPServer",
    "ServerOptions",
    "TLSMode",
    "TestCertificates",
    "options_from_env",
]

#: Every environment variable the fixtures read starts with this.
ENV_PREFIX: Final = "TYPED_SMTPD_"

#: How a test server speaks TLS: not at all, STARTTLS, or implicit TLS from the first byte.
TLSMode = Literal["none", "starttls", "implicit"]

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """What a test server is configured with; every field has a safe default."""

    handler: object = None
    """The handler under test (``None``: accept every message)."""
    host: str = "127.0.0.1"
    """The address to listen on (``TYPED_SMTPD_HOST``)."""
    hostname: str = "smtpd.test"
    """The name the server announces (``TYPED_SMTPD_HOSTNAME``)."""
    tls: TLSMode = "none"
    """``TYPED_SMTPD_TLS=starttls|implicit``."""
    require_starttls: bool = False
    """Refuse mail before STARTTLS (``TYPED_SMTPD_REQUIRE_STARTTLS=1``)."""
    auth: tuple[str, str] | None = None
    """Accepted login and password (``TYPED_SMTPD_AUTH=user:password``)."""
    auth_required: bool = False
    """Refuse mail before AUTH (``TYPED_SMTPD_AUTH_REQUIRED=1``)."""
    lmtp: bool = False
    """Speak LMTP (``TYPED_SMTPD_LMTP=1``)."""
    faults: tuple[Rule, ...] = ()
    """Fault rules (:class:`~typed_smtpd.testing.Rule`, or the compact syntax of
    :func:`~typed_smtpd.testing.parse_rule`): the handler is served wrapped in a
    :class:`~typed_smtpd.testing.FaultInjector` with them."""
    fault_seed: int = 0
    """The seed of the fault injector's random generator."""
    smtp_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Further keyword arguments for the server class."""

    def merged(self, overrides: Mapping[str, Any]) -> ServerOptions:
        """These options with ``overrides`` applied (unknown keys go to :attr:`smtp_kwargs`)."""
        known = {name: value for name, value in overrides.items() if name in _FIELDS}
        extra = {name: value for name, value in overrides.items() if name not in _FIELDS}
        if "tls" in known:
            known["tls"] = _tls_mode(known["tls"])
        if "auth" in known:
            known["auth"] = _auth_pair(known["auth"])
        if "faults" in known:
            known["faults"] = _fault_rules(known["faults"])
        if extra:
            known["smtp_kwargs"] = {**self.smtp_kwargs, **known.get("smtp_kwargs", {}), **extra}
        return replace(self, **known)

    def served_handler(self) -> object:
        """The handler a server built from these options calls: :attr:`handler`, wrapped in a
        new :class:`~typed_smtpd.testing.FaultInjector` when there are :attr:`faults`."""
        if not self.faults:
            return self.handler
        return FaultInjector(self.faults, handler=self.handler, seed=self.fault_seed)


_FIELDS: Final = frozenset(ServerOptions.__dataclass_fields__)
_FLAGS: Final = frozenset({"require_starttls", "auth_required", "lmtp"})


def _tls_mode(value: object) -> TLSMode:
    text = "none" if value is None or value is False else str(value).strip().lower()
    if text in ("", "none", "off", "no", "0"):
        return "none"
    if text in ("starttls", "implicit"):
        return text  # type: ignore[return-value]
    raise ValueError(f"tls must be 'starttls', 'implicit' or 'none', not {value!r}")


def _fault_rules(value: object) -> tuple[Rule, ...]:
    if value is None:
        return ()
    if isinstance(value, str | Rule):
        value = [value]
    if not isinstance(value, list | tuple):
        raise ValueError(f"faults must be a list of rules, not {value!r}")
    rules: list[Rule] = []
    for item in value:
        if isinstance(item, Rule):
            rules.append(item)
        elif isinstance(item, str):
            rules.append(parse_rule(item))
        else:
            raise ValueError(f"a fault rule is a Rule or a string such as 'rcpt=550', not {item!r}")
    return tuple(rules)


def _auth_pair(value: object) -> tuple[str, str] | None:
    if value is None or value == "":
        return None
    if isinstance(value, tuple) and len(value) == 2:
        return (str(value[0]), str(value[1]))
    if isinstance(value, str) and ":" in value:
        login, _, password = value.partition(":")
        return (login, password)
    raise ValueError(f"auth must be 'user:password' or a (user, password) pair, not {value!r}")


def _flag(name: str, value: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{name} must be 1 or 0 (true/false), not {value!r}")


def options_from_env(environ: Mapping[str, str] | None = None) -> ServerOptions:
    """Default options, changed by ``TYPED_SMTPD_*`` variables (HOST, HOSTNAME, TLS,
    REQUIRE_STARTTLS, AUTH, AUTH_REQUIRED, LMTP). Raises :class:`ValueError` for a bad value."""
    env = os.environ if environ is None else environ
    options = ServerOptions()
    for name in ("host", "hostname", "tls", "auth", "require_starttls", "auth_required", "lmtp"):
        variable = ENV_PREFIX + name.upper()
        value = env.get(variable)
        if value is None or (value == "" and name in ("host", "hostname", "tls", "auth")):
            continue
        try:
            parsed: object = _flag(variable, value) if name in _FLAGS else value
            options = options.merged({name: parsed})
        except ValueError as error:
            raise ValueError(f"{variable}: {error}") from None
    return options


class TestCertificates:
    """A throw-away CA and a certificate for ``localhost``, 127.0.0.1, ::1 and the server name.

    Made with trustme, once per process and server name (see :meth:`for_hostname`).
    """

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, hostname: str) -> None:
        try:
            import trustme
        except ImportError as error:  # pragma: no cover - trustme is a test dependency
            raise RuntimeError("TLS test servers need trustme: pip install trustme") from error
        self._ca = trustme.CA()
        self._cert = self._ca.issue_cert("localhost", "127.0.0.1", "::1", hostname)
        self.ca_pem: bytes = self._ca.cert_pem.bytes()
        """The CA certificate (PEM), for clients outside Python."""

    @staticmethod
    def for_hostname(hostname: str) -> TestCertificates:
        """The certificates for ``hostname``, made on first use in this process."""
        return _certificates(hostname)

    def server_context(self) -> ssl.SSLContext:
        """A server context with the certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._cert.configure_cert(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts the CA (and checks host names)."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self._ca.configure_trust(context)
        return context


@functools.lru_cache(maxsize=8)
def _certificates(hostname: str) -> TestCertificates:
    return TestCertificates(hostname)


class _PasswordCheck:
    """The authenticator of a test server: one login and password (PLAIN, LOGIN, CRAM-MD5)."""

    def __init__(self, login: str, password: str) -> None:
        self.login = login.encode("utf-8")
        self.password = password.encode("utf-8")

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: object
    ) -> AuthResult:
        from typed_smtpd.session import CramMD5Response

        if isinstance(data, LoginPassword):
            ok = hmac.compare_digest(data.login, self.login) and hmac.compare_digest(
                data.password, self.password
            )
        elif isinstance(data, CramMD5Response):
            ok = hmac.compare_digest(data.login, self.login) and data.verify(self.password)
        else:
            ok = False
        login = self.login.decode("utf-8")
        return AuthResult(success=ok, handled=False, auth_data=login if ok else None)


class LocalSMTPServer:
    """A real server on ``127.0.0.1`` and a free port, run by a threaded controller.

    ::

        with LocalSMTPServer(ServerOptions(tls="starttls")) as server:
            with server.smtp() as client:
                client.sendmail("a@example.com", ["b@example.com"], b"Subject: hi\\r\\n\\r\\nhi")
            assert server.wait_for_messages(1)[0].tls

    Attributes as the usual SMTP fixtures have them: :attr:`hostname`, :attr:`port`,
    :attr:`messages`, :meth:`clear`, :meth:`wait_for_messages`.
    """

    def __init__(self, options: ServerOptions | None = None, **overrides: Any) -> None:
        base = options if options is not None else ServerOptions()
        self.options: ServerOptions = base.merged(overrides) if overrides else base
        """The options in force."""
        self.recorder: RecordingHandler = RecordingHandler(self.options.served_handler())
        """The recording handler the server calls."""
        self.certificates: TestCertificates | None = None
        """The certificates, when TLS is on."""
        self._controller: Any = None

    # --- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Bind a free port and serve in a daemon thread."""
        from typed_smtpd.controller import Controller
        from typed_smtpd.lmtp import LMTP

        if self._controller is not None:
            raise RuntimeError("already started")
        options = self.options
        kwargs: dict[str, Any] = dict(options.smtp_kwargs)
        ssl_context = None
        if options.tls != "none":
            self.certificates = TestCertificates.for_hostname(options.hostname)
            if options.tls == "implicit":
                ssl_context = self.certificates.server_context()
            else:
                kwargs["tls_context"] = self.certificates.server_context()
                kwargs["require_starttls"] = options.require_starttls
        if options.auth is not None:
            kwargs["authenticator"] = _PasswordCheck(*options.auth)
            kwargs.setdefault("auth_require_tls", options.tls != "none")
            kwargs["auth_required"] = options.auth_required
        server_class = server_class_for(self.recorder, LMTP if options.lmtp else SMTP)
        recorder = self.recorder

        class _Controller(Controller):
            def factory(self) -> SMTP:
                return server_class(recorder, **self.SMTP_kwargs)

        controller = _Controller(
            recorder,
            hostname=options.host,
            port=0,
            ssl_context=ssl_context,
            server_hostname=options.hostname,
            **kwargs,
        )
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        """Stop serving and free the port (idempotent)."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop(grace_period=0.0)

    def __enter__(self) -> Self:
        """:meth:`start`."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """:meth:`stop`."""
        self.stop()

    # --- where ----------------------------------------------------------------------------------

    @property
    def hostname(self) -> str:
        """The address the server listens on (connect here)."""
        return self.options.host

    @property
    def port(self) -> int:
        """The port the server listens on."""
        if self._controller is None:
            raise RuntimeError("the server is not running")
        port: int = self._controller.port
        return port

    @property
    def address(self) -> tuple[str, int]:
        """``(hostname, port)``."""
        return (self.hostname, self.port)

    @property
    def login(self) -> str | None:
        """The accepted login, when AUTH is on."""
        return None if self.options.auth is None else self.options.auth[0]

    @property
    def password(self) -> str | None:
        """The accepted password, when AUTH is on."""
        return None if self.options.auth is None else self.options.auth[1]

    # --- messages -------------------------------------------------------------------------------

    @property
    def messages(self) -> list[ReceivedMessage]:
        """The messages received so far (a copy), oldest first."""
        return self.recorder.messages

    def clear(self) -> None:
        """Forget the received messages."""
        self.recorder.clear()

    def wait_for_messages(
        self, count: int = 1, timeout: float = DEFAULT_TIMEOUT
    ) -> list[ReceivedMessage]:
        """Block until at least ``count`` messages arrived; return them all (no sleeps: the
        server thread wakes the waiter). Raises :class:`TimeoutError` after ``timeout``."""
        return self.recorder.wait_for_messages(count, timeout)

    async def await_messages(
        self, count: int = 1, timeout: float = DEFAULT_TIMEOUT
    ) -> list[ReceivedMessage]:
        """:meth:`wait_for_messages` for ``async`` tests."""
        return await self.recorder.await_messages(count, timeout)

    # --- clients --------------------------------------------------------------------------------

    def client_tls_context(self) -> ssl.SSLContext | None:
        """A client context trusting this server's certificate; ``None`` without TLS."""
        return None if self.certificates is None else self.certificates.client_context()

    def smtp(self, *, login: bool = True, timeout: float = DEFAULT_TIMEOUT) -> smtplib.SMTP:
        """A connected :mod:`smtplib` client matching the server: implicit TLS or STARTTLS with
        the test CA trusted, EHLO sent, and logged in when AUTH is on (unless ``login=False``).
        LMTP servers get an :class:`smtplib.LMTP`."""
        context = self.client_tls_context()
        client: smtplib.SMTP
        if self.options.lmtp:
            client = smtplib.LMTP(self.hostname, self.port, timeout=timeout)
        elif self.options.tls == "implicit":
            client = smtplib.SMTP_SSL(self.hostname, self.port, timeout=timeout, context=context)
        else:
            client = smtplib.SMTP(self.hostname, self.port, timeout=timeout)
        try:
            client.ehlo("client.test")
            if self.options.tls == "starttls":
                client.starttls(context=context)
                client.ehlo("client.test")
            if login and self.options.auth is not None:
                client.login(*self.options.auth)
        except BaseException:
            client.close()
            raise
        return client

    async def connect(self, *, timeout: float = DEFAULT_TIMEOUT) -> SocketClient:
        """A connected async test client (implicit TLS done when configured; greeting read)."""
        context = self.client_tls_context() if self.options.tls == "implicit" else None
        return await SocketClient.open(
            self.hostname, self.port, timeout=timeout, tls_context=context
        )
