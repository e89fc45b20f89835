"""LMTP (RFC 2033): LHLO, and one final reply per accepted recipient after DATA and BDAT."""

from __future__ import annotations

import smtplib

import pytest

from tests.support import Recorder, connected, running
from typed_smtpd.lmtp import LMTP
from typed_smtpd.session import Envelope, Session
from typed_smtpd.smtp import SMTP

pytestmark = pytest.mark.integration


class PerRecipient:
    """Refuses one mailbox at delivery time, as a full mailbox would be."""

    def __init__(self) -> None:
        self.delivered: list[str] = []

    async def handle_DATA_recipient(
        self, server: SMTP, session: Session, envelope: Envelope, recipient: str
    ) -> str:
        if recipient.startswith("full@"):
            return "452 4.2.2 Mailbox full"
        self.delivered.append(recipient)
        return f"250 2.0.0 <{recipient}> delivered"


def test_three_recipients_one_refused_gives_three_replies() -> None:
    handler = PerRecipient()
    with running(handler, server_class=LMTP) as server:
        client = smtplib.LMTP(server.hostname, server.port)
        try:
            assert client.ehlo("client.test")[0] == 250  # smtplib.LMTP sends LHLO
            assert client.mail("a@b.test")[0] == 250
            for rcpt in ("one@d.test", "full@d.test", "two@d.test"):
                assert client.rcpt(rcpt)[0] == 250
            # smtplib reads the first final reply; the other two follow on the same stream.
            first = client.data(b"Subject: lmtp\r\n\r\nhello\r\n")
            replies = [first, client.getreply(), client.getreply()]
        finally:
            client.close()
    assert replies == [
        (250, b"2.0.0 <one@d.test> delivered"),
        (452, b"4.2.2 Mailbox full"),
        (250, b"2.0.0 <two@d.test> delivered"),
    ]
    assert handler.delivered == ["one@d.test", "two@d.test"]


def test_lhlo_and_refused_helo_ehlo() -> None:
    with running(server_class=LMTP) as server, connected(server) as c:
        assert c.cmd("HELO x.test")[0] == 500
        assert c.cmd("EHLO x.test")[0] == 500
        assert c.cmd("LHLO")[0] == 501
        code, lines = c.cmd("LHLO client.test")
        assert code == 250
        assert {"PIPELINING", "ENHANCEDSTATUSCODES", "CHUNKING"} <= set(lines.splitlines())


def test_replies_follow_rcpt_order_with_a_data_hook() -> None:
    recorder = Recorder()
    with running(recorder, server_class=LMTP) as server, connected(server) as c:
        c.cmd("LHLO client.test")
        c.cmd("MAIL FROM:<a@b.test>")
        for rcpt in ("x@d.test", "y@d.test", "z@d.test"):
            assert c.cmd(f"RCPT TO:<{rcpt}>")[0] == 250
        c.cmd("DATA")
        c.send(b"body\r\n.\r\n")
        assert [reply for reply in c.replies(3)] == [(250, "OK")] * 3
        assert c.cmd("NOOP")[0] == 250
    assert recorder.envelopes[0].rcpt_tos == ["x@d.test", "y@d.test", "z@d.test"]


def test_no_hooks_and_bdat_give_a_reply_per_recipient() -> None:
    with running(object(), server_class=LMTP) as server, connected(server) as c:
        c.cmd("LHLO client.test")
        c.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@d.test>\r\nRCPT TO:<y@d.test>\r\n")
        c.replies(3)
        c.send(b"BDAT 7 LAST\r\nhello\r\n")
        assert c.replies(2) == [(250, "2.1.5 <x@d.test> OK"), (250, "2.1.5 <y@d.test> OK")]


class Refusing:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "554 5.6.0 Content refused"


def test_a_refusing_data_hook_answers_for_every_recipient() -> None:
    with running(Refusing(), server_class=LMTP) as server, connected(server) as c:
        c.cmd("LHLO client.test")
        c.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@d.test>\r\nRCPT TO:<y@d.test>\r\nDATA\r\n")
        c.replies(4)
        c.send(b"body\r\n.\r\n")
        assert c.replies(2) == [(554, "5.6.0 Content refused")] * 2


def test_a_refused_message_gets_a_reply_per_recipient() -> None:
    with running(server_class=LMTP, data_size_limit=10) as server, connected(server) as c:
        c.cmd("LHLO client.test")
        c.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@d.test>\r\nRCPT TO:<y@d.test>\r\nDATA\r\n")
        c.replies(4)
        c.send(b"far more than ten octets\r\n.\r\n")
        assert [code for code, _ in c.replies(2)] == [552, 552]
        assert c.cmd("NOOP")[0] == 250


class Exploding:
    async def handle_DATA_recipient(
        self, server: SMTP, session: Session, envelope: Envelope, recipient: str
    ) -> str:
        if recipient.startswith("boom@"):
            raise RuntimeError("internal")
        return "250 2.0.0 fine"


def test_a_failing_recipient_hook_still_answers_everyone() -> None:
    with running(Exploding(), server_class=LMTP) as server, connected(server) as c:
        c.cmd("LHLO client.test")
        c.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<boom@d.test>\r\nRCPT TO:<y@d.test>\r\n")
        c.replies(3)
        c.send(b"DATA\r\nbody\r\n.\r\n")
        assert [code for code, _ in c.replies(3)] == [354, 451, 250]
