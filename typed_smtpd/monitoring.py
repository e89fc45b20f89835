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

from typed_smtpd.proto.clients import ClientTable
from typed_smtpd.proto.replies import Reply

if TYPE_CHECKING:
    from typed_smtpd.proto.engine import ServerEngine
    from typed_smtpd.session import Envelope, Session

__all__ = ["ConnectionMonitor", "ServerStats", "StatsSnapshot", "format_peer"]

log: logging.Logger = logging.getLogger("mail.log")

_INFO: Final = logging.INFO
#: A value written as it is; anything else is quoted (JSON string escapes, so no control
#: character of a client's ever reaches the log as such).
_PLAIN: Final = re.compile(r"[\w.:@<>\[\]/+=,-]+")
#: Text that needs no escape inside double quotes.
_QUOTABLE: Final = re.compile(r'[^"\\\x00-\x1f\x7f\x80-\x9f\u2028\u2029]*')
#: The process part of session ids: ids of the workers of one server differ.
_PROCESS: Final = os.urandom(2).hex().upper()
_SEQUENCE: Final = itertools.count(1)


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


def _reply_code(reply: Reply | bytes) -> int:
    return reply.code if isinstance(reply, Reply) else int(reply[:3])


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

    @property
    def id(self) -> str:
        """The session id that starts each of this connection's log lines (made when needed:
        an idle connection holds a number, not a string)."""
        return f"{_PROCESS}{self._sequence:06X}"

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
            self._emit(
                "disconnect",
                self._client(),
                duration=f"{self._clock() - self._started:.3f}",
                replies=engine.final_replies if engine is not None else 0,
                messages=self._messages,
                vanished=phase,
                error=error,
            )
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
            engine = self.engine
            session = engine.session if engine is not None else None
            data = session.proxy_data if session is not None else None
            proxied = data is not None and data.src_addr is not None  # LOCAL: the proxy itself
            self._emit(
                "connect",
                self._client(),
                proxy=format_peer(session.peer) if proxied and session else None,
            )
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
        # The line of every message: written out here rather than through _emit, it costs a
        # third less.
        sid, client = self.id, self._client()
        sender = f"<{envelope.mail_from}>" if envelope is not None else "<>"
        text = _reply_text(reply)
        event = "accepted" if accepted else "refused"
        extra: dict[str, object] = {
            "smtp_event": event,
            "smtp_session": sid,
            "smtp_client": client,
            "smtp_from": sender,
            "smtp_rcpts": recipients,
            "smtp_size": size,
            "smtp_reply": text,
        }
        if accepted:
            message_id = extra["smtp_id"] = f"{sid}.{self._messages}"
            head = f"{sid} accepted client={client} id={message_id}"
        else:
            head = f"{sid} refused client={client}"
        if not _PLAIN.fullmatch(sender):
            sender = _quote(sender)
        line = f"{head} from={sender} rcpts={recipients} size={size} reply={_quote(text)}"
        if limit is not None:
            extra["smtp_limit"] = limit
            line += f" limit={limit}"
        log.info(line, extra=extra)

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

    def _emit(self, event: str, client: str, **values: object) -> None:
        sid = self.id
        parts = [sid, event, f"client={client}"]
        extra: dict[str, object] = {"smtp_event": event, "smtp_session": sid, "smtp_client": client}
        for key, value in values.items():
            if value is None:
                continue
            if type(value) is int:
                text = str(value)
            else:
                if not isinstance(value, str):
                    value = str(value)
                text = value if _PLAIN.fullmatch(value) else _quote(value)
            extra["smtp_" + key] = value
            parts.append(f"{key}={text}")
        log.info(" ".join(parts), extra=extra)
