"""Start one benchmark server in this process: typed_smtpd, aiosmtpd or a bare ceiling sink.

Usage: ``python bench/servers.py KIND PORT [--max-connections N] [--timeout SECONDS] [--uvloop]
[--profile FILE] [--tree DIR] [--check]``, KIND one of typed, typed-base, typed-compiled,
typed-observed, aiosmtpd,
ceiling, ceiling-buffered.

Every server is started the same way, with ``loop.create_server`` on 127.0.0.1 and the same
hook-less ``Sink`` handler, so the comparison measures the protocol implementations and nothing
else. PORT 0 picks a free port. Once listening, the process prints ``READY <port>`` on stdout; it
exits cleanly on SIGTERM or SIGINT, so a profiler gets to write its output: ``--profile FILE``
runs cProfile from READY to the stop (start-up and imports left out), and a profiler wrapping the
whole process (``python -m cProfile -o``) works too. Nothing here measures anything: the harness
reads CPU time and memory from /proc.

``typed-base`` is ``typed`` with typed_smtpd imported from another source tree, ``--tree DIR`` (a
checkout of an earlier revision, for a before/after comparison); the server refuses to start
unless the package really comes from that tree. ``typed-compiled`` is the same with ``--tree`` a
directory that holds a build made with ``TYPED_SMTPD_COMPILE=1`` (the protocol core compiled with
mypyc; ``pip install --target DIR``), and refuses to start unless the engine there is compiled.
``--check`` imports the server's code, prints
``typed_smtpd VERSION FILE`` (or ``ok`` for the others) and exits without listening.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import resource
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HOSTNAME = "bench"
LISTEN_BACKLOG = 4096


class Sink:
    """The handler every server gets: no hooks at all, so each server answers its defaults."""


def raise_nofile() -> int:
    """Raise the soft open-files limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1_048_576
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def import_from_tree(tree: Path, kind: str) -> None:
    """Import typed_smtpd from the source tree ``tree``, ahead of any installed copy.

    Exits with a message if it is already imported, or if the import resolves anywhere else (for
    ``typed-compiled``, also if the engine there is not compiled).
    """
    root = tree.resolve()
    if not (root / "typed_smtpd" / "__init__.py").is_file():
        raise SystemExit(f"{kind}: no typed_smtpd package in {root}")
    if "typed_smtpd" in sys.modules:
        raise SystemExit(f"{kind}: typed_smtpd was imported before its tree was put on the path")
    sys.path.insert(0, str(root))
    import typed_smtpd
    from typed_smtpd import smtp
    from typed_smtpd.proto import engine

    for module in (typed_smtpd, smtp, engine):
        where = Path(module.__file__ or "").resolve()
        if not where.is_relative_to(root):
            raise SystemExit(f"{kind}: {module.__name__} imported from {where}, not from {root}")
    if kind == "typed-compiled" and where.suffix != ".so":
        raise SystemExit(f"{kind}: {engine.__name__} in {root} is not compiled ({where.name})")


def typed_factory(
    max_connections: int, timeout: float, *, observed: bool = False
) -> Callable[[], asyncio.BaseProtocol]:
    """Build typed_smtpd's protocol factory, with one connection tracker for the listener (its
    counters served to Prometheus when ``observed``)."""
    from typed_smtpd import smtp

    tracker = smtp.ConnectionTracker(max_connections=max_connections)
    if observed:
        from typed_smtpd.metrics import serve_metrics

        serve_metrics(tracker.stats.snapshot)
    handler = Sink()

    def factory() -> asyncio.BaseProtocol:
        protocol = smtp.SMTP(handler, hostname=HOSTNAME, timeout=timeout)
        protocol.connection_tracker = tracker
        return protocol

    return factory


