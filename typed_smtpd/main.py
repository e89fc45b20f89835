"""The command line: ``typed-smtpd`` and ``python -m typed_smtpd``.

What lives here: the argument parser (aiosmtpd's flags, fixed, plus LMTP, Unix sockets, AUTH from
a password file, PROXY protocol, limits, uvloop and worker processes), :func:`parse_listen`, the
password-file authenticator, and :func:`main`, which serves until SIGINT or SIGTERM and then shuts
down cleanly (exit status 0).

With ``--workers N`` the process becomes a supervisor: it reserves the address, forks N workers
that each run their own event loop and listen on the same port with ``SO_REUSEPORT`` (the kernel
spreads connections among them), forwards SIGINT and SIGTERM to them, and reports a worker that
dies.

The order of start-up matters when started as root. Everything that may need root is done first:
TLS keys and the password file are read, the handler class is imported, the server's host name is
looked up, and the socket is bound (a Unix socket file gets its mode and group). Then the process
switches to the user ``nobody``, and only then is the handler built, so that files it creates (a
Maildir) belong to the user that writes to them; a handler that cannot be built stops the server
before it accepts a connection.

Every mistake ends in one line on standard error: exit status 2 for a usage error, 1 for a server
that cannot start. ``-ddd`` adds the traceback of an unexpected error.

What must not live here: anything that speaks SMTP (that is :mod:`typed_smtpd.smtp`).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import dataclasses
import hashlib
import hmac
import importlib
import inspect
import logging
import os
import re
import signal
import socket
import ssl
import stat
import sys
import traceback
import warnings
from collections.abc import Callable, Coroutine, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from ipaddress import IPv6Address
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, NoReturn

from typed_smtpd._connections import implicit_tls, tls_listen_options
from typed_smtpd._version import __version__
from typed_smtpd.controller import (
    DEFAULT_MAX_CONNECTIONS,
    _file_identity,
    _remove_socket_file,
    _set_socket_access,
    _socket_group,
)
from typed_smtpd.logs import configure_logging, flush_logs
from typed_smtpd.proto.limits import DATA_TIMEOUT
from typed_smtpd.session import AuthResult, LoginPassword

if TYPE_CHECKING:
    from typed_smtpd.session import Envelope, Session
    from typed_smtpd.smtp import SMTP, ConnectionTracker

__all__ = [
    "DEFAULT_HANDLER",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_SIZE",
    "PROG",
    "FileAuthenticator",
    "build_parser",
    "load_auth_file",
    "main",
    "parse_listen",
]

log: logging.Logger = logging.getLogger("mail.log")

PROG: Final = "typed-smtpd"
DEFAULT_HOST: Final = "localhost"
#: An unprivileged port, so that trying the server out needs no root.
DEFAULT_PORT: Final = 8025
DEFAULT_HANDLER: Final = "typed_smtpd.handlers.Debugging"
#: The largest message accepted unless ``--size`` says otherwise: 32 MiB.
DEFAULT_SIZE: Final = 33_554_432
#: Seconds of silence after which a client is disconnected (RFC 5321 section 4.5.3.2 asks for at
#: least five minutes).
DEFAULT_TIMEOUT: Final = 300.0
#: Seconds busy connections get to finish their command or transaction after SIGINT or SIGTERM.
SHUTDOWN_GRACE: Final = 5.0
#: Seconds to wait for the listening server to report closed once every connection was told to go.
_CLOSE_TIMEOUT: Final = 2.0
#: The most worker processes ``--workers`` starts: far more than cores on any machine, low enough
#: that a typo cannot fork thousands of processes.
MAX_WORKERS: Final = 256
#: Whether ``--workers`` can work here: it needs SO_REUSEPORT that spreads connections among the
#: sockets sharing a port, which is Linux's behaviour (elsewhere one socket takes them all).
_WORKERS_SUPPORTED: Final = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")
#: ``prctl`` option asking the kernel to signal a process when its parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG: Final = 1

#: The warning SMTP gives for AUTH without TLS; the command line gives its own, once, instead.
_AUTH_IN_CLEAR_WARNING: Final = "auth_required=True with auth_require_tls=False"
#: The debug level (``-ddd``) at which an unexpected error shows its traceback.
_TRACEBACK_LEVEL: Final = 3

_PORT: Final = re.compile(r"[0-9]{1,5}")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")

_DESCRIPTION: Final = """\
An SMTP (or LMTP) server that passes every message it receives to a handler class.
By default the Debugging handler prints each message to standard output."""

_EPILOG: Final = f"""\
Handler classes take their arguments after the options (use -- before an argument that starts
with a dash). Built in: typed_smtpd.handlers.Debugging [stdout|stderr], .Sink, .Mailbox MAILDIR,
.Proxy HOST PORT.

Started as root, the server switches to the user "nobody" once it listens, unless -n is given.
It runs until interrupted (Ctrl-C) or sent SIGTERM, then lets open connections finish for up to
{SHUTDOWN_GRACE:g} seconds and exits with status 0.

