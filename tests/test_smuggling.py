"""SMTP smuggling: no public end-of-data variant ever yields a second message or a reply to a
smuggled command, in DATA or BDAT, under every bare-newline policy (real sockets)."""

from __future__ import annotations

import pytest

from tests.support import RECORDERS, Recorder, connected, running
from typed_smtpd.testing.strategies import SMUGGLING_SEQUENCES

pytestmark = pytest.mark.integration

SMUGGLED = (
    b"MAIL FROM:<smuggled@evil.test>\r\nRCPT TO:<victim@b.test>\r\nDATA\r\n"
    b"Subject: 2\r\n\r\nsecond\r\n"
)


@pytest.fixture(params=sorted(RECORDERS))
def recorder(request: pytest.FixtureRequest) -> Recorder:
    """Each case with a handler that takes the whole message, and one that streams it."""
    return RECORDERS[request.param]()


def payload(sequence: bytes) -> bytes:
    return b"Subject: 1\r\n\r\nfirst" + sequence + SMUGGLED


@pytest.mark.parametrize("policy", ["reject", "normalize", "accept"])
@pytest.mark.parametrize("sequence", SMUGGLING_SEQUENCES, ids=repr)
def test_data_smuggling(sequence: bytes, policy: str, recorder: Recorder) -> None:
    with running(recorder, bare_newline=policy) as server, connected(server) as c:
        c.send(b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
        assert [code for code, _ in c.replies(4)] == [250, 250, 250, 354]
        c.send(payload(sequence) + b".\r\nQUIT\r\n")
        final, _ = c.reply()
        # Either the whole thing is one (refused or accepted) message, then QUIT is answered:
        # nothing in between, so no smuggled command was ever answered.
        assert final in (250, 550)
        assert c.reply()[0] == 221
        assert c.is_closed()
    assert len(recorder.envelopes) <= 1
    for envelope in recorder.envelopes:
        assert envelope.mail_from == "a@b.test"
        assert b"second" in envelope.original_content  # type: ignore[operator]
    if policy == "reject":
        assert recorder.envelopes == []


@pytest.mark.parametrize("sequence", SMUGGLING_SEQUENCES, ids=repr)
def test_bdat_content_is_never_a_terminator(sequence: bytes, recorder: Recorder) -> None:
    chunk = payload(sequence) + b"\r\n.\r\n"
    with running(recorder, bare_newline="accept") as server, connected(server) as c:
        c.send(
            b"EHLO client.test\r\nMAIL FROM:<a@b.test> BODY=BINARYMIME\r\nRCPT TO:<c@d.test>\r\n"
        )
        c.replies(3)
        c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"QUIT\r\n")
        assert c.reply()[0] == 250
        assert c.reply()[0] == 221
    (envelope,) = recorder.envelopes
    assert envelope.content == chunk


def test_pipelined_second_message_after_real_end_is_a_real_message(recorder: Recorder) -> None:
    """The hannob/smtpsmug pipelining check: after a true CRLF.CRLF the next transaction is
    answered in order, and both messages keep their own envelopes."""
    with running(recorder) as server, connected(server) as c:
        c.send(
            b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"
            b"one\r\n.\r\nMAIL FROM:<e@f.test>\r\nRCPT TO:<g@h.test>\r\nDATA\r\ntwo\r\n.\r\n"
        )
        assert [code for code, _ in c.replies(8)] == [250, 250, 250, 354, 250, 250, 250, 354]
        assert c.reply()[0] == 250
    assert [(e.mail_from, e.content) for e in recorder.envelopes] == [
        ("a@b.test", b"one\r\n"),
        ("e@f.test", b"two\r\n"),
    ]


def test_dot_edge_cases(recorder: Recorder) -> None:
    with running(recorder) as server, connected(server) as c:
        c.cmd("EHLO client.test")
        for body in (b"..\r\n", b".\r\n"):
            c.cmd("MAIL FROM:<a@b.test>")
            c.cmd("RCPT TO:<c@d.test>")
            c.cmd("DATA")
            c.send(body)
            if body != b".\r\n":
                c.send(b".\r\n")
            assert c.reply()[0] == 250
    assert [e.content for e in recorder.envelopes] == [b".\r\n", b""]