def typed_observed_factory(
    max_connections: int, timeout: float
) -> Callable[[], asyncio.BaseProtocol]:
    """``typed`` as an operator runs it: logging configured as the command line configures it
    (:func:`typed_smtpd.logs.configure_logging`: every event line at INFO, written in
    batches, the records without the fields the format does not show), to a log file in a
    temporary directory (removed at exit) instead of standard error, and the counters served to
    Prometheus on a free port."""
    import atexit
    import logging
    import shutil
    import tempfile

    from typed_smtpd.logs import configure_logging

    directory = tempfile.mkdtemp(prefix="typed-observed-")
    atexit.register(shutil.rmtree, directory, True)
    # Opened for appending, as a shell's 2>> or systemd's StandardError=append: does. Closed
    # by the interpreter at exit, after logging.shutdown() has written what waits.
    log_file = open(Path(directory) / "mail.log", "a", encoding="utf-8")  # noqa: SIM115
    if configure_logging(logging.INFO, log_file, lean=True) is None:
        raise SystemExit("typed-observed: the root logger has handlers already")
    return typed_factory(max_connections, timeout, observed=True)


def aiosmtpd_factory(max_connections: int, timeout: float) -> Callable[[], asyncio.Protocol]:
    """Build aiosmtpd's protocol factory (aiosmtpd has no connection limit to raise)."""
    del max_connections
    from aiosmtpd import smtp

    handler = Sink()

    def factory() -> asyncio.Protocol:
        protocol: Any = smtp.SMTP(handler, hostname=HOSTNAME, timeout=timeout)
        return protocol  # type: ignore[no-any-return]

    return factory


def ceiling_factory(max_connections: int, timeout: float) -> Callable[[], asyncio.Protocol]:
    """Build the bare ceiling sink's factory (no limits, no timeout, no handler)."""
    del max_connections, timeout
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ceiling import CeilingSink

    return CeilingSink


def ceiling_buffered_factory(
    max_connections: int, timeout: float
) -> Callable[[], asyncio.BaseProtocol]:
    """Build the ceiling sink's BufferedProtocol variant."""
    del max_connections, timeout
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ceiling import BufferedCeilingSink

    return BufferedCeilingSink


FACTORIES: dict[str, Callable[[int, float], Callable[[], asyncio.BaseProtocol]]] = {
    "typed": typed_factory,
    "typed-base": typed_factory,  # the same server, its package imported from --tree
    "typed-compiled": typed_factory,  # the same again, from a compiled build in --tree
    "typed-observed": typed_observed_factory,
    "aiosmtpd": aiosmtpd_factory,
    "ceiling": ceiling_factory,
    "ceiling-buffered": ceiling_buffered_factory,
}


async def serve(
    kind: str, port: int, max_connections: int, timeout: float, profile: Path | None = None
) -> None:
    """Listen until SIGTERM or SIGINT; with ``profile``, cProfile everything after start-up."""
    loop = asyncio.get_running_loop()
    factory = FACTORIES[kind](max_connections, timeout)
    server = await loop.create_server(factory, "127.0.0.1", port, backlog=LISTEN_BACKLOG)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bound = server.sockets[0].getsockname()[1]
    profiler = cProfile.Profile() if profile is not None else None
    if profiler is not None:
        profiler.enable()
    print(f"READY {bound}", flush=True)
    await stop.wait()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(str(profile))
    server.close()


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(FACTORIES))
    parser.add_argument("port", type=int)
    parser.add_argument("--max-connections", type=int, default=20_000)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--profile", type=Path, help="write cProfile stats of the serving here")
    parser.add_argument(
        "--tree", type=Path, help="typed-base, typed-compiled: import typed_smtpd from this tree"
    )
    parser.add_argument("--check", action="store_true", help="import, say from where, and exit")
    args = parser.parse_args(argv)
    if (args.kind in ("typed-base", "typed-compiled")) != (args.tree is not None):
        parser.error("--tree goes with typed-base and typed-compiled, and they need --tree")
    if args.tree is not None:
        import_from_tree(args.tree, args.kind)
    if args.check:
        FACTORIES[args.kind](args.max_connections, args.timeout)
        package = sys.modules.get("typed_smtpd")
        if package is None:
            print("ok", flush=True)
        else:
            version = getattr(package, "__version__", "unknown")
            print(f"typed_smtpd {version} {package.__file__}", flush=True)
        return
    raise_nofile()
    coro = serve(args.kind, args.port, args.max_connections, args.timeout, args.profile)
    if args.uvloop:
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


if __name__ == "__main__":
    main()
