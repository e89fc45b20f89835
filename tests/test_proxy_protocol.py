"""Tests of the PROXY protocol: the sans-IO parser, the builders, TLVs, CRC32C and ``get_proxy``.

Everything here is pure: headers are bytes built in the test, and ``get_proxy`` reads from an
in-memory :class:`asyncio.StreamReader` or a scripted reader, never from a socket.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import struct
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from typed_smtpd.proto.proxy import (
    AF,
    PROTO,
    V1_MAX_LENGTH,
    V2_CMD,
    V2_MAX_HEADER_LENGTH,
    V2_SIGNATURE,
    MalformedTLV,
    ProxyData,
    ProxyTLV,
    TLVValue,
    UnknownTypeTLV,
    build_ssl_tlv,
    build_v1,
    build_v2,
    crc32c,
    encode_tlvs,
    is_trusted_peer,
    parse_proxy_header,
    parse_trusted_networks,
)
from typed_smtpd.proxy_protocol import AsyncReader, get_proxy

# --- helpers ----------------------------------------------------------------------------------


def parsed(data: bytes | bytearray | memoryview, **kwargs: object) -> ProxyData:
    """Parse a buffer that must decide (valid or not)."""
    result = parse_proxy_header(data, **kwargs)  # type: ignore[call-overload]
    assert isinstance(result, ProxyData), f"undecided on {data!r}"
    return result


def error_of(data: bytes, **kwargs: object) -> str:
    result = parsed(data, **kwargs)
    assert not result
    assert not result.valid
    assert result.error
    return result.error


def v2_raw(
    *, ver: int = 2, cmd: int = 1, fam: int = 0, proto: int = 0, payload: bytes = b""
) -> bytes:
    """A version 2 header assembled by hand, field by field (no builder involved)."""
    return (
        V2_SIGNATURE
        + bytes([(ver << 4) | cmd, (fam << 4) | proto])
        + len(payload).to_bytes(2, "big")
        + payload
    )


def with_crc_tlv(header_without_crc_value: bytes, crc_offset: int) -> bytes:
    """Fill in the 4-byte CRC32C value at ``crc_offset`` the way the specification says."""
    value = crc32c(header_without_crc_value).to_bytes(4, "big")
    return (
        header_without_crc_value[:crc_offset] + value + header_without_crc_value[crc_offset + 4 :]
    )


IP6_A = "2001:db8:dead::1"
IP6_B = "2001:db8:cafe::22"

# --- CRC32C -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", 0),
        (b"123456789", 0xE3069283),  # the standard check value of CRC-32C
        # RFC 3720, appendix B.4 (iSCSI uses the same CRC32C)
        (bytes(32), 0x8A9136AA),
        (b"\xff" * 32, 0x62A8AB43),
        (bytes(range(32)), 0x46DD794E),
        (bytes(range(31, -1, -1)), 0x113FDB5C),
    ],
)
def test_crc32c_known_values(data: bytes, expected: int) -> None:
    assert crc32c(data) == expected
    assert crc32c(bytearray(data)) == expected
    assert crc32c(memoryview(data)) == expected


@given(st.binary(), st.binary())
def test_crc32c_continues(first: bytes, second: bytes) -> None:
    assert crc32c(second, crc32c(first)) == crc32c(first + second)


# --- version 1: valid lines ------------------------------------------------------------------


def test_v1_tcp4() -> None:
    line = b"PROXY TCP4 192.0.2.1 198.51.100.7 0 65535\r\n"
    result = parsed(line + b"EHLO client.example\r\n")
    assert result
    assert result.same_attribs(
        valid=True,
        version=1,
        command=None,
        family=AF.INET,
        protocol=PROTO.STREAM,
        src_addr=IPv4Address("192.0.2.1"),
        dst_addr=IPv4Address("198.51.100.7"),
        src_port=0,
        dst_port=65535,
        rest=b"",
        tlv_start=None,
        error="",
    )
    assert result.whole_raw == line


def test_v1_tcp6_compressed_and_full() -> None:
    line = f"PROXY TCP6 {IP6_A} {IP6_B} 8000 25\r\n".encode()
    result = parsed(line)
    assert result.same_attribs(
        family=AF.INET6,
        protocol=PROTO.STREAM,
        src_addr=IPv6Address(IP6_A),
        dst_addr=IPv6Address(IP6_B),
        src_port=8000,
        dst_port=25,
    )
    longest = "ffff:" * 7 + "ffff"
    line = f"PROXY TCP6 {longest} {longest} 65535 65535\r\n".encode()
    assert len(line) == 104  # the longest TCP6 line of the specification
    assert parsed(line).src_addr == IPv6Address(longest)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 203.0.113.9 192.0.2.25 41000 25\r\n",
        b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
        b"PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n",
        b"PROXY TCP6 2001:db8:: 2001:db8:ffff:ffff:ffff:ffff:ffff:ffff 42300 465\r\n",
        b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n",
        b"PROXY TCP6 2001:DB8::A 2001:db8::b 587 587\r\n",
    ],
)
def test_v1_valid_lines(line: bytes) -> None:
    result = parsed(line)
    assert result
    assert result.whole_raw == line


@pytest.mark.parametrize(
    ("line", "rest"),
    [
        (b"PROXY UNKNOWN\r\n", b""),
        (b"PROXY UNKNOWN whatever\r\n", b" whatever"),
        (b"PROXY UNKNOWN ffff::1 ffff::2 65535 65535\r\n", b" ffff::1 ffff::2 65535 65535"),
        # anything before the CRLF is ignored for UNKNOWN, even what is not an address
        (b"PROXY UNKNOWN \x00\xff junk\r\n", b" \x00\xff junk"),
    ],
)
def test_v1_unknown(line: bytes, rest: bytes) -> None:
    result = parsed(line)
    assert result.same_attribs(
        valid=True,
        version=1,
        family=AF.UNSPEC,
        protocol=PROTO.UNSPEC,
        src_addr=None,
        dst_addr=None,
        src_port=None,
        dst_port=None,
        rest=rest,
    )


def test_v1_worst_case_length_is_accepted() -> None:
    longest = "ffff:" * 7 + "ffff"
    line = f"PROXY UNKNOWN {longest} {longest} 65535 65535\r\n".encode()
    assert len(line) == V1_MAX_LENGTH
    assert parsed(line)


# --- version 1: malformed lines ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "error"),
    [
        pytest.param(
            b"PROXY UNKNOWN " + b"*" * 100 + b"\r\n", "PROXYv1 header too long", id="too-long"
        ),
        pytest.param(b"PROXY UNKNOWN\n", "PROXYv1 malformed", id="lf-only"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "PROXYv1 malformed", id="tcp4-lf-only"),
        pytest.param(
            b"NOTPROX TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "PROXY unrecognized signature", id="notprox"
        ),
        pytest.param(
            b"PROXI TCP4 1.2.3.4 5.6.7.8 9 10\r\n", "PROXY unrecognized signature", id="proxi"
        ),
        pytest.param(b"PROXY1 UNKNOWN whatevs\r\n", "PROXYv1 wrong signature", id="proxy1"),
        pytest.param(b"PROXY\r\n", "PROXYv1 wrong signature", id="no-space"),
        pytest.param(
            b"PROXY TCP5 123.123.123.123 231.231.231.231 80 90\r\n",
            "PROXYv1 unrecognized family",
            id="tcp5",
        ),
        pytest.param(
            b"PROXY TCP 123.123.123.123 231.231.231.231 80 90\r\n",
            "PROXYv1 unrecognized family",
            id="tcp",
        ),
        pytest.param(
            b"PROXY UDP4 123.123.123.123 231.231.231.231 80 90\r\n",
            "PROXYv1 unrecognized protocol",
            id="udp4",
        ),
        pytest.param(
            b"PROXY TCPX4 1.2.3.4 5.6.7.8 80 90\r\n", "PROXYv1 unrecognized protocol", id="tcpx4"
        ),
        pytest.param(b"PROXY \r\n", "PROXYv1 unrecognized family", id="empty-family"),
        pytest.param(
            b"PROXY TCP6 1.2.3.4 5.6.7.8 65535 65535\r\n",
            "PROXYv1 address not IPv6",
            id="tcp6-with-ipv4",
        ),
        pytest.param(
            f"PROXY TCP4 {IP6_A} {IP6_B} 65535 65535\r\n".encode(),
            "PROXYv1 address not IPv4",
            id="tcp4-with-ipv6",
        ),
        pytest.param(
            f"PROXY TCP6 1.2.3.4 {IP6_B} 65535 65535\r\n".encode(),
            "PROXYv1 address not IPv6",
            id="tcp6-mixed",
        ),
        pytest.param(
            f"PROXY TCP4 1.2.3.4 {IP6_B} 65535 65535\r\n".encode(),
            "PROXYv1 address not IPv4",
            id="tcp4-mixed",
        ),
        pytest.param(
            f"PROXY TCP6 {IP6_A} {IP6_B} 02501 25\r\n".encode(),
            "PROXYv1 port malformed",
            id="src-port-leading-zero",
        ),
        pytest.param(
            f"PROXY TCP6 {IP6_A} {IP6_B} 25 00\r\n".encode(),
            "PROXYv1 port malformed",
            id="dst-port-double-zero",
        ),
        pytest.param(
            f"PROXY TCP6  {IP6_A} {IP6_B} 1 2\r\n".encode(),
            "PROXYv1 address malformed",
            id="space-before-src",
        ),
        pytest.param(
            f"PROXY TCP6 {IP6_A}  {IP6_B} 1 2\r\n".encode(),
            "PROXYv1 address malformed",
            id="space-before-dst",
        ),
        pytest.param(
            f"PROXY TCP6 {IP6_A} {IP6_B}  8080 2\r\n".encode(),
            "PROXYv1 port malformed",
            id="space-before-src-port",
        ),
        pytest.param(
            f"PROXY TCP6 {IP6_A} {IP6_B} 8080  0\r\n".encode(),
            "PROXYv1 port malformed",
            id="space-before-dst-port",
        ),
        pytest.param(
            f"PROXY TCP6 {IP6_A} {IP6_B} 0 25 \r\n".encode(),
            "PROXYv1 unrecognized extraneous data",
            id="trailing-space",
        ),
        pytest.param(
            f"PROXY TCP6 {IP6_A} {IP6_B} 0 25 text\r\n".encode(),
            "PROXYv1 unrecognized extraneous data",
            id="trailing-text",
        ),
        pytest.param(
            f"PROXY TCP6 {IP6_A[:-1]}g {IP6_B} 1 2\r\n".encode(),
            "PROXYv1 address malformed",
            id="bad-src-ipv6",
        ),
        pytest.param(
            f"PROXY TCP6 {IP6_A} {IP6_B[:-1]}h 1 2\r\n".encode(),
            "PROXYv1 address malformed",
            id="bad-dst-ipv6",
        ),
        pytest.param(
            b"PROXY TCP6 1.2.3.a 5.6.7.8 65535 65535\r\n",
            "PROXYv1 address malformed",
            id="bad-ipv4",
        ),
        pytest.param(
            b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
            "PROXYv1 address malformed",
            id="ipv4-leading-zero",
        ),
        pytest.param(
            b"PROXY TCP6 fe80::1%eth0 fe80::2 1 2\r\n",
            "PROXYv1 address malformed",
            id="ipv6-scope",
        ),
        pytest.param(b"PROXY TCP4 1.2.3.4\r\n", "PROXYv1 address malformed", id="one-address"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "PROXYv1 port malformed", id="one-port"),
        pytest.param(
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "PROXYv1 port malformed", id="plus-port"
        ),
        pytest.param(
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", "PROXYv1 port malformed", id="bare-cr"
        ),
        pytest.param(
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 10200\r\n",
            "PROXYv1 src port out of bounds",
            id="src-port-oob",
        ),
        pytest.param(
            f"PROXY TCP6 {IP6_A} {IP6_B} 10000 65536\r\n".encode(),
            "PROXYv1 dst port out of bounds",
            id="dst-port-oob",
        ),
        pytest.param(
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n",
            "PROXYv1 src port out of bounds",
            id="src-port-five-nines",
        ),
        pytest.param(
            b"PROXY TCP4 1.2.3.4 5.6.7.8 123456 1\r\n",
            "PROXYv1 port malformed",
            id="six-digit-port",
        ),
    ],
)
def test_v1_malformed(line: bytes, error: str) -> None:
    assert error_of(line) == error


def test_v1_too_long_is_decided_at_the_limit_without_waiting_for_lf() -> None:
    line = b"PROXY UNKNOWN " + b"x" * 200
    assert parse_proxy_header(line[: V1_MAX_LENGTH - 1]) is None
    result = parsed(line[:V1_MAX_LENGTH])
    assert result.error == "PROXYv1 header too long"
    assert result.version == 1
    assert result.whole_raw == line[:V1_MAX_LENGTH]
    assert parsed(line) == result


def test_v1_wrong_signature_is_decided_on_the_sixth_byte() -> None:
    assert parse_proxy_header(b"PROXY") is None
    assert parsed(b"PROXY1").error == "PROXYv1 wrong signature"


# --- telling a PROXY header from anything else, at once ----------------------------------------


@pytest.mark.parametrize(
    ("data", "decided_after"),
    [
        (b"EHLO client.example\r\n", 1),
        (b"HELO x\r\n", 1),
        (b"QUIT\r\n", 1),
        (b"\x16\x03\x01\x02\x00", 1),  # a TLS ClientHello
        (b"PING\r\n", 2),
        (b"PROXI TCP4", 5),
        (b"\r\nEHLO x\r\n", 3),
        (b"\r\n\r\nEHLO", 5),
    ],
)
def test_not_a_proxy_header_is_refused_promptly(data: bytes, decided_after: int) -> None:
    for k in range(decided_after):
        assert parse_proxy_header(data[:k]) is None
    result = parsed(data[:decided_after])
    assert result.version is None
    assert result.error == "PROXY unrecognized signature"
    assert result.whole_raw == data[:decided_after]
    assert parsed(data) == result


def test_empty_buffer_needs_more() -> None:
    assert parse_proxy_header(b"") is None
    assert parse_proxy_header(bytearray()) is None


# --- version 2 --------------------------------------------------------------------------------


def test_v2_local_unspec_empty() -> None:
    header = v2_raw(cmd=0, fam=0, proto=0)
    result = parsed(header + b"EHLO x\r\n")
    assert result.same_attribs(
        valid=True,
        version=2,
        command=V2_CMD.LOCAL,
        family=AF.UNSPEC,
        protocol=PROTO.UNSPEC,
        src_addr=None,
        dst_addr=None,
        rest=b"",
        tlv_start=None,
        whole_raw=header,
    )
    assert result.tlv is None


def test_v2_local_unspec_with_opaque_payload() -> None:
    header = v2_raw(cmd=0, payload=b"asdfghjkl")
    result = parsed(header)
    assert result.same_attribs(valid=True, command=V2_CMD.LOCAL, rest=b"asdfghjkl")
    assert result.tlv is None  # not TLVs, and that is no reason to refuse a LOCAL header


def test_v2_unspec_with_tlvs() -> None:
    header = build_v2(command=V2_CMD.LOCAL, tlvs={"UNIQUE_ID": b"conn-1"})
    result = parsed(header)
    assert result.same_attribs(valid=True, family=AF.UNSPEC, protocol=PROTO.UNSPEC, tlv_start=16)
    assert result.tlv is not None
    assert result.tlv.UNIQUE_ID == b"conn-1"
    assert "CRC32C" in result.tlv


@pytest.mark.parametrize("command", list(V2_CMD))
@pytest.mark.parametrize("protocol", [PROTO.STREAM, PROTO.DGRAM])
@pytest.mark.parametrize("tail", [b"", b"fake_tlv"])
def test_v2_inet(command: V2_CMD, protocol: PROTO, tail: bytes) -> None:
    src, dst = IPv4Address("10.212.4.33"), IPv4Address("10.11.12.13")
    payload = src.packed + dst.packed + struct.pack("!HH", 0, 65535) + tail
    header = v2_raw(cmd=command, fam=AF.INET, proto=protocol, payload=payload)
    result = parsed(header + b"EHLO x\r\n")
    # LOCAL: the receiver discards the address block and keeps the connection's endpoints.
    local = command is V2_CMD.LOCAL
    assert result.same_attribs(
        valid=True,
        version=2,
        command=command,
        family=AF.INET,
        protocol=protocol,
        src_addr=None if local else src,
        dst_addr=None if local else dst,
        src_port=None if local else 0,
        dst_port=None if local else 65535,
        rest=tail,
        tlv_start=28 if tail else None,
        whole_raw=header,
    )
    # TLVs that do not parse are not decoded, but do not make the header invalid
    assert result.tlv is None


@pytest.mark.parametrize("protocol", [PROTO.STREAM, PROTO.DGRAM])
def test_v2_inet6(protocol: PROTO) -> None:
    src, dst = IPv6Address(IP6_A), IPv6Address(IP6_B)
    payload = src.packed + dst.packed + struct.pack("!HH", 65534, 8080)
    header = v2_raw(cmd=1, fam=AF.INET6, proto=protocol, payload=payload)
    assert parsed(header).same_attribs(
        valid=True,
        family=AF.INET6,
        protocol=protocol,
        src_addr=src,
        dst_addr=dst,
        src_port=65534,
        dst_port=8080,
        rest=b"",
        whole_raw=header,
    )


@pytest.mark.parametrize("protocol", [PROTO.STREAM, PROTO.DGRAM])
def test_v2_unix(protocol: PROTO) -> None:
    src = b"/run/proxy/source.sock".ljust(108, b"\x00")
    dst = b"\x00abstract-name".ljust(108, b"\x00")
    header = v2_raw(cmd=1, fam=AF.UNIX, proto=protocol, payload=src + dst)
    assert parsed(header).same_attribs(
        valid=True,
        family=AF.UNIX,
        protocol=protocol,
        src_addr=src,
        dst_addr=dst,
        src_port=None,
        dst_port=None,
        rest=b"",
    )


@pytest.mark.parametrize(
    ("family", "protocol"),
    [
        (AF.UNSPEC, PROTO.STREAM),
        (AF.UNSPEC, PROTO.DGRAM),
        (AF.INET, PROTO.UNSPEC),
        (AF.INET6, PROTO.UNSPEC),
        (AF.UNIX, PROTO.UNSPEC),
    ],
)
def test_v2_unspecified_combinations_fall_back_to_unspec(family: AF, protocol: PROTO) -> None:
    header = v2_raw(cmd=0, fam=family, proto=protocol, payload=b"whatever")
    assert parsed(header).same_attribs(
        valid=True,
        family=family,
        protocol=protocol,
        src_addr=None,
        dst_addr=None,
        src_port=None,
        dst_port=None,
        rest=b"whatever",
        tlv_start=None,
    )


@pytest.mark.parametrize(
    ("header", "error", "decided_after"),
    [
        pytest.param(
            b"\r\n\r\n\x00\r\nQUIP\n" + b"\x21\x11\x00\x00",
            "PROXYv2 wrong signature",
            11,
            id="wrong-signature",
        ),
        pytest.param(v2_raw(ver=3), "PROXYv2 illegal version", 13, id="version-3"),
        pytest.param(v2_raw(ver=1), "PROXYv2 illegal version", 13, id="version-1"),
        pytest.param(v2_raw(cmd=2), "PROXYv2 unsupported command", 13, id="command-2"),
        pytest.param(v2_raw(cmd=15), "PROXYv2 unsupported command", 13, id="command-15"),
        pytest.param(v2_raw(fam=4), "PROXYv2 unsupported family", 14, id="family-4"),
        pytest.param(v2_raw(proto=3), "PROXYv2 unsupported protocol", 14, id="protocol-3"),
    ],
)
def test_v2_bad_fixed_header_is_refused_as_soon_as_seen(
    header: bytes, error: str, decided_after: int
) -> None:
    for k in range(decided_after):
        assert parse_proxy_header(header[:k]) is None
    result = parsed(header[:decided_after])
    assert result.error == error
    assert result.version == 2
    assert result.whole_raw == header[:decided_after]
    assert parsed(header) == result


@pytest.mark.parametrize(
    ("family", "payload_length"),
    [(AF.INET, 11), (AF.INET6, 12), (AF.INET6, 35), (AF.UNIX, 215), (AF.INET, 0)],
)
def test_v2_truncated_address(family: AF, payload_length: int) -> None:
    header = v2_raw(fam=family, proto=PROTO.STREAM, payload=bytes(payload_length))
    result = parsed(header)
    assert result.error == "PROXYv2 truncated address"
    assert result.whole_raw == header
    assert result.family is family


def test_v2_ipv4_block_under_inet6_is_a_truncated_address() -> None:
    payload = IPv4Address("192.168.0.11").packed + IPv4Address("172.16.0.22").packed + bytes(4)
    assert error_of(v2_raw(fam=2, proto=1, payload=payload)) == "PROXYv2 truncated address"


def test_v2_length_above_the_cap_is_refused_before_reading_it() -> None:
    header = v2_raw(payload=bytes(V2_MAX_HEADER_LENGTH))  # 16 bytes over the default cap
    result = parsed(header[:16])
    assert result.error == "PROXYv2 header too long"
    assert result.whole_raw == header[:16]
    # a caller may raise the cap up to the 16-bit limit
    assert parsed(header, max_v2_length=16 + 0xFFFF)
    largest = v2_raw(payload=bytes(V2_MAX_HEADER_LENGTH - 16))
    assert parsed(largest)


# --- TLVs -------------------------------------------------------------------------------------

SSL_SUB = {
    "SSL_VERSION": b"TLSv1.3",
    "SSL_CN": b"client.example",
    "SSL_CIPHER": b"TLS_AES_256_GCM_SHA384",
    "SSL_SIG_ALG": b"RSA-SHA256",
    "SSL_KEY_ALG": b"RSA2048",
}


def test_tlvs_decoded_by_name() -> None:
    raw = encode_tlvs(
        [
            ("ALPN", b"smtp"),
            ("AUTHORITY", b"mx.example"),
            ("NOOP", b""),
            ("UNIQUE_ID", b"\x01" * 128),
            ("SSL", build_ssl_tlv(client=0x07, verify=3, sub_tlvs=SSL_SUB)),
            ("NETNS", b"blue"),
            (0xEA, b"vpce-0123"),
        ]
    )
    tlv = ProxyTLV.from_raw(raw)
    assert tlv is not None
    assert tlv == {
        "ALPN": b"smtp",
        "AUTHORITY": b"mx.example",
        "NOOP": b"",
        "UNIQUE_ID": b"\x01" * 128,
        "SSL": True,
        "SSL_CLIENT": 0x07,
        "SSL_VERIFY": 3,
        **SSL_SUB,
        "NETNS": b"blue",
        "xEA": b"vpce-0123",
    }
    assert tlv.AUTHORITY == b"mx.example"
    assert tlv.SSL_CN == b"client.example"
    assert tlv.CRC32C is None
    assert "CRC32C" not in tlv
    assert tlv.same_attribs(SSL=True, SSL_VERSION=b"TLSv1.3", xEA=b"vpce-0123")
    assert not tlv.same_attribs(SSL=False)
    assert not tlv.same_attribs(absent=b"")


def test_tlv_locations() -> None:
    ssl_value = build_ssl_tlv(sub_tlvs={"SSL_VERSION": b"TLSv1.2"})
    raw = encode_tlvs([("AUTHORITY", b"abc"), ("SSL", ssl_value), ("NETNS", b"n")])
    tlv = ProxyTLV.from_raw(raw)
    assert tlv is not None
    assert tlv.tlv_loc == {"AUTHORITY": 0, "SSL": 6, "SSL_VERSION": 14, "NETNS": 6 + 3 + 15}
    for name, offset in tlv.tlv_loc.items():
        assert raw[offset] == ProxyTLV.name_to_num(name)


def test_tlv_same_attribs_raises_on_request() -> None:
    tlv = ProxyTLV.from_raw(encode_tlvs({"AUTHORITY": b"a"}))
    assert tlv is not None
    with pytest.raises(ValueError, match=r"mismatch:AUTHORITY actual=.* expect=.*"):
        tlv.same_attribs(_raises=True, AUTHORITY=b"b")
    with pytest.raises(KeyError, match=r"notfound:ALPN"):
        tlv.same_attribs(_raises=True, ALPN=b"smtp")


def test_tlv_attribute_access_keeps_dunders_real() -> None:
    tlv = ProxyTLV.from_raw(encode_tlvs({"AUTHORITY": b"a"}))
    assert tlv is not None
    with pytest.raises(AttributeError):
        tlv.__no_such_dunder__  # noqa: B018
    assert dict(tlv) == {"AUTHORITY": b"a"}


def test_tlv_equality_ignores_order() -> None:
    one = ProxyTLV.from_raw(encode_tlvs([("CRC32C", b"\x01\x02\x03\x04"), ("AUTHORITY", b"a")]))
    two = ProxyTLV.from_raw(encode_tlvs([("AUTHORITY", b"a"), ("CRC32C", b"\x01\x02\x03\x04")]))
    assert one is not two
    assert one == two


@pytest.mark.parametrize(
    ("number", "name"),
    [
        (0x01, "ALPN"),
        (0x02, "AUTHORITY"),
        (0x03, "CRC32C"),
        (0x04, "NOOP"),
        (0x05, "UNIQUE_ID"),
        (0x20, "SSL"),
        (0x21, "SSL_VERSION"),
        (0x22, "SSL_CN"),
        (0x23, "SSL_CIPHER"),
        (0x24, "SSL_SIG_ALG"),
        (0x25, "SSL_KEY_ALG"),
        (0x30, "NETNS"),
        (0xEA, "xEA"),
        (0x00, "x00"),
        (None, "wrongname"),
        (None, "xea"),
        (None, "x123"),
    ],
)
def test_tlv_name_to_num(number: int | None, name: str) -> None:
    assert ProxyTLV.name_to_num(name) == number


def test_tlv_unknown_type() -> None:
    values, locations = ProxyTLV.parse(b"\xff\x00\x04yeah", strict=False)
    assert values == {"xFF": b"yeah"}
    assert locations == {"xFF": 0}
    with pytest.raises(UnknownTypeTLV):
        ProxyTLV.parse(b"\xff\x00\x04yeah", strict=True)
    with pytest.raises(UnknownTypeTLV):
        ProxyTLV.from_raw(b"\xff\x00\x04yeah", strict=True)


def test_tlv_truncated() -> None:
    raw = encode_tlvs([("CRC32C", b"abcd"), ("AUTHORITY", b"AUTHORITY")]) + b"\x05\x00\x09UNIQ"
    values, _ = ProxyTLV.parse(raw)
    assert values == {"CRC32C": b"abcd", "AUTHORITY": b"AUTHORITY"}
    with pytest.raises(MalformedTLV):
        ProxyTLV.parse(raw, partial_ok=False)
    with pytest.raises(MalformedTLV):
        ProxyTLV.from_raw(raw)
    with pytest.raises(MalformedTLV):
        ProxyTLV.from_raw(b"\x01\x00")  # shorter than a TLV header


def test_tlv_malformed_ssl_sub_tlv() -> None:
    sub = encode_tlvs({"SSL_VERSION": b"version"}) + b"\x22\x00\x09trunc"
    raw = encode_tlvs([("SSL", b"\x01\x00\x00\x00\x00" + sub), ("NETNS", b"after")])
    values, _ = ProxyTLV.parse(raw, partial_ok=True)
    assert values["SSL"] is False
    assert values["SSL_VERSION"] == b"version"
    assert "SSL_CN" not in values
    assert values["NETNS"] == b"after"  # the SSL TLV's own length was intact
    with pytest.raises(MalformedTLV):
        ProxyTLV.parse(raw, partial_ok=False)


@pytest.mark.parametrize(
    "ssl_value",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x01\x00\x00\x00", id="shorter-than-fixed-part"),
        pytest.param(
            b"\x01\x00\x00\x00\x00" + encode_tlvs({"SSL": b"\x01\x00\x00\x00\x00"}),
            id="nested-ssl",
        ),
    ],
)
def test_tlv_inconsistent_ssl_is_malformed(ssl_value: bytes) -> None:
    raw = encode_tlvs({"SSL": ssl_value})
    with pytest.raises(MalformedTLV):
        ProxyTLV.from_raw(raw)
    ProxyTLV.parse(raw)  # partial_ok: no exception


def test_deeply_nested_ssl_does_not_recurse() -> None:
    raw = b""
    for _ in range(2000):
        raw = encode_tlvs({"SSL": b"\x01\x00\x00\x00\x00" + raw})
    values, _ = ProxyTLV.parse(raw)
    assert values["SSL"] is False


def test_tlv_from_empty_is_none() -> None:
    assert ProxyTLV.from_raw(b"") is None


def test_v2_header_with_ssl_tlvs() -> None:
    header = build_v2(
        "192.0.2.1",
        "192.0.2.2",
        40000,
        25,
        tlvs=[("AUTHORITY", b"mx.example"), ("SSL", build_ssl_tlv(sub_tlvs=SSL_SUB))],
    )
    result = parsed(header)
    assert result
    assert result.tlv_start == 28
    assert result.rest == header[28:]
    tlv = result.tlv
    assert tlv is not None
    assert tlv.same_attribs(AUTHORITY=b"mx.example", SSL=True, SSL_CLIENT=1, SSL_VERIFY=0)
    assert {name: tlv[name] for name in SSL_SUB} == SSL_SUB
    assert result.tlv is tlv  # decoded once


# --- CRC32C TLV -------------------------------------------------------------------------------


def test_crc_tlv_filled_by_hand_is_accepted() -> None:
    # The checksum computed independently of build_v2, following the specification's steps.
    address = IPv4Address("127.0.0.1").packed * 2 + struct.pack("!HH", 45138, 25253)
    tlvs = b"\x03\x00\x04\x00\x00\x00\x00" + b"\x02\x00\x09AUTHORITY"
    header = with_crc_tlv(v2_raw(fam=1, proto=1, payload=address + tlvs), 16 + 12 + 3)
    result = parsed(header)
    assert result
    assert result.tlv is not None
    assert header[31:35] == result.tlv.CRC32C
    assert header == build_v2("127.0.0.1", "127.0.0.1", 45138, 25253, tlvs={2: b"AUTHORITY"})


def test_crc_mismatch_makes_the_header_invalid() -> None:
    header = bytearray(build_v2(IP6_A, IP6_B, 1, 2, tlvs={"AUTHORITY": b"mx.example"}))
    header[20] ^= 0x01  # one bit of the source address
    assert error_of(bytes(header)) == "PROXYv2 CRC32C mismatch"
    assert parsed(bytes(header), verify_crc32c=False)


def test_crc_wrong_value_under_unspec() -> None:
    header = bytearray(build_v2(command=V2_CMD.LOCAL, tlvs={"NOOP": b"pad"}))
    header[-1] ^= 0xFF
    assert error_of(bytes(header)) == "PROXYv2 CRC32C mismatch"


@pytest.mark.parametrize(
    ("tlvs", "error"),
    [
        (b"\x03\x00\x03abc", "PROXYv2 CRC32C TLV malformed"),
        (b"\x03\x00\x00", "PROXYv2 CRC32C TLV malformed"),
        (b"\x03\x00\x04abcd\x03\x00\x04abcd", "PROXYv2 CRC32C TLV repeated"),
    ],
)
def test_crc_tlv_shape(tlvs: bytes, error: str) -> None:
    address = IPv4Address("192.0.2.1").packed * 2 + bytes(4)
    assert error_of(v2_raw(fam=1, proto=1, payload=address + tlvs)) == error


def test_crc_not_checked_in_unparsable_tail() -> None:
    # When the TLV area does not parse up to a CRC32C TLV, there is no checksum to verify.
    address = IPv4Address("192.0.2.1").packed * 2 + bytes(4)
    assert parsed(v2_raw(fam=1, proto=1, payload=address + b"\x01\x00\xff" + b"\x03\x00\x04abcd"))


def test_builder_refuses_two_checksums() -> None:
    with pytest.raises(ValueError, match="CRC32C"):
        build_v2("192.0.2.1", "192.0.2.2", tlvs={"CRC32C": bytes(4)})
    header = build_v2("192.0.2.1", "192.0.2.2", tlvs={"CRC32C": b"abcd"}, with_crc=False)
    assert error_of(header) == "PROXYv2 CRC32C mismatch"


# --- ProxyData --------------------------------------------------------------------------------


def test_proxydata_validity() -> None:
    assert not ProxyData(version=None)
    assert not ProxyData(version=1)  # no protocol: nothing was parsed
    assert ProxyData(version=1, protocol=PROTO.UNSPEC)
    assert not ProxyData(version=1, protocol=PROTO.UNSPEC, error="SomeError")


def test_proxydata_with_error_returns_an_invalid_copy() -> None:
    good = parsed(build_v1("192.0.2.1", "192.0.2.2", 1, 2))
    bad = good.with_error("refused by policy")
    assert good
    assert not bad
    assert bad.error == "refused by policy"
    assert bad.src_addr == good.src_addr
    assert bad.whole_raw == good.whole_raw


def test_proxydata_is_frozen() -> None:
    result = parsed(build_v1())
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.error = "x"  # type: ignore[misc]


def test_proxydata_same_attribs() -> None:
    result = ProxyData(version=1, protocol=PROTO.UNSPEC)
    assert result.same_attribs(version=1, valid=True)
    assert not result.same_attribs(protocol=PROTO.STREAM)
    assert not result.same_attribs(src_addr="missing")
    assert not result.same_attribs(strange_key="unrecognized")
    with pytest.raises(ValueError, match=r"mismatch:protocol actual=.* expect=.*"):
        result.same_attribs(_raises=True, protocol=PROTO.STREAM)
    with pytest.raises(KeyError, match=r"notfound:strange_key"):
        result.same_attribs(_raises=True, strange_key="unrecognized")


def test_proxydata_tlv_of_non_tlv_rest() -> None:
    assert ProxyData(version=2).tlv is None
    assert ProxyData(version=2, rest=b"fake_tlv").tlv is None


# --- incremental feeding ----------------------------------------------------------------------

EXAMPLE_HEADERS = {
    "v1-tcp4": build_v1("192.0.2.1", "198.51.100.2", 40000, 25),
    "v1-tcp6": build_v1(IP6_A, IP6_B, 1, 65535),
    "v1-unknown": build_v1(),
    "v2-local": build_v2(command=V2_CMD.LOCAL, with_crc=False),
    "v2-inet": build_v2("192.0.2.1", "198.51.100.2", 40000, 25, tlvs={"AUTHORITY": b"mx"}),
    "v2-inet6-udp": build_v2(IP6_A, IP6_B, 53, 53, protocol=PROTO.DGRAM),
    "v2-unix": build_v2(b"/run/a.sock", b"/run/b.sock", tlvs={"SSL": build_ssl_tlv()}),
}


@pytest.mark.parametrize("header", EXAMPLE_HEADERS.values(), ids=EXAMPLE_HEADERS.keys())
def test_every_prefix_needs_more_and_the_whole_decides(header: bytes) -> None:
    for k in range(len(header)):
        assert parse_proxy_header(header[:k]) is None
        assert parse_proxy_header(bytearray(header[:k])) is None
    result = parsed(header)
    assert result
    assert result.whole_raw == header
    for trailer in (b"E", b"EHLO client.example\r\n", b"\r\n\r\n\x00\r\nQUIT\n", b"PROXY "):
        assert parsed(header + trailer) == result
        assert parsed(bytearray(header + trailer)) == result
        assert parsed(memoryview(header + trailer)) == result


@pytest.mark.parametrize("header", EXAMPLE_HEADERS.values(), ids=EXAMPLE_HEADERS.keys())
def test_eof_inside_a_header_is_an_error(header: bytes) -> None:
    for k in range(len(header)):
        result = parse_proxy_header(header[:k], eof=True)
        assert isinstance(result, ProxyData)
        assert not result
        assert header[:k].startswith(result.whole_raw)
    assert parse_proxy_header(header, eof=True) == parsed(header)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", "PROXY connection closed before any header"),
        (b"PROX", "PROXY unrecognized signature"),
        (b"PROXY TCP4 1.2.3.4", "PROXYv1 malformed"),
        (b"\r\n\r\n", "PROXY unrecognized signature"),
        (V2_SIGNATURE + b"\x21", "PROXYv2 truncated header"),
        (V2_SIGNATURE + b"\x21\x11\x00\x0c\x7f", "PROXYv2 truncated header"),
    ],
)
def test_eof_errors(data: bytes, error: str) -> None:
    assert parse_proxy_header(data) is None
    result = parse_proxy_header(data, eof=True)
    assert not result
    assert result.error == error
    assert result.whole_raw == data


# --- builders ---------------------------------------------------------------------------------


def test_build_v1_lines() -> None:
    assert build_v1("192.0.2.1", "192.0.2.2", 1, 2) == b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n"
    assert build_v1(IPv6Address("::1"), "::2", 0, 0) == b"PROXY TCP6 ::1 ::2 0 0\r\n"
    assert build_v1() == b"PROXY UNKNOWN\r\n"
    assert build_v1(unknown_tail=b" anything") == b"PROXY UNKNOWN anything\r\n"


@pytest.mark.parametrize(
    "call",
    [
        lambda: build_v1("192.0.2.1", None),
        lambda: build_v1("192.0.2.1", "::1"),
        lambda: build_v1("192.0.2.1", "192.0.2.2", 65536, 1),
        lambda: build_v1("192.0.2.1", "192.0.2.2", -1, 1),
        lambda: build_v1(unknown_tail=b" a\r\nEHLO"),
        lambda: build_v1(unknown_tail=b" " + b"x" * 100),
        lambda: build_v1("192.0.2.1", "192.0.2.2", unknown_tail=b" x"),
        lambda: build_v1("not an address", "192.0.2.2"),
    ],
)
def test_build_v1_refuses(call: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT012
        assert callable(call)
        call()


@pytest.mark.parametrize(
    "call",
    [
        lambda: build_v2("192.0.2.1", "::1"),
        lambda: build_v2("192.0.2.1", b"/path"),
        lambda: build_v2(b"/path", "192.0.2.1"),
        lambda: build_v2(b"x" * 109, b"/path"),
        lambda: build_v2("192.0.2.1", "192.0.2.2", 0, 70000),
        lambda: build_v2("192.0.2.1", "192.0.2.2", family=AF.INET6),
        lambda: build_v2("192.0.2.1", "192.0.2.2", protocol=PROTO.UNSPEC),
        lambda: build_v2(None, "192.0.2.2"),
        lambda: build_v2(tlvs={"NOSUCHNAME": b""}),
        lambda: build_v2(tlvs={256: b""}),
        lambda: build_v2(tlvs={1: bytes(0x10000)}),
        lambda: build_v2(tlvs=[(1, bytes(0xFFFF)), (2, b"")]),
        lambda: build_ssl_tlv(client=256),
        lambda: build_ssl_tlv(verify=-1),
    ],
)
def test_build_v2_refuses(call: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT012
        assert callable(call)
        call()


def test_build_v2_fixed_part() -> None:
    header = build_v2("192.0.2.1", "192.0.2.2", 1, 2, with_crc=False)
    assert header == (
        V2_SIGNATURE + b"\x21\x11\x00\x0c" + b"\xc0\x00\x02\x01\xc0\x00\x02\x02\x00\x01\x00\x02"
    )
    assert build_v2(command=V2_CMD.LOCAL, with_crc=False) == V2_SIGNATURE + b"\x20\x00\x00\x00"


# --- trusted upstream proxies -----------------------------------------------------------------

TRUSTED = parse_trusted_networks(["10.0.0.0/8", "192.0.2.7", "2001:db8:1::/48"])


def test_parse_trusted_networks() -> None:
    assert (
        IPv4Network("10.0.0.0/8"),
        IPv4Network("192.0.2.7/32"),
        IPv6Network("2001:db8:1::/48"),
    ) == TRUSTED
    assert parse_trusted_networks(["10.1.2.3/8"]) == (IPv4Network("10.0.0.0/8"),)
    assert parse_trusted_networks([IPv4Network("10.0.0.0/8")]) == (IPv4Network("10.0.0.0/8"),)
    with pytest.raises(ValueError):
        parse_trusted_networks(["proxy.example"])


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        ("10.1.2.3", True),
        (IPv4Address("10.255.255.255"), True),
        ("192.0.2.7", True),
        ("192.0.2.8", False),
        ("11.0.0.1", False),
        ("2001:db8:1:ffff::1", True),
        (IPv6Address("2001:db8:2::1"), False),
        ("::ffff:10.0.0.1", True),  # an IPv4 client seen through a dual-stack socket
        ("::ffff:11.0.0.1", False),
        ("::1", False),
        ("", False),
        ("/run/smtpd.sock", False),
        ("not an address", False),
    ],
)
def test_is_trusted_peer(peer: str | IPv4Address | IPv6Address, trusted: bool) -> None:
    assert is_trusted_peer(peer, TRUSTED) is trusted


def test_nothing_is_trusted_by_an_empty_list() -> None:
    assert not is_trusted_peer("127.0.0.1", [])


# --- get_proxy ------------------------------------------------------------------------------


def stream_of(data: bytes, *, eof: bool = True, limit: int = 2**16) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=limit)
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


@pytest.mark.asyncio
@pytest.mark.parametrize("header", EXAMPLE_HEADERS.values(), ids=EXAMPLE_HEADERS.keys())
async def test_get_proxy_reads_exactly_the_header(header: bytes) -> None:
    reader = stream_of(header + b"EHLO client.example\r\n")
    result = await get_proxy(reader)
    assert result
    assert result == parsed(header)
    assert await reader.read() == b"EHLO client.example\r\n"


@pytest.mark.asyncio
@pytest.mark.parametrize("header", EXAMPLE_HEADERS.values(), ids=EXAMPLE_HEADERS.keys())
async def test_get_proxy_with_trickling_bytes(header: bytes) -> None:
    reader = asyncio.StreamReader()
    task = asyncio.create_task(get_proxy(reader))
    for byte in header:
        await asyncio.sleep(0)
        assert not task.done()
        reader.feed_data(bytes([byte]))
    reader.feed_data(b"QUIT\r\n")
    result = await asyncio.wait_for(task, timeout=5)
    assert result == parsed(header)
    assert await reader.readexactly(6) == b"QUIT\r\n"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"EHLO client.example\r\n", "PROXY unrecognized signature"),
        (b"PROXY TCP4 255.255.255.255 25", "PROXYv1 malformed"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "PROXYv1 malformed"),
        (b"PROXY UNKNOWN " + b"*" * 100 + b"\r\n", "PROXYv1 header too long"),
        (b"PROXY UNKNOWN " + b"*" * 300, "PROXYv1 header too long"),
        (V2_SIGNATURE + b"\x21\x11\x00\x0c\x7f\x00", "PROXYv2 truncated header"),
        (V2_SIGNATURE[:8], "PROXYv2 truncated header"),
        (v2_raw(ver=3), "PROXYv2 illegal version"),
        (b"", "PROXY connection closed before any header"),
    ],
)
async def test_get_proxy_errors(data: bytes, error: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mail.debug"):
        result = await get_proxy(stream_of(data))
    assert not result
    assert result.error == error
    assert ("mail.debug", logging.WARNING, f"PROXY error: {error}") in caplog.record_tuples


@pytest.mark.asyncio
async def test_get_proxy_line_beyond_the_reader_limit() -> None:
    reader = stream_of(b"PROXY UNKNOWN " + b"*" * 500, eof=False, limit=64)
    result = await asyncio.wait_for(get_proxy(reader), timeout=5)
    assert result.error == "PROXYv1 header too long"


@pytest.mark.asyncio
async def test_get_proxy_does_not_wait_after_a_refusal() -> None:
    # No EOF: the client sent a command and waits for the greeting.
    result = await asyncio.wait_for(get_proxy(stream_of(b"EHLO x\r\n", eof=False)), timeout=5)
    assert result.error == "PROXY unrecognized signature"


class ScriptedReader:
    """An :class:`AsyncReader` that serves fixed data, short reads at the end, or an error."""

    def __init__(self, data: bytes, error: Exception | None = None) -> None:
        self.data = bytearray(data)
        self.error = error

    def _take(self, n: int) -> bytes:
        if not self.data and self.error is not None:
            raise self.error
        chunk = bytes(self.data[:n])
        del self.data[:n]
        return chunk

    async def read(self, n: int = -1) -> bytes:
        return self._take(len(self.data) if n < 0 else n)

    async def readexactly(self, n: int) -> bytes:
        return self._take(n)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        end = self.data.find(separator)
        return self._take(len(self.data) if end < 0 else end + len(separator))


@pytest.mark.asyncio
async def test_get_proxy_with_a_plain_reader_object() -> None:
    header = EXAMPLE_HEADERS["v2-inet"]
    reader: AsyncReader = ScriptedReader(header + b"rest")
    assert await get_proxy(reader) == parsed(header)
    cut: AsyncReader = ScriptedReader(EXAMPLE_HEADERS["v1-tcp4"][:20])
    assert (await get_proxy(cut)).error == "PROXYv1 malformed"


@pytest.mark.asyncio
async def test_get_proxy_reader_error_becomes_an_invalid_result() -> None:
    reader = ScriptedReader(V2_SIGNATURE, ConnectionResetError("reset by peer"))
    result = await get_proxy(reader)
    assert not result
    assert result.version is None
    assert result.error == "PROXY exception: reset by peer"
    assert result.whole_raw == V2_SIGNATURE


# --- properties -------------------------------------------------------------------------------

ports = st.integers(min_value=0, max_value=0xFFFF)
ipv4 = st.ip_addresses(v=4)
ipv6 = st.ip_addresses(v=6)
unix_paths = st.binary(max_size=108)
plain_tlv_types = st.integers(min_value=0, max_value=0xFF).filter(lambda t: t not in (0x03, 0x20))
ssl_sub_tlv_types = st.integers(min_value=0x21, max_value=0x25)
tlv_values = st.binary(max_size=40)


@st.composite
def tlv_lists(draw: st.DrawFn) -> list[tuple[int, bytes]]:
    items: list[tuple[int, bytes]] = draw(
        st.lists(st.tuples(plain_tlv_types, tlv_values), max_size=6)
    )
    if draw(st.booleans()):
        subs = draw(st.lists(st.tuples(ssl_sub_tlv_types, tlv_values), max_size=4))
        client = draw(st.integers(min_value=0, max_value=0xFF))
        verify = draw(st.integers(min_value=0, max_value=0xFFFFFFFF))
        value = build_ssl_tlv(client=client, verify=verify, sub_tlvs=subs)
        items.insert(draw(st.integers(min_value=0, max_value=len(items))), (0x20, value))
    return items


def expected_tlv(items: Sequence[tuple[int, bytes]], with_crc: bool) -> dict[str, TLVValue]:
    """A model of the TLV decoding: names, SSL flattening, the last of a repeated type wins."""

    def name(typ: int) -> str:
        return ProxyTLV.PP2_TYPENAME.get(typ, f"x{typ:02X}")

    model: dict[str, TLVValue] = {}
    if with_crc:
        model["CRC32C"] = b""  # value checked separately
    for typ, value in items:
        if typ == 0x20:
            model["SSL_CLIENT"] = value[0]
            model["SSL_VERIFY"] = int.from_bytes(value[1:5], "big")
            i = 5
            while i < len(value):
                sub_type, length = value[i], int.from_bytes(value[i + 1 : i + 3], "big")
                model[name(sub_type)] = value[i + 3 : i + 3 + length]
                i += 3 + length
            model["SSL"] = True
        else:
            model[name(typ)] = value
    return model


@st.composite
def v1_headers(draw: st.DrawFn) -> tuple[bytes, ProxyData]:
    kind = draw(st.sampled_from(["TCP4", "TCP6", "UNKNOWN"]))
    if kind == "UNKNOWN":
        tail = draw(st.binary(max_size=90).filter(lambda b: b"\r" not in b and b"\n" not in b))
        tail = b" " + tail if tail else b""
        expected = ProxyData(version=1, family=AF.UNSPEC, protocol=PROTO.UNSPEC, rest=tail)
        return build_v1(unknown_tail=tail), expected
    addresses = ipv4 if kind == "TCP4" else ipv6
    src, dst = draw(addresses), draw(addresses)
    src_port, dst_port = draw(ports), draw(ports)
    expected = ProxyData(
        version=1,
        family=AF.INET if kind == "TCP4" else AF.INET6,
        protocol=PROTO.STREAM,
        src_addr=src,
        dst_addr=dst,
        src_port=src_port,
        dst_port=dst_port,
    )
    return build_v1(src, dst, src_port, dst_port), expected


@given(v1_headers(), st.binary(max_size=20))
def test_v1_round_trip(case: tuple[bytes, ProxyData], trailer: bytes) -> None:
    header, expected = case
    result = parsed(header + trailer)
    assert result == dataclasses.replace(expected, whole_raw=header)
    assert result


@st.composite
def v2_cases(draw: st.DrawFn) -> tuple[dict[str, object], list[tuple[int, bytes]]]:
    family = draw(st.sampled_from(list(AF)))
    kwargs: dict[str, object] = {"command": draw(st.sampled_from(list(V2_CMD)))}
    if family is AF.UNSPEC:
        kwargs["protocol"] = PROTO.UNSPEC
    else:
        kwargs["protocol"] = draw(st.sampled_from([PROTO.STREAM, PROTO.DGRAM]))
        if family is AF.UNIX:
            kwargs["src_addr"], kwargs["dst_addr"] = draw(unix_paths), draw(unix_paths)
        else:
            addresses = ipv4 if family is AF.INET else ipv6
            kwargs["src_addr"], kwargs["dst_addr"] = draw(addresses), draw(addresses)
            kwargs["src_port"], kwargs["dst_port"] = draw(ports), draw(ports)
    return kwargs, draw(tlv_lists())


@given(v2_cases(), st.booleans(), st.binary(max_size=20))
def test_v2_round_trip(
    case: tuple[dict[str, object], list[tuple[int, bytes]]], with_crc: bool, trailer: bytes
) -> None:
    kwargs, tlvs = case
    header = build_v2(**kwargs, tlvs=tlvs, with_crc=with_crc)  # type: ignore[arg-type]
    result = parsed(header + trailer)
    assert result, result.error
    assert result.whole_raw == header
    assert result.version == 2
    assert result.command is kwargs["command"]
    assert result.protocol is kwargs["protocol"]
    src = kwargs.get("src_addr")
    if kwargs["command"] is V2_CMD.LOCAL and src is not None:  # its addresses are discarded
        assert result.src_addr is result.dst_addr is result.src_port is result.dst_port is None
    elif isinstance(src, bytes):
        assert result.family is AF.UNIX
        assert result.src_addr == src.ljust(108, b"\x00")
        assert result.dst_addr == kwargs["dst_addr"].ljust(108, b"\x00")  # type: ignore[attr-defined]
        assert result.src_port is None
    elif src is None:
        assert result.family is AF.UNSPEC
        assert result.src_addr is None
    else:
        assert result.family is (AF.INET if ip_address(str(src)).version == 4 else AF.INET6)
        assert result.same_attribs(
            src_addr=src,
            dst_addr=kwargs["dst_addr"],
            src_port=kwargs["src_port"],
            dst_port=kwargs["dst_port"],
        )
    crc_part = 7 if with_crc else 0
    assert result.rest[crc_part:] == encode_tlvs(tlvs)
    if result.rest:
        assert result.tlv_start == len(header) - len(result.rest)
        tlv = result.tlv
        assert tlv is not None
        decoded = dict(tlv)
        if with_crc:
            assert decoded["CRC32C"] == crc32c(
                header[: -len(result.rest)] + b"\x03\x00\x04\x00\x00\x00\x00" + result.rest[7:]
            ).to_bytes(4, "big")
            decoded["CRC32C"] = b""
        assert decoded == expected_tlv(tlvs, with_crc)
    else:
        assert result.tlv_start is None
        assert result.tlv is None


@given(v2_cases(), st.data())
def test_v2_crc_catches_any_corrupted_address_byte(
    case: tuple[dict[str, object], list[tuple[int, bytes]]], data: st.DataObject
) -> None:
    kwargs, tlvs = case
    header = build_v2(**kwargs, tlvs=tlvs)  # type: ignore[arg-type]
    address_length = {AF.INET: 12, AF.INET6: 36, AF.UNIX: 216}.get(
        parsed(header).family or AF.UNSPEC, 0
    )
    if address_length == 0:
        return
    position = data.draw(st.integers(min_value=16, max_value=16 + address_length - 1))
    flip = data.draw(st.integers(min_value=1, max_value=0xFF))
    corrupted = bytearray(header)
    corrupted[position] ^= flip
    assert error_of(bytes(corrupted)) == "PROXYv2 CRC32C mismatch"


def _v1_tokens() -> st.SearchStrategy[bytes]:
    token = st.sampled_from(
        [b"TCP4", b"TCP6", b"UNKNOWN", b"1.2.3.4", b"::1", b"0", b"65535", b"65536", b"01", b""]
    )
    return st.lists(token, max_size=7).map(lambda parts: b" ".join(parts))


def _near_misses() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=300).map(lambda b: V2_SIGNATURE + b),
        st.binary(max_size=300).map(lambda b: V2_SIGNATURE + b"\x21" + b),
        st.binary(max_size=150).map(lambda b: b"PROXY " + b),
        st.tuples(_v1_tokens(), st.sampled_from([b"\r\n", b"\n", b"\r", b""]), st.binary()).map(
            lambda t: b"PROXY " + t[0] + t[1] + t[2]
        ),
        st.tuples(v2_cases(), st.binary(max_size=30), st.integers(0, 400)).map(
            lambda t: (build_v2(**t[0][0], tlvs=t[0][1]) + t[1])[: t[2]]  # type: ignore[arg-type]
        ),
    )


@given(_near_misses())
def test_parser_never_raises_and_decides_once(data: bytes) -> None:
    """Arbitrary bytes: no exception; each result is final; whole_raw is what it decided on."""
    decided_at: int | None = None
    decision: ProxyData | None = None
    for k in range(len(data) + 1):
        result = parse_proxy_header(data[:k])
        if decided_at is None:
            if result is not None:
                decided_at, decision = k, result
                assert len(result.whole_raw) == k
                assert data.startswith(result.whole_raw)
                assert bool(result) == (result.error == "")
        else:
            assert result == decision  # a longer input never changes the verdict
    final = parse_proxy_header(data, eof=True)
    assert isinstance(final, ProxyData)
    assert data.startswith(final.whole_raw)
    if decision is not None:
        assert final == decision


@given(st.binary(max_size=2000))
def test_parser_never_raises_on_any_bytes(data: bytes) -> None:
    for buf in (data, bytearray(data), memoryview(data)):
        result = parse_proxy_header(buf)
        assert result is None or isinstance(result, ProxyData)
        if result is not None:
            assert data.startswith(result.whole_raw)
            if result:
                assert result.error == ""
            else:
                assert result.error
        assert isinstance(parse_proxy_header(buf, eof=True), ProxyData)


@given(st.binary(max_size=400), st.booleans())
def test_tlv_parse_never_raises_unexpected_errors(data: bytes, strict: bool) -> None:
    try:
        values, locations = ProxyTLV.parse(data, partial_ok=False, strict=strict)
    except (MalformedTLV, UnknownTypeTLV):
        return
    assert set(locations) <= set(values)
    ProxyTLV.parse(data, partial_ok=True)
