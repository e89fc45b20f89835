"""The side-by-side benchmark: typed_smtpd against aiosmtpd, a bare ceiling sink, C smtp-sink and
(when built) the rival sinks on go-smtp and nodemailer's smtp-server.

Usage: ``python bench/run.py [--quick] [--workloads W1,W2] [--repeat 3] [--json out.json]``
(``--help`` lists the rest). See bench/README.md for what each workload measures.
``--peers DIR`` adds the rivals ``go-smtp`` and ``smtp-server`` from their build directory, and
``--target NAME=COMMAND`` any other server started by a command line with ``{port}`` in it.
``--baseline REV`` adds the server ``typed-base``: typed_smtpd as of that git revision, checked out
in a temporary worktree for the run, so one run compares the code before and after a change.

Each measured run starts a fresh server in its own subprocess (bench/servers.py, or Postfix's
smtp-sink), pinned to its own core, drives it with one client (Postfix's smtp-source, or
bench/client.py in this process), and reads the server's CPU time and memory from /proc. Runs of
the different servers alternate, in a rotating order, so drift on the machine hits them all alike;
the report gives medians and the median of the per-round ratios. Nothing is written anywhere but
stdout and the optional JSON file; every child is killed on the way out, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import client  # noqa: E402

ALL_SERVERS = ("typed", "aiosmtpd", "ceiling", "ceiling-buffered", "smtp-sink")
#: typed_smtpd with INFO event lines to a log file and Prometheus metrics on (not run by default).
OBSERVED = "typed-observed"
CEILINGS = ("ceiling", "ceiling-buffered")
BASELINE = "typed-base"  # typed_smtpd as of --baseline REV, from a temporary git worktree
#: typed_smtpd on uvloop, beside the stock-asyncio one in the same run (``--uvloop`` moves every
#: Python server to uvloop instead).
UVLOOP = "typed-uvloop"
#: typed_smtpd built with TYPED_SMTPD_COMPILE=1 (the protocol core compiled with mypyc), from a
#: temporary ``pip install --target`` of the repository (``--compiled``), on asyncio and uvloop.
COMPILED = "typed-compiled"
COMPILED_UVLOOP = "typed-compiled-uvloop"
#: Every variant of typed_smtpd that runs from the repository's code.
TYPED_VARIANTS = ("typed", UVLOOP, COMPILED, COMPILED_UVLOOP)
#: The rival sinks and where their build directory (``--peers DIR``) keeps them.
PEERS: dict[str, tuple[str, ...]] = {
    "go-smtp": ("go-smtp-sink",),
    "smtp-server": ("node", "node/sink.js"),
}
ALL_CLIENTS = ("smtp-source", "asyncio")
READY_TIMEOUT = 30.0  # seconds for a server to start listening
STOP_TIMEOUT = 15.0  # seconds for a server to exit after SIGTERM (a profiler writes its file)
POSTFIX_DIRS = ("/usr/sbin", "/usr/lib/postfix/sbin", "/usr/libexec/postfix")
KIB = 1024
MIB = 1024 * 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
IDLE_FD_MARGIN = 256  # descriptors kept free besides the idle connections of W5


@dataclass(frozen=True, slots=True)
class Workload:
    """One workload: what the clients do against each server."""

    name: str
    title: str
    kind: str  # "messages", "churn" or "idle"
    count: int  # messages (messages), connections (churn, idle)
    sessions: int = 1  # parallel sessions (messages), concurrency (churn)
    size: int = KIB
    pipelined: bool = False
    # smtp-sink holds 10,000 idle sessions poorly (minutes to accept them, 256 KiB each): no
    # reference there, only a long wait.
    skip_servers: tuple[str, ...] = ()

    def clients(self) -> tuple[str, ...]:
        """The clients able to drive this workload (smtp-source neither idles nor pipelines)."""
        if self.kind == "idle" or self.pipelined:
            return ("asyncio",)
        return ALL_CLIENTS


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("W1", "one connection, 5,000 messages of 1 KiB in sequence", "messages", 5_000),
        Workload("W2", "50 parallel sessions, 20,000 messages of 1 KiB", "messages", 20_000, 50),
        Workload("W3", "10 parallel sessions, 500 messages of 1 MiB", "messages", 500, 10, MIB),
        Workload("W4", "2,000 connections, each EHLO + one message + QUIT", "churn", 2_000, 10),
        Workload(
            "W5",
            "10,000 idle connections after EHLO",
            "idle",
            10_000,
            skip_servers=("smtp-sink",),
        ),
        Workload(
            "W6",
            "one connection, 5,000 messages, MAIL/RCPT/DATA pipelined",
            "messages",
            5_000,
            pipelined=True,
        ),
    )
}


@dataclass(slots=True)
class Run:
    """The record of one measured run (what goes into the JSON file)."""

    workload: str
    client: str
    server: str
    round: int
    ok: bool = False
    error: str = ""
    seconds: float = 0.0
    messages: int = 0
    connections: int = 0
    payload_bytes: int = 0
    cpu_seconds: float = 0.0
    baseline_rss_kib: int = 0
    peak_rss_kib: int = 0
    held_rss_kib: int = 0
    rss_per_connection_kib: float = 0.0
    probe_ok: bool = False
    probe_seconds: float = 0.0
    pipelining_advertised: bool = False


@dataclass(slots=True)
class Options:
    """Settings shared by every run."""

    server_cores: set[int] | None
    client_cores: set[int] | None
    run_timeout: float
    uvloop: bool
    smtp_source: str | None
    smtp_sink: str | None
    baseline_tree: Path | None = None  # the worktree typed-base imports typed_smtpd from
    compiled_tree: Path | None = None  # the compiled build typed-compiled imports
    # servers started by a command line of their own: name -> argv with "{port}" in it
    commands: dict[str, list[str]] = field(default_factory=dict)
    children: set[subprocess.Popen[bytes]] = field(default_factory=set)


# ---------------------------------------------------------------------------------------------
# /proc readings


def proc_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds the process has used so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_memory_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of the process, in KiB."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


# ---------------------------------------------------------------------------------------------
# children


def free_port() -> int:
    """A port free on 127.0.0.1 right now (for smtp-sink, which cannot report its own)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_child(proc: subprocess.Popen[bytes], opts: Options) -> None:
    """SIGTERM, wait a bounded time, then SIGKILL."""
    opts.children.discard(proc)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
    if proc.stdout is not None:
        proc.stdout.close()


