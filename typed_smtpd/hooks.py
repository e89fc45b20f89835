"""Handler hooks: one :class:`typing.Protocol` per hook, and the :class:`HookRegistry`.

A handler is any object; each hook it defines is optional. The Protocols state the exact shape
the server calls, so a handler annotated against them gets mypy's help in the user's own code::

    class MyHandler:
        async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                              address: str, rcpt_options: list[str]) -> str: ...

    handler: HandleRCPT = MyHandler()   # checked statically

At run time the :class:`HookRegistry` looks each hook up once per handler class, checks its shape
(a sync ``handle_DATA`` or a missing parameter is a :class:`HookSignatureError` that names the hook
and what is wrong), warns about near-miss names such as ``handle_RCTP``, and keeps the bound hooks
as typed attributes for the engine to call: no per-connection ``dir()`` scans.
"""

from __future__ import annotations

import difflib
import inspect
import re
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, runtime_checkable

from typed_smtpd.session import AuthResult, Envelope, Session

if TYPE_CHECKING:
    from typed_smtpd.proxy_protocol import ProxyData
    from typed_smtpd.smtp import SMTP
    from typed_smtpd.stream import MessageStream

__all__ = [
    "HOOK_NAMES",
    "AuthHook",
    "AuthMechanism",
    "HandleAUTH",
    "HandleDATA",
    "HandleDATAStream",
    "HandleEHLO",
    "HandleException",
    "HandleHELO",
    "HandleLMTPRecipient",
    "HandleMAIL",
    "HandleNOOP",
    "HandlePROXY",
    "HandleQUIT",
    "HandleRCPT",
    "HandleRSET",
    "HandleSTARTTLS",
    "HandleVRFY",
    "Handler",
    "HookRegistry",
    "HookSignatureError",
    "auth_mechanism",
    "mechanism_name",
]


# --- the Protocols --------------------------------------------------------------------------------


@runtime_checkable
class HandleHELO(Protocol):
    """``HELO hostname``. Must set ``session.host_name``; returns the reply, such as
    ``f"250 {server.hostname}"``. If ``session.host_name`` is false-y afterwards (set so, or left
    at ``None``), the greeting failed and must be repeated: the client is not greeted."""

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str: ...


@runtime_checkable
class HandleEHLO(Protocol):
    """``EHLO hostname``. Receives the planned reply lines (``"250-host"`` ... ``"250 HELP"``)
    and returns the lines to send instead. Must set ``session.host_name``, as for HELO."""

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]: ...


@runtime_checkable
class HandleMAIL(Protocol):
    """``MAIL FROM:<address> [params]``. The address is ``""`` for the null path ``<>``;
    ``mail_options`` are the parameters with their case kept."""

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str: ...


@runtime_checkable
class HandleRCPT(Protocol):
    """``RCPT TO:<address> [params]``. Should append the address to ``envelope.rcpt_tos`` on
    success (the server does it once if the hook answers 2xx without recording it)."""

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str: ...


