"""What a running server tells its operator: one log line per event, and live counters.

Each connection gets a short session id (``3F9A00002C``); every event of that connection is one
line on the ``mail.log`` logger at INFO, the id first, then the event and its fields as
``key=value`` (values with spaces or unusual characters in double quotes, escaped)::

    3F9A00002C connect client=192.0.2.7:50122
    3F9A00002C tls client=192.0.2.7:50122 version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384
    3F9A00002C auth-failed client=192.0.2.7:50122 mechanism=PLAIN user=anne
    3F9A00002C reject client=192.0.2.7:50122 command=RCPT reply="550 5.1.1 No such user"
    3F9A00002C accepted client=192.0.2.7:50122 id=3F9A00002C.1 from=<anne@example.com> rcpts=2
        size=1834 reply="250 OK"            (one line)
    3F9A00002C disconnect client=192.0.2.7:50122 duration=0.412 replies=9 messages=1

The same fields are on the :class:`logging.LogRecord` (``extra``), as ``smtp_event``,
``smtp_session`` and ``smtp_<field>``, so that a JSON formatter needs no parsing. Nothing is
formatted while INFO is off for ``mail.log``.

The command line writes them with what :mod:`typed_smtpd.logs` offers every program, for a
fifth of what :mod:`logging` costs as most programs set it up. While nothing else would see an
event's record, the monitor gives that handler the line's values alone, and the handler makes
the text with the rest of its batch.

:class:`ServerStats` holds the counters of one listening server (its
:class:`~typed_smtpd.smtp.ConnectionTracker`'s); :meth:`ServerStats.snapshot` gives a
:class:`StatsSnapshot`, and :mod:`typed_smtpd.metrics` serves them to Prometheus.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from typed_smtpd.logs import LOG_FORMAT, CachedTimeFormatter, DeferredFlushHandler
from typed_smtpd.proto.clients import ClientTable
from typed_smtpd.proto.replies import Reply

if TYPE_CHECKING:
    from typed_smtpd.proto.engine import ServerEngine
    from typed_smtpd.session import Envelope, Session

__all__ = [
    "ConnectionMonitor",
    "ServerStats",
    "StatsSnapshot",
    "format_peer",
]

log: logging.Logger = logging.getLogger("mail.log")

_INFO: Final = logging.INFO
_NAME: Final = log.name
#: The file the event lines' records name as their source (``pathname``).
_FILE: Final = __file__
#: A value written as it is; anything else is quoted (JSON string escapes, so no control
#: character of a client's ever reaches the log as such).
_PLAIN: Final = re.compile(r"[\w.:@<>\[\]/+=,-]+")
#: Text that needs no escape inside double quotes.
_QUOTABLE: Final = re.compile(r'[^"\\\x00-\x1f\x7f\x80-\x9f\u2028\u2029]*')
#: The process part of session ids: ids of the workers of one server differ.
_PROCESS = os.urandom(2).hex().upper()  # renewed in a forked child
_SEQUENCE = itertools.count(1)


@dataclass(slots=True)
class ServerStats:
    """The live counters of one listening server (every connection adds to them)."""

    connections_open: int = 0
    connections_total: int = 0
    #: Connections turned away at the connection cap (``421`` before the greeting).
    connections_refused: int = 0
    messages_accepted: int = 0
    messages_refused: int = 0
    #: Messages whose client left (or ended the transaction) before the end of the content.
    messages_abandoned: int = 0
    #: Recipients of the accepted messages.
    recipients: int = 0
    bytes_received: int = 0
    commands_refused: int = 0
    auth_successes: int = 0
    auth_failures: int = 0
    tls_handshakes: int = 0
    tls_failures: int = 0
    timeouts: int = 0
    hook_errors: int = 0
    #: Refusals because a limit was hit, by the limit's name (``size``, ``recipients``, ...).
    limits: dict[str, int] = field(default_factory=dict)

    def snapshot(self) -> StatsSnapshot:
        """The counters as they are now, in a value that no longer changes."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["limits"] = MappingProxyType(dict(self.limits))
        return StatsSnapshot(**values)


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    """The counters of a server at one moment (see :class:`ServerStats` for each field).

    Snapshots add up (``a + b``), for a total over several servers or worker processes.
    """

    connections_open: int = 0
    connections_total: int = 0
    connections_refused: int = 0
    messages_accepted: int = 0
    messages_refused: int = 0
    messages_abandoned: int = 0
    recipients: int = 0
    bytes_received: int = 0
    commands_refused: int = 0
    auth_successes: int = 0
    auth_failures: int = 0
    tls_handshakes: int = 0
    tls_failures: int = 0
    timeouts: int = 0
    hook_errors: int = 0
    limits: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def __add__(self, other: StatsSnapshot) -> StatsSnapshot:
        if not isinstance(other, StatsSnapshot):
            return NotImplemented
        values: dict[str, Any] = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in fields(self)
            if f.name != "limits"
        }
        limits = dict(self.limits)
        for name, count in other.limits.items():
            limits[name] = limits.get(name, 0) + count
        return StatsSnapshot(**values, limits=MappingProxyType(limits))


