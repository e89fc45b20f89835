"""Interoperability with real clients: smtplib, aiosmtplib, swaks and ``openssl s_client``.

Each client does STARTTLS, implicit TLS (SMTPS) and AUTH with every mechanism the server offers,
against a server whose certificate comes from the test authority. swaks also sends PROXY headers
(versions 1 and 2) and speaks LMTP. External programs are skipped when they are not installed
here (the CI installs them); each runs with a bounded timeout and is killed if it overstays.
"""

from __future__ import annotations

import email.message
import os
import shutil
import smtplib
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

import aiosmtplib
import pytest

from tests.support import Recorder, running
from tests.tls_support import PemFiles
from typed_smtpd.controller import Controller
from typed_smtpd.lmtp import LMTP
from typed_smtpd.proxy_protocol import ProxyData
from typed_smtpd.session import CramMD5Response, Envelope, LoginPassword, Session
from typed_smtpd.smtp import SMTP, AuthResult

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.tls_fixtures"]

USER, PASSWORD = "alice", "wonderland"
SENDER, RECIPIENT = "sender@example.test", "rcpt@example.test"
#: Seconds an external program may run before it is killed.
TOOL_TIMEOUT = 60
SWAKS = shutil.which("swaks")
OPENSSL = shutil.which("openssl")
needs_swaks = pytest.mark.skipif(SWAKS is None, reason="swaks is not installed")


def _swaks_speaks_tls() -> bool:
    """Whether swaks can do TLS: it needs the Perl module Net::SSLeay (libnet-ssleay-perl)."""
    if SWAKS is None:
        return False
    support = subprocess.run(
        [SWAKS, "--support"], capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False
    )
    return "TLS supported" in support.stdout + support.stderr


# Skipped locally when Net::SSLeay is missing; the CI installs it, and there they must run.
needs_swaks_tls = pytest.mark.skipif(
    SWAKS is None or (not os.environ.get("CI") and not _swaks_speaks_tls()),
    reason="swaks is not installed or lacks TLS (apt-get install swaks libnet-ssleay-perl)",
)
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")


@dataclass
class Handler(Recorder):
    """Records messages and the PROXY header of each connection."""

    headers: list[ProxyData] = field(default_factory=list)

    def handle_PROXY(
        self, server: SMTP, session: Session, envelope: Envelope, proxy_data: ProxyData
    ) -> bool:
        self.headers.append(proxy_data)
        return True


@dataclass
class Authenticator:
    """Accepts alice/wonderland with any built-in mechanism; records the mechanisms tried."""

    mechanisms: list[str] = field(default_factory=list)

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        self.mechanisms.append(mechanism)
        if isinstance(data, LoginPassword):
            ok = data.login == USER.encode() and data.password == PASSWORD.encode()
        else:
            assert isinstance(data, CramMD5Response)
            ok = data.login == USER.encode() and data.verify(PASSWORD)
        return AuthResult(success=ok, handled=False, auth_data=data.login)


def message(subject: str = "interop") -> email.message.EmailMessage:
    msg = email.message.EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = SENDER, RECIPIENT, subject
    msg.set_content("Hello over TLS.\n")
    return msg


def check_delivery(handler: Recorder, *, authenticated: bool, tls: bool = True) -> Session:
    """Exactly one message arrived, from SENDER to RECIPIENT, over TLS; its session."""
    (envelope,) = handler.envelopes
    assert envelope.mail_from == SENDER and envelope.rcpt_tos == [RECIPIENT]
    (session,) = handler.sessions
    assert (session.ssl is not None) is tls
    assert bool(session.authenticated) is authenticated
    if authenticated:
        assert session.auth_data == USER.encode()
    return session


