"""The meaning of MAIL and RCPT parameters: SIZE, BODY, SMTPUTF8, DSN, AUTH=, REQUIRETLS.

:func:`mail_params` and :func:`rcpt_params` turn the parameter strings of one command into a
typed value, or into the reply that refuses them. The server decides what is enabled and passes
it in as :class:`MailPolicy`.

No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from typed_smtpd.proto import replies as R
from typed_smtpd.proto.commands import ParamError, xtext_decode
from typed_smtpd.proto.replies import Reply

__all__ = [
    "MailParams",
    "MailPolicy",
    "RcptParams",
    "mail_params",
    "rcpt_params",
]

_MAIL_USAGE: Final = "MAIL FROM: <address> [SP <mail-parameters>]"
_RCPT_USAGE: Final = "RCPT TO: <address> [SP <rcpt-parameters>]"
#: What aiosmtpd answers to any parameter it cannot read, for MAIL and RCPT alike.
_AIOSMTPD_USAGE: Final = {"MAIL": _MAIL_USAGE, "RCPT": "RCPT TO: <address> [SP <mail-parameters>]"}
_NOTIFY_VALUES: Final = frozenset({"SUCCESS", "FAILURE", "DELAY"})


@dataclass(frozen=True, slots=True)
class MailPolicy:
    """What the server accepts on MAIL: its size cap, and which extensions are on.

    ``body``: the ``BODY`` parameter (8BITMIME); ``binarymime``: ``BODY=BINARYMIME`` too;
    ``dsn``: ``RET`` and ``ENVID`` (RFC 3461); ``requiretls``: ``REQUIRETLS`` (RFC 8689), which
    is accepted over TLS only (``tls_active``). A parameter of an extension that is off gets
    ``555``, as any unknown parameter.
    """

    size_limit: int | None = None
    smtputf8: bool = False
    binarymime: bool = True
    tls_active: bool = False
    body: bool = True
    dsn: bool = True
    requiretls: bool = True


@dataclass(frozen=True, slots=True)
class MailParams:
    """The parameters of one MAIL command, validated and decoded."""

    size: int | None = None
    body: Literal["7BIT", "8BITMIME", "BINARYMIME"] | None = None
    smtp_utf8: bool = False
    dsn_ret: Literal["FULL", "HDRS"] | None = None
    dsn_envid: str | None = None
    auth: str | None = None
    requiretls: bool = False


@dataclass(frozen=True, slots=True)
class RcptParams:
    """The parameters of one RCPT command (RFC 3461 DSN): ``NOTIFY`` and ``ORCPT``."""

    notify: tuple[str, ...] = ()
    orcpt: str | None = None


#: What no parameters at all mean (most commands have none; both records are immutable).
_NO_MAIL_PARAMS: Final = MailParams()
_NO_RCPT_PARAMS: Final = RcptParams()


def _split(params: list[str], verb: str) -> list[tuple[str, bool, str]] | Reply:
    seen: set[str] = set()
    result = []
    for param in params:
        keyword, has_value, value = param.partition("=")
        key = keyword.upper()
        if key in seen:
            return _syntax(verb)
        seen.add(key)
        result.append((key, bool(has_value), value))
    return result


def _syntax(verb: str, usage: str | None = None) -> Reply:
    """501 for parameters that cannot be read: ``usage`` names the one that is wrong; aiosmtpd
    repeats the command's syntax."""
    aiosmtpd = _AIOSMTPD_USAGE[verb]
    return R.syntax(usage or (_MAIL_USAGE if verb == "MAIL" else _RCPT_USAGE), aiosmtpd)


