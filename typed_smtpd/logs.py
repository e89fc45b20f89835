"""Writing log lines for a busy server: what the command line installs, for any program.

:func:`configure_logging` installs a :class:`DeferredFlushHandler` (lines written in batches by
the event loop, 0.1 s late; warnings at once) with a :class:`CachedTimeFormatter` (the
time made into text once a second) of :data:`LOG_FORMAT`: a fifth of what :mod:`logging` costs as
most programs set it up, for the same text. :mod:`typed_smtpd.monitoring` writes the event lines
through them (docs: "Logs, counters and metrics").
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import stat
import sys
import threading
import time
import weakref
from asyncio import _get_running_loop
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, TextIO

__all__ = [
    "DEFAULT_LOG_DELAY",
    "LOG_FORMAT",
    "CachedTimeFormatter",
    "DeferredFlushHandler",
    "configure_logging",
    "flush_logs",
]

_time = time.time

#: The logger and level of the event lines a handler may be given without their record.
_NAME: Final = "mail.log"
_INFO: Final = logging.INFO


#: The command line's log format (``2026-01-05 14:03:07,412 INFO mail.log: 3F9A00002C connect
#: client=192.0.2.7:50122``).
LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Seconds a :class:`DeferredFlushHandler` lets lines wait, by default, to write them together.
DEFAULT_LOG_DELAY: Final = 0.1
#: Lines a :class:`DeferredFlushHandler` holds at most before it writes them, whatever the time.
_MAX_PENDING: Final = 512
#: Seconds, at least, before the handler's thread writes lines that a loop left waiting.
_BACKSTOP: Final = 1.0
#: The bytes a write to a pipe puts in it whole (POSIX: at least 512; Linux: 4096).
_PIPE_BUF: Final[int] = getattr(select, "PIPE_BUF", 512)

if TYPE_CHECKING:
    _StreamHandler = logging.StreamHandler[TextIO]
else:
    _StreamHandler = logging.StreamHandler


class CachedTimeFormatter(logging.Formatter):
    """A :class:`logging.Formatter` that turns a time into text once a second.

    :meth:`logging.Formatter.formatTime` converts each record's time to local time and formats
    it with :func:`time.strftime`, a third of the formatter's work; this one keeps the text of
    the last second and adds the milliseconds. Its :meth:`format` also skips a few calls for the
    common record (``%``-style format, no exception or stack to show). The text is the same as
    :class:`logging.Formatter`'s, for every ``fmt``, ``datefmt`` and ``converter``.
    """

    _time_cache: tuple[float, str, object, str] | None = None

    def format(self, record: logging.LogRecord) -> str:
        """``record`` as text, as :meth:`logging.Formatter.format` gives it."""
        style = self._style
        if (
            type(style) is not logging.PercentStyle
            or style._defaults  # type: ignore[attr-defined]
            or record.exc_info
            or record.exc_text
            or record.stack_info
        ):
            return super().format(record)
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        try:
            return style._fmt % record.__dict__
        except KeyError as error:
            raise ValueError(f"Formatting field not found in record: {error}") from None

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """``record``'s creation time as text, as :meth:`logging.Formatter.formatTime` gives it."""
        return self._time(record.created, record.msecs, datefmt)

    def _time(self, created: float, msecs: float, datefmt: str | None) -> str:
        second = created // 1  # what localtime() and gmtime() see of a float: its floor
        pattern = datefmt if datefmt else self.default_time_format
        converter = self.converter
        cache = self._time_cache
        if (
            cache is not None
            and cache[0] == second
            and cache[1] == pattern
            and cache[2] is converter
        ):
            text = cache[3]
        else:
            text = time.strftime(pattern, converter(created))
            self._time_cache = (second, pattern, converter, text)
        if datefmt:
            return text
        msec_format = self.default_msec_format
        if msec_format == "%s,%03d":
            whole = int(msecs)
            if 0 <= whole < 1000:
                return text + _MILLISECONDS[whole]
        return msec_format % (text, msecs) if msec_format else text


#: ``,000`` to ``,999``: what ``%s,%03d`` appends to the time.
_MILLISECONDS: Final = tuple(f",{msecs:03d}" for msecs in range(1000))

