"""Per-connection and per-transaction state: :class:`Session`, :class:`Envelope`, AUTH values.

These are the objects every handler hook receives. They are mutable dataclasses owned by the
:class:`~typed_smtpd.smtp.SMTP` instance of one connection; hooks may read and change them, and may
add attributes of their own for coordination between hooks (as aiosmtpd allows), which is why they
do not use ``__slots__``.

Nothing in this module does I/O.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

if TYPE_CHECKING:
    from typed_smtpd.proxy_protocol import ProxyData

__all__ = [
    "MISSING",
    "AuthResult",
    "BodyType",
    "CramMD5Response",
    "Envelope",
    "LoginPassword",
    "PeerType",
    "RecipientDSN",
    "Session",
    "_Missing",
]

log: logging.Logger = logging.getLogger("mail.log")

#: The peer of a connection: ``(host, port)`` (or the 4-tuple of IPv6) for TCP, a path for Unix
#: sockets, ``None`` before the connection is made.
PeerType = tuple[Any, ...] | str | None

#: The values of the ``BODY=`` MAIL parameter (RFC 6152, RFC 3030).
BodyType = Literal["7BIT", "8BITMIME", "BINARYMIME"]


class _Missing(Enum):
    """The type of :data:`MISSING`."""

    MISSING = auto()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


#: Sentinel for "no value": returned by an ``auth_MECHANISM`` hook when the credentials are
#: invalid, and by :meth:`SMTP.challenge_auth` when the client cancelled the exchange.
MISSING: Final = _Missing.MISSING


class LoginPassword(NamedTuple):
    """The credentials collected by the built-in LOGIN and PLAIN mechanisms.

    The password never appears in ``repr()`` or ``str()`` so that it cannot leak into logs.
    """

    login: bytes
    password: bytes

    def __repr__(self) -> str:
        return f"LoginPassword(login={self.login!r}, password=...)"

    def __str__(self) -> str:
        return self.__repr__()


@dataclass(kw_only=True)
class AuthResult:
    """What an ``authenticator`` (or an ``auth_MECHANISM`` hook) decides about an AUTH attempt.

    ``success``: whether the credentials are accepted. ``handled``: when ``False`` on a failure,
    the server sends the default failure reply; when ``True`` the hook already replied.
    ``message``: a full reply line (``"235 2.7.0 Welcome"``) to send instead of the default.
    ``auth_data``: stored in :attr:`Session.auth_data`; never shown by ``repr()``.
    """

    success: bool
    handled: bool = True
    message: str | None = None
    auth_data: Any = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class CramMD5Response:
    """What a client answered to a CRAM-MD5 challenge (RFC 2195).

    An authenticator cannot read a password from it; it checks one with :meth:`verify`.
    """

    login: bytes
    challenge: bytes = field(repr=False)
    digest: bytes = field(repr=False)

    def verify(self, password: bytes | str) -> bool:
        """Whether ``password`` produces the client's digest (compared in constant time)."""
        if isinstance(password, str):
            password = password.encode("utf-8")
        expected = hmac.new(password, self.challenge, hashlib.md5).hexdigest().encode("ascii")
        return hmac.compare_digest(expected, self.digest.lower())


@dataclass(frozen=True, slots=True)
class RecipientDSN:
    """The DSN parameters of one ``RCPT TO`` (RFC 3461): ``NOTIFY`` and ``ORCPT``."""

    notify: tuple[str, ...] = ()
    orcpt: str | None = None


@dataclass(eq=False)
class Session:
    """The state of one client connection, created when the client connects.

    A new Session replaces the old one after a successful STARTTLS, so that nothing learnt before
    TLS survives it (RFC 3207, section 4.2).
    """

    loop: asyncio.AbstractEventLoop | None = None
    #: The transport's ``peername``.
    peer: PeerType = None
    #: TLS details (``cipher``, ``version``, ``peercert``, ``ssl_object`` ...) under STARTTLS and
    #: implicit TLS alike; ``None`` on a plain connection.
    ssl: dict[str, Any] | None = None
    #: The argument of the last successful HELO, EHLO or LHLO.
    host_name: str | None = None
    #: ``True`` once the client greeted with EHLO (or LHLO).
    extended_smtp: bool = False
    #: What the authenticator returned as ``auth_data`` on success.
    auth_data: Any = field(default=None, repr=False)
    #: ``None``: no AUTH attempted; ``False``: attempted and failed; ``True``: succeeded.
    authenticated: bool | None = None
    #: The PROXY protocol header, when the server runs behind a proxy.
    proxy_data: ProxyData | None = None
    _login_data: Any = field(default=None, repr=False)

    @property
    def login_data(self) -> Any:
        """Deprecated: the identity returned by a legacy ``auth_callback`` login."""
        warnings.warn(
            "Session.login_data is deprecated; use Session.auth_data",
            DeprecationWarning,
            stacklevel=2,
        )
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        warnings.warn(
            "Session.login_data is deprecated; use Session.auth_data",
            DeprecationWarning,
            stacklevel=2,
        )
        self._login_data = value


@dataclass(eq=False)
class Envelope:
    """The state of one mail transaction: from ``MAIL`` to the end of ``DATA`` (or ``RSET``)."""

    mail_from: str | None = None
    mail_options: list[str] = field(default_factory=list)
    #: ``True`` when the client gave the ``SMTPUTF8`` MAIL parameter.
    smtp_utf8: bool = False
    #: The message: bytes, or str when the server decodes data.
    content: bytes | str | None = None
    #: The message as received, after dot-unstuffing, always bytes.
    original_content: bytes | None = None
    rcpt_tos: list[str] = field(default_factory=list)
    rcpt_options: list[str] = field(default_factory=list)
    #: ``BODY=`` of MAIL, upper-cased, or ``None`` when not given.
    body: BodyType | None = None
    #: ``SIZE=`` of MAIL: the size the client declared, or ``None``.
    size: int | None = None
    #: ``RET=`` of MAIL (RFC 3461): ``"FULL"`` or ``"HDRS"``.
    dsn_ret: Literal["FULL", "HDRS"] | None = None
    #: ``ENVID=`` of MAIL (RFC 3461), xtext-decoded.
    dsn_envid: str | None = None
    #: ``AUTH=`` of MAIL (RFC 4954 section 5), xtext-decoded; ``"<>"`` when the client sent that.
    auth: str | None = None
    #: ``True`` when the client gave ``REQUIRETLS`` (RFC 8689).
    requiretls: bool = False
    #: The DSN parameters of each recipient, parallel to :attr:`rcpt_tos`.
    rcpt_dsn: list[RecipientDSN] = field(default_factory=list)

    def options_map(self) -> Mapping[str, str | bool]:
        """The MAIL parameters as a mapping of upper-cased keyword to value (``True`` for flags)."""
        result: dict[str, str | bool] = {}
        for option in self.mail_options:
            key, sep, value = option.partition("=")
            result[key.upper()] = value if sep else True
        return result
