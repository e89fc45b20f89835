"""typed_smtpd: a typed, dataclass-first asyncio SMTP and LMTP server library."""

__version__ = "0.1.0"
