"""The load: many concurrent SMTP clients, each message unique, every outcome recorded.

Run as a program so that it can run inside the clients' network namespace::

    python -m tests.deployment.load run --target 198.18.0.1:25 --sources 198.18.0.2,198.18.0.3 \\
        --clients 48 --messages 3000 --out result.json
    python -m tests.deployment.load probe --source 198.18.1.250 --target 198.18.1.11:2525

``run`` prints ``progress ACCEPTED`` lines while it works and stops taking new messages once it
has started ``--messages`` of them and a ``stop`` line has come on standard input (or at
``--max-messages``, or at ``--deadline``); then it writes every attempt to ``--out``. A message
whose attempt fails (an error reply, a broken connection, a timeout) is tried again, with a new
attempt id, on a new connection. Every wait is bounded, and so is every loop.

``probe`` sends a PROXY header from ``--source`` and reports what the server sent back.

The content of an attempt is a function of its id alone (:func:`compose`), so that the test can
say what each stored file must hold without the load sending it the messages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Final

from typed_smtpd.proxy_protocol import build_v2
from typed_smtpd.testing.client import ServerDisconnected, SocketClient

#: Seconds any one wait of a client may take (a reply, a connection).
REPLY_TIMEOUT: Final = 20.0
#: Attempts per message before it counts as undelivered.
MAX_ATTEMPTS: Final = 40
#: Seconds a client waits after a failed attempt before it connects again.
RETRY_PAUSE: Final = 0.25
#: Messages sent on one connection, at most.
PER_CONNECTION: Final = 3
_WORDS: Final = (b"alpha", b"bravo", b"charlie", b"delta", b"echo", b"foxtrot", b"golf", b"hotel")
_MESSAGE_ID: Final = re.compile(rb"^Message-ID: <([0-9]+\.[0-9]+)@deployment\.test>\r$", re.M)


# --- messages -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Composed:
    """One attempt's envelope and content (CRLF line ends, not dot-stuffed)."""

    sender: str
    recipients: tuple[str, ...]
    content: bytes


def attempt_id(number: int, attempt: int) -> str:
    """The id of one attempt to send message ``number``: unique across the run."""
    return f"{number}.{attempt}"


def compose(attempt: str) -> Composed:
    """The message of ``attempt``: mostly small, some tens of KiB, with lines DATA must stuff."""
    rng = random.Random(attempt)
    sender = f"sender{rng.randrange(50)}@example.test"
    recipients = tuple(f"rcpt{rng.randrange(500)}@example.test" for _ in range(rng.randint(1, 2)))
    target = rng.randint(300, 3000) if rng.random() < 0.8 else rng.randint(10_000, 40_000)
    lines = []
    size = 0
    while size < target:
        roll = rng.random()
        if roll < 0.05:
            line = b"." + rng.choice(_WORDS)  # dot-stuffed on the wire, stored unstuffed
        elif roll < 0.08:
            line = b"From " + rng.choice(_WORDS)
        elif roll < 0.1:
            line = b""
        else:
            line = b" ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 12)))
        lines.append(line)
        size += len(line) + 2
    header = (
        f"Message-ID: <{attempt}@deployment.test>\r\n"
        f"From: <{sender}>\r\n"
        f"To: {', '.join(f'<{r}>' for r in recipients)}\r\n"
        f"Subject: deployment {attempt}\r\n\r\n"
    ).encode()
    return Composed(sender, recipients, header + b"\r\n".join(lines) + b"\r\n")


def stored_form(attempt: str, peer: str) -> bytes:
    """What the Mailbox handler stores for ``attempt`` received from ``peer``."""
    composed = compose(attempt)
    trace = (
        f"X-Peer: {peer}\r\n"
        f"X-MailFrom: {composed.sender}\r\n"
        f"X-RcptTo: {', '.join(composed.recipients)}\r\n"
    )
    return trace.encode() + composed.content


def stored_attempt(raw: bytes) -> tuple[str, str] | None:
    """The attempt id and the X-Peer value of a stored file, or None if it has neither."""
    head = raw.partition(b"\r\n\r\n")[0]
    found = _MESSAGE_ID.search(head)
    if not head.startswith(b"X-Peer: ") or found is None:
        return None
    peer = head[len(b"X-Peer: ") :].partition(b"\r\n")[0]
    return found.group(1).decode(), peer.decode("utf-8", "replace")


