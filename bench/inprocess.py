"""The protocol's own cost, without sockets: typed_smtpd's ``SMTP`` class fed through an in-memory
transport, in microseconds of CPU.

``message``
    One transaction on an open connection: MAIL, RCPT, DATA and 1 KiB of content, each in a read
    of its own (a W2 message without the network).
``connection``
    A new connection: the protocol factory, ``connection_made``, HELO, one such message, QUIT and
    ``connection_lost`` (a W4 connection without the network).

Usage: ``python bench/inprocess.py [--rounds N] [--messages N] [--connections N]
[--tree NAME=DIR ...]``.

Every round runs in a fresh interpreter. With ``--tree``, typed_smtpd is imported from each
directory given (a checkout of another revision, or a build made with ``TYPED_SMTPD_COMPILE=1``
and ``pip install --target DIR``) and the rounds of the trees alternate, so that a change of
load on the machine hits them alike; without it, from wherever Python finds it. For each tree
the minimum and the median over the rounds are printed: the minimum is the figure that other
load disturbs least. The data is read the way the event loop reads it (into the buffer
``get_buffer()`` returns, then ``buffer_updated()``), and the connection is alone in its thread,
so its replies are written at once. The figures leave out what the event loop and the kernel
spend per read and write; ``bench/run.py`` measures the whole server.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BODY = (
    b"From: a@example.test\r\nTo: b@example.test\r\nSubject: bench\r\n\r\n"
    + (b"x" * 70 + b"\r\n") * 13
    + b".\r\n"
)
MESSAGE = (b"MAIL FROM:<a@example.test>\r\n", b"RCPT TO:<b@example.test>\r\n", b"DATA\r\n", BODY)
CONNECTION = (b"HELO client.test\r\n", *MESSAGE, b"QUIT\r\n")
WARM_UP = 500


class Transport(asyncio.Transport):
    """Takes the replies and keeps nothing but their count."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port
        self.writes = 0
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return ("127.0.0.1", self.port)
        if name == "sockname":
            return ("127.0.0.1", 25)
        return default

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def feed(protocol: Any, data: bytes) -> None:
    """Hand ``data`` to ``protocol`` as the event loop hands it a read."""
    size = len(data)
    protocol.get_buffer(size)[:size] = data
    protocol.buffer_updated(size)


async def measure(messages: int, connections: int) -> tuple[float, float]:
    """(CPU microseconds per message, per connection)."""
    from servers import typed_factory

    factory = typed_factory(max_connections=connections + 10, timeout=300.0)

    protocol: Any = factory()
    transport = Transport(1025)
    protocol.connection_made(transport)
    feed(protocol, b"EHLO client.test\r\n")
    for _ in range(WARM_UP):
        for data in MESSAGE:
            feed(protocol, data)
    start = time.process_time()
    for _ in range(messages):
        for data in MESSAGE:
            feed(protocol, data)
    per_message = (time.process_time() - start) / messages * 1e6
    if transport.writes < messages * len(MESSAGE):
        raise SystemExit(f"only {transport.writes} replies to {messages} messages")
    protocol.connection_lost(None)

    async def connect(number: int) -> None:
        protocol = factory()
        transport = Transport(1024 + number % 60000)
        protocol.connection_made(transport)
        for data in CONNECTION:
            feed(protocol, data)
        if not transport.closed:
            raise SystemExit("the connection did not close after QUIT")
        protocol.connection_lost(None)
        if number % 100 == 0:
            await asyncio.sleep(0)  # the loop runs what the connections left to it

    for number in range(WARM_UP):
        await connect(number)
    start = time.process_time()
    for number in range(connections):
        await connect(number)
    per_connection = (time.process_time() - start) / connections * 1e6
    return per_message, per_connection


def worker(tree: Path | None, messages: int, connections: int) -> None:
    sys.path.insert(0, str(HERE))
    if tree is not None:
        from servers import import_from_tree

        import_from_tree(tree, f"--tree {tree}")
    per_message, per_connection = asyncio.run(measure(messages, connections))
    print(f"{per_message:.2f} {per_connection:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=5_000)
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="import typed_smtpd from DIR, reported as NAME (repeatable)",
    )
    parser.add_argument("--worker", type=Path, nargs="?", const=Path(), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(None if args.worker == Path() else args.worker, args.messages, args.connections)
        return
    trees: list[tuple[str, Path | None]] = [("typed", None)]
    if args.tree:
        trees = []
        for spec in args.tree:
            name, sep, directory = spec.partition("=")
            if not sep or not name or not directory:
                parser.error(f"--tree wants NAME=DIR, not {spec!r}")
            trees.append((name, Path(directory)))
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in trees}
    for _ in range(args.rounds):
        for name, tree in trees:
            command = [sys.executable, str(Path(__file__).resolve()), "--worker"]
            command += [] if tree is None else [str(tree)]
            command += ["--messages", str(args.messages), "--connections", str(args.connections)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{name}: {(done.stderr or done.stdout).strip()}")
            message, connection = (float(word) for word in done.stdout.split())
            results[name].append((message, connection))
    width = max(len(name) for name in results)
    print(f"CPU microseconds, {args.rounds} rounds: minimum (median)")
    print(f"{'':{width}} {'per message':>20} {'per connection':>20}")
    for name, rounds in results.items():
        columns = []
        for index in (0, 1):
            values = [values[index] for values in rounds]
            columns.append(f"{min(values):8.1f} ({statistics.median(values):6.1f})")
        print(f"{name:{width}} {columns[0]:>20} {columns[1]:>20}")


if __name__ == "__main__":
    main()