def mail_params(params: list[str], policy: MailPolicy) -> MailParams | Reply:
    """Validate MAIL parameters.

    >>> params = mail_params(["SIZE=10", "BODY=8bitmime"], MailPolicy(size_limit=100))
    >>> params.size, params.body
    (10, '8BITMIME')
    >>> mail_params(["SIZE=1000"], MailPolicy(size_limit=100)).code
    552
    """
    if not params:
        return _NO_MAIL_PARAMS
    split = _split(params, "MAIL")
    if isinstance(split, Reply):
        return split
    size: int | None = None
    body: Literal["7BIT", "8BITMIME", "BINARYMIME"] | None = None
    smtp_utf8 = requiretls = False
    ret: Literal["FULL", "HDRS"] | None = None
    envid: str | None = None
    auth: str | None = None
    for key, has_value, value in split:
        if key == "SIZE":
            if not has_value or not value.isdigit() or len(value) > 20:
                return _syntax("MAIL", "MAIL FROM: <address> SIZE=<number>")
            size = int(value)
            if policy.size_limit and size > policy.size_limit:
                return R.MAIL_SIZE_TOO_LARGE
        elif key == "BODY" and policy.body:
            upper = value.upper()
            if upper == "7BIT":
                body = "7BIT"
            elif upper == "8BITMIME":
                body = "8BITMIME"
            elif upper == "BINARYMIME" and policy.binarymime:
                body = "BINARYMIME"
            else:
                return R.MAIL_BAD_BODY
        elif key == "SMTPUTF8":
            if has_value:
                return R.MAIL_SMTPUTF8_VALUE
            if not policy.smtputf8:
                return R.MAIL_SMTPUTF8_DISABLED
            smtp_utf8 = True
        elif key == "RET" and policy.dsn:
            upper = value.upper()
            if upper == "FULL":
                ret = "FULL"
            elif upper == "HDRS":
                ret = "HDRS"
            else:
                return R.syntax("MAIL FROM: <address> RET=FULL|HDRS")
        elif key == "ENVID" and policy.dsn:
            try:
                envid = xtext_decode(value)
            except ParamError:
                return R.syntax("MAIL FROM: <address> ENVID=<xtext>")
        elif key == "AUTH":
            # RFC 4954 section 5: "<>" means the submitter is unknown; anything else is xtext.
            try:
                auth = value if value == "<>" else xtext_decode(value)
            except ParamError:
                return R.syntax("MAIL FROM: <address> AUTH=<xtext>")
        elif key == "REQUIRETLS" and policy.requiretls and policy.tls_active and not has_value:
            requiretls = True  # RFC 8689: only meaningful over TLS
        else:
            return R.MAIL_PARAM_UNRECOGNIZED
    return MailParams(size, body, smtp_utf8, ret, envid, auth, requiretls)


def rcpt_params(params: list[str], *, dsn: bool = True) -> RcptParams | Reply:
    """Validate RCPT parameters (``NOTIFY`` and ``ORCPT`` unless ``dsn`` is off: then any
    parameter gets ``555``).

    >>> rcpt_params(["NOTIFY=success,delay", "ORCPT=rfc822;a+40b.test"])
    RcptParams(notify=('SUCCESS', 'DELAY'), orcpt='rfc822;a@b.test')
    """
    if not params:
        return _NO_RCPT_PARAMS
    if not dsn:
        return R.RCPT_PARAM_UNRECOGNIZED
    split = _split(params, "RCPT")
    if isinstance(split, Reply):
        return split
    notify: tuple[str, ...] = ()
    orcpt: str | None = None
    for key, has_value, value in split:
        if key == "NOTIFY" and has_value:
            notify = tuple(v.upper() for v in value.split(","))
            # NEVER stands alone (RFC 3461 section 4.1).
            if notify != ("NEVER",) and not (notify and set(notify) <= _NOTIFY_VALUES):
                return R.syntax("RCPT TO: <address> NOTIFY=NEVER|SUCCESS,FAILURE,DELAY")
        elif key == "ORCPT" and has_value:
            addr_type, semi, xtext = value.partition(";")
            try:
                if not semi or not addr_type:
                    raise ParamError("ORCPT needs addr-type;xtext")
                orcpt = f"{addr_type};{xtext_decode(xtext)}"
            except ParamError:
                return R.syntax("RCPT TO: <address> ORCPT=<addr-type>;<xtext>")
        else:
            return R.RCPT_PARAM_UNRECOGNIZED
    return RcptParams(notify, orcpt)
