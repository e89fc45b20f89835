"""Reply values and the one catalogue of every reply the server sends on its own.

A :class:`Reply` renders itself to wire bytes, with or without its RFC 3463 enhanced status code
(clients that greeted with EHLO get the enhanced form, as ENHANCEDSTATUSCODES is advertised to
them). Reply text is checked at construction so no CR, LF or NUL can ever reach the wire through a
reply: a reply cannot inject a second reply.

Each reply also knows the line aiosmtpd 1.4.6 sends in its place, for servers that answer as
aiosmtpd did (``replies="aiosmtpd"``, :data:`ReplyStyle`): aiosmtpd sends some enhanced codes
always (``235 2.7.0``, ``553 5.1.3``, ...), the others never, and words a few replies its own way.

No I/O here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "AUTH_ABORTED",
    "AUTH_AFTER_HELO",
    "AUTH_ALREADY",
    "AUTH_BAD_BASE64",
    "AUTH_CANT_SPLIT",
    "AUTH_ENCRYPTION_REQUIRED",
    "AUTH_FAILED",
    "AUTH_IN_TRANSACTION",
    "AUTH_LINE_TOO_LONG",
    "AUTH_NOT_ENOUGH_VALUE",
    "AUTH_NO_MECHANISM",
    "AUTH_REQUIRED",
    "AUTH_SUCCESS",
    "AUTH_TOO_MANY_FAILURES",
    "AUTH_TOO_MANY_VALUES",
    "BAD_LINE_ENDING",
    "BAD_SYNTAX",
    "BDAT_AFTER_DATA",
    "BDAT_BAD_SIZE",
    "BYE",
    "CANNOT_VRFY",
    "COMMAND_TOO_LONG",
    "DATA_BAD_LINE_ENDING",
    "DATA_LINE_TOO_LONG",
    "DATA_TOO_LARGE",
    "DECODE_ERROR",
    "EHLO_FIRST",
    "ENTER_DATA",
    "EXPN_NOT_IMPLEMENTED",
    "HELLO_FIRST",
    "INTERNAL_ERROR",
    "LOCAL_PART_TOO_LONG",
    "MAIL_BAD_BODY",
    "MAIL_NESTED",
    "MAIL_OK",
    "MAIL_PARAM_UNRECOGNIZED",
    "MAIL_SIZE_TOO_LARGE",
    "MAIL_SMTPUTF8_DISABLED",
    "MAIL_SMTPUTF8_VALUE",
    "MALFORMED_ADDRESS",
    "NEED_MAIL",
    "NEED_RCPT",
    "NEED_UTF8",
    "NON_ASCII_VERB",
    "NOT_ASCII",
    "NUL_IN_COMMAND",
    "OK",
    "RCPT_OK",
    "RCPT_PARAM_UNRECOGNIZED",
    "READY_FOR_TLS",
    "REPLY_STYLES",
    "SECURITY_REFUSED",
    "SHUTTING_DOWN",
    "STARTTLS_FIRST",
    "TIMEOUT",
    "TLS_ALREADY_ACTIVE",
    "TLS_NOT_AVAILABLE",
    "TOO_MANY_CONNECTIONS",
    "TOO_MANY_RECIPIENTS",
    "TOO_MANY_UNRECOGNIZED",
    "VRFY_UNPARSABLE",
    "Reply",
    "ReplyStyle",
    "call_limit_exceeded",
    "chunk_received",
    "greeting",
    "help_commands",
    "help_syntax",
    "recipient_delivered",
    "syntax",
    "unrecognized",
    "vrfy_unparsable",
]

_ENHANCED: Final = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_AIOSMTPD_LINE: Final = re.compile(r"[2-5][0-9]{2} [^\r\n\x00]*")

#: Whose replies a server sends: typed_smtpd's own (enhanced status codes after EHLO, when
#: enabled), or aiosmtpd 1.4.6's, byte for byte (the ``replies`` argument of
#: :class:`~typed_smtpd.smtp.SMTP`).
ReplyStyle = Literal["typed", "aiosmtpd"]
#: The values :data:`ReplyStyle` allows, for run-time checks.
REPLY_STYLES: Final[tuple[ReplyStyle, ...]] = ("typed", "aiosmtpd")


@dataclass(frozen=True, slots=True)
class Reply:
    """One server reply: a three-digit code, an optional enhanced code and a single line of text.

    >>> Reply(250, "OK", "2.0.0").render(enhanced=True)
    b'250 2.0.0 OK\\r\\n'
    >>> Reply(250, "OK", "2.0.0").render(enhanced=False)
    b'250 OK\\r\\n'

    ``aiosmtpd`` is the line aiosmtpd 1.4.6 sends instead, when it is not the plain form
    (``code text``); a server with ``replies="aiosmtpd"`` sends it, whatever the client greeted
    with:

    >>> failed = Reply(535, "Authentication credentials invalid", "5.7.8",
    ...                aiosmtpd="535 5.7.8 Authentication credentials invalid")
    >>> failed.render(style="aiosmtpd")
    b'535 5.7.8 Authentication credentials invalid\\r\\n'
    """

    code: int
    text: str = "OK"
    enhanced: str | None = None
    aiosmtpd: str | None = field(default=None, kw_only=True, repr=False, compare=False)
    # The wire forms, rendered once: most replies are module constants sent again and again.
    _wire: bytes = field(init=False, repr=False, compare=False)
    _wire_enhanced: bytes = field(init=False, repr=False, compare=False)
    _wire_aiosmtpd: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code out of range: {self.code}")
        if "\r" in self.text or "\n" in self.text or "\x00" in self.text:
            raise ValueError("reply text must not contain CR, LF or NUL")
        if self.enhanced is not None:
            if not _ENHANCED.fullmatch(self.enhanced):
                raise ValueError(f"malformed enhanced status code: {self.enhanced!r}")
            if int(self.enhanced[0]) != self.code // 100:
                raise ValueError(f"enhanced code {self.enhanced} does not match {self.code}")
        plain = f"{self.code} {self.text}\r\n".encode()
        set_ = object.__setattr__
        set_(self, "_wire", plain)
        if self.enhanced is None:
            set_(self, "_wire_enhanced", plain)
        else:
            set_(self, "_wire_enhanced", f"{self.code} {self.enhanced} {self.text}\r\n".encode())
        aiosmtpd = self.aiosmtpd
        if aiosmtpd is None:
            set_(self, "_wire_aiosmtpd", plain)
        else:
            if not _AIOSMTPD_LINE.fullmatch(aiosmtpd):
                raise ValueError(f"malformed aiosmtpd reply line: {aiosmtpd[:80]!r}")
            # Client text (an echoed verb or argument) may hold lone surrogates: never on the wire.
            set_(self, "_wire_aiosmtpd", aiosmtpd.encode("utf-8", "replace") + b"\r\n")

    @property
    def positive(self) -> bool:
        """True for 2xx and 3xx replies."""
        return self.code < 400

    def line(self, *, enhanced: bool = True, style: ReplyStyle = "typed") -> str:
        """The reply as one line of text, without CRLF (``style="aiosmtpd"``: aiosmtpd's line,
        whatever ``enhanced`` says)."""
        if style == "aiosmtpd":
            return self.aiosmtpd or f"{self.code} {self.text}"
        if enhanced and self.enhanced is not None:
            return f"{self.code} {self.enhanced} {self.text}"
        return f"{self.code} {self.text}"

    def render(self, *, enhanced: bool = True, style: ReplyStyle = "typed") -> bytes:
        """The reply as wire bytes, CRLF included (UTF-8: reply text is ASCII in practice);
        ``style="aiosmtpd"`` gives aiosmtpd's line, whatever ``enhanced`` says."""
        if style == "aiosmtpd":
            return self._wire_aiosmtpd
        return self._wire_enhanced if enhanced else self._wire

    def with_text(self, text: str) -> Reply:
        """The same codes with other text (aiosmtpd's form becomes the plain one)."""
        return Reply(self.code, text, self.enhanced)


