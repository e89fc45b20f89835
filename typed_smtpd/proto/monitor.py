"""What the engine tells an observer about one connection: the events an operator counts and logs.

The engine calls a :class:`Monitor` at each event that matters (the greeting, a refused command,
an AUTH outcome, a message's outcome, a hook that failed); the adapter's monitor counts them and
writes the log lines. Everything passed is what the engine has at hand already (the reply object
or line, never a formatted text), so an event costs a method call unless someone looks at it.

No I/O here.
"""

from __future__ import annotations

from typing import Protocol

from typed_smtpd.proto.replies import Reply

__all__ = ["SILENT", "Monitor"]


class Monitor(Protocol):
    """The events of one connection, as the engine reports them."""

    def connected(self) -> Reply | None:
        """The client is to be greeted (after its PROXY header, if one was expected): ``None``
        to greet it, or the reply that turns it away (a limit per client address)."""

    def auth_allowed(self) -> Reply | None:
        """The client sent AUTH: ``None`` to go on, or the reply that refuses it (its address
        failed too often); the connection is then closed."""

    def refused(self, verb: str, reply: Reply | bytes, limit: str | None) -> None:
        """A command was refused (a 4xx or 5xx reply); ``limit`` names the limit it hit."""

    def authenticated(self, mechanism: str, user: str | None, success: bool) -> None:
        """An AUTH exchange ended (``user``: the login name given, if the mechanism has one)."""

    def message(self, reply: Reply | bytes, size: int, limit: str | None) -> None:
        """A message got its final reply (accepted when 2xx); ``size`` in octets."""

    def hook_failed(self, error: Exception) -> None:
        """User code raised ``error`` (or returned something that is no reply)."""


class _Silent:
    """The monitor of an engine nobody observes."""

    __slots__ = ()

    def connected(self) -> Reply | None:
        return None

    def auth_allowed(self) -> Reply | None:
        return None

    def refused(self, verb: str, reply: Reply | bytes, limit: str | None) -> None:
        return None

    def authenticated(self, mechanism: str, user: str | None, success: bool) -> None:
        return None

    def message(self, reply: Reply | bytes, size: int, limit: str | None) -> None:
        return None

    def hook_failed(self, error: Exception) -> None:
        return None


#: A monitor that ignores everything (the engine's default).
SILENT: Monitor = _Silent()
