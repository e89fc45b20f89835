"""Mistakes on the command line: each ends in one line on standard error and a clear exit status.

Usage errors (a wrong flag or value, an unreadable file named by a flag) exit with status 2; a
server that cannot start (a handler that cannot be built, an address that does not resolve) exits
with status 1. No traceback is printed unless ``-ddd`` asks for one. Everything here runs the
command line in this process, on port 0 and with ``-n``, so nothing binds a fixed port and nothing
gives up root.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from typed_smtpd.main import main

#: A handler module for ``-c``: a class whose constructor fails, and one with a broken hook.
HANDLERS = """\
class Exploding:
    def __init__(self):
        raise RuntimeError("the spool is not mounted")


class SyncData:
    def handle_DATA(self, server, session, envelope):
        return "250 OK"
"""


@pytest.fixture
def handlers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The name of an importable module holding :data:`HANDLERS`."""
    (tmp_path / "cli_error_handlers.py").write_text(HANDLERS, "utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "cli_error_handlers"


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The only line on standard error, which must be an error line without a traceback."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("typed-smtpd: error: ")
    assert "Traceback" not in err
    return lines[0]


def start_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run the command line, which must fail to start (status 1); its one error line."""
    assert main(["-n", "-l", "127.0.0.1:0", *args]) == 1
    return one_error_line(capsys)


def usage_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run the command line, which must stop at a usage error (status 2); its one error line."""
    with pytest.raises(SystemExit) as exit_info:
        main(["-n", *args])
    assert exit_info.value.code == 2
    line = one_error_line(capsys)
    assert line.endswith(" (see typed-smtpd --help)")
    return line


# --- the handler -------------------------------------------------------------------------------


def test_mailbox_on_an_unusable_path(capsys: pytest.CaptureFixture[str]) -> None:
    line = start_error(capsys, "-c", "typed_smtpd.handlers.Mailbox", "/proc/nope/Maildir")
    assert line == (
        "typed-smtpd: error: cannot create the handler typed_smtpd.handlers.Mailbox: "
        "/proc/nope/Maildir: No such file or directory"
    )


def test_handler_constructor_that_raises(capsys: pytest.CaptureFixture[str], handlers: str) -> None:
    line = start_error(capsys, "-c", f"{handlers}.Exploding")
    assert line == (
        f"typed-smtpd: error: cannot create the handler {handlers}.Exploding: "
        "the spool is not mounted (RuntimeError)"
    )


def test_handler_with_a_broken_hook_fails_at_start(
    capsys: pytest.CaptureFixture[str], handlers: str
) -> None:
    line = start_error(capsys, "-c", f"{handlers}.SyncData")
    assert line.startswith(
        f"typed-smtpd: error: cannot serve with the handler {handlers}.SyncData: "
    )
    assert "handle_DATA" in line


def test_traceback_only_with_ddd(capsys: pytest.CaptureFixture[str], handlers: str) -> None:
    assert main(["-n", "-ddd", "-l", "127.0.0.1:0", "-c", f"{handlers}.Exploding"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last):" in err
    assert "RuntimeError: the spool is not mounted" in err
    assert err.splitlines()[-1] == (
        f"typed-smtpd: error: cannot create the handler {handlers}.Exploding: "
        "the spool is not mounted (RuntimeError)"
    )


# --- the address -------------------------------------------------------------------------------


def test_listen_on_a_name_that_does_not_resolve(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-n", "-l", "nosuchhost.invalid:0", "-c", "typed_smtpd.handlers.Sink"]) == 1
    line = one_error_line(capsys)
    assert line.startswith("typed-smtpd: error: cannot listen on nosuchhost.invalid:0: ")
    assert "the name does not resolve" in line
    assert "give an address of this machine" in line
    assert "Unknown error" not in line


# --- numbers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "0", "-3", "257", "1.5", "\u0661"])
def test_workers_bounds_are_named_the_same_way(
    capsys: pytest.CaptureFixture[str], value: str
) -> None:
    line = usage_error(capsys, "--workers", value)
    assert f"expected a whole number from 1 to 256, not {value!r}" in line


# --- certificates and keys ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A certificate, its key, a key of another certificate, an encrypted key, a text file."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    issued, other = ca.issue_cert("localhost"), ca.issue_cert("localhost")
    directory = tmp_path_factory.mktemp("cli-tls")
    files = {name: directory / f"{name}.pem" for name in ["cert", "key", "other", "locked"]}
    files["cert"].write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(files["key"]))
    other.private_key_pem.write_to_path(str(files["other"]))
    serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")
    private_key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), None)
    files["locked"].write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    files["text"] = directory / "notes.txt"
    files["text"].write_text("not a certificate\n", "utf-8")
    return files