def kill_children(opts: Options) -> None:
    """Kill whatever child is still running (the way out, Ctrl-C included)."""
    for proc in list(opts.children):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_TIMEOUT)
        opts.children.discard(proc)


def wait_ready_line(proc: subprocess.Popen[bytes]) -> int:
    """Read the server's ``READY <port>`` line, within READY_TIMEOUT."""
    assert proc.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            raise RuntimeError(f"server did not start (exit status {proc.poll()})")
        readable, _, _ = select.select([proc.stdout], [], [], left)
        if readable:
            chunk = os.read(proc.stdout.fileno(), 256)
            if not chunk:
                raise RuntimeError(f"server closed its stdout (exit status {proc.wait(5)})")
            line += chunk
    word, port = line.split()[:2]
    if word != b"READY":
        raise RuntimeError(f"unexpected server output: {line!r}")
    return int(port)


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    """Wait, within READY_TIMEOUT, until something accepts connections on the port."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        with socket.socket() as s, contextlib.suppress(OSError):
            s.settimeout(1.0)
            s.connect(("127.0.0.1", port))
            return
        time.sleep(0.05)
    raise RuntimeError("server did not start listening")


@contextlib.contextmanager
def server_process(
    kind: str, opts: Options, stderr: io.BufferedWriter | Any, profile: Path | None = None
) -> Iterator[tuple[int, int]]:
    """Start one server in its own process; yield (pid, port); stop it on the way out."""
    if kind in opts.commands:
        port = free_port()
        cmd = [part.replace("{port}", str(port)) for part in opts.commands[kind]]
    elif kind == "smtp-sink":
        assert opts.smtp_sink is not None
        port = free_port()
        cmd = [opts.smtp_sink]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]  # smtp-sink refuses to run as root
        # -m: its default cap of 256 sessions would queue W5 in the kernel; -t: as the others
        cmd += ["-h", "bench", "-m", "20000", "-t", "3600", f"inet:127.0.0.1:{port}", "4096"]
    else:
        port = 0
        cmd = [sys.executable, str(HERE / "servers.py"), kind, "0", "--max-connections", "20000"]
        cmd += ["--timeout", "3600"]
        if profile is not None:
            cmd += ["--profile", str(profile)]
        if kind == BASELINE:
            assert opts.baseline_tree is not None
            cmd += ["--tree", str(opts.baseline_tree)]
        if kind == UVLOOP:
            cmd[2] = "typed"
        if kind in (COMPILED, COMPILED_UVLOOP):
            assert opts.compiled_tree is not None
            cmd[2] = COMPILED
            cmd += ["--tree", str(opts.compiled_tree)]
        if opts.uvloop or kind in (UVLOOP, COMPILED_UVLOOP):
            cmd.append("--uvloop")
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, start_new_session=True
    )
    opts.children.add(proc)
    try:
        if opts.server_cores:
            os.sched_setaffinity(proc.pid, opts.server_cores)
        if kind == "smtp-sink" or kind in opts.commands:
            wait_listening(port, proc)
        else:
            port = wait_ready_line(proc)
        yield proc.pid, port
    finally:
        stop_child(proc, opts)


# ---------------------------------------------------------------------------------------------
# one run


def drive_smtp_source(work: Workload, port: int, opts: Options) -> client.Outcome:
    """Run Postfix's smtp-source for a messages or churn workload; fail on a bad exit status."""
    assert opts.smtp_source is not None
    cmd = [opts.smtp_source, "-M", "bench", "-l", str(work.size), "-m", str(work.count)]
    cmd += ["-s", str(work.sessions)]
    if work.kind == "messages":
        cmd.append("-d")  # keep each session's connection for all its messages
    cmd.append(f"inet:127.0.0.1:{port}")
    start = time.perf_counter()
    done = subprocess.run(
        cmd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=opts.run_timeout,
        start_new_session=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"smtp-source failed ({done.returncode}): {done.stderr[-500:]!r}")
    connections = work.count if work.kind == "churn" else work.sessions
    return client.Outcome(
        messages=work.count,
        connections=connections,
        payload_bytes=work.count * work.size,
        seconds=seconds,
    )


def drive_asyncio(
    work: Workload, port: int, opts: Options, while_held: Callable[[], None]
) -> client.Outcome:
    """Run bench/client.py's coroutine for the workload, within the run timeout."""
    if work.kind == "messages":
        coro = client.messages(
            port,
            sessions=work.sessions,
            count=work.count,
            size=work.size,
            pipelined=work.pipelined,
        )
    elif work.kind == "churn":
        coro = client.churn(port, connections=work.count, concurrency=work.sessions, size=work.size)
    else:
        coro = client.idle(port, connections=work.count, while_held=while_held)
    return asyncio.run(asyncio.wait_for(coro, opts.run_timeout))


