"""Replies as aiosmtpd's: the same dialogs against aiosmtpd 1.4.6 and typed_smtpd.

With ``replies="aiosmtpd"`` every reply typed_smtpd sends on its own must be the one aiosmtpd
1.4.6 sends for the same input, byte for byte. Each dialog of :data:`DIALOGS` runs against both
servers over a real socket (port 0) and every reply is compared. :data:`EXCEPTIONS` lists the
inputs that typed_smtpd deliberately answers otherwise (each one a row of docs/migrating.rst),
with both answers pinned, so that a change on either side shows. The last tests check that the
default, ``replies="typed"``, is what it was.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import pytest

from typed_smtpd._settings import IDENT
from typed_smtpd.lmtp import LMTP
from typed_smtpd.proto import replies as R
from typed_smtpd.proto.engine import EngineConfig
from typed_smtpd.proto.replies import Reply
from typed_smtpd.session import AuthResult, Envelope, Session
from typed_smtpd.smtp import SMTP

aiosmtpd_smtp = pytest.importorskip("aiosmtpd.smtp")
aiosmtpd_lmtp = pytest.importorskip("aiosmtpd.lmtp")

pytestmark = [
    pytest.mark.integration,
    # Both servers warn about AUTH without TLS, which some dialogs use on purpose.
    pytest.mark.filterwarnings("ignore:auth_required"),
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS"),
]

#: Read this many replies, or (with UNTIL_CLOSED) everything until the server closes.
UNTIL_CLOSED: Final = -1
#: How long a reply may take: never reached when the servers answer.
REPLY_TIMEOUT: Final = 5.0
#: What the transcript says when the server closed the connection...
CLOSED: Final = b"<closed>"
#: ... and when it did not answer in time.
NO_REPLY: Final = b"<no reply>"

Step = bytes | tuple[bytes, int]


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


EHLO: Final = b"EHLO client.test\r\n"
HELO: Final = b"HELO client.test\r\n"
MAIL: Final = b"MAIL FROM:<a@b.test>\r\n"
RCPT: Final = b"RCPT TO:<c@d.test>\r\n"
RSET: Final = b"RSET\r\n"
QUIT: Final = b"QUIT\r\n"
PLAIN_OK: Final = b"AUTH PLAIN " + b64(b"\x00good\x00pw") + b"\r\n"
PLAIN_BAD: Final = b"AUTH PLAIN " + b64(b"\x00good\x00wrong") + b"\r\n"


def message(body: bytes) -> bytes:
    """Message content with its terminating dot line (one reply, after the dot)."""
    return body + b"\r\n.\r\n"


def line_of(prefix: bytes, length: int) -> bytes:
    """A command line of ``length`` octets before its CRLF."""
    return prefix + b"x" * (length - len(prefix)) + b"\r\n"


def transaction(body: bytes) -> list[Step]:
    return [MAIL, RCPT, b"DATA\r\n", message(body)]


@dataclass(frozen=True)
class Dialog:
    """What a client sends (each step with the number of replies it brings) to a server built
    with ``options``: LMTP with ``lmtp``, with a ``local_part_limit`` of 3 with ``short_local``,
    and with an authenticator that accepts ``good``/``pw`` with ``auth``."""

    steps: Sequence[Step]
    options: dict[str, Any] = field(default_factory=dict)
    lmtp: bool = False
    short_local: bool = False
    auth: bool = False
    handler: Callable[[], object] = object
    #: The first Python version on which aiosmtpd gives the answers compared.
    since: tuple[int, int] = (3, 10)


AUTH_PLAIN_TEXT = {"auth_require_tls": False}

# Commands with good and bad arguments, before any greeting.
BEFORE_GREETING: list[Step] = [
    b"HELO\r\n", b"EHLO\r\n", b"HELO \r\n", b"EHLO  \r\n", b"NOOP\r\n", b"NOOP x\r\n",
    b"noop\r\n", b"RSET\r\n", b"RSET x\r\n", b"VRFY\r\n", b"VRFY a@b.test\r\n",
    b"VRFY <a@b.test>\r\n", b"VRFY @\r\n", b"VRFY <postmaster>\r\n", b"VRFY Postmaster\r\n",
    b"EXPN\r\n", b"EXPN staff\r\n", b"HELP\r\n", b"HELP MAIL\r\n", b"HELP mail\r\n",
    b"HELP RCPT\r\n", b"HELP FROB\r\n", b"HELP EXPN\r\n", b"HELP BDAT\r\n", b"HELP STARTTLS\r\n",
    b"HELP AUTH\r\n", b"HELP HELO\r\n", b"HELP EHLO\r\n", b"HELP QUIT\r\n", b"HELP DATA\r\n",
    b"HELP VRFY\r\n", b"HELP RSET\r\n", b"HELP HELP\r\n", b"HELP LHLO\r\n", b"HELP MAIL FROM\r\n",
    b"MAIL\r\n", MAIL, RCPT, b"DATA\r\n", b"DATA x\r\n", b"AUTH\r\n", b"AUTH PLAIN\r\n",
    b"AUTH PLAIN x y z\r\n", b"STARTTLS\r\n", b"STARTTLS x\r\n", b"BDAT 0 LAST\r\n",
    b"QUIT x\r\n", QUIT,
]  # fmt: skip

# Every command after a greeting: good and bad arguments, parameters, a transaction.
AFTER_GREETING: list[Step] = [
    b"NOOP\r\n", RSET, b"VRFY a@b.test\r\n", b"EXPN staff\r\n", b"HELP\r\n", b"HELP MAIL\r\n",
    b"HELP rcpt\r\n", b"HELP FROB\r\n", b"HELP BDAT\r\n", b"HELP AUTH\r\n", b"HELP STARTTLS\r\n",
    b"MAIL\r\n", b"MAIL TO:<a@b.test>\r\n", b"MAIL FROM:\r\n", b"MAIL FROM:<a@@b>\r\n",
    b"MAIL FROM:<>\r\n", RSET,
    b"MAIL FROM:<a@b.test> FOO=1\r\n", b"MAIL FROM:<a@b.test> FOO=\r\n",
    b"MAIL FROM:<a@b.test> =\r\n", b"MAIL FROM:<a@b.test> BODY=X\r\n",
    b"MAIL FROM:<a@b.test> BODY=BINARYMIME\r\n", b"MAIL FROM:<a@b.test> BODY=8BITMIME\r\n", RSET,
    b"MAIL FROM:<a@b.test> BODY=7bit\r\n", RSET, b"MAIL FROM:<a@b.test> SIZE=99999999999\r\n",
    b"MAIL FROM:<a@b.test> SIZE=x\r\n", b"MAIL FROM:<a@b.test> SIZE\r\n",
    b"MAIL FROM:<a@b.test> SIZE=10\r\n", RSET, b"MAIL FROM:<a@b.test> size=0 body=8bitmime\r\n",
    RSET, b"MAIL FROM:<a@b.test> SMTPUTF8\r\n", RSET, b"MAIL FROM:<a@b.test> SMTPUTF8=1\r\n",
    b"MAIL FROM:<a@b.test> RET=FULL\r\n", b"MAIL FROM:<a@b.test> ENVID=x\r\n",
    b"MAIL FROM:<a@b.test> REQUIRETLS\r\n", RCPT, b"DATA\r\n",
    MAIL, MAIL, b"MAIL FROM:<a@@b>\r\n", b"MAIL FROM:\r\n", b"MAIL\r\n",
    b"MAIL FROM:<c@d.test> FOO\r\n", b"DATA\r\n", b"DATA x\r\n",
    b"RCPT\r\n", b"RCPT FROM:<x@y.test>\r\n", b"RCPT TO:\r\n", b"RCPT TO:<bad@@x>\r\n",
    b"RCPT TO:<c@d.test> X=1\r\n", b"RCPT TO:<c@d.test> NOTIFY=NEVER\r\n",
    b"RCPT TO:<c@d.test> ORCPT=rfc822;a@b.test\r\n", b"RCPT TO:<c@d.test> FOO\r\n",
    b"RCPT TO:<postmaster>\r\n", RCPT, b"RCPT TO:<e@f.test>\r\n", b"BDAT 0 LAST\r\n",
    b"DATA x\r\n", b"AUTH PLAIN\r\n", b"STARTTLS\r\n", b"HELO again.test\r\n", b"DATA\r\n",
    *transaction(b"hi"), *transaction(b"..dots\r\n.x\r\nbody"), *transaction(b""),
    MAIL, RCPT, (b"DATA\r\n.\r\n", 2), b"VRFY <postmaster>\r\n", b"QUIT x\r\n", QUIT,
]  # fmt: skip

#: Five unknown verbs: aiosmtpd answers the fifth with its farewell instead of a 500, and closes.
UNKNOWN: Final = [b"FROB\r\n", b"BAR x\r\n", b"foo-bar\r\n", b"X" * 40 + b"\r\n", b"BAZ\r\n"]


def unknown_after(greeting: bytes) -> list[Step]:
    return [greeting, *UNKNOWN[:4], (UNKNOWN[4], UNTIL_CLOSED)]


# fmt: off
DIALOGS: Final[dict[str, Dialog]] = {
    "before greeting": Dialog(BEFORE_GREETING),
    "after EHLO": Dialog([EHLO, *AFTER_GREETING]),
    "after HELO": Dialog([HELO, *AFTER_GREETING]),
    "after EHLO, decode_data": Dialog([EHLO, *AFTER_GREETING], {"decode_data": True}),
    "after EHLO, SMTPUTF8": Dialog([EHLO, *AFTER_GREETING], {"enable_SMTPUTF8": True}),
    "after EHLO, no size limit": Dialog([EHLO, *AFTER_GREETING], {"data_size_limit": None}),
    "after HELO, small size limit": Dialog([HELO, *AFTER_GREETING], {"data_size_limit": 100}),
    "greetings": Dialog(
        [b"HELO   spaced.test  \r\n", EHLO, HELO, b"EHLO\tx\r\n", EHLO, RSET, b"RSET\r\n", QUIT]
    ),
    "STARTTLS offered": Dialog(
        [b"STARTTLS x\r\n", EHLO, b"HELP\r\n", b"HELP STARTTLS\r\n", b"AUTH PLAIN\r\n", QUIT],
        {"tls_context": "plain"},
    ),
    "require_starttls": Dialog(
        [
            b"NOOP\r\n",
            b"HELP\r\n",
            HELO,
            EHLO,
            b"LHLO client.test\r\n",
            MAIL,
            b"AUTH PLAIN\r\n",
            b"FROB\r\n",
            b"VRFY a@b.test\r\n",
            RSET,
            b"EXPN\r\n",
            b"DATA\r\n",
            b"STARTTLS x\r\n",
            QUIT,
        ],
        {"tls_context": "plain", "require_starttls": True},
    ),
    "unknown verbs before greeting": Dialog(unknown_after(b"NOOP\r\n")),
    "unknown verbs after EHLO": Dialog(unknown_after(EHLO)),
    "unknown verbs between bad lines": Dialog(
        [EHLO, b"FROB\r\n", b"\r\n", b"BAR\r\n", b"\r\n", b" \r\n", b"\r\n", b"\r\n", b"\r\n",
         line_of(b"NOOP ", 600), b"\r\n", b"QUX\r\n", (b"ZAP\r\n", UNTIL_CLOSED)]
    ),
    "malformed lines": Dialog(
        [
            b"\r\n",
            b"\xff\xfe\r\n",
            b"NOOP \xff\r\n",
            "MAIL FROM:<j\u00f6rg@b.test>\r\n".encode(),
            EHLO,
            b"NOOP \xff\r\n",
            b"\tNOOP\r\n",
            b"NOOP\tx\r\n",
            QUIT,
        ]
    ),
    "malformed lines, SMTPUTF8": Dialog(
        [
            EHLO,
            b"NOOP \xff\r\n",
            "caf\u00e9\r\n".encode(),
            b"\xff\r\n",
            "NOOP caf\u00e9\r\n".encode(),
            "HELP caf\u00e9\r\n".encode(),
            "MAIL FROM:<j\u00f6rg@b.test> SMTPUTF8\r\n".encode(),
            "RCPT TO:<j\u00f6rg@b.test>\r\n".encode(),
            QUIT,
        ],
        {"enable_SMTPUTF8": True},
    ),
    "line lengths after HELO": Dialog(
        [
            HELO,
            line_of(b"NOOP ", 511),
            line_of(b"NOOP ", 512),
            line_of(b"NOOP ", 513),
            line_of(b"MAIL FROM:<a@b.test> ", 512),
            line_of(b"MAIL FROM:<a@b.test> ", 513),
            line_of(b"FROB ", 513),
            line_of(b"FROB ", 1200),
            line_of(b"NOOP ", 5000),
            QUIT,
        ]
    ),
    "line lengths after EHLO": Dialog(
        [
            EHLO,
            line_of(b"NOOP ", 512),
            line_of(b"NOOP ", 513),
            line_of(b"MAIL FROM:<a@b.test> X=", 538),
            RSET,
            line_of(b"MAIL FROM:<a@b.test> X=", 539),
            line_of(b"RCPT TO:<a@b.test> X=", 512),
            line_of(b"RCPT TO:<a@b.test> X=", 513),
            line_of(b"AUTH PLAIN ", 513),
            QUIT,
        ]
    ),
    "line lengths after EHLO, SMTPUTF8": Dialog(
        [EHLO, line_of(b"MAIL FROM:<a@b.test> X=", 548), RSET,
         line_of(b"MAIL FROM:<a@b.test> X=", 549), QUIT],
        {"enable_SMTPUTF8": True},
    ),
    "line lengths after EHLO, no size limit": Dialog(
        [EHLO, line_of(b"MAIL FROM:<a@b.test> X=", 512), RSET,
         line_of(b"MAIL FROM:<a@b.test> X=", 513), QUIT],
        {"data_size_limit": None},
    ),
    "order of MAIL's checks": Dialog(
        [
            HELO,
            b"MAIL FROM:<a@@b> SIZE=1\r\n",
            b"MAIL FROM:<a@b.test> SIZE=1\r\n",
            MAIL,
            b"MAIL FROM:<a@@b>\r\n",
            b"MAIL FROM:<c@d.test> BOGUS\r\n",
            b"DATA x\r\n",
            RCPT,
            b"DATA x\r\n",
            RSET,
            b"DATA x\r\n",
            EHLO,
            MAIL,
            b"MAIL FROM:<c@d.test> FOO=1\r\n",
            b"MAIL FROM:<c@d.test> SIZE=x\r\n",
            b"MAIL FROM:<c@d.test> =\r\n",
            QUIT,
        ]
    ),
    "parameters": Dialog(
        [
            EHLO,
            b"MAIL FROM:<a@b.test> SIZE=33554432\r\n",
            RSET,
            b"MAIL FROM:<a@b.test> SIZE=33554433\r\n",
            b"MAIL FROM:<a@b.test> SIZE=0\r\n",
            RSET,
            b"MAIL FROM:<a@b.test> SMTPUTF8 BODY=8BITMIME\r\n",
            MAIL,
            b"RCPT TO:<c@d.test> NOTIFY=NEVER X=1\r\n",
            QUIT,
        ]
    ),
    "parameters, decode_data": Dialog(
        [EHLO, b"MAIL FROM:<a@b.test> BODY=7BIT\r\n", b"MAIL FROM:<a@b.test> BODY=FOO\r\n",
         b"MAIL FROM:<a@b.test> SIZE=5\r\n", QUIT],
        {"decode_data": True},
    ),
    "parameters, no size limit": Dialog(
        [EHLO, b"MAIL FROM:<a@b.test> SIZE=999999999999\r\n", QUIT], {"data_size_limit": None}
    ),
    "local_part_limit": Dialog(
        [
            EHLO,
            b"MAIL FROM:<abcd@b.test>\r\n",
            MAIL,
            b"MAIL FROM:<abcd@b.test>\r\n",
            b"RCPT TO:<abcd@e.test>\r\n",
            b"RCPT TO:<abc@e.test>\r\n",
            b"VRFY abcd@e.test\r\n",
            b"VRFY abc@e.test\r\n",
            QUIT,
        ],
        short_local=True,
    ),
    "pipelined commands": Dialog(
        [EHLO, (MAIL + RCPT + b"DATA\r\n", 3), message(b"hi"),
         (b"NOOP\r\nFROB\r\nRSET\r\n", 3), QUIT]
    ),
    "AUTH PLAIN and LOGIN": Dialog(
        [
            b"AUTH PLAIN\r\n",
            HELO,
            b"AUTH PLAIN\r\n",
            EHLO,
            b"AUTH\r\n",
            b"AUTH A B C\r\n",
            b"AUTH FROB\r\n",
            b"AUTH plain\r\n",
            b"AUTH PLAIN x y\r\n",
            b"AUTH  PLAIN\r\n",
            b"*\r\n",
            b"AUTH PLAIN\r\n",
            b"!!!\r\n",
            b"AUTH PLAIN !!!\r\n",
            b"AUTH PLAIN " + b64(b"no nul") + b"\r\n",
            QUIT,
        ],
        AUTH_PLAIN_TEXT,
        auth=True,
    ),
    "AUTH LOGIN exchanges": Dialog(
        [
            EHLO,
            b"AUTH LOGIN\r\n",
            b64(b"good") + b"\r\n",
            b64(b"bad") + b"\r\n",
            b"AUTH LOGIN " + b64(b"good") + b"\r\n",
            b"*\r\n",
            b"AUTH LOGIN\r\n",
            b"*\r\n",
            b"AUTH LOGIN !!!\r\n",
            b"AUTH LOGIN x y\r\n",
            QUIT,
        ],
        AUTH_PLAIN_TEXT,
        auth=True,
    ),
    "AUTH answers that are not base64": Dialog(
        [
            EHLO,
            b"AUTH LOGIN\r\n",
            b"!!\r\n",
            b"AUTH PLAIN\r\n",
            "caf\u00e9\r\n".encode(),
            b"AUTH LOGIN\r\n",
            b"\xff\r\n",
            b"AUTH PLAIN\r\n",
            b"\r\n",
            QUIT,
        ],
        AUTH_PLAIN_TEXT,
        auth=True,
    ),
    "AUTH answers that are not base64, SMTPUTF8": Dialog(
        [EHLO, b"AUTH PLAIN\r\n", "caf\u00e9\r\n".encode(), b"AUTH LOGIN\r\n", b"\xff\r\n",
         QUIT],
        {**AUTH_PLAIN_TEXT, "enable_SMTPUTF8": True},
        auth=True,
    ),
    # Python 3.10's base64 module decodes "=" to nothing, and aiosmtpd with it: it took the
    # answer for an empty user name there.
    "AUTH answer of =": Dialog(
        [EHLO, b"AUTH LOGIN\r\n", b"=\r\n", b"AUTH PLAIN\r\n", b"=\r\n", QUIT],
        AUTH_PLAIN_TEXT,
        auth=True,
        since=(3, 11),
    ),
    "AUTH successes": Dialog(
        [EHLO, PLAIN_BAD, b"AUTH PLAIN\r\n", b"  " + b64(b"\x00good\x00pw") + b"  \r\n", PLAIN_OK,
         b"AUTH FROB\r\n", b"AUTH\r\n", EHLO, b"AUTH PLAIN\r\n", QUIT],
        AUTH_PLAIN_TEXT,
        auth=True,
    ),
    "AUTH LOGIN success": Dialog(
        [EHLO, b"AUTH LOGIN\r\n", b64(b"good") + b"\r\n", b64(b"pw") + b"\r\n", QUIT],
        AUTH_PLAIN_TEXT,
        auth=True,
    ),
    "AUTH with a mechanism left out": Dialog(
        [EHLO, b"AUTH LOGIN\r\n", b"AUTH PLAIN\r\n", b"\r\n", PLAIN_OK, QUIT],
        {**AUTH_PLAIN_TEXT, "auth_exclude_mechanism": ["LOGIN"]},
        auth=True,
    ),
    "AUTH needs TLS": Dialog([EHLO, b"AUTH PLAIN\r\n", b"AUTH\r\n", QUIT], auth=True),
    "auth_required": Dialog(
        [
            b"HELP\r\n",
            b"NOOP\r\n",
            b"VRFY a\r\n",
            EHLO,
            b"HELP\r\n",
            MAIL,
            RCPT,
            b"DATA\r\n",
            b"EXPN a\r\n",
            RSET,
            b"FROB\r\n",
            PLAIN_OK,
            b"HELP\r\n",
            MAIL,
            QUIT,
        ],
        {**AUTH_PLAIN_TEXT, "auth_required": True},
        auth=True,
    ),
    "command_call_limit": Dialog(
        [b"NOOP\r\n", b"NOOP\r\n", (b"NOOP\r\n", UNTIL_CLOSED)], {"command_call_limit": 2}
    ),
    "command_call_limit per verb": Dialog(
        [EHLO, b"NOOP\r\n", b"HELP\r\n", (b"NOOP\r\n", UNTIL_CLOSED)],
        {"command_call_limit": {"NOOP": 1, "*": 3}},
    ),
    "command_call_limit on EHLO": Dialog(
        [EHLO, (b"EHLO again.test\r\n", UNTIL_CLOSED)], {"command_call_limit": 1}
    ),
    "command_call_limit on unknown verbs": Dialog(
        [b"FROB\r\n", b"FROB\r\n", (b"FROB\r\n", UNTIL_CLOSED)], {"command_call_limit": 2}
    ),
    "command_call_limit on empty verbs": Dialog(
        [b"\r\n", b"\r\n", b" \r\n", (b" \r\n", UNTIL_CLOSED)], {"command_call_limit": 1}
    ),
    "DATA over the size limit": Dialog(
        [EHLO, *transaction(b"x" * 100), *transaction(b"y" * 10), HELO, *transaction(b"x" * 60),
         QUIT],
        {"data_size_limit": 50},
    ),
    "DATA at the size limit": Dialog(
        [
            EHLO,
            *transaction(b"x" * 18),
            *transaction(b"x" * 19),
            *transaction(b"x" * 16 + b"\r\n" + b"y"),
            *transaction(b"..x" + b"x" * 15),
            *transaction(b"..x" + b"x" * 16),
            QUIT,
        ],
        {"data_size_limit": 20},
    ),
    "DATA line lengths": Dialog(
        [
            EHLO,
            *transaction(b"x" * 998),
            *transaction(b"x" * 999),
            *transaction(b"x" * 1000),
            *transaction(b"." + b"x" * 999),
            *transaction(b"." + b"x" * 1000),
            *transaction(b"x" * 5000),
            HELO,
            *transaction(b"x" * 1200),
            QUIT,
        ]
    ),
    "DATA too large after a long line": Dialog(
        [EHLO, *transaction(b"x\r\n" * 40 + b"x" * 1200), QUIT], {"data_size_limit": 100}
    ),
    "DATA with 8-bit content": Dialog(
        [EHLO, *transaction(b"caf\xc3\xa9 \xff"), HELO, *transaction(b"\xff"), QUIT]
    ),
    "DATA decoded": Dialog(
        [EHLO, *transaction(b"caf\xc3\xa9"), RSET, *transaction(b"plain"), QUIT],
        {"decode_data": True},
    ),
    "DATA decoded, SMTPUTF8": Dialog(
        [EHLO, *transaction(b"caf\xc3\xa9"), QUIT], {"decode_data": True, "enable_SMTPUTF8": True}
    ),
    "LMTP": Dialog(
        [
            b"HELO x.test\r\n",
            b"EHLO x.test\r\n",
            b"LHLO\r\n",
            MAIL,
            b"HELP\r\n",
            b"HELP LHLO\r\n",
            b"HELP HELO\r\n",
            b"HELP EHLO\r\n",
            b"LHLO x.test\r\n",
            b"HELO x.test\r\n",
            b"EHLO x.test\r\n",
            *transaction(b"hi"),
            b"FROB\r\n",
            QUIT,
        ],
        lmtp=True,
    ),
    "LMTP, SMTPUTF8": Dialog(
        [b"LHLO x.test\r\n", b"HELP\r\n", b"HELP LHLO\r\n", QUIT],
        {"enable_SMTPUTF8": True},
        lmtp=True,
    ),
    "LMTP, decode_data": Dialog([b"LHLO x.test\r\n", QUIT], {"decode_data": True}, lmtp=True),
}
# fmt: on


@dataclass(frozen=True)
class Deliberate:
    """A dialog whose last step typed_smtpd deliberately answers otherwise than aiosmtpd, with
    both answers (the comment above each one gives the reason, as docs/migrating.rst does)."""

    dialog: Dialog
    aiosmtpd: bytes
    typed: bytes


class Raising:
    async def handle_NOOP(self, server: object, session: object, envelope: object, arg: str) -> str:
        raise RuntimeError("internal detail")


# fmt: off
EXCEPTIONS: Final[dict[str, Deliberate]] = {
    # The default ident names the software and its version (pass ident= to choose it).
    "default ident": Deliberate(
        Dialog([], {"ident": None}),
        b"220 mx.test Python SMTP 1.4.6\r\n",
        f"220 mx.test {IDENT}\r\n".encode(),
    ),
    # Paths are strict (RFC 5321 4.1.2): an unclosed bracket is no address...
    "unclosed path": Deliberate(
        Dialog([EHLO, b"MAIL FROM:<a@b.test\r\n"]),
        b"250 OK\r\n",
        b"553 5.1.3 Error: malformed address\r\n",
    ),
    # ... the brackets are required...
    "path without brackets": Deliberate(
        Dialog([HELO, b"MAIL FROM:a@b.test\r\n"]),
        b"250 OK\r\n",
        b"501 Syntax: MAIL FROM: <address>\r\n",
    ),
    # ... and VRFY's argument is read the same way.
    "VRFY of no address": Deliberate(
        Dialog([b"VRFY two words\r\n"]),
        b"252 Cannot VRFY user, but will accept message and attempt delivery\r\n",
        b"502 Could not VRFY two words\r\n",
    ),
    # Exception text never reaches the client (451): the email parser aiosmtpd uses crashes on
    # "a@" before Python 3.13 (from 3.13 on, aiosmtpd's answer is ours)...
    "VRFY that crashes aiosmtpd": Deliberate(
        Dialog([b"VRFY a@\r\n"]),
        b"502 Could not VRFY a@\r\n"
        if sys.version_info >= (3, 13)
        else b"500 Error: (IndexError) string index out of range\r\n",
        b"502 Could not VRFY a@\r\n",
    ),
    # ... and a hook's exception is not shown either.
    "hook exception": Deliberate(
        Dialog([b"NOOP\r\n"], handler=Raising),
        b"500 Error: (RuntimeError) internal detail\r\n",
        b"451 Requested action aborted: local error in processing\r\n",
    ),
    # Parameter keywords may hold hyphens (RFC 5321 4.1.2): an unknown one gets 555.
    "hyphen in a parameter keyword": Deliberate(
        Dialog([EHLO, b"MAIL FROM:<a@b.test> X-FOO=1\r\n"]),
        b"501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n",
        b"555 MAIL FROM parameters not recognized or not implemented\r\n",
    ),
    # AUTH= on MAIL is part of the AUTH extension (RFC 4954 5), which both advertise.
    "AUTH= on MAIL": Deliberate(
        Dialog([EHLO, b"MAIL FROM:<a@b.test> AUTH=<>\r\n"]),
        b"555 MAIL FROM parameters not recognized or not implemented\r\n",
        b"250 OK\r\n",
    ),
    # A parameter given twice is ambiguous.
    "parameter given twice": Deliberate(
        Dialog([EHLO, b"MAIL FROM:<a@b.test> SIZE=10 SIZE=20\r\n"]),
        b"250 OK\r\n",
        b"501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n",
    ),
    # SIZE has at most 20 digits (RFC 1870).
    "SIZE of 24 digits": Deliberate(
        Dialog([EHLO, b"MAIL FROM:<a@b.test> SIZE=123456789012345678901234\r\n"]),
        b"552 Error: message size exceeds fixed maximum message size\r\n",
        b"501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n",
    ),
    # A non-ASCII address needs the SMTPUTF8 parameter (RFC 6531 3.4).
    "UTF-8 address without SMTPUTF8": Deliberate(
        Dialog([EHLO, "MAIL FROM:<j\u00f6rg@b.test>\r\n".encode()], {"enable_SMTPUTF8": True}),
        b"250 OK\r\n",
        b"553 Error: non-ASCII address requires SMTPUTF8\r\n",
    ),
    # "=" is an empty initial response (RFC 4954 4), not bad base64 (aiosmtpd read it as one
    # on Python 3.10 only, where base64 decodes "=" to nothing).
    "empty initial response": Deliberate(
        Dialog([EHLO, b"AUTH PLAIN =\r\n"], AUTH_PLAIN_TEXT, auth=True),
        b"501 5.5.2 Can't decode base64\r\n"
        if sys.version_info >= (3, 11)
        else b"501 5.5.2 Can't split auth value\r\n",
        b"501 5.5.2 Can't split auth value\r\n",
    ),
    # AUTH is not allowed during a mail transaction (RFC 4954 4).
    "AUTH in a transaction": Deliberate(
        Dialog([EHLO, MAIL, b"AUTH PLAIN\r\n"], AUTH_PLAIN_TEXT, auth=True),
        b"334 \r\n",
        b"503 Error: AUTH not allowed during a mail transaction\r\n",
    ),
    # Five failed AUTHs on one connection close it (max_auth_failures).
    "too many AUTH failures": Deliberate(
        Dialog(
            [EHLO, PLAIN_BAD, PLAIN_BAD, PLAIN_BAD, PLAIN_BAD, (PLAIN_BAD + QUIT, UNTIL_CLOSED)],
            AUTH_PLAIN_TEXT,
            auth=True,
        ),
        b"535 5.7.8 Authentication credentials invalid\r\n221 Bye\r\n" + CLOSED,
        b"535 5.7.8 Authentication credentials invalid\r\n"
        b"421 Too many authentication failures\r\n" + CLOSED,
    ),
    # AUTH is advertised only with a mechanism to offer.
    "every mechanism left out": Deliberate(
        Dialog([EHLO], {**AUTH_PLAIN_TEXT, "auth_exclude_mechanism": ["LOGIN", "PLAIN"]}),
        b"250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250-AUTH \r\n250 HELP\r\n",
        b"250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250 HELP\r\n",
    ),
    # With auth_required the gate comes before any command runs, HELO or not.
    "auth_required before HELO": Deliberate(
        Dialog([MAIL], {**AUTH_PLAIN_TEXT, "auth_required": True}, auth=True),
        b"503 Error: send HELO first\r\n",
        b"530 5.7.0 Authentication required\r\n",
    ),
    # A time-out is announced with 421 (RFC 5321 4.5.3.2).
    "idle timeout": Deliberate(
        Dialog([EHLO, (b"", UNTIL_CLOSED)], {"timeout": 0.2}),
        CLOSED,
        b"421 Error: timeout exceeded\r\n" + CLOSED,
    ),
    # LMTP answers DATA once per recipient (RFC 2033 4.2).
    "LMTP, two recipients": Deliberate(
        Dialog(
            [b"LHLO x.test\r\n", MAIL, RCPT, b"RCPT TO:<e@f.test>\r\n", b"DATA\r\n",
             (message(b"hi") + QUIT, UNTIL_CLOSED)],
            lmtp=True,
        ),
        b"250 OK\r\n221 Bye\r\n" + CLOSED,
        b"250 OK\r\n250 OK\r\n221 Bye\r\n" + CLOSED,
    ),
    # With require_starttls, LMTP's LHLO is allowed before TLS (it is the LMTP greeting).
    "LMTP LHLO before STARTTLS": Deliberate(
        Dialog([b"LHLO x.test\r\n"], {"tls_context": "plain", "require_starttls": True}, lmtp=True),
        b"530 Must issue a STARTTLS command first\r\n",
        b"250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250-STARTTLS\r\n250 HELP\r\n",
    ),
    # Bare LF is refused, in commands and in messages (SMTP smuggling).
    "bare LF in a command": Deliberate(
        Dialog([b"NOOP\n"]),
        b"250 OK\r\n",
        b"500 Error: bare CR or LF in command; lines must end with CRLF\r\n",
    ),
    "bare LF in a message": Deliberate(
        Dialog([EHLO, *transaction(b"a\nb")]),
        b"250 OK\r\n",
        b"550 Error: message contains bare CR, bare LF or NUL; lines must end with CRLF\r\n",
    ),
    # Decoded content is valid text: invalid UTF-8 is refused, not surrogate-escaped.
    "invalid UTF-8 under decode_data": Deliberate(
        Dialog([EHLO, *transaction(b"\xff")], {"decode_data": True, "enable_SMTPUTF8": True}),
        b"250 OK\r\n",
        b"500 Error: strict ASCII mode\r\n",
    ),
    # A refused message ends its transaction (aiosmtpd kept it after this refusal).
    "transaction after a refused message": Deliberate(
        Dialog([EHLO, *transaction(b"caf\xc3\xa9"), MAIL], {"decode_data": True}),
        b"503 Error: nested MAIL command\r\n",
        b"250 OK\r\n",
    ),
    # A message both too large and with a too-long line is refused as too large.
    "DATA too long, then too large": Deliberate(
        Dialog([EHLO, *transaction(b"x" * 1200)], {"data_size_limit": 100}),
        b"500 Line too long (see RFC5321 4.5.3.1.6)\r\n",
        b"552 Error: Too much mail data\r\n",
    ),
}
# fmt: on


# --- running a dialog ---------------------------------------------------------------------------


def aiosmtpd_authenticator(
    server: object, session: object, envelope: object, mechanism: str, data: Any
) -> Any:
    accepted = data.login == b"good" and data.password == b"pw"
    return aiosmtpd_smtp.AuthResult(success=accepted, handled=False)


def typed_authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    accepted = data.login == b"good" and data.password == b"pw"
    return AuthResult(success=accepted, handled=False)


def server_factory(dialog: Dialog, *, aiosmtpd: bool, replies: str = "aiosmtpd") -> Any:
    """What builds each connection's server, aiosmtpd's or typed_smtpd's."""
    options: dict[str, Any] = {"hostname": "mx.test", "ident": "ID", **dialog.options}
    if options.get("tls_context") == "plain":  # offered, never used: no certificate needed
        options["tls_context"] = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if dialog.auth:
        options["authenticator"] = aiosmtpd_authenticator if aiosmtpd else typed_authenticator
    if aiosmtpd:
        base = aiosmtpd_lmtp.LMTP if dialog.lmtp else aiosmtpd_smtp.SMTP
    else:
        base = LMTP if dialog.lmtp else SMTP
        if replies != "default":
            options["replies"] = replies
    cls = type("Short", (base,), {"local_part_limit": 3}) if dialog.short_local else base
    handler = dialog.handler()

    def factory() -> Any:
        if aiosmtpd:
            return cls(handler, loop=asyncio.get_running_loop(), **options)
        return cls(handler, **options)

    return factory


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    """One reply, all its lines; :data:`CLOSED` at its end if the server closed instead, and
    :data:`NO_REPLY` if it said nothing more in time."""
    reply = b""
    while True:
        try:
            line = await asyncio.wait_for(reader.readline(), REPLY_TIMEOUT)
        except asyncio.TimeoutError:
            return reply + NO_REPLY
        if not line.endswith(b"\n"):
            return reply + line + CLOSED
        reply += line
        if line[3:4] != b"-":
            return reply