@runtime_checkable
class HandleDATA(Protocol):
    """End of DATA (or of ``BDAT ... LAST``): the message is in ``envelope.content``."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str: ...


@runtime_checkable
class HandleDATAStream(Protocol):
    """The content of DATA (or of every BDAT chunk) as it arrives: ``stream`` is an async
    iterator of :class:`bytes` (see :class:`~typed_smtpd.stream.MessageStream`), dot-unstuffed
    and checked as buffered content is. Returns the reply once the content is over; under LMTP
    one reply for every recipient, or a list with one per recipient.

    While the hook does not read, the server does not read from the client either. When both
    this hook and ``handle_DATA`` exist, the one defined by the more derived class is called;
    this one, when one class defines both."""

    async def handle_DATA_stream(
        self, server: SMTP, session: Session, envelope: Envelope, stream: MessageStream
    ) -> str | list[str]: ...


@runtime_checkable
class HandleLMTPRecipient(Protocol):
    """LMTP only: the final reply for one recipient of a delivered message (RFC 2033 section
    4.2). Called once per accepted recipient, in RCPT order, after ``handle_DATA`` (if any)."""

    async def handle_DATA_recipient(
        self, server: SMTP, session: Session, envelope: Envelope, recipient: str
    ) -> str: ...


@runtime_checkable
class HandleRSET(Protocol):
    """``RSET``."""

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str: ...


@runtime_checkable
class HandleNOOP(Protocol):
    """``NOOP [text]``; ``arg`` is ``""`` when the client sent no text."""

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str
    ) -> str: ...


@runtime_checkable
class HandleQUIT(Protocol):
    """``QUIT``; the connection closes after the reply."""

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str: ...


@runtime_checkable
class HandleVRFY(Protocol):
    """``VRFY address``."""

    async def handle_VRFY(
        self, server: SMTP, session: Session, envelope: Envelope, address: str
    ) -> str: ...


@runtime_checkable
class HandleAUTH(Protocol):
    """``AUTH mechanism [initial-response]``: replaces the whole built-in AUTH logic. ``args`` are
    the words after ``AUTH``. Returns the reply, or ``None`` when it already pushed one."""

    async def handle_AUTH(
        self, server: SMTP, session: Session, envelope: Envelope, args: list[str]
    ) -> str | None: ...


@runtime_checkable
class HandlePROXY(Protocol):
    """After a valid PROXY protocol header: truthy lets the connection go on, falsy closes it."""

    async def handle_PROXY(
        self, server: SMTP, session: Session, envelope: Envelope, proxy_data: ProxyData
    ) -> bool: ...


@runtime_checkable
class HandleSTARTTLS(Protocol):
    """Synchronous: after the TLS handshake. ``False`` refuses the session (every command but QUIT
    then gets 554)."""

    def handle_STARTTLS(self, server: SMTP, session: Session, envelope: Envelope) -> bool: ...


@runtime_checkable
class HandleException(Protocol):
    """Called (sync or async) when a command raised; returns the reply to send. The exception's
    text is never sent to the client by the server itself."""

    def handle_exception(self, error: Exception) -> str | Awaitable[str]: ...


class AuthMechanism(Protocol):
    """An ``auth_MECHANISM`` hook: runs the SASL exchange through ``server.challenge_auth()`` and
    returns an :class:`~typed_smtpd.session.AuthResult` (or, in the legacy form, ``None`` when it
    handled a failure itself, :data:`~typed_smtpd.session.MISSING` or ``False`` for bad
    credentials, and anything else as the login identity)."""

    async def __call__(self, server: SMTP, args: list[str]) -> AuthResult | object: ...


#: A bound ``auth_MECHANISM`` callable (handler method, or SMTP method bound to the server).
AuthHook = Callable[["SMTP", list[str]], Awaitable[object]]


# --- decorators ---------------------------------------------------------------------------------

_MECHANISM_RE: Final = re.compile(r"[A-Z0-9_-]+")
#: What :func:`auth_mechanism` accepts: SASL mechanism names are case-insensitive (RFC 4954).
_MECHANISM_ANY_CASE_RE: Final = re.compile(r"[A-Za-z0-9_-]+")
_F = TypeVar("_F", bound=Callable[..., Any])


def auth_mechanism(name: str) -> Callable[[_F], _F]:
    """Name an ``auth_*`` hook's mechanism explicitly (for names such as ``SCRAM-SHA-256``).
    Mechanism names are case-insensitive (:rfc:`4954`): the name is stored upper-cased.

    >>> class Handler:
    ...     @auth_mechanism("x-token")
    ...     async def auth_XTOKEN(self, server, args): ...
    >>> mechanism_name("auth_XTOKEN", Handler.auth_XTOKEN)
    'X-TOKEN'
    """
    if not _MECHANISM_ANY_CASE_RE.fullmatch(name):
        raise ValueError(f"invalid AUTH mechanism name: {name!r} (use A-Z, 0-9, '-' and '_')")
    upper = name.upper()

    def decorator(func: _F) -> _F:
        func.__auth_mechanism_name__ = upper  # type: ignore[attr-defined]
        return func

    return decorator


def mechanism_name(attribute: str, func: object) -> str | None:
    """The mechanism an ``auth_*`` attribute implements, or ``None`` if it is not a mechanism.

    ``auth_CRAM__MD5`` implements ``CRAM-MD5``; lower-case names are helpers, not mechanisms.
    """
    explicit = getattr(func, "__auth_mechanism_name__", None)
    if isinstance(explicit, str):
        return explicit.upper()
    if not attribute.startswith("auth_"):
        return None
    name = attribute[5:].replace("__", "-")
    return name if _MECHANISM_RE.fullmatch(name) else None


# --- the registry -------------------------------------------------------------------------------


class HookSignatureError(TypeError):
    """A handler hook does not have the shape the server calls it with."""


@dataclass(frozen=True, slots=True)
class _Shape:
    params: tuple[str, ...]
    is_async: bool | None  # None: either


_COMMON: Final = ("server", "session", "envelope")
_SHAPES: Final[dict[str, _Shape]] = {
    "handle_HELO": _Shape((*_COMMON, "hostname"), True),
    "handle_EHLO": _Shape((*_COMMON, "hostname", "responses"), True),
    "handle_MAIL": _Shape((*_COMMON, "address", "mail_options"), True),
    "handle_RCPT": _Shape((*_COMMON, "address", "rcpt_options"), True),
    "handle_DATA": _Shape(_COMMON, True),
    "handle_DATA_stream": _Shape((*_COMMON, "stream"), True),
    "handle_DATA_recipient": _Shape((*_COMMON, "recipient"), True),
    "handle_RSET": _Shape(_COMMON, True),
    "handle_NOOP": _Shape((*_COMMON, "arg"), True),
    "handle_QUIT": _Shape(_COMMON, True),
    "handle_VRFY": _Shape((*_COMMON, "address"), True),
    "handle_AUTH": _Shape((*_COMMON, "args"), True),
    "handle_PROXY": _Shape((*_COMMON, "proxy_data"), None),
    "handle_STARTTLS": _Shape(_COMMON, False),
    "handle_exception": _Shape(("error",), None),
}

#: Every hook name the server calls.
HOOK_NAMES: Final = frozenset(_SHAPES)
_KNOWN_EXTRA: Final = frozenset({"handle_message"})  # Message handlers' own method


def _is_async(func: object) -> bool:
    target = inspect.unwrap(func) if callable(func) else func
    if inspect.iscoroutinefunction(target):
        return True
    call = getattr(target, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def _accepts(func: Callable[..., object], count: int) -> bool:
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):  # builtins without a signature: trust them
        return True
    try:
        signature.bind(*([None] * count))
    except TypeError:
        return False
    return True


def _where(owner: object, name: str) -> str:
    cls = owner if isinstance(owner, type) else type(owner)
    return f"{cls.__qualname__}.{name}"


def _check(owner: object, name: str, func: object) -> bool:
    """Validate one hook; returns True for the deprecated 4-argument ``handle_EHLO``."""
    shape = _SHAPES[name]
    where = _where(owner, name)
    if not callable(func):
        raise HookSignatureError(f"{where} must be callable, not {type(func).__name__}")
    expected = ", ".join(shape.params)
    if shape.is_async is True and not _is_async(func):
        raise HookSignatureError(
            f"{where} must be a coroutine function (async def {name}(self, {expected})): "
            "the server awaits it"
        )
    if shape.is_async is False and _is_async(func):
        raise HookSignatureError(
            f"{where} must be a plain function (def {name}(self, {expected})), not async"
        )
    if _accepts(func, len(shape.params)):
        return False
    if name == "handle_EHLO" and _accepts(func, len(shape.params) - 1):
        return True
    raise HookSignatureError(
        f"{where} has the wrong parameters: the server calls it as {name}({expected})"
    )


@dataclass(frozen=True, slots=True)
class _Spec:
    names: tuple[str, ...]
    legacy_ehlo: bool
    mechanisms: tuple[tuple[str, str], ...]


_SPEC_CACHE: dict[type, _Spec] = {}
_SPEC_CACHE_MAX: Final = 256


def _hooky(name: str) -> bool:
    return name.startswith(("handle_", "auth_"))


def _build_spec(handler: object) -> _Spec:
    names: list[str] = []
    legacy_ehlo = False
    mechanisms: list[tuple[str, str]] = []
    for attribute in dir(handler):
        if not _hooky(attribute):
            continue
        try:
            value = getattr(handler, attribute)
        except AttributeError:  # properties that raise
            continue
        if attribute in _SHAPES:
            if value is None:  # set to None: the hook is turned off
                continue
            if _check(handler, attribute, value):
                legacy_ehlo = True
            names.append(attribute)
        elif attribute.startswith("auth_"):
            mechanism = mechanism_name(attribute, value)
            if mechanism is not None and callable(value):
                if not _is_async(value):
                    raise HookSignatureError(
                        f"{_where(handler, attribute)} must be a coroutine function "
                        "(async def ...(self, server, args))"
                    )
                mechanisms.append((mechanism, attribute))
        elif attribute not in _KNOWN_EXTRA:
            close = difflib.get_close_matches(attribute, sorted(HOOK_NAMES), n=1, cutoff=0.75)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            warnings.warn(
                f"{_where(handler, attribute)} is not a handler hook the server calls{hint}",
                UserWarning,
                stacklevel=4,
            )
    if legacy_ehlo:
        warnings.warn(
            f"{_where(handler, 'handle_EHLO')} uses the deprecated 4-argument form; add the "
            "`responses` parameter and return the list of reply lines",
            DeprecationWarning,
            stacklevel=4,
        )
    if "handle_DATA" in names and "handle_DATA_stream" in names:
        names.remove(_losing_data_hook(handler))
    return _Spec(tuple(names), legacy_ehlo, tuple(mechanisms))


def _losing_data_hook(handler: object) -> str:
    """Of ``handle_DATA`` and ``handle_DATA_stream``, the one not called: the one the less
    derived class defines. A class that defines both streams, and is warned about it unless it
    is one of the built-in handlers, which document it."""
    order: list[object] = [handler, *type(handler).__mro__]
    if isinstance(handler, type):
        order = list(handler.__mro__)

    def owner(name: str) -> int:
        return next(
            (i for i, where in enumerate(order) if name in getattr(where, "__dict__", {})),
            len(order),
        )

    data, stream = owner("handle_DATA"), owner("handle_DATA_stream")
    if data < stream:
        return "handle_DATA_stream"
    where = order[stream]
    if data == stream and getattr(where, "__module__", None) != "typed_smtpd.handlers":
        warnings.warn(
            f"{_where(handler, 'handle_DATA_stream')} and handle_DATA are both defined: "
            "messages stream to handle_DATA_stream, and the server never calls handle_DATA",
            UserWarning,
            stacklevel=5,
        )
    return "handle_DATA"


def _spec_for(handler: object) -> _Spec:
    instance_dict = getattr(handler, "__dict__", None)
    cacheable = not isinstance(handler, type) and not (
        isinstance(instance_dict, dict) and any(_hooky(str(k)) for k in instance_dict)
    )
    if not cacheable:
        return _build_spec(handler)
    cls = type(handler)
    spec = _SPEC_CACHE.get(cls)
    if spec is None:
        spec = _build_spec(handler)
        if len(_SPEC_CACHE) >= _SPEC_CACHE_MAX:
            _SPEC_CACHE.clear()
        _SPEC_CACHE[cls] = spec
    return spec


class HookRegistry:
    """A handler's hooks, validated and bound: each attribute is the hook or ``None``.

    >>> class Handler:
    ...     async def handle_DATA(self, server, session, envelope):
    ...         return "250 OK"
    >>> hooks = HookRegistry(Handler())
    >>> hooks.data is not None, hooks.rcpt is None
    (True, True)
    """

    __slots__ = (
        "auth",
        "auth_mechanisms",
        "data",
        "data_recipient",
        "data_stream",
        "ehlo",
        "ehlo_legacy",
        "exception",
        "handler",
        "helo",
        "mail",
        "noop",
        "proxy",
        "quit",
        "rcpt",
        "rset",
        "starttls",
        "vrfy",
    )

    def __init__(self, handler: object) -> None:
        self.handler: object = handler
        spec = _spec_for(handler)
        bound: dict[str, Any] = {name: getattr(handler, name) for name in spec.names}
        get = bound.get
        self.helo: Callable[[SMTP, Session, Envelope, str], Awaitable[object]] | None = get(
            "handle_HELO"
        )
        self.ehlo: Callable[[SMTP, Session, Envelope, str, list[str]], Awaitable[object]] | None = (
            None
        )
        self.ehlo_legacy: Callable[[SMTP, Session, Envelope, str], Awaitable[object]] | None = None
        if spec.legacy_ehlo:
            self.ehlo_legacy = get("handle_EHLO")
        else:
            self.ehlo = get("handle_EHLO")
        self.mail: Callable[[SMTP, Session, Envelope, str, list[str]], Awaitable[object]] | None
        self.mail = get("handle_MAIL")
        self.rcpt: Callable[[SMTP, Session, Envelope, str, list[str]], Awaitable[object]] | None
        self.rcpt = get("handle_RCPT")
        self.data: Callable[[SMTP, Session, Envelope], Awaitable[object]] | None = get(
            "handle_DATA"
        )
        self.data_recipient: Callable[[SMTP, Session, Envelope, str], Awaitable[object]] | None = (
            get("handle_DATA_recipient")
        )
        self.data_stream: (
            Callable[[SMTP, Session, Envelope, MessageStream], Awaitable[object]] | None
        ) = get("handle_DATA_stream")
        self.rset: Callable[[SMTP, Session, Envelope], Awaitable[object]] | None = get(
            "handle_RSET"
        )
        self.noop: Callable[[SMTP, Session, Envelope, str], Awaitable[object]] | None = get(
            "handle_NOOP"
        )
        self.quit: Callable[[SMTP, Session, Envelope], Awaitable[object]] | None = get(
            "handle_QUIT"
        )
        self.vrfy: Callable[[SMTP, Session, Envelope, str], Awaitable[object]] | None = get(
            "handle_VRFY"
        )
        self.auth: Callable[[SMTP, Session, Envelope, list[str]], Awaitable[object]] | None = get(
            "handle_AUTH"
        )
        self.proxy: Callable[[SMTP, Session, Envelope, ProxyData], object] | None = get(
            "handle_PROXY"
        )
        self.starttls: Callable[[SMTP, Session, Envelope], object] | None = get("handle_STARTTLS")
        self.exception: Callable[[Exception], object] | None = get("handle_exception")
        self.auth_mechanisms: dict[str, AuthHook] = {
            mechanism: getattr(handler, attribute) for mechanism, attribute in spec.mechanisms
        }


# --- the opt-in base class for type checkers ----------------------------------------------------


class Handler:
    """An optional base class for handlers, so that type checkers check every hook's shape.

    One line per handler class opts in: subclass it, and mark each hook ``@override``
    (:func:`typing.override` from Python 3.12, :func:`typing_extensions.override` before)::

        from typing_extensions import override

        class MyHandler(Handler):
            @override
            async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                                  address: str, rcpt_options: list[str]) -> str: ...

    ``mypy --strict`` and pyright then report, in the handler's own code: a hook that is not a
    coroutine function (or, for ``handle_STARTTLS``, is one), a hook with other parameters, and
    one with another return type, as incompatible overrides; and a misspelled hook
    (``handle_RCTP``) as an ``@override`` that overrides nothing. Switch on mypy's
    ``explicit-override`` error code or pyright's ``reportImplicitOverride`` so that a hook without
    ``@override`` is reported too, and ``@override`` cannot be forgotten.

    The hooks are declared for type checkers only: at run time this class has none, so a
    subclass has exactly the hooks it defines and the server's defaults apply to the rest (never
    call ``super().handle_RCPT(...)``). AUTH mechanisms (``auth_*``) are not declared here: their
    shape is :class:`AuthMechanism`.
    """

    __slots__ = ()

    if TYPE_CHECKING:

        async def handle_HELO(
            self, server: SMTP, session: Session, envelope: Envelope, hostname: str
        ) -> str:
            """As :class:`HandleHELO` states it."""

        async def handle_EHLO(
            self,
            server: SMTP,
            session: Session,
            envelope: Envelope,
            hostname: str,
            responses: list[str],
        ) -> list[str]:
            """As :class:`HandleEHLO` states it."""

        async def handle_MAIL(
            self,
            server: SMTP,
            session: Session,
            envelope: Envelope,
            address: str,
            mail_options: list[str],
        ) -> str:
            """As :class:`HandleMAIL` states it."""

        async def handle_RCPT(
            self,
            server: SMTP,
            session: Session,
            envelope: Envelope,
            address: str,
            rcpt_options: list[str],
        ) -> str:
            """As :class:`HandleRCPT` states it."""

        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            """As :class:`HandleDATA` states it."""

        async def handle_DATA_stream(
            self, server: SMTP, session: Session, envelope: Envelope, stream: MessageStream
        ) -> str | list[str]:
            """As :class:`HandleDATAStream` states it."""

        async def handle_DATA_recipient(
            self, server: SMTP, session: Session, envelope: Envelope, recipient: str
        ) -> str:
            """As :class:`HandleLMTPRecipient` states it."""

        async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            """As :class:`HandleRSET` states it."""

        async def handle_NOOP(
            self, server: SMTP, session: Session, envelope: Envelope, arg: str
        ) -> str:
            """As :class:`HandleNOOP` states it."""

        async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            """As :class:`HandleQUIT` states it."""

        async def handle_VRFY(
            self, server: SMTP, session: Session, envelope: Envelope, address: str
        ) -> str:
            """As :class:`HandleVRFY` states it."""

        async def handle_AUTH(
            self, server: SMTP, session: Session, envelope: Envelope, args: list[str]
        ) -> str | None:
            """As :class:`HandleAUTH` states it."""

        def handle_PROXY(
            self, server: SMTP, session: Session, envelope: Envelope, proxy_data: ProxyData
        ) -> bool | Awaitable[bool]:
            """As :class:`HandlePROXY` states it (sync or async)."""

        def handle_STARTTLS(self, server: SMTP, session: Session, envelope: Envelope) -> bool:
            """As :class:`HandleSTARTTLS` states it."""

        def handle_exception(self, error: Exception) -> str | Awaitable[str]:
            """As :class:`HandleException` states it (sync or async)."""
