"""Behind a PROXY protocol proxy, what the server reports names the client, not the proxy."""

from __future__ import annotations

import logging
from ipaddress import ip_network

import pytest

from typed_smtpd.handlers import _peer_host
from typed_smtpd.proto.engine import NEED_DATA, EngineConfig, ServerEngine
from typed_smtpd.proto.proxy import V2_CMD, build_v2, parse_proxy_header
from typed_smtpd.session import Envelope, Session


def engine() -> ServerEngine[Session, Envelope]:
    config = EngineConfig(
        hostname="mx.test",
        ident="ESMTP",
        commands=frozenset({"EHLO", "NOOP", "QUIT"}),
        proxy_timeout=5.0,
        proxy_trusted=(ip_network("10.0.0.0/8"),),
    )
    return ServerEngine(
        config,
        new_session=lambda: Session(loop=None),  # type: ignore[arg-type]
        new_envelope=Envelope,
        clock=lambda: 0.0,
        peer=("10.0.0.5", 40000),
        peer_host="10.0.0.5",
    )


def test_log_lines_name_the_client_of_the_header(caplog: pytest.LogCaptureFixture) -> None:
    server = engine()
    server.start()
    server.receive_data(build_v2("192.0.2.44", "198.51.100.1", 51234, 25) + b"EHLO c\r\n")
    with caplog.at_level(logging.DEBUG, logger="mail.log"):
        assert server.next_request() is NEED_DATA
    assert server.session.peer is None  # the adapter's to set, and it stays the proxy's
    assert server.peer == ("192.0.2.44", 51234)
    assert "('192.0.2.44', 51234) >> EHLO c" in caplog.text


def test_a_local_header_keeps_the_connections_own_endpoints() -> None:
    server = engine()
    server.start()
    header = build_v2("192.0.2.44", "198.51.100.1", 51234, 25, command=V2_CMD.LOCAL)
    server.receive_data(header + b"NOOP\r\n")
    assert server.next_request() is NEED_DATA
    assert server.peer == ("10.0.0.5", 40000)
    assert server.session.proxy_data is not None
    assert server.session.proxy_data.src_addr is None


def test_trace_header_names_the_client() -> None:
    session = Session(loop=None)  # type: ignore[arg-type]
    session.peer = ("10.0.0.5", 40000)
    assert _peer_host(session) == "10.0.0.5"
    session.proxy_data = parse_proxy_header(build_v2("192.0.2.44", "198.51.100.1", 1, 25))
    assert _peer_host(session) == "192.0.2.44"
