"""Three command-line servers behind HAProxy, and one ``--workers 3`` server, each losing a process
under load.

Behind HAProxy (``docs/examples/haproxy-deployment.cfg``, PROXY protocol v2, SMTP health checks):
thousands of messages from many concurrent clients; one backend is killed with SIGKILL a quarter
of the way in and started again once HAProxy has taken it out. Then every message answered
``250`` is stored exactly once across the three Maildirs, byte for byte; every attempt that was
not answered ``250`` ended with an error the client saw; every message got through in the end
(clients try again); HAProxy's health check took the dead backend out and put it back; a PROXY
header from any address but HAProxy's is refused. Whether the stored ``X-Peer`` and the server's
log lines name the client or HAProxy is checked on its own.

With ``--workers 3``: the same load straight at the server; one worker killed with SIGKILL. The
supervisor does what docs/deployment.rst says (no restart; the other workers stopped; exit status
1), the server is started again as a service manager would, and no message answered ``250`` is
lost.

Runs with ``nox -s deployment``; skipped unless ``TYPED_SMTPD_DEPLOYMENT=1``.
``TYPED_SMTPD_DEPLOYMENT_MESSAGES`` sets the number of messages per run (3000).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

import pytest

from tests.deployment.load import stored_attempt, stored_form
from tests.deployment.network import NetworkUnavailable, Topology, network
from tests.deployment.stack import (
    BANNER,
    HAPROXY,
    ROOT,
    START_TIMEOUT,
    Child,
    StatsWatcher,
    children_of,
    server_command,
    spawn,
    start_haproxy,
    stop_all,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("TYPED_SMTPD_DEPLOYMENT") != "1",
        reason="run by nox -s deployment (TYPED_SMTPD_DEPLOYMENT=1)",
    ),
    pytest.mark.skipif(
        HAPROXY is None, reason="haproxy is not installed (apt-get install haproxy)"
    ),
]

MESSAGES: Final = int(os.environ.get("TYPED_SMTPD_DEPLOYMENT_MESSAGES", "3000"))
CLIENTS: Final = 48
#: Clients that go silent after EHLO, so that the servers log a time-out naming their peer.
IDLE_CLIENTS: Final = 4
#: Seconds the load may run at most; every wait below has its own, shorter bound.
LOAD_DEADLINE: Final = 150.0
#: Seconds for HAProxy to see a server go down or come back (checks every 1 s, fall 2, rise 2).
HEALTH_TIMEOUT: Final = 15.0
#: Messages the restarted process must have stored before the load may stop.
AFTER_RESTART: Final = 20
VICTIM: Final = 1  # smtpd2
SUPERVISOR_BANNER: Final = re.compile(r"listening on \S+ \(3 workers, pids ([0-9, ]+);")
#: A peer in a log line: an event line's ``client=ADDRESS:PORT`` (IPv6 in brackets), or the
#: ``('ADDRESS', PORT)`` of the other lines.
PEER_IN_LOG: Final = re.compile(r"client=\[?([0-9a-f.:]+?)\]?:[0-9]+|\('([0-9a-f.:]+)', [0-9]+\)")


def peer_of(line: str) -> str | None:
    found = PEER_IN_LOG.search(line)
    return None if found is None else found.group(1) or found.group(2)


# --- running a load -------------------------------------------------------------------------------


class Progress:
    """Reads the load's ``progress N`` lines in a thread; :attr:`accepted` is the latest N."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.accepted = 0
        self.finished = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            word, _, number = line.decode().partition(" ")
            if word == "progress":
                self.accepted = int(number)
        self.finished.set()

    def wait(self, accepted: int, timeout: float) -> None:
        """Wait until ``accepted`` messages were answered 250; fail if the load ends first."""
        deadline = time.monotonic() + timeout
        while self.accepted < accepted:
            if self.finished.is_set() or time.monotonic() > deadline:
                raise TimeoutError(f"the load reached {self.accepted} of {accepted} messages")
            time.sleep(0.05)


