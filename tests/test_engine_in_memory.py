"""The engine over an in-memory transport: when replies are written, and what a connection leaves.

A lone connection is answered inside its read callback; with several open, the replies of one
loop turn are written together. A command whose hook is left for the connection's task creates
nothing (not even the hook's coroutine) until that task runs. The in-memory transport makes the
moment of each write visible.
Each test runs its event loop in a thread of its own: the batching state belongs to a thread,
and connections left open by other tests in this process must not count.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
import warnings
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from typed_smtpd._connections import loop_clock
from typed_smtpd.handlers import Sink
from typed_smtpd.session import Envelope, Session
from typed_smtpd.smtp import SMTP


class MemoryTransport(asyncio.Transport):
    """Records every write; nothing leaves the process."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 2525) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def text(self) -> str:
        return b"".join(self.writes).decode()


T = TypeVar("T")


def in_fresh_thread(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main`` with ``asyncio.run`` in a new thread, and return its result."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result(timeout=30)


def connect() -> tuple[SMTP, MemoryTransport]:
    server = SMTP(Sink(), hostname="batch.test")
    transport = MemoryTransport()
    server.connection_made(transport)
    return server, transport


def close(server: SMTP, transport: MemoryTransport) -> None:
    transport.close()
    server.connection_lost(None)


def test_a_lone_connection_is_answered_inside_the_read_callback() -> None:
    async def main() -> None:
        server, transport = connect()
        assert transport.text().startswith("220 batch.test")
        transport.writes.clear()
        server.data_received(b"EHLO client.test\r\nNOOP\r\n")
        # No loop turn has passed: the replies went out with the read that asked for them.
        assert transport.text().endswith("250 HELP\r\n250 2.0.0 OK\r\n")
        assert len(transport.writes) == 1
        close(server, transport)

    in_fresh_thread(main)


def test_replies_of_several_connections_leave_together_on_the_next_turn() -> None:
    async def main() -> None:
        (first, one), (second, two) = connect(), connect()
        one.writes.clear()
        two.writes.clear()
        first.data_received(b"HELO one.test\r\n")
        second.data_received(b"HELO two.test\r\nNOOP\r\n")
        assert one.writes == [] and two.writes == []
        await asyncio.sleep(0)
        assert one.text() == "250 batch.test\r\n"
        assert two.text() == "250 batch.test\r\n250 OK\r\n"
        assert len(two.writes) == 1  # both replies of a connection in one write
        # With the other connection gone, the one left is answered at once again.
        close(second, two)
        one.writes.clear()
        first.data_received(b"NOOP\r\n")
        assert one.text() == "250 OK\r\n"
        close(first, one)

    in_fresh_thread(main)


def test_a_batched_reply_precedes_what_a_closing_command_writes() -> None:
    async def main() -> None:
        (first, one), (second, two) = connect(), connect()
        one.writes.clear()
        first.data_received(b"HELO one.test\r\n")
        first.data_received(b"QUIT\r\n")  # closes: everything queued is written first, in order
        assert one.text() == "250 batch.test\r\n221 Bye\r\n"
        assert one.closing
        await asyncio.sleep(0)
        assert one.text() == "250 batch.test\r\n221 Bye\r\n"  # nothing written twice
        close(first, one)
        close(second, two)

    in_fresh_thread(main)


def test_a_batch_left_by_a_stopped_loop_does_not_hold_up_the_next_loop() -> None:
    async def leave_a_batch() -> list[tuple[SMTP, MemoryTransport]]:
        pairs = [connect(), connect()]
        pairs[0][0].data_received(b"NOOP\r\n")  # deferred to a turn this loop never takes
        return pairs

    async def serve_two() -> tuple[str, str]:
        (first, one), (second, two) = connect(), connect()
        one.writes.clear()
        two.writes.clear()
        first.data_received(b"NOOP\r\n")
        second.data_received(b"NOOP\r\n")
        await asyncio.sleep(0)
        replies = one.text(), two.text()
        close(first, one)
        close(second, two)
        return replies

    def two_loops() -> tuple[str, str]:
        old = asyncio.new_event_loop()
        try:
            left = old.run_until_complete(leave_a_batch())
        finally:
            old.close()
        replies = asyncio.run(serve_two())
        for server, transport in left:
            close(server, transport)
        return replies

    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(two_loops).result(timeout=30) == ("250 OK\r\n", "250 OK\r\n")


class SlowMail:
    """A handler whose MAIL hook counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def handle_MAIL(
        self, server: SMTP, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.calls += 1
        envelope.mail_from = address
        return "250 OK"


def test_a_connection_gone_before_its_task_ran_leaves_no_coroutine_behind() -> None:
    handler = SlowMail()

    async def main() -> None:
        server = SMTP(handler, hostname="batch.test")
        transport = MemoryTransport()
        server.connection_made(transport)
        server.data_received(b"EHLO client.test\r\nMAIL FROM:<a@client.test>\r\n")
        # The client vanishes at once: the task that would run the hook is cancelled (before
        # its first step where tasks do not start eagerly).
        server.abort()
        close(server, transport)
        for _ in range(3):
            await asyncio.sleep(0)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        in_fresh_thread(main)
        gc.collect()
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []
    assert handler.calls <= 1  # run eagerly (Python 3.12+) or not at all


class BrokenTransport(MemoryTransport):
    """A transport whose writes fail once connected."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False

    def write(self, data: Any) -> None:
        if self.broken:
            raise OSError("the socket broke")
        super().write(data)


def test_a_transport_that_fails_a_batched_write_does_not_keep_the_others_replies(
    caplog: Any,
) -> None:
    async def main() -> tuple[str, bool]:
        broken_server = SMTP(Sink(), hostname="batch.test")
        broken = BrokenTransport()
        broken_server.connection_made(broken)
        server, transport = connect()
        transport.writes.clear()
        broken.broken = True
        broken_server.data_received(b"NOOP\r\n")
        server.data_received(b"NOOP\r\n")
        await asyncio.sleep(0)
        replies, aborted = transport.text(), broken.closing
        close(server, transport)
        close(broken_server, broken)
        return replies, aborted

    assert in_fresh_thread(main) == ("250 OK\r\n", True)
    assert "could not write its replies" in caplog.text


# --- the clock --------------------------------------------------------------------------------


class OffsetLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock runs ``offset`` seconds off ``time.monotonic()``."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = offset

    def time(self) -> float:
        return time.monotonic() + self.offset


def test_the_engine_reads_asyncios_clock_directly() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert loop_clock(loop) is time.monotonic
        loop.time = lambda: 5.0  # type: ignore[method-assign]  # a test's fake clock
        assert loop_clock(loop)() == 5.0
    finally:
        loop.close()
    ahead = OffsetLoop(3600.0)
    try:
        assert loop_clock(ahead)() > time.monotonic() + 3000
    finally:
        ahead.close()


def test_a_loop_with_a_clock_of_its_own_times_connections_by_it() -> None:
    # The engine's deadlines are in the loop's time: were they taken from time.monotonic() on
    # a loop an hour behind it, the idle timer would fire an hour late.
    async def main() -> str:
        server = SMTP(Sink(), hostname="clock.test", timeout=0.2)
        transport = MemoryTransport()
        server.connection_made(transport)
        for _ in range(100):
            if transport.closing:
                break
            await asyncio.sleep(0.05)
        close(server, transport)
        return transport.text()

    loop = OffsetLoop(-3600.0)
    try:
        text = loop.run_until_complete(main())
    finally:
        loop.close()
    assert text.startswith("220 clock.test ")
    assert text.endswith("\r\n421 Error: timeout exceeded\r\n")


# --- envelopes ----------------------------------------------------------------------------------


@dataclass(eq=False)
class TaggedEnvelope(Envelope):
    """A subclass's own envelope class, with a field of its own."""

    tag: str = "tagged"


class EnvelopeCounting(SMTP):
    """Makes its envelopes itself, and keeps each one it made."""

    made: list[Envelope]

    def _create_envelope(self) -> Envelope:
        envelope = TaggedEnvelope()
        self.made.append(envelope)
        return envelope


class EnvelopeSeer:
    """Keeps the envelope each hook is given."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Envelope]] = []

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.seen.append(("MAIL", envelope))
        envelope.mail_from = address
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.seen.append(("DATA", envelope))
        return "250 OK"


def counting(handler: object) -> tuple[EnvelopeCounting, MemoryTransport]:
    server = EnvelopeCounting(handler, hostname="envelope.test")
    server.made = []
    transport = MemoryTransport()
    server.connection_made(transport)
    return server, transport


def test_a_connection_without_a_transaction_makes_no_envelope() -> None:
    async def main() -> None:
        server, transport = counting(Sink())
        server.data_received(b"EHLO client.test\r\nNOOP\r\nRSET\r\nHELO again.test\r\n")
        await asyncio.sleep(0)
        assert transport.text().endswith("250 2.0.0 OK\r\n250 2.0.0 OK\r\n250 envelope.test\r\n")
        assert server.made == []  # an idle connection holds no envelope
        server.data_received(b"QUIT\r\n")
        assert server.made == []
        close(server, transport)

    in_fresh_thread(main)


def test_a_transaction_has_one_envelope_from_the_subclass_and_the_next_a_new_one() -> None:
    async def main() -> None:
        seer = EnvelopeSeer()
        server, transport = counting(seer)
        server.data_received(b"EHLO client.test\r\nMAIL FROM:<a@example.test>\r\n")
        for _ in range(5):
            await asyncio.sleep(0)
        server.data_received(b"RCPT TO:<b@example.test>\r\nDATA\r\n")
        server.data_received(b"Subject: one\r\n\r\nbody\r\n.\r\n")
        for _ in range(5):
            await asyncio.sleep(0)
        assert transport.text().endswith("354 End data with <CR><LF>.<CR><LF>\r\n250 OK\r\n")
        (mail, first), (data, same) = seer.seen
        assert (mail, data) == ("MAIL", "DATA")
        assert first is same and server.made == [first]
        assert isinstance(first, TaggedEnvelope) and first.rcpt_tos == ["b@example.test"]
        # After the message: a new envelope, made when asked for, the same at each asking.
        assert server.envelope is not first and server.envelope is server.envelope
        assert server.made == [first, server.envelope]
        close(server, transport)

    in_fresh_thread(main)


def test_an_instances_own_envelope_maker_is_used() -> None:
    async def main() -> None:
        server = SMTP(Sink(), hostname="envelope.test")
        server._create_envelope = TaggedEnvelope  # type: ignore[method-assign]
        transport = MemoryTransport()
        server.connection_made(transport)
        server.data_received(b"EHLO client.test\r\nMAIL FROM:<a@example.test>\r\n")
        assert isinstance(server.envelope, TaggedEnvelope)
        assert server.envelope.mail_from == "a@example.test"
        plain = SMTP(Sink(), hostname="envelope.test")
        plain.connection_made(MemoryTransport())
        assert type(plain.envelope) is Envelope
        close(server, transport)

    in_fresh_thread(main)


# --- memory -------------------------------------------------------------------------------------

#: What the server's own code may allocate for one idle connection (greeted, after EHLO): its
#: share of the 4 KiB per idle connection the benchmark's W5 allows (the event loop's transport,
#: socket and timer take the rest). Measured 2,000 to 2,150 bytes on Python 3.10 to 3.13, pure
#: or compiled; 2,590 while every connection made its envelope at once.
IDLE_CONNECTION_BUDGET = 2400


class EhloTransport(MemoryTransport):
    """Keeps nothing of what is written, only whether the EHLO reply ended it."""

    def __init__(self) -> None:
        super().__init__()
        self.greeted = False

    def write(self, data: Any) -> None:
        self.greeted = bytes(data).endswith(b"250 HELP\r\n")


def test_an_idle_connection_stays_within_its_memory_budget() -> None:
    async def main() -> float:
        handler = Sink()
        transports = [EhloTransport() for _ in range(400)]
        servers = []
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            for transport in transports:
                server = SMTP(handler, hostname="idle.test")
                server.connection_made(transport)
                server.data_received(b"EHLO client.test\r\n")
                servers.append(server)
            await asyncio.sleep(0)
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        # What the server code and this test made; not what another thread of the process did.
        mine = [tracemalloc.Filter(True, "*typed_smtpd*"), tracemalloc.Filter(True, __file__)]
        growth = after.filter_traces(mine).compare_to(before.filter_traces(mine), "filename")
        used = sum(stat.size_diff for stat in growth)
        for server, transport in zip(servers, transports, strict=True):
            assert transport.greeted
            close(server, transport)
        return used / len(servers)

    per_connection = in_fresh_thread(main)
    assert per_connection <= IDLE_CONNECTION_BUDGET, f"{per_connection:.0f} bytes per connection"
