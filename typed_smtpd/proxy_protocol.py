"""PROXY protocol support under aiosmtpd's names: ``ProxyData``, ``ProxyTLV``, ``get_proxy`` ...

The parsing itself lives in :mod:`typed_smtpd.proto.proxy` (sans-IO, no asyncio); this module
re-exports its public names and adds :func:`get_proxy`, which reads one header from a stream
reader (anything with ``read``, ``readexactly`` and ``readuntil``, such as
:class:`asyncio.StreamReader`) without reading past its end.

What must not live here: header parsing rules (they belong to the sans-IO core, so that the server,
the in-memory test doubles and this reader all agree byte for byte).
"""

from __future__ import annotations

import asyncio
import logging
from ipaddress import IPv4Address, IPv6Address
from typing import Protocol

from typed_smtpd.proto.proxy import (
    AF,
    PROTO,
    V1_MAX_LENGTH,
    V1_SIGNATURE,
    V2_CMD,
    V2_HEADER_LENGTH,
    V2_MAX_HEADER_LENGTH,
    V2_PARSE_ADDR_FAMPRO,
    V2_SIGNATURE,
    V2_VALID_CMDS,
    V2_VALID_FAMS,
    V2_VALID_PROS,
    EndpointAddress,
    MalformedTLV,
    ProxyData,
    ProxyTLV,
    TLVItems,
    TLVKey,
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

__all__ = [
    "AF",
    "PROTO",
    "V1_MAX_LENGTH",
    "V1_SIGNATURE",
    "V2_CMD",
    "V2_HEADER_LENGTH",
    "V2_MAX_HEADER_LENGTH",
    "V2_PARSE_ADDR_FAMPRO",
    "V2_SIGNATURE",
    "V2_VALID_CMDS",
    "V2_VALID_FAMS",
    "V2_VALID_PROS",
    "AsyncReader",
    "EndpointAddress",
    "IPv4Address",
    "IPv6Address",
    "MalformedTLV",
    "PROXYv2_SIGNATURE",
    "ProxyData",
    "ProxyTLV",
    "TLVItems",
    "TLVKey",
    "TLVValue",
    "UnknownTypeTLV",
    "build_ssl_tlv",
    "build_v1",
    "build_v2",
    "crc32c",
    "encode_tlvs",
    "get_proxy",
    "is_trusted_peer",
    "parse_proxy_header",
    "parse_trusted_networks",
]

#: Another name for :data:`V2_SIGNATURE`.
PROXYv2_SIGNATURE = V2_SIGNATURE

log: logging.Logger = logging.getLogger("mail.debug")


class AsyncReader(Protocol):
    """What :func:`get_proxy` reads from: the reading half of :class:`asyncio.StreamReader`."""

    async def read(self, n: int = ...) -> bytes:
        """Up to *n* bytes; ``b""`` at end of stream."""
        ...

    async def readexactly(self, n: int) -> bytes:
        """Exactly *n* bytes."""
        ...

    async def readuntil(self, separator: bytes = ...) -> bytes:
        """Bytes up to and including *separator*."""
        ...


def _wanted(buf: bytearray) -> int:
    """How many bytes can be read now without taking any byte past a version 2 header.

    Every valid header is longer than the five bytes that tell the versions apart, and a
    version 2 header states its own length in its fixed 16-byte part.
    """
    n = len(buf)
    if n < len(V1_SIGNATURE):
        return len(V1_SIGNATURE) - n
    if n < V2_HEADER_LENGTH:
        return V2_HEADER_LENGTH - n
    length = int.from_bytes(buf[V2_HEADER_LENGTH - 2 : V2_HEADER_LENGTH], "big")
    return V2_HEADER_LENGTH + length - n


async def _read_v1_line(reader: AsyncReader) -> bytes:
    """The rest of a version 1 line, up to and including its LF (fewer bytes at end of stream)."""
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        return exc.partial
    except asyncio.LimitOverrunError:
        # Far more than a header line without a LF: the verdict needs only its first bytes.
        return await reader.read(V1_MAX_LENGTH)


async def get_proxy(reader_func: AsyncReader) -> ProxyData:
    """Read and parse the PROXY header at the start of *reader_func*'s stream.

    Reads no byte past a valid header. Never raises for bad input: a malformed or truncated
    header, or a reader error, gives a falsy :class:`ProxyData` whose ``error`` says why (also
    logged as a warning on the ``mail.debug`` logger). Apply a timeout around the call.
    """
    buf = bytearray()
    try:
        while (result := parse_proxy_header(buf)) is None:
            if buf.startswith(V1_SIGNATURE):
                buf += await _read_v1_line(reader_func)
                # Either the line is complete or the stream ended before its LF.
                result = parse_proxy_header(buf, eof=True)
                break
            chunk = await reader_func.read(_wanted(buf))
            if not chunk:
                result = parse_proxy_header(buf, eof=True)
                break
            buf += chunk
    except (OSError, EOFError) as exc:
        result = ProxyData(version=None, whole_raw=bytes(buf), error=f"PROXY exception: {exc}")
    if not result:
        log.warning("PROXY error: %s", result.error)
    return result
