"""The PROXY protocol (HAProxy's specification, version 1 text and version 2 binary), sans-IO.

What lives here: :func:`parse_proxy_header`, a pure function from the bytes received so far to
"need more bytes" (``None``) or a :class:`ProxyData` (valid, or carrying ``.error``); the values it
returns (:class:`ProxyData`, :class:`ProxyTLV`, the :class:`AF` / :class:`PROTO` / :class:`V2_CMD`
enums); :func:`crc32c` for the version 2 checksum TLV; :func:`is_trusted_peer` for the list of
upstream proxies allowed to send a header; and header builders (:func:`build_v1`,
:func:`build_v2`) for tests, test doubles and clients.

What must not live here: any I/O or clock. No ``asyncio``, ``ssl``, ``socket`` or ``threading``
import; no logging of headers (the I/O layer decides what to log). The parser never raises on
input bytes: every malformed header becomes a falsy :class:`ProxyData` whose ``error`` says what
is wrong, so that a server can refuse the connection at once.

The parser is a function of its input alone and decides as early as the bytes allow: a client that
speaks SMTP first (``EHLO ...``) is refused on its first byte, and once a prefix of the input
yields a result, every longer input yields the same result. The caller consumes
``len(result.whole_raw)`` bytes; anything after the header is left for the SMTP session.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum, IntEnum
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from types import MappingProxyType
from typing import ClassVar, Final, Literal, TypeAlias, overload

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
    "EndpointAddress",
    "IPAddress",
    "IPNetwork",
    "MalformedTLV",
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
    "is_trusted_peer",
    "parse_proxy_header",
    "parse_trusted_networks",
]

# ---------------------------------------------------------------------------------------------
# Constants of the specification

#: The first five bytes of a version 1 header (followed by exactly one space).
V1_SIGNATURE: Final = b"PROXY"

#: The twelve bytes that open every version 2 header.
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"

#: The longest version 1 line, CRLF included: "PROXY UNKNOWN" followed by two full-length IPv6
#: addresses and two five-digit ports (the specification's worst case). A receiver that has seen
#: this many bytes without a line feed declares the line invalid.
V1_MAX_LENGTH: Final = 107

#: Signature, version/command byte, family/protocol byte and the 16-bit length.
V2_HEADER_LENGTH: Final = 16

#: Default ceiling on a whole version 2 header. Its length field allows up to 16 + 65535 bytes,
#: but the address block is at most 216 bytes (two AF_UNIX paths) and what real senders append as
#: TLVs (HAProxy's SSL details, authority, unique ID of at most 128 bytes; the cloud load
#: balancers' endpoint IDs) stays well under 1 KiB. 4 KiB keeps a generous margin while bounding
#: what one unauthenticated connection can make the server buffer before the greeting.
V2_MAX_HEADER_LENGTH: Final = 4096

_V1_MIN_SIGNATURE: Final = V1_SIGNATURE + b" "
_V2_VERSION: Final = 0x2
_V2_DETECT_LENGTH: Final = 5  # bytes after which version 1 and version 2 are told apart
_ADDR_LENGTH: Final[Mapping[int, int]] = MappingProxyType({1: 12, 2: 36, 3: 216})
_UNIX_PATH_LENGTH: Final = 108

_PP2_TYPE_CRC32C: Final = 0x03
_PP2_TYPE_SSL: Final = 0x20
_TLV_HEADER_LENGTH: Final = 3  # type byte and 16-bit length
_SSL_FIXED_LENGTH: Final = 5  # client byte and 32-bit verify field


class V2_CMD(IntEnum):  # noqa: N801 - the aiosmtpd name
    """The command of a version 2 header (low nibble of its 13th byte)."""

    #: The proxy opened the connection itself (a health check): use the real endpoints.
    LOCAL = 0
    #: The connection is relayed on behalf of the client described by the header.
    PROXY = 1


class AF(IntEnum):
    """Address family of the proxied connection. Version 1 ``UNKNOWN`` maps to ``UNSPEC``."""

    #: Unknown or unspecified (version 1 ``UNKNOWN``; version 2 LOCAL and fallbacks).
    UNSPEC = 0
    #: IPv4.
    INET = 1
    #: IPv6.
    INET6 = 2
    #: Unix socket (version 2 only); addresses are the raw 108-byte path fields.
    UNIX = 3


class PROTO(IntEnum):
    """Transport protocol of the proxied connection. Version 1 ``UNKNOWN`` maps to ``UNSPEC``."""

    #: Unknown or unspecified.
    UNSPEC = 0
    #: A stream socket (TCP, or a Unix stream socket).
    STREAM = 1
    #: A datagram socket (UDP, or a Unix datagram socket); version 2 only.
    DGRAM = 2


#: The command values a version 2 header may carry.
V2_VALID_CMDS: Final = frozenset(int(item) for item in V2_CMD)
#: The address family values a version 2 header may carry.
V2_VALID_FAMS: Final = frozenset(int(item) for item in AF)
#: The protocol values a version 2 header may carry.
V2_VALID_PROS: Final = frozenset(int(item) for item in PROTO)
#: The family/protocol bytes whose address block is decoded; every other valid combination falls
#: back to UNSPEC handling (the whole block after the fixed header is kept in ``rest``).
V2_PARSE_ADDR_FAMPRO: Final = frozenset(
    (fam << 4) | proto
    for fam in (AF.INET, AF.INET6, AF.UNIX)
    for proto in (PROTO.STREAM, PROTO.DGRAM)
)

#: An IP address as the standard library models it.
IPAddress: TypeAlias = IPv4Address | IPv6Address
#: An IP network as the standard library models it.
IPNetwork: TypeAlias = IPv4Network | IPv6Network
#: A decoded endpoint: an IP address, or the raw 108-byte path field of a Unix socket.
EndpointAddress: TypeAlias = IPv4Address | IPv6Address | bytes
#: The value of one decoded TLV: the raw bytes, or for the SSL TLV the ``SSL`` flag (bool) and
#: the ``SSL_CLIENT`` / ``SSL_VERIFY`` integers.
TLVValue: TypeAlias = bytes | int
#: How a TLV type may be named to the builders: its number, or its name in
#: :attr:`ProxyTLV.PP2_TYPENAME` (``"AUTHORITY"``) or ``"xNN"`` form (``"xEA"``).
TLVKey: TypeAlias = int | str
#: TLVs to encode, in order: a mapping or a sequence of pairs, keyed by :data:`TLVKey`.
TLVItems: TypeAlias = (
    Mapping[int, bytes]
    | Mapping[str, bytes]
    | Mapping[TLVKey, bytes]
    | Iterable[tuple[TLVKey, bytes]]
)

# ---------------------------------------------------------------------------------------------
# CRC32C (Castagnoli), as RFC 4960 appendix B specifies it for SCTP and the PROXY protocol uses it

_CRC32C_POLY_REFLECTED: Final = 0x82F63B78  # 0x1EDC6F41 with its bits reversed


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC32C_POLY_REFLECTED if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE: Final = _crc32c_table()


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """Return the CRC32C (Castagnoli) checksum of *data*.

    *value* continues a checksum computed over earlier data, as :func:`zlib.crc32` does:
    ``crc32c(b + c) == crc32c(c, crc32c(b))``. ``crc32c(b"123456789") == 0xE3069283``.
    """
    table = _CRC32C_TABLE
    crc = value ^ 0xFFFFFFFF
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# TLV vectors


class MalformedTLV(RuntimeError):  # the aiosmtpd name
    """A TLV vector runs past the end of its enclosing data, or an SSL TLV is inconsistent."""


class UnknownTypeTLV(KeyError):  # the aiosmtpd name
    """Strict TLV parsing met a type that :attr:`ProxyTLV.PP2_TYPENAME` does not name."""


class _NotFound(Enum):
    NOT_FOUND = 0


_NOT_FOUND: Final = _NotFound.NOT_FOUND


def _same_attribs(actual_of: Mapping[str, object] | object, raises: bool, **kwargs: object) -> bool:
    for key, expected in kwargs.items():
        if isinstance(actual_of, Mapping):
            actual = actual_of.get(key, _NOT_FOUND)
        else:
            actual = getattr(actual_of, key, _NOT_FOUND)
        if actual is _NOT_FOUND:
            if raises:
                raise KeyError(f"notfound:{key}")
            return False
        if actual != expected:
            if raises:
                raise ValueError(f"mismatch:{key} actual={actual!r} expect={expected!r}")
            return False
    return True


def _iter_tlvs(data: bytes, start: int = 0) -> Iterator[tuple[int, int, int]]:
    """Yield ``(type, value_start, value_end)`` for each well-formed TLV of ``data[start:]``.

    Stops silently at the first TLV that runs past the end (a caller that cares checks whether
    the last ``value_end`` reached ``len(data)``).
    """
    i = start
    end = len(data)
    while i + _TLV_HEADER_LENGTH <= end:
        length = (data[i + 1] << 8) | data[i + 2]
        value_start = i + _TLV_HEADER_LENGTH
        value_end = value_start + length
        if value_end > end:
            return
        yield data[i], value_start, value_end
        i = value_end


class ProxyTLV(dict[str, TLVValue]):
    """The TLV vectors of a version 2 header, decoded into a dict keyed by type name.

    Known types get the names of :attr:`PP2_TYPENAME`; other types are named ``"xNN"`` (two
    upper-case hex digits). The SSL TLV is flattened: it yields ``SSL`` (``True`` when its
    sub-TLVs parsed), ``SSL_CLIENT`` and ``SSL_VERIFY`` (integers), and its sub-TLVs
    (``SSL_VERSION``, ``SSL_CN`` ...) as entries of the same dict. Entries can be read as
    attributes (``tlv.AUTHORITY``), which give ``None`` for an absent type. :attr:`tlv_loc` maps
    each name to the offset of its TLV's type byte within the parsed bytes.

    Extend the names by subclassing and overriding :attr:`PP2_TYPENAME`.
    """

    __slots__ = ("tlv_loc",)

    #: The TLV types registered by the specification.
    PP2_TYPENAME: ClassVar[Mapping[int, str]] = MappingProxyType(
        {
            0x01: "ALPN",
            0x02: "AUTHORITY",
            0x03: "CRC32C",
            0x04: "NOOP",
            0x05: "UNIQUE_ID",
            0x20: "SSL",
            0x21: "SSL_VERSION",
            0x22: "SSL_CN",
            0x23: "SSL_CIPHER",
            0x24: "SSL_SIG_ALG",
            0x25: "SSL_KEY_ALG",
            0x30: "NETNS",
        }
    )

    tlv_loc: dict[str, int]

    def __init__(
        self,
        *args: Mapping[str, TLVValue] | Iterable[tuple[str, TLVValue]],
        _tlv_loc: dict[str, int],
        **kwargs: TLVValue,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.tlv_loc = _tlv_loc

    def __getattr__(self, item: str) -> TLVValue | None:
        """Read the TLV named *item*; ``None`` when the header does not carry it."""
        if item.startswith("__") and item.endswith("__"):
            raise AttributeError(item)
        return self.get(item)

    def same_attribs(self, _raises: bool = False, **kwargs: object) -> bool:
        """Whether every keyword names a present TLV with that value.

        With ``_raises=True``, raise ``KeyError("notfound:NAME")`` or
        ``ValueError("mismatch:NAME actual=... expect=...")`` instead of returning ``False``.
        """
        return _same_attribs(self, _raises, **kwargs)

    @classmethod
    def _type_name(cls, typ: int, strict: bool) -> str:
        name = cls.PP2_TYPENAME.get(typ)
        if name is None:
            name = f"x{typ:02X}"
            if strict:
                raise UnknownTypeTLV(name)
        return name

    @classmethod
    def parse(
        cls,
        data: bytes | bytearray | memoryview,
        partial_ok: bool = True,
        strict: bool = False,
    ) -> tuple[dict[str, TLVValue], dict[str, int]]:
        """Decode *data* into ``(values_by_name, offset_by_name)``.

        *partial_ok*: on a malformed TLV keep what was decoded so far instead of raising
        :exc:`MalformedTLV`. A malformed sub-TLV inside the SSL TLV sets ``SSL`` to ``False``;
        decoding then goes on after the SSL TLV, whose own length is intact. *strict*: raise
        :exc:`UnknownTypeTLV` for a type :attr:`PP2_TYPENAME` does not name.
        """
        raw = bytes(data)
        values: dict[str, TLVValue] = {}
        locations: dict[str, int] = {}
        try:
            cls._parse_into(raw, 0, len(raw), values, locations, strict, partial_ok, nested=False)
        except MalformedTLV:
            if not partial_ok:
                raise
        return values, locations

    @classmethod
    def _parse_into(
        cls,
        raw: bytes,
        start: int,
        end: int,
        values: dict[str, TLVValue],
        locations: dict[str, int],
        strict: bool,
        partial_ok: bool,
        *,
        nested: bool,
    ) -> None:
        reached = start
        for typ, value_start, value_end in _iter_tlvs(raw[:end], start):
            name = cls._type_name(typ, strict)
            locations[name] = value_start - _TLV_HEADER_LENGTH
            if typ == _PP2_TYPE_SSL:
                if nested:
                    raise MalformedTLV("SSL TLV nested inside the SSL TLV")
                if value_end - value_start < _SSL_FIXED_LENGTH:
                    raise MalformedTLV("SSL TLV shorter than its fixed part")
                values["SSL_CLIENT"] = raw[value_start]
                values["SSL_VERIFY"] = int.from_bytes(raw[value_start + 1 : value_start + 5], "big")
                try:
                    cls._parse_into(
                        raw,
                        value_start + _SSL_FIXED_LENGTH,
                        value_end,
                        values,
                        locations,
                        strict,
                        partial_ok,
                        nested=True,
                    )
                except MalformedTLV:
                    values["SSL"] = False
                    if not partial_ok:
                        raise
                else:
                    values["SSL"] = True
            else:
                values[name] = raw[value_start:value_end]
            reached = value_end
        if reached != end:
            kind = "sub-TLV" if nested else "TLV"
            raise MalformedTLV(f"{kind} at offset {reached} runs past the end of its data")

    @classmethod
    def from_raw(cls, raw: bytes | bytearray | memoryview, strict: bool = False) -> ProxyTLV | None:
        """Decode *raw* into a :class:`ProxyTLV`; ``None`` when *raw* is empty.

        Raises :exc:`MalformedTLV` when *raw* is not a well-formed sequence of TLVs, and with
        *strict* :exc:`UnknownTypeTLV` for an unregistered type.
        """
        if len(raw) == 0:
            return None
        values, locations = cls.parse(raw, partial_ok=False, strict=strict)
        return cls(values, _tlv_loc=locations)

    @classmethod
    def name_to_num(cls, name: str) -> int | None:
        """The type number of a TLV name (``"AUTHORITY"`` -> 2, ``"xEA"`` -> 0xEA), else None."""
        for num, known in cls.PP2_TYPENAME.items():
            if known == name:
                return num
        match = re.fullmatch(r"x([0-9A-F]{2})", name)
        if match is not None:
            return int(match.group(1), 16)
        return None


# ---------------------------------------------------------------------------------------------
# The parsed header


class _Unset(Enum):
    UNSET = 0


_UNSET: Final = _Unset.UNSET


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyData:
    """A PROXY protocol header, parsed. Truthy only when :attr:`valid`.

    The attribute names are aiosmtpd's. For version 1 ``command`` is ``None``; ``UNKNOWN`` maps to
    ``family=AF.UNSPEC`` and ``protocol=PROTO.UNSPEC`` with the rest of its line in ``rest``.
    For version 2, ``rest`` holds the bytes after the address block (the TLV vectors, decoded on
    demand by :attr:`tlv`), or the whole block after the fixed header when the address family or
    protocol is unspecified.
    """

    #: 1 or 2; ``None`` when the input is not a PROXY header at all.
    version: int | None
    #: Version 2 command; ``None`` for version 1.
    command: V2_CMD | None = None
    family: AF | None = None
    protocol: PROTO | None = None
    #: ``IPv4Address`` / ``IPv6Address``, the raw 108-byte path field for ``AF.UNIX``, or None.
    src_addr: EndpointAddress | None = None
    dst_addr: EndpointAddress | None = None
    src_port: int | None = None
    dst_port: int | None = None
    #: The version 2 bytes after the address block, or the tail of a version 1 ``UNKNOWN`` line.
    rest: bytes = b""
    #: The header exactly as received: consume ``len(whole_raw)`` bytes from the input. For an
    #: invalid header, the bytes examined up to the point of the error.
    whole_raw: bytes = b""
    #: Offset of the first TLV within :attr:`whole_raw`, when TLVs follow a known address block.
    tlv_start: int | None = None
    #: Empty when the header parsed; otherwise what is wrong with it.
    error: str = ""
    _tlv_cache: ProxyTLV | _Unset | None = field(
        default=_UNSET, init=False, repr=False, compare=False
    )

    @property
    def valid(self) -> bool:
        """Whether this is a complete, well-formed header."""
        return not (self.error or self.version is None or self.protocol is None)

    @property
    def tlv(self) -> ProxyTLV | None:
        """The TLV vectors in :attr:`rest`, decoded; ``None`` if there are none or they are
        malformed."""
        cached = self._tlv_cache
        if cached is _UNSET:
            try:
                cached = ProxyTLV.from_raw(self.rest)
            except MalformedTLV:
                cached = None
            object.__setattr__(self, "_tlv_cache", cached)
        return cached

    def with_error(self, error_msg: str, log_prefix: bool = True) -> ProxyData:
        """A copy of this header carrying *error_msg* (and therefore invalid).

        *log_prefix* is accepted for aiosmtpd compatibility; logging belongs to the I/O layer.
        """
        del log_prefix
        return replace(self, error=error_msg)

    def same_attribs(self, _raises: bool = False, **kwargs: object) -> bool:
        """Whether every keyword names an attribute with that value (``valid`` included).

        With ``_raises=True``, raise ``KeyError("notfound:NAME")`` or
        ``ValueError("mismatch:NAME actual=... expect=...")`` instead of returning ``False``.
        """
        return _same_attribs(self, _raises, **kwargs)

    def __bool__(self) -> bool:
        return self.valid


# ---------------------------------------------------------------------------------------------
# The parser

_V1_ADDR_CHARS: Final = re.compile(rb"[0-9a-fA-F.:]+")
_V1_PORT: Final = re.compile(rb"0|[1-9][0-9]{0,4}")


@overload
def parse_proxy_header(
    buf: bytes | bytearray | memoryview,
    *,
    eof: Literal[True],
    max_v2_length: int = ...,
    verify_crc32c: bool = ...,
) -> ProxyData: ...


@overload
def parse_proxy_header(
    buf: bytes | bytearray | memoryview,
    *,
    eof: bool = ...,
    max_v2_length: int = ...,
    verify_crc32c: bool = ...,
) -> ProxyData | None: ...


def parse_proxy_header(
    buf: bytes | bytearray | memoryview,
    *,
    eof: bool = False,
    max_v2_length: int = V2_MAX_HEADER_LENGTH,
    verify_crc32c: bool = True,
) -> ProxyData | None:
    """Parse the PROXY header at the start of *buf*.

    Returns ``None`` while *buf* is a proper prefix of what could still be a valid header (read
    more and call again with the longer buffer), otherwise a :class:`ProxyData` that is either
    valid or falsy with ``.error`` set. ``whole_raw`` is exactly the header's bytes; the bytes
    after it are not part of the result.

    *eof*: no more bytes will come, so an incomplete header is an error rather than ``None``.
    *max_v2_length*: ceiling on a whole version 2 header (at most 16 + 65535).
    *verify_crc32c*: check a version 2 CRC32C TLV when present (error
    ``"PROXYv2 CRC32C mismatch"``).

    Never raises on any input.
    """
    n = len(buf)
    if n == 0:
        if eof:
            return ProxyData(version=None, error="PROXY connection closed before any header")
        return None
    if buf[0] == V1_SIGNATURE[0]:
        return _parse_v1(buf, eof)
    if buf[0] == V2_SIGNATURE[0]:
        return _parse_v2(buf, eof, max_v2_length, verify_crc32c)
    return _unrecognized(buf, 1)


def _unrecognized(buf: bytes | bytearray | memoryview, upto: int) -> ProxyData:
    return ProxyData(
        version=None, whole_raw=bytes(buf[:upto]), error="PROXY unrecognized signature"
    )


def _mismatch(buf: bytes | bytearray | memoryview, expected: bytes) -> int | None:
    """Index of the first byte of *buf* that differs from *expected* (compared up to the shorter
    of the two), or None."""
    for i in range(min(len(buf), len(expected))):
        if buf[i] != expected[i]:
            return i
    return None


def _parse_v1(buf: bytes | bytearray | memoryview, eof: bool) -> ProxyData | None:
    bad = _mismatch(buf, _V1_MIN_SIGNATURE)
    if bad is not None:
        if bad < len(V1_SIGNATURE):
            return _unrecognized(buf, bad + 1)
        return ProxyData(
            version=1, whole_raw=bytes(buf[: bad + 1]), error="PROXYv1 wrong signature"
        )
    head = bytes(buf[:V1_MAX_LENGTH])
    end = head.find(b"\n")
    if end < 0:
        if len(head) >= V1_MAX_LENGTH:
            return ProxyData(version=1, whole_raw=head, error="PROXYv1 header too long")
        if eof:
            if len(head) < len(_V1_MIN_SIGNATURE):
                return _unrecognized(head, len(head))
            return ProxyData(version=1, whole_raw=head, error="PROXYv1 malformed")
        return None
    return _decode_v1_line(head[: end + 1])


def _decode_v1_line(line: bytes) -> ProxyData:
    """Decode one complete version 1 line (signature and space already checked)."""

    def fail(message: str) -> ProxyData:
        return ProxyData(version=1, whole_raw=line, error=message)

    if not line.endswith(b"\r\n"):
        return fail("PROXYv1 malformed")  # a bare LF must not end the line
    body = line[len(_V1_MIN_SIGNATURE) : -2]
    parts = body.split(b" ")  # one space exactly: a double space yields an empty field
    proto = parts[0]
    if proto == b"UNKNOWN":
        # The receiver must ignore whatever follows UNKNOWN on the line.
        return ProxyData(
            version=1,
            family=AF.UNSPEC,
            protocol=PROTO.UNSPEC,
            rest=body[len(b"UNKNOWN") :],
            whole_raw=line,
        )
    if proto == b"TCP4":
        family = AF.INET
    elif proto == b"TCP6":
        family = AF.INET6
    elif proto.endswith((b"4", b"6")):
        return fail("PROXYv1 unrecognized protocol")
    else:
        return fail("PROXYv1 unrecognized family")

    addresses: list[IPAddress] = []
    for raw in parts[1:3]:
        if not _V1_ADDR_CHARS.fullmatch(raw):
            return fail("PROXYv1 address malformed")
        try:
            addresses.append(ip_address(raw.decode("ascii")))
        except ValueError:
            return fail("PROXYv1 address malformed")
    if len(addresses) < 2:
        return fail("PROXYv1 address malformed")
    src_addr, dst_addr = addresses
    want = 4 if family is AF.INET else 6
    if src_addr.version != want or dst_addr.version != want:
        return fail(f"PROXYv1 address not IPv{want}")

    ports: list[int] = []
    for raw in parts[3:5]:
        if not _V1_PORT.fullmatch(raw):
            return fail("PROXYv1 port malformed")
        ports.append(int(raw))
    if len(ports) < 2:
        return fail("PROXYv1 port malformed")
    src_port, dst_port = ports
    if src_port > 0xFFFF:
        return fail("PROXYv1 src port out of bounds")
    if dst_port > 0xFFFF:
        return fail("PROXYv1 dst port out of bounds")
    if len(parts) > 5:
        return fail("PROXYv1 unrecognized extraneous data")
    return ProxyData(
        version=1,
        family=family,
        protocol=PROTO.STREAM,
        src_addr=src_addr,
        dst_addr=dst_addr,
        src_port=src_port,
        dst_port=dst_port,
        whole_raw=line,
    )


def _parse_v2(
    buf: bytes | bytearray | memoryview, eof: bool, max_length: int, verify_crc: bool
) -> ProxyData | None:
    n = len(buf)
    bad = _mismatch(buf, V2_SIGNATURE)
    if bad is not None:
        if bad < _V2_DETECT_LENGTH:
            return _unrecognized(buf, bad + 1)
        return ProxyData(
            version=2, whole_raw=bytes(buf[: bad + 1]), error="PROXYv2 wrong signature"
        )

    def fail(
        upto: int,
        message: str,
        command: V2_CMD | None = None,
        family: AF | None = None,
        protocol: PROTO | None = None,
    ) -> ProxyData:
        return ProxyData(
            version=2,
            command=command,
            family=family,
            protocol=protocol,
            whole_raw=bytes(buf[:upto]),
            error=message,
        )

    sig_len = len(V2_SIGNATURE)
    if n > sig_len:
        ver_cmd = buf[sig_len]
        if ver_cmd >> 4 != _V2_VERSION:
            return fail(sig_len + 1, "PROXYv2 illegal version")
        if ver_cmd & 0x0F not in V2_VALID_CMDS:
            return fail(sig_len + 1, "PROXYv2 unsupported command")
    if n > sig_len + 1:
        command = V2_CMD(buf[sig_len] & 0x0F)
        fam_proto = buf[sig_len + 1]
        if fam_proto >> 4 not in V2_VALID_FAMS:
            return fail(sig_len + 2, "PROXYv2 unsupported family", command=command)
        if fam_proto & 0x0F not in V2_VALID_PROS:
            return fail(
                sig_len + 2,
                "PROXYv2 unsupported protocol",
                command=command,
                family=AF(fam_proto >> 4),
            )
    if n < V2_HEADER_LENGTH:
        if eof:
            if n < _V2_DETECT_LENGTH:
                return _unrecognized(buf, n)
            return ProxyData(version=2, whole_raw=bytes(buf), error="PROXYv2 truncated header")
        return None

    command = V2_CMD(buf[sig_len] & 0x0F)
    fam_proto = buf[sig_len + 1]
    family = AF(fam_proto >> 4)
    protocol = PROTO(fam_proto & 0x0F)
    (length,) = struct.unpack_from("!H", buf, sig_len + 2)
    total = V2_HEADER_LENGTH + length
    if total > max_length:
        return fail(V2_HEADER_LENGTH, "PROXYv2 header too long", command, family, protocol)
    if n < total:
        if eof:
            return fail(n, "PROXYv2 truncated header", command, family, protocol)
        return None

    whole_raw = bytes(buf[:total])
    if fam_proto in V2_PARSE_ADDR_FAMPRO:
        addr_len = _ADDR_LENGTH[family]
        if length < addr_len:
            return fail(total, "PROXYv2 truncated address", command, family, protocol)
        block = whole_raw[V2_HEADER_LENGTH : V2_HEADER_LENGTH + addr_len]
        src_addr: EndpointAddress
        dst_addr: EndpointAddress
        src_port: int | None
        dst_port: int | None
        if family is AF.INET:
            src_addr, dst_addr = IPv4Address(block[0:4]), IPv4Address(block[4:8])
            src_port, dst_port = struct.unpack_from("!HH", block, 8)
        elif family is AF.INET6:
            src_addr, dst_addr = IPv6Address(block[0:16]), IPv6Address(block[16:32])
            src_port, dst_port = struct.unpack_from("!HH", block, 32)
        else:
            src_addr, dst_addr = block[:_UNIX_PATH_LENGTH], block[_UNIX_PATH_LENGTH:]
            src_port = dst_port = None
        tlv_offset = V2_HEADER_LENGTH + addr_len
        # LOCAL (a health check of the proxy itself) carries no addresses: the receiver must
        # discard its address block and use the connection's own endpoints (PROXY protocol 2.2).
        local = command is V2_CMD.LOCAL
        result = ProxyData(
            version=2,
            command=command,
            family=family,
            protocol=protocol,
            src_addr=None if local else src_addr,
            dst_addr=None if local else dst_addr,
            src_port=None if local else src_port,
            dst_port=None if local else dst_port,
            rest=whole_raw[tlv_offset:],
            whole_raw=whole_raw,
            tlv_start=tlv_offset if total > tlv_offset else None,
        )
    else:
        # UNSPEC family or protocol: the address block (if any) has no known layout, so the
        # whole block is kept. With both unspecified there is no address, and what follows the
        # fixed header can only be TLVs.
        has_tlvs = fam_proto == 0 and length > 0
        result = ProxyData(
            version=2,
            command=command,
            family=family,
            protocol=protocol,
            rest=whole_raw[V2_HEADER_LENGTH:],
            whole_raw=whole_raw,
            tlv_start=V2_HEADER_LENGTH if has_tlvs else None,
        )
    if verify_crc and result.tlv_start is not None:
        problem = _check_crc32c(whole_raw, result.tlv_start)
        if problem:
            return result.with_error(problem)
    return result


def _check_crc32c(whole_raw: bytes, tlv_start: int) -> str:
    """Verify the CRC32C TLV if the header has one; return an error message or ``""``.

    The TLVs are scanned leniently (up to the first malformed one), as the TLV area itself is
    not required to be well-formed.
    """
    found = [
        (value_start, value_end)
        for typ, value_start, value_end in _iter_tlvs(whole_raw, tlv_start)
        if typ == _PP2_TYPE_CRC32C
    ]
    if not found:
        return ""
    if len(found) > 1:
        return "PROXYv2 CRC32C TLV repeated"
    value_start, value_end = found[0]
    if value_end - value_start != 4:
        return "PROXYv2 CRC32C TLV malformed"
    received = int.from_bytes(whole_raw[value_start:value_end], "big")
    zeroed = whole_raw[:value_start] + b"\x00\x00\x00\x00" + whole_raw[value_end:]
    if crc32c(zeroed) != received:
        return "PROXYv2 CRC32C mismatch"
    return ""


# ---------------------------------------------------------------------------------------------
# Trusted upstream proxies


def parse_trusted_networks(specs: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    """Turn ``"10.0.0.0/8"``, ``"2001:db8::1"`` ... into networks for :func:`is_trusted_peer`.

    Host bits are allowed (``"10.1.2.3/8"`` means ``10.0.0.0/8``); a bare address is a one-host
    network. Raises ``ValueError`` for something that is not an address or network.
    """
    return tuple(
        spec if isinstance(spec, (IPv4Network, IPv6Network)) else ip_network(spec, strict=False)
        for spec in specs
    )


def is_trusted_peer(peer_ip: str | IPAddress, trusted: Iterable[IPNetwork]) -> bool:
    """Whether the connection's real peer address lies inside one of the *trusted* networks.

    Only those upstream proxies may send a PROXY header; from anyone else a header is a spoofing
    attempt. An IPv4-mapped IPv6 peer (``::ffff:192.0.2.1``, as a dual-stack socket reports IPv4
    clients) also matches the IPv4 networks. A *peer_ip* that is not an IP address (a Unix socket
    path, an empty string) is never trusted by this function.
    """
    if isinstance(peer_ip, str):
        try:
            address: IPAddress = ip_address(peer_ip)
        except ValueError:
            return False
    else:
        address = peer_ip
    candidates: list[IPAddress] = [address]
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    for network in trusted:
        for candidate in candidates:
            if candidate.version == network.version and candidate in network:
                return True
    return False


# ---------------------------------------------------------------------------------------------
# Builders


def _as_ip(value: IPAddress | str) -> IPAddress:
    return value if isinstance(value, (IPv4Address, IPv6Address)) else ip_address(value)


def _check_port(port: int) -> int:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {port}")
    return port


def build_v1(
    src_addr: IPAddress | str | None = None,
    dst_addr: IPAddress | str | None = None,
    src_port: int = 0,
    dst_port: int = 0,
    *,
    unknown_tail: bytes = b"",
) -> bytes:
    """Build a version 1 header line, CRLF included.

    With addresses, the family (``TCP4``/``TCP6``) follows their IP version; both must agree.
    Without addresses the line is ``PROXY UNKNOWN`` followed by *unknown_tail* (which, when not
    empty, should start with a space). Raises ``ValueError`` for an unencodable header.
    """
    if src_addr is None or dst_addr is None:
        if src_addr is not None or dst_addr is not None:
            raise ValueError("give both addresses, or neither for UNKNOWN")
        if b"\r" in unknown_tail or b"\n" in unknown_tail:
            raise ValueError("the UNKNOWN tail must not contain CR or LF")
        line = b"PROXY UNKNOWN" + unknown_tail + b"\r\n"
    else:
        if unknown_tail:
            raise ValueError("unknown_tail is only for UNKNOWN lines")
        src, dst = _as_ip(src_addr), _as_ip(dst_addr)
        if src.version != dst.version:
            raise ValueError("source and destination addresses differ in IP version")
        family = b"TCP4" if src.version == 4 else b"TCP6"
        line = b"PROXY %s %s %s %d %d\r\n" % (
            family,
            str(src).encode("ascii"),
            str(dst).encode("ascii"),
            _check_port(src_port),
            _check_port(dst_port),
        )
    if len(line) > V1_MAX_LENGTH:
        raise ValueError(f"PROXY v1 line longer than {V1_MAX_LENGTH} bytes")
    return line


def _tlv_type(key: TLVKey) -> int:
    if isinstance(key, int):
        typ = key
    else:
        found = ProxyTLV.name_to_num(key)
        if found is None:
            raise ValueError(f"unknown TLV name: {key!r}")
        typ = found
    if not 0 <= typ <= 0xFF:
        raise ValueError(f"TLV type out of range: {typ}")
    return typ


def _tlv_items(
    tlvs: TLVItems,
) -> list[tuple[int, bytes]]:
    items = tlvs.items() if isinstance(tlvs, Mapping) else tlvs
    return [(_tlv_type(key), bytes(value)) for key, value in items]


def encode_tlvs(tlvs: TLVItems) -> bytes:
    """Encode TLV vectors, in order. Keys are type numbers or names (``"AUTHORITY"``, ``"xEA"``)."""
    out = bytearray()
    for typ, value in _tlv_items(tlvs):
        if len(value) > 0xFFFF:
            raise ValueError(f"TLV 0x{typ:02X} value longer than 65535 bytes")
        out += struct.pack("!BH", typ, len(value)) + value
    return bytes(out)


def build_ssl_tlv(
    *,
    client: int = 0x01,
    verify: int = 0,
    sub_tlvs: TLVItems = (),
) -> bytes:
    """Build the value of an SSL TLV (type 0x20): client bits, verify result, sub-TLVs.

    ``client`` bits: 0x01 connected over TLS, 0x02 certificate on this connection, 0x04
    certificate in the session. ``verify`` is 0 when a client certificate was verified.
    """
    if not 0 <= client <= 0xFF or not 0 <= verify <= 0xFFFFFFFF:
        raise ValueError("client must fit in 8 bits and verify in 32 bits")
    return struct.pack("!BI", client, verify) + encode_tlvs(sub_tlvs)


def _v2_family(addr: IPAddress | str | bytes | None) -> AF:
    if addr is None:
        return AF.UNSPEC
    if isinstance(addr, bytes):
        return AF.UNIX
    return AF.INET if _as_ip(addr).version == 4 else AF.INET6


def _unix_field(addr: IPAddress | str | bytes | None) -> bytes:
    if not isinstance(addr, bytes) or len(addr) > _UNIX_PATH_LENGTH:
        raise ValueError(f"a Unix address is a bytes path of at most {_UNIX_PATH_LENGTH} bytes")
    return addr.ljust(_UNIX_PATH_LENGTH, b"\x00")


def _ip_field(addr: IPAddress | str | bytes | None, family: AF) -> bytes:
    if addr is None or isinstance(addr, bytes):
        raise ValueError(f"family {family.name} needs IP addresses")
    ip = _as_ip(addr)
    if ip.version != (4 if family is AF.INET else 6):
        raise ValueError(f"address {ip} does not belong to family {family.name}")
    return ip.packed


def build_v2(
    src_addr: IPAddress | str | bytes | None = None,
    dst_addr: IPAddress | str | bytes | None = None,
    src_port: int = 0,
    dst_port: int = 0,
    *,
    command: V2_CMD = V2_CMD.PROXY,
    family: AF | None = None,
    protocol: PROTO | None = None,
    tlvs: TLVItems = (),
    with_crc: bool = True,
) -> bytes:
    """Build a version 2 header.

    Addresses are IP addresses (``str`` or ``ipaddress`` objects) or, for ``AF.UNIX``, ``bytes``
    paths of at most 108 bytes (NUL-padded). *family* defaults from the addresses (``UNSPEC``
    without addresses) and *protocol* to ``STREAM`` (``UNSPEC`` without addresses). With an
    unspecified family or protocol no address block is written. *tlvs* follow the address block
    in order; *with_crc* puts a CRC32C TLV first and fills it in. Raises ``ValueError`` for an
    unencodable header.
    """
    fam = _v2_family(src_addr) if family is None else AF(family)
    proto = (PROTO.UNSPEC if fam is AF.UNSPEC else PROTO.STREAM) if protocol is None else protocol
    proto = PROTO(proto)
    fam_proto = (fam << 4) | proto
    if fam_proto in V2_PARSE_ADDR_FAMPRO:
        if fam is AF.UNIX:
            block = _unix_field(src_addr) + _unix_field(dst_addr)
        else:
            block = (
                _ip_field(src_addr, fam)
                + _ip_field(dst_addr, fam)
                + struct.pack("!HH", _check_port(src_port), _check_port(dst_port))
            )
    else:
        if src_addr is not None or dst_addr is not None:
            raise ValueError("addresses need a specified family and protocol")
        block = b""
    items = _tlv_items(tlvs)
    if with_crc:
        if any(typ == _PP2_TYPE_CRC32C for typ, _ in items):
            raise ValueError("with_crc=True adds the CRC32C TLV itself")
        items.insert(0, (_PP2_TYPE_CRC32C, b"\x00\x00\x00\x00"))
    tail = block + encode_tlvs(items)
    if len(tail) > 0xFFFF:
        raise ValueError("PROXY v2 header longer than 16 + 65535 bytes")
    header = bytearray(
        V2_SIGNATURE + struct.pack("!BBH", (_V2_VERSION << 4) | command, fam_proto, len(tail))
    )
    header += tail
    if with_crc:
        crc_at = V2_HEADER_LENGTH + len(block) + _TLV_HEADER_LENGTH
        header[crc_at : crc_at + 4] = crc32c(header).to_bytes(4, "big")
    return bytes(header)