async def converse(factory: Callable[[], Any], steps: Sequence[Step]) -> list[bytes]:
    """The greeting, then the replies to each step (joined when a step brings several)."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            transcript = [await read_reply(reader)]
            for step in steps:
                data, count = step if isinstance(step, tuple) else (step, 1)
                writer.write(data)
                replies = b""
                while count != 0:  # UNTIL_CLOSED: until the server closes
                    replies += await read_reply(reader)
                    if replies.endswith((CLOSED, NO_REPLY)):
                        break
                    if count > 0:
                        count -= 1
                transcript.append(replies)
                if replies.endswith((CLOSED, NO_REPLY)):
                    break
        finally:
            writer.close()
    finally:
        server.close()
    return transcript


def run_both(dialog: Dialog) -> tuple[list[bytes], list[bytes]]:
    """The transcripts of ``dialog`` with aiosmtpd 1.4.6 and with typed_smtpd's aiosmtpd mode."""

    async def main() -> tuple[list[bytes], list[bytes]]:
        theirs = await converse(server_factory(dialog, aiosmtpd=True), dialog.steps)
        ours = await converse(server_factory(dialog, aiosmtpd=False), dialog.steps)
        return theirs, ours

    return asyncio.run(main())


def differences(dialog: Dialog, theirs: list[bytes], ours: list[bytes]) -> list[str]:
    sent = [b"<connect>", *(s[0] if isinstance(s, tuple) else s for s in dialog.steps)]
    return [
        f"{line[:60]!r}:\n    aiosmtpd: {a!r}\n    typed:    {t!r}"
        for line, a, t in zip(sent, theirs, ours, strict=False)
        if a != t
    ]