#: A line that waits: its text, or, for a line taken without its record, the time, the
#: formatter, and the function and arguments that make its message (all made into text when
#: the batch is written).
_Pending = str | tuple[float, CachedTimeFormatter, Callable[..., str], tuple[Any, ...]]

#: Every DeferredFlushHandler alive, for flush_logs() and for a forked child.
_DEFERRED: Final[weakref.WeakSet[DeferredFlushHandler]] = weakref.WeakSet()


class DeferredFlushHandler(_StreamHandler):
    """A :class:`logging.StreamHandler` for a busy server: it writes its lines in batches.

    :class:`logging.StreamHandler` (and :class:`logging.FileHandler`) writes and flushes each
    record as it comes, one ``write`` system call per line. This handler keeps the lines of the
    records logged while an asyncio event loop runs in the logging thread, and writes them all
    at once, from that loop, ``delay`` seconds (0.1 unless told) after the first of them: one
    ``write`` for a hundred lines rather than a hundred.

    Nothing is lost or reordered. While the loop turns, nothing waits longer than ``delay``;
    if the loop stops, closes or is held up by a long call, a thread of the handler's writes
    what waits within ``max(delay, 1)`` seconds. A record at ``flush_level`` or above (WARNING
    unless told) is written at once, after those that wait; so is a record logged where no
    event loop runs (a script, another thread, before or after :func:`asyncio.run`), and any
    record once 512 lines wait. :meth:`flush`, :meth:`close`, :func:`logging.shutdown` (which
    runs at exit) and :func:`flush_logs` write what waits. A process that ends abruptly
    (``SIGKILL``, :func:`os._exit`) loses at most the lines of the last ``delay`` seconds.

    (The loop, not the thread, writes the batches because that costs less: a thread that takes
    the interpreter lock ten times a second from a busy event loop cost a server more than the
    writing itself.)

    The lines go to ``stream`` (standard error by default), flushed after each batch. Where it
    is not a regular file (a pipe, a socket, a terminal, which the worker processes of a server
    may share), no write holds more than ``PIPE_BUF`` bytes, and each holds whole lines, so that
    the lines of two processes never mix. For a file, open it yourself (``open(path, "a",
    encoding="utf-8")``): the handler does not close its stream.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        flush_level: int = logging.WARNING,
        delay: float = DEFAULT_LOG_DELAY,
    ) -> None:
        super().__init__(stream)
        #: Records at this level or above are written at once.
        self.flush_level: int = flush_level
        #: Seconds the first line of a batch may wait for the others.
        self.delay: float = delay
        # Appended to without the lock (deque.append is atomic); taken from under the lock.
        self._pending: deque[_Pending] = deque()
        # The record of the last line given with one (a write error is reported with it).
        self._last: logging.LogRecord | None = None
        self._due = False  # a batch waits, and the loop will write it
        self._armed = False  # the thread will write what still waits then
        self._closed = False
        self._wake = threading.Event()  # set: the thread is armed
        self._closing = threading.Event()  # set: the thread is to end
        self._writer: threading.Thread | None = None
        self._sized: object = None  # the stream self._limit is for
        self._limit: int | None = None
        _DEFERRED.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        """Format ``record`` and keep its line for the next batch (or write it at once: see the
        class)."""
        try:
            line = self.format(record) + self.terminator
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
            return
        self._keep(line, record.levelno >= self.flush_level, record)

    def _take_line(self, build: Callable[..., str], args: tuple[Any, ...]) -> None:
        """Write what this handler's formatter makes of an INFO record of ``mail.log`` whose
        message is ``build(*args)``, without the record (see
        :func:`typed_smtpd.monitoring._line_taker`): the time now, and the rest made into text
        when the batch is written, where making a hundred lines in a row costs less than making
        each on its own. Without the lock: the line goes to the end of the queue at once, and
        whoever writes the queue holds the lock."""
        pending = self._pending
        pending.append((_time(), self.formatter, build, args))  # type: ignore[arg-type]
        # The usual case, a batch already due and nothing to write at once, in one test.
        if (
            not self._due
            or len(pending) >= _MAX_PENDING
            or self.flush_level <= _INFO
            or self._closed
            or _get_running_loop() is None
        ):
            self._settle(self.flush_level <= _INFO)

    def _keep(self, line: _Pending, urgent: bool, source: logging.LogRecord) -> None:
        """Keep ``line`` for the next batch, or write it now with those that wait (``urgent``,
        or see the class)."""
        self._pending.append(line)
        self._last = source
        self._settle(urgent)

    def _settle(self, urgent: bool) -> None:
        """After a line was added: write what waits now (``urgent``, or see the class), or
        have the running loop write it within ``delay`` and the thread later if it does not."""
        pending = self._pending
        loop = _get_running_loop()
        if urgent or len(pending) >= _MAX_PENDING or self._closed or loop is None:
            self.flush()
        elif not self._due:
            try:
                loop.call_later(self.delay, self._write_due)
            except RuntimeError:  # a loop that cannot take a timer (closing): write now
                self.flush()
                return
            self._due = True
            if not self._armed:
                self._arm()

    def _write_due(self) -> None:
        """The loop's timer: write the batch that is due (and those lines added since)."""
        self._due = False
        if self._pending:
            self.flush()

    def _arm(self) -> None:
        """Have the thread write, ``max(delay, 1)`` seconds from now, what waits then (the
        lines of a loop that stopped or was held up)."""
        self.acquire()
        try:
            self._armed = True
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_batches, name="typed_smtpd log writer", daemon=True
                )
                self._writer.start()
            self._wake.set()
        finally:
            self.release()

    def flush(self) -> None:
        """Write the lines that wait, then flush the stream."""
        self.acquire()
        try:
            pending = self._pending
            count = len(pending)
            if not count:
                super().flush()
                return
            lines = [pending.popleft() for _ in range(count)]  # not those added meanwhile
            source = self._last
            self._last = None
            try:
                stream = self.stream
                if stream is not self._sized:
                    self._limit = _write_limit(stream)
                    self._sized = stream
                for text in _chunks(_texts(lines, self.terminator), self._limit):
                    stream.write(text)
                    super().flush()
            except RecursionError:
                raise
            except Exception:
                last = lines[-1]
                if source is None or not isinstance(last, str):  # given without its record
                    source = logging.makeLogRecord(
                        {
                            "name": _NAME,
                            "levelno": _INFO,
                            "levelname": logging.getLevelName(_INFO),
                            "msg": last if isinstance(last, str) else _message(last),
                        }
                    )
                self.handleError(source)
        finally:
            self.release()

    def close(self) -> None:
        """Write the lines that wait, stop the writer thread and close the handler (not its
        stream)."""
        self.acquire()
        try:
            try:
                if self._pending:
                    self.flush()
            finally:
                self._closed = True
                self._closing.set()
                self._wake.set()
                super().close()
        finally:
            self.release()

    def _write_batches(self) -> None:
        """The thread: ``max(delay, 1)`` seconds after it is armed, write what waits (what
        the loop left, if it stopped or was held up); a turning loop leaves nothing."""
        wake, closing = self._wake, self._closing
        while True:
            wake.wait()
            if closing.wait(max(self.delay, _BACKSTOP)):  # closed (what waited is written)
                return
            self.acquire()
            try:
                wake.clear()
                self._armed = False
                self._due = False  # a loop that still turns schedules the next batch
                if self._pending:
                    self.flush()
            finally:
                self.release()

    def _forget(self) -> None:
        """In a forked child: the lines that wait are the parent's to write, and the writer
        thread is the parent's."""
        self._pending = deque()
        self._last = None
        self._due = False
        self._armed = False
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._writer = None


