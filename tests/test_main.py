"""Tests of the command line: argument parsing in-process, the running server in a subprocess."""

from __future__ import annotations

import os
import queue
import re
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import socket_dir as short_socket_dir
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
    for text in [
        "examples:",
        "--listen [HOST][:PORT]",
        "33,554,432",
        "--auth-file",
        "SIGTERM",
        "--uvloop",
        "pip install 'typed-smtpd[speed]'",
        "--workers N",
        "SO_REUSEPORT",
        "uvloop and worker processes:",
        "if a worker dies, it stops the others and exits with status 1",
    ]:
        assert text in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"typed-smtpd {__version__}\n"


def assert_usage_error(capsys: pytest.CaptureFixture[str], args: list[str], fragment: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["-n", *args])  # -n: an argument that parsed after all must not give up root
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert errors[0].startswith("typed-smtpd: error: ")
    assert errors[0].endswith(" (see typed-smtpd --help)")
    assert err.splitlines()[-1] == errors[0]
    assert "usage:" not in err
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
        (["--max-connections", "-1"], "expected a whole number >= 0 (0: no limit)"),
        (["--max-connections", "many"], "expected a whole number >= 0 (0: no limit)"),
        (["--data-timeout", "0"], "seconds > 0"),
        (["--data-timeout", "soon"], "seconds > 0"),
        (["--socket-mode", "0660"], "--socket-mode and --socket-group need --unix-socket"),
        (["--unix-socket", "s", "--socket-mode", "rw"], "permission bits in octal"),
        (["--unix-socket", "s", "--socket-mode", "17777"], "permission bits in octal"),
        (["--unix-socket", "s", "--socket-group", "no-such-group-here"], "no group named"),
        (["--hostname", "mx\r\nEVIL"], "control characters"),
        (["--smtpscert", "cert.pem"], "--smtpscert and --smtpskey must be given together"),
        (["--tlskey", "key.pem"], "--tlscert and --tlskey must be given together"),
        (["--tlscert", "missing.pem", "--tlskey", "key.pem"], "--tlscert missing.pem: No such"),
        (["--smtpscert", "missing.pem", "--smtpskey", "k"], "--smtpscert missing.pem: No such"),
        (["-c", "NoDots"], "module.Class"),
        (["-c", "no_such_module_here.Handler"], "cannot import"),
        (["-c", "typed_smtpd.handlers.NoSuchHandler"], "has no class"),
        (["--auth-file", "no/such/file"], "--auth-file no/such/file"),
        (["--workers", "0"], "expected a whole number from 1 to 256, not '0'"),
        (["--workers", "two"], "expected a whole number from 1 to 256, not 'two'"),
        (["--workers", "257"], "expected a whole number from 1 to 256, not '257'"),
        (["--workers", "-1"], "expected a whole number from 1 to 256, not '-1'"),
        (["--workers", "2", "--unix-socket", "s"], "--workers needs a TCP address"),
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


def environment(pythonpath: Path | None) -> dict[str, str]:
    """This process's environment, with ``pythonpath`` first on the module search path."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return env


@contextmanager
def typed_smtpd(*args: str, pythonpath: Path | None = None) -> Iterator[Running]:
    """Start ``python -m typed_smtpd ARGS`` and wait for its "listening on" line.

    ``pythonpath`` is a directory of extra modules, such as test handlers, for ``-c``.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "typed_smtpd", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment(pythonpath),
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


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A fresh directory short enough for a Unix socket's path."""
    with short_socket_dir() as directory:
        yield directory


@pytest.mark.integration
def test_unix_socket_mode_and_group(socket_dir: Path) -> None:
    path = socket_dir / "lmtp.sock"
    gid = os.getgid()
    args = ["-n", "--lmtp", "--unix-socket", str(path), "--socket-mode", "0660"]
    args += ["--socket-group", str(gid), "-c", "typed_smtpd.handlers.Sink"]
    with typed_smtpd(*args) as server:
        info = path.stat()
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o660
        assert info.st_gid == gid
        assert server.stop() == 0
    assert not path.exists()
    assert "Traceback" not in server.err


