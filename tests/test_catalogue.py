"""Every reply of the catalogue, produced by the real server over a real socket.

One row per catalogue entry: the server's settings, what the client sends (each step with the
number of replies it brings) and the reply the last step must get, compared with the catalogue
value itself. A guard test checks that no entry of the catalogue is left without a row.
"""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
import trustme

from tests.support import RawClient, connected, running
from typed_smtpd.controller import Controller
from typed_smtpd.lmtp import LMTP
from typed_smtpd.proto import replies as R
from typed_smtpd.proto.replies import Reply
from typed_smtpd.session import AuthResult, Envelope, Session
from typed_smtpd.smtp import SMTP

pytestmark = pytest.mark.integration

EHLO = (b"EHLO client.test\r\n", 1)
TRANSACTION = [EHLO, (b"MAIL FROM:<a@b.test>\r\n", 1), (b"RCPT TO:<c@d.test>\r\n", 1)]


def b64(text: bytes) -> bytes:
    return base64.b64encode(text)


def accept_alice(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    return AuthResult(success=getattr(data, "login", None) == b"alice")


class ShortLocalParts(SMTP):
    local_part_limit = 3


class Raising:
    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str
    ) -> str:
        raise RuntimeError("internal detail")


def tls_context() -> Any:
    import ssl

    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    return context


@dataclass
class Case:
    reply: Reply
    steps: list[tuple[bytes, int]]
    kwargs: dict[str, Any] = field(default_factory=dict)
    handler: object | None = None
    enhanced: bool = True
    server_class: type[SMTP] = SMTP


HELP_VERBS = ["AUTH", "BDAT", "DATA", "EHLO", "HELO", "HELP", "MAIL", "NOOP", "QUIT", "RCPT"]
HELP_VERBS += ["RSET", "VRFY"]
PLAIN_ALICE = b"AUTH PLAIN " + b64(b"\x00alice\x00pw") + b"\r\n"
AUTH_OK = {"auth_require_tls": False, "authenticator": accept_alice}