examples:
  {PROG} -n
      print every message sent to localhost:8025
  {PROG} -n -l [::1]:2525 -c typed_smtpd.handlers.Mailbox ./Maildir
      store messages sent to port 2525 of ::1 in a Maildir
  {PROG} -l 0.0.0.0:587 --tlscert cert.pem --tlskey key.pem --auth-file users.txt \\
      -c typed_smtpd.handlers.Proxy smtp.example.com 25
      a submission server: STARTTLS, then AUTH, relaying to smtp.example.com
  {PROG} -n --lmtp --unix-socket /run/lmtp.sock --socket-mode 0660 \\
      -c typed_smtpd.handlers.Mailbox /srv/mail
      an LMTP server on a Unix socket that the socket file's group may use
  {PROG} -l 0.0.0.0:25 --workers 4 --uvloop -c typed_smtpd.handlers.Mailbox /srv/mail
      four processes sharing port 25, each on uvloop's event loop

uvloop and worker processes:
  --uvloop runs the server on uvloop's event loop instead of asyncio's own. uvloop is optional:
  pip install 'typed-smtpd[speed]'. Without it, --uvloop is an error.

  --workers N starts N worker processes that each listen on the same address and port with
  SO_REUSEPORT, so that the kernel spreads connections among them (Linux only, TCP only). Each
  worker runs its own event loop and builds its own handler: a handler's in-memory state is per
  worker. The process started supervises them: SIGINT or SIGTERM to it stops every worker as
  above; if a worker dies, it stops the others and exits with status 1, so that a service
  manager can restart the whole server.