@pytest.mark.integration
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_root_unix_socket_for_another_group(socket_dir: Path) -> None:
    """Started as root, the socket file gets its group before the switch to "nobody"."""
    import grp

    group = next((g for g in grp.getgrall() if g.gr_gid not in (0, os.getgid())), None)
    if group is None:
        pytest.skip("no group other than root's")
    socket_dir.chmod(0o755)
    path = socket_dir / "lmtp.sock"
    args = ["--lmtp", "--unix-socket", str(path), "--socket-mode", "0660"]
    args += ["--socket-group", group.gr_name, "-c", "typed_smtpd.handlers.Sink"]
    with typed_smtpd(*args) as server:
        info = path.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o660, group.gr_gid)
        assert server.stop() == 0
    # "nobody" may not write to the directory: the file stays, and the log says so.
    assert path.exists()
    assert f"cannot remove the socket file {path}: Permission denied" in server.err


def test_defaults_of_the_connection_cap_and_the_data_timeout() -> None:
    from typed_smtpd.controller import DEFAULT_MAX_CONNECTIONS
    from typed_smtpd.main import _configure
    from typed_smtpd.proto.limits import DATA_TIMEOUT

    parser = build_parser()
    config = _configure(parser, parser.parse_args(["-n"]))
    assert config.max_connections == DEFAULT_MAX_CONNECTIONS == 1000
    assert config.smtp.data_timeout == DATA_TIMEOUT
    args = ["-n", "--max-connections", "0", "--data-timeout", "2.5"]
    config = _configure(parser, parser.parse_args(args))
    assert config.max_connections is None
    assert config.smtp.data_timeout == 2.5


def test_the_host_name_is_looked_up_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not at the first connection, which may come after the switch to "nobody"."""
    from typed_smtpd.main import _configure

    monkeypatch.setattr(socket, "getfqdn", lambda name="": "mx.resolved.test")
    parser = build_parser()
    assert _configure(parser, parser.parse_args(["-n"])).smtp.hostname == "mx.resolved.test"
    given = parser.parse_args(["-n", "--hostname", "mx.given.test"])
    assert _configure(parser, given).smtp.hostname == "mx.given.test"


@pytest.mark.integration
def test_data_timeout() -> None:
    args = ["-n", "-l", "127.0.0.1:0", "--data-timeout", "0.5", "-c", "typed_smtpd.handlers.Sink"]
    with typed_smtpd(*args) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as client:
            reader = client.makefile("rb")
            assert reader.readline().startswith(b"220 ")
            client.sendall(b"HELO c.test\r\nMAIL FROM:<a@example.com>\r\n")
            client.sendall(b"RCPT TO:<b@example.com>\r\nDATA\r\n")
            assert [reader.readline()[:3] for _ in range(4)] == [b"250", b"250", b"250", b"354"]
            # Steady progress does not help: the deadline bounds the whole message.
            with suppress(OSError):  # the server closes the connection at the deadline
                for _ in range(20):
                    client.sendall(b"x\r\n")
                    time.sleep(0.1)
            assert reader.readline().startswith(b"421 ")
            reader.close()
        assert server.stop() == 0


@pytest.mark.integration
def test_lmtp_on_a_unix_socket(socket_dir: Path) -> None:
    path = str(socket_dir / "lmtp.sock")
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
    # Said once, by the command line: not again as a UserWarning from each connection.
    assert server.err.count("in clear") == 1, server.err
    assert "UserWarning" not in server.err


@pytest.mark.integration
def test_max_connections_zero_lifts_the_cap() -> None:
    args = ["-n", "-l", "127.0.0.1:0", "--max-connections", "0", "-c", "typed_smtpd.handlers.Sink"]
    with typed_smtpd(*args) as server:
        clients = [socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)]
        try:
            clients += [
                socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) for _ in range(4)
            ]
            readers = [client.makefile("rb") for client in clients]
            assert all(reader.readline().startswith(b"220 ") for reader in readers)
            for reader in readers:
                reader.close()
        finally:
            for client in clients:
                client.close()
        assert server.stop() == 0


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


# --- every remaining flag, end to end ------------------------------------------------------------

#: A handler that says in its reply to DATA which process took the message, whether the content
#: came as bytes or str, and the client address a PROXY header gave.
PROBE_HANDLER = """\
import os