def _texts(lines: list[_Pending], terminator: str) -> list[str]:
    """The texts of the lines that wait: a line taken without its record becomes what its
    formatter (a :class:`CachedTimeFormatter` of :data:`LOG_FORMAT`) makes of the record."""
    texts: list[str] = []
    append = texts.append
    head = f" {logging.getLevelName(_INFO)} {_NAME}: "
    # The second, formatter and converter that ``seconds`` (the second's text) is for; the
    # usual line of a batch differs from the one before it only in its milliseconds.
    last_second = -1.0
    last_formatter: CachedTimeFormatter | None = None
    last_converter: object = None
    seconds = ""
    for line in lines:
        if isinstance(line, str):
            append(line)
            continue
        created, formatter, build, args = line
        message = build(*args)
        second = created // 1
        if (
            second != last_second
            or formatter is not last_formatter
            or formatter.converter is not last_converter
        ):
            last_second, last_formatter = -1.0, None
            if not formatter.datefmt and formatter.default_msec_format == "%s,%03d":
                seconds = formatter._time(created, 0.0, None)[:-4]  # less ",000"
                last_second, last_formatter = second, formatter
                last_converter = formatter.converter
        msecs = int((created - second) * 1000)  # as a LogRecord's
        if last_formatter is not None and msecs < 1000:
            append(f"{seconds}{_MILLISECONDS[msecs]}{head}{message}{terminator}")
        else:  # a format of the time of its own (or a float rounded up to the next second)
            stamp = formatter._time(created, msecs + 0.0, formatter.datefmt)
            append(f"{stamp}{head}{message}{terminator}")
    return texts