def measure(work: Workload, client_name: str, server: str, rnd: int, opts: Options) -> Run:
    """One fresh server, one client run; never raises for a failed run (it is recorded)."""
    run = Run(work.name, client_name, server, rnd)
    with tempfile.TemporaryFile() as stderr:
        try:
            with server_process(server, opts, stderr) as (pid, port):
                run.baseline_rss_kib = proc_memory_kib(pid)[0]
                cpu_before = proc_cpu_seconds(pid)

                def while_held() -> None:
                    time.sleep(0.2)  # let the server finish its bookkeeping of the last one
                    run.held_rss_kib = proc_memory_kib(pid)[0]

                if client_name == "smtp-source":
                    outcome = drive_smtp_source(work, port, opts)
                else:
                    outcome = drive_asyncio(work, port, opts, while_held)
                run.cpu_seconds = proc_cpu_seconds(pid) - cpu_before
                run.peak_rss_kib = proc_memory_kib(pid)[1]
            run.ok = True
            run.seconds = outcome.seconds
            run.messages = outcome.messages
            run.connections = outcome.connections
            run.payload_bytes = outcome.payload_bytes
            run.probe_ok = outcome.probe_ok
            run.probe_seconds = outcome.probe_seconds
            run.pipelining_advertised = outcome.pipelining_advertised
            if work.kind == "idle" and outcome.connections:
                grown = run.held_rss_kib - run.baseline_rss_kib
                run.rss_per_connection_kib = grown / outcome.connections
        except (RuntimeError, OSError, client.ClientError, asyncio.TimeoutError) as exc:
            run.error = f"{type(exc).__name__}: {exc}"
        except subprocess.TimeoutExpired:
            run.error = f"timed out after {opts.run_timeout:.0f} s"
        if not run.ok:
            stderr.seek(0)
            tail = stderr.read()[-800:].decode(errors="replace").strip()
            if tail:
                run.error += f" | server stderr: {tail}"
    return run


# ---------------------------------------------------------------------------------------------
# setup


def find_postfix_tool(name: str) -> str | None:
    """The path of smtp-source or smtp-sink, if installed."""
    found = shutil.which(name)
    if found:
        return found
    for directory in POSTFIX_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def install_postfix() -> None:
    """Install Debian's postfix package unconfigured, and make sure no Postfix daemon runs."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print("smtp-source not found, and cannot apt-get install postfix here", file=sys.stderr)
        return
    print("installing Debian's postfix package for smtp-source/smtp-sink ...", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    preseed = b"postfix postfix/main_mailer_type select No configuration\n"
    steps = (
        (["debconf-set-selections"], preseed),
        (["apt-get", "update", "-qq"], None),
        (["apt-get", "install", "-y", "-qq", "postfix"], None),
    )
    for cmd, stdin in steps:
        subprocess.run(cmd, input=stdin, env=env, timeout=600, check=False, capture_output=True)
    stop_postfix_daemon()


def stop_postfix_daemon() -> None:
    """Stop the Postfix mail system if a package install (or anything) started it."""
    postfix = find_postfix_tool("postfix")
    if postfix is None:
        return
    status = subprocess.run(
        [postfix, "status"], capture_output=True, timeout=30, check=False
    ).returncode
    if status == 0:
        subprocess.run([postfix, "stop"], capture_output=True, timeout=60, check=False)


def importable(module: str) -> bool:
    """Whether ``module`` imports in a fresh interpreter (as the servers will import it)."""
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return done.returncode == 0


def git(*args: str, cwd: Path = HERE) -> subprocess.CompletedProcess[str]:
    """Run git in the repository that holds bench/ (or in ``cwd``); never raises on failure."""
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


@contextlib.contextmanager
def baseline_worktree(rev: str) -> Iterator[tuple[Path, str]]:
    """Check ``rev`` out, detached, in a temporary git worktree; yield (its path, the commit).

    The worktree is removed on the way out, whatever the way (Ctrl-C and errors included); a
    Ctrl-C or SIGTERM that arrives while it is being removed takes effect once it is gone.
    """
    if shutil.which("git") is None:
        raise SystemExit("--baseline needs git")
    found = git("rev-parse", "--show-toplevel")
    if found.returncode != 0:
        raise SystemExit(f"--baseline needs a git checkout: {found.stderr.strip()}")
    repo = Path(found.stdout.strip())
    resolved = git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", cwd=repo)
    if resolved.returncode != 0:
        raise SystemExit(f"--baseline: {rev!r} is not a commit of {repo}")
    commit = resolved.stdout.strip()
    tree = Path(tempfile.mkdtemp(prefix="typed-smtpd-baseline-"))
    try:
        added = git("worktree", "add", "--detach", str(tree), commit, cwd=repo)
        if added.returncode != 0:
            raise SystemExit(f"--baseline: git worktree add failed: {added.stderr.strip()}")
        yield tree, commit
    finally:
        stops = {signal.SIGINT, signal.SIGTERM}
        held = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
        try:
            removed = git("worktree", "remove", "--force", str(tree), cwd=repo)
            if removed.returncode != 0 or tree.exists():
                shutil.rmtree(tree, ignore_errors=True)
                git("worktree", "prune", cwd=repo)  # forget the worktree whose files are gone
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)


def check_baseline(tree: Path) -> tuple[str, str]:
    """(version, file) of the typed_smtpd the typed-base server imports; exit if it cannot."""
    done = subprocess.run(
        [sys.executable, str(HERE / "servers.py"), BASELINE, "0", "--tree", str(tree), "--check"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    words = done.stdout.split(maxsplit=2)
    if done.returncode != 0 or len(words) != 3 or words[0] != "typed_smtpd":
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"--baseline: the {BASELINE} server cannot import typed_smtpd: {tail[0]}")
    version, file = words[1], words[2].strip()
    if not Path(file).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"--baseline: {BASELINE} imports typed_smtpd from {file}, not {tree}")
    return version, file


@contextlib.contextmanager
def compiled_build() -> Iterator[Path]:
    """Build the repository with TYPED_SMTPD_COMPILE=1 into a temporary directory (``pip install
    --target``); yield it; remove it on the way out."""
    root = HERE.parent
    tree = Path(tempfile.mkdtemp(prefix="typed-smtpd-compiled-"))
    try:
        print("building typed_smtpd with TYPED_SMTPD_COMPILE=1 (mypyc) ...", file=sys.stderr)
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
        command += ["--no-cache-dir", "--target", str(tree), str(root)]
        env = dict(os.environ, TYPED_SMTPD_COMPILE="1")
        built = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=1200, check=False
        )
        if built.returncode != 0:
            tail = (built.stderr or built.stdout).strip().splitlines()[-5:]
            raise SystemExit("--compiled: the build failed:\n" + "\n".join(tail))
        check = [sys.executable, str(HERE / "servers.py"), COMPILED, "0", "--tree", str(tree)]
        done = subprocess.run(
            [*check, "--check"], capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise SystemExit(f"--compiled: {(done.stderr or done.stdout).strip()}")
        yield tree
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def pick_cores() -> tuple[set[int] | None, set[int] | None]:
    """(client cores, server cores): one core each when two or more are available."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None, None
    return {cores[0]}, {cores[1]}


