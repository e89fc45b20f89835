"""W7: large messages, streamed. Server memory and throughput with many big messages at once.

Usage: ``python bench/streaming.py [--clients 20] [--mib 32] [--rounds 3] [--handlers sink,mailbox]
[--servers typed,typed-buffered,aiosmtpd]``.

Each round starts a fresh server from its command line (``python -m typed_smtpd`` or
``python -m aiosmtpd``) on a free 127.0.0.1 port, with the size limit lifted, then ``--clients``
concurrent clients each send one message of ``--mib`` MiB (78-octet lines) and wait for its
reply. The figures are the MiB/s of the whole round (all clients, first connect to last reply)
and the server's peak resident memory (``VmHWM`` in /proc) at the end of the round.

The servers:

* ``typed``: typed_smtpd's own handler (``Sink``, which streams by having no DATA hook, or
  ``Mailbox``, which streams each message to disk);
* ``typed-buffered``: the same handler made to take each message whole, through ``handle_DATA``
  (bench/w7_handlers.py), as every typed_smtpd release before streaming did;
* ``aiosmtpd``: aiosmtpd's ``Sink`` or ``Mailbox``, which hold each message whole.

The server and the clients are pinned to different cores when there are two or more. Nothing is
written but stdout and the servers' temporary Maildirs, removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
MIB = 1024 * 1024
LINE = b"x" * 76 + b"\r\n"
START_TIMEOUT = 30.0
ROUND_TIMEOUT = 600.0
HANDLERS = {
    "sink": {
        "typed": ["-c", "typed_smtpd.handlers.Sink"],
        "typed-buffered": ["-c", "w7_handlers.BufferedSink"],
        "aiosmtpd": ["-c", "aiosmtpd.handlers.Sink"],
    },
    "mailbox": {
        "typed": ["-c", "typed_smtpd.handlers.Mailbox"],
        "typed-buffered": ["-c", "w7_handlers.BufferedMailbox"],
        "aiosmtpd": ["-c", "aiosmtpd.handlers.Mailbox"],
    },
}


@dataclass
class Result:
    handler: str
    server: str
    mib_per_s: float
    peak_mib: float
    baseline_mib: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


@contextlib.contextmanager
def server(kind: str, handler: str, port: int, maildir: Path, core: int | None) -> Iterator[int]:
    module = "aiosmtpd" if kind == "aiosmtpd" else "typed_smtpd"
    args = [sys.executable, "-m", module, "-n", "-l", f"127.0.0.1:{port}", "-s", "0"]
    args += HANDLERS[handler][kind]
    if handler == "mailbox":
        args.append(str(maildir))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if core is not None:
            os.sched_setaffinity(process.pid, {core})
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{kind} exited: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind} did not listen within {START_TIMEOUT} s")
            time.sleep(0.05)
        yield process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def send_one(port: int, body: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)

    async def reply() -> bytes:
        while True:
            line = await asyncio.wait_for(reader.readline(), ROUND_TIMEOUT)
            if not line:
                raise ConnectionError("server closed the connection")
            if line[3:4] != b"-":
                return line

    try:
        await reply()
        for command in (b"EHLO bench", b"MAIL FROM:<a@bench.test>", b"RCPT TO:<b@bench.test>"):
            writer.write(command + b"\r\n")
            if not (await reply()).startswith(b"2"):
                raise RuntimeError(f"{command!r} refused")
        writer.write(b"DATA\r\n")
        if not (await reply()).startswith(b"354"):
            raise RuntimeError("DATA refused")
        writer.write(body)
        writer.write(b".\r\n")
        await writer.drain()
        final = await reply()
        if not final.startswith(b"250"):
            raise RuntimeError(f"message refused: {final!r}")
        writer.write(b"QUIT\r\n")
        await writer.drain()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def load(port: int, clients: int, body: bytes) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(send_one(port, body) for _ in range(clients)))
    return time.perf_counter() - started


def one_round(kind: str, handler: str, clients: int, body: bytes, cores: list[int]) -> Result:
    maildir = Path(tempfile.mkdtemp(prefix="w7-"))
    try:
        port = free_port()
        server_core = cores[0] if len(cores) > 1 else None
        with server(kind, handler, port, maildir / "Maildir", server_core) as pid:
            time.sleep(0.2)
            baseline = status_kib(pid, "VmRSS")
            seconds = asyncio.run(load(port, clients, body))
            peak = status_kib(pid, "VmHWM")
        if handler == "mailbox":
            stored = list((maildir / "Maildir" / "new").iterdir())
            if len(stored) != clients:
                raise RuntimeError(f"{kind}: {len(stored)} of {clients} messages stored")
    finally:
        shutil.rmtree(maildir, ignore_errors=True)
    total_mib = clients * len(body) / MIB
    return Result(handler, kind, total_mib / seconds, peak / 1024, baseline / 1024)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--mib", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--handlers", default="sink,mailbox")
    parser.add_argument("--servers", default="typed,typed-buffered,aiosmtpd")
    args = parser.parse_args(argv)
    body = LINE * (args.mib * MIB // len(LINE))
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) > 1:
        os.sched_setaffinity(0, set(cores[1:]))  # the clients; the server gets cores[0]
    servers = args.servers.split(",")
    print(
        f"W7: {args.clients} clients, one {len(body) / MIB:.1f} MiB message each, "
        f"{args.rounds} rounds, medians; peak = the server's VmHWM"
    )
    for handler in args.handlers.split(","):
        results: dict[str, list[Result]] = {kind: [] for kind in servers}
        for _ in range(args.rounds):
            for kind in servers:  # alternate, so drift on the machine hits every server alike
                results[kind].append(one_round(kind, handler, args.clients, body, cores))
        print(f"\n{handler}:")
        print(f"  {'server':16} {'MiB/s':>8} {'peak MiB':>9} {'start MiB':>10}")
        medians = {}
        for kind, runs in results.items():
            rate = statistics.median(r.mib_per_s for r in runs)
            peak = statistics.median(r.peak_mib for r in runs)
            start = statistics.median(r.baseline_mib for r in runs)
            medians[kind] = (rate, peak)
            print(f"  {kind:16} {rate:8.1f} {peak:9.1f} {start:10.1f}")
        if "typed" in medians:
            for other in ("typed-buffered", "aiosmtpd"):
                if other in medians:
                    rate = medians["typed"][0] / medians[other][0]
                    peak = medians["typed"][1] / medians[other][1]
                    print(f"  typed/{other}: throughput {rate:.2f}x, peak memory {peak:.2f}x")


if __name__ == "__main__":
    main()
