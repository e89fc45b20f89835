"""Streamed message content: the ``handle_DATA_stream`` hook, in the engine and over sockets.

The engine tests drive :class:`~typed_smtpd.proto.engine.ServerEngine` by hand as a synchronous
adapter would, feeding the wire in arbitrary splits; the property tests compare each streamed
dialog with the same dialog delivered buffered (``handle_DATA``), reply for reply and byte for
byte. The socket tests cover what only the asyncio adapter does: backpressure, a client that
vanishes, the hook registry's choice between the two hooks.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import warnings
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import running
from typed_smtpd.controller import Controller
from typed_smtpd.hooks import HookRegistry
from typed_smtpd.lmtp import LMTP
from typed_smtpd.proto import replies as R
from typed_smtpd.proto.data import ContentFilter, dot_stuff, process_content
from typed_smtpd.proto.engine import (
    CLOSED,
    NEED_DATA,
    CallHook,
    EngineConfig,
    ServerEngine,
    StreamMessage,
)
from typed_smtpd.proto.framing import STREAM_PIECE
from typed_smtpd.proto.limits import BareNewlinePolicy, Limits
from typed_smtpd.proto.replies import Reply
from typed_smtpd.proto.stream import END
from typed_smtpd.session import Envelope, Session
from typed_smtpd.smtp import SMTP
from typed_smtpd.stream import (
    MAX_BUFFERED,
    MessageAbandoned,
    MessageRefused,
    MessageStream,
    MessageTooLarge,
    StreamError,
)
from typed_smtpd.testing.strategies import chunked, message_bodies

COMMANDS = frozenset({"HELO", "EHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT"})
HEAD = b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n"


def engine_for(hook: str, *, limits: Limits | None = None, lmtp: bool = False) -> Any:
    commands = COMMANDS | {"LHLO"} - {"HELO", "EHLO"} if lmtp else COMMANDS
    config = EngineConfig(
        hostname="mx.test",
        ident="ESMTP",
        limits=limits or Limits(),
        lmtp=lmtp,
        hooks=frozenset({hook}),
        commands=frozenset(commands),
    )
    return ServerEngine(config, new_session=Session, new_envelope=Envelope, clock=lambda: 0.0)


class Outcome:
    def __init__(self) -> None:
        self.out = b""
        self.messages: list[bytes] = []
        self.errors: list[StreamError] = []


def run_streamed(
    parts: Sequence[bytes],
    *,
    limits: Limits | None = None,
    reply: object = "250 OK",
    stop_after: int | None = None,
    eof: bool = False,
    lmtp: bool = False,
) -> Outcome:
    """Drive a streaming engine: the "hook" takes every piece (or stops after ``stop_after``
    pieces) and returns ``reply``."""
    engine = engine_for("handle_DATA_stream", limits=limits, lmtp=lmtp)
    outcome = Outcome()
    reading: list[bytes] | None = None
    engine.start()
    feed: list[bytes | None] = [*parts, None] if eof else list(parts)
    for part in feed:
        if part is None:
            engine.receive_eof()
        else:
            engine.receive_data(part)
        while True:
            if reading is not None:
                if stop_after is not None and len(reading) >= stop_after:
                    item: object = END
                else:
                    try:
                        item = engine.stream_next()
                    except StreamError as error:
                        outcome.errors.append(error)
                        reading = None
                        engine.resume(reply)
                        continue
                if item is NEED_DATA:
                    break
                if item is END:
                    outcome.messages.append(b"".join(reading))
                    reading = None
                    engine.resume(reply)
                    continue
                assert isinstance(item, bytes) and item, item
                reading.append(item)
                continue
            request = engine.next_request()
            if request is NEED_DATA or request is CLOSED:
                break
            assert isinstance(request, StreamMessage), request
            reading = []
    outcome.out = engine.data_to_send()
    return outcome


def run_buffered(
    parts: Sequence[bytes], *, limits: Limits | None = None, lmtp: bool = False
) -> Outcome:
    engine = engine_for("handle_DATA", limits=limits, lmtp=lmtp)
    outcome = Outcome()
    engine.start()
    for part in parts:
        engine.receive_data(part)
        while True:
            request = engine.next_request()
            if request is NEED_DATA or request is CLOSED:
                break
            assert isinstance(request, CallHook) and request.name == "handle_DATA", request
            outcome.messages.append(engine.envelope.original_content)
            engine.resume("250 OK")
    outcome.out = engine.data_to_send()
    return outcome


def split(wire: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({cut % (len(wire) + 1) for cut in cuts})
    return [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True) if b > a]


def data_wire(content: bytes) -> bytes:
    if not content.endswith(b"\r\n"):
        content += b"\r\n"
    return HEAD + b"DATA\r\n" + dot_stuff(content) + b".\r\nNOOP\r\nQUIT\r\n"


def bdat_wire(chunks: Sequence[bytes]) -> bytes:
    wire = HEAD
    for index, chunk in enumerate(chunks):
        last = " LAST" if index == len(chunks) - 1 else ""
        wire += f"BDAT {len(chunk)}{last}\r\n".encode() + chunk
    return wire + b"NOOP\r\nQUIT\r\n"


# --- the content filter -------------------------------------------------------------------------

content_bytes = st.lists(
    st.sampled_from([b"a", b"b", b".", b"..", b"\r\n", b"\r", b"\n", b"\x00", b" ", b"\r\n."]),
    max_size=60,
).map(b"".join)
policies = st.sampled_from(["reject", "normalize", "accept"])
line_limits = st.sampled_from([4, 8, 1001, 1 << 20])


@given(
    content_bytes, st.lists(st.integers(0, 200), max_size=6), policies, line_limits, st.booleans()
)
def test_filter_in_pieces_equals_whole(
    raw: bytes, cuts: list[int], policy: BareNewlinePolicy, limit: int | None, unstuff: bool
) -> None:
    expected = process_content(raw, policy=policy, line_length_limit=limit, unstuff=unstuff)
    content_filter = ContentFilter(policy=policy, line_length_limit=limit, unstuff=unstuff)
    outputs: list[bytes | Reply] = [content_filter.feed(piece) for piece in split(raw, cuts)]
    outputs.append(content_filter.finish())
    refusals = [output for output in outputs if isinstance(output, Reply)]
    if isinstance(expected, Reply):  # the refusal at the end is the one buffered content gets
        assert refusals and content_filter.refusal == expected
    else:
        assert not refusals
        assert b"".join(o for o in outputs if isinstance(o, bytes)) == expected


# --- the engine: streamed equals buffered -------------------------------------------------------

limits_strategy = st.builds(
    Limits,
    bare_newline=policies,
    line_length_limit=line_limits,
    data_size_limit=st.sampled_from([None, 40, 400]),
)


@settings(max_examples=150)
@given(content_bytes, st.lists(st.integers(0, 400), max_size=8), limits_strategy)
def test_streamed_data_equals_buffered(content: bytes, cuts: list[int], limits: Limits) -> None:
    parts = split(data_wire(content), cuts)
    streamed = run_streamed(parts, limits=limits)
    buffered = run_buffered([b"".join(parts)], limits=limits)
    assert streamed.out == buffered.out
    assert streamed.messages == buffered.messages


@settings(max_examples=150)
@given(
    st.lists(content_bytes, min_size=1, max_size=4),
    st.lists(st.integers(0, 400), max_size=8),
    limits_strategy,
)
def test_streamed_bdat_equals_buffered(
    chunks: list[bytes], cuts: list[int], limits: Limits
) -> None:
    parts = split(bdat_wire(chunks), cuts)
    streamed = run_streamed(parts, limits=limits)
    buffered = run_buffered([b"".join(parts)], limits=limits)
    assert streamed.out == buffered.out
    assert streamed.messages == buffered.messages


@settings(max_examples=60)
@given(st.binary(min_size=1, max_size=3000), st.lists(st.integers(0, 4000), max_size=10))
def test_stored_bytes_equal_sent_across_splits(body: bytes, cuts: list[int]) -> None:
    """Arbitrary octets (bare newlines and NUL included, accepted as sent): the streamed
    message is what the client meant, for DATA and for BDAT, however the reads fall."""
    limits = Limits(bare_newline="accept", line_length_limit=1 << 20)
    content = body if body.endswith(b"\r\n") else body + b"\r\n"
    data = run_streamed(split(data_wire(content), cuts), limits=limits)
    assert data.messages == [content]
    bdat = run_streamed(split(bdat_wire([body[:700], body[700:]]), cuts), limits=limits)
    assert bdat.messages == [body]


def test_pieces_come_as_the_bytes_arrive() -> None:
    engine = engine_for("handle_DATA_stream", limits=Limits(line_length_limit=1 << 20))
    engine.start()
    engine.receive_data(HEAD + b"DATA\r\n")
    assert isinstance(engine.next_request(), StreamMessage)
    assert engine.stream_next() is NEED_DATA
    engine.receive_data(b"first line\r\n..second")
    assert engine.stream_next() is NEED_DATA  # a piece is at least STREAM_PIECE octets
    filler = b"x" * STREAM_PIECE
    engine.receive_data(filler)
    first = engine.stream_next()
    assert isinstance(first, bytes) and first.startswith(b"first line\r\n.second")
    assert len(first) == len(b"first line\r\n.second") + STREAM_PIECE - 4  # ".CRLF"?
    assert engine.stream_next() is NEED_DATA
    engine.receive_data(b"\r\n.\r\n")
    rest = engine.stream_next()
    assert isinstance(rest, bytes) and first + rest == b"first line\r\n.second" + filler + b"\r\n"
    assert engine.stream_next() is END
    engine.resume("250 Stored")
    assert engine.next_request() is NEED_DATA
    assert engine.data_to_send().endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n250 Stored\r\n")


def test_too_large_is_told_at_once_and_answered_552_at_the_end() -> None:
    limits = Limits(data_size_limit=100_000, line_length_limit=1 << 20)
    engine = engine_for("handle_DATA_stream", limits=limits)
    engine.start()
    engine.receive_data(HEAD + b"DATA\r\n" + b"x" * 98_000 + b"\r\n")
    assert isinstance(engine.next_request(), StreamMessage)
    assert engine.stream_next() == b"x" * 97_998  # CRLF and all but ".CRLF"-sized tail wait
    engine.receive_data(b"y" * 100_000)
    with pytest.raises(MessageTooLarge) as raised:
        engine.stream_next()
    assert raised.value.reply is not None and raised.value.reply.code == 552
    with pytest.raises(MessageTooLarge):  # and again, on every later read
        engine.stream_next()
    engine.resume("250 ignored")  # the hook gave up; the rest is read and dropped
    assert engine.next_request() is NEED_DATA
    assert b"552" not in engine.data_to_send()  # not before the end of the content
    engine.receive_data(b"\r\n.\r\nNOOP\r\n")
    assert engine.next_request() is NEED_DATA
    out = engine.data_to_send()
    assert out.startswith(b"552 5.3.4") and out.endswith(b"250 2.0.0 OK\r\n")


@pytest.mark.parametrize(
    ("policy", "content", "code"),
    [("reject", b"bare\nLF\r\n", b"550 5.6.0"), ("reject", b"x" * 1200 + b"\r\n", b"500")],
)
def test_refused_content_raises_and_gets_the_buffered_reply(
    policy: BareNewlinePolicy, content: bytes, code: bytes
) -> None:
    outcome = run_streamed([data_wire(content)], limits=Limits(bare_newline=policy))
    assert [type(error) for error in outcome.errors] == [MessageRefused]
    assert outcome.messages == []
    assert code in outcome.out and b"250 ignored" not in outcome.out


def test_a_hook_that_stops_early_has_the_rest_read_and_dropped() -> None:
    content = b"".join(b"line %d\r\n" % n for n in range(200))
    parts = split(data_wire(content), range(100, 3000, 97))
    outcome = run_streamed(parts, stop_after=2, reply="250 Early")
    assert outcome.out.count(b"250 Early") == 1
    assert outcome.out.endswith(b"250 Early\r\n250 2.0.0 OK\r\n221 2.0.0 Bye\r\n")


def test_the_client_vanishing_abandons_the_message() -> None:
    outcome = run_streamed([HEAD + b"DATA\r\nSubject: half\r\n\r\npart"], eof=True)
    assert [type(error) for error in outcome.errors] == [MessageAbandoned]
    assert outcome.messages == []
    assert not outcome.out.endswith(b"250 OK\r\n")


def test_rset_between_bdat_chunks_abandons_the_message() -> None:
    wire = HEAD + b"BDAT 5\r\nhelloRSET\r\nBDAT 3 LAST\r\nabcQUIT\r\n"
    outcome = run_streamed([wire])
    assert [type(error) for error in outcome.errors] == [MessageAbandoned]
    assert outcome.messages == []
    assert b"250 2.0.0 5 octets received\r\n250 2.0.0 OK\r\n503" in outcome.out


def test_bdat_too_large_midway_refuses_that_chunk() -> None:
    limits = Limits(data_size_limit=10)
    wire = HEAD + b"BDAT 6\r\nabcdefBDAT 6\r\nghijklNOOP\r\n"
    outcome = run_streamed([wire], limits=limits)
    assert [type(error) for error in outcome.errors] == [MessageTooLarge]
    too_large = R.DATA_TOO_LARGE.line().encode()
    assert outcome.out.endswith(b"6 octets received\r\n" + too_large + b"\r\n250 2.0.0 OK\r\n")


def test_lmtp_stream_hook_may_answer_each_recipient() -> None:
    wire = (
        b"LHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<one@d.test>\r\nRCPT TO:<two@d.test>\r\n"
        b"DATA\r\nhi\r\n.\r\n"
    )
    outcome = run_streamed([wire], lmtp=True, reply=["250 one stored", "452 two is full"])
    assert outcome.out.endswith(b"250 one stored\r\n452 two is full\r\n")
    again = run_streamed([wire], lmtp=True, reply="250 both")
    assert again.out.endswith(b"250 both\r\n250 both\r\n")
    wrong = run_streamed([wire], lmtp=True, reply=["250 one"])
    assert wrong.out.endswith((R.INTERNAL_ERROR.line() + "\r\n").encode() * 2)


# --- the hook registry --------------------------------------------------------------------------


class Streaming:
    async def handle_DATA_stream(
        self, server: SMTP, session: Session, envelope: Envelope, stream: MessageStream
    ) -> str:
        return "250 streamed"


class BufferedOverride(Streaming):
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 buffered"


class Both:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 buffered"

    async def handle_DATA_stream(
        self, server: SMTP, session: Session, envelope: Envelope, stream: MessageStream
    ) -> str:
        return "250 streamed"


class TurnedOff(Both):
    handle_DATA_stream = None  # type: ignore[assignment]


def test_the_more_derived_data_hook_wins() -> None:
    hooks = HookRegistry(BufferedOverride())
    assert hooks.data is not None and hooks.data_stream is None
    hooks = HookRegistry(TurnedOff())
    assert hooks.data is not None and hooks.data_stream is None


def test_a_class_defining_both_streams_and_is_warned() -> None:
    with pytest.warns(UserWarning, match="both defined: messages stream to handle_DATA_stream"):
        hooks = HookRegistry(Both())
    assert hooks.data is None and hooks.data_stream is not None


def test_a_sync_stream_hook_is_refused() -> None:
    class Sync:
        def handle_DATA_stream(self, server: Any, session: Any, envelope: Any, stream: Any) -> str:
            return "250 OK"

    with pytest.raises(TypeError, match="must be a coroutine function"):
        HookRegistry(Sync())


# --- over sockets -------------------------------------------------------------------------------


def dialog(port: int, wire: bytes, *, read_until: bytes = b"221", close: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(wire)
        received = b""
        while read_until not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


class Collecting:
    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.errors: list[StreamError] = []
        self.pieces = 0

    async def handle_DATA_stream(
        self, server: SMTP, session: Session, envelope: Envelope, stream: MessageStream
    ) -> str:
        received = bytearray()
        try:
            async for piece in stream:
                self.pieces += 1
                received += piece
        except StreamError as error:
            self.errors.append(error)
            raise
        self.messages.append(bytes(received))
        return f"250 Got {stream.size} octets"


@pytest.fixture
def collecting() -> Any:
    handler = Collecting()
    controller = Controller(handler, hostname="127.0.0.1", port=0, data_size_limit=4_000_000)
    controller.start()
    try:
        yield handler, controller.port
    finally:
        controller.stop()


def test_a_large_message_streams_over_a_socket(collecting: Any) -> None:
    handler, port = collecting
    content = b"".join(
        b".line %07d of the message, dot-stuffed on the wire\r\n" % n for n in range(40_000)
    )
    replies = dialog(port, data_wire(content))
    assert f"250 Got {len(content)} octets".encode() in replies
    assert handler.messages == [content]
    assert handler.pieces > 1


def test_too_large_over_a_socket_keeps_the_session(collecting: Any) -> None:
    handler, port = collecting
    replies = dialog(port, data_wire(b"z" * 998 + b"\r\n"))
    assert b"250 Got 1000 octets" in replies
    big = b"y" * 998 + b"\r\n"
    replies = dialog(port, data_wire(big * 5000))
    assert b"552 5.3.4" in replies and replies.endswith(b"250 2.0.0 OK\r\n221 2.0.0 Bye\r\n")
    assert [type(error) for error in handler.errors] == [MessageTooLarge]


def test_a_client_vanishing_midway_reaches_the_hook(collecting: Any) -> None:
    handler, port = collecting
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(HEAD + b"DATA\r\n" + b"partial content\r\n" * 1000)
        while b"354" not in sock.recv(65536):
            pass
    for _ in range(200):
        if handler.errors:
            break
        threading.Event().wait(0.01)
    assert [type(error) for error in handler.errors] == [MessageAbandoned]
    assert handler.messages == []


class Stalling:
    """Reads one piece, then measures what the connection holds while it does not read."""

    def __init__(self) -> None:
        self.held: list[int] = []
        self.release = asyncio.Event()
        self.total = 0

    async def handle_DATA_stream(
        self, server: SMTP, session: Session, envelope: Envelope, stream: MessageStream
    ) -> str:
        iterator = aiter(stream)
        self.total += len(await anext(iterator))
        for _ in range(30):
            await asyncio.sleep(0.02)
            self.held.append(server.engine.buffered)
        async for piece in iterator:
            self.total += len(piece)
        return "250 Done"


def test_a_hook_that_does_not_read_stops_the_reading() -> None:
    """While the hook holds back, the server stops reading: what the connection buffers stays
    under the stated bound (the pause threshold plus one read), and the client's writes block."""
    handler = Stalling()
    controller = Controller(handler, hostname="127.0.0.1", port=0, data_size_limit=None)
    controller.start()
    try:
        size = 16 * 1024 * 1024
        content = (b"x" * 998 + b"\r\n") * (size // 1000)
        sender = threading.Thread(target=dialog, args=(controller.port, data_wire(content)))
        sender.start()
        sender.join(timeout=60)
        assert not sender.is_alive()
    finally:
        controller.stop()
    assert handler.total == len(content)
    assert handler.held and max(handler.held) <= MAX_BUFFERED


def test_lmtp_over_a_socket_answers_each_recipient() -> None:
    class PerRecipient:
        async def handle_DATA_stream(
            self, server: SMTP, session: Session, envelope: Envelope, stream: MessageStream
        ) -> list[str]:
            await stream.read()
            return [f"250 {rcpt} stored" for rcpt in envelope.rcpt_tos]

    wire = (
        b"LHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@d.test>\r\nRCPT TO:<y@d.test>\r\n"
        b"DATA\r\nhello\r\n.\r\nQUIT\r\n"
    )
    with running(PerRecipient(), server_class=LMTP) as controller:
        replies = dialog(controller.port, wire)
    assert b"250 x@d.test stored\r\n250 y@d.test stored\r\n" in replies


def test_no_warning_for_the_builtin_handlers() -> None:
    from typed_smtpd.handlers import Mailbox, Sink

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HookRegistry(Sink())
        HookRegistry(Mailbox.__new__(Mailbox))


@pytest.mark.asyncio
async def test_the_fake_server_records_streamed_messages() -> None:
    from typed_smtpd.testing import FakeSMTPServer

    async with FakeSMTPServer(Collecting()) as server:
        client = server.client()
        await client.ehlo()
        await client.mail("a@b.test")
        await client.rcpt("c@d.test")
        reply = await client.data(b"Subject: streamed\r\n\r\n.dot\r\nbody\r\n")
        assert reply.code == 250 and reply.text.startswith("Got")
    (message,) = server.messages
    assert message.content == b"Subject: streamed\r\n\r\n.dot\r\nbody\r\n"
    assert message.message["Subject"] == "streamed"


class Digest:
    async def handle_DATA_stream(
        self, server: SMTP, session: Session, envelope: Envelope, stream: MessageStream
    ) -> str:
        digest = hashlib.sha256()
        async for piece in stream:
            digest.update(piece)
        return f"250 {digest.hexdigest()}"


@given(chunked(message_bodies()))
def test_a_hook_tested_alone_with_a_given_stream(pieces: list[bytes]) -> None:
    """Users test their stream hooks without a server: MessageStream.of and the strategies."""
    hook = Digest().handle_DATA_stream
    session, envelope = Session(loop=None), Envelope()  # type: ignore[arg-type]
    stream = MessageStream.of(pieces)
    reply = asyncio.run(hook(None, session, envelope, stream))  # type: ignore[arg-type]
    assert reply == f"250 {hashlib.sha256(b''.join(pieces)).hexdigest()}"
    assert stream.done and stream.size == len(b"".join(pieces))


def test_a_given_stream_can_end_in_an_error() -> None:
    stream = MessageStream.of([b"part"], error=MessageTooLarge("too big", R.DATA_TOO_LARGE))

    async def read_all() -> list[bytes]:
        return [piece async for piece in stream]

    with pytest.raises(MessageTooLarge):
        asyncio.run(read_all())
    assert stream.size == 4 and isinstance(stream.error, MessageTooLarge)