"""


# --- argument types ------------------------------------------------------------------------------


def parse_listen(
    value: str, *, default_host: str = DEFAULT_HOST, default_port: int = DEFAULT_PORT
) -> tuple[str, int]:
    """Split a ``--listen`` value, ``[HOST][:PORT]``, into a host and a port.

    >>> parse_listen("127.0.0.1:25")
    ('127.0.0.1', 25)
    >>> parse_listen("[::1]:2525")
    ('::1', 2525)
    >>> parse_listen("::1")
    ('::1', 8025)
    >>> parse_listen(":2525")
    ('localhost', 2525)

    An IPv6 address with a port goes in brackets; without brackets, a value with more than one
    colon is an IPv6 address without port. A missing part takes its default; port 0 asks the
    system for a free port. Raises :class:`ValueError` for anything else.
    """
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ValueError(f"missing ']' in {value!r}")
        host, rest = value[1:end], value[end + 1 :]
        _check_ipv6(host)
        if rest and not rest.startswith(":"):
            raise ValueError(f"expected ':PORT' after ']' in {value!r}")
        port_text = rest[1:]
    elif value.count(":") > 1:
        _check_ipv6(value)
        host, port_text = value, ""
    else:
        host, _, port_text = value.partition(":")
        if any(c.isspace() for c in host) or _CONTROL.search(host):
            raise ValueError(f"invalid host name {host!r}")
    return host or default_host, _parse_port(port_text) if port_text else default_port


def _check_ipv6(host: str) -> None:
    try:
        IPv6Address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IPv6 address") from None


def _parse_port(text: str) -> int:
    if not _PORT.fullmatch(text) or int(text) > 65535:
        raise ValueError(f"invalid port {text!r}: expected a number from 0 to 65535")
    return int(text)


def _listen_type(value: str) -> tuple[str, int]:
    try:
        return parse_listen(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _metrics_type(value: str) -> tuple[str, int]:
    try:
        host, port = parse_listen(value, default_port=-1)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if port < 0:
        raise argparse.ArgumentTypeError(
            f"give the port too: HOST:PORT, such as 127.0.0.1:9101 (not {value!r})"
        )
    return host, port


def _metrics_address(
    parser: argparse.ArgumentParser, address: tuple[str, int] | None
) -> tuple[str, int] | None:
    if address is None:
        return None
    try:
        importlib.import_module("prometheus_client")
    except ImportError:
        parser.error(
            "--metrics needs prometheus-client, which is not installed: "
            "pip install 'typed-smtpd[metrics]'"
        )
    return address


def _non_negative_int(value: str) -> int:
    if not value.isascii() or not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, not {value!r}")
    return int(value)


def _connection_cap(value: str) -> int:
    if not value.isascii() or not value.isdigit():
        raise argparse.ArgumentTypeError(
            f"expected a whole number >= 0 (0: no limit), not {value!r}"
        )
    return int(value)


def _worker_count(value: str) -> int:
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(
            f"expected a whole number from 1 to {MAX_WORKERS}, not {value!r}"
        )
    return int(value)


def _file_mode(value: str) -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        mode = -1
    if not value.isascii() or not 0 <= mode <= 0o7777:
        raise argparse.ArgumentTypeError(
            f"expected permission bits in octal, such as 0660, not {value!r}"
        )
    return mode


def _group(value: str) -> int:
    if value.isascii() and value.isdigit():
        return int(value)
    try:
        gid = _socket_group(value)
    except (ValueError, ImportError):
        gid = None
    if gid is None:
        raise argparse.ArgumentTypeError(f"there is no group named {value!r} on this system")
    return gid


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, not {value!r}")
    return number


def _one_line(value: str) -> str:
    if not value or _CONTROL.search(value):
        raise argparse.ArgumentTypeError(
            f"expected non-empty text without control characters: {value!r}"
        )
    return value


# --- AUTH from a password file -------------------------------------------------------------------


def load_auth_file(path: str | os.PathLike[str]) -> dict[bytes, bytes]:
    """Read ``user:password`` lines (UTF-8) into a mapping of login to password.

    Blank lines and lines starting with ``#`` are skipped; the password is everything after the
    first colon. Raises :class:`OSError` if the file cannot be read and :class:`ValueError`
    naming the line if a line is malformed or a user appears twice.
    """
    with open(path, encoding="utf-8") as file:
        lines = file.read().splitlines()
    credentials: dict[bytes, bytes] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, colon, password = line.partition(":")
        if not colon or not user:
            raise ValueError(f"line {number}: expected user:password")
        login = user.encode("utf-8")
        if login in credentials:
            raise ValueError(f"line {number}: user {user!r} appears twice")
        credentials[login] = password.encode("utf-8")
    if not credentials:
        raise ValueError("no user:password line")
    return credentials


class FileAuthenticator:
    """An ``authenticator`` for the built-in PLAIN and LOGIN mechanisms, from fixed credentials.

    Passwords are compared in constant time (SHA-256 digests through :func:`hmac.compare_digest`,
    so not even the length leaks), and an unknown user costs the same comparison as a known one.
    On success, :attr:`Session.auth_data` is the login as text.
    """

    def __init__(self, credentials: Mapping[bytes, bytes]) -> None:
        self._digests = {login: hashlib.sha256(pw).digest() for login, pw in credentials.items()}
        self._unknown = hashlib.sha256(os.urandom(32)).digest()

    def __call__(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: object,
    ) -> AuthResult:
        """Decide one AUTH attempt."""
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        expected = self._digests.get(auth_data.login)
        given = hashlib.sha256(auth_data.password).digest()
        matches = hmac.compare_digest(given, self._unknown if expected is None else expected)
        if matches and expected is not None:
            return AuthResult(success=True, auth_data=auth_data.login.decode("utf-8", "replace"))
        return AuthResult(success=False, handled=False)


# --- the parser ----------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse's parser, with a usage error reported in one line that points to ``--help``."""

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE`` and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the command line."""
    parser = _Parser(
        prog=PROG,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("-v", "--version", action="version", version=f"{PROG} {__version__}")
    add(
        "-n",
        "--nosetuid",
        dest="setuid",
        action="store_false",
        help='when started as root, keep running as root instead of switching to "nobody"',
    )
    add(
        "-c",
        "--class",
        dest="classpath",
        metavar="CLASSPATH",
        default=DEFAULT_HANDLER,
        help=f"the handler class, as module.Class (default: {DEFAULT_HANDLER})",
    )
    add(
        "-s",
        "--size",
        type=_non_negative_int,
        default=DEFAULT_SIZE,
        metavar="BYTES",
        help=f"largest message accepted, 0 for no limit (default: {DEFAULT_SIZE:,} bytes)",
    )
    add("-u", "--smtputf8", action="store_true", help="offer SMTPUTF8 (RFC 6531)")
    add(
        "-d",
        "--debug",
        action="count",
        default=0,
        help="log more: the default shows one line per event (connections, messages, AUTH, "
        "refusals); -d adds each command and reply, -dd asyncio's debug mode, -ddd the "
        "traceback of an unexpected error",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "-l",
        "--listen",
        type=_listen_type,
        metavar="[HOST][:PORT]",
        help=f"TCP address to listen on; IPv6 in brackets: [::1]:25 "
        f"(default: {DEFAULT_HOST}:{DEFAULT_PORT})",
    )
    where.add_argument("--unix-socket", metavar="PATH", help="listen on a Unix socket instead")
    add(
        "--socket-mode",
        type=_file_mode,
        metavar="MODE",
        help="the Unix socket file's permissions in octal, such as 0660 (clients need write "
        "permission; default: what the umask gives)",
    )
    add(
        "--socket-group",
        type=_group,
        metavar="GROUP",
        help="the Unix socket file's group, a name or a number (default: the server's group)",
    )
    add("--lmtp", action="store_true", help="speak LMTP (RFC 2033) instead of SMTP")
    add(
        "--hostname",
        type=_one_line,
        metavar="NAME",
        help="the name the server gives in its greeting (default: this host's name)",
    )
    add("--ident", type=_one_line, metavar="TEXT", help="the text after the name in the greeting")
    add(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"disconnect a client that stays silent this long (default: {DEFAULT_TIMEOUT:g})",
    )
    add(
        "--data-timeout",
        type=_positive_float,
        default=DATA_TIMEOUT,
        metavar="SECONDS",
        help="disconnect a client whose message (DATA or BDAT) takes longer than this "
        f"(default: {DATA_TIMEOUT:g})",
    )
    add(
        "--max-connections",
        type=_connection_cap,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help="clients served at once; more are told 421; 0 for no limit "
        f"(default: {DEFAULT_MAX_CONNECTIONS:,})",
    )
    add(
        "--decode-data",
        action="store_true",
        help="give handlers the message as text (UTF-8) rather than bytes",
    )
    add(
        "--proxy-protocol",
        type=_positive_float,
        metavar="SECONDS",
        help="expect a PROXY protocol header (v1 or v2) first, within SECONDS",
    )
    add(
        "--metrics",
        type=_metrics_type,
        metavar="[HOST]:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (the metrics extra); with "
        "--workers N, worker i serves them on PORT+i",
    )
    speed = parser.add_argument_group("speed")
    speed.add_argument(
        "--uvloop",
        action="store_true",
        help="run on uvloop's event loop (an optional dependency: the speed extra)",
    )
    speed.add_argument(
        "--workers",
        type=_worker_count,
        default=1,
        metavar="N",
        help="serve from N processes sharing the port with SO_REUSEPORT (Linux; default: 1)",
    )
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--smtpscert", metavar="FILE", help="certificate for implicit TLS (SMTPS)")
    tls.add_argument("--smtpskey", metavar="FILE", help="private key for implicit TLS (SMTPS)")
    tls.add_argument(
        "--tlscert",
        metavar="FILE",
        help="certificate for STARTTLS, which clients must then use (unless --no-requiretls)",
    )
    tls.add_argument("--tlskey", metavar="FILE", help="private key for STARTTLS")
    tls.add_argument(
        "--no-requiretls",
        dest="requiretls",
        action="store_false",
        help="with STARTTLS, accept mail from clients that do not use it",
    )
    auth = parser.add_argument_group("authentication")
    auth.add_argument(
        "--auth-file",
        metavar="PATH",
        help="require AUTH (PLAIN, LOGIN) with the user:password lines of PATH; without TLS the "
        "passwords travel in clear (a warning says so)",
    )
    add(
        "classargs",
        metavar="CLASSARGS",
        nargs="*",
        default=[],
        help="arguments for the handler class",
    )
    return parser


# --- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Config:
    """Everything the server needs, checked and loaded before anything binds."""

    handler_factory: Callable[..., object]
    handler_path: str
    handler_args: tuple[str, ...]
    host: str
    port: int
    unix_socket: str | None
    socket_mode: int | None
    socket_group: int | None
    lmtp: bool
    setuid: bool
    debug: int
    ssl_context: ssl.SSLContext | None
    max_connections: int | None
    uvloop: bool
    workers: int
    smtp: _SMTPOptions
    metrics: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class _SMTPOptions:
    """The keyword arguments of :class:`~typed_smtpd.smtp.SMTP` the command line sets."""

    data_size_limit: int | None
    enable_SMTPUTF8: bool
    decode_data: bool
    hostname: str
    ident: str | None
    tls_context: ssl.SSLContext | None
    require_starttls: bool
    timeout: float
    data_timeout: float
    auth_required: bool
    auth_require_tls: bool
    authenticator: FileAuthenticator | None
    auth_exclude_mechanism: tuple[str, ...] = field(default=())
    proxy_protocol_timeout: float | None = None


def _load_handler_factory(parser: argparse.ArgumentParser, path: str) -> Callable[..., object]:
    module_name, dot, name = path.rpartition(".")
    if not dot or not module_name or not name:
        parser.error(f"-c wants module.Class, not {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        parser.error(f"cannot import {module_name!r} for -c {path}: {error}")
    factory = getattr(module, name, None)
    if not callable(factory):
        parser.error(f"{module_name!r} has no class {name!r}")
    return factory  # type: ignore[no-any-return]


def _build_handler(
    parser: argparse.ArgumentParser,
    factory: Callable[..., object],
    path: str,
    args: Sequence[str],
) -> object:
    """The handler; wrong arguments are a usage error, a failing constructor a start error."""
    from_cli = getattr(factory, "from_cli", None)
    if not callable(from_cli):
        if args:
            parser.error(f"{path} takes no arguments (it has no from_cli classmethod)")
        try:
            inspect.signature(factory).bind()
        except TypeError as error:
            parser.error(f"cannot create {path} without arguments: {error}")
        except ValueError:  # no signature to inspect (some built-in types): just try
            pass
    try:
        return from_cli(parser, *args) if callable(from_cli) else factory()
    except Exception as error:
        raise _StartError(f"cannot create the handler {path}: {_describe(error)}") from error


def _describe(error: BaseException) -> str:
    """An exception in a few words: an OSError's reason and file, else its text and class."""
    if isinstance(error, OSError) and error.strerror:
        where = f"{error.filename}: " if error.filename is not None else ""
        return f"{where}{error.strerror}"
    text = str(error)
    return f"{text} ({type(error).__name__})" if text else type(error).__name__


