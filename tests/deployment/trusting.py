"""A Mailbox for the command line that accepts PROXY headers only from the given networks.

The command line has no option for ``proxy_trusted_networks``; this handler brings it through
the ``server_class_for`` hook that :func:`typed_smtpd.main` consults::

    python -m typed_smtpd --proxy-protocol 5 \\
        -c tests.deployment.trusting.TrustingMailbox ./Maildir 198.18.1.1/32

Everything else is :class:`~typed_smtpd.handlers.Mailbox` unchanged.
"""

from __future__ import annotations

from argparse import ArgumentParser
from collections.abc import Callable
from typing import Any

from typing_extensions import Self

from typed_smtpd.handlers import Mailbox
from typed_smtpd.smtp import SMTP


class TrustingMailbox(Mailbox):
    """:class:`Mailbox` whose connections take PROXY headers from ``trusted`` networks only."""

    def __init__(self, mail_dir: str, trusted: tuple[str, ...]) -> None:
        super().__init__(mail_dir)
        self.trusted = trusted

    @classmethod
    def from_cli(cls, parser: ArgumentParser, *args: str) -> Self:
        """The Maildir's path, then one or more trusted addresses or networks."""
        if len(args) < 2:
            parser.error("TrustingMailbox takes a Maildir path and trusted networks")
        return cls(args[0], tuple(args[1:]))

    def server_class_for(self, base: type[SMTP]) -> Callable[..., SMTP]:
        """``base`` with ``proxy_trusted_networks`` set to this handler's networks."""
        trusted = self.trusted

        class Trusting(base):  # type: ignore[valid-type,misc]
            def __init__(self, handler: object, **options: Any) -> None:
                super().__init__(handler, proxy_trusted_networks=trusted, **options)

        return Trusting
