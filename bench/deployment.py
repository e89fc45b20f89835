"""Messages per second that one command-line server sustains on one core behind HAProxy.

The server (``python -m typed_smtpd --proxy-protocol 5 -c typed_smtpd.handlers.Mailbox DIR``) is
pinned to one core; HAProxy, with the configuration of ``docs/examples/haproxy-deployment.cfg``
(its three ``server`` lines all naming this one server), and Postfix's ``smtp-source`` share the
other cores. Each round sends ``--messages`` messages of ``--size`` octets from ``--sessions``
concurrent sessions, one message per connection (``--reuse``: all of a session's messages over
one connection), and counts the files in the Maildir afterwards.

Printed per round and as the median of the rounds: messages per second of wall-clock time, the
server's CPU use (1.00 is the whole core), messages per CPU-second of the server, which is the
figure to size a deployment with (it does not depend on whether the client kept the core busy),
and HAProxy's CPU use. Everything runs on 127.0.0.0/8 with free ports; every process is stopped
at the end.

    python bench/deployment.py                       # 3 rounds of 5000 messages
    python bench/deployment.py --rounds 5 --messages 20000 --sessions 64 --size 10000

Needs ``haproxy`` and ``smtp-source`` (Debian: ``apt-get install haproxy postfix``), Linux, and
two cores or more.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[1]
CONFIG: Final = ROOT / "docs" / "examples" / "haproxy-deployment.cfg"
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
FRONTEND: Final = "127.0.0.9"
BALANCER_SOURCE: Final = "127.0.0.10"
BACKEND: Final = "127.0.0.11"
START_TIMEOUT: Final = 20.0
ROUND_TIMEOUT: Final = 600.0


@dataclass(frozen=True, slots=True)
class Round:
    """One measured round."""

    messages: int
    seconds: float
    server_cpu: float
    balancer_cpu: float

    @property
    def per_second(self) -> float:
        """Messages per second of wall-clock time."""
        return self.messages / self.seconds

    @property
    def utilisation(self) -> float:
        """The server's share of its core during the round."""
        return self.server_cpu / self.seconds

    @property
    def per_cpu_second(self) -> float:
        """Messages per CPU-second of the server."""
        return self.messages / self.server_cpu


def free_port(host: str) -> int:
    """A port nothing listens on at ``host`` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds the process has used so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def wait_listening(host: str, port: int, process: subprocess.Popen[bytes]) -> None:
    """Wait until ``host:port`` accepts connections; fail if ``process`` ends first."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args!r} exited with status {process.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {host}:{port} after {START_TIMEOUT} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after ten seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def delivered(maildir: Path) -> int:
    """Messages in the Maildir."""
    return sum(1 for _ in (maildir / "new").iterdir())


def one_round(
    smtp_source: str,
    port: int,
    server: int,
    balancer: int,
    maildir: Path,
    options: argparse.Namespace,
) -> Round:
    """Send the messages once through HAProxy; what it took."""
    before = delivered(maildir)
    argv = [smtp_source, "-s", str(options.sessions), "-m", str(options.messages)]
    argv += ["-l", str(options.size), "-M", "bench.test", "-f", "bench@bench.test"]
    argv += ["-t", "rcpt@bench.test"]
    if options.reuse:
        argv.append("-d")
    argv.append(f"{FRONTEND}:{port}")
    cpu, balancer_cpu = cpu_seconds(server), cpu_seconds(balancer)
    started = time.perf_counter()
    done = subprocess.run(
        argv, capture_output=True, timeout=ROUND_TIMEOUT, check=False, preexec_fn=options.pin
    )
    seconds = time.perf_counter() - started
    cpu = cpu_seconds(server) - cpu
    balancer_cpu = cpu_seconds(balancer) - balancer_cpu
    if done.returncode != 0:
        raise SystemExit(f"smtp-source failed ({done.returncode}): {done.stderr[-500:]!r}")
    stored = delivered(maildir) - before
    if stored != options.messages:
        raise SystemExit(f"{options.messages} messages sent, {stored} stored")
    return Round(stored, seconds, cpu, balancer_cpu)