def _count_limit(stats: ServerStats, name: str) -> None:
    stats.limits[name] = stats.limits.get(name, 0) + 1


def format_peer(peer: object) -> str:
    """A peer address as log lines show it: ``192.0.2.7:50122``, ``[2001:db8::1]:25``, a Unix
    socket's name, or ``unknown``."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    if isinstance(peer, str) and peer:
        return peer
    return "unknown"


def _field(text: str) -> str:
    """``text`` as a field value: as it is, or quoted."""
    return text if _PLAIN.fullmatch(text) else _quote(text)


def _quote(text: str) -> str:
    if _QUOTABLE.fullmatch(text):
        return f'"{text}"'
    return json.dumps(text, ensure_ascii=False)


def _reply_text(reply: Reply | bytes) -> str:
    if isinstance(reply, Reply):
        return reply.line()
    return reply.decode("utf-8", "replace")


#: The texts of the last reply written in a message line: the reply, its line, and that line
#: quoted. Most messages get the same reply object, so most lines reuse them (one tuple, read and
#: replaced whole, so that threads sharing it never see the parts of two replies).
_last_reply: tuple[Reply | bytes, str, str] = (b"", "", '""')


def _reply_texts(reply: Reply | bytes) -> tuple[str, str]:
    """The reply's line, as it is and quoted as a field value."""
    global _last_reply
    last = _last_reply
    if last[0] is reply:
        return last[1], last[2]
    text = _reply_text(reply)
    quoted = _quote(text)
    _last_reply = (reply, text, quoted)
    return text, quoted


def _reply_code(reply: Reply | bytes) -> int:
    return reply.code if isinstance(reply, Reply) else int(reply[:3])


# The texts of the lines every connection writes. The monitor hands the function and the values
# to the command line's handler, which makes the texts of a batch in a row, where the code and
# data they use stay in the processor's caches (in-process, on W4's connections, the batches
# made and wrote a connection's three lines for 7 us of CPU); or it makes the text at once, for
# a record.


def _connect_text(sid: str, client: str, proxy: str | None) -> str:
    if proxy is None:
        return f"{sid} connect client={client}"
    return f"{sid} connect client={client} proxy={_field(proxy)}"


def _message_text(
    sid: str,
    client: str,
    number: int,
    sender: str | None,
    recipients: int,
    size: int,
    reply: Reply | bytes,
    limit: str | None,
) -> str:
    """The line of a message: accepted (``number``, its number in the session, from 1) or
    refused (``number`` 0)."""
    shown = f"<{sender or ''}>"
    if not _PLAIN.fullmatch(shown):
        shown = _quote(shown)
    quoted = _reply_texts(reply)[1]
    if number:
        line = (
            f"{sid} accepted client={client} id={sid}.{number} from={shown}"
            f" rcpts={recipients} size={size} reply={quoted}"
        )
    else:
        line = (
            f"{sid} refused client={client} from={shown} rcpts={recipients}"
            f" size={size} reply={quoted}"
        )
    return line if limit is None else f"{line} limit={limit}"


def _disconnect_text(
    sid: str,
    client: str,
    seconds: float,
    replies: int,
    messages: int,
    phase: str | None,
    error: str | None,
) -> str:
    line = (
        f"{sid} disconnect client={client} duration={seconds:.3f} replies={replies}"
        f" messages={messages}"
    )
    if phase is not None:
        line += f" vanished={phase}"
    if error is not None:
        line += f" error={_field(error)}"
    return line