def _always_enhanced(code: int, text: str, enhanced: str) -> Reply:
    """A reply that aiosmtpd sends with its enhanced code, after EHLO, after HELO and before
    either."""
    return Reply(code, text, enhanced, aiosmtpd=f"{code} {enhanced} {text}")


# --- connection level ---------------------------------------------------------------------------


def greeting(hostname: str, ident: str) -> Reply:
    """The 220 greeting sent when a client connects."""
    return Reply(220, f"{hostname} {ident}")


BYE: Final = Reply(221, "Bye", "2.0.0")
TIMEOUT: Final = Reply(421, "Error: timeout exceeded", "4.4.2")
SHUTTING_DOWN: Final = Reply(421, "Service shutting down, closing connection", "4.3.2")
TOO_MANY_CONNECTIONS: Final = Reply(421, "Too many connections, try again later", "4.7.0")
#: aiosmtpd sends ``502 5.5.1`` instead, in place of the fifth ``500`` (and closes too).
TOO_MANY_UNRECOGNIZED: Final = Reply(
    421,
    "Too many unrecognized commands, goodbye.",
    "4.7.0",
    aiosmtpd="502 5.5.1 Too many unrecognized commands, goodbye.",
)
#: Exception text never reaches the client: this is all it learns (DESIGN "Errors never leak").
INTERNAL_ERROR: Final = Reply(451, "Requested action aborted: local error in processing", "4.3.0")