def _no_passphrase() -> bytes:
    """The password callback of ``load_cert_chain``: there is no one to ask for a passphrase."""
    raise ValueError("the key is encrypted; give a key without a passphrase")


def _read_pem(parser: argparse.ArgumentParser, flag: str, path: str, marker: bytes) -> None:
    """Check that ``path`` is a readable file holding a PEM block of the kind ``marker`` names."""
    try:
        with open(path, "rb") as file:
            content = file.read()
    except OSError as error:
        parser.error(f"{flag} {path}: {error.strerror or error}")
    if marker not in content:
        kind = "certificate" if flag.endswith("cert") else "private key"
        parser.error(f"{flag} {path}: no PEM {kind} in this file")


def _tls_context(
    parser: argparse.ArgumentParser, cert: str | None, key: str | None, prefix: str
) -> ssl.SSLContext | None:
    """The TLS context of ``--PREFIXcert`` and ``--PREFIXkey``, each file checked by name."""
    cert_flag, key_flag = f"--{prefix}cert", f"--{prefix}key"
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        parser.error(f"{cert_flag} and {key_flag} must be given together")
    _read_pem(parser, cert_flag, cert, b"-----BEGIN CERTIFICATE-----")
    _read_pem(parser, key_flag, key, b"PRIVATE KEY-----")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except ValueError as error:
        parser.error(f"{key_flag} {key}: {error}")
    except (OSError, ssl.SSLError) as error:
        reason = getattr(error, "reason", None) or str(error)
        if reason == "KEY_VALUES_MISMATCH":
            parser.error(f"{key_flag} {key}: this key does not belong to the certificate {cert}")
        parser.error(f"cannot use the certificate {cert} with the key {key}: {reason}")
    return context


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def _configure(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> _Config:
    smtps = _tls_context(parser, ns.smtpscert, ns.smtpskey, "smtps")
    starttls = _tls_context(parser, ns.tlscert, ns.tlskey, "tls")
    if smtps is not None and starttls is not None:
        parser.error("choose implicit TLS (--smtpscert) or STARTTLS (--tlscert), not both")
    authenticator = None
    if ns.auth_file is not None:
        try:
            authenticator = FileAuthenticator(load_auth_file(ns.auth_file))
            mode = os.stat(ns.auth_file).st_mode
        except (OSError, ValueError) as error:
            parser.error(f"--auth-file {ns.auth_file}: {error}")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            _warn(f"{ns.auth_file} can be read by other users")
        if smtps is None and starttls is None:
            _warn("AUTH is offered without TLS: passwords will cross the network in clear")
            # The server's own warning says the same again, from each protocol instance.
            warnings.filterwarnings("ignore", re.escape(_AUTH_IN_CLEAR_WARNING), UserWarning)
    if ns.unix_socket is None and (ns.socket_mode is not None or ns.socket_group is not None):
        parser.error("--socket-mode and --socket-group need --unix-socket")
    if ns.workers > 1:
        if ns.unix_socket is not None:
            parser.error(
                "--workers needs a TCP address: SO_REUSEPORT does not apply to Unix sockets"
            )
        if not _WORKERS_SUPPORTED:
            parser.error("--workers needs SO_REUSEPORT load balancing, which only Linux offers")
    if ns.uvloop:
        try:
            importlib.import_module("uvloop")
        except ImportError:
            parser.error(
                "--uvloop needs uvloop, which is not installed: pip install 'typed-smtpd[speed]'"
            )
    host, port = ns.listen if ns.listen is not None else (DEFAULT_HOST, DEFAULT_PORT)
    handler_factory = _load_handler_factory(parser, ns.classpath)
    return _Config(
        handler_factory=handler_factory,
        handler_path=ns.classpath,
        handler_args=tuple(ns.classargs),
        host=host,
        port=port,
        unix_socket=ns.unix_socket,
        socket_mode=ns.socket_mode,
        socket_group=ns.socket_group,
        lmtp=ns.lmtp,
        setuid=ns.setuid,
        debug=ns.debug,
        ssl_context=smtps,
        max_connections=ns.max_connections or None,
        uvloop=ns.uvloop,
        workers=ns.workers,
        metrics=_metrics_address(parser, ns.metrics),
        smtp=_SMTPOptions(
            data_size_limit=ns.size or None,
            enable_SMTPUTF8=ns.smtputf8,
            decode_data=ns.decode_data,
            # Looked up now, while the lookup still has every privilege it may need: the
            # library would look it up at the first connection, after the switch to "nobody".
            hostname=socket.getfqdn() if ns.hostname is None else ns.hostname,
            ident=ns.ident,
            tls_context=starttls,
            require_starttls=starttls is not None and ns.requiretls,
            timeout=ns.timeout,
            data_timeout=ns.data_timeout,
            auth_required=authenticator is not None,
            # Under TLS, AUTH waits for it; with no TLS at all there is nothing to wait for.
            auth_require_tls=authenticator is None or smtps is not None or starttls is not None,
            authenticator=authenticator,
            # CRAM-MD5 needs the stored password itself, which the password file does not serve.
            auth_exclude_mechanism=("CRAM-MD5",) if authenticator is not None else (),
            proxy_protocol_timeout=ns.proxy_protocol,
        ),
    )


# --- running -------------------------------------------------------------------------------------


class _StartError(Exception):
    """The server could not start; the message is shown as is."""


@dataclass(slots=True)
class _ProtocolFactory:
    """Builds one protocol instance per connection, sharing the handler and the tracker."""

    server_class: type[SMTP]
    options: _SMTPOptions
    tracker: ConnectionTracker
    handler: object = None
    #: Implicit TLS: the server runs each connection's handshake itself (bounded, and counted
    #: by the connection cap) before the protocol instance gets the connection.
    implicit_tls: ssl.SSLContext | None = None

    def __call__(self) -> asyncio.BaseProtocol:
        try:
            protocol = self.build()
        except Exception:
            # asyncio only drops the connection; without this line nobody would know why.
            log.exception("cannot create the protocol for a new connection; it is closed")
            raise
        protocol.connection_tracker = self.tracker
        return implicit_tls(protocol, self.implicit_tls)

    def build(self) -> SMTP:
        """One protocol instance, without the tracker (the start-up check uses it too)."""
        o = self.options
        return self.server_class(
            self.handler,
            data_size_limit=o.data_size_limit,
            enable_SMTPUTF8=o.enable_SMTPUTF8,
            decode_data=o.decode_data,
            hostname=o.hostname,
            ident=o.ident,
            tls_context=o.tls_context,
            require_starttls=o.require_starttls,
            timeout=o.timeout,
            data_timeout=o.data_timeout,
            auth_required=o.auth_required,
            auth_require_tls=o.auth_require_tls,
            auth_exclude_mechanism=o.auth_exclude_mechanism,
            authenticator=o.authenticator,
            proxy_protocol_timeout=o.proxy_protocol_timeout,
        )


def _serve_metrics(
    config: _Config, tracker: ConnectionTracker, worker: _WorkerLink | None
) -> tuple[Any, tuple[str, int]] | None:
    """Serve the server's counters to Prometheus if ``--metrics`` asked for it: the HTTP server
    and where it listens. Worker ``i`` of ``--workers`` listens on the port plus ``i - 1``."""
    if config.metrics is None:
        return None
    from typed_smtpd.metrics import serve_metrics

    host, port = config.metrics
    if worker is not None and port:
        port += worker.number - 1
    try:
        http, bound = serve_metrics(tracker.stats.snapshot, host, port)
    except OSError as error:
        raise _StartError(f"cannot serve metrics on {host}:{port}: {_reason(error)}") from None
    return http, (host, bound)


def _switch_to_nobody() -> None:
    """Give up root for the user ``nobody``: groups, group, then user, in that order."""
    import pwd

    try:
        nobody = pwd.getpwnam("nobody")
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)
    except (KeyError, OSError) as error:
        raise _StartError(
            f'cannot switch to the user "nobody" ({error}); use -n to stay root'
        ) from None


