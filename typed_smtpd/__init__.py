"""typed_smtpd: a typed, dataclass-first asyncio SMTP and LMTP server library.

The names most programs need are re-exported here; each lives in the module named in its
documentation (``typed_smtpd.smtp``, ``typed_smtpd.controller`` ...), whose names mirror
aiosmtpd's so that migrating is an import rename.
"""

from typed_smtpd._version import __version__ as __version__
from typed_smtpd.controller import Controller as Controller
from typed_smtpd.controller import UnixSocketController as UnixSocketController
from typed_smtpd.controller import serve as serve
from typed_smtpd.hooks import HookRegistry as HookRegistry
from typed_smtpd.lmtp import LMTP as LMTP
from typed_smtpd.proto.replies import Reply as Reply
from typed_smtpd.session import MISSING as MISSING
from typed_smtpd.session import AuthResult as AuthResult
from typed_smtpd.session import Envelope as Envelope
from typed_smtpd.session import LoginPassword as LoginPassword
from typed_smtpd.session import Session as Session
from typed_smtpd.smtp import SMTP as SMTP

__all__ = [
    "LMTP",
    "MISSING",
    "SMTP",
    "AuthResult",
    "Controller",
    "Envelope",
    "HookRegistry",
    "LoginPassword",
    "Reply",
    "Session",
    "UnixSocketController",
    "__version__",
    "serve",
]