# --- the run --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Attempt:
    """One try at one message: where it came from and how it ended."""

    id: str
    source: tuple[str, int] | None
    outcome: str  # "accepted", "refused NNN" or "broken ExceptionName"
    seconds: float


@dataclass(slots=True)
class Run:
    """The state shared by the client tasks, and in the end the result."""

    started: float
    min_messages: int
    max_messages: int
    deadline: float
    stop: threading.Event = field(default_factory=threading.Event)
    issued: int = 0
    accepted: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    undelivered: list[int] = field(default_factory=list)
    idle: list[dict[str, object]] = field(default_factory=list)

    def take(self) -> int | None:
        """The number of the next message to send, or None when no more should start."""
        if self.issued >= self.max_messages or time.monotonic() > self.deadline:
            return None
        if self.issued >= self.min_messages and self.stop.is_set():
            return None
        self.issued += 1
        return self.issued - 1

    def record(self, attempt: str, source: tuple[str, int] | None, outcome: str) -> None:
        """Note how one attempt ended."""
        self.attempts.append(Attempt(attempt, source, outcome, time.monotonic() - self.started))
        if outcome == "accepted":
            self.accepted += 1


async def _connect(host: str, port: int, source: str) -> SocketClient:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, local_addr=(source, 0)), REPLY_TIMEOUT
    )
    client = SocketClient(reader, writer, timeout=REPLY_TIMEOUT)
    try:
        await client.read_greeting()
    except BaseException:
        client.close()
        raise
    return client


def _sockname(client: SocketClient | None) -> tuple[str, int] | None:
    if client is None:
        return None
    name = client._writer.get_extra_info("sockname")
    return (str(name[0]), int(name[1])) if isinstance(name, tuple) else None


async def _send(client: SocketClient, attempt: str) -> str:
    """MAIL, RCPT and DATA for ``attempt``; the outcome."""
    composed = compose(attempt)
    reply = await client.mail(composed.sender)
    if reply.code != 250:
        return f"refused {reply.code}"
    for recipient in composed.recipients:
        reply = await client.rcpt(recipient)
        if reply.code != 250:
            await client.rset()
            return f"refused {reply.code}"
    reply = await client.data(composed.content)
    return "accepted" if reply.code == 250 else f"refused {reply.code}"


async def _client(run: Run, host: str, port: int, source: str, seed: int) -> None:
    """Send messages, a few per connection, until the run says stop; retry what fails."""
    rng = random.Random(seed)
    pending: deque[tuple[int, int]] = deque()  # (message number, attempts made)
    for _ in range(run.max_messages * MAX_ATTEMPTS):  # a bound the loop never reaches
        if not pending:
            number = run.take()
            if number is None:
                return
            pending.append((number, 0))
        if time.monotonic() > run.deadline:
            run.undelivered.extend(number for number, _ in pending)
            return
        client: SocketClient | None = None
        in_flight: tuple[int, int] | None = None
        try:
            client = await _connect(host, port, source)
            if (await client.ehlo("load.deployment.test")).code != 250:
                raise ServerDisconnected("EHLO refused")
            for _ in range(rng.randint(1, PER_CONNECTION)):
                if not pending:
                    number = run.take()
                    if number is None:
                        break
                    pending.append((number, 0))
                in_flight = pending.popleft()
                attempt = attempt_id(*in_flight)
                outcome = await _send(client, attempt)
                run.record(attempt, _sockname(client), outcome)
                number, made = in_flight
                in_flight = None
                if outcome != "accepted":
                    _again(run, pending, number, made + 1)
                    break
            await client.send("QUIT")
        except (OSError, TimeoutError, asyncio.TimeoutError) as error:
            # A failure before MAIL leaves the message pending under the same attempt id: none
            # of it was sent. One during the transaction ends that attempt.
            if in_flight is not None:
                why = f"broken {type(error).__name__}: {str(error).partition(chr(10))[0]}"
                run.record(attempt_id(*in_flight), _sockname(client), why[:160])
                _again(run, pending, in_flight[0], in_flight[1] + 1)
            await asyncio.sleep(RETRY_PAUSE)
        finally:
            if client is not None:
                client.close()