def _format_address(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return f"unix:{address}"


def _where(config: _Config) -> str:
    """Where the server was asked to listen, for messages."""
    if config.unix_socket is not None:
        return f"unix:{config.unix_socket}"
    return _format_address((config.host, config.port))


def _print_banner(where: str, description: str) -> None:
    """Say on standard error that the server is listening (the line scripts wait for)."""
    flush_logs()  # after the lines logged before it
    print(f"{PROG} {__version__} listening on {where} ({description})", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class _WorkerLink:
    """What a worker process keeps of its supervisor: its process id and the ready pipe."""

    supervisor: int
    ready: int
    #: The worker's number, from 1.
    number: int = 1

    def announce(self, where: str, description: str) -> None:
        """Tell the supervisor that this worker listens (instead of printing the banner)."""
        os.write(self.ready, f"{where}\t{description}\n".encode("utf-8", "replace"))
        os.close(self.ready)


async def _serve(
    parser: argparse.ArgumentParser, config: _Config, worker: _WorkerLink | None = None
) -> None:
    """Bind, drop privileges, build the handler, serve until a signal, then shut down.

    SIGINT and SIGTERM stop the server; a second one cuts the grace period short. A ``worker``
    listens with SO_REUSEPORT, stops on SIGTERM alone (its supervisor turns SIGINT into SIGTERM),
    starts with SIGTERM blocked until its handler is in place, and reports that it listens through
    ``worker.announce``.
    """
    from typed_smtpd.smtp import SMTP, ConnectionTracker

    server_class: type[SMTP] = SMTP
    if config.lmtp:
        from typed_smtpd.lmtp import LMTP

        server_class = LMTP
    loop = asyncio.get_running_loop()
    tracker = ConnectionTracker(config.max_connections)
    factory = _ProtocolFactory(server_class, config.smtp, tracker, implicit_tls=config.ssl_context)
    tls = tls_listen_options(config.ssl_context, config.smtp.timeout)
    try:
        if config.unix_socket is not None:
            server = await loop.create_unix_server(
                factory, config.unix_socket, start_serving=False, **tls
            )
        else:
            server = await loop.create_server(
                factory,
                config.host,
                config.port,
                reuse_port=worker is not None or None,
                start_serving=False,
                **tls,
            )
    except OSError as error:
        raise _StartError(f"cannot listen on {_where(config)}: {_reason(error)}") from None
    socket_file = None if config.unix_socket is None else _file_identity(config.unix_socket)
    metrics: tuple[Any, tuple[str, int]] | None = None
    stop = asyncio.Event()
    force = asyncio.Event()

    def on_signal() -> None:
        (force if stop.is_set() else stop).set()

    signals = (signal.SIGINT, signal.SIGTERM) if worker is None else (signal.SIGTERM,)
    announce = _print_banner if worker is None else worker.announce
    try:
        metrics = _serve_metrics(config, tracker, worker)  # before privileges are dropped
        if config.unix_socket is not None:
            try:
                _set_socket_access(config.unix_socket, config.socket_mode, config.socket_group)
            except OSError as error:
                raise _StartError(
                    f"cannot set the mode or group of {config.unix_socket}: {_reason(error)}"
                ) from None
        if config.setuid and hasattr(os, "geteuid") and os.geteuid() == 0:
            _switch_to_nobody()
            if worker is not None and not _die_with_supervisor(worker.supervisor):
                return  # Linux forgets the request when credentials change: it is made again
        factory.handler = _build_handler(
            parser, config.handler_factory, config.handler_path, config.handler_args
        )
        # A handler may need its own protocol class (the fault injector's connect, greeting,
        # STARTTLS and AUTH stages live there): it says so with server_class_for().
        provider = getattr(factory.handler, "server_class_for", None)
        if callable(provider):
            factory.server_class = provider(factory.server_class)
        try:
            factory.build()  # a hook of the wrong shape fails here, not at every connection
        except Exception as error:
            raise _StartError(
                f"cannot serve with the handler {config.handler_path}: {_describe(error)}"
            ) from error
        for signum in signals:
            with suppress(NotImplementedError):  # Windows: Ctrl-C raises KeyboardInterrupt
                loop.add_signal_handler(signum, on_signal)
        if worker is not None:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
        await server.start_serving()
        where = _where(config)
        if config.unix_socket is None:
            where = ", ".join(_format_address(sock.getsockname()) for sock in server.sockets)
        handler_class = type(factory.handler)
        details = (
            ("uvloop, " if type(loop).__module__.partition(".")[0] == "uvloop" else "")
            + ("LMTP, " if config.lmtp else "")
            + ("implicit TLS, " if config.ssl_context else "")
            + (f"metrics at http://{_format_address(metrics[1])}/metrics, " if metrics else "")
        )
        announce(where, f"{details}handler {handler_class.__module__}.{handler_class.__qualname__}")
        await stop.wait()
        log.info("shutting down")
        server.close()
        # Idle clients get 421 at once, busy ones finish first; a second signal cuts that short.
        draining = asyncio.ensure_future(tracker.shutdown(SHUTDOWN_GRACE))
        forced = asyncio.ensure_future(force.wait())
        await asyncio.wait({draining, forced}, return_when=asyncio.FIRST_COMPLETED)
        for task in (draining, forced):
            task.cancel()
        # asyncio 3.13+ servers can drop their clients; uvloop's (and older) cannot.
        abort_clients = getattr(server, "abort_clients", None)
        if abort_clients is not None:
            abort_clients()
        with suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), _CLOSE_TIMEOUT)
    finally:
        for signum in signals:
            with suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)
        if metrics is not None:
            metrics[0].shutdown()
        server.close()
        if config.unix_socket is not None:
            _remove_socket_file(config.unix_socket, socket_file)


