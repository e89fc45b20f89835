"""What the connections of one server share, built once: the engine's configuration, the
handler's bound hooks, and the AUTH callables run by the adapter.

:func:`shared_settings` builds them from a server's constructor arguments the first time a
connection with those arguments is made, and every later connection with the same handler and
arguments gets the same frozen object: nothing is looked up, parsed or validated per connection.
"""

from __future__ import annotations

import functools
import inspect
import logging
import operator
import socket
import ssl
import warnings
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar

from typed_smtpd._version import __version__
from typed_smtpd.hooks import AuthHook, HookRegistry, mechanism_name
from typed_smtpd.monitoring import ServerStats
from typed_smtpd.proto.auth import AuthResult, LoginPassword
from typed_smtpd.proto.engine import (
    AIOSMTPD_BOGUS_LIMIT,
    Authenticate,
    CallHook,
    CallLegacy,
    EngineConfig,
    HandleError,
    HelpEntry,
    Request,
    RunCommand,
    RunMechanism,
    StreamMessage,
)
from typed_smtpd.proto.limits import BOGUS_LIMIT, Limits
from typed_smtpd.proto.proxy import parse_trusted_networks
from typed_smtpd.stream import MessageStream

if TYPE_CHECKING:
    from typed_smtpd.session import Envelope, Session
    from typed_smtpd.smtp import SMTP

__all__ = [
    "CALL_LIMIT_DEFAULT",
    "HOOK_ATTRIBUTES",
    "IDENT",
    "AuthCallbackType",
    "AuthenticatorType",
    "CommandMethod",
    "ServerSettings",
    "collect_commands",
    "settle",
    "shared_settings",
    "syntax",
]

log: logging.Logger = logging.getLogger("mail.log")

#: An ``smtp_<VERB>`` command method, unbound: ``await method(server, arg)``.
CommandMethod = Callable[["SMTP", "str | None"], Awaitable[None]]
#: The deprecated ``auth_callback(mechanism, login, password) -> bool``.
AuthCallbackType = Callable[[str, bytes, bytes], bool]
#: ``authenticator(server, session, envelope, mechanism, auth_data)``, sync or async.
AuthenticatorType = Callable[
    ["SMTP", "Session", "Envelope", str, Any], "AuthResult | Awaitable[AuthResult]"
]
#: What the server says of itself after its name in the greeting, unless told otherwise.
IDENT: Final = f"ESMTP typed_smtpd {__version__}"
_C = TypeVar("_C", bound=Callable[..., Any])


def syntax(text: str, extended: str | None = None, when: str | None = None) -> Callable[[_C], _C]:
    """Give a command method its HELP text (``extended`` is appended for ESMTP clients; ``when``
    names a server attribute that must be truthy for the command to be listed)."""

    def decorator(func: _C) -> _C:
        func.__smtp_syntax__ = text  # type: ignore[attr-defined]
        func.__smtp_syntax_extended__ = extended  # type: ignore[attr-defined]
        func.__smtp_syntax_when__ = when  # type: ignore[attr-defined]
        return func

    return decorator