CASES: dict[str, Case] = {
    "BYE": Case(R.BYE, [EHLO, (b"QUIT\r\n", 1)]),
    "TIMEOUT": Case(R.TIMEOUT, [(b"", 1)], {"timeout": 0.3}, enhanced=False),
    "TOO_MANY_UNRECOGNIZED": Case(
        R.TOO_MANY_UNRECOGNIZED, [EHLO, (b"FROB\r\n", 2)], {"bogus_limit": 1}
    ),
    "INTERNAL_ERROR": Case(R.INTERNAL_ERROR, [EHLO, (b"NOOP\r\n", 1)], handler=Raising()),
    "OK": Case(R.OK, [EHLO, (b"NOOP\r\n", 1)]),
    "MAIL_OK": Case(R.MAIL_OK, [EHLO, (b"MAIL FROM:<a@b.test>\r\n", 1)]),
    "RCPT_OK": Case(R.RCPT_OK, TRANSACTION),
    "BAD_SYNTAX": Case(R.BAD_SYNTAX, [EHLO, (b"\r\n", 1)]),
    "COMMAND_TOO_LONG": Case(R.COMMAND_TOO_LONG, [EHLO, (b"NOOP " + b"x" * 600 + b"\r\n", 1)]),
    "NOT_ASCII": Case(
        R.NOT_ASCII, [EHLO, ("NOOP caf\u00e9\r\n".encode(), 1)], {"enable_SMTPUTF8": False}
    ),
    "NON_ASCII_VERB": Case(
        R.NON_ASCII_VERB, [EHLO, ("caf\u00e9\r\n".encode(), 1)], {"enable_SMTPUTF8": False}
    ),
    "NUL_IN_COMMAND": Case(R.NUL_IN_COMMAND, [EHLO, (b"NO\x00OP\r\n", 1)]),
    "BAD_LINE_ENDING": Case(R.BAD_LINE_ENDING, [EHLO, (b"NOOP\n", 1)]),
    "HELLO_FIRST": Case(R.HELLO_FIRST, [(b"MAIL FROM:<a@b.test>\r\n", 1)], enhanced=False),
    "EXPN_NOT_IMPLEMENTED": Case(R.EXPN_NOT_IMPLEMENTED, [EHLO, (b"EXPN staff\r\n", 1)]),
    "CANNOT_VRFY": Case(R.CANNOT_VRFY, [EHLO, (b"VRFY <a@b.test>\r\n", 1)]),
    "TLS_NOT_AVAILABLE": Case(R.TLS_NOT_AVAILABLE, [EHLO, (b"STARTTLS\r\n", 1)]),
    "EHLO_FIRST": Case(R.EHLO_FIRST, [(PLAIN_ALICE, 1)], AUTH_OK, enhanced=False),
    "AUTH_AFTER_HELO": Case(
        R.AUTH_AFTER_HELO, [(b"HELO client.test\r\n", 1), (PLAIN_ALICE, 1)], AUTH_OK, enhanced=False
    ),
    "AUTH_SUCCESS": Case(R.AUTH_SUCCESS, [EHLO, (PLAIN_ALICE, 1)], AUTH_OK),
    "AUTH_ALREADY": Case(R.AUTH_ALREADY, [EHLO, (PLAIN_ALICE, 1), (PLAIN_ALICE, 1)], AUTH_OK),
    "AUTH_FAILED": Case(
        R.AUTH_FAILED,
        [EHLO, (b"AUTH PLAIN " + b64(b"\x00bob\x00pw") + b"\r\n", 1)],
        AUTH_OK,
    ),
    "AUTH_NO_MECHANISM": Case(R.AUTH_NO_MECHANISM, [EHLO, (b"AUTH GSSAPI\r\n", 1)], AUTH_OK),
    "AUTH_ENCRYPTION_REQUIRED": Case(R.AUTH_ENCRYPTION_REQUIRED, [EHLO, (PLAIN_ALICE, 1)]),
    "AUTH_ABORTED": Case(R.AUTH_ABORTED, [EHLO, (b"AUTH PLAIN\r\n", 1), (b"*\r\n", 1)], AUTH_OK),
    "AUTH_BAD_BASE64": Case(R.AUTH_BAD_BASE64, [EHLO, (b"AUTH PLAIN !!!!\r\n", 1)], AUTH_OK),
    "AUTH_CANT_SPLIT": Case(
        R.AUTH_CANT_SPLIT, [EHLO, (b"AUTH PLAIN " + b64(b"no nul") + b"\r\n", 1)], AUTH_OK
    ),
    "AUTH_NOT_ENOUGH_VALUE": Case(R.AUTH_NOT_ENOUGH_VALUE, [EHLO, (b"AUTH\r\n", 1)], AUTH_OK),
    "AUTH_TOO_MANY_VALUES": Case(
        R.AUTH_TOO_MANY_VALUES, [EHLO, (b"AUTH PLAIN a b\r\n", 1)], AUTH_OK
    ),
    "AUTH_LINE_TOO_LONG": Case(
        R.AUTH_LINE_TOO_LONG,
        [EHLO, (b"AUTH PLAIN\r\n", 1), (b"A" * 13_000 + b"\r\n", 1)],
        AUTH_OK,
    ),
    "AUTH_TOO_MANY_FAILURES": Case(
        R.AUTH_TOO_MANY_FAILURES,
        [EHLO, (b"AUTH PLAIN " + b64(b"\x00bob\x00pw") + b"\r\n", 2)],
        {**AUTH_OK, "max_auth_failures": 1},
    ),
    "MALFORMED_ADDRESS": Case(R.MALFORMED_ADDRESS, [EHLO, (b"MAIL FROM:<a@@b>\r\n", 1)]),
    "MAIL_NESTED": Case(R.MAIL_NESTED, [*TRANSACTION, (b"MAIL FROM:<a@b.test>\r\n", 1)]),
    "MAIL_BAD_BODY": Case(R.MAIL_BAD_BODY, [EHLO, (b"MAIL FROM:<a@b.test> BODY=9BIT\r\n", 1)]),
    "MAIL_SMTPUTF8_VALUE": Case(
        R.MAIL_SMTPUTF8_VALUE, [EHLO, (b"MAIL FROM:<a@b.test> SMTPUTF8=1\r\n", 1)]
    ),
    "MAIL_SMTPUTF8_DISABLED": Case(
        R.MAIL_SMTPUTF8_DISABLED,
        [EHLO, (b"MAIL FROM:<a@b.test> SMTPUTF8\r\n", 1)],
        {"enable_SMTPUTF8": False},
    ),
    "MAIL_SIZE_TOO_LARGE": Case(
        R.MAIL_SIZE_TOO_LARGE,
        [EHLO, (b"MAIL FROM:<a@b.test> SIZE=2000\r\n", 1)],
        {"data_size_limit": 1000},
    ),
    "MAIL_PARAM_UNRECOGNIZED": Case(
        R.MAIL_PARAM_UNRECOGNIZED, [EHLO, (b"MAIL FROM:<a@b.test> X-Y=1\r\n", 1)]
    ),
    "RCPT_PARAM_UNRECOGNIZED": Case(
        R.RCPT_PARAM_UNRECOGNIZED,
        [*TRANSACTION[:2], (b"RCPT TO:<c@d.test> X-Y=1\r\n", 1)],
    ),
    "NEED_UTF8": Case(R.NEED_UTF8, [EHLO, ("MAIL FROM:<j\u00f6rg@b.test>\r\n".encode(), 1)]),
    "NEED_MAIL": Case(R.NEED_MAIL, [EHLO, (b"RCPT TO:<c@d.test>\r\n", 1)]),
    "NEED_RCPT": Case(R.NEED_RCPT, [*TRANSACTION[:2], (b"DATA\r\n", 1)]),
    "TOO_MANY_RECIPIENTS": Case(
        R.TOO_MANY_RECIPIENTS,
        [*TRANSACTION, (b"RCPT TO:<e@d.test>\r\n", 1)],
        {"max_recipients": 1},
    ),
    "ENTER_DATA": Case(R.ENTER_DATA, [*TRANSACTION, (b"DATA\r\n", 1)]),
    "DATA_TOO_LARGE": Case(
        R.DATA_TOO_LARGE,
        [*TRANSACTION, (b"DATA\r\n", 1), (b"x" * 100 + b"\r\n.\r\n", 1)],
        {"data_size_limit": 50},
    ),
    "DATA_LINE_TOO_LONG": Case(
        R.DATA_LINE_TOO_LONG, [*TRANSACTION, (b"DATA\r\n", 1), (b"x" * 1200 + b"\r\n.\r\n", 1)]
    ),
    "DATA_BAD_LINE_ENDING": Case(
        R.DATA_BAD_LINE_ENDING, [*TRANSACTION, (b"DATA\r\n", 1), (b"a\nb\r\n.\r\n", 1)]
    ),
    "DECODE_ERROR": Case(
        R.DECODE_ERROR,
        [*TRANSACTION, (b"DATA\r\n", 1), (b"caf\xc3\xa9\r\n.\r\n", 1)],
        {"decode_data": True, "enable_SMTPUTF8": False},
    ),
    "BDAT_BAD_SIZE": Case(R.BDAT_BAD_SIZE, [EHLO, (b"BDAT many\r\n", 1)]),
    "BDAT_AFTER_DATA": Case(
        R.BDAT_AFTER_DATA, [*TRANSACTION, (b"BDAT 2\r\nab", 1), (b"DATA\r\n", 1)]
    ),
    "STARTTLS_FIRST": Case(
        R.STARTTLS_FIRST,
        [EHLO, (b"MAIL FROM:<a@b.test>\r\n", 1)],
        {"tls_context": "make", "require_starttls": True},
    ),
    "READY_FOR_TLS": Case(R.READY_FOR_TLS, [EHLO, (b"STARTTLS\r\n", 1)], {"tls_context": "make"}),
    "VRFY_UNPARSABLE": Case(R.VRFY_UNPARSABLE, [EHLO, (b"VRFY not an address\r\n", 1)]),
    "AUTH_IN_TRANSACTION": Case(
        R.AUTH_IN_TRANSACTION, [EHLO, (b"MAIL FROM:<a@b.test>\r\n", 1), (PLAIN_ALICE, 1)], AUTH_OK
    ),
    "LOCAL_PART_TOO_LONG": Case(
        R.LOCAL_PART_TOO_LONG,
        [EHLO, (b"MAIL FROM:<abcd@b.test>\r\n", 1)],
        server_class=ShortLocalParts,
    ),
    # The reply builders of the catalogue, one example each.
    "help_commands": Case(
        R.help_commands(
            [
                "AUTH",
                "BDAT",
                "DATA",
                "EHLO",
                "HELO",
                "HELP",
                "MAIL",
                "NOOP",
                "QUIT",
                "RCPT",
                "RSET",
                "VRFY",
            ]
        ),
        [EHLO, (b"HELP\r\n", 1)],
    ),
    "help_syntax": Case(R.help_syntax("NOOP [ignored]"), [EHLO, (b"HELP noop\r\n", 1)]),
    "chunk_received": Case(R.chunk_received(2), [*TRANSACTION, (b"BDAT 2\r\nab", 1)]),
    "recipient_delivered": Case(
        R.recipient_delivered("c@d.test"),
        [(b"LHLO client.test\r\n", 1), *TRANSACTION[1:], (b"BDAT 0 LAST\r\n", 1)],
        handler=object(),  # no handle_DATA: the default per-recipient reply
        server_class=LMTP,
    ),
    "syntax": Case(R.syntax("RSET"), [EHLO, (b"RSET now\r\n", 1)]),
    "unrecognized": Case(R.unrecognized("FROB"), [EHLO, (b"FROB\r\n", 1)]),
    "vrfy_unparsable": Case(
        R.vrfy_unparsable("not an address"), [EHLO, (b"VRFY not an address\r\n", 1)]
    ),
    "call_limit_exceeded": Case(
        R.call_limit_exceeded("NOOP"),
        [EHLO, (b"NOOP\r\n", 1), (b"NOOP\r\n", 1)],
        {"command_call_limit": {"NOOP": 1}},
    ),
}