def _reason(error: OSError) -> str:
    """Why a bind failed, plainly: asyncio wraps the reason in a sentence of its own."""
    if isinstance(error, socket.gaierror):
        # Its errno is the resolver's (EAI_*), which os.strerror() does not know.
        return f"the name does not resolve ({error.strerror}); give an address of this machine"
    return os.strerror(error.errno) if error.errno else str(error)


def _run(main: Coroutine[Any, Any, None], config: _Config) -> None:
    """Run ``main`` to completion on asyncio's event loop, or on uvloop's with ``--uvloop``."""
    try:
        if config.uvloop:
            # Imported by name: uvloop is an optional dependency, absent where type checks run.
            importlib.import_module("uvloop").run(main, debug=config.debug >= 2)
        else:
            asyncio.run(main, debug=config.debug >= 2)
    finally:
        flush_logs()  # the lines of the last moments, before any error line (or os._exit)


# --- worker processes ----------------------------------------------------------------------------


def _reserve(config: _Config) -> list[socket.socket]:
    """Bind (without listening) every address the workers will listen on, with SO_REUSEPORT.

    This reports an address in use before any worker starts, turns port 0 into one port that all
    workers share, and keeps the port taken while workers come and go. A socket that does not
    listen is given no connections, so the kernel spreads them among the workers alone.
    """
    where = _where(config)
    try:
        infos = socket.getaddrinfo(
            config.host or None,
            config.port,
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )
    except socket.gaierror as error:
        raise _StartError(f"cannot listen on {where}: {_reason(error)}") from None
    port = config.port
    reserved: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            reserved.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:  # as asyncio does: IPv4 gets sockets of its own
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], port, *address[2:]))
            port = sock.getsockname()[1]
    except OSError as error:
        for sock in reserved:
            sock.close()
        raise _StartError(f"cannot listen on {where}: {_reason(error)}") from None
    if not reserved:
        raise _StartError(f"cannot listen on {where}: no address")
    return reserved