def main() -> None:
    """Run the rounds and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=5000, help="per round")
    parser.add_argument("--sessions", type=int, default=32, help="concurrent sessions")
    parser.add_argument("--size", type=int, default=2000, help="octets per message")
    parser.add_argument("--reuse", action="store_true", help="one connection per session")
    parser.add_argument("--maildir", type=Path, help="where the server stores (a temporary dir)")
    options = parser.parse_args()

    haproxy = shutil.which("haproxy")
    smtp_source = shutil.which("smtp-source") or shutil.which("/usr/sbin/smtp-source")
    if haproxy is None or smtp_source is None:
        raise SystemExit("needs haproxy and smtp-source: apt-get install haproxy postfix")
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("needs two cores: one for the server, one for HAProxy and the client")
    server_core, other_cores = {cores[-1]}, set(cores[:-1])
    options.pin = lambda: os.sched_setaffinity(0, other_cores)

    with tempfile.TemporaryDirectory(prefix="tsd-bench-") as scratch:
        maildir = options.maildir or Path(scratch) / "Maildir"
        backend_port, port = free_port(BACKEND), free_port(FRONTEND)
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "typed_smtpd", "-n", "-l", f"{BACKEND}:{backend_port}"),
                *("--proxy-protocol", "5", "-c", "typed_smtpd.handlers.Mailbox", "--", maildir),
            ],
            stderr=subprocess.DEVNULL,
            preexec_fn=lambda: os.sched_setaffinity(0, server_core),
        )
        balancer: subprocess.Popen[bytes] | None = None
        try:
            wait_listening(BACKEND, backend_port, server)
            backend = f"{BACKEND}:{backend_port}"
            environment = {
                **os.environ,
                "SMTP_LISTEN": f"{FRONTEND}:{port}",
                "HAPROXY_SOURCE": BALANCER_SOURCE,
                "SMTPD1": backend,
                "SMTPD2": backend,
                "SMTPD3": backend,
                "HAPROXY_STATS": str(Path(scratch) / "haproxy.sock"),
            }
            balancer = subprocess.Popen(
                [haproxy, "-db", "-f", str(CONFIG)],
                env=environment,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=options.pin,
            )
            wait_listening(FRONTEND, port, balancer)
            time.sleep(2.5)  # the health checks mark the server up (rise 2, every second)
            one_round(
                smtp_source, port, server.pid, balancer.pid, maildir, options
            )  # warm-up, not counted
            rounds = []
            for number in range(1, options.rounds + 1):
                measured = one_round(smtp_source, port, server.pid, balancer.pid, maildir, options)
                rounds.append(measured)
                print(
                    f"round {number}: {measured.messages} messages in {measured.seconds:.2f} s, "
                    f"{measured.per_second:.0f}/s; server CPU {measured.utilisation:.2f}, "
                    f"{measured.per_cpu_second:.0f} messages per CPU-second; "
                    f"HAProxy CPU {measured.balancer_cpu / measured.seconds:.2f}",
                    flush=True,
                )
        finally:
            if balancer is not None:
                stop(balancer)
            stop(server)
    mode = "one connection per session" if options.reuse else "one message per connection"
    print(
        f"median of {len(rounds)} rounds ({options.sessions} sessions, {options.size}-octet "
        f"messages, {mode}): {statistics.median(r.per_second for r in rounds):.0f} messages/s, "
        f"server CPU {statistics.median(r.utilisation for r in rounds):.2f}, "
        f"{statistics.median(r.per_cpu_second for r in rounds):.0f} messages per CPU-second, "
        f"HAProxy CPU {statistics.median(r.balancer_cpu / r.seconds for r in rounds):.2f}"
    )


if __name__ == "__main__":
    if not re.match(r"linux", sys.platform):
        raise SystemExit("Linux only (CPU affinity, /proc)")
    main()
