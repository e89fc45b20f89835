"""Test doubles for code that sends mail, and for SMTP servers: shipped, real, typed.

What lives here (re-exported from the submodules):

* :class:`FakeSMTPServer`: the real engine over in-memory streams, no port, no thread, and its
  :class:`FakeClient`; :class:`SocketpairSMTPServer` for synchronous clients such as
  :mod:`smtplib`;
* :class:`SocketClient`: the same typed client over a real socket, for any ``host:port``;
* :class:`RecordingHandler` and :class:`ReceivedMessage`: what a server accepted;
* :class:`FaultInjector` with :class:`Rule`, :class:`Stage`, the actions and selectors:
  deterministic fault injection, also from the command line;
* :func:`check_server`: one conformance suite for the fake and for real servers.

:mod:`typed_smtpd.testing.strategies` (hypothesis strategies) and
:mod:`typed_smtpd.testing.plugin` (the pytest plugin) are imported on their own, so that this
package needs neither hypothesis nor pytest.
"""

from __future__ import annotations

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
    "FakeClient",
    "FakeSMTPServer",
    "FaultEvent",
    "FaultInjector",
    "Greylist",
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
    "SocketClient",
    "SocketpairSMTPServer",
    "Stage",
    "Throttle",
    "TranscriptEntry",
    "check_server",
    "format_transcript",
    "parse_rule",
]
