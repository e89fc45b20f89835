"""The pytest plugin: ``typed_smtpd`` (and ``smtpd``), ``smtpd_factory``, ``fake_smtpd``,
``smtpd_intercept`` and ``smtpd_options``.

Registered through the ``pytest11`` entry point, so installing typed_smtpd is enough; disable it
with ``pytest -p no:typed_smtpd``. Importing this module costs nothing: the server, asyncio,
trustme and hypothesis are only imported when a fixture is used.

Fixtures:

* ``typed_smtpd``: a real server on ``127.0.0.1`` and a free port (threaded, safe under
  pytest-xdist), a :class:`~typed_smtpd.testing.server.LocalSMTPServer` with ``hostname``,
  ``port``, ``messages``, ``clear()``, ``wait_for_messages(count, timeout)`` and ``smtp()``;
* ``smtpd``: the same server under its short name, unless another plugin (smtpdfix) provides
  a fixture of that name: that one is then left alone;
* ``smtpd_factory``: ``smtpd_factory(**options)`` starts more servers, all stopped afterwards;
* ``fake_smtpd`` (needs pytest-asyncio): a started
  :class:`~typed_smtpd.testing.fake.FakeSMTPServer` with the same options, no socket at all;
* ``smtpd_intercept``: ``smtpd_intercept("smtp.example.com", 587)`` makes the application's own
  smtplib and aiosmtplib clients reach an in-memory server
  (:class:`~typed_smtpd.testing.fake.SocketpairSMTPServer`) for the rest of the test, and
  returns it;
* ``smtpd_options``: the options, a dict; override the fixture, use the ``smtpd`` marker
  (``@pytest.mark.smtpd(tls="starttls", auth="user:pw", faults=["rcpt/1=451"])``), or set
  ``TYPED_SMTPD_TLS``, ``TYPED_SMTPD_AUTH``, ``TYPED_SMTPD_HOSTNAME``, ``TYPED_SMTPD_HOST``,
  ``TYPED_SMTPD_LMTP``, ``TYPED_SMTPD_REQUIRE_STARTTLS``, ``TYPED_SMTPD_AUTH_REQUIRED``. The
  marker wins over the fixture, the fixture over the environment.

What must not live here: module-level imports of anything but pytest and the standard library.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

import pytest

if TYPE_CHECKING:
    from typed_smtpd.testing.fake import FakeSMTPServer, SocketpairSMTPServer
    from typed_smtpd.testing.server import LocalSMTPServer, ServerOptions

__all__ = [
    "SMTPD_ALIAS_PLUGIN",
    "fake_smtpd",
    "pytest_configure",
    "smtpd_factory",
    "smtpd_intercept",
    "smtpd_options",
    "typed_smtpd",
]

SMTPDFactory = Callable[..., "LocalSMTPServer"]
InterceptFactory = Callable[..., "SocketpairSMTPServer"]

#: The module holding the ``smtpd`` fixture, registered only when no other plugin has one.
SMTPD_ALIAS_PLUGIN: Final = "typed_smtpd.testing._smtpd_fixture"
#: The names other plugins register a ``smtpd`` fixture under (smtpdfix's entry point).
_OTHER_SMTPD_PLUGINS: Final = ("smtpd", "smtpdfix", "smtpdfix.fixture")


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``smtpd`` marker, and the ``smtpd`` fixture unless another plugin (such as
    smtpdfix) has a fixture of that name: ``typed_smtpd`` is always there."""
    config.addinivalue_line(
        "markers",
        "smtpd(**options): options for the fixtures of typed_smtpd (typed_smtpd, smtpd, "
        "smtpd_factory, fake_smtpd, smtpd_intercept): tls='starttls'|'implicit', "
        "auth='user:password', hostname=..., lmtp=True, handler=..., faults=['rcpt/1=451']",
    )
    manager = config.pluginmanager
    if not any(manager.has_plugin(name) for name in _OTHER_SMTPD_PLUGINS):
        manager.import_plugin(SMTPD_ALIAS_PLUGIN)


def _resolve(request: pytest.FixtureRequest, options: dict[str, Any]) -> ServerOptions:
    from typed_smtpd.testing.server import options_from_env

    merged = dict(options)
    marker = request.node.get_closest_marker("smtpd")
    if marker is not None:
        merged.update(marker.kwargs)
    try:
        return options_from_env().merged(merged)
    except ValueError as error:
        raise pytest.UsageError(f"typed_smtpd fixture options: {error}") from None


@pytest.fixture
def smtpd_options() -> dict[str, Any]:
    """Options for ``smtpd`` and ``fake_smtpd``; override this fixture to change them.

    Keys: ``handler``, ``tls`` (``"starttls"``/``"implicit"``), ``require_starttls``, ``auth``
    (``"user:password"``), ``auth_required``, ``hostname``, ``host``, ``lmtp``, ``faults`` (fault
    rules, :class:`~typed_smtpd.testing.Rule` or strings such as ``"eod/1=451"``),
    ``fault_seed``; any other key is passed to the SMTP class (``data_size_limit=1000``...).
    """
    return {}


