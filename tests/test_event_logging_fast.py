"""The cheap way to write event lines: the formatter that makes each second's time text once, the
handler that writes its lines in batches, the lines given to it without their records, and the
command line that uses them (every line arrives, in order, including when the server stops)."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import select
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from typed_smtpd import logs, monitoring
from typed_smtpd.logs import (
    LOG_FORMAT,
    CachedTimeFormatter,
    DeferredFlushHandler,
    configure_logging,
    flush_logs,
)
from typed_smtpd.monitoring import ConnectionMonitor, ServerStats
from typed_smtpd.proto.replies import Reply

WAIT = 10.0
#: A line of the command line's log: time, level, logger, then the message.
CLI_LINE = re.compile(
    r"^(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (?P<level>[A-Z]+) (?P<name>[\w.]+): "
    r"(?P<message>.*)$"
)
EVENT = re.compile(r"^(?P<sid>[0-9A-F]{10}) (?P<event>[a-z-]+) ")


# --- the formatter -------------------------------------------------------------------------------

FORMATS = [
    (LOG_FORMAT, None, "%"),
    ("%(asctime)s|%(msecs)d|%(message)s", "%d/%m/%Y %H:%M:%S", "%"),
    ("[%(asctime)s] %(levelname)s %(message)s", "", "%"),
    ("{asctime} {levelname} {message}", None, "{"),
    ("%(message)s", None, "%"),  # no time at all
]


@given(
    base=st.floats(min_value=-2e9, max_value=4e9, allow_nan=False),
    steps=st.lists(st.floats(min_value=0.0, max_value=2.5), min_size=1, max_size=30),
    choice=st.sampled_from(range(len(FORMATS))),
    utc=st.booleans(),
)
def test_the_cached_time_is_what_logging_formatter_writes(
    base: float, steps: list[float], choice: int, utc: bool
) -> None:
    fmt, datefmt, style = FORMATS[choice]
    expected = logging.Formatter(fmt, datefmt, style=style)  # type: ignore[arg-type]
    cached = CachedTimeFormatter(fmt, datefmt, style=style)  # type: ignore[arg-type]
    if utc:
        expected.converter = cached.converter = time.gmtime
    created = base
    for step in steps:  # mostly within one second: the cache is used, and renewed
        created += step
        record = logging.makeLogRecord({"msg": "event %s", "args": ("line",), "created": created})
        record.msecs = int((created - int(created)) * 1000) + 0.0  # as LogRecord computes it
        assert cached.formatTime(record, datefmt) == expected.formatTime(record, datefmt)
        assert cached.format(record) == expected.format(record)


@given(
    base=st.floats(min_value=0.0, max_value=4e9, allow_nan=False),
    steps=st.lists(st.floats(min_value=0.0, max_value=1.5), min_size=1, max_size=30),
    datefmt=st.sampled_from([None, "%d/%m/%Y %H:%M:%S"]),
    msec_format=st.sampled_from(["%s,%03d", "%s.%03d"]),
    utc=st.booleans(),
)
def test_a_batch_of_lines_taken_without_records_reads_as_the_records_would(
    base: float, steps: list[float], datefmt: str | None, msec_format: str, utc: bool
) -> None:
    """The batch writer's text for each (time, message) is what logging.Formatter makes of the
    record: within a second, across seconds, with a time format of its own, in UTC."""
    formatter = CachedTimeFormatter(LOG_FORMAT, datefmt)
    expected_formatter = logging.Formatter(LOG_FORMAT, datefmt)
    formatter.default_msec_format = expected_formatter.default_msec_format = msec_format
    if utc:
        formatter.converter = expected_formatter.converter = time.gmtime
    pending: list[logs._Pending] = []
    created = base
    for step in steps:
        created += step
        pending.append((created, formatter, str, (f"event {len(pending)}",)))
    pending.insert(len(pending) // 2, "a line made from its record\n")
    expected = []
    for line in pending:
        if isinstance(line, str):
            expected.append(line)
            continue
        created, _, build, args = line
        message = build(*args)
        record = logging.makeLogRecord(
            {"name": "mail.log", "levelname": "INFO", "msg": message, "created": created}
        )
        record.msecs = int((created - int(created)) * 1000) + 0.0  # as LogRecord computes it
        expected.append(expected_formatter.format(record) + "\n")
    assert logs._texts(pending, "\n") == expected


def test_records_with_an_exception_are_formatted_as_logging_does() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.makeLogRecord({"msg": "failed", "exc_info": sys.exc_info()})
    assert CachedTimeFormatter(LOG_FORMAT).format(record) == logging.Formatter(LOG_FORMAT).format(
        record
    )


def test_a_missing_field_is_the_same_error_as_logging_gives() -> None:
    record = logging.makeLogRecord({"msg": "x"})
    with pytest.raises(ValueError, match="Formatting field not found in record: 'nope'"):
        CachedTimeFormatter("%(nope)s").format(record)


# --- the handler ---------------------------------------------------------------------------------


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger of its own, at INFO, that does not pass its records on."""
    logger = logging.getLogger(f"tests.fast.{os.getpid()}.{time.monotonic_ns()}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def wait_for(predicate: Callable[[], bool], seconds: float = WAIT) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def file_handler(path: Path, **options: Any) -> DeferredFlushHandler:
    handler = DeferredFlushHandler(path.open("a", encoding="utf-8"), **options)
    handler.setFormatter(CachedTimeFormatter("%(levelname)s %(message)s"))
    return handler


def test_lines_logged_in_a_loop_wait_for_their_batch_then_all_arrive_in_order(
    logger: logging.Logger, tmp_path: Path
) -> None:
    path = tmp_path / "mail.log"
    logger.addHandler(file_handler(path, delay=0.2))
    expected = [f"INFO line {n}" for n in range(300)]

    async def main() -> list[str]:
        for n in range(300):
            logger.info("line %d", n)
        return lines_of(path)  # within the same turn of the loop: nothing written yet

    assert asyncio.run(main()) == []
    assert wait_for(lambda: len(lines_of(path)) >= 300)  # the writer thread's batch
    assert lines_of(path) == expected


def test_a_warning_is_written_at_once_after_the_lines_that_wait(
    logger: logging.Logger, tmp_path: Path
) -> None:
    path = tmp_path / "mail.log"
    logger.addHandler(file_handler(path, delay=3600))

    async def main() -> list[str]:
        logger.info("first")
        logger.info("second")
        before = lines_of(path)
        logger.warning("third")
        assert before == []
        return lines_of(path)

    assert asyncio.run(main()) == ["INFO first", "INFO second", "WARNING third"]


def test_lines_logged_where_no_loop_runs_are_written_at_once(
    logger: logging.Logger, tmp_path: Path
) -> None:
    path = tmp_path / "mail.log"
    logger.addHandler(file_handler(path, delay=3600))
    logger.info("no loop here")
    assert lines_of(path) == ["INFO no loop here"]

    async def main() -> None:
        logger.info("in the loop")  # waits for its batch ...

    asyncio.run(main())
    logger.info("after the loop")  # ... and goes out with the next line logged outside it
    assert lines_of(path) == ["INFO no loop here", "INFO in the loop", "INFO after the loop"]


def test_lines_logged_just_before_the_loop_ends_are_not_lost(
    logger: logging.Logger, tmp_path: Path
) -> None:
    path = tmp_path / "mail.log"
    handler = file_handler(path, delay=3600)
    logger.addHandler(handler)

    async def serve_then_stop() -> None:
        for n in range(100):
            logger.info("line %d", n)

    asyncio.run(serve_then_stop())
    assert lines_of(path) == []  # they wait (an hour here) ...
    flush_logs()  # ... until the command line's end of loop, or logging.shutdown at exit
    assert lines_of(path) == [f"INFO line {n}" for n in range(100)]


def test_the_writer_thread_writes_them_whatever_the_loop_does(
    logger: logging.Logger, tmp_path: Path
) -> None:
    path = tmp_path / "mail.log"
    logger.addHandler(file_handler(path, delay=0.05))

    async def log_and_stop() -> None:
        logger.info("last words")

    asyncio.run(log_and_stop())  # the loop is closed: no callback of its could write them
    assert wait_for(lambda: lines_of(path) == ["INFO last words"])


class ThreadNoting(io.StringIO):
    """A stream that notes the thread of each write."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    def write(self, text: str) -> int:
        self.threads.append(threading.current_thread().name)
        return super().write(text)


def test_a_turning_loop_writes_its_batches_itself(
    logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's timer writes each batch, ``delay`` after its first line; the thread, which
    would cost a busy loop the interpreter lock, writes none of them."""
    monkeypatch.setattr(logs, "_BACKSTOP", 3600.0)  # however slow the machine, not the thread
    stream = ThreadNoting()
    handler = DeferredFlushHandler(stream, delay=0.05)
    handler.setFormatter(CachedTimeFormatter("%(message)s"))
    logger.addHandler(handler)

    async def main() -> list[int]:
        seen = []
        for batch in range(3):
            for n in range(10):
                logger.info("line %d.%d", batch, n)
            assert stream.getvalue().count("\n") == batch * 10  # this batch waits ...
            await asyncio.sleep(0.3)  # ... for the loop's timer
            seen.append(stream.getvalue().count("\n"))
        return seen

    assert asyncio.run(main()) == [10, 20, 30]
    assert stream.threads and set(stream.threads) == {threading.current_thread().name}


def test_a_loop_that_takes_no_timer_gets_its_lines_written_at_once(
    logger: logging.Logger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Closing:
        def call_later(self, delay: float, callback: Callable[[], None]) -> None:
            raise RuntimeError("Event loop is closed")

    path = tmp_path / "mail.log"
    logger.addHandler(file_handler(path, delay=3600))
    monkeypatch.setattr(logs, "_get_running_loop", Closing)
    logger.info("said while the loop closes")
    assert lines_of(path) == ["INFO said while the loop closes"]


def test_lines_of_a_loop_held_up_are_written_by_the_thread(logger: logging.Logger) -> None:
    """A loop held up by a long call cannot write the batch: the thread does, within a
    second or so."""
    stream = ThreadNoting()
    handler = DeferredFlushHandler(stream, delay=0.05)
    handler.setFormatter(CachedTimeFormatter("%(message)s"))
    logger.addHandler(handler)

    async def main() -> str:
        logger.info("before a blocking call")
        assert wait_for(lambda: stream.getvalue() != "")  # the loop does not turn meanwhile
        return stream.getvalue()

    assert asyncio.run(main()) == "before a blocking call\n"
    assert stream.threads == ["typed_smtpd log writer"]


def test_at_exit_logging_writes_what_waits(tmp_path: Path) -> None:
    path = tmp_path / "mail.log"
    script = f"""
import asyncio, logging
from typed_smtpd.logs import DeferredFlushHandler
handler = DeferredFlushHandler(open({str(path)!r}, "a", encoding="utf-8"), delay=3600)
log = logging.getLogger("x")
log.addHandler(handler)
log.setLevel(logging.INFO)
async def main():
    for n in range(1000):
        log.info("line %d", n)
asyncio.run(main())
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=WAIT)
    assert lines_of(path) == [f"line {n}" for n in range(1000)]


def test_close_writes_what_waits_and_stops_the_writer(
    logger: logging.Logger, tmp_path: Path
) -> None:
    path = tmp_path / "mail.log"
    handler = file_handler(path, delay=3600)
    logger.addHandler(handler)

    async def main() -> None:
        logger.info("one")
        logger.info("two")

    asyncio.run(main())
    writer = handler._writer
    assert writer is not None and writer.is_alive()
    handler.close()
    assert lines_of(path) == ["INFO one", "INFO two"]
    writer.join(WAIT)
    assert not writer.is_alive()


def test_writes_to_a_pipe_hold_whole_lines_within_pipe_buf(
    logger: logging.Logger,
) -> None:
    read_end, write_end = os.pipe()
    writes: list[str] = []

    class Recording(io.TextIOWrapper):
        def write(self, text: str) -> int:
            writes.append(text)
            return super().write(text)

    stream = Recording(open(write_end, "wb"), encoding="utf-8")  # noqa: SIM115
    handler = DeferredFlushHandler(stream, delay=3600)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    received = bytearray()
    text = "x" * 90 + "é"  # one character of two bytes: the limit counts bytes, not characters

    async def main() -> None:
        for n in range(400):
            logger.info("%s %03d", text, n)

    try:
        asyncio.run(main())
        assert writes == []
        flush_logs()
        while len(received) < 400 * (len(text) + 6):
            ready, _, _ = select.select([read_end], [], [], WAIT)
            assert ready
            received += os.read(read_end, 65536)
    finally:
        logger.removeHandler(handler)
        handler.close()
        stream.close()
        os.close(read_end)
    assert len(writes) > 1
    assert all(len(chunk.encode()) <= select.PIPE_BUF and chunk.endswith("\n") for chunk in writes)
    assert received.decode().splitlines() == [f"{text} {n:03d}" for n in range(400)]


def test_the_limit_of_one_write(tmp_path: Path) -> None:
    assert logs._write_limit(io.StringIO()) is None
    with (tmp_path / "file").open("w") as regular:
        assert logs._write_limit(regular) is None
    read_end, write_end = os.pipe()
    try:
        with open(write_end, "w") as pipe:
            assert logs._write_limit(pipe) == select.PIPE_BUF
    finally:
        os.close(read_end)
    lines = ["a" * 30 + "\n"] * 10 + ["b" * 200 + "\n"]
    assert list(logs._chunks(lines, None)) == ["".join(lines)]
    chunks = list(logs._chunks(lines, 100))
    assert "".join(chunks) == "".join(lines)
    assert [len(chunk) for chunk in chunks] == [93, 93, 93, 31, 201]  # a long line goes alone


def test_a_stream_that_fails_is_reported_not_raised(
    logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError("disk full")

    handler = DeferredFlushHandler(Broken(), delay=3600)
    logger.addHandler(handler)

    async def main() -> None:
        logger.info("lost")

    asyncio.run(main())
    flush_logs()
    assert "OSError: disk full" in capsys.readouterr().err
    logger.info("lost too")  # and the handler goes on
    assert "OSError: disk full" in capsys.readouterr().err


def test_a_line_that_cannot_be_made_is_reported_not_raised(
    logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = io.StringIO()
    handler = DeferredFlushHandler(stream, delay=3600)
    handler.setFormatter(CachedTimeFormatter(LOG_FORMAT))
    logger.addHandler(handler)

    def broken(value: int) -> str:
        raise ValueError(f"no text for {value}")

    async def main() -> None:
        handler._take_line(broken, (42,))

    asyncio.run(main())
    flush_logs()
    err = capsys.readouterr().err
    assert "ValueError: no text for 42" in err
    assert "broken(42,)" in err  # what the line was to be made of
    logger.info("the next line")  # and the handler goes on
    assert stream.getvalue().endswith("INFO " + logger.name + ": the next line\n")


# --- the lines given without their records ----------------------------------------------------


def engine() -> Any:
    envelope = SimpleNamespace(mail_from="anne@example.com", rcpt_tos=["b@example.com"] * 2)
    session = SimpleNamespace(proxy_data=None, peer=("192.0.2.7", 50122))
    return SimpleNamespace(
        envelope=envelope,
        peer=("192.0.2.7", 50122),
        phase="DATA",
        final_replies=7,
        session=session,
    )


def one_session(stats: ServerStats) -> str:
    """Log every kind of line of one connection; return its session id. Its clock stands
    still, so the two paths' lines can be compared whole (``duration=0.000``)."""
    monitor = ConnectionMonitor(stats, lambda: 100.0)
    monitor.engine = engine()
    monitor.opened()
    assert monitor.connected() is None
    monitor.authenticated("PLAIN", "anne", False)
    monitor.refused("RCPT", Reply(550, "No such user here", "5.1.1"), None)
    monitor.message(Reply(250, "OK", "2.0.0"), 1834, None)
    monitor.message(b'250 Queued as "12"', 99, None)
    monitor.message(Reply(552, "Too much mail data", "5.3.4"), 10_000, "size")
    monitor.timed_out("idle")
    monitor.closed(vanished=True, error=ConnectionResetError("reset\r\nby peer"))
    return monitor.id


@pytest.fixture
def mail_log() -> Iterator[logging.Logger]:
    """``mail.log`` at INFO, passing nothing on: the test adds its own handlers."""
    log = logging.getLogger("mail.log")
    log.setLevel(logging.INFO)
    log.propagate = False
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    log.propagate = True
    log.setLevel(logging.NOTSET)


def cli_handler(stream: io.StringIO, log: logging.Logger) -> DeferredFlushHandler:
    """The command line's handler and formatter, as ``log``'s only handler (pytest attaches its
    own to a logger that does not propagate: they go)."""
    for other in list(log.handlers):
        log.removeHandler(other)
    handler = DeferredFlushHandler(stream, delay=3600)
    handler.setFormatter(CachedTimeFormatter(LOG_FORMAT))
    log.addHandler(handler)
    return handler


def without_time(text: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        match = CLI_LINE.match(line)
        assert match, line
        lines.append(line[len(match["time"]) :])
    return lines


def test_lines_without_records_are_the_lines_of_the_records(mail_log: logging.Logger) -> None:
    direct, recorded = io.StringIO(), io.StringIO()
    handler = cli_handler(direct, mail_log)
    assert monitoring._line_taker() is handler
    sid = one_session(ServerStats())
    handler.flush()
    mail_log.removeHandler(handler)

    records: list[logging.LogRecord] = []

    def keep(record: logging.LogRecord) -> bool:
        records.append(record)
        return True

    handler = cli_handler(recorded, mail_log)
    handler.addFilter(keep)  # a filter sees every record: the handler gets them all
    assert monitoring._line_taker() is None
    other = one_session(ServerStats())
    handler.flush()

    assert len(without_time(direct.getvalue())) == 8
    assert without_time(direct.getvalue()) == [
        line.replace(other, sid) for line in without_time(recorded.getvalue())
    ]
    assert [record.smtp_event for record in records] == [  # type: ignore[attr-defined]
        "connect",
        "auth-failed",
        "reject",
        "accepted",
        "accepted",
        "refused",
        "timeout",
        "disconnect",
    ]
    assert records[3].smtp_id == f"{other}.1" and records[3].smtp_rcpts == 2  # type: ignore[attr-defined]


def test_the_lines_keep_the_quoting_that_stops_forgery(mail_log: logging.Logger) -> None:
    stream = io.StringIO()
    handler = cli_handler(stream, mail_log)
    monitor = ConnectionMonitor(ServerStats(), time.monotonic)
    monitor.engine = engine()
    monitor.engine.envelope.mail_from = "x\r\n2026-01-01 00:00:00,000 INFO mail.log: FAKE"
    monitor.message(Reply(250, "OK", "2.0.0"), 1, None)
    handler.flush()
    (line,) = stream.getvalue().splitlines()
    assert r'from="<x\r\n2026-01-01' in line


class _OtherRecord(logging.LogRecord):
    pass


@pytest.mark.parametrize(
    "change",
    [
        "second handler",
        "handler filter",
        "logger filter",
        "plain formatter",
        "other format",
        "record factory",
        "handler above INFO",
        "no formatter",
    ],
)
def test_anything_else_that_would_see_the_record_gets_it(
    mail_log: logging.Logger, change: str
) -> None:
    handler = cli_handler(io.StringIO(), mail_log)
    assert monitoring._line_taker() is handler
    try:
        if change == "second handler":
            mail_log.addHandler(logging.NullHandler())
        elif change == "handler filter":
            handler.addFilter(lambda record: True)
        elif change == "logger filter":
            mail_log.addFilter(lambda record: True)
        elif change == "plain formatter":
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
        elif change == "other format":
            handler.setFormatter(CachedTimeFormatter(LOG_FORMAT + " %(threadName)s"))
        elif change == "record factory":
            logging.setLogRecordFactory(_OtherRecord)
        elif change == "handler above INFO":
            handler.setLevel(logging.WARNING)
        else:
            handler.formatter = None
        assert monitoring._line_taker() is None
    finally:
        logging.setLogRecordFactory(logging.LogRecord)
        for item in list(mail_log.filters):
            mail_log.removeFilter(item)


def test_under_caplog_every_event_is_a_record(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mail.log")
    assert monitoring._line_taker() is None
    one_session(ServerStats())
    assert all(
        hasattr(record, "smtp_session") for record in caplog.records if record.name == "mail.log"
    )


# --- configure_logging and the command line --------------------------------------------------


def test_configure_logging_installs_the_command_lines_setup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    for flag in ("logThreads", "logProcesses", "logMultiprocessing", "logAsyncioTasks", "_srcfile"):
        if hasattr(logging, flag):
            monkeypatch.setattr(logging, flag, getattr(logging, flag))
    stream = io.StringIO()
    handler = configure_logging(logging.DEBUG, stream, lean=True)
    try:
        assert handler is not None and root.handlers == [handler]
        assert root.level == logging.DEBUG and handler.stream is stream
        formatter = handler.formatter
        assert type(formatter) is CachedTimeFormatter and formatter._fmt == LOG_FORMAT
        assert not (logging.logThreads or logging.logProcesses or logging.logMultiprocessing)
        assert logging._srcfile is None
        assert configure_logging(logging.INFO, io.StringIO()) is None  # as basicConfig: once
        logging.getLogger("mail.log").warning("from %s", "the CLI")
        (line,) = stream.getvalue().splitlines()
        assert CLI_LINE.match(line) and line.endswith(" WARNING mail.log: from the CLI")
    finally:
        for installed in root.handlers:
            installed.close()


def start_cli(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path, int]:
    """``python -m typed_smtpd`` with its standard error in a file; wait until it listens."""
    err = tmp_path / "stderr"
    with err.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "typed_smtpd", "-n", "-l", "127.0.0.1:0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    banner: list[str] = []

    def listening() -> bool:
        banner[:] = [line for line in lines_of(err) if " listening on " in line]
        return bool(banner) or process.poll() is not None

    assert wait_for(listening), "typed-smtpd did not start"
    assert banner, lines_of(err)
    port = int(re.findall(r"127\.0\.0\.1:(\d+)", banner[0])[0])
    return process, err, port


def send(port: int, count: int, *, connections: int = 1) -> None:
    for _ in range(connections):
        with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as client:
            for n in range(count):
                client.sendmail("anne@example.com", ["bart@example.com"], f"Subject: {n}\n\nhi")


@pytest.mark.integration
def test_the_command_line_writes_every_line_in_order_when_it_stops(tmp_path: Path) -> None:
    process, err, port = start_cli(tmp_path, "-c", "typed_smtpd.handlers.Sink")
    try:
        send(port, 60)
        process.send_signal(signal.SIGTERM)  # at once: the last lines still wait for their batch
        assert process.wait(WAIT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(WAIT)
    lines = lines_of(err)
    assert " listening on " in lines[0]
    events = []
    for line in lines[1:]:
        match = CLI_LINE.match(line)
        assert match and match["level"] == "INFO" and match["name"] == "mail.log", line
        event = EVENT.match(match["message"])
        events.append(event["event"] if event else match["message"])
    assert events == ["connect", *["accepted"] * 60, "disconnect", "shutting down"]
    stamps = [line[:23] for line in lines[1:]]
    assert stamps == sorted(stamps)


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="--workers is Linux only")
def test_workers_write_every_line_and_never_share_a_session_id(tmp_path: Path) -> None:
    process, err, port = start_cli(tmp_path, "--workers", "2", "-c", "typed_smtpd.handlers.Sink")
    try:
        send(port, 1, connections=40)
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(WAIT)
    messages = []
    for line in lines_of(err)[1:]:
        match = CLI_LINE.match(line)
        assert match, line  # whole lines: the two workers' writes never mix
        messages.append(match["message"])
    connects = [m.split()[0] for m in messages if " connect " in m]
    assert len(connects) == 40 and len(set(connects)) == 40
    assert sum(" accepted " in m for m in messages) == 40
    assert sum(" disconnect " in m for m in messages) == 40
