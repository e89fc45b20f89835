"""AUTH values and the pure steps of the built-in SASL mechanisms (RFC 4954, 4616, 2195).

The values an authenticator sees (:class:`LoginPassword`, :class:`CramMD5Response`) and returns
(:class:`AuthResult`) live here, next to the decoding of initial responses and of the client's
answers to ``334`` challenges, so the engine can run PLAIN, LOGIN and CRAM-MD5 exchanges without
any I/O. :mod:`typed_smtpd.session` re-exports the values under their aiosmtpd names.

No I/O here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any, Final, NamedTuple

__all__ = [
    "MISSING",
    "AuthResult",
    "CramMD5Response",
    "LoginPassword",
    "RecipientDSN",
    "decode_response",
    "split_cram_md5",
    "split_plain",
]


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


def decode_response(text: str) -> bytes | None:
    """A SASL response as sent by the client (base64, ``=`` for an empty initial response), or
    ``None`` when it is not valid base64."""
    if text == "=":
        return b""
    try:
        return base64.b64decode(text.encode("ascii", "surrogateescape"), validate=True)
    except (binascii.Error, ValueError):
        return None


def split_plain(response: bytes) -> LoginPassword | None:
    """The credentials of a PLAIN response (``authzid NUL authcid NUL password``); the
    authorization identity is ignored. ``None`` when the response has not three parts."""
    parts = response.split(b"\x00")
    if len(parts) != 3:
        return None
    return LoginPassword(parts[1], parts[2])


def split_cram_md5(response: bytes, challenge: bytes) -> CramMD5Response | None:
    """The answer to a CRAM-MD5 challenge (``login SP hex-digest``), or ``None`` if malformed."""
    login, sep, digest = response.rpartition(b" ")
    if not sep or not login or len(digest) != 32:
        return None
    return CramMD5Response(login, challenge, digest)
