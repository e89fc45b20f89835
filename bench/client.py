"""The benchmark's own SMTP client, on asyncio.

It drives the workloads a C client cannot (idle connections, pipelined transactions) and gives a
second opinion on the others. Sessions that send mail are ``asyncio.Protocol`` state machines:
each reply is checked and answered inside the read callback, with no task or coroutine per
reply, so that the client costs less than the servers it measures; idle sessions use streams.

Every loop has a fixed bound and every run a timeout (the caller's ``wait_for`` around the whole
workload: a timer per reply would cost the client more than some servers spend on the command).
Any reply other than the expected one raises ``ClientError``, so a run that finishes is a run
where the server accepted every message. Nothing here knows which server it talks to, and
nothing here measures the server: the harness (run.py) does that.

Command line, for a manual run: ``python bench/client.py PORT KIND [options]`` where KIND is
``messages``, ``churn`` or ``idle``; see ``--help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

HOST = "127.0.0.1"
CONNECT_TIMEOUT = 30.0
LINE_LIMIT = 1 << 20  # StreamReader limit; replies are short, this only bounds a broken server
BODY_LINE = 78  # characters per body line before CRLF, as smtp-source writes them


class ClientError(Exception):
    """The server answered something unexpected, or not in time."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a workload did, for the harness to report."""

    messages: int = 0
    connections: int = 0
    payload_bytes: int = 0
    seconds: float = 0.0
    pipelining_advertised: bool = False
    probe_ok: bool = False
    probe_seconds: float = 0.0


def make_message(size: int) -> bytes:
    """A message of about ``size`` bytes of body, dot-stuffed, ending with CRLF.CRLF.

    A few header lines, then lines of ``BODY_LINE`` characters; one body line starts with a dot,
    so every server also has to unstuff.
    """
    header = b"From: <bench@bench>\r\nTo: <sink@bench>\r\nSubject: bench\r\n\r\n"
    lines = [b"..a dot-stuffed line"]
    filled = len(lines[0]) + 2
    n = 0
    while filled < size:
        width = min(BODY_LINE, max(1, size - filled - 2))
        text = (b"%d" % n + b"X" * BODY_LINE)[:width]
        lines.append(text)
        filled += width + 2
        n += 1
    return header + b"\r\n".join(lines) + b"\r\n.\r\n"


