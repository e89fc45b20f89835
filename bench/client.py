"""The benchmark's own SMTP client, on raw asyncio streams.

It drives the workloads a C client cannot (idle connections, pipelined transactions) and gives a
second opinion on the others. Every loop has a fixed bound and every run a timeout (the caller's
``wait_for`` around the whole workload: a timer per reply would cost the client more than some
servers spend on the command); any reply other than the expected one raises ``ClientError``, so
a run that finishes is a run where the server accepted every message. Nothing here knows which
server it talks to, and nothing here measures the server: the harness (run.py) does that.

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


async def transaction(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: bytes, pipelined: bool
) -> None:
    """One MAIL/RCPT/DATA transaction; pipelined sends the three commands in one write."""
    if pipelined:
        writer.write(b"".join(ENVELOPE))
        await read_reply(reader, b"250")
        await read_reply(reader, b"250")
        await read_reply(reader, b"354")
    else:
        for command, code in zip(ENVELOPE, (b"250", b"250", b"354"), strict=True):
            writer.write(command)
            await read_reply(reader, code)
    writer.write(message)
    await read_reply(reader, b"250")


async def messages(
    port: int, *, sessions: int, count: int, size: int, pipelined: bool = False
) -> Outcome:
    """``count`` messages over ``sessions`` parallel connections, each kept open throughout."""
    message = make_message(size)
    shares = [count // sessions + (1 if i < count % sessions else 0) for i in range(sessions)]
    advertised = []

    async def one(share: int) -> None:
        reader, writer, pipelining = await open_session(port)
        advertised.append(pipelining)
        try:
            for _ in range(share):
                await transaction(reader, writer, message, pipelined)
        except BaseException:
            writer.close()
            raise
        await close_session(reader, writer)

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
    message = make_message(size)
    todo = iter(range(connections))

    async def worker() -> None:
        for _ in todo:
            reader, writer, _pipelining = await open_session(port)
            try:
                await transaction(reader, writer, message, pipelined=False)
            except BaseException:
                writer.close()
                raise
            await close_session(reader, writer)

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