def _exit_description(code: int) -> str:
    """How a process ended, from :func:`os.waitstatus_to_exitcode`."""
    if code < 0:
        with suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _die_with_supervisor(supervisor: int) -> bool:
    """Ask Linux to send SIGTERM to this worker when the supervisor dies; False if it has."""
    with suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    return os.getppid() == supervisor


class _Supervisor:
    """Starts the worker processes one after the other, then waits for them to end.

    A worker reports that it listens through a pipe, so that a worker that cannot start (its
    handler's arguments are wrong, say) fails once, before the others start. SIGINT and SIGTERM
    are passed on to the workers as SIGTERM: workers ignore SIGINT, so that Ctrl-C in a terminal,
    which signals the whole process group, reaches them once, through the supervisor.
    """

    _SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, parser: argparse.ArgumentParser, config: _Config) -> None:
        self.parser = parser
        self.config = config
        self.reserved: list[socket.socket] = []
        self.workers: dict[int, int] = {}  # pid -> worker number
        self.stopping = False
        self.status = 0

    def run(self) -> int:
        """Serve with the workers until a signal or a worker's death; return the exit status."""
        self.reserved = _reserve(self.config)
        self.config = dataclasses.replace(self.config, port=self.reserved[0].getsockname()[1])
        previous = {signum: signal.signal(signum, self._on_signal) for signum in self._SIGNALS}
        try:
            ready: tuple[str, str] | None = None
            for number in range(1, self.config.workers + 1):
                if self.stopping:
                    break
                started = self._start(number)
                if started is None:
                    self._stop_all()
                    break
                ready = ready or started
            if ready is not None and not self.stopping:
                where, description = ready
                pids = ", ".join(str(pid) for pid in self.workers)
                _print_banner(where, f"{len(self.workers)} workers, pids {pids}; {description}")
                self._drop_privileges()
            self._wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for sock in self.reserved:
                sock.close()
        return self.status

    def _drop_privileges(self) -> None:
        """Once every worker listens, the supervisor has no more use for root either."""
        if not (self.config.setuid and hasattr(os, "geteuid") and os.geteuid() == 0):
            return
        try:
            _switch_to_nobody()
        except _StartError as error:
            print(f"{PROG}: error: {error}", file=sys.stderr, flush=True)
            self.status = 1
            self._stop_all()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        self._signal_workers()

    def _signal_workers(self) -> None:
        for pid in self.workers:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _stop_all(self) -> None:
        if not self.stopping:
            self.stopping = True
            self._signal_workers()

    def _start(self, number: int) -> tuple[str, str] | None:
        """Fork worker ``number`` and wait until it listens; None if it ended first."""
        read_end, write_end = os.pipe()
        # Blocked across the fork: the worker must not run the supervisor's handlers, and a
        # signal that arrives before the worker's own handlers are set must wait for them.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, self._SIGNALS)
        try:
            pid = os.fork()
        except OSError as error:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(read_end)
            os.close(write_end)
            print(f"{PROG}: error: cannot start worker {number}: {error}", file=sys.stderr)
            self.status = 1
            return None
        if pid == 0:
            os.close(read_end)
            self._work(write_end, number)
        self.workers[pid] = number
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(write_end)
        try:
            message = b""
            while b"\n" not in message and (chunk := os.read(read_end, 4096)):
                message += chunk
        finally:
            os.close(read_end)
        where, tab, description = message.decode("utf-8", "replace").rstrip("\n").partition("\t")
        if tab:
            return where, description
        # The worker ended before it listened, and said why (unless a signal killed it).
        _, wait_status = os.waitpid(pid, 0)
        del self.workers[pid]
        code = os.waitstatus_to_exitcode(wait_status)
        if code < 0 and not self.stopping:
            self._report(number, pid, code)
        self.status = self.status or (code if code > 0 else 1)
        return None

    def _work(self, ready: int, number: int) -> NoReturn:
        """The worker process: serve until SIGTERM, then exit (never returns to the caller)."""
        code = 1
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            for sock in self.reserved:
                sock.close()
            link = _WorkerLink(supervisor=os.getppid(), ready=ready, number=number)
            if _die_with_supervisor(link.supervisor):
                _run(_serve(self.parser, self.config, link), self.config)
            code = 0
        except SystemExit as exit_:  # parser.error from a handler's from_cli, say
            code = 0 if exit_.code is None else exit_.code if isinstance(exit_.code, int) else 1
        except Exception as error:
            _report(error, self.config.debug)
        except BaseException:
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                with suppress(Exception):
                    stream.flush()
            os._exit(code)

    def _wait(self) -> None:
        """Reap the workers; one that ends on its own is reported, and the others are stopped."""
        while self.workers:
            try:
                pid, wait_status = os.waitpid(-1, 0)
            except ChildProcessError:
                return
            number = self.workers.pop(pid, None)
            if number is None:
                continue
            code = os.waitstatus_to_exitcode(wait_status)
            if self.stopping and code == 0:
                continue
            self._report(number, pid, code)
            if not self.stopping:
                print(f"{PROG}: stopping the other workers", file=sys.stderr, flush=True)
            self.status = 1
            self._stop_all()

    @staticmethod
    def _report(number: int, pid: int, code: int) -> None:
        print(
            f"{PROG}: error: worker {number} (pid {pid}) {_exit_description(code)}",
            file=sys.stderr,
            flush=True,
        )