async def read_reply(reader: asyncio.StreamReader, expect: bytes) -> list[bytes]:
    """Read one (possibly multi-line) reply; raise unless its code is ``expect``."""
    lines: list[bytes] = []
    for _ in range(100):  # a reply of more than 100 lines is a broken server
        try:
            line = await reader.readuntil(b"\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise ClientError(f"no reply (expected {expect.decode()}): {exc!r}") from exc
        lines.append(line)
        if line[3:4] != b"-":
            break
    else:
        raise ClientError("reply too long")
    if lines[-1][:3] != expect:
        raise ClientError(f"expected {expect.decode()}, got {b''.join(lines)!r}")
    return lines


async def open_session(
    port: int,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
    """Connect, read the greeting, say EHLO; return the streams and whether PIPELINING is on."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(HOST, port, limit=LINE_LIMIT), CONNECT_TIMEOUT
    )
    try:
        await read_reply(reader, b"220")
        writer.write(b"EHLO client.bench\r\n")
        ehlo = await read_reply(reader, b"250")
    except BaseException:
        writer.close()
        raise
    return reader, writer, any(line[4:14].upper() == b"PIPELINING" for line in ehlo)


async def close_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """QUIT, read the 221, close."""
    try:
        writer.write(b"QUIT\r\n")
        await read_reply(reader, b"221")
    finally:
        writer.close()
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), CONNECT_TIMEOUT)


ENVELOPE = (b"MAIL FROM:<bench@bench>\r\n", b"RCPT TO:<sink@bench>\r\n", b"DATA\r\n")

#: One exchange of a session: what to write once the previous reply is in (``b""`` for nothing,
#: when the command was pipelined), and the reply code that must come back.
Step = tuple[bytes, bytes]


def session_plan(message: bytes, count: int, pipelined: bool) -> list[Step]:
    """Everything one session does after the greeting: EHLO, ``count`` messages, QUIT."""
    if pipelined:
        transaction = [(b"".join(ENVELOPE), b"250"), (b"", b"250"), (b"", b"354")]
    else:
        transaction = list(zip(ENVELOPE, (b"250", b"250", b"354"), strict=True))
    plan: list[Step] = [(b"EHLO client.bench\r\n", b"250")]
    for _ in range(count):
        plan.extend(transaction)
        plan.append((message, b"250"))
    plan.append((b"QUIT\r\n", b"221"))
    return plan


class PlannedSession(asyncio.Protocol):
    """One connection that works through a plan, checking each reply as it arrives."""

    def __init__(self, plan: list[Step], done: asyncio.Future[bool]) -> None:
        self.plan = plan
        self.done = done
        self.next = -1  # the step whose reply is awaited; -1: the greeting
        self.buffer = b""
        self.pipelining = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        start = 0
        while True:
            end = buffer.find(b"\r\n", start)
            if end < 0:
                break
            line = buffer[start:end]
            start = end + 2
            if line[3:4] == b"-":  # a continuation line (EHLO's extensions)
                if line[4:14].upper() == b"PIPELINING":
                    self.pipelining = True
                continue
            if line[4:14].upper() == b"PIPELINING":
                self.pipelining = True
            if not self._reply(line):
                return
        self.buffer = buffer[start:]

    def _reply(self, line: bytes) -> bool:
        """Check one complete reply and send what comes next; False once the session is over."""
        index = self.next
        expect = b"220" if index < 0 else self.plan[index][1]
        if line[:3] != expect:
            self._fail(ClientError(f"expected {expect.decode()}, got {line!r}"))
            return False
        index += 1
        if index == len(self.plan):
            self.next = index
            if not self.done.done():
                self.done.set_result(self.pipelining)
            assert self.transport is not None
            self.transport.close()
            return False
        self.next = index
        write = self.plan[index][0]
        if write:
            assert self.transport is not None
            self.transport.write(write)
        return True

    def _fail(self, error: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(error)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            where = "the greeting" if self.next < 0 else f"step {self.next} of {len(self.plan)}"
            self.done.set_exception(ClientError(f"connection closed before {where}: {exc!r}"))


async def run_session(port: int, plan: list[Step]) -> bool:
    """Connect and work through ``plan``; whether the server advertised PIPELINING."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bool] = loop.create_future()
    transport, _ = await asyncio.wait_for(
        loop.create_connection(lambda: PlannedSession(plan, done), HOST, port), CONNECT_TIMEOUT
    )
    try:
        return await done
    finally:
        transport.close()


async def messages(
    port: int, *, sessions: int, count: int, size: int, pipelined: bool = False
) -> Outcome:
    """``count`` messages over ``sessions`` parallel connections, each kept open throughout."""
    message = make_message(size)
    shares = [count // sessions + (1 if i < count % sessions else 0) for i in range(sessions)]
    advertised = []

    async def one(share: int) -> None:
        advertised.append(await run_session(port, session_plan(message, share, pipelined)))

    start = time.perf_counter()
    await gather_all(one(share) for share in shares)
    seconds = time.perf_counter() - start
    return Outcome(
        messages=count,
        connections=sessions,
        payload_bytes=count * size,
        seconds=seconds,
        pipelining_advertised=all(advertised),
    )


async def churn(port: int, *, connections: int, concurrency: int, size: int) -> Outcome:
    """``connections`` short sessions (EHLO, one message, QUIT), ``concurrency`` at a time."""
    plan = session_plan(make_message(size), 1, pipelined=False)
    todo = iter(range(connections))

    async def worker() -> None:
        for _ in todo:
            await run_session(port, plan)

    start = time.perf_counter()
    await gather_all(worker() for _ in range(min(concurrency, connections)))
    seconds = time.perf_counter() - start
    return Outcome(
        messages=connections,
        connections=connections,
        payload_bytes=connections * size,
        seconds=seconds,
    )


async def idle(
    port: int,
    *,
    connections: int,
    concurrency: int = 100,
    while_held: Callable[[], None] | None = None,
) -> Outcome:
    """Hold ``connections`` sessions idle after EHLO, call ``while_held``, then probe a new one.

    ``seconds`` is the time to open them all; the probe (greeting, EHLO, QUIT on one more
    connection) shows the server still answers with all of them held.
    """
    held: list[asyncio.StreamWriter] = []
    todo = iter(range(connections))

    async def opener() -> None:
        for _ in todo:
            _reader, writer, _pipelining = await open_session(port)
            held.append(writer)

    try:
        start = time.perf_counter()
        await gather_all(opener() for _ in range(min(concurrency, connections)))
        seconds = time.perf_counter() - start
        if while_held is not None:
            while_held()
        probe_start = time.perf_counter()
        reader, writer, _pipelining = await open_session(port)
        await close_session(reader, writer)
        probe_seconds = time.perf_counter() - probe_start
    finally:
        for writer in held:
            writer.transport.abort()
        await asyncio.sleep(0)
    return Outcome(
        connections=len(held), seconds=seconds, probe_ok=True, probe_seconds=probe_seconds
    )


async def gather_all(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run the coroutines together; on the first failure cancel the rest and re-raise."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def main(argv: list[str] | None = None) -> None:
    """Run one workload against a server already listening on 127.0.0.1:PORT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("kind", choices=["messages", "churn", "idle"])
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--count", type=int, default=1000, help="messages or connections")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--pipelined", action="store_true")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    if args.kind == "messages":
        work = messages(
            args.port,
            sessions=args.sessions,
            count=args.count,
            size=args.size,
            pipelined=args.pipelined,
        )
    elif args.kind == "churn":
        work = churn(args.port, connections=args.count, concurrency=args.sessions, size=args.size)
    else:
        work = idle(args.port, connections=args.count)
    print(asyncio.run(asyncio.wait_for(work, args.timeout)))


if __name__ == "__main__":
    main()