@pytest.mark.parametrize("prefix", ["tls", "smtps"])
def test_certificate_and_key_errors_name_the_file_at_fault(
    capsys: pytest.CaptureFixture[str], tls_files: dict[str, Path], prefix: str
) -> None:
    cert, key = f"--{prefix}cert", f"--{prefix}key"
    missing = str(tls_files["cert"].parent / "missing.pem")
    good_cert, good_key = str(tls_files["cert"]), str(tls_files["key"])

    line = usage_error(capsys, cert, missing, key, good_key)
    assert f"error: {cert} {missing}: No such file or directory" in line
    line = usage_error(capsys, cert, good_cert, key, missing)
    assert f"error: {key} {missing}: No such file or directory" in line
    line = usage_error(capsys, cert, str(tls_files["text"]), key, good_key)
    assert f"error: {cert} {tls_files['text']}: no PEM certificate in this file" in line
    line = usage_error(capsys, cert, good_cert, key, good_cert)
    assert f"error: {key} {good_cert}: no PEM private key in this file" in line
    line = usage_error(capsys, cert, good_cert, key, str(tls_files["other"]))
    assert f"error: {key} {tls_files['other']}: this key does not belong to the certificate" in line
    line = usage_error(capsys, cert, good_cert, key, str(tls_files["locked"]))
    assert f"error: {key} {tls_files['locked']}: the key is encrypted" in line


def test_an_unreadable_key_is_named(
    capsys: pytest.CaptureFixture[str], tls_files: dict[str, Path], tmp_path: Path
) -> None:
    directory = tmp_path / "closed"
    directory.mkdir()
    key = directory / "key.pem"
    key.write_bytes(tls_files["key"].read_bytes())
    key.chmod(0)
    try:
        with key.open("rb"):
            pytest.skip("root reads files whatever their mode")
    except PermissionError:
        pass
    line = usage_error(capsys, "--tlscert", str(tls_files["cert"]), "--tlskey", str(key))
    assert f"error: --tlskey {key}: Permission denied" in line


# --- a broken connection factory is logged ----------------------------------------------------


def test_protocol_factory_failure_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    from typed_smtpd.main import _ProtocolFactory, _SMTPOptions
    from typed_smtpd.smtp import SMTP, ConnectionTracker

    options = _SMTPOptions(
        data_size_limit=None,
        enable_SMTPUTF8=False,
        decode_data=False,
        hostname="mx.example.test",
        ident=None,
        tls_context=None,
        require_starttls=False,
        timeout=1.0,
        data_timeout=1.0,
        auth_required=False,
        auth_require_tls=True,
        authenticator=None,
    )

    class Broken(SMTP):
        def __init__(self, handler: object, **kwargs: object) -> None:
            raise RuntimeError("no memory for a new connection")

    factory = _ProtocolFactory(Broken, options, ConnectionTracker())
    with caplog.at_level(logging.ERROR, logger="mail.log"), pytest.raises(RuntimeError):
        factory()
    assert [record.levelno for record in caplog.records] == [logging.ERROR]
    assert "cannot create the protocol for a new connection" in caplog.records[0].getMessage()