def _message(line: tuple[float, CachedTimeFormatter, Callable[..., str], tuple[Any, ...]]) -> str:
    """The message of a line taken without its record, for a report of an error in writing it
    (which may be the error of making it)."""
    _, _, build, args = line
    try:
        return build(*args)
    except Exception:  # the report must go out
        return f"{getattr(build, '__name__', build)}{args!r}"


def _write_limit(stream: object) -> int | None:
    """The most bytes one write to ``stream`` may hold, so that the lines of processes that share
    it never mix: ``PIPE_BUF`` for a pipe, a socket or a terminal (the workers of one server
    share standard error); ``None`` (no limit) for a regular file, where each write is whole,
    and for a stream without a file descriptor."""
    try:
        mode = os.fstat(stream.fileno()).st_mode  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None
    return None if stat.S_ISREG(mode) else _PIPE_BUF


def _chunks(lines: list[str], limit: int | None) -> Iterator[str]:
    """``lines`` joined into as few texts as ``limit`` (bytes) allows, each made of whole lines
    (a line longer than the limit alone)."""
    if limit is None:
        yield "".join(lines)
        return
    chunk: list[str] = []
    size = 0
    for line in lines:
        # Bytes at most: an ASCII line encodes as itself; any other character takes at most
        # 10 (UTF-8 takes 4, ASCII with backslashreplace 10).
        length = len(line) if line.isascii() else 10 * len(line)
        if chunk and size + length > limit:
            yield "".join(chunk)
            chunk = []
            size = 0
        chunk.append(line)
        size += length
    if chunk:
        yield "".join(chunk)


def flush_logs() -> None:
    """Write now what every :class:`DeferredFlushHandler` of the process holds.

    For a program that stops its event loop and goes on, or leaves by :func:`os._exit` (which
    skips :func:`logging.shutdown`): the command line calls it when its loop ends.
    """
    for handler in list(_DEFERRED):
        if not handler._closed:
            with contextlib.suppress(OSError, ValueError):  # as logging.shutdown(): a closed stream
                handler.flush()


def configure_logging(
    level: int = logging.INFO, stream: TextIO | None = None, *, lean: bool = False
) -> DeferredFlushHandler | None:
    """Log what the command line logs, where it does: for a program that wants the same.

    Like :func:`logging.basicConfig`, does nothing (and returns ``None``) if the root logger has
    handlers already. Otherwise the root logger gets ``level`` and a :class:`DeferredFlushHandler`
    writing to ``stream`` (standard error by default) with a :class:`CachedTimeFormatter` of
    :data:`LOG_FORMAT`; the handler is returned.

    ``lean=True`` also stops :mod:`logging` from gathering, for every record of the process,
    what :data:`LOG_FORMAT` does not show: thread and process names and ids, the asyncio task's
    name, and the caller's file and line for records that :class:`ConnectionMonitor` does not
    make (``logging.logThreads``, ``logProcesses``, ``logMultiprocessing`` and
    ``logAsyncioTasks`` set to ``False``, ``logging._srcfile`` to ``None``, as the logging
    HOWTO's "Optimization" section suggests). Other handlers of the process whose format shows
    those fields would show ``None`` instead: the command line sets it, as nothing else logs
    there.
    """
    root = logging.getLogger()
    if root.handlers:
        return None
    if lean:
        logging.logThreads = False
        logging.logProcesses = False
        logging.logMultiprocessing = False
        if sys.version_info >= (3, 12):
            logging.logAsyncioTasks = False
        logging._srcfile = None
    handler = DeferredFlushHandler(stream)
    handler.setFormatter(CachedTimeFormatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def _after_fork_in_child() -> None:
    for handler in list(_DEFERRED):
        handler._forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