class ConnectionMonitor:
    """The monitor of one connection: counts into its server's :class:`ServerStats` and
    writes the event lines. The adapter tells it what happens around the engine (the
    connection, TLS, time-outs); the engine tells it the rest (it is the engine's
    :class:`~typed_smtpd.proto.monitor.Monitor`)."""

    __slots__ = (
        "_client_text",
        "_clients",
        "_clock",
        "_counted",
        "_messages",
        "_open",
        "_sequence",
        "_sid",
        "_started",
        "engine",
        "stats",
    )

    def __init__(
        self,
        stats: ServerStats,
        clock: Callable[[], float],
        clients: ClientTable | None = None,
    ) -> None:
        self.stats: ServerStats = stats
        self._clients = clients
        self._counted: str | None = None  # the address counted in the client table
        self._sequence = next(_SEQUENCE)
        self.engine: ServerEngine[Session, Envelope] | None = None
        self._clock = clock
        self._started = clock()
        self._messages = 0
        self._open = False
        self._client_text: str | None = None
        self._sid: str | None = None

    @property
    def id(self) -> str:
        """The session id that starts each of this connection's log lines (made when first
        needed, then kept: an idle connection holds a number, not a string)."""
        sid = self._sid
        if sid is None:
            sid = self._sid = f"{_PROCESS}{self._sequence:06X}"
        return sid

    # --- around the engine (the adapter) --------------------------------------------------------

    def opened(self) -> None:
        """The connection is accepted."""
        stats = self.stats
        stats.connections_open += 1
        stats.connections_total += 1
        self._open = True

    def turned_away(self, peer: object) -> None:
        """The connection was refused at the connection cap (it was never opened)."""
        stats = self.stats
        stats.connections_refused += 1
        _count_limit(stats, "connections")
        if log.isEnabledFor(_INFO):
            self._emit("reject", _field(format_peer(peer)), limit="connections")

    def tls(self, info: Mapping[str, Any]) -> None:
        """A TLS handshake completed; ``info`` is what ``session.ssl`` holds."""
        self.stats.tls_handshakes += 1
        if log.isEnabledFor(_INFO):
            cipher = info.get("cipher")
            name = cipher[0] if isinstance(cipher, tuple) and cipher else None
            self._emit("tls", self._client(), version=info.get("version"), cipher=name)

    def tls_failed(self, error: BaseException) -> None:
        """A TLS handshake failed."""
        self.stats.tls_failures += 1
        if log.isEnabledFor(_INFO):
            self._emit("tls-failed", self._client(), error=error)

    def timed_out(self, what: str) -> None:
        """A deadline passed (``"idle"``, ``"hook"``); the connection is closed."""
        self.stats.timeouts += 1
        if log.isEnabledFor(_INFO):
            phase = self.engine.phase if self.engine is not None else None
            self._emit("timeout", self._client(), deadline=what, phase=phase)

    def closed(self, *, vanished: bool, error: BaseException | None) -> None:
        """The connection is gone; ``vanished`` when the client closed it (or it broke)."""
        if not self._open:  # turned away at the cap, or told already
            return
        self._open = False
        if self._counted is not None and self._clients is not None:
            self._clients.disconnect(self._counted, self._clock())
        stats = self.stats
        engine = self.engine
        phase = engine.phase if vanished and engine is not None else None
        if phase in ("DATA", "BDAT"):
            stats.messages_abandoned += 1
        if log.isEnabledFor(_INFO):
            self._disconnect_line(engine, phase, error)
        stats.connections_open -= 1  # last: whoever waits for it finds every line written

    def sent(self, data: bytes) -> None:
        """Replies written to the client: one DEBUG line each."""
        for line in data.decode("utf-8", "replace").split("\r\n")[:-1]:
            log.debug("%s << %s", self.id, line)

    # --- the engine's Monitor -------------------------------------------------------------------

    def connected(self) -> Reply | None:
        self._client_text = None  # behind a PROXY proxy, the client is known only now
        clients = self._clients
        host = self._host() if clients is not None else None
        if clients is not None and not clients.exempt(host):
            refusal = clients.connect(host, self._clock())
            if refusal is not None:
                stats = self.stats
                _count_limit(stats, "client-connections")
                stats.connections_refused += 1
                if log.isEnabledFor(_INFO):
                    self._emit("reject", self._client(), limit="client-connections")
                return refusal
            self._counted = host
        if log.isEnabledFor(_INFO):
            self._connect_line()
        return None

    def auth_allowed(self) -> Reply | None:
        clients = self._clients
        if clients is None or self._counted is None:  # not counted: exempt
            return None
        return clients.auth_allowed(self._counted, self._clock())

    def refused(self, verb: str, reply: Reply | bytes, limit: str | None) -> None:
        stats = self.stats
        stats.commands_refused += 1
        if limit is not None:
            _count_limit(stats, limit)
        if verb == "AUTH" and _reply_code(reply) == 535:
            return  # the auth-failed line says it
        if log.isEnabledFor(_INFO):
            self._emit(
                "reject",
                self._client(),
                command=verb,
                reply=_reply_text(reply),
                limit=limit,
            )

    def authenticated(self, mechanism: str, user: str | None, success: bool) -> None:
        if success:
            self.stats.auth_successes += 1
        else:
            self.stats.auth_failures += 1
            if self._clients is not None and self._counted is not None:
                self._clients.auth_failed(self._counted, self._clock())
        if log.isEnabledFor(_INFO):
            event = "auth" if success else "auth-failed"
            self._emit(event, self._client(), mechanism=mechanism, user=user)

    def message(self, reply: Reply | bytes, size: int, limit: str | None) -> None:
        stats = self.stats
        engine = self.engine
        envelope = engine.envelope if engine is not None else None
        recipients = len(envelope.rcpt_tos) if envelope is not None else 0
        code = reply.code if isinstance(reply, Reply) else int(reply[:3])
        if code < 400:
            stats.messages_accepted += 1
            stats.recipients += recipients
            self._messages += 1
        else:
            stats.messages_refused += 1
            if limit is not None:
                _count_limit(stats, limit)
        if log.isEnabledFor(_INFO):
            self._message_line(code < 400, envelope, recipients, reply, size, limit)

    def _message_line(
        self,
        accepted: bool,
        envelope: Envelope | None,
        recipients: int,
        reply: Reply | bytes,
        size: int,
        limit: str | None,
    ) -> None:
        # The line of every message: the line a busy server writes most.
        sid = self._sid or self.id
        client = self._client_text or self._client()
        sender = envelope.mail_from if envelope is not None else None
        number = self._messages if accepted else 0
        args = (sid, client, number, sender, recipients, size, reply, limit)
        taker = _line_taker()
        if taker is not None:
            taker._take_line(_message_text, args)
            return
        fields: dict[str, object] = {
            "smtp_event": "accepted" if accepted else "refused",
            "smtp_session": sid,
            "smtp_client": client,
            "smtp_from": f"<{sender or ''}>",
            "smtp_rcpts": recipients,
            "smtp_size": size,
            "smtp_reply": _reply_texts(reply)[0],
        }
        if accepted:
            fields["smtp_id"] = f"{sid}.{number}"
        if limit is not None:
            fields["smtp_limit"] = limit
        _log_record(_message_text(*args), fields)

    def hook_failed(self, error: Exception) -> None:
        self.stats.hook_errors += 1
        if log.isEnabledFor(_INFO):
            self._emit("hook-error", self._client(), error=type(error).__name__)

    # --- the lines ------------------------------------------------------------------------------

    def _host(self) -> str | None:
        peer = self.engine.peer if self.engine is not None else None
        return str(peer[0]) if isinstance(peer, tuple) and peer else None

    def _client(self) -> str:
        """The client's address as a field value (quoted if it needs to be)."""
        client = self._client_text
        if client is None:
            client = format_peer(self.engine.peer) if self.engine is not None else "unknown"
            client = self._client_text = _field(client)
        return client

    def _connect_line(self) -> None:
        sid = self._sid or self.id
        client = self._client_text or self._client()
        engine = self.engine
        session = engine.session if engine is not None else None
        data = session.proxy_data if session is not None else None
        proxy = None
        if session is not None and data is not None and data.src_addr is not None:
            # Behind a PROXY proxy (not LOCAL, the proxy speaking for itself): its address too.
            proxy = format_peer(session.peer)
        taker = _line_taker()
        if taker is not None:
            taker._take_line(_connect_text, (sid, client, proxy))
            return
        fields: dict[str, object] = {
            "smtp_event": "connect",
            "smtp_session": sid,
            "smtp_client": client,
        }
        if proxy is not None:
            fields["smtp_proxy"] = proxy
        _log_record(_connect_text(sid, client, proxy), fields)

    def _disconnect_line(
        self,
        engine: ServerEngine[Session, Envelope] | None,
        phase: str | None,
        error: BaseException | None,
    ) -> None:
        sid = self._sid or self.id
        client = self._client_text or self._client()
        seconds = self._clock() - self._started
        replies = engine.final_replies if engine is not None else 0
        text = str(error) if error is not None else None
        args = (sid, client, seconds, replies, self._messages, phase, text)
        taker = _line_taker()
        if taker is not None:
            taker._take_line(_disconnect_text, args)
            return
        fields: dict[str, object] = {
            "smtp_event": "disconnect",
            "smtp_session": sid,
            "smtp_client": client,
            "smtp_duration": f"{seconds:.3f}",
            "smtp_replies": replies,
            "smtp_messages": self._messages,
        }
        if phase is not None:
            fields["smtp_vanished"] = phase
        if text is not None:
            fields["smtp_error"] = text
        _log_record(_disconnect_text(*args), fields)

    def _emit(self, event: str, client: str, **values: object) -> None:
        """Write the line of a less frequent event: ``values`` are its fields, in order (those
        that are ``None`` left out)."""
        sid = self._sid or self.id
        line = f"{sid} {event} client={client}"
        fields: dict[str, object] = {
            "smtp_event": event,
            "smtp_session": sid,
            "smtp_client": client,
        }
        for key, value in values.items():
            if value is None:
                continue
            if type(value) is int:
                text = str(value)
            else:
                if not isinstance(value, str):
                    value = str(value)
                text = value if _PLAIN.fullmatch(value) else _quote(value)
            fields["smtp_" + key] = value
            line += f" {key}={text}"
        _log(line, fields)