def _again(run: Run, retry: deque[tuple[int, int]], number: int, made: int) -> None:
    if made < MAX_ATTEMPTS:
        retry.appendleft((number, made))
    else:
        run.undelivered.append(number)


async def _idle(run: Run, host: str, port: int, source: str, seconds: float) -> None:
    """Greet, then say nothing for ``seconds``: the server's timeout should end the session."""
    entry: dict[str, object] = {"source": None, "outcome": ""}
    run.idle.append(entry)
    try:
        client = await _connect(host, port, source)
    except (OSError, TimeoutError, asyncio.TimeoutError) as error:
        entry["outcome"] = f"failed {error!r}"
        return
    try:
        entry["source"] = _sockname(client)
        await client.ehlo("idle.deployment.test")
        client.timeout = seconds
        entry["outcome"] = str(await client.read_reply())
    except (OSError, TimeoutError, asyncio.TimeoutError) as error:
        entry["outcome"] = f"broken {type(error).__name__}"
    finally:
        client.close()


async def _progress(run: Run) -> None:
    while True:
        print(f"progress {run.accepted}", flush=True)
        await asyncio.sleep(0.25)


def _watch_stdin(run: Run) -> None:
    for line in sys.stdin:
        if line.strip() == "stop":
            break
    run.stop.set()


async def drive(options: argparse.Namespace) -> Run:
    """The whole run; returns once every client task has ended."""
    host, _, port = options.target.rpartition(":")
    sources = options.sources.split(",")
    run = Run(
        started=time.monotonic(),
        min_messages=options.messages,
        max_messages=options.max_messages,
        deadline=time.monotonic() + options.deadline,
    )
    threading.Thread(target=_watch_stdin, args=(run,), daemon=True).start()
    reporter = asyncio.ensure_future(_progress(run))
    tasks = [
        _client(run, host, int(port), sources[index % len(sources)], index)
        for index in range(options.clients)
    ]
    tasks += [
        _idle(run, host, int(port), sources[index % len(sources)], options.idle_seconds)
        for index in range(options.idle)
    ]
    try:
        # Each task stops starting messages at the deadline; this bounds the ones in flight.
        await asyncio.wait_for(asyncio.gather(*tasks), options.deadline + 4 * REPLY_TIMEOUT)
    finally:
        reporter.cancel()
    print(f"progress {run.accepted}", flush=True)
    return run


def probe(source: str, target: str, timeout: float = 10.0) -> bytes:
    """Connect from ``source``, send a PROXY v2 header naming 192.0.2.1; what comes back."""
    host, _, port = target.rpartition(":")
    header = build_v2("192.0.2.1", host, 40000, int(port))
    received = b""
    with socket.create_connection(
        (host, int(port)), timeout=timeout, source_address=(source, 0)
    ) as sock:
        sock.sendall(header + b"EHLO forged.test\r\n")
        for _ in range(64):
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            received += chunk
    return received


def main() -> None:
    """The command line (see the module's docstring)."""
    parser = argparse.ArgumentParser(prog="python -m tests.deployment.load")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run")
    run.add_argument("--target", required=True, help="HOST:PORT")
    run.add_argument("--sources", required=True, help="client addresses, comma-separated")
    run.add_argument("--clients", type=int, default=48)
    run.add_argument("--messages", type=int, default=3000)
    run.add_argument("--max-messages", type=int, default=20_000)
    run.add_argument("--deadline", type=float, default=120.0, help="seconds")
    run.add_argument("--idle", type=int, default=0, help="clients that go silent after EHLO")
    run.add_argument("--idle-seconds", type=float, default=8.0)
    run.add_argument("--out", required=True)
    check = commands.add_parser("probe")
    check.add_argument("--source", required=True)
    check.add_argument("--target", required=True)
    options = parser.parse_args()
    if options.command == "probe":
        print(json.dumps({"received": probe(options.source, options.target).hex()}), flush=True)
        return
    result = asyncio.run(drive(options))
    document = {
        "issued": result.issued,
        "attempts": [asdict(attempt) for attempt in result.attempts],
        "undelivered": result.undelivered,
        "idle": result.idle,
        "seconds": time.monotonic() - result.started,
    }
    with open(options.out, "w", encoding="utf-8") as file:
        json.dump(document, file)
    print("done", flush=True)


if __name__ == "__main__":
    main()
