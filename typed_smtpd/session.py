"""Per-connection and per-transaction state: :class:`Session`, :class:`Envelope`, AUTH values.

These are the objects every handler hook receives. They are mutable dataclasses owned by the
:class:`~typed_smtpd.smtp.SMTP` instance of one connection; hooks may read and change them, and may
add attributes of their own for coordination between hooks (as aiosmtpd allows), which is why they
do not use ``__slots__``.

Nothing in this module does I/O.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from typed_smtpd.proto.auth import MISSING as MISSING
from typed_smtpd.proto.auth import AuthResult as AuthResult
from typed_smtpd.proto.auth import CramMD5Response as CramMD5Response
from typed_smtpd.proto.auth import LoginPassword as LoginPassword
from typed_smtpd.proto.auth import RecipientDSN as RecipientDSN
from typed_smtpd.proto.auth import _Missing as _Missing

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