# --- the comparisons ----------------------------------------------------------------------------


def test_aiosmtpd_is_the_release_compared() -> None:
    assert aiosmtpd_smtp.__version__ == "1.4.6"


@pytest.mark.parametrize("name", list(DIALOGS))
def test_same_replies_as_aiosmtpd(name: str) -> None:
    dialog = DIALOGS[name]
    if sys.version_info < dialog.since:
        pytest.skip(f"aiosmtpd answers otherwise before Python {dialog.since}")
    theirs, ours = run_both(dialog)
    assert not differences(dialog, theirs, ours), "\n".join(differences(dialog, theirs, ours))
    assert len(theirs) == len(ours) == len(dialog.steps) + 1
    assert NO_REPLY not in b"".join(theirs)


@pytest.mark.parametrize("name", list(EXCEPTIONS))
def test_documented_exceptions(name: str) -> None:
    exception = EXCEPTIONS[name]
    dialog = exception.dialog
    theirs, ours = run_both(dialog)
    # Everything before the last step is the same: the exception is that step alone.
    assert not differences(dialog, theirs[:-1], ours[:-1])
    assert len(theirs) == len(ours) == len(dialog.steps) + 1
    assert (theirs[-1], ours[-1]) == (exception.aiosmtpd, exception.typed)