@dataclass
class Load:
    """The load program running in the clients' namespace."""

    child: Child
    progress: Progress
    out: Path

    def finish(self) -> dict[str, object]:
        """Tell it to stop once it has started its messages; its result."""
        stdin = self.child.process.stdin
        assert stdin is not None
        stdin.write(b"stop\n")
        stdin.close()
        self.child.process.wait(LOAD_DEADLINE)
        if self.child.process.returncode != 0:
            raise RuntimeError(f"the load failed:\n{self.child.text()}")
        result: dict[str, object] = json.loads(self.out.read_text())
        return result


def start_load(topology: Topology, target: str, workdir: Path, name: str, idle: int) -> Load:
    """The load program against ``target``, from every client address."""
    out = workdir / f"{name}.json"
    argv = [sys.executable, "-m", "tests.deployment.load", "run", "--target", target]
    argv += ["--sources", ",".join(topology.client_hosts), "--clients", str(CLIENTS)]
    argv += ["--messages", str(MESSAGES), "--max-messages", str(20 * MESSAGES)]
    argv += ["--deadline", str(LOAD_DEADLINE), "--idle", str(idle), "--out", str(out)]
    child = spawn(
        name,
        topology.command(topology.client_namespace, argv),
        workdir / f"{name}.log",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.process.stdout is not None
    return Load(child, Progress(child.process.stdout), out)


def run_probe(topology: Topology) -> bytes:
    """What the first backend sends to a PROXY header from an address other than HAProxy's."""
    argv = [sys.executable, "-m", "tests.deployment.load", "probe"]
    argv += ["--source", topology.untrusted_source, "--target", str(topology.backends[0])]
    done = subprocess.run(
        topology.command(topology.untrusted_namespace, argv),
        capture_output=True,
        timeout=30,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return bytes.fromhex(json.loads(done.stdout)["received"])


def maildir_files(maildir: Path) -> dict[str, bytes]:
    """Every delivered file of a Maildir (``new`` and ``cur``), by name."""
    return {
        f"{sub}/{path.name}": path.read_bytes()
        for sub in ("new", "cur")
        if (maildir / sub).is_dir()
        for path in (maildir / sub).iterdir()
    }


@dataclass
class Outcome:
    """What one run left behind, for the tests to check."""

    topology: Topology
    attempts: list[dict[str, object]]
    undelivered: list[int]
    #: Stored files per Maildir: attempt id -> (X-Peer, raw bytes), and the ones without an id.
    stored: list[list[tuple[str, str, bytes]]]
    logs: list[str]
    extra: dict[str, object] = field(default_factory=dict)

    def accepted(self) -> dict[str, dict[str, object]]:
        """The attempts answered 250, by id."""
        return {str(a["id"]): a for a in self.attempts if a["outcome"] == "accepted"}


def read_stored(maildir: Path) -> list[tuple[str, str, bytes]]:
    """(attempt id, X-Peer, raw bytes) of every file in ``maildir``; id "" when unreadable."""
    found = []
    for raw in maildir_files(maildir).values():
        parsed = stored_attempt(raw)
        found.append((*parsed, raw) if parsed else ("", "", raw))
    return found


# --- the runs -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def topology() -> Iterator[Topology]:
    if HAPROXY is None:
        pytest.fail("CI must run the deployment tests: haproxy is not installed")
    try:
        with network() as built:
            yield built
    except NetworkUnavailable as error:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the deployment tests: {error}")
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deployment")


@pytest.fixture(scope="module")
def balanced(topology: Topology, workdir: Path) -> Outcome:
    """The HAProxy run: three backends, one killed with SIGKILL under load and restarted."""
    base = workdir / "balanced"
    base.mkdir()
    # A Unix socket path must stay short (108 octets): not under pytest's temporary directory.
    sockets = Path(tempfile.mkdtemp(prefix="tsd-"))
    stats = sockets / "haproxy.sock"
    maildirs = [base / f"Maildir{index}" for index in (1, 2, 3)]
    trusted = f"{topology.balancer_source}/32"
    children: list[Child] = []
    watcher = StatsWatcher(stats)
    try:
        backends = []
        for index, endpoint in enumerate(topology.backends):
            command = server_command(topology, endpoint, maildirs[index], trusted=trusted)
            backends.append(spawn(f"smtpd{index + 1}", command, base / f"smtpd{index + 1}.log"))
        children += backends
        for backend in backends:
            backend.wait_for(BANNER, START_TIMEOUT)
        haproxy = start_haproxy(topology, stats, base / "haproxy.log")
        children.append(haproxy)
        watcher.start()
        for name in ("smtpd1", "smtpd2", "smtpd3"):
            watcher.wait(name, lambda s: s == "UP", after=0, timeout=HEALTH_TIMEOUT)

        probed = run_probe(topology)
        load = start_load(topology, str(topology.frontend), base, "load", IDLE_CLIENTS)
        children.append(load.child)
        load.progress.wait(MESSAGES // 4, LOAD_DEADLINE)
        victim = backends[VICTIM]
        killed_at = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        victim.process.wait(10)
        down_at = watcher.wait("smtpd2", lambda s: s == "DOWN", after=killed_at, timeout=15)
        before_restart = set(maildir_files(maildirs[VICTIM]))
        restarted_at = time.monotonic()
        command = server_command(
            topology, topology.backends[VICTIM], maildirs[VICTIM], trusted=trusted
        )
        again = spawn("smtpd2 (restarted)", command, base / "smtpd2-restarted.log")
        children.append(again)
        again.wait_for(BANNER, START_TIMEOUT)
        listening_at = time.monotonic()
        up_at = watcher.wait("smtpd2", lambda s: s == "UP", after=restarted_at, timeout=15)
        load.progress.wait(MESSAGES // 2, LOAD_DEADLINE)
        deadline = time.monotonic() + LOAD_DEADLINE
        while len(set(maildir_files(maildirs[VICTIM])) - before_restart) < AFTER_RESTART:
            assert time.monotonic() < deadline, "the restarted backend got no messages"
            time.sleep(0.1)
        result = load.finish()
        watcher.stop()
        haproxy.stop()
        statuses = {child.name: child.stop() for child in (backends[0], backends[2], again)}
        return Outcome(
            topology=topology,
            attempts=list(result["attempts"]),  # type: ignore[call-overload]
            undelivered=list(result["undelivered"]),  # type: ignore[call-overload]
            stored=[read_stored(maildir) for maildir in maildirs],
            logs=[backends[0].text(), victim.text() + again.text(), backends[2].text()],
            extra={
                "idle": result["idle"],
                "seconds": result["seconds"],
                "probed": probed,
                "statuses": statuses,
                "changes": list(watcher.changes),
                "killed_at": killed_at,
                "down_at": down_at,
                "restarted_at": restarted_at,
                "listening_at": listening_at,
                "up_at": up_at,
                "after_restart": len(set(maildir_files(maildirs[VICTIM])) - before_restart),
                "haproxy_log": haproxy.text(),
                "tmp_left": [sorted(p.name for p in m.glob("tmp/*")) for m in maildirs],
            },
        )
    finally:
        watcher.stop()
        stop_all(reversed(children))
        shutil.rmtree(sockets, ignore_errors=True)


@pytest.fixture(scope="module")
def workers(topology: Topology, workdir: Path) -> Outcome:
    """The ``--workers 3`` run: one worker killed with SIGKILL under load, the server restarted."""
    base = workdir / "workers"
    base.mkdir()
    maildir = base / "Maildir"
    children: list[Child] = []
    try:
        command = server_command(topology, topology.workers, maildir, workers=3)
        supervisor = spawn("supervisor", command, base / "supervisor.log")
        children.append(supervisor)
        pids = [
            int(pid) for pid in supervisor.wait_for(SUPERVISOR_BANNER, START_TIMEOUT)[1].split(",")
        ]
        found = children_of(supervisor.pid)
        load = start_load(topology, str(topology.workers), base, "load", 0)
        children.append(load.child)
        load.progress.wait(MESSAGES // 4, LOAD_DEADLINE)
        victim = pids[0]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        status = supervisor.process.wait(30)
        stopped_after = time.monotonic() - killed_at
        left = [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
        accepted_at_exit = load.progress.accepted
        again = spawn("supervisor (restarted)", command, base / "supervisor-restarted.log")
        children.append(again)
        again.wait_for(SUPERVISOR_BANNER, START_TIMEOUT)
        load.progress.wait(max(MESSAGES // 2, accepted_at_exit + 100), LOAD_DEADLINE)
        result = load.finish()
        final_status = again.stop()
        return Outcome(
            topology=topology,
            attempts=list(result["attempts"]),  # type: ignore[call-overload]
            undelivered=list(result["undelivered"]),  # type: ignore[call-overload]
            stored=[read_stored(maildir)],
            logs=[supervisor.text() + again.text()],
            extra={
                "pids": pids,
                "found": found,
                "victim": victim,
                "status": status,
                "stopped_after": stopped_after,
                "left": left,
                "supervisor_log": supervisor.text(),
                "final_status": final_status,
                "seconds": result["seconds"],
            },
        )
    finally:
        stop_all(reversed(children))


# --- checks shared by both runs -------------------------------------------------------------------


def storage_problems(outcome: Outcome, peers_must_match: bool) -> list[str]:
    """Every way the stored files differ from what was answered 250 (empty when none)."""
    accepted = outcome.accepted()
    problems = []
    copies: Counter[str] = Counter()
    for index, files in enumerate(outcome.stored):
        for attempt, peer, raw in files:
            if not attempt:
                problems.append(f"Maildir{index + 1}: a file without an attempt id: {raw[:80]!r}")
                continue
            copies[attempt] += 1
            if raw != stored_form(attempt, peer):
                problems.append(f"Maildir{index + 1}: {attempt} differs from what was sent")
            source = accepted.get(attempt, {}).get("source")
            if peers_must_match and isinstance(source, list) and peer != source[0]:
                problems.append(f"{attempt}: X-Peer {peer}, client {source[0]}")
    for attempt in accepted:
        if copies[attempt] != 1:
            problems.append(f"{attempt} answered 250, stored {copies[attempt]} times")
    return problems


# --- behind HAProxy -------------------------------------------------------------------------------


def test_every_250_stored_exactly_once_byte_for_byte(balanced: Outcome) -> None:
    assert len(balanced.accepted()) >= MESSAGES
    assert storage_problems(balanced, peers_must_match=False) == []


def test_a_broken_connection_is_an_error_never_a_250(balanced: Outcome) -> None:
    outcomes = Counter(str(a["outcome"]).split(":")[0] for a in balanced.attempts)
    broken = [a for a in balanced.attempts if str(a["outcome"]).startswith("broken")]
    assert broken, f"the kill broke no transaction: {outcomes}"
    # An attempt that was not answered 250 may have been stored only by the killed process,
    # between writing the file and answering; the surviving servers never store one.
    accepted = balanced.accepted()
    stored_elsewhere = [
        attempt
        for index, files in enumerate(balanced.stored)
        for attempt, _, _ in files
        if attempt not in accepted and index != VICTIM
    ]
    assert stored_elsewhere == []
    refused = {outcome: n for outcome, n in outcomes.items() if outcome.startswith("refused")}
    assert refused == {}


def test_every_message_got_through_in_the_end(balanced: Outcome) -> None:
    assert balanced.undelivered == []
    numbers = {str(a["id"]).split(".")[0] for a in balanced.accepted().values()}
    assert len(numbers) == len(balanced.accepted())  # no message answered 250 twice


def test_health_check_took_the_backend_out_and_back(balanced: Outcome, workdir: Path) -> None:
    extra = balanced.extra
    summary = {
        "network": balanced.topology.kind,
        "load_seconds": extra["seconds"],
        "attempts": dict(Counter(str(a["outcome"]).split(":")[0] for a in balanced.attempts)),
        "down_after_kill": extra["down_at"] - extra["killed_at"],  # type: ignore[operator]
        "up_after_listening": extra["up_at"] - extra["listening_at"],  # type: ignore[operator]
    }
    (workdir / "balanced-summary.json").write_text(json.dumps(summary, indent=1))
    assert extra["killed_at"] < extra["down_at"] < extra["restarted_at"] < extra["up_at"]  # type: ignore[operator]
    changes: list[tuple[float, str, str]] = extra["changes"]  # type: ignore[assignment]
    assert [status for _, name, status in changes if name == "smtpd2"][-1] == "UP"
    assert not [change for change in changes if change[1] != "smtpd2" and "DOWN" in change[2]]
    log = str(extra["haproxy_log"])
    assert "Server typed_smtpd/smtpd2 is DOWN" in log and "Server typed_smtpd/smtpd2 is UP" in log
    for survivor in ("smtpd1", "smtpd3"):
        assert f"Health check for server typed_smtpd/{survivor} failed" not in log
    assert extra["after_restart"] >= AFTER_RESTART  # type: ignore[operator]


def test_proxy_header_only_from_haproxy(balanced: Outcome) -> None:
    assert balanced.extra["probed"] == b""  # closed before any greeting
    assert f"('{balanced.topology.untrusted_source}'," in balanced.logs[0]
    assert "PROXY header refused: peer is not a trusted proxy" in balanced.logs[0]


def test_servers_stop_cleanly(balanced: Outcome) -> None:
    assert set(balanced.extra["statuses"].values()) == {0}  # type: ignore[attr-defined]
    assert balanced.extra["tmp_left"][0] == balanced.extra["tmp_left"][2] == []  # type: ignore[index]


def test_x_peer_names_the_client_not_haproxy(balanced: Outcome) -> None:
    peers = Counter(peer for files in balanced.stored for _, peer, _ in files)
    assert balanced.topology.balancer_source not in peers
    assert storage_problems(balanced, peers_must_match=True) == []


def peer_lines(outcome: Outcome) -> list[str]:
    """The servers' log lines that name a connection's peer, but for the refused PROXY probe."""
    return [
        line
        for log in outcome.logs
        for line in log.splitlines()
        if PEER_IN_LOG.search(line) and "PROXY header refused" not in line
    ]


def test_log_lines_name_a_peer(balanced: Outcome) -> None:
    # At the default level every event line names the client (the connections, the messages,
    # the idle clients' time-outs); no warning or error names one but the refused probe.
    warnings = [line for line in peer_lines(balanced) if " WARNING " in line or " ERROR " in line]
    assert warnings == []
    assert any(" timeout client=" in line for line in peer_lines(balanced))
    assert any(" accepted client=" in line for line in peer_lines(balanced))
    topology = balanced.topology
    # The balancer's own connections are its health checks (a PROXY v2 LOCAL header, whose
    # addresses are discarded), and the refused probe speaks for itself.
    known = {*topology.client_hosts, topology.balancer_source, topology.untrusted_source}
    for line in peer_lines(balanced):
        assert peer_of(line) in known, line


def test_log_lines_name_the_client_not_haproxy(balanced: Outcome) -> None:
    # Every message came through HAProxy: each accepted line names the client behind it.
    balancer = balanced.topology.balancer_source
    accepted = [line for line in peer_lines(balanced) if " accepted client=" in line]
    assert accepted
    assert [line for line in accepted if peer_of(line) == balancer] == []


# --- with --workers 3 -----------------------------------------------------------------------------


def test_supervisor_stops_the_others_and_exits_1(workers: Outcome, workdir: Path) -> None:
    extra = workers.extra
    summary = {
        "load_seconds": extra["seconds"],
        "attempts": dict(Counter(str(a["outcome"]).split(":")[0] for a in workers.attempts)),
        "supervisor_exit_after_kill": extra["stopped_after"],
    }
    (workdir / "workers-summary.json").write_text(json.dumps(summary, indent=1))
    assert extra["found"] == sorted(extra["pids"])  # type: ignore[call-overload]
    assert extra["status"] == 1
    assert extra["left"] == []
    log = str(extra["supervisor_log"])
    assert f"worker 1 (pid {extra['victim']}) was killed by SIGKILL" in log
    assert "stopping the other workers" in log
    assert log.count("was killed") == 1  # the others were stopped, not killed
    assert log.count("mail.log: shutting down") == 2  # by SIGTERM, each draining its connections
    assert extra["final_status"] == 0


def test_workers_every_250_stored_exactly_once(workers: Outcome) -> None:
    assert workers.undelivered == []
    assert len(workers.accepted()) >= MESSAGES
    assert storage_problems(workers, peers_must_match=True) == []
    assert any(str(a["outcome"]).startswith("broken") for a in workers.attempts)
