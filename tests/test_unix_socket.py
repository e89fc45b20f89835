"""The Unix socket file of the controllers and of ``serve()``: its mode, its group, its removal.

Every socket lives in a fresh temporary directory; nothing binds a TCP port.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import socket_dir
from typed_smtpd.controller import (
    UnixSocketController,
    UnixSocketUnthreadedController,
    serve,
)
from typed_smtpd.handlers import Sink
from typed_smtpd.smtp import SMTP

WAIT = 10.0


@pytest.fixture
def socket_path() -> Iterator[Path]:
    """A socket path short enough for every OS (pytest's tmp_path can be too long)."""
    with socket_dir() as directory:
        yield directory / "s.sock"


def greeting(path: Path) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(WAIT)
        client.connect(str(path))
        return client.recv(1024)


def mode_of(path: Path) -> int:
    info = path.stat()
    assert stat.S_ISSOCK(info.st_mode)
    return stat.S_IMODE(info.st_mode)


@pytest.mark.parametrize("mode", [0o600, 0o660, 0o666])
def test_threaded_controller_sets_the_mode_and_removes_the_file(
    socket_path: Path, mode: int
) -> None:
    controller = UnixSocketController(Sink(), unix_socket=socket_path, socket_mode=mode)
    assert controller.socket_mode == mode
    controller.start()
    try:
        assert mode_of(socket_path) == mode
        assert greeting(socket_path).startswith(b"220 ")
    finally:
        controller.stop()
    assert not socket_path.exists()


def test_the_group_by_name_and_by_id(socket_path: Path) -> None:
    gid = os.getgid()
    name = grp.getgrgid(gid).gr_name
    for group in (name, gid):
        controller = UnixSocketController(
            Sink(), unix_socket=socket_path, socket_mode=0o660, socket_group=group
        )
        assert controller.socket_group == gid
        with controller:
            info = socket_path.stat()
            assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o660, gid)
        assert not socket_path.exists()


def test_without_mode_or_group_the_umask_decides(socket_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        with UnixSocketController(Sink(), unix_socket=socket_path):
            assert mode_of(socket_path) == 0o700  # 0o777 less the umask
    finally:
        os.umask(previous)
    assert not socket_path.exists()


def test_unthreaded_controller(socket_path: Path) -> None:
    loop = asyncio.new_event_loop()
    try:
        controller = UnixSocketUnthreadedController(
            Sink(), unix_socket=socket_path, loop=loop, socket_mode=0o640
        )
        controller.begin()
        try:
            assert mode_of(socket_path) == 0o640
        finally:
            controller.end()
        assert not socket_path.exists()
    finally:
        loop.close()


@pytest.mark.asyncio
async def test_serve(socket_path: Path) -> None:
    async with serve(Sink(), unix_socket=socket_path, socket_mode=0o620) as server:
        assert server.unix_socket == str(socket_path)
        assert mode_of(socket_path) == 0o620
        reader, writer = await asyncio.open_unix_connection(str(socket_path))
        assert (await asyncio.wait_for(reader.readline(), WAIT)).startswith(b"220 ")
        writer.close()
        await writer.wait_closed()
    assert not socket_path.exists()


@pytest.mark.asyncio
async def test_serve_refuses_mode_and_group_for_tcp() -> None:
    with pytest.raises(ValueError, match="apply to a unix_socket only"):
        async with serve(Sink(), hostname="127.0.0.1", port=0, socket_mode=0o660):
            pass  # pragma: no cover


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"socket_mode": 0o10000}, "socket_mode must be permission bits"),
        ({"socket_mode": -1}, "socket_mode must be permission bits"),
        ({"socket_group": "no-such-group-here"}, "no group named 'no-such-group-here'"),
        ({"socket_group": -5}, "socket_group must be a group name or id"),
    ],
)
def test_bad_arguments_fail_at_construction(
    socket_path: Path, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        UnixSocketController(Sink(), unix_socket=socket_path, **kwargs)  # type: ignore[arg-type]


def test_a_file_that_cannot_be_removed_is_logged(
    socket_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    controller = UnixSocketController(Sink(), unix_socket=socket_path)
    controller.start()
    real_unlink = os.unlink

    def refuse(path: object, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    # asyncio removes the file itself on 3.13+; both ways of removing it are refused here.
    monkeypatch.setattr(os, "unlink", refuse)
    with caplog.at_level(logging.WARNING, logger="mail.log"):
        controller.stop()
    monkeypatch.setattr(os, "unlink", real_unlink)
    assert socket_path.exists()
    messages = [record.getMessage() for record in caplog.records]
    assert f"cannot remove the socket file {socket_path}: Permission denied" in messages


def test_a_failing_factory_is_logged_at_error(
    socket_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection whose protocol cannot be built is dropped by asyncio: the log says why."""

    class Flaky(UnixSocketController):
        calls = 0

        def factory(self) -> SMTP:
            Flaky.calls += 1
            if Flaky.calls > 1:  # the start-up check passes, the first connection does not
                raise RuntimeError("out of file descriptors")
            return super().factory()

    with (
        caplog.at_level(logging.ERROR, logger="mail.log"),
        Flaky(Sink(), socket_path),
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client,
    ):
        client.connect(str(socket_path))
        deadline = time.monotonic() + WAIT
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.01)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors
    assert "cannot create the protocol for a new connection" in errors[0].getMessage()
    assert errors[0].exc_info is not None