@pytest.fixture
def smtpd_factory(request: pytest.FixtureRequest) -> Iterator[SMTPDFactory]:
    """Start real servers on demand: ``server = smtpd_factory(tls="implicit")``.

    Each call starts one more server (with the ``TYPED_SMTPD_*`` defaults, the marker's options
    and the given ones); all are stopped when the test ends.
    """
    from typed_smtpd.testing.server import LocalSMTPServer

    servers: list[LocalSMTPServer] = []

    def make(**options: Any) -> LocalSMTPServer:
        server = LocalSMTPServer(_resolve(request, options))
        server.start()
        servers.append(server)
        return server

    yield make
    for server in reversed(servers):
        server.stop()


@pytest.fixture
def typed_smtpd(smtpd_factory: SMTPDFactory, smtpd_options: dict[str, Any]) -> LocalSMTPServer:
    """A real SMTP server for this test, on 127.0.0.1 and a free port (also named ``smtpd``
    when no other plugin has a fixture of that name)."""
    return smtpd_factory(**smtpd_options)


@pytest.fixture
def smtpd_intercept(
    request: pytest.FixtureRequest, smtpd_options: dict[str, Any]
) -> Iterator[InterceptFactory]:
    """Intercept addresses for the rest of the test: ``server = smtpd_intercept(host, port)``.

    Each call adds ``(host, port)`` pairs (positional, after the first) with the keyword
    arguments of :meth:`~typed_smtpd.testing.fake.SocketpairSMTPServer.intercept`, and returns
    the one in-memory server of the test. TLS is always offered (STARTTLS, and implicit TLS on
    port 465); ``auth``, ``require_starttls``, ``handler``, ``faults`` and the SMTP options apply
    as for the other fixtures.
    """
    from contextlib import ExitStack

    from typed_smtpd.lmtp import LMTP
    from typed_smtpd.smtp import SMTP
    from typed_smtpd.testing.fake import SocketpairSMTPServer
    from typed_smtpd.testing.server import _PasswordCheck

    options = _resolve(request, smtpd_options)
    kwargs: dict[str, Any] = dict(options.smtp_kwargs)
    kwargs["hostname"] = options.hostname
    if options.auth is not None:
        kwargs["authenticator"] = _PasswordCheck(*options.auth)
        kwargs["auth_required"] = options.auth_required
    if options.require_starttls:
        kwargs["require_starttls"] = True
    with ExitStack() as stack:
        server: SocketpairSMTPServer | None = None

        def intercept(host: str, port: int, *more: tuple[str, int], **keywords: Any) -> Any:
            nonlocal server
            if server is None:
                server = SocketpairSMTPServer(
                    options.served_handler(),
                    server_class=LMTP if options.lmtp else SMTP,
                    **kwargs,
                )
                stack.enter_context(server)
            stack.enter_context(server.intercept(host, port, *more, **keywords))
            return server

        yield intercept


def _fake_kwargs(options: ServerOptions) -> dict[str, Any]:
    from typed_smtpd.lmtp import LMTP
    from typed_smtpd.smtp import SMTP
    from typed_smtpd.testing.server import TestCertificates, _PasswordCheck

    kwargs: dict[str, Any] = dict(options.smtp_kwargs)
    kwargs["hostname"] = options.hostname
    kwargs["server_class"] = LMTP if options.lmtp else SMTP
    if options.tls != "none":
        certificates = TestCertificates.for_hostname(options.hostname)
        if options.tls == "implicit":
            kwargs["implicit_tls_context"] = certificates.server_context()
            kwargs["client_tls_context"] = certificates.client_context()
        else:
            kwargs["tls_context"] = certificates.server_context()
            kwargs["require_starttls"] = options.require_starttls
    if options.auth is not None:
        kwargs["authenticator"] = _PasswordCheck(*options.auth)
        kwargs.setdefault("auth_require_tls", options.tls != "none")
        kwargs["auth_required"] = options.auth_required
    return kwargs


if importlib.util.find_spec("pytest_asyncio") is not None:
    import pytest_asyncio

    @pytest_asyncio.fixture
    async def fake_smtpd(
        request: pytest.FixtureRequest, smtpd_options: dict[str, Any]
    ) -> AsyncIterator[FakeSMTPServer]:
        """The in-memory fake server, started, configured like ``smtpd`` (no socket at all)."""
        from typed_smtpd.testing.fake import FakeSMTPServer

        options = _resolve(request, smtpd_options)
        async with FakeSMTPServer(options.served_handler(), **_fake_kwargs(options)) as server:
            yield server

else:  # pragma: no cover - pytest-asyncio is installed wherever the test suite runs

    @pytest.fixture
    def fake_smtpd() -> None:
        """Needs pytest-asyncio; without it, use ``async with FakeSMTPServer(...)``."""
        pytest.fail("the fake_smtpd fixture needs pytest-asyncio: pip install pytest-asyncio")
