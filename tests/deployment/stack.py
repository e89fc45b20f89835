"""The processes of a deployment: command-line servers, HAProxy, the load, and their logs.

:class:`Child` owns one process and its log file; :func:`stop_all` ends what is left of them
(SIGTERM, then SIGKILL). :func:`server_command` and :func:`start_haproxy` start the pieces the
way an operator would: the server through ``python -m typed_smtpd``, HAProxy with the
configuration of ``docs/examples/haproxy-deployment.cfg`` as is, its addresses given through
the environment. :class:`StatsWatcher` reads HAProxy's stats socket (``show stat``) and keeps
every change of a server's status.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

from tests.deployment.network import Endpoint, Topology

ROOT: Final = Path(__file__).resolve().parents[2]
HAPROXY: Final = shutil.which("haproxy")
#: The HAProxy configuration the suite runs, and the one docs/deployment.rst shows.
HAPROXY_CONFIG: Final = ROOT / "docs" / "examples" / "haproxy-deployment.cfg"
#: Seconds a server or HAProxy gets to start listening.
START_TIMEOUT: Final = 20.0
#: Seconds a process gets to end after SIGTERM before it is killed.
STOP_TIMEOUT: Final = 10.0
#: How long the PROXY header may take (--proxy-protocol), and a client's silence (--timeout).
PROXY_TIMEOUT: Final = 5.0
IDLE_TIMEOUT: Final = 5.0
BANNER: Final = re.compile(r"listening on (\S+)")


@dataclass
class Child:
    """One process and the file its standard error (and output) goes to."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        """The process id (the program itself: ``ip netns exec`` replaces itself with it)."""
        return self.process.pid

    def text(self) -> str:
        """The log so far."""
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """Wait until the log matches ``pattern``; fail if the process ends first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = pattern.search(self.text())
            if found:
                return found
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited ({self.process.returncode}):\n{self.text()}"
                )
            time.sleep(0.05)
        raise TimeoutError(
            f"{self.name}: no {pattern.pattern!r} within {timeout} s:\n{self.text()}"
        )

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT`; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(STOP_TIMEOUT)


def spawn(
    name: str,
    argv: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    stdin: int | None = subprocess.DEVNULL,
    stdout: int | IO[bytes] | None = None,
) -> Child:
    """Start ``argv`` from the repository's root with its output going to ``log``."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    with log.open("ab") as file:
        process = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env=environment,
            stdin=stdin,
            stdout=file if stdout is None else stdout,
            stderr=file,
        )
    return Child(name, process, log)


def stop_all(children: Iterable[Child]) -> None:
    """End every child still running; never raises."""
    for child in children:
        try:
            child.stop()
        except (OSError, subprocess.SubprocessError):
            try:
                child.process.kill()
            except OSError:
                pass


def server_command(
    topology: Topology,
    endpoint: Endpoint,
    maildir: Path,
    *,
    trusted: str | None = None,
    workers: int = 1,
    debug: bool = False,
) -> list[str]:
    """``python -m typed_smtpd`` listening at ``endpoint``, storing into ``maildir``.

    With ``trusted`` the server expects a PROXY header (``--proxy-protocol``) and accepts it from
    that address alone (:class:`tests.deployment.trusting.TrustingMailbox`).
    """
    argv = [sys.executable, "-m", "typed_smtpd", "-n", "-l", str(endpoint)]
    argv += ["--timeout", str(IDLE_TIMEOUT), "--hostname", "smtpd.deployment.test"]
    if debug:
        argv.append("-d")
    if workers > 1:
        argv += ["--workers", str(workers)]
    if trusted is None:
        argv += ["-c", "typed_smtpd.handlers.Mailbox", "--", str(maildir)]
    else:
        argv += ["--proxy-protocol", str(PROXY_TIMEOUT)]
        argv += ["-c", "tests.deployment.trusting.TrustingMailbox", "--", str(maildir), trusted]
    return topology.command(endpoint.namespace, argv)


def haproxy_environment(topology: Topology, stats: Path) -> dict[str, str]:
    """The variables ``docs/examples/haproxy-deployment.cfg`` reads."""
    first, second, third = topology.backends
    return {
        "SMTP_LISTEN": str(topology.frontend),
        "HAPROXY_SOURCE": topology.balancer_source,
        "SMTPD1": str(first),
        "SMTPD2": str(second),
        "SMTPD3": str(third),
        "HAPROXY_STATS": str(stats),
    }


def start_haproxy(topology: Topology, stats: Path, log: Path) -> Child:
    """HAProxy in the foreground with the documented configuration; waits for its stats socket."""
    assert HAPROXY is not None
    argv = topology.command(
        topology.frontend.namespace, [HAPROXY, "-db", "-f", str(HAPROXY_CONFIG)]
    )
    child = spawn("haproxy", argv, log, env=haproxy_environment(topology, stats))
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise RuntimeError(f"haproxy exited ({child.process.returncode}):\n{child.text()}")
        try:
            show_stat(stats)
            return child
        except OSError:
            time.sleep(0.05)
    child.stop()
    raise TimeoutError(f"haproxy's stats socket did not answer within {START_TIMEOUT} s")


def show_stat(path: Path) -> dict[str, str]:
    """``show stat`` on HAProxy's stats socket: each server of the backend and its status."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(b"show stat\n")
        data = b""
        for _ in range(1024):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
    return {
        row["svname"]: row["status"]
        for row in rows
        if row.get("pxname") == "typed_smtpd" and row.get("svname") not in ("BACKEND", None)
    }


@dataclass
class StatsWatcher:
    """Polls ``show stat`` in a thread and keeps each server's status changes, with their times."""

    path: Path
    changes: list[tuple[float, str, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Start polling (every 50 ms)."""
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        last: dict[str, str] = {}
        while not self._stop.wait(0.05):
            try:
                now = show_stat(self.path)
            except OSError:
                continue
            for server, status in now.items():
                if last.get(server) != status:
                    self.changes.append((time.monotonic(), server, status))
            last = now

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def current(self, server: str) -> str | None:
        """The last status seen for ``server``."""
        for _, name, status in reversed(self.changes):
            if name == server:
                return status
        return None

    def wait(
        self, server: str, accept: Callable[[str], bool], *, after: float, timeout: float
    ) -> float:
        """Wait for a status of ``server`` that satisfies ``accept``, seen at ``after`` or later;
        when it was first seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for when, name, status in list(self.changes):
                if name == server and when >= after and accept(status):
                    return when
            time.sleep(0.05)
        raise TimeoutError(f"{server} stayed {self.current(server)!r} for {timeout} s")


def children_of(pid: int) -> list[int]:
    """The process ids whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry))
    return sorted(found)