def test_every_aiosmtpd_line_of_the_catalogue_is_compared() -> None:
    """Each reply of the catalogue with a line of aiosmtpd's own is sent in some dialog (so it
    was compared with what aiosmtpd sends there)."""

    async def transcripts() -> list[list[bytes]]:
        return [
            await converse(server_factory(dialog, aiosmtpd=False), dialog.steps)
            for dialog in DIALOGS.values()
        ]

    sent = b"".join(b"".join(transcript) for transcript in asyncio.run(transcripts()))
    entries = {n: v for n, v in vars(R).items() if isinstance(v, Reply) and v.aiosmtpd}
    missing = [
        name for name, reply in entries.items() if reply.render(style="aiosmtpd") not in sent
    ]
    assert not missing


# --- the default is unchanged -------------------------------------------------------------------

DEFAULT_EHLO: Final = (
    b"250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250-PIPELINING\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250-BINARYMIME\r\n250-DSN\r\n250 HELP\r\n"
)


def run_typed(dialog: Dialog, replies: str) -> list[bytes]:
    return asyncio.run(
        converse(server_factory(dialog, aiosmtpd=False, replies=replies), dialog.steps)
    )


@pytest.mark.parametrize("name", ["before greeting", "after HELO", "AUTH PLAIN and LOGIN"])
def test_replies_typed_is_the_default(name: str) -> None:
    dialog = DIALOGS[name]
    assert run_typed(dialog, "typed") == run_typed(dialog, "default")