class Probe:
    async def handle_DATA(self, server, session, envelope):
        proxy = session.proxy_data.src_addr if session.proxy_data is not None else "none"
        kind = type(envelope.content).__name__
        return f"250 OK pid={os.getpid()} content={kind} proxy={proxy}"
"""


@pytest.fixture
def probe_path(tmp_path: Path) -> Path:
    """A directory holding the module ``probe``, whose handler is ``probe.Probe``."""
    directory = tmp_path / "modules"
    directory.mkdir()
    (directory / "probe.py").write_text(PROBE_HANDLER, "utf-8")
    return directory


def probe_reply(client: smtplib.SMTP, content: bytes = MESSAGE) -> dict[str, str]:
    """Send one message and return the fields of the Probe handler's reply to DATA."""
    client.ehlo_or_helo_if_needed()
    assert client.mail("anne@example.com")[0] == 250
    assert client.rcpt("bart@example.com")[0] == 250
    code, text = client.data(content)
    assert code == 250, text
    words = text.decode("ascii").split()
    assert words[0] == "OK"
    return dict(word.split("=", 1) for word in words[1:])


def test_version_in_a_subprocess() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "typed_smtpd", "-v"], capture_output=True, timeout=WAIT, check=False
    )
    assert (result.returncode, result.stdout) == (0, f"typed-smtpd {__version__}\n".encode())


def test_usage_error_in_a_subprocess() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "typed_smtpd", "-l", "[::1"],
        capture_output=True,
        timeout=WAIT,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.decode() == (
        "typed-smtpd: error: argument -l/--listen: missing ']' in '[::1' (see typed-smtpd --help)\n"
    )


@pytest.mark.integration
@pytest.mark.parametrize(
    ("flag", "expected", "absent"),
    [
        ("", "INFO mail.log: shutting down", " DEBUG "),
        ("-d", "DEBUG mail.log: ", " is serving"),
        ("-dd", " is serving", None),  # asyncio's debug mode reports the server
    ],
)
def test_debug_levels(flag: str, expected: str, absent: str | None) -> None:
    args = ["-n", "-l", "127.0.0.1:0", *filter(None, [flag]), "-c", "typed_smtpd.handlers.Sink"]
    with typed_smtpd(*args) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=WAIT) as client:
            assert client.noop()[0] == 250
        assert server.stop() == 0
    assert expected in server.err
    if absent is not None:
        assert absent not in server.err


@pytest.mark.integration
def test_without_debug_only_the_events_are_logged() -> None:
    with typed_smtpd("-n", "-l", "127.0.0.1:0", "-c", "typed_smtpd.handlers.Sink") as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=WAIT) as client:
            assert client.noop()[0] == 250
        assert server.stop() == 0
    lines = server.err.splitlines()
    assert lines[0] == server.banner.rstrip("\n")
    events = [re.search(r" INFO mail\.log: [0-9A-F]{10} ([a-z-]+) ", line) for line in lines[1:3]]
    assert [match and match.group(1) for match in events] == ["connect", "disconnect"]
    assert lines[3:] == [lines[3]] and lines[3].endswith("INFO mail.log: shutting down")


@pytest.mark.integration
def test_timeout_disconnects_a_silent_client() -> None:
    args = ["-n", "-l", "127.0.0.1:0", "--timeout", "0.5", "-c", "typed_smtpd.handlers.Sink"]
    with (
        typed_smtpd(*args) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as client,
    ):
        reader = client.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        assert reader.readline() == b"421 Error: timeout exceeded\r\n"  # no EHLO: no enhanced code
        assert reader.readline() == b""
        reader.close()
        assert server.stop() == 0


@pytest.mark.integration
@pytest.mark.parametrize(("flags", "kind"), [([], "bytes"), (["--decode-data"], "str")])
def test_decode_data(probe_path: Path, flags: list[str], kind: str) -> None:
    args = ["-n", "-l", "127.0.0.1:0", *flags, "-c", "probe.Probe"]
    with typed_smtpd(*args, pythonpath=probe_path) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=WAIT) as client:
            assert probe_reply(client)["content"] == kind
            client.rset()
            # Not ASCII, and no SMTPUTF8 (-u): text cannot be made of it, bytes can.
            client.mail("anne@example.com")
            client.rcpt("bart@example.com")
            code, _ = client.data(MESSAGE + "caf\u00e9\r\n".encode())
            assert code == (500 if kind == "str" else 250)
        assert server.stop() == 0


