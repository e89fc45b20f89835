"""The keyword arguments of :class:`~typed_smtpd.smtp.SMTP`, as typed dictionaries (PEP 692).

The controllers, :func:`~typed_smtpd.controller.serve` and the fake servers of
:mod:`typed_smtpd.testing` take SMTP's keyword arguments directly and hand them on to the server
class. Their ``**kwargs`` are typed ``Unpack[...]`` of one of these dictionaries, so a type
checker knows every name and its type, and reports a misspelt name or a wrong type where the call
is written rather than when the server starts. Nothing here changes what happens at run time.

Where a signature has a parameter of its own with the name of an SMTP argument, its dictionary
leaves that name out, since such an argument never reaches SMTP from there:

* :class:`SMTPOptions`: every keyword argument of ``SMTP.__init__``;
* :class:`ControllerOptions`: without ``loop``, which is the event loop a controller runs in;
* :class:`TCPControllerOptions`: also without ``hostname``, which is the address the TCP
  controllers and :func:`~typed_smtpd.controller.serve` listen on (the name the server announces
  is their ``server_hostname``);
* :class:`FakeServerOptions`: without ``timeout``, which bounds the waits of a fake server's
  clients.

The meaning and default of each argument are those of :class:`~typed_smtpd.smtp.SMTP`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    import asyncio
    import ssl
    from collections.abc import Iterable

    from typed_smtpd.proto.limits import BareNewlinePolicy
    from typed_smtpd.proto.replies import ReplyStyle
    from typed_smtpd.smtp import AuthCallbackType, AuthenticatorType, ConnectionTracker

__all__ = [
    "ControllerOptions",
    "FakeServerOptions",
    "SMTPOptions",
    "TCPControllerOptions",
]


class _SharedOptions(TypedDict, total=False):
    """The SMTP keyword arguments that every signature forwarding them accepts."""

    data_size_limit: int | None
    enable_SMTPUTF8: bool
    decode_data: bool
    ident: str | None
    tls_context: ssl.SSLContext | None
    require_starttls: bool
    auth_required: bool
    auth_require_tls: bool
    auth_exclude_mechanism: Iterable[str] | None
    auth_callback: AuthCallbackType | None
    command_call_limit: int | dict[str, int] | None
    authenticator: AuthenticatorType | None
    proxy_protocol_timeout: float | None
    bare_newline: BareNewlinePolicy
    max_recipients: int | None
    bogus_limit: int | None
    data_timeout: float
    max_auth_failures: int
    proxy_trusted_networks: Iterable[str] | None
    enhanced_status_codes: bool
    replies: ReplyStyle
    enable_CRAM_MD5: bool
    connection_tracker: ConnectionTracker | None


class TCPControllerOptions(_SharedOptions, total=False):
    """The SMTP keyword arguments of the TCP controllers and of ``serve()``.

    All of :class:`SMTPOptions` but ``loop`` and ``hostname``: these are the controller's own
    parameters (the SMTP ``hostname`` is passed as ``server_hostname``).
    """

    timeout: float


class ControllerOptions(TCPControllerOptions, total=False):
    """The SMTP keyword arguments of the Unix socket controllers and the controller bases.

    All of :class:`SMTPOptions` but ``loop``, which is the controller's own parameter.
    """

    hostname: str | None


class SMTPOptions(ControllerOptions, total=False):
    """Every keyword argument of :class:`~typed_smtpd.smtp.SMTP`, with its type.

    For a subclass of SMTP that adds none of its own::

        class MySMTP(SMTP):
            def __init__(self, handler: object, **kwargs: Unpack[SMTPOptions]) -> None:
                super().__init__(handler, **kwargs)
    """

    loop: asyncio.AbstractEventLoop | None


class FakeServerOptions(_SharedOptions, total=False):
    """The SMTP keyword arguments of the fake servers of :mod:`typed_smtpd.testing`.

    All of :class:`SMTPOptions` but ``timeout``, which is the fake server's own parameter.
    """

    hostname: str | None
    loop: asyncio.AbstractEventLoop | None