def test_the_default_replies() -> None:
    """What ``replies="aiosmtpd"`` changes, as the default has it."""
    dialog = Dialog(
        [
            HELO, b"AUTH PLAIN\r\n", b"HELP\r\n", b"HELP RCPT\r\n", b"BDAT 0 LAST\r\n", EHLO,
            b"AUTH FROB\r\n", PLAIN_BAD, b"AUTH plain =\r\n", b"HELP RCPT\r\n",
            b"MAIL FROM:<a@@b>\r\n", b"MAIL FROM:<a@b.test> RET=HDRS\r\n", RCPT,
            b"RCPT TO:<e@f.test> NOTIFY=NEVER\r\n", b"foo-bar\r\n", b"X" * 40 + b"\r\n",
            b"RCPT\r\n", RSET, QUIT,
        ],
        {**AUTH_PLAIN_TEXT, "enhanced_status_codes": True},
        auth=True,
    )  # fmt: skip
    assert run_typed(dialog, "default")[1:] == [
        b"250 mx.test\r\n",
        b'500 Error: command "AUTH" not recognized\r\n',
        b"250 Supported commands: AUTH BDAT DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET VRFY\r\n",
        b"250 Syntax: RCPT TO: <address>\r\n",
        b"503 Error: need RCPT command\r\n",
        DEFAULT_EHLO.replace(b"250 HELP", b"250-AUTH LOGIN PLAIN\r\n250 HELP"),
        b"504 5.5.4 Unrecognized authentication type\r\n",
        b"535 5.7.8 Authentication credentials invalid\r\n",
        b"501 5.5.2 Can't split auth value\r\n",
        b"250 2.0.0 Syntax: RCPT TO: <address> [SP <rcpt-parameters>]\r\n",
        b"553 5.1.3 Error: malformed address\r\n",
        b"250 2.1.0 OK\r\n",
        b"250 2.1.5 OK\r\n",
        b"250 2.1.5 OK\r\n",
        b"500 5.5.2 Error: bad syntax\r\n",
        b'500 5.5.1 Error: command "?" not recognized\r\n',
        b"501 5.5.4 Syntax: RCPT TO: <address> [SP <rcpt-parameters>]\r\n",
        b"250 2.0.0 OK\r\n",
        b"221 2.0.0 Bye\r\n",
    ]


