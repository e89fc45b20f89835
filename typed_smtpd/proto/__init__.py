"""The sans-IO protocol core of typed_smtpd.

Bytes go in, typed events and reply values come out; nothing here imports asyncio, ssl, socket or
threading (a test enforces it), so every parser and the state table can be driven directly by
property tests and fuzzers.
"""

from typed_smtpd.proto.commands import Command as Command
from typed_smtpd.proto.commands import parse_command as parse_command
from typed_smtpd.proto.commands import parse_params as parse_params
from typed_smtpd.proto.commands import parse_path as parse_path
from typed_smtpd.proto.framing import NEED_DATA as NEED_DATA
from typed_smtpd.proto.framing import Receiver as Receiver
from typed_smtpd.proto.limits import Limits as Limits
from typed_smtpd.proto.replies import Reply as Reply
from typed_smtpd.proto.state import TRANSITIONS as TRANSITIONS
from typed_smtpd.proto.state import State as State
from typed_smtpd.proto.state import Verb as Verb

__all__ = [
    "NEED_DATA",
    "TRANSITIONS",
    "Command",
    "Limits",
    "Receiver",
    "Reply",
    "State",
    "Verb",
    "parse_command",
    "parse_params",
    "parse_path",
]