@contextmanager
def tls_server(
    handler: Recorder, server_context: ssl.SSLContext, *, implicit: bool = False, **kwargs: Any
) -> Iterator[Controller]:
    """A server with STARTTLS (or SMTPS when ``implicit``) and the test authenticator."""
    kwargs.setdefault("authenticator", Authenticator())
    kwargs.setdefault("enable_CRAM_MD5", True)
    kwargs["ssl_context" if implicit else "tls_context"] = server_context
    with running(handler, **kwargs) as server:
        yield server


# --- smtplib --------------------------------------------------------------------------------------

SMTPLIB_MECHANISMS = [
    ("CRAM-MD5", "auth_cram_md5", True),
    ("PLAIN", "auth_plain", True),
    ("PLAIN", "auth_plain", False),
    ("LOGIN", "auth_login", True),
    ("LOGIN", "auth_login", False),
]


@pytest.mark.parametrize(
    ("mechanism", "method", "initial"),
    SMTPLIB_MECHANISMS,
    ids=["cram-md5", "plain-initial", "plain-challenge", "login-initial", "login-challenge"],
)
def test_smtplib_starttls_and_each_mechanism(
    mechanism: str,
    method: str,
    initial: bool,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    handler, authenticator = Recorder(), Authenticator()
    with (
        tls_server(handler, server_context, authenticator=authenticator) as server,
        smtplib.SMTP(server.hostname, server.port, timeout=10) as client,
    ):
        client.ehlo("smtplib.test")
        assert client.has_extn("starttls") and not client.has_extn("auth")
        client.starttls(context=client_context)
        client.ehlo("smtplib.test")
        assert not client.has_extn("starttls")
        assert client.esmtp_features["auth"].split() == ["CRAM-MD5", "LOGIN", "PLAIN"]
        client.user, client.password = USER, PASSWORD
        code, _ = client.auth(mechanism, getattr(client, method), initial_response_ok=initial)
        assert code == 235
        assert client.send_message(message()) == {}
    check_delivery(handler, authenticated=True)
    assert authenticator.mechanisms == [mechanism]


def test_smtplib_login_prefers_cram_md5(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    handler, authenticator = Recorder(), Authenticator()
    with (
        tls_server(handler, server_context, authenticator=authenticator) as server,
        smtplib.SMTP(server.hostname, server.port, timeout=10) as client,
    ):
        client.starttls(context=client_context)
        client.login(USER, PASSWORD)
        client.send_message(message())
    check_delivery(handler, authenticated=True)
    assert authenticator.mechanisms == ["CRAM-MD5"]


def test_smtplib_wrong_password_ends_in_535_and_a_clean_quit(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    # smtplib tries every mechanism in turn: three failures, still under the per-connection
    # limit, so the application sees SMTPAuthenticationError and its QUIT is answered.
    handler, authenticator = Recorder(), Authenticator()
    with tls_server(handler, server_context, authenticator=authenticator) as server:
        client = smtplib.SMTP(server.hostname, server.port, timeout=10)
        try:
            client.starttls(context=client_context)
            with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
                client.login(USER, "mirror")
            assert caught.value.smtp_code == 535
            assert client.noop()[0] == 250
            assert client.quit()[0] == 221
        finally:
            client.close()
    assert authenticator.mechanisms == ["CRAM-MD5", "PLAIN", "LOGIN"]
    assert handler.envelopes == []


def test_smtplib_smtps(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    handler = Recorder()
    with (
        tls_server(handler, server_context, implicit=True) as server,
        smtplib.SMTP_SSL(server.hostname, server.port, context=client_context, timeout=10) as c,
    ):
        c.ehlo("smtplib.test")
        assert not c.has_extn("starttls")
        assert c.esmtp_features["auth"].split() == ["CRAM-MD5", "LOGIN", "PLAIN"]
        c.login(USER, PASSWORD)
        c.send_message(message())
    check_delivery(handler, authenticated=True)


def test_smtplib_lmtp_with_require_starttls(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    handler = Recorder()
    with (
        tls_server(handler, server_context, server_class=LMTP, require_starttls=True) as server,
        smtplib.LMTP(server.hostname, server.port, timeout=10) as client,
    ):
        assert client.ehlo("smtplib.test")[0] == 250  # LHLO, allowed before TLS
        client.starttls(context=client_context)
        client.login(USER, PASSWORD)
        assert client.send_message(message()) == {}
    check_delivery(handler, authenticated=True)


# --- aiosmtplib -----------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("mechanism", ["auth_crammd5", "auth_plain", "auth_login", "login"])
async def test_aiosmtplib_starttls_and_login(
    mechanism: str, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    handler, authenticator = Recorder(), Authenticator()
    with tls_server(handler, server_context, authenticator=authenticator) as server:
        client = aiosmtplib.SMTP(
            hostname=server.hostname,
            port=server.port,
            start_tls=False,
            tls_context=client_context,
            timeout=10,
        )
        async with client:
            await client.starttls()
            await client.ehlo()
            assert not client.supports_extension("starttls")
            response = await getattr(client, mechanism)(USER, PASSWORD)
            assert response.code == 235
            errors, _ = await client.send_message(message())
            assert errors == {}
    check_delivery(handler, authenticated=True)
    expected = {"auth_crammd5": "CRAM-MD5", "auth_plain": "PLAIN", "auth_login": "LOGIN"}
    assert authenticator.mechanisms == [expected.get(mechanism, "CRAM-MD5")]


@pytest.mark.asyncio
async def test_aiosmtplib_use_tls(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    handler = Recorder()
    with tls_server(handler, server_context, implicit=True) as server:
        await aiosmtplib.send(
            message(),
            hostname=server.hostname,
            port=server.port,
            use_tls=True,
            tls_context=client_context,
            username=USER,
            password=PASSWORD,
            timeout=10,
        )
    check_delivery(handler, authenticated=True)


@pytest.mark.asyncio
async def test_aiosmtplib_send_with_start_tls(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    handler = Recorder()
    with tls_server(handler, server_context, require_starttls=True) as server:
        await aiosmtplib.send(
            message(),
            hostname=server.hostname,
            port=server.port,
            start_tls=True,
            tls_context=client_context,
            username=USER,
            password=PASSWORD,
            timeout=10,
        )
    check_delivery(handler, authenticated=True)


# --- swaks ----------------------------------------------------------------------------------------


def swaks(port: int, *options: str) -> subprocess.CompletedProcess[str]:
    assert SWAKS is not None
    args = [
        SWAKS,
        "--server",
        "127.0.0.1",
        "--port",
        str(port),
        "--from",
        SENDER,
        "--to",
        RECIPIENT,
        "--helo",
        "swaks.test",
        "--body",
        "Hello from swaks.",
        "--timeout",
        "20",
        *options,
    ]
    return subprocess.run(args, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False)


def verified_tls(pem_files: PemFiles) -> list[str]:
    return ["--tls-verify", "--tls-ca-path", str(pem_files.ca_cert)]


@needs_swaks_tls
@pytest.mark.parametrize("mechanism", [None, "PLAIN", "LOGIN", "CRAM-MD5"])
def test_swaks_starttls(
    mechanism: str | None, server_context: ssl.SSLContext, pem_files: PemFiles
) -> None:
    handler, authenticator = Recorder(), Authenticator()
    auth = [] if mechanism is None else ["--auth", mechanism, "--auth-user", USER]
    auth += ["--auth-password", PASSWORD] if mechanism else []
    with tls_server(
        handler, server_context, authenticator=authenticator, auth_required=mechanism is not None
    ) as server:
        result = swaks(server.port, "--tls", *verified_tls(pem_files), *auth)
    assert result.returncode == 0, result.stdout + result.stderr
    check_delivery(handler, authenticated=mechanism is not None)
    assert authenticator.mechanisms == ([mechanism] if mechanism else [])


@needs_swaks_tls
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_swaks_tls_on_connect(
    mechanism: str, server_context: ssl.SSLContext, pem_files: PemFiles
) -> None:
    handler = Recorder()
    with tls_server(handler, server_context, implicit=True, auth_required=True) as server:
        result = swaks(
            server.port,
            "--tls-on-connect",
            *verified_tls(pem_files),
            "--auth",
            mechanism,
            "--auth-user",
            USER,
            "--auth-password",
            PASSWORD,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    check_delivery(handler, authenticated=True)


@needs_swaks_tls
def test_swaks_wrong_password_is_refused(
    server_context: ssl.SSLContext, pem_files: PemFiles
) -> None:
    handler = Recorder()
    with tls_server(handler, server_context, implicit=True, auth_required=True) as server:
        result = swaks(
            server.port,
            "--tls-on-connect",
            "--auth",
            "PLAIN",
            "--auth-user",
            USER,
            "--auth-password",
            "mirror",
        )
    assert result.returncode != 0
    assert "535 5.7.8" in result.stdout
    assert handler.envelopes == []


@needs_swaks
@pytest.mark.parametrize("version", [1, 2])
def test_swaks_proxy_protocol(version: int) -> None:
    handler = Handler()
    with running(handler, proxy_protocol_timeout=10) as server:
        result = swaks(
            server.port,
            "--proxy-version",
            str(version),
            "--proxy-family",
            "TCP4" if version == 1 else "AF_INET",
            "--proxy-source",
            "192.0.2.10",
            "--proxy-source-port",
            "40000",
            "--proxy-dest",
            "198.51.100.1",
            "--proxy-dest-port",
            "25",
        )
    assert result.returncode == 0, result.stdout + result.stderr
    (header,) = handler.headers
    assert header.version == version
    assert header.src_addr == IPv4Address("192.0.2.10") and header.src_port == 40000
    assert header.dst_addr == IPv4Address("198.51.100.1") and header.dst_port == 25
    (session,) = handler.sessions
    assert session.proxy_data is header


@needs_swaks_tls
def test_swaks_lmtp_with_require_starttls(
    server_context: ssl.SSLContext, pem_files: PemFiles
) -> None:
    handler = Recorder()
    with tls_server(handler, server_context, server_class=LMTP, require_starttls=True) as server:
        result = swaks(server.port, "--protocol", "LMTP", "--tls", *verified_tls(pem_files))
    assert result.returncode == 0, result.stdout + result.stderr
    check_delivery(handler, authenticated=False)


# --- openssl s_client -----------------------------------------------------------------------------

S_CLIENT_SCRIPT = (
    f"EHLO openssl.test\nAUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=\nMAIL FROM:<{SENDER}>\n"
    f"RCPT TO:<{RECIPIENT}>\nDATA\nSubject: s_client\n\nHello from openssl.\n.\nQUIT\n"
)


def s_client(port: int, pem_files: PemFiles, *options: str) -> subprocess.CompletedProcess[str]:
    assert OPENSSL is not None
    args = [
        OPENSSL,
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-crlf",
        "-quiet",
        "-CAfile",
        str(pem_files.ca_cert),
        "-verify_return_error",
        "-verify_ip",
        "127.0.0.1",
        *options,
    ]
    return subprocess.run(
        args,
        input=S_CLIENT_SCRIPT,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )


@needs_openssl
@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "smtps"])
def test_openssl_s_client(
    implicit: bool, server_context: ssl.SSLContext, pem_files: PemFiles
) -> None:
    handler = Recorder()
    options = [] if implicit else ["-starttls", "smtp"]
    with tls_server(handler, server_context, implicit=implicit, auth_required=True) as server:
        result = s_client(server.port, pem_files, *options)
    assert result.returncode == 0, result.stderr
    replies = [line[:3] for line in result.stdout.splitlines() if line[3:4] == " "]
    # After the handshake: EHLO, AUTH, MAIL, RCPT, DATA, end of data, QUIT.
    assert replies[-7:] == ["250", "235", "250", "250", "354", "250", "221"]
    check_delivery(handler, authenticated=True)
