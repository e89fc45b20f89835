"""An authenticated relay for one domain: the example application of the tutorial.

Clients must log in (PLAIN or LOGIN, over TLS in production); mail for
``example.com`` is stored in a Maildir, every other recipient is refused. The server
sits behind HAProxy, which sends a PROXY protocol header in front of every connection.

The tutorial's doctests import this file and run it against the in-memory fake server.
"""

from __future__ import annotations

import hmac
import logging
import ssl
from collections.abc import Mapping
from typing import Any

from typed_smtpd.handlers import Mailbox
from typed_smtpd.proxy_protocol import ProxyData
from typed_smtpd.session import AuthResult, Envelope, LoginPassword, Session
from typed_smtpd.smtp import SMTP

log = logging.getLogger("relay")


class DomainMailbox(Mailbox):
    """Stores mail for one domain in a Maildir and refuses every other recipient."""

    def __init__(self, mail_dir: str, domain: str) -> None:
        super().__init__(mail_dir)
        self.domain = domain.lower()

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        """Accept ``anything@<domain>``; refuse to relay anywhere else."""
        if address.rpartition("@")[2].lower() != self.domain:
            return "550 5.7.1 Relaying denied"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_PROXY(
        self, server: SMTP, session: Session, envelope: Envelope, proxy_data: ProxyData
    ) -> bool:
        """Log the client address HAProxy passes on; accept every valid header."""
        log.info(
            "client %s:%s via %s",
            proxy_data.src_addr,
            proxy_data.src_port,
            session.peer,
        )
        return True


class PasswordAuthenticator:
    """Checks PLAIN and LOGIN credentials against a fixed table of users."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = {name.encode(): secret.encode() for name, secret in users.items()}

    def __call__(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: object,
    ) -> AuthResult:
        """Succeed when the login exists and the password matches (in constant time)."""
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        known = self._users.get(auth_data.login)
        ok = known is not None and hmac.compare_digest(known, auth_data.password)
        return AuthResult(
            success=ok,
            handled=False,
            auth_data=auth_data.login.decode() if ok else None,
        )


def relay_options(
    users: Mapping[str, str],
    *,
    tls_context: ssl.SSLContext | None,
    proxies: list[str],
) -> dict[str, Any]:
    """The keyword arguments of :class:`~typed_smtpd.smtp.SMTP` for the relay.

    Without a TLS context (in tests) passwords are accepted in clear; in production
    pass one.
    """
    return {
        "authenticator": PasswordAuthenticator(users),
        "auth_required": True,
        "auth_require_tls": tls_context is not None,
        "tls_context": tls_context,
        "require_starttls": tls_context is not None,
        "proxy_protocol_timeout": 5.0,
        "proxy_trusted_networks": proxies,
    }
