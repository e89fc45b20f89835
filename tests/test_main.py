"""Tests of the command line: argument parsing in-process, the running server in a subprocess."""

from __future__ import annotations

import os
import queue
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from typed_smtpd import __version__
from typed_smtpd.main import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    FileAuthenticator,
    build_parser,
    load_auth_file,
    main,
    parse_listen,
)
from typed_smtpd.session import AuthResult, Envelope, LoginPassword, Session

#: Bounds every wait on the subprocess, so that a broken server fails the test instead of hanging.
WAIT: float = 30.0

MESSAGE = b"From: anne@example.com\r\nSubject: Greetings\r\n\r\nHello from the test.\r\n"


# --- parse_listen --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", (DEFAULT_HOST, DEFAULT_PORT)),
        ("127.0.0.1:25", ("127.0.0.1", 25)),
        ("127.0.0.1", ("127.0.0.1", DEFAULT_PORT)),
        ("example.com", ("example.com", DEFAULT_PORT)),
        ("example.com:2525", ("example.com", 2525)),
        (":2525", (DEFAULT_HOST, 2525)),
        ("[::1]:2525", ("::1", 2525)),
        ("[::1]", ("::1", DEFAULT_PORT)),
        ("::1", ("::1", DEFAULT_PORT)),
        ("::", ("::", DEFAULT_PORT)),
        ("fe80::1%eth0", ("fe80::1%eth0", DEFAULT_PORT)),
        ("[2001:db8::25]:0", ("2001:db8::25", 0)),
        ("localhost:65535", ("localhost", 65535)),
        ("localhost:", ("localhost", DEFAULT_PORT)),
    ],
)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "[::1",
        "[::1]2525",
        "[not-v6]:25",
        "a:b:c",
        "localhost:65536",
        "localhost:port",
        "localhost:-1",
        "localhost:\u0662\u0665",  # digits, but not ASCII ones
        "local host:25",
        "127.0.0.1:25:",
    ],
)
def test_parse_listen_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(value)


def test_parse_listen_custom_defaults() -> None:
    assert parse_listen(":25", default_host="::") == ("::", 25)
    assert parse_listen("mx", default_port=25) == ("mx", 25)


# --- the parser ----------------------------------------------------------------------------------


def test_defaults_fix_aiosmtpd_size_and_handler() -> None:
    ns = build_parser().parse_args([])
    assert ns.size == 33_554_432
    assert ns.classpath == "typed_smtpd.handlers.Debugging"
    assert ns.setuid is True
    assert ns.listen is None
    assert ns.classargs == []


def test_classargs_follow_the_options() -> None:
    ns = build_parser().parse_args(["-n", "-c", "pkg.Handler", "a", "b", "-d"])
    assert (ns.classpath, ns.classargs, ns.setuid, ns.debug) == (
        "pkg.Handler",
        ["a", "b"],
        False,
        1,
    )