def raise_nofile() -> int:
    """Raise the soft open-files limit to the hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1_048_576
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def package_version(name: str) -> str:
    """The installed version of a distribution, or 'absent'."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


# ---------------------------------------------------------------------------------------------
# report


def median_or_none(values: list[float]) -> float | None:
    """The median, or None for no values."""
    return statistics.median(values) if values else None


def summarise(
    runs: list[Run], servers: list[str], workloads: dict[str, Workload]
) -> list[dict[str, Any]]:
    """Per (workload, client): medians per server and medians of the per-round ratios."""
    out: list[dict[str, Any]] = []
    keys = sorted({(r.workload, r.client) for r in runs}, key=lambda k: (k[0], k[1]))
    for name, client_name in keys:
        work = workloads[name]
        group = [r for r in runs if (r.workload, r.client) == (name, client_name)]
        per_server: dict[str, dict[str, Any]] = {}
        for server in servers:
            ok = [r for r in group if r.server == server and r.ok]
            failed = [r for r in group if r.server == server and not r.ok]
            if not ok and not failed:
                continue
            secs = median_or_none([r.seconds for r in ok])
            entry: dict[str, Any] = {
                "runs": len(ok),
                "failed": len(failed),
                "errors": sorted({r.error for r in failed}),
                "seconds": secs,
                "cpu_seconds": median_or_none([r.cpu_seconds for r in ok]),
                "peak_rss_mib": median_or_none([r.peak_rss_kib / KIB for r in ok]),
                "rss_growth_mib": median_or_none(
                    [(r.peak_rss_kib - r.baseline_rss_kib) / KIB for r in ok]
                ),
            }
            cpu = entry["cpu_seconds"]
            if cpu is not None and work.kind != "idle":
                # server CPU per unit of work: per message, or per connection for churn
                units = work.count
                entry["cpu_us_per_unit"] = cpu / units * 1e6
            if secs:
                if work.kind == "idle":
                    entry["connections_per_s"] = work.count / secs
                else:
                    entry["messages_per_s"] = work.count / secs
                    entry["concurrent_message_mib"] = work.sessions * work.size / MIB
                    entry["mb_per_s"] = work.count * work.size / secs / 1e6
            if work.kind == "idle":
                entry["held"] = median_or_none([float(r.connections) for r in ok])
                entry["rss_per_connection_kib"] = median_or_none(
                    [r.rss_per_connection_kib for r in ok]
                )
                entry["probe_ok"] = bool(ok) and all(r.probe_ok for r in ok)
            per_server[server] = entry
        ratios: dict[str, float | None] = {}
        own = (*ALL_SERVERS, *TYPED_VARIANTS, BASELINE, OBSERVED)
        rivals = [s for s in servers if s not in own]
        for subject, others in (
            ("typed", (BASELINE, UVLOOP, OBSERVED, "aiosmtpd", *CEILINGS, "smtp-sink")),
            (UVLOOP, ("aiosmtpd",)),
            (COMPILED, ("typed", "aiosmtpd")),
            (COMPILED_UVLOOP, ("aiosmtpd",)),
        ):
            if subject not in servers:
                continue
            for other in (*others, *rivals):
                ratios[f"{subject}/{other}"] = round_ratio(group, subject, other)
                if other != "smtp-sink":  # a C sink's CPU is no reference for Python's
                    cpu = round_ratio(group, subject, other, "cpu_seconds")
                    ratios[f"cpu {subject}/{other}"] = cpu
        if work.kind == "idle":
            for other in (BASELINE, "aiosmtpd", *rivals):
                ratios[f"rss_per_connection typed/{other}"] = rss_ratio(group, other)
        out.append({"workload": name, "client": client_name, "servers": per_server, **ratios})
    return out


def round_ratio(group: list[Run], a: str, b: str, metric: str = "seconds") -> float | None:
    """Median over rounds of metric(b)/metric(a), pairing runs by round.

    With ``seconds`` that is speed(a)/speed(b); with ``cpu_seconds`` it is how many times less
    server CPU ``a`` needs than ``b`` for the same work, a figure that other load on the machine
    disturbs much less than wall time.
    """
    values_a = {r.round: getattr(r, metric) for r in group if r.server == a and r.ok}
    values_b = {r.round: getattr(r, metric) for r in group if r.server == b and r.ok}
    pairs = [
        values_b[k] / values_a[k] for k in values_a.keys() & values_b.keys() if values_a[k] > 0
    ]
    return statistics.median(pairs) if pairs else None


