"""Test doubles for code that sends mail, and for SMTP servers: shipped, real, typed.

What lives here (re-exported from the submodules):

* :class:`FakeSMTPServer`: the real engine over in-memory streams, no port, no thread, and its
  :class:`FakeClient`; :class:`SocketpairSMTPServer` for synchronous clients such as
  :mod:`smtplib`;
* :class:`SocketClient`: the same typed client over a real socket, for any ``host:port``;
* :class:`RecordingHandler` and :class:`ReceivedMessage`: what a server accepted;
* :class:`FaultInjector` with :class:`Rule`, :class:`Stage`, the actions and selectors:
  deterministic fault injection, also from the command line;
* :class:`Interception` and :class:`Target`: the application's own :mod:`smtplib` and aiosmtplib
  clients reach a fake server through memory (``server.intercept("smtp.example.com", 587)``);
* :func:`check_server`: one conformance suite for the fake and for real servers;
* :class:`LocalSMTPServer` and :class:`ServerOptions`: a real server on a free local port with
  STARTTLS, implicit TLS and AUTH switches (what the pytest fixtures use).

:mod:`typed_smtpd.testing.strategies` (hypothesis strategies) and
:mod:`typed_smtpd.testing.plugin` (the pytest plugin) are imported on their own, so that this
package needs neither hypothesis nor pytest. The names here are imported on first use, so
importing the package (as the pytest plugin does) costs almost nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from typed_smtpd.testing.client import ClientReply as ClientReply
    from typed_smtpd.testing.client import ReplyFormatError as ReplyFormatError
    from typed_smtpd.testing.client import ServerDisconnected as ServerDisconnected
    from typed_smtpd.testing.client import SMTPTestClient as SMTPTestClient
    from typed_smtpd.testing.client import SocketClient as SocketClient
    from typed_smtpd.testing.client import TranscriptEntry as TranscriptEntry
    from typed_smtpd.testing.client import format_transcript as format_transcript
    from typed_smtpd.testing.conformance import CHECKS as CHECKS
    from typed_smtpd.testing.conformance import Check as Check
    from typed_smtpd.testing.conformance import ConformanceError as ConformanceError
    from typed_smtpd.testing.conformance import check_server as check_server
    from typed_smtpd.testing.fake import FakeClient as FakeClient
    from typed_smtpd.testing.fake import FakeSMTPServer as FakeSMTPServer
    from typed_smtpd.testing.fake import MemoryTransport as MemoryTransport
    from typed_smtpd.testing.fake import SocketpairSMTPServer as SocketpairSMTPServer
    from typed_smtpd.testing.handlers import AcceptAndDrop as AcceptAndDrop
    from typed_smtpd.testing.handlers import Always as Always
    from typed_smtpd.testing.handlers import Delay as Delay
    from typed_smtpd.testing.handlers import Disconnect as Disconnect
    from typed_smtpd.testing.handlers import Drop as Drop
    from typed_smtpd.testing.handlers import DropAfter as DropAfter
    from typed_smtpd.testing.handlers import FaultEvent as FaultEvent
    from typed_smtpd.testing.handlers import FaultInjector as FaultInjector
    from typed_smtpd.testing.handlers import Greylist as Greylist
    from typed_smtpd.testing.handlers import Nth as Nth
    from typed_smtpd.testing.handlers import Probability as Probability
    from typed_smtpd.testing.handlers import ReceivedMessage as ReceivedMessage
    from typed_smtpd.testing.handlers import RecordingHandler as RecordingHandler
    from typed_smtpd.testing.handlers import Respond as Respond
    from typed_smtpd.testing.handlers import Rule as Rule
    from typed_smtpd.testing.handlers import Stage as Stage
    from typed_smtpd.testing.handlers import Throttle as Throttle
    from typed_smtpd.testing.handlers import parse_rule as parse_rule
    from typed_smtpd.testing.intercept import Interception as Interception
    from typed_smtpd.testing.intercept import Target as Target
    from typed_smtpd.testing.server import LocalSMTPServer as LocalSMTPServer
    from typed_smtpd.testing.server import ServerOptions as ServerOptions

__all__ = [
    "CHECKS",
    "AcceptAndDrop",
    "Always",
    "Check",
    "ClientReply",
    "ConformanceError",
    "Delay",
    "Disconnect",
    "Drop",
    "DropAfter",
    "FakeClient",
    "FakeSMTPServer",
    "FaultEvent",
    "FaultInjector",
    "Greylist",
    "Interception",
    "LocalSMTPServer",
    "MemoryTransport",
    "Nth",
    "Probability",
    "ReceivedMessage",
    "RecordingHandler",
    "ReplyFormatError",
    "Respond",
    "Rule",
    "SMTPTestClient",
    "ServerDisconnected",
    "ServerOptions",
    "SocketClient",
    "SocketpairSMTPServer",
    "Stage",
    "Target",
    "Throttle",
    "TranscriptEntry",
    "check_server",
    "format_transcript",
    "parse_rule",
]

_LAZY: Final[dict[str, str]] = {
    "AcceptAndDrop": "typed_smtpd.testing.handlers",
    "Always": "typed_smtpd.testing.handlers",
    "CHECKS": "typed_smtpd.testing.conformance",
    "Check": "typed_smtpd.testing.conformance",
    "ClientReply": "typed_smtpd.testing.client",
    "ConformanceError": "typed_smtpd.testing.conformance",
    "Delay": "typed_smtpd.testing.handlers",
    "Disconnect": "typed_smtpd.testing.handlers",
    "Drop": "typed_smtpd.testing.handlers",
    "DropAfter": "typed_smtpd.testing.handlers",
    "FakeClient": "typed_smtpd.testing.fake",
    "FakeSMTPServer": "typed_smtpd.testing.fake",
    "FaultEvent": "typed_smtpd.testing.handlers",
    "FaultInjector": "typed_smtpd.testing.handlers",
    "Greylist": "typed_smtpd.testing.handlers",
    "Interception": "typed_smtpd.testing.intercept",
    "LocalSMTPServer": "typed_smtpd.testing.server",
    "MemoryTransport": "typed_smtpd.testing.fake",
    "Nth": "typed_smtpd.testing.handlers",
    "Probability": "typed_smtpd.testing.handlers",
    "ReceivedMessage": "typed_smtpd.testing.handlers",
    "RecordingHandler": "typed_smtpd.testing.handlers",
    "ReplyFormatError": "typed_smtpd.testing.client",
    "Respond": "typed_smtpd.testing.handlers",
    "Rule": "typed_smtpd.testing.handlers",
    "SMTPTestClient": "typed_smtpd.testing.client",
    "ServerDisconnected": "typed_smtpd.testing.client",
    "ServerOptions": "typed_smtpd.testing.server",
    "SocketClient": "typed_smtpd.testing.client",
    "SocketpairSMTPServer": "typed_smtpd.testing.fake",
    "Stage": "typed_smtpd.testing.handlers",
    "Target": "typed_smtpd.testing.intercept",
    "Throttle": "typed_smtpd.testing.handlers",
    "TranscriptEntry": "typed_smtpd.testing.client",
    "check_server": "typed_smtpd.testing.conformance",
    "format_transcript": "typed_smtpd.testing.client",
    "parse_rule": "typed_smtpd.testing.handlers",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