@pytest.mark.integration
def test_proxy_protocol(probe_path: Path) -> None:
    args = ["-n", "-l", "127.0.0.1:0", "--proxy-protocol", "5", "-c", "probe.Probe"]
    with typed_smtpd(*args, pythonpath=probe_path) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as raw:
            raw.sendall(b"PROXY TCP4 192.0.2.1 192.0.2.25 40000 25\r\n")
            reader = raw.makefile("rb")
            assert reader.readline().startswith(b"220 ")
            raw.sendall(
                b"HELO client.test\r\nMAIL FROM:<anne@example.com>\r\n"
                b"RCPT TO:<bart@example.com>\r\nDATA\r\n" + MESSAGE + b".\r\nQUIT\r\n"
            )
            replies = [reader.readline() for _ in range(6)]
            reader.close()
        assert [reply[:4] for reply in replies] == [
            b"250 ",
            b"250 ",
            b"250 ",
            b"354 ",
            b"250 ",
            b"221 ",
        ]
        assert b" proxy=192.0.2.1\r\n" in replies[4]
        # Without a PROXY header first, the client is never greeted.
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as raw:
            raw.sendall(b"EHLO client.test\r\n")
            reader = raw.makefile("rb")
            assert reader.readline() == b""
            reader.close()
        assert server.stop() == 0


def ipv6_localhost() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.integration
@pytest.mark.skipif(not ipv6_localhost(), reason="no IPv6 on this machine")
def test_listen_on_ipv6_in_brackets() -> None:
    with typed_smtpd("-n", "-l", "[::1]:0", "-c", "typed_smtpd.handlers.Sink") as server:
        assert " listening on [::1]:" in server.banner
        with smtplib.SMTP("::1", server.port, timeout=WAIT) as client:
            assert client.sendmail("anne@example.com", ["bart@example.com"], MESSAGE) == {}
        assert server.stop() == 0


@pytest.mark.integration
def test_debugging_to_stderr() -> None:
    args = ["-n", "-l", "127.0.0.1:0", "-c", "typed_smtpd.handlers.Debugging", "stderr"]
    with typed_smtpd(*args) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=WAIT) as client:
            assert client.sendmail("anne@example.com", ["bart@example.com"], MESSAGE) == {}
        assert server.stop() == 0
    assert "Hello from the test." in server.err
    assert server.out == ""


@pytest.mark.integration
def test_proxy_handler_relays_to_a_second_server() -> None:
    with typed_smtpd("-n", "-l", "127.0.0.1:0") as relay:
        args = ["-n", "-l", "127.0.0.1:0", "-c", "typed_smtpd.handlers.Proxy"]
        with typed_smtpd(*args, "127.0.0.1", str(relay.port)) as front:
            with smtplib.SMTP("127.0.0.1", front.port, timeout=WAIT) as client:
                assert client.sendmail("anne@example.com", ["bart@example.com"], MESSAGE) == {}
            assert front.stop() == 0
        assert relay.stop() == 0
    assert "RCPT TO: bart@example.com\n" in relay.out
    assert "Hello from the test." in relay.out


# --- --uvloop ------------------------------------------------------------------------------------


def test_uvloop_missing_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # makes "import uvloop" fail
    assert_usage_error(capsys, ["--uvloop"], "--uvloop needs uvloop, which is not installed")


@pytest.mark.integration
@pytest.mark.parametrize("workers", ["1", "2"])
def test_uvloop(workers: str) -> None:
    pytest.importorskip("uvloop")
    args = ["-n", "-l", "127.0.0.1:0", "--uvloop", "--workers", workers]
    with typed_smtpd(*args, "-c", "typed_smtpd.handlers.Debugging") as server:
        assert "uvloop, handler typed_smtpd.handlers.Debugging)" in server.banner
        with smtplib.SMTP("127.0.0.1", server.port, timeout=WAIT) as client:
            assert client.sendmail("anne@example.com", ["bart@example.com"], MESSAGE) == {}
        assert server.stop() == 0
    assert "Hello from the test." in server.out