#: Replies whose dialog needs a TLS client or a second connection: tested where that lives.
ELSEWHERE = {
    "TLS_ALREADY_ACTIVE": "tests/test_starttls.py",
    "SECURITY_REFUSED": "tests/test_starttls.py",
    "AUTH_REQUIRED": "tests/test_auth.py",
    "greeting": "tests/test_smtp.py",
}


def catalogue_names() -> set[str]:
    names = {n for n, v in vars(R).items() if isinstance(v, Reply)}
    return names | {n for n in R.__all__ if n[0].islower()}


def test_every_catalogue_entry_has_a_case() -> None:
    special = {"SHUTTING_DOWN", "TOO_MANY_CONNECTIONS"}  # the two tests below
    assert catalogue_names() == set(CASES) | set(ELSEWHERE) | special
    for name, path in ELSEWHERE.items():
        with open(path, encoding="utf-8") as source:
            assert name in source.read(), f"{name} is not tested in {path}"


@pytest.mark.filterwarnings("ignore:auth_required")
@pytest.mark.parametrize("name", sorted(CASES))
def test_catalogue_reply_over_a_socket(name: str) -> None:
    case = CASES[name]
    kwargs = dict(case.kwargs)
    if kwargs.get("tls_context") == "make":
        kwargs["tls_context"] = tls_context()
    with (
        running(case.handler, server_class=case.server_class, **kwargs) as server,
        connected(server) as client,
    ):
        last: tuple[int, str] | None = None
        for data, count in case.steps:
            if data:
                client.send(data)
            for _ in range(count):
                last = client.reply()
        assert last == (case.reply.code, case.reply.line(enhanced=case.enhanced)[4:])


def test_too_many_connections() -> None:
    with running(max_connections=1) as server, connected(server):
        refused = RawClient(server.hostname, server.port)  # its "greeting" is the refusal
        try:
            assert refused.greeting == (421, R.TOO_MANY_CONNECTIONS.line(enhanced=False)[4:])
        finally:
            refused.close()


def test_shutting_down() -> None:
    controller = Controller(object(), hostname="127.0.0.1", port=0)
    controller.start()
    client = RawClient(controller.hostname, controller.port)
    try:
        client.cmd("EHLO client.test")
        stopping = threading.Thread(target=controller.stop)
        stopping.start()
        assert client.reply() == (421, R.SHUTTING_DOWN.line(enhanced=True)[4:])
        stopping.join(10)
    finally:
        client.close()