# --- generic ------------------------------------------------------------------------------------

OK: Final = Reply(250, "OK", "2.0.0")
MAIL_OK: Final = Reply(250, "OK", "2.1.0")
RCPT_OK: Final = Reply(250, "OK", "2.1.5")
BAD_SYNTAX: Final = Reply(500, "Error: bad syntax", "5.5.2")
COMMAND_TOO_LONG: Final = Reply(500, "Command line too long", "5.5.2")
NOT_ASCII: Final = Reply(500, "Error: strict ASCII mode", "5.5.2")
#: A command whose verb itself is not ASCII (without SMTPUTF8): aiosmtpd calls it bad syntax.
NON_ASCII_VERB: Final = Reply(
    500, "Error: strict ASCII mode", "5.5.2", aiosmtpd="500 Error: bad syntax"
)
NUL_IN_COMMAND: Final = Reply(500, "Error: NUL character in command", "5.5.2")
BAD_LINE_ENDING: Final = Reply(
    500, "Error: bare CR or LF in command; lines must end with CRLF", "5.5.2"
)
HELLO_FIRST: Final = Reply(503, "Error: send HELO first", "5.5.1")
EXPN_NOT_IMPLEMENTED: Final = Reply(502, "EXPN not implemented", "5.5.1")
VRFY_UNPARSABLE: Final = Reply(502, "Could not VRFY that address", "5.5.4")
CANNOT_VRFY: Final = Reply(
    252, "Cannot VRFY user, but will accept message and attempt delivery", "2.0.0"
)


def vrfy_unparsable(arg: str) -> Reply:
    """502: VRFY with an argument that is no address (aiosmtpd echoes the argument)."""
    return Reply(502, VRFY_UNPARSABLE.text, "5.5.4", aiosmtpd=f"502 Could not VRFY {arg}")


def help_commands(verbs: list[str], *, refused: bool = False) -> Reply:
    """HELP without an argument (250), or with one it does not know (501): the command list."""
    text = "Supported commands: " + " ".join(verbs)
    return Reply(501, text, "5.5.4") if refused else Reply(250, text, "2.0.0")


def help_syntax(usage: str) -> Reply:
    """HELP with a command: its syntax."""
    return Reply(250, f"Syntax: {usage}", "2.0.0")


def syntax(usage: str, aiosmtpd: str | None = None) -> Reply:
    """501: the command's arguments do not follow ``usage`` (aiosmtpd names ``aiosmtpd``)."""
    return Reply(
        501,
        f"Syntax: {usage}",
        "5.5.4",
        aiosmtpd=None if aiosmtpd is None else f"501 Syntax: {aiosmtpd}",
    )


def unrecognized(verb: str) -> Reply:
    """500: an unknown command (the verb is echoed only when it is printable ASCII; aiosmtpd
    echoes any verb)."""
    shown = verb if verb.isascii() and verb.isprintable() and len(verb) <= 32 else "?"
    text = f'Error: command "{shown}" not recognized'
    if shown != verb and verb.isascii() and not any(c in verb for c in "\r\n\x00"):
        return Reply(500, text, "5.5.1", aiosmtpd=f'500 Error: command "{verb}" not recognized')
    return Reply(500, text, "5.5.1")


def call_limit_exceeded(verb: str) -> Reply:
    """421: a command was sent more often than ``command_call_limit`` allows."""
    return _always_enhanced(421, f"{verb} sent too many times", "4.7.0")


# --- TLS ----------------------------------------------------------------------------------------

READY_FOR_TLS: Final = Reply(220, "Ready to start TLS", "2.0.0")
TLS_NOT_AVAILABLE: Final = Reply(454, "TLS not available", "4.7.0")
TLS_ALREADY_ACTIVE: Final = Reply(503, "Error: TLS already active", "5.5.1")
STARTTLS_FIRST: Final = Reply(530, "Must issue a STARTTLS command first", "5.7.0")
SECURITY_REFUSED: Final = Reply(554, "Command refused due to lack of security", "5.7.0")

# --- AUTH (RFC 4954) ----------------------------------------------------------------------------