def test_help_reads_well(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: typed-smtpd ")
    for text in ["examples:", "--listen [HOST][:PORT]", "33,554,432", "--auth-file", "SIGTERM"]:
        assert text in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"typed-smtpd {__version__}\n"


def assert_usage_error(capsys: pytest.CaptureFixture[str], args: list[str], fragment: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert errors[0].startswith("typed-smtpd: error: ")
    assert err.splitlines()[-1] == errors[0]
    assert fragment in errors[0]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["-l", "localhost:port"], "invalid port 'port'"),
        (["-l", "[::1"], "missing ']'"),
        (["-l", "127.0.0.1:25", "--unix-socket", "s"], "not allowed with argument"),
        (["-s", "-5"], "expected a whole number"),
        (["-s", "lots"], "expected a whole number"),
        (["--timeout", "0"], "seconds > 0"),
        (["--timeout", "nan"], "seconds > 0"),
        (["--max-connections", "0"], ">= 1"),
        (["--hostname", "mx\r\nEVIL"], "control characters"),
        (["--smtpscert", "cert.pem"], "--smtpscert and --smtpskey must be given together"),
        (["--tlskey", "key.pem"], "--tlscert and --tlskey must be given together"),
        (["--tlscert", "missing.pem", "--tlskey", "missing.pem"], "cannot load the certificate"),
        (["-c", "NoDots"], "module.Class"),
        (["-c", "no_such_module_here.Handler"], "cannot import"),
        (["-c", "typed_smtpd.handlers.NoSuchHandler"], "has no class"),
        (["--auth-file", "no/such/file"], "--auth-file no/such/file"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    assert_usage_error(capsys, args, fragment)


@pytest.mark.parametrize(
    ("handler_args", "fragment"),
    [
        (["-c", "typed_smtpd.handlers.Sink", "extra"], "the Sink handler takes no arguments"),
        (["-c", "typed_smtpd.handlers.Mailbox"], "exactly one argument"),
        (["-c", "typed_smtpd.handlers.Debugging", "stdin"], "stdout or stderr"),
        (["-c", "typed_smtpd.handlers.Proxy", "relay.test"], "HOST PORT"),
        (["-c", "collections.OrderedDict", "x"], "has no from_cli"),
    ],
)
def test_handler_argument_errors_exit_2(
    capsys: pytest.CaptureFixture[str], handler_args: list[str], fragment: str
) -> None:
    assert_usage_error(capsys, ["-n", "-l", "127.0.0.1:0", *handler_args], fragment)


def test_handler_that_needs_arguments_but_has_no_from_cli(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert_usage_error(
        capsys, ["-n", "-l", "127.0.0.1:0", "-c", "ipaddress.IPv4Address"], "cannot create"
    )


def test_port_in_use_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["-n", "-l", f"127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    assert err == f"typed-smtpd: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"


# --- the password file ---------------------------------------------------------------------------


def test_load_auth_file(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("# users\n\nanne:s3cret\nbart:pass:with:colons\nj\u00f6rg:\u00e9\n", "utf-8")
    assert load_auth_file(path) == {
        b"anne": b"s3cret",
        b"bart": b"pass:with:colons",
        "j\u00f6rg".encode(): "\u00e9".encode(),
    }


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("anne\n", "line 1: expected user:password"),
        ("anne:x\n:nouser\n", "line 2: expected user:password"),
        ("anne:x\nanne:y\n", "line 2: user 'anne' appears twice"),
        ("# nobody\n", "no user:password line"),
    ],
)
def test_load_auth_file_rejects(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "users"
    path.write_text(text, "utf-8")
    with pytest.raises(ValueError, match=fragment):
        load_auth_file(path)


def authenticate(authenticator: FileAuthenticator, auth_data: object) -> AuthResult:
    server: Any = None
    return authenticator(server, Session(), Envelope(), "PLAIN", auth_data)


def test_file_authenticator() -> None:
    authenticator = FileAuthenticator({b"anne": b"s3cret"})
    good = authenticate(authenticator, LoginPassword(b"anne", b"s3cret"))
    assert good.success
    assert good.auth_data == "anne"
    for wrong in [
        LoginPassword(b"anne", b"s3cre"),
        LoginPassword(b"anne", b"s3cret "),
        LoginPassword(b"bart", b"s3cret"),
        LoginPassword(b"", b""),
        b"anne\x00s3cret",
    ]:
        result = authenticate(authenticator, wrong)
        assert (result.success, result.handled) == (False, False)


def test_auth_file_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "users"
    path.write_text("anne:s3cret\n", "utf-8")
    path.chmod(0o644)
    args = ["-n", "-l", "127.0.0.1:0", "--auth-file", str(path), "-c", "typed_smtpd.handlers.Sink"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "stop-here"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert f"typed-smtpd: warning: {path} can be read by other users" in err
    assert (
        "typed-smtpd: warning: AUTH is offered without TLS: passwords will cross the network in "
        "clear" in err
    )


# --- the running server, in a subprocess ---------------------------------------------------------


@dataclass
class Running:
    """A ``typed-smtpd`` subprocess and what it printed."""

    process: subprocess.Popen[bytes]
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    readers: list[threading.Thread] = field(default_factory=list)
    banner: str = ""

    @property
    def port(self) -> int:
        return int(self.banner.split(" listening on ", 1)[1].split(" ", 1)[0].rsplit(":", 1)[1])

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        code = self.process.wait(WAIT)
        for reader in self.readers:
            reader.join(WAIT)
        return code

    @property
    def out(self) -> str:
        return "".join(self.stdout)

    @property
    def err(self) -> str:
        return "".join(self.stderr)


def _pump(stream: Any, sink: list[str], lines: queue.Queue[str] | None) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace")
        sink.append(line)
        if lines is not None:
            lines.put(line)
    stream.close()


@contextmanager
def typed_smtpd(*args: str) -> Iterator[Running]:
    """Start ``python -m typed_smtpd ARGS`` and wait for its "listening on" line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "typed_smtpd", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    running = Running(process)
    err_lines: queue.Queue[str] = queue.Queue()
    for stream, sink, lines in [
        (process.stdout, running.stdout, None),
        (process.stderr, running.stderr, err_lines),
    ]:
        reader = threading.Thread(target=_pump, args=(stream, sink, lines), daemon=True)
        reader.start()
        running.readers.append(reader)
    try:
        while not running.banner:
            try:
                line = err_lines.get(timeout=WAIT)
            except queue.Empty:
                pytest.fail(f"typed-smtpd did not start: {running.err}")
            if " listening on " in line:
                running.banner = line
            elif process.poll() is not None:
                pytest.fail(f"typed-smtpd exited with {process.returncode}: {running.err}")
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(WAIT)


def connection_refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_debugging_end_to_end_and_clean_stop(signum: int) -> None:
    with typed_smtpd("-n", "-l", "127.0.0.1:0") as server:
        assert server.banner == (
            f"typed-smtpd {__version__} listening on 127.0.0.1:{server.port} "
            "(handler typed_smtpd.handlers.Debugging)\n"
        )
        with smtplib.SMTP("127.0.0.1", server.port, timeout=WAIT) as client:
            assert client.sendmail("anne@example.com", ["bart@example.com"], MESSAGE) == {}
            assert client.has_extn("size")
            assert client.esmtp_features["size"] == "33554432"
        assert server.stop(signum) == 0
    out = server.out
    assert "MAIL FROM: anne@example.com\n" in out
    assert "RCPT TO: bart@example.com\n" in out
    assert "Subject: Greetings\nX-Peer: 127.0.0.1\n\nHello from the test.\n" in out
    assert "Traceback" not in server.err
    assert connection_refused(server.port)


@pytest.mark.integration
def test_stop_with_a_client_still_connected() -> None:
    with (
        typed_smtpd("-n", "-l", "127.0.0.1:0", "-c", "typed_smtpd.handlers.Sink") as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as client,
    ):
        reader = client.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        assert server.stop() == 0
        assert reader.readline().startswith(b"421 ")
        reader.close()
    assert connection_refused(server.port)


@pytest.mark.integration
def test_mailbox_size_and_smtputf8(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    args = ["-n", "-l", "127.0.0.1:0", "-s", "1000", "-u", "-c", "typed_smtpd.handlers.Mailbox"]
    with typed_smtpd(*args, str(maildir)) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=WAIT) as client:
            client.ehlo()
            assert client.esmtp_features["size"] == "1000"
            assert client.has_extn("smtputf8")
            client.sendmail("anne@example.com", ["bart@example.com"], MESSAGE)
            with pytest.raises(smtplib.SMTPSenderRefused) as refused:
                client.sendmail("anne@example.com", ["bart@example.com"], b"x" * 2000)
            assert refused.value.smtp_code == 552
        assert server.stop() == 0
    stored = list((maildir / "new").iterdir())
    assert len(stored) == 1
    assert b"Hello from the test." in stored[0].read_bytes()


@pytest.mark.integration
def test_size_zero_means_unlimited() -> None:
    with typed_smtpd(
        "-n", "-l", "127.0.0.1:0", "-s", "0", "-c", "typed_smtpd.handlers.Sink"
    ) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=WAIT) as client:
            client.ehlo()
            assert client.esmtp_features.get("size", "") in ("", "0")
            big = MESSAGE + b"x" * 998 + b"\r\n" * 100_000
            assert client.sendmail("anne@example.com", ["bart@example.com"], big) == {}
        assert server.stop() == 0


@pytest.mark.integration
def test_lmtp_on_a_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "lmtp.sock")
    args = ["-n", "--lmtp", "--unix-socket", path, "-c", "typed_smtpd.handlers.Debugging"]
    with typed_smtpd(*args) as server:
        assert f"listening on unix:{path} (LMTP, handler" in server.banner
        client = smtplib.LMTP(path, timeout=WAIT)
        try:
            assert client.sendmail("anne@example.com", ["bart@example.com"], MESSAGE) == {}
        finally:
            client.quit()
        assert server.stop() == 0
    assert "RCPT TO: bart@example.com" in server.out
    assert not os.path.exists(path)


@pytest.mark.integration
def test_auth_file_requires_auth(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("anne:s3cret\n", "utf-8")
    users.chmod(0o600)
    args = ["-n", "-l", "127.0.0.1:0", "--auth-file", str(users), "-c", "typed_smtpd.handlers.Sink"]
    with typed_smtpd(*args) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=WAIT) as client:
            client.ehlo()
            assert "PLAIN" in client.esmtp_features["auth"].split()
            assert "CRAM-MD5" not in client.esmtp_features["auth"].split()
            with pytest.raises(smtplib.SMTPSenderRefused) as refused:
                client.sendmail("anne@example.com", ["bart@example.com"], MESSAGE)
            assert refused.value.smtp_code == 530
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login("anne", "wrong")
            client.login("anne", "s3cret")
            assert client.sendmail("anne@example.com", ["bart@example.com"], MESSAGE) == {}
        assert server.stop() == 0
    assert "passwords will cross the network in clear" in server.err


@pytest.mark.integration
def test_max_connections() -> None:
    args = ["-n", "-l", "127.0.0.1:0", "--max-connections", "1", "-c", "typed_smtpd.handlers.Sink"]
    with typed_smtpd(*args) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as first:
            assert first.makefile("rb").readline().startswith(b"220 ")
            with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as second:
                assert second.makefile("rb").readline().startswith(b"421 ")
        assert server.stop() == 0


@pytest.mark.integration
def test_hostname_and_ident_in_the_greeting() -> None:
    args = ["-n", "-l", "127.0.0.1:0", "--hostname", "mx.example.com", "--ident", "Hello there"]
    with typed_smtpd(*args) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as client:
            assert client.makefile("rb").readline() == b"220 mx.example.com Hello there\r\n"
        assert server.stop() == 0


def nobody_can_run_python() -> bool:
    """Whether this Python still imports modules as "nobody" (not if it lives in ~root)."""
    import pwd

    try:
        probe = subprocess.run(
            [sys.executable, "-c", "import concurrent.futures.thread, typed_smtpd.smtp"],
            user="nobody",
            group=pwd.getpwnam("nobody").pw_gid,
            extra_groups=[],
            capture_output=True,
            timeout=WAIT,
            check=False,
        )
    except (KeyError, OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


@pytest.mark.integration
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_root_switches_to_nobody() -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    with typed_smtpd("-l", "127.0.0.1:0") as server:
        status = Path(f"/proc/{server.process.pid}/status").read_text().splitlines()
        uids = next(line for line in status if line.startswith("Uid:")).split()[1:]
        gids = next(line for line in status if line.startswith("Gid:")).split()[1:]
        groups = next(line for line in status if line.startswith("Groups:")).split()[1:]
        assert set(uids) == {str(nobody.pw_uid)}
        assert set(gids) == {str(nobody.pw_gid)}
        assert groups == []
        if nobody_can_run_python():  # else modules imported lazily cannot be read any more
            with smtplib.SMTP("127.0.0.1", server.port, timeout=WAIT) as client:
                assert client.sendmail("anne@example.com", ["bart@example.com"], MESSAGE) == {}
        assert server.stop() == 0
    if nobody_can_run_python():
        assert "Hello from the test." in server.out


@dataclass
class Certificates:
    cert: str
    key: str
    client: ssl.SSLContext


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    cert.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return Certificates(str(cert), str(key), client)


@pytest.mark.integration
@pytest.mark.parametrize("requiretls", [True, False])
def test_starttls(certificates: Certificates, requiretls: bool) -> None:
    args = ["-n", "-l", "127.0.0.1:0", "--tlscert", certificates.cert]
    args += ["--tlskey", certificates.key, "-c", "typed_smtpd.handlers.Sink"]
    if not requiretls:
        args.append("--no-requiretls")
    with typed_smtpd(*args) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=WAIT) as client:
            client.ehlo()
            assert client.has_extn("starttls")
            if requiretls:
                with pytest.raises(smtplib.SMTPSenderRefused) as refused:
                    client.sendmail("anne@example.com", ["bart@example.com"], MESSAGE)
                assert refused.value.smtp_code == 530
            else:
                assert client.sendmail("anne@example.com", ["bart@example.com"], MESSAGE) == {}
        with smtplib.SMTP("127.0.0.1", server.port, timeout=WAIT) as client:
            client.starttls(context=certificates.client)
            assert client.sendmail("anne@example.com", ["bart@example.com"], MESSAGE) == {}
        assert server.stop() == 0


@pytest.mark.integration
def test_implicit_tls_with_auth(certificates: Certificates, tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("anne:s3cret\n", "utf-8")
    users.chmod(0o600)
    args = ["-n", "-l", "127.0.0.1:0", "--smtpscert", certificates.cert, "--smtpskey"]
    args += [certificates.key, "--auth-file", str(users), "-c", "typed_smtpd.handlers.Debugging"]
    with typed_smtpd(*args) as server:
        assert "(implicit TLS, handler typed_smtpd.handlers.Debugging)" in server.banner
        with smtplib.SMTP_SSL(
            "127.0.0.1", server.port, timeout=WAIT, context=certificates.client
        ) as client:
            client.login("anne", "s3cret")
            assert client.sendmail("anne@example.com", ["bart@example.com"], MESSAGE) == {}
        assert server.stop() == 0
    assert "warning" not in server.err
    assert "Hello from the test." in server.out


def test_implicit_tls_and_starttls_exclude_each_other(
    certificates: Certificates, capsys: pytest.CaptureFixture[str]
) -> None:
    pair = [certificates.cert, certificates.key]
    args = [
        "--smtpscert",
        pair[0],
        "--smtpskey",
        pair[1],
        "--tlscert",
        pair[0],
        "--tlskey",
        pair[1],
    ]
    assert_usage_error(capsys, args, "not both")
