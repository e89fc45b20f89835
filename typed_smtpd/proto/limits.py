"""The per-connection limits of the server, each a named constant with its reasoning.

Every limit has a safe default; :class:`Limits` bundles them as one frozen value that each
connection reads (never a class-level mutable shared between connections).

No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "AUTH_LINE_LIMIT",
    "BARE_NEWLINE_POLICIES",
    "BOGUS_LIMIT",
    "COMMAND_SIZE_LIMIT",
    "DATA_SIZE_DEFAULT",
    "DATA_TIMEOUT",
    "IDLE_TIMEOUT",
    "LINE_LENGTH_LIMIT",
    "MAIL_EXTENSION_ALLOWANCE",
    "MAX_AUTH_FAILURES",
    "MAX_RECIPIENTS",
    "RCPT_EXTENSION_ALLOWANCE",
    "BareNewlinePolicy",
    "Limits",
]

#: RFC 5321 section 4.5.3.1.4: a command line is at most 512 octets, CRLF included.
COMMAND_SIZE_LIMIT: Final = 512
#: RFC 5321 section 4.5.3.1.4 lets each extension lengthen MAIL: SIZE (RFC 1870: 26),
#: BODY/SMTPUTF8, ENVID and RET (RFC 3461: up to 100 + 9), AUTH= (RFC 4954: up to 500).
MAIL_EXTENSION_ALLOWANCE: Final = 1024
#: RCPT grows by NOTIFY and ORCPT (RFC 3461: ORCPT up to 500 octets).
RCPT_EXTENSION_ALLOWANCE: Final = 512
#: RFC 5321 section 4.5.3.1.6: a text line is at most 1000 octets including CRLF (aiosmtpd's
#: ``line_length_limit`` counts 1001, the stuffed dot included).
LINE_LENGTH_LIMIT: Final = 1001
#: RFC 4954 section 4: a SASL response line may be 12,288 octets.
AUTH_LINE_LIMIT: Final = 12288
#: aiosmtpd's DATA size default (32 MiB), advertised as SIZE.
DATA_SIZE_DEFAULT: Final = 33_554_432
#: RFC 5321 section 4.5.3.1.8: servers must accept at least 100 recipients; Postfix allows 1000.
MAX_RECIPIENTS: Final = 1000
#: Unknown or malformed commands tolerated before the connection is closed with 421.
BOGUS_LIMIT: Final = 10
#: RFC 5321 section 4.5.3.2.7: a server should wait at least 5 minutes for the next command.
IDLE_TIMEOUT: Final = 300.0
#: An overall deadline for one DATA or BDAT transfer, however steadily the bytes trickle in:
#: RFC 5321 section 4.5.3.2.6 gives the client 10 minutes for the terminating dot.
DATA_TIMEOUT: Final = 600.0
#: Failed AUTH attempts on one connection before it is closed with 421. Above what a client
#: trying each offered mechanism with one wrong password spends (smtplib tries up to three, then
#: expects to say QUIT); guessing across connections is what the limits per client address stop.
MAX_AUTH_FAILURES: Final = 5

#: What to do with a bare CR, a bare LF or a NUL in a command or in message content.
BareNewlinePolicy = Literal["reject", "normalize", "accept"]
#: The values :data:`BareNewlinePolicy` allows, for run-time checks and command-line choices.
BARE_NEWLINE_POLICIES: Final[tuple[BareNewlinePolicy, ...]] = ("reject", "normalize", "accept")


@dataclass(frozen=True, slots=True)
class Limits:
    """All per-connection limits of one server.

    ``data_size_limit`` of ``None`` or ``0`` means unlimited (no SIZE advertised), as in aiosmtpd.
    ``timeout`` is the idle timeout, re-armed by any progress; ``data_timeout`` bounds one whole
    DATA or BDAT transfer; ``command_call_limit`` maps a verb (or ``"*"``) to how often it may be
    sent on one connection.
    """

    data_size_limit: int | None = DATA_SIZE_DEFAULT
    command_size_limit: int = COMMAND_SIZE_LIMIT
    line_length_limit: int = LINE_LENGTH_LIMIT
    auth_line_limit: int = AUTH_LINE_LIMIT
    max_recipients: int | None = MAX_RECIPIENTS
    bogus_limit: int = BOGUS_LIMIT
    timeout: float = IDLE_TIMEOUT
    data_timeout: float = DATA_TIMEOUT
    max_auth_failures: int = MAX_AUTH_FAILURES
    local_part_limit: int = 0
    bare_newline: BareNewlinePolicy = "reject"

    def __post_init__(self) -> None:
        if self.bare_newline not in BARE_NEWLINE_POLICIES:
            raise ValueError(
                f"bare_newline must be one of {', '.join(BARE_NEWLINE_POLICIES)}; "
                f"got {self.bare_newline!r}"
            )
        for name in ("command_size_limit", "line_length_limit", "auth_line_limit", "bogus_limit"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.timeout <= 0 or self.data_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_recipients is not None and self.max_recipients < 1:
            raise ValueError("max_recipients must be at least 1 (or None for no limit)")
        if self.data_size_limit is not None and self.data_size_limit < 0:
            raise ValueError("data_size_limit must not be negative")

    @property
    def max_data_size(self) -> int | None:
        """The DATA size cap in octets, or ``None`` when unlimited."""
        return self.data_size_limit or None

    def command_limit(self, verb: str, *, extended: bool) -> int:
        """The longest command line accepted for ``verb``, CRLF included.

        ESMTP clients (after EHLO) get the extension allowances of MAIL and RCPT.
        """
        if extended:
            if verb == "MAIL":
                return self.command_size_limit + MAIL_EXTENSION_ALLOWANCE
            if verb == "RCPT":
                return self.command_size_limit + RCPT_EXTENSION_ALLOWANCE
        return self.command_size_limit

    @property
    def max_command_line(self) -> int:
        """The longest command line any verb may have: the framing cap."""
        return self.command_size_limit + MAIL_EXTENSION_ALLOWANCE