#: The default of each per-command limit when ``command_call_limit`` is a dict without ``"*"``.
CALL_LIMIT_DEFAULT: Final = 20
#: The modules whose ``smtp_VERB`` and ``auth_*`` methods only hand over to the engine.
_OWN_MODULES: Final = frozenset({"typed_smtpd.smtp", "typed_smtpd.lmtp", "typed_smtpd.commands"})
#: The SMTP greetings LMTP refuses (RFC 2033 section 4.1).
_LMTP_REFUSED: Final = frozenset({"HELO", "EHLO"})
#: The arguments of ``SMTP.__init__`` that configure the server (the others are the handler and
#: what each connection keeps for itself: its name, TLS context, loop and tracker).
_OPTION_NAMES: Final = (
    "data_size_limit",
    "enable_SMTPUTF8",
    "decode_data",
    "ident",
    "timeout",
    "auth_required",
    "auth_require_tls",
    "auth_exclude_mechanism",
    "auth_callback",
    "command_call_limit",
    "authenticator",
    "proxy_protocol_timeout",
    "bare_newline",
    "max_recipients",
    "bogus_limit",
    "data_timeout",
    "max_auth_failures",
    "proxy_trusted_networks",
    "enhanced_status_codes",
    "enable_CRAM_MD5",
)
_option_values: Final = operator.itemgetter(*_OPTION_NAMES)
#: The registry attribute of each hook the engine calls by name.
HOOK_ATTRIBUTES: Final = {
    "handle_HELO": "helo",
    "handle_MAIL": "mail",
    "handle_RCPT": "rcpt",
    "handle_DATA": "data",
    "handle_DATA_recipient": "data_recipient",
    "handle_DATA_stream": "data_stream",
    "handle_RSET": "rset",
    "handle_NOOP": "noop",
    "handle_QUIT": "quit",
    "handle_VRFY": "vrfy",
    "handle_AUTH": "auth",
    "handle_PROXY": "proxy",
    "handle_STARTTLS": "starttls",
    "handle_exception": "exception",
}


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What the connections of one server share: built once, never changed."""

    config: EngineConfig
    hooks: HookRegistry
    #: The AUTH mechanisms run here rather than by the engine, as ``mechanism(server, args)``.
    mechanisms: Mapping[str, AuthHook]
    #: ``authenticator(server, session, envelope, mechanism, auth_data)``, sync or async.
    authenticator: Callable[..., object] | None
    #: The deprecated ``auth_callback(mechanism, login, password) -> bool``.
    auth_callback: Callable[[str, bytes, bytes], bool] | None
    #: The ``smtp_VERB`` method of each verb of the server class.
    commands: Mapping[str, Callable[[SMTP, str | None], Awaitable[None]]]
    #: Where connections without a :class:`~typed_smtpd.smtp.ConnectionTracker` count.
    stats: ServerStats = field(default_factory=ServerStats, compare=False)

    async def run(self, server: SMTP, request: Request) -> object:
        """Run the user code ``request`` names, for the connection ``server``; its result."""
        engine = server.engine
        match request:
            case CallHook(name=name, args=args):
                hook = self._hook(name)
                return await settle(hook(server, engine.session, engine.envelope, *args))
            case HandleError(error=error):
                assert self.hooks.exception is not None
                return await settle(self.hooks.exception(error))
            case CallLegacy(name=name):
                return await self._legacy(server, name)
            case RunCommand(verb=verb, arg=arg):
                await self.commands[verb](server, arg)
                return None
            case RunMechanism(mechanism=mechanism, args=args):
                return await self.mechanisms[mechanism](server, list(args))
            case Authenticate(mechanism=mechanism, auth_data=auth_data):
                return await self._authenticate(server, mechanism, auth_data)
            case StreamMessage(stream=stream):
                assert self.hooks.data_stream is not None
                reader = MessageStream(server, stream)
                return await self.hooks.data_stream(server, engine.session, engine.envelope, reader)
        raise AssertionError(f"not a request for user code: {request!r}")

    def _hook(self, name: str) -> Callable[..., object]:
        hooks = self.hooks
        hook: Callable[..., object] | None
        if name == "handle_EHLO":
            hook = hooks.ehlo if hooks.ehlo is not None else hooks.ehlo_legacy
        else:
            hook = getattr(hooks, HOOK_ATTRIBUTES[name])
        assert hook is not None, name
        return hook

    @staticmethod
    async def _legacy(server: SMTP, name: str) -> object:
        if name == "process_message":
            warnings.warn(
                "process_message is deprecated; use handle_DATA", DeprecationWarning, stacklevel=2
            )
            envelope = server.engine.envelope
            legacy = getattr(server.event_handler, "process_message")  # noqa: B009
            peer = server.engine.session.peer
            return await settle(
                legacy(peer, envelope.mail_from, envelope.rcpt_tos, envelope.content)
            )
        hook = "handle_EHLO" if name == "ehlo_hook" else "handle_RSET"
        warnings.warn(
            f"SMTP.{name} is deprecated; use the {hook} handler hook",
            DeprecationWarning,
            stacklevel=2,
        )
        await getattr(server, name)()
        return None

    async def _authenticate(self, server: SMTP, mechanism: str, auth_data: object) -> AuthResult:
        engine = server.engine
        if self.authenticator is not None:
            result = await settle(
                self.authenticator(server, engine.session, engine.envelope, mechanism, auth_data)
            )
            if not isinstance(result, AuthResult):
                raise TypeError(f"authenticator returned {type(result).__name__}, not AuthResult")
            return result
        if self.auth_callback is not None and isinstance(auth_data, LoginPassword):
            ok = self.auth_callback(mechanism, auth_data.login, auth_data.password)
            return AuthResult(success=bool(ok), handled=False, auth_data=auth_data)
        return AuthResult(success=False, handled=False)


_SERVERS: dict[tuple[object, ...], tuple[object, ServerSettings]] = {}
_SERVERS_MAX: Final = 64


@functools.lru_cache(maxsize=1)
def fqdn() -> str:
    """This host's name, the default ``hostname``: looked up once per process, never per
    connection (it can mean a DNS query)."""
    return socket.getfqdn()


def _freeze(value: object) -> object:
    if isinstance(value, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple | set | frozenset):
        return tuple(_freeze(v) for v in value)
    try:
        hash(value)
    except TypeError:
        return id(value)
    return value


def _is_builtin(method: object) -> bool:
    return getattr(method, "__module__", None) in _OWN_MODULES


def shared_settings(
    server: SMTP,
    handler: object,
    options: Mapping[str, Any],
    *,
    commands: Mapping[str, CommandMethod],
    mechanisms: Mapping[str, str],
    lmtp: bool,
) -> ServerSettings:
    """The settings of the server ``server`` belongs to: cached per server class, handler,
    announced name, TLS context and every other constructor argument, and built on a miss.
    ``options`` holds the constructor's arguments by name (others in it are ignored; without
    ``replies`` the server's replies are typed_smtpd's own).

    ``commands`` maps each verb of the server class to its ``smtp_VERB`` method, ``mechanisms``
    each AUTH mechanism of the class to the name of its ``auth_*`` method.
    """
    _warn_about(options)
    cls = type(server)
    head = (
        cls,
        id(handler),
        server.hostname,
        server.tls_context,
        server.require_starttls,
        cls.command_size_limit,
        cls.line_length_limit,
        cls.local_part_limit,
        cls.AuthLoginUsernameChallenge,
        cls.AuthLoginPasswordChallenge,
    )
    values = (*_option_values(options), _replies(options))
    key = (*head, *values)
    try:
        hash(key)
    except TypeError:  # a list or dict among the arguments
        key = (*head, _freeze(values))
    found = _SERVERS.get(key)
    if found is not None and found[0] is handler:
        return found[1]
    settings = _build(server, handler, _normalized(options), (commands, mechanisms, lmtp))
    if len(_SERVERS) >= _SERVERS_MAX:
        _SERVERS.clear()
    _SERVERS[key] = (handler, settings)  # the handler is kept, so its id is not reused
    return settings


def _normalized(options: Mapping[str, Any]) -> dict[str, Any]:
    replies = _replies(options)
    bogus_limit = options["bogus_limit"]
    if bogus_limit is None:  # the fifth unknown command ends it, as in aiosmtpd, in its mode
        bogus_limit = AIOSMTPD_BOGUS_LIMIT if replies == "aiosmtpd" else BOGUS_LIMIT
    return {
        **dict(zip(_OPTION_NAMES, _option_values(options), strict=True)),
        "replies": replies,
        "bogus_limit": bogus_limit,
        "ident": IDENT if options["ident"] is None else options["ident"],
        "auth_exclude_mechanism": tuple(options["auth_exclude_mechanism"] or ()),
        "proxy_trusted_networks": tuple(options["proxy_trusted_networks"] or ()),
    }


def _replies(options: Mapping[str, Any]) -> Any:
    return options.get("replies", "typed")


def _warn_about(options: Mapping[str, Any]) -> None:
    # Warned at each construction, pointing at the code that constructs the server.
    if options["auth_required"] and not options["auth_require_tls"]:
        warnings.warn(
            "auth_required=True with auth_require_tls=False lets credentials cross the "
            "network in clear text",
            UserWarning,
            stacklevel=4,
        )
    if options["auth_callback"] is not None:
        warnings.warn(
            "auth_callback is deprecated; use authenticator", DeprecationWarning, stacklevel=4
        )


def _check_options(server: SMTP, options: Mapping[str, Any]) -> None:
    tls_context = server.tls_context
    if tls_context is not None:
        if tls_context.verify_mode == ssl.CERT_REQUIRED:
            log.warning(
                "tls_context.verify_mode is CERT_REQUIRED: clients without a "
                "certificate cannot start TLS"
            )
        if tls_context.check_hostname:
            log.warning("tls_context.check_hostname is set: it has no meaning on a server")
    proxy_timeout = options["proxy_protocol_timeout"]
    if proxy_timeout is not None:
        if proxy_timeout <= 0:
            raise ValueError("proxy_protocol_timeout must be > 0")
        if proxy_timeout < 3.0:
            log.warning("proxy_protocol_timeout below 3 s may cut off slow proxies")


def _build(
    server: SMTP,
    handler: object,
    options: Mapping[str, Any],
    shape: tuple[Mapping[str, CommandMethod], Mapping[str, str], bool],
) -> ServerSettings:
    _check_options(server, options)
    commands, mechanisms, lmtp = shape
    cls = type(server)
    limits = Limits(
        data_size_limit=options["data_size_limit"],
        command_size_limit=cls.command_size_limit,
        line_length_limit=cls.line_length_limit,
        max_recipients=options["max_recipients"],
        bogus_limit=options["bogus_limit"],
        timeout=options["timeout"],
        data_timeout=options["data_timeout"],
        max_auth_failures=options["max_auth_failures"],
        local_part_limit=cls.local_part_limit,
        bare_newline=options["bare_newline"],
    )
    hooks = HookRegistry(handler)
    engine_run, adapter_run = _mechanisms(cls, mechanisms, hooks, options)
    config = EngineConfig(
        hostname=server.hostname,
        ident=options["ident"],
        limits=limits,
        lmtp=lmtp,
        replies=options["replies"],
        enhanced_status_codes=options["enhanced_status_codes"],
        smtputf8=options["enable_SMTPUTF8"],
        decode_data=options["decode_data"],
        tls_available=server.tls_context is not None,
        require_starttls=server.require_starttls,
        auth_required=options["auth_required"],
        auth_require_tls=options["auth_require_tls"],
        mechanisms=frozenset(engine_run) | frozenset(adapter_run),
        engine_mechanisms=frozenset(engine_run),
        login_challenges=(cls.AuthLoginUsernameChallenge, cls.AuthLoginPasswordChallenge),
        call_limits=_parse_call_limit(options["command_call_limit"]),
        proxy_timeout=options["proxy_protocol_timeout"],
        proxy_trusted=parse_trusted_networks(options["proxy_trusted_networks"]),
        hooks=_hook_names(hooks, handler),
        legacy=frozenset(
            name for name in ("ehlo_hook", "rset_hook") if getattr(server, name, None)
        ),
        commands=frozenset(commands),
        custom_commands=frozenset(
            verb for verb, method in commands.items() if not _is_builtin(method)
        ),
        help=_help_entries(commands),
        help_verbs=_help_verbs(server, commands, lmtp=lmtp),
    )
    return ServerSettings(
        config, hooks, adapter_run, options["authenticator"], options["auth_callback"], commands
    )


def _hook_names(hooks: HookRegistry, handler: object) -> frozenset[str]:
    names = {name for name, attribute in HOOK_ATTRIBUTES.items() if getattr(hooks, attribute)}
    if hooks.ehlo is not None:
        names.add("handle_EHLO")
    if hooks.ehlo_legacy is not None:
        names |= {"handle_EHLO", "handle_EHLO:legacy"}
    if getattr(handler, "process_message", None) is not None:
        names.add("process_message")
    return frozenset(names)


def _mechanisms(
    cls: type, mechanisms: Mapping[str, str], hooks: HookRegistry, options: Mapping[str, Any]
) -> tuple[set[str], dict[str, AuthHook]]:
    """The mechanisms offered: those the engine runs, and those the adapter runs."""
    engine_run: set[str] = set()
    adapter_run: dict[str, AuthHook] = {}
    for mechanism, attribute in mechanisms.items():
        if mechanism == "CRAM-MD5" and not (
            options["enable_CRAM_MD5"] and options["authenticator"]
        ):
            # Opt-in: an authenticator written for PLAIN/LOGIN reads auth_data.password,
            # which a CRAM-MD5 exchange cannot give it.
            continue
        method = getattr(cls, attribute)
        if _is_builtin(method):
            engine_run.add(mechanism)
        else:
            adapter_run[mechanism] = method
    for mechanism, hook in hooks.auth_mechanisms.items():
        engine_run.discard(mechanism)
        adapter_run[mechanism] = hook
    excluded = {m.upper() for m in options["auth_exclude_mechanism"]}
    return engine_run - excluded, {m: f for m, f in adapter_run.items() if m not in excluded}


def _help_entries(commands: Mapping[str, Callable[..., object]]) -> dict[str, HelpEntry]:
    entries = {}
    for verb, method in commands.items():
        usage = getattr(method, "__smtp_syntax__", None) or verb
        extended = getattr(method, "__smtp_syntax_extended__", None) or ""
        entries[verb] = HelpEntry(usage, extended)
    return entries


def _help_verbs(
    server: SMTP, commands: Mapping[str, Callable[..., object]], *, lmtp: bool
) -> tuple[str, ...]:
    """The verbs HELP lists: not EXPN, nor a command whose ``when`` attribute is off, nor (for
    LMTP) the built-in HELO and EHLO, which LMTP refuses (RFC 2033 section 4.1)."""
    verbs = []
    for verb, method in commands.items():
        when = getattr(method, "__smtp_syntax_when__", None)
        if verb == "EXPN" or (when and not getattr(server, when, None)):
            continue
        if lmtp and verb in _LMTP_REFUSED and _is_builtin(method):
            continue
        verbs.append(verb)
    return tuple(sorted(verbs))


def _parse_call_limit(limit: object) -> dict[str, int] | None:
    if limit is None:
        return None
    if isinstance(limit, bool):
        raise TypeError("command_call_limit must be an int or a dict of str to int")
    if isinstance(limit, int):
        return {"*": limit}
    if not isinstance(limit, dict):
        raise TypeError("command_call_limit must be an int or a dict of str to int")
    for key, value in limit.items():
        if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("command_call_limit must map command names to int")
    result = {key.upper(): value for key, value in limit.items()}
    result.setdefault("*", CALL_LIMIT_DEFAULT)
    return result


def collect_commands(cls: type) -> tuple[dict[str, CommandMethod], dict[str, str]]:
    """The ``smtp_VERB`` methods of a server class by verb, and the name of the ``auth_*``
    method of each AUTH mechanism it implements (collected once, when the class is made)."""
    commands: dict[str, CommandMethod] = {}
    mechanisms: dict[str, str] = {}
    for name in dir(cls):
        if name.startswith("smtp_"):
            method = getattr(cls, name)
            if method is None:  # a subclass removing a command
                continue
            if not inspect.iscoroutinefunction(method):
                raise TypeError(
                    f"{cls.__qualname__}.{name} must be a coroutine function: "
                    f"async def {name}(self, arg)"
                )
            commands[name[5:].upper()] = method
        elif name.startswith("auth_"):
            mechanism = mechanism_name(name, getattr(cls, name))
            if mechanism is not None:
                mechanisms[mechanism] = name
    return commands, mechanisms


async def settle(result: object) -> Any:
    """``result``, awaited if it is awaitable (hooks may be sync or async)."""
    if inspect.isawaitable(result):
        return await result
    return result