def rss_ratio(group: list[Run], other: str) -> float | None:
    """Median over rounds of RSS per idle connection, typed_smtpd / other (lower is better)."""
    a = {r.round: r.rss_per_connection_kib for r in group if r.server == "typed" and r.ok}
    b = {r.round: r.rss_per_connection_kib for r in group if r.server == other and r.ok}
    pairs = [a[k] / b[k] for k in a.keys() & b.keys() if b[k] > 0]
    return statistics.median(pairs) if pairs else None


def fmt(value: float | None, spec: str) -> str:
    """Format a number, or a dash for none."""
    return "-" if value is None else format(value, spec)


def print_report(
    summary: list[dict[str, Any]], workloads: dict[str, Workload], out: Any = sys.stdout
) -> None:
    """The human-readable tables."""
    for block in summary:
        work = workloads[block["workload"]]
        size = f"{work.size // MIB} MiB" if work.size >= MIB else f"{work.size // KIB} KiB"
        scale = f"{work.count:,} x {size}" if work.kind != "idle" else f"{work.count:,} held"
        print(f"\n{work.name}  {work.title}  [now: {scale}; client: {block['client']}]", file=out)
        if work.kind == "idle":
            print(
                f"  {'server':<17}{'held':>7}{'open s':>9}{'conn/s':>9}{'KiB/conn':>10}"
                f"{'probe':>7}{'cpu s':>8}{'peak MiB':>10}",
                file=out,
            )
        else:
            unit = "us/conn" if work.kind == "churn" else "us/msg"
            print(
                f"  {'server':<17}{'median s':>9}{'msg/s':>10}{'MB/s':>9}{'cpu s':>8}"
                f"{'cpu ' + unit:>12}{'peak MiB':>10}{'growth MiB':>11}",
                file=out,
            )
        for server, e in block["servers"].items():
            label = server + (f" ({e['failed']} failed)" if e["failed"] else "")
            if work.kind == "idle":
                print(
                    f"  {label:<17}{fmt(e.get('held'), '.0f'):>7}{fmt(e['seconds'], '.2f'):>9}"
                    f"{fmt(e.get('connections_per_s'), '.0f'):>9}"
                    f"{fmt(e.get('rss_per_connection_kib'), '.1f'):>10}"
                    f"{'ok' if e.get('probe_ok') else 'FAIL':>7}"
                    f"{fmt(e['cpu_seconds'], '.2f'):>8}{fmt(e['peak_rss_mib'], '.1f'):>10}",
                    file=out,
                )
            else:
                print(
                    f"  {label:<17}{fmt(e['seconds'], '.3f'):>9}"
                    f"{fmt(e.get('messages_per_s'), '.0f'):>10}"
                    f"{fmt(e.get('mb_per_s'), '.1f'):>9}{fmt(e['cpu_seconds'], '.2f'):>8}"
                    f"{fmt(e.get('cpu_us_per_unit'), '.0f'):>12}"
                    f"{fmt(e['peak_rss_mib'], '.1f'):>10}{fmt(e['rss_growth_mib'], '.1f'):>11}",
                    file=out,
                )
            for error in e["errors"][:2]:
                print(f"      error: {error[:300]}", file=out)
        groups: list[tuple[str, ...]] = [("typed/", "rss_"), ("cpu typed/",)]
        for variant in TYPED_VARIANTS[1:]:
            groups += [(f"{variant}/",), (f"cpu {variant}/",)]
        for prefixes in groups:
            ratios = [f"{k} {v:.2f}x" for k, v in block.items() if k.startswith(prefixes) and v]
            if ratios:
                print("  " + "   ".join(ratios), file=out)


TARGETS: dict[str, float] = {"W1": 1.8, "W2": 5.0, "W3": 8.0, "W4": 3.0, "W6": 5.0}
#: Event lines at INFO to a file and metrics served cost at most this much server CPU.
OBSERVED_COST = 1.10
CEILING_TARGET = 0.6
W3_MB_PER_S = 300.0
W5_RSS_TARGET = 0.5
# W3 memory: the receive buffer plus one copy of each message in flight, and no more.
W3_COPIES_TARGET = 2.0


def verdict(
    block: dict[str, Any], what: str, value: float | None, goal: float, higher: bool = True
) -> dict[str, Any]:
    """One target's record: the figure, the goal, and whether it is met."""
    met = value is not None and (value >= goal if higher else value <= goal)
    return {
        "workload": block["workload"],
        "client": block["client"],
        "target": what,
        "value": value,
        "goal": goal,
        "goal_is_max": not higher,
        "met": met,
    }


def check_targets(summary: list[dict[str, Any]], wanted_idle: int) -> list[dict[str, Any]]:
    """The issue's targets, judged on the smtp-source figures where there are any."""
    verdicts: list[dict[str, Any]] = []
    by_workload: dict[str, dict[str, Any]] = {}
    for block in summary:
        current = by_workload.get(block["workload"])
        if current is None or block["client"] == "smtp-source":
            by_workload[block["workload"]] = block
    for name, block in sorted(by_workload.items()):
        typed = block["servers"].get("typed")
        if typed is None:
            continue
        if name in TARGETS and "aiosmtpd" in block["servers"]:
            verdicts.append(
                verdict(block, "typed/aiosmtpd", block["typed/aiosmtpd"], TARGETS[name])
            )
        if name == "W3":
            verdicts.append(verdict(block, "MB/s", typed.get("mb_per_s"), W3_MB_PER_S))
            growth = typed.get("rss_growth_mib")
            concurrent = typed.get("concurrent_message_mib")
            copies = growth / concurrent if growth is not None and concurrent else None
            verdicts.append(
                verdict(
                    block,
                    "peak RSS growth / concurrent message size",
                    copies,
                    W3_COPIES_TARGET,
                    higher=False,
                )
            )
        if name == "W5":
            ratio = block.get("rss_per_connection typed/aiosmtpd")
            verdicts.append(
                verdict(block, "RSS/conn typed/aiosmtpd", ratio, W5_RSS_TARGET, higher=False)
            )
            held = typed.get("held") if typed.get("probe_ok") else None
            verdicts.append(
                verdict(block, "connections held, new one answered", held, float(wanted_idle))
            )
        if "ceiling" in block["servers"]:
            verdicts.append(verdict(block, "typed/ceiling", block["typed/ceiling"], CEILING_TARGET))
        if OBSERVED in block["servers"] and WORKLOADS[name].kind != "idle":
            cost = block.get(f"cpu typed/{OBSERVED}")
            what = f"server CPU {OBSERVED}/typed"
            verdicts.append(verdict(block, what, cost, OBSERVED_COST, higher=False))
        verdicts += rival_verdicts(block)
    return verdicts