EHLO_FIRST: Final = Reply(503, "Error: send EHLO first", "5.5.1")
#: AUTH from a client that greeted with HELO: it does not know the ESMTP extension.
AUTH_AFTER_HELO: Final = Reply(
    500,
    'Error: command "AUTH" not recognized',
    "5.5.1",
    aiosmtpd="500 Error: command 'AUTH' not recognized",
)
AUTH_SUCCESS: Final = _always_enhanced(235, "Authentication successful", "2.7.0")
AUTH_REQUIRED: Final = _always_enhanced(530, "Authentication required", "5.7.0")
AUTH_ALREADY: Final = Reply(503, "Already authenticated", "5.5.1")
AUTH_FAILED: Final = _always_enhanced(535, "Authentication credentials invalid", "5.7.8")
AUTH_NO_MECHANISM: Final = _always_enhanced(504, "Unrecognized authentication type", "5.5.4")
AUTH_ENCRYPTION_REQUIRED: Final = _always_enhanced(
    538, "Encryption required for requested authentication mechanism", "5.7.11"
)
AUTH_ABORTED: Final = _always_enhanced(501, "Auth aborted", "5.7.0")
AUTH_BAD_BASE64: Final = _always_enhanced(501, "Can't decode base64", "5.5.2")
AUTH_CANT_SPLIT: Final = _always_enhanced(501, "Can't split auth value", "5.5.2")
AUTH_NOT_ENOUGH_VALUE: Final = Reply(501, "Not enough value", "5.5.2")
AUTH_TOO_MANY_VALUES: Final = Reply(501, "Too many values", "5.5.2")
AUTH_LINE_TOO_LONG: Final = Reply(500, "Authentication exchange line is too long", "5.5.6")
AUTH_IN_TRANSACTION: Final = Reply(
    503, "Error: AUTH not allowed during a mail transaction", "5.5.1"
)
AUTH_TOO_MANY_FAILURES: Final = Reply(421, "Too many authentication failures", "4.7.0")

# --- transaction --------------------------------------------------------------------------------

MALFORMED_ADDRESS: Final = _always_enhanced(553, "Error: malformed address", "5.1.3")
LOCAL_PART_TOO_LONG: Final = Reply(
    553, "Local part too long", "5.1.3", aiosmtpd=MALFORMED_ADDRESS.aiosmtpd
)
MAIL_NESTED: Final = Reply(503, "Error: nested MAIL command", "5.5.1")
MAIL_BAD_BODY: Final = Reply(501, "Error: BODY can only be one of 7BIT, 8BITMIME", "5.5.4")
MAIL_SMTPUTF8_VALUE: Final = Reply(501, "Error: SMTPUTF8 takes no arguments", "5.5.4")
MAIL_SMTPUTF8_DISABLED: Final = Reply(501, "Error: SMTPUTF8 disabled", "5.5.4")
MAIL_SIZE_TOO_LARGE: Final = Reply(
    552, "Error: message size exceeds fixed maximum message size", "5.3.4"
)
MAIL_PARAM_UNRECOGNIZED: Final = Reply(
    555, "MAIL FROM parameters not recognized or not implemented", "5.5.4"
)
RCPT_PARAM_UNRECOGNIZED: Final = Reply(
    555, "RCPT TO parameters not recognized or not implemented", "5.5.4"
)
#: RFC 6531 section 3.4: a non-ASCII address needs the SMTPUTF8 MAIL parameter.
NEED_UTF8: Final = Reply(553, "Error: non-ASCII address requires SMTPUTF8", "5.6.7")
NEED_MAIL: Final = Reply(503, "Error: need MAIL command", "5.5.1")
NEED_RCPT: Final = Reply(503, "Error: need RCPT command", "5.5.1")
#: RFC 5321 section 4.5.3.1.10: "too many recipients" is 452, which clients retry.
TOO_MANY_RECIPIENTS: Final = Reply(452, "Error: too many recipients", "4.5.3")
ENTER_DATA: Final = Reply(354, "End data with <CR><LF>.<CR><LF>")
DATA_TOO_LARGE: Final = Reply(552, "Error: Too much mail data", "5.3.4")
DATA_LINE_TOO_LONG: Final = Reply(500, "Line too long (see RFC5321 4.5.3.1.6)", "5.5.2")
DATA_BAD_LINE_ENDING: Final = Reply(
    550, "Error: message contains bare CR, bare LF or NUL; lines must end with CRLF", "5.6.0"
)
DECODE_ERROR: Final = Reply(500, "Error: strict ASCII mode", "5.6.0")


def chunk_received(size: int) -> Reply:
    """The reply to a BDAT chunk that is not the last."""
    return Reply(250, f"{size} octets received", "2.0.0")


def recipient_delivered(recipient: str) -> Reply:
    """LMTP: the default final reply for one recipient (RFC 2033 section 4.2; aiosmtpd answers
    ``250 OK``, once for the message)."""
    return Reply(250, f"<{recipient}> OK", "2.1.5", aiosmtpd="250 OK")


BDAT_BAD_SIZE: Final = Reply(501, "Syntax: BDAT <chunk-size> [LAST]", "5.5.4")
BDAT_AFTER_DATA: Final = Reply(503, "Error: BDAT and DATA cannot be mixed", "5.5.1")