def test_the_default_at_the_limits() -> None:
    calls = Dialog([HELO, (b"NOOP\r\n", UNTIL_CLOSED)], {"command_call_limit": {"NOOP": 0}})
    assert run_typed(calls, "default")[-1] == b"421 NOOP sent too many times\r\n" + CLOSED
    unknown = Dialog([EHLO, *[b"FROB\r\n"] * 9, (b"FROB\r\n", UNTIL_CLOSED)])
    assert run_typed(unknown, "default")[-1] == (
        b'500 5.5.1 Error: command "FROB" not recognized\r\n'
        b"421 4.7.0 Too many unrecognized commands, goodbye.\r\n" + CLOSED
    )


# --- the setting itself -------------------------------------------------------------------------


def test_an_unknown_reply_style_is_refused() -> None:
    with pytest.raises(ValueError, match="replies must be one of typed, aiosmtpd"):
        SMTP(object(), replies="aiosmtp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="replies must be one of"):
        EngineConfig(hostname="mx.test", ident="ID", replies="postfix")  # type: ignore[arg-type]


def test_servers_with_other_replies_share_no_configuration() -> None:
    handler = object()
    typed = SMTP(handler, hostname="mx.test")._server.config
    aiosmtpd = SMTP(handler, hostname="mx.test", replies="aiosmtpd")._server.config
    assert (typed.replies, aiosmtpd.replies) == ("typed", "aiosmtpd")
    assert SMTP(handler, hostname="mx.test", replies="typed")._server.config is typed


def test_bogus_limit_is_aiosmtpds_unless_given() -> None:
    def limit(**options: Any) -> int:
        return SMTP(object(), hostname="mx.test", **options)._server.config.limits.bogus_limit

    assert limit() == 10
    assert limit(replies="aiosmtpd") == 5
    assert limit(replies="aiosmtpd", bogus_limit=3) == 3
    assert limit(replies="aiosmtpd", bogus_limit=10) == 10  # given, so kept
    assert limit(bogus_limit=None) == limit() == 10


def test_ehlo_lines_as_aiosmtpd_builds_them() -> None:
    config = EngineConfig(
        hostname="mx.test",
        ident="ID",
        replies="aiosmtpd",
        smtputf8=True,
        tls_available=True,
        mechanisms=frozenset({"PLAIN", "LOGIN"}),
    )
    assert config.ehlo_lines(tls_active=False) == [
        "250-mx.test",
        "250-SIZE 33554432",
        "250-8BITMIME",
        "250-SMTPUTF8",
        "250-STARTTLS",
        "250 HELP",
    ]
    assert config.ehlo_lines(tls_active=True) == [
        "250-mx.test",
        "250-SIZE 33554432",
        "250-8BITMIME",
        "250-SMTPUTF8",
        "250-AUTH LOGIN PLAIN",
        "250 HELP",
    ]


def test_reply_styles() -> None:
    assert R.AUTH_FAILED.render(enhanced=False) == b"535 Authentication credentials invalid\r\n"
    assert R.AUTH_FAILED.render(style="aiosmtpd") == (
        b"535 5.7.8 Authentication credentials invalid\r\n"
    )
    assert R.OK.render(style="aiosmtpd") == b"250 OK\r\n"
    assert R.OK.line(style="aiosmtpd") == "250 OK"
    assert R.TOO_MANY_UNRECOGNIZED.line(style="aiosmtpd").startswith("502 5.5.1 ")
    assert R.unrecognized("X" * 40).line(enhanced=False) == '500 Error: command "?" not recognized'
    assert R.unrecognized("X" * 40).line(style="aiosmtpd") == (
        f'500 Error: command "{"X" * 40}" not recognized'
    )
    # The aiosmtpd line changes nothing else: equal replies, one hash.
    assert R.unrecognized("AUTH") == R.AUTH_AFTER_HELO
    with pytest.raises(ValueError, match="malformed aiosmtpd reply line"):
        Reply(250, "OK", aiosmtpd="250 OK\r\n250 again")
    with pytest.raises(ValueError, match="malformed aiosmtpd reply line"):
        Reply(250, "OK", aiosmtpd="OK")