@pytest.mark.integration
def test_asyncio_loop_by_default() -> None:
    with typed_smtpd("-n", "-l", "127.0.0.1:0", "-c", "typed_smtpd.handlers.Sink") as server:
        assert "uvloop" not in server.banner
        assert server.stop() == 0


# --- --workers -----------------------------------------------------------------------------------

needs_workers = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="--workers is Linux only"
)


def worker_pids(server: Running) -> list[int]:
    """The worker process ids the banner names."""
    match = re.search(r"\((\d+) workers, pids ([\d, ]+);", server.banner)
    assert match, server.banner
    pids = [int(pid) for pid in match.group(2).split(", ")]
    assert len(pids) == int(match.group(1))
    return pids


def process_state(pid: int) -> str | None:
    """The state letter of process ``pid`` (``"Z"`` for a zombie), or None if it is gone."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat_line.rpartition(")")[2].split()[0]


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def wait_until_gone(pid: int) -> bool:
    """Whether ``pid`` ends (or is left a zombie) within the bounded wait."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if process_state(pid) in (None, "Z"):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.integration
@needs_workers
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_workers_share_the_port_and_stop_together(probe_path: Path, signum: int) -> None:
    args = ["-n", "-l", "127.0.0.1:0", "--workers", "2", "-c", "probe.Probe"]
    with typed_smtpd(*args, pythonpath=probe_path) as server:
        pids = worker_pids(server)
        assert len(set(pids)) == 2
        assert all(parent_of(pid) == server.process.pid for pid in pids)
        served: dict[int, int] = {}
        # The kernel picks a worker for each connection: keep connecting, a bounded number of
        # times, until both have taken messages (each connection sends several).
        for _ in range(200):
            with smtplib.SMTP("127.0.0.1", server.port, timeout=WAIT) as client:
                for _ in range(3):
                    pid = int(probe_reply(client)["pid"])
                    served[pid] = served.get(pid, 0) + 1
            if len(served) == 2:
                break
        assert set(served) == set(pids)
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as idle:
            assert idle.makefile("rb").readline().startswith(b"220 ")
            assert server.stop(signum) == 0
    assert all(process_state(pid) is None for pid in pids)
    assert "error" not in server.err
    assert connection_refused(server.port)


@pytest.mark.integration
@needs_workers
def test_a_dead_worker_is_reported_and_stops_the_others() -> None:
    args = ["-n", "-l", "127.0.0.1:0", "--workers", "3", "-c", "typed_smtpd.handlers.Sink"]
    with typed_smtpd(*args) as server:
        first, *others = worker_pids(server)
        os.kill(first, signal.SIGKILL)
        assert server.process.wait(WAIT) == 1
        server.stop()
    assert f"typed-smtpd: error: worker 1 (pid {first}) was killed by SIGKILL\n" in server.err
    assert "typed-smtpd: stopping the other workers\n" in server.err
    assert all(process_state(pid) is None for pid in others)