#: Against go-smtp (the rival to beat): throughput ratios, with uvloop and on stock asyncio.
RIVAL = "go-smtp"
RIVAL_SPEED = {"W1": (1.0, 0.8), "W2": (1.0, 0.8), "W4": (1.0, 0.8)}
RIVAL_W3 = 2.0
#: Server CPU in microseconds: per message on W2 (uvloop, stock), per connection on W4 (uvloop).
CPU_PER_MESSAGE_W2 = (55.0, 70.0)
CPU_PER_CONNECTION_W4 = 170.0
IDLE_KIB_TARGET = 4.0


def rival_verdicts(block: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets set against go-smtp, for the servers of this block that ran."""
    out: list[dict[str, Any]] = []
    name, servers = block["workload"], block["servers"]
    if RIVAL in servers:
        goals = RIVAL_SPEED.get(name)
        if goals is not None:
            pairs = ((UVLOOP, goals[0]), ("typed", goals[1]))
            pairs += ((COMPILED_UVLOOP, goals[0]), (COMPILED, goals[1]))
            for subject, goal in pairs:
                if subject in servers:
                    key = f"{subject}/{RIVAL}"
                    out.append(verdict(block, key, block.get(key), goal))
        if name == "W3":
            for subject in ("typed", COMPILED):
                if subject in servers:
                    key = f"{subject}/{RIVAL}"
                    out.append(verdict(block, key, block.get(key), RIVAL_W3))
    limits: list[tuple[str, float]] = []
    if name == "W2":
        limits = [(UVLOOP, CPU_PER_MESSAGE_W2[0]), ("typed", CPU_PER_MESSAGE_W2[1])]
        limits += [(COMPILED_UVLOOP, CPU_PER_MESSAGE_W2[0]), (COMPILED, CPU_PER_MESSAGE_W2[1])]
    elif name == "W4":
        limits = [(UVLOOP, CPU_PER_CONNECTION_W4), (COMPILED_UVLOOP, CPU_PER_CONNECTION_W4)]
    for subject, limit in limits:
        if subject in servers:
            value = servers[subject].get("cpu_us_per_unit")
            out.append(verdict(block, f"{subject} server CPU us", value, limit, higher=False))
    for subject in ("typed", COMPILED):
        if name == "W5" and subject in servers:
            value = servers[subject].get("rss_per_connection_kib")
            what = f"{subject} KiB per idle connection"
            out.append(verdict(block, what, value, IDLE_KIB_TARGET, False))
    return out


def print_targets(verdicts: list[dict[str, Any]]) -> None:
    """One line per target."""
    if not verdicts:
        return
    print("\nTargets (issue figures; smtp-source client where it applies):")
    for v in verdicts:
        mark = "met " if v["met"] else "MISS"
        value = fmt(v["value"], ".2f")
        sign = "<=" if v["goal_is_max"] else ">="
        print(
            f"  [{mark}] {v['workload']} {v['target']}: {value} ({sign} {v['goal']:g})"
            f"  [{v['client']}]"
        )


# ---------------------------------------------------------------------------------------------
# profile


def profile_typed(work: Workload, opts: Options, top: int) -> str:
    """Run typed_smtpd's server under cProfile for one workload; return the top functions."""
    import pstats

    client_name = "smtp-source" if opts.smtp_source and "smtp-source" in work.clients() else ""
    client_name = client_name or "asyncio"
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile() as stderr:
        path = Path(tmp) / "typed.prof"
        with server_process("typed", opts, stderr, profile=path) as (_pid, port):
            if client_name == "smtp-source":
                outcome = drive_smtp_source(work, port, opts)
            else:
                outcome = drive_asyncio(work, port, opts, lambda: None)
        if not path.exists():
            stderr.seek(0)
            return f"no profile written: {stderr.read()[-500:]!r}"
        text = io.StringIO()
        stats = pstats.Stats(str(path), stream=text)
        stats.sort_stats("tottime").print_stats(top)
    head = f"profile of typed_smtpd on {work.name} [{client_name}], {outcome.seconds:.3f} s\n"
    return head + text.getvalue()


# ---------------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shrink every workload about 10x")
    parser.add_argument(
        "--scale",
        type=int,
        default=1,
        metavar="N",
        help="multiply the messages or connections of every workload by N (longer, steadier "
        "runs: for ratios of a few percent); idle connections stay capped by the open-files limit",
    )
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="e.g. W1,W3")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per server (default 3)")
    parser.add_argument("--json", type=Path, help="also write every run and the summary here")
    parser.add_argument(
        "--servers",
        help=f"default {','.join(ALL_SERVERS)}, and {BASELINE} with --baseline; {OBSERVED} "
        f"(INFO event lines to a file, Prometheus metrics on) and {UVLOOP} on request; the "
        "servers of --peers and --target are added",
    )
    parser.add_argument("--clients", default=",".join(ALL_CLIENTS))
    parser.add_argument("--uvloop", action="store_true", help="run the Python servers on uvloop")
    parser.add_argument("--timeout", type=float, help="seconds per run (default 300, quick 60)")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install postfix")
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help=f"also run typed_smtpd as of this git revision, as the server {BASELINE}",
    )
    parser.add_argument(
        "--profile",
        default="",
        help="after the runs, profile typed_smtpd's server on these workloads (e.g. W1,W3)",
    )
    parser.add_argument("--profile-top", type=int, default=15)
    parser.add_argument(
        "--compiled",
        action="store_true",
        help=f"also build typed_smtpd with TYPED_SMTPD_COMPILE=1 (mypyc) and run it as {COMPILED} "
        f"and {COMPILED_UVLOOP}",
    )
    parser.add_argument(
        "--peers",
        type=Path,
        metavar="DIR",
        help="the rival sinks' build directory: adds the servers " + ", ".join(PEERS),
    )
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="one more server, started by COMMAND (split like a shell line) with {port} where "
        "its port goes; it must listen on 127.0.0.1:{port} (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.scale < 1:
        parser.error("--scale must be 1 or more")
    return args