# --- the entry point -----------------------------------------------------------------------------


def _configure_logging(level: int) -> None:
    # basicConfig's format and stream, with a handler that writes the lines of a busy server
    # in batches and a formatter that makes each second's time text once; the records skip
    # the fields the format does not show (see configure_logging).
    configure_logging(logging.DEBUG if level >= 1 else logging.INFO, sys.stderr, lean=True)


def main(args: Sequence[str] | None = None) -> int:
    """Run the command line with ``args`` (default: ``sys.argv[1:]``); return the exit status.

    Usage errors exit with status 2 through :class:`SystemExit`, as :mod:`argparse` does; a
    server that cannot start returns 1; a server stopped by SIGINT or SIGTERM returns 0. With
    ``--workers``, a worker that dies makes it return 1 once the others have stopped.
    """
    parser = build_parser()
    ns = parser.parse_args(args)
    config = _configure(parser, ns)
    _configure_logging(config.debug)
    try:
        if config.workers > 1:
            return _Supervisor(parser, config).run()
        _run(_serve(parser, config), config)
    except _StartError as error:
        _report(error, config.debug)
        return 1
    except KeyboardInterrupt:  # only where signal handlers cannot be installed
        pass
    except Exception as error:
        _report(error, config.debug)
        return 1
    return 0


def _report(error: Exception, debug: int) -> None:
    """One line on standard error for a server that cannot go on; with ``-ddd``, the traceback."""
    if debug >= _TRACEBACK_LEVEL:
        traceback.print_exception(error.__cause__ or error, file=sys.stderr)
    if isinstance(error, _StartError):
        message = str(error)
    else:
        message = f"unexpected error: {_describe(error)} (-ddd shows where)"
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