def _log(line: str, fields: dict[str, object]) -> None:
    """Hand an event line, with its fields, to the handlers of ``mail.log`` (INFO is on).

    The record is what ``log.info(line, extra=fields)`` makes, less its work that gives nothing
    here: the check of the level again, the walk up the stack for the caller (the caller is
    always this module), and the check of each field's name against the record's (``smtp_``
    names are not the record's). Where nothing but the command line's own handler and formatter
    would read the record, they get the line without it (see :func:`_line_taker`)."""
    taker = _line_taker()
    if taker is not None:
        taker._take_line(str, (line,))
        return
    _log_record(line, fields)


def _log_record(line: str, fields: dict[str, object]) -> None:
    """Make the record of an event line and hand it to the handlers of ``mail.log``."""
    record = log.makeRecord(_NAME, _INFO, _FILE, _LINE, line, (), None, "_log_record")
    record.__dict__.update(fields)
    if log.filters or log.disabled:
        log.handle(record)
    else:  # what handle() comes to without filters
        log.callHandlers(record)


def _line_taker() -> DeferredFlushHandler | None:
    """The handler that may take an event's line without its record, if there is one.

    That is when the record would reach one handler only, a :class:`DeferredFlushHandler` with
    no filter whose formatter is a :class:`CachedTimeFormatter` of :data:`LOG_FORMAT`, and be
    made by the standard record factory of the standard logger class, with no logger filter in
    the way: what the command line configures. Nothing else would see the record, and the
    formatter would read only its time, level name, logger name and message, so the handler
    writes the same text from the line's values alone, for a third of the cost. Any other handler,
    filter, formatter or factory (a JSON formatter reading the ``smtp_`` fields, pytest's
    ``caplog``) gets the records."""
    if type(log) is not logging.Logger or log.filters or log.disabled:
        return None
    if logging.getLogRecordFactory() is not logging.LogRecord:
        return None
    found: logging.Handler | None = None
    logger: logging.Logger | None = log
    while logger is not None:
        handlers = logger.handlers
        if handlers:
            if found is not None or len(handlers) != 1:
                return None
            found = handlers[0]
        if not logger.propagate:
            break
        logger = logger.parent
    if type(found) is not DeferredFlushHandler or found.level > _INFO or found.filters:
        return None
    formatter = found.formatter
    if type(formatter) is not CachedTimeFormatter:
        return None
    style = formatter._style
    if type(style) is not logging.PercentStyle or style._fmt != LOG_FORMAT:
        return None
    return None if style._defaults else found  # type: ignore[attr-defined]


_LINE: Final = _log_record.__code__.co_firstlineno


def _after_fork_in_child() -> None:
    global _PROCESS, _SEQUENCE
    # Another process part, which the worker processes of one server (forked one after the
    # other, so with process ids that differ by less than 65,536) never share.
    _PROCESS = f"{(int(_PROCESS, 16) + os.getpid()) & 0xFFFF:04X}"
    _SEQUENCE = itertools.count(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