def peer_commands(args: argparse.Namespace) -> dict[str, list[str]]:
    """The command line of each rival (``--peers``) and extra server (``--target``)."""
    import shlex

    commands: dict[str, list[str]] = {}
    if args.peers is not None:
        build = args.peers.resolve()
        for name, parts in PEERS.items():
            *runner, program = parts
            path = build / program
            if not path.is_file():
                print(f"warning: no {path}; leaving {name} out", file=sys.stderr)
                continue
            if runner and shutil.which(runner[0]) is None:
                print(f"warning: no {runner[0]}; leaving {name} out", file=sys.stderr)
                continue
            commands[name] = [*runner, str(path), "{port}"]
    for spec in args.target:
        name, sep, command = spec.partition("=")
        name = name.strip()
        if not sep or not name or "{port}" not in command:
            raise SystemExit(f"--target {spec!r}: expected NAME=COMMAND with {{port}} in it")
        if name in (*ALL_SERVERS, *TYPED_VARIANTS, BASELINE, OBSERVED):
            raise SystemExit(f"--target {spec!r}: {name} is the name of a built-in server")
        commands[name] = shlex.split(command)
    return commands


def select_workloads(args: argparse.Namespace, names: str) -> list[Workload]:
    """The requested workloads, shrunk for --quick, grown by --scale and capped by the
    open-files limit."""
    chosen: list[Workload] = []
    nofile = raise_nofile()
    for name in [n.strip().upper() for n in names.split(",") if n.strip()]:
        if name not in WORKLOADS:
            raise SystemExit(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
        work = WORKLOADS[name]
        if args.quick:
            work = replace(work, count=max(work.sessions, work.count // 10))
        if args.scale != 1:
            work = replace(work, count=work.count * args.scale)
        if work.kind == "idle" and work.count > nofile - IDLE_FD_MARGIN:
            capped = max(1, nofile - IDLE_FD_MARGIN)
            print(
                f"note: {name} capped at {capped} idle connections (RLIMIT_NOFILE is {nofile})",
                file=sys.stderr,
            )
            work = replace(work, count=capped)
        chosen.append(work)
    return chosen


def choose_servers(args: argparse.Namespace) -> list[str]:
    """The servers to run: --servers (or the default), with typed-base exactly when --baseline."""
    servers = [s.strip() for s in (args.servers or ",".join(ALL_SERVERS)).split(",") if s.strip()]
    extra = list(args.commands)
    servers += [name for name in extra if name not in servers]
    if args.compiled:
        servers += [name for name in (COMPILED, COMPILED_UVLOOP) if name not in servers]
    elif COMPILED in servers or COMPILED_UVLOOP in servers:
        raise SystemExit(f"the servers {COMPILED} and {COMPILED_UVLOOP} need --compiled")
    unknown = set(servers) - {*ALL_SERVERS, *TYPED_VARIANTS, BASELINE, OBSERVED, *extra}
    if unknown:
        raise SystemExit(f"unknown server: {', '.join(sorted(unknown))}")
    if BASELINE in servers and not args.baseline:
        raise SystemExit(f"the server {BASELINE} needs --baseline REV (the revision to compare)")
    if args.baseline and BASELINE not in servers:
        servers.insert(servers.index("typed") + 1 if "typed" in servers else 0, BASELINE)
        if args.servers:
            print(f"note: --baseline adds {BASELINE} to the servers", file=sys.stderr)
    return servers


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit status (1 if any run failed)."""
    args = parse_args(argv)
    args.commands = peer_commands(args)
    workloads = select_workloads(args, args.workloads)
    servers = choose_servers(args)
    if (args.uvloop or UVLOOP in servers or args.compiled) and not importable("uvloop"):
        raise SystemExit("--uvloop needs uvloop: python -m pip install 'typed-smtpd[speed]'")
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = set(clients) - set(ALL_CLIENTS)
    if unknown:
        raise SystemExit(f"unknown client: {', '.join(sorted(unknown))}")

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # the same way out as Ctrl-C: stop children, report what ran

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with contextlib.ExitStack() as stack:
            baseline = (
                stack.enter_context(baseline_worktree(args.baseline)) if args.baseline else None
            )
            args.compiled_tree = stack.enter_context(compiled_build()) if args.compiled else None
            return benchmark(args, workloads, servers, clients, baseline)
    except KeyboardInterrupt:  # during set-up or the report: the runs catch their own
        print("\ninterrupted", file=sys.stderr)
        return 130


def benchmark(
    args: argparse.Namespace,
    workloads: list[Workload],
    servers: list[str],
    clients: list[str],
    baseline: tuple[Path, str] | None,
) -> int:
    """Every run, then the report; ``baseline`` is the typed-base worktree and its commit."""
    baseline_info: dict[str, str] | None = None
    if baseline is not None:
        version, file = check_baseline(baseline[0])
        baseline_info = {"rev": args.baseline, "commit": baseline[1], "typed_smtpd": version}
        print(
            f"{BASELINE}: typed_smtpd {version} at {args.baseline} ({baseline[1][:12]}), "
            f"imported from {file}",
            file=sys.stderr,
        )
    if OBSERVED in servers and not importable("prometheus_client"):
        raise SystemExit(f"{OBSERVED} needs prometheus-client: pip install 'typed-smtpd[metrics]'")
    if "typed" in servers and not importable("typed_smtpd.smtp"):
        print("warning: typed_smtpd.smtp does not import; leaving typed_smtpd out", file=sys.stderr)
        servers.remove("typed")
    if "aiosmtpd" in servers and package_version("aiosmtpd") == "absent":
        print("warning: aiosmtpd is not installed; leaving it out", file=sys.stderr)
        servers.remove("aiosmtpd")
    smtp_source = find_postfix_tool("smtp-source")
    if smtp_source is None and not args.no_install:
        install_postfix()
        smtp_source = find_postfix_tool("smtp-source")
    smtp_sink = find_postfix_tool("smtp-sink")
    stop_postfix_daemon()
    if smtp_source is None and "smtp-source" in clients:
        print("warning: no smtp-source; the asyncio client only", file=sys.stderr)
        clients.remove("smtp-source")
    if smtp_sink is None and "smtp-sink" in servers:
        print("warning: no smtp-sink; leaving the C reference out", file=sys.stderr)
        servers.remove("smtp-sink")
    client_cores, server_cores = pick_cores()
    opts = Options(
        server_cores=server_cores,
        client_cores=client_cores,
        run_timeout=args.timeout or (60.0 if args.quick else 300.0),
        uvloop=args.uvloop,
        smtp_source=smtp_source,
        smtp_sink=smtp_sink,
        baseline_tree=baseline[0] if baseline is not None else None,
        commands=args.commands,
        compiled_tree=args.compiled_tree,
    )
    if client_cores:
        os.sched_setaffinity(0, client_cores)
    load_start = os.getloadavg()[0]
    machine: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "client_cores": sorted(client_cores or []),
        "server_cores": sorted(server_cores or []),
        "aiosmtpd": package_version("aiosmtpd"),
        "typed_smtpd": package_version("typed-smtpd"),
        "baseline": baseline_info,
        "loop": "uvloop" if args.uvloop else "asyncio",
        "smtp_source": smtp_source,
        "smtp_sink": smtp_sink,
        "commands": args.commands,
        "load_average_start": load_start,
    }
    print(
        f"servers: {', '.join(servers)}; clients: {', '.join(clients)}; "
        f"rounds: {args.repeat}; cores client {machine['client_cores']} "
        f"server {machine['server_cores']}; loop: {machine['loop']}; "
        f"load average {machine['load_average_start']:.2f}",
        file=sys.stderr,
    )
    if load_start > 0.5:
        print("warning: the machine is busy; absolute figures will be low", file=sys.stderr)
    runs: list[Run] = []
    profiles: list[str] = []
    started = time.monotonic()
    interrupted = False
    try:
        for work in workloads:
            for client_name in [c for c in clients if c in work.clients()]:
                for rnd in range(args.repeat):
                    order = servers[rnd % len(servers) :] + servers[: rnd % len(servers)]
                    if rnd % 2:
                        order.reverse()
                    for server in [s for s in order if s not in work.skip_servers]:
                        run = measure(work, client_name, server, rnd, opts)
                        runs.append(run)
                        status = f"{run.seconds:.3f} s" if run.ok else f"FAILED {run.error}"
                        print(
                            f"  {work.name} {client_name:<11} round {rnd} {server:<10} {status}",
                            file=sys.stderr,
                        )
        if args.profile and "typed" in servers:
            for work in select_workloads(args, args.profile):
                profiles.append(profile_typed(work, opts, args.profile_top))
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted; reporting what ran", file=sys.stderr)
    finally:
        kill_children(opts)
    chosen = {w.name: w for w in workloads}
    summary = summarise(runs, servers, chosen)
    idle_wanted = max((w.count for w in workloads if w.kind == "idle"), default=0)
    verdicts = check_targets(summary, idle_wanted)
    print(
        f"typed_smtpd {machine['typed_smtpd']} vs aiosmtpd {machine['aiosmtpd']}, "
        f"Python {machine['python']} ({machine['loop']}), {machine['cpus']} CPUs, "
        f"{args.repeat} rounds{' (quick)' if args.quick else ''}"
        f"{f' (scale {args.scale})' if args.scale != 1 else ''}, "
        f"{time.monotonic() - started:.0f} s, load average "
        f"{machine['load_average_start']:.2f} at start, {os.getloadavg()[0]:.2f} at end"
    )
    print(
        "ratios are medians of per-round ratios: typed/X is speed (X's time / typed's time); "
        "cpu typed/X is X's server CPU seconds / typed's"
    )
    if baseline_info is not None:
        print(
            f"{BASELINE} is typed_smtpd {baseline_info['typed_smtpd']} at {args.baseline} "
            f"({baseline_info['commit'][:12]}); typed is the installed typed_smtpd, so "
            f"typed/{BASELINE} above 1 means the change made it faster"
        )
    print_report(summary, chosen)
    print_targets(verdicts)
    for text in profiles:
        print("\n" + text)
    if args.json:
        payload = {
            "machine": machine,
            "quick": args.quick,
            "scale": args.scale,
            "rounds": args.repeat,
            "workloads": [asdict(w) for w in workloads],
            "runs": [asdict(r) for r in runs],
            "summary": summary,
            "targets": verdicts,
            "profiles": profiles,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    if interrupted:
        return 130
    return 0 if runs and all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