@pytest.mark.integration
@needs_workers
def test_workers_end_when_the_supervisor_is_killed() -> None:
    args = ["-n", "-l", "127.0.0.1:0", "--workers", "2", "-c", "typed_smtpd.handlers.Sink"]
    with typed_smtpd(*args) as server:
        pids = worker_pids(server)
        server.process.kill()
        server.process.wait(WAIT)
        try:
            assert all(wait_until_gone(pid) for pid in pids)
        finally:
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def ids_of(pid: int) -> tuple[set[str], set[str], list[str]]:
    """The real, effective, saved and file user ids, the same group ids, and the extra groups."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    uids = next(line for line in status if line.startswith("Uid:")).split()[1:]
    gids = next(line for line in status if line.startswith("Gid:")).split()[1:]
    groups = next(line for line in status if line.startswith("Groups:")).split()[1:]
    return set(uids), set(gids), groups


@pytest.mark.integration
@needs_workers
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_root_workers_and_supervisor_switch_to_nobody() -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    expected: tuple[set[str], set[str], list[str]] = (
        {str(nobody.pw_uid)},
        {str(nobody.pw_gid)},
        [],
    )
    with typed_smtpd(
        "-l", "127.0.0.1:0", "--workers", "2", "-c", "typed_smtpd.handlers.Sink"
    ) as server:
        pids = worker_pids(server)
        deadline = time.monotonic() + WAIT  # the supervisor switches right after the banner
        while ids_of(server.process.pid) != expected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ids_of(server.process.pid) == expected
        assert all(ids_of(pid) == expected for pid in pids)
        # A worker that gave up root still ends with its supervisor.
        server.process.kill()
        server.process.wait(WAIT)
        try:
            assert all(wait_until_gone(pid) for pid in pids)
        finally:
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.mark.integration
@needs_workers
def test_workers_handler_error_is_reported_once() -> None:
    args = ["-n", "-l", "127.0.0.1:0", "--workers", "4", "-c", "typed_smtpd.handlers.Mailbox"]
    result = subprocess.run(
        [sys.executable, "-m", "typed_smtpd", *args],
        capture_output=True,
        timeout=WAIT,
        check=False,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.decode().splitlines() if "error" in line]
    assert errors == [
        "typed-smtpd: error: the Mailbox handler takes exactly one argument: the Maildir path "
        "(see typed-smtpd --help)"
    ]


@pytest.mark.integration
@needs_workers
def test_workers_port_in_use_exits_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "typed_smtpd",
                "-n",
                "-l",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
            ],
            capture_output=True,
            timeout=WAIT,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"typed-smtpd: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )


def test_fault_injector_from_the_command_line() -> None:
    """Server-class stages (greeting, connect ...) apply under the CLI too."""
    args = [
        "-n",
        "-l",
        "127.0.0.1:0",
        "-c",
        "typed_smtpd.testing.FaultInjector",
        "greeting/1=554 5.3.2 Not now",
        "rcpt~*@blocked.test=550 5.1.1 No such user",
    ]
    with typed_smtpd(*args) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as first:
            assert first.makefile("rb").readline() == b"554 5.3.2 Not now\r\n"
        with smtplib.SMTP("127.0.0.1", server.port, timeout=WAIT) as client:
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                client.sendmail("a@example.test", ["x@blocked.test"], b"x\r\n")
            assert refused.value.recipients == {"x@blocked.test": (550, b"5.1.1 No such user")}
        assert server.stop() == 0


@pytest.mark.integration
def test_the_default_level_shows_the_event_lines_and_d_the_dialog() -> None:
    pytest.importorskip("prometheus_client")
    with typed_smtpd(
        "-n", "-l", "127.0.0.1:0", "-c", "typed_smtpd.handlers.Sink", "--metrics", "127.0.0.1:0"
    ) as server:
        metrics = re.search(r"metrics at http://(127\.0\.0\.1:\d+)/metrics", server.banner)
        assert metrics is not None, server.banner
        with smtplib.SMTP("127.0.0.1", server.port, timeout=WAIT) as client:
            client.sendmail("anne@example.com", ["bart@example.com", "cate@example.com"], MESSAGE)
            assert client.docmd("FROB")[0] == 500
        url = f"http://{metrics.group(1)}/metrics"
        with urllib.request.urlopen(url, timeout=WAIT) as response:
            text = response.read().decode()
        assert "typed_smtpd_messages_accepted_total 1.0" in text
        assert "typed_smtpd_recipients_total 2.0" in text
        assert "typed_smtpd_commands_refused_total 1.0" in text
        assert server.stop() == 0
    events = re.findall(r" INFO mail\.log: [0-9A-F]{10} ([a-z-]+) ", server.err)
    assert events == ["connect", "accepted", "reject", "disconnect"]
    assert " >> " not in server.err  # commands only with -d
    with typed_smtpd("-n", "-d", "-l", "127.0.0.1:0", "-c", "typed_smtpd.handlers.Sink") as chatty:
        with smtplib.SMTP("127.0.0.1", chatty.port, timeout=WAIT) as client:
            client.noop()
        assert chatty.stop() == 0
    assert re.search(r"DEBUG mail\.log: [0-9A-F]{10} >> noop", chatty.err)
    assert re.search(r"DEBUG mail\.log: [0-9A-F]{10} << 250 OK", chatty.err)


def test_metrics_needs_a_port(capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error(capsys, ["--metrics", "127.0.0.1"], "give the port too: HOST:PORT")
