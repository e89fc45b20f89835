"""The ``smtpd`` fixture: ``typed_smtpd`` under its short name.

The plugin (:mod:`typed_smtpd.testing.plugin`) registers this module only when no other plugin
provides a fixture named ``smtpd`` (smtpdfix does), so that installing both never silently
replaces the other's fixture.

What must not live here: anything but this one fixture.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from typed_smtpd.testing.server import LocalSMTPServer

__all__ = ["smtpd"]


@pytest.fixture
def smtpd(typed_smtpd: LocalSMTPServer) -> LocalSMTPServer:
    """A real SMTP server for this test, on 127.0.0.1 and a free port (``typed_smtpd``)."""
    return typed_smtpd
