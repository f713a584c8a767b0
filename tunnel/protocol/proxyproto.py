"""The PROXY protocol header (HAProxy's spec, versions 1 and 2), sans-IO (R130).

An L4 balancer in front writes one header at the start of each connection saying who
the client is. ``needed(data)`` says how many bytes the header takes once enough of it
is known (so a reader takes exactly the header and not a byte of what follows: the TLS
ClientHello or the request head); ``parse(header)`` reads it.

* v1: ``PROXY TCP4|TCP6 src dst sport dport\\r\\n`` or ``PROXY UNKNOWN ...\\r\\n``, at
  most 107 bytes.
* v2: a 12-byte signature, version/command, family/transport, a 2-byte length, the
  addresses, then TLVs (type, 2-byte length, value), which are checked for structure
  and skipped.

A LOCAL command (v2) or UNKNOWN (v1), and v2's unspecified or unix families, carry no
client address: the connection's own peer stands. Anything else malformed raises
`ProxyHeaderError`.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Optional

__all__ = ["ProxyHeader", "ProxyHeaderError", "V1_MAX", "V2_SIGNATURE", "needed", "parse"]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included
_V2_FIXED = 16  # signature, ver/cmd, fam, length
#: v2 address block sizes by family/transport byte: TCP and UDP over IPv4, IPv6.
_V2_ADDRESS_SIZES = {0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36}
_V2_UNIX = (0x31, 0x32)


class ProxyHeaderError(ValueError):
    """Not a PROXY header, or a malformed one (the text says what is wrong)."""


@dataclass(frozen=True)
class ProxyHeader:
    """What a PROXY header says.

    Attributes:
        version: 1 or 2.
        source: the client's (address, port), or None when the header carries no
            address (LOCAL, UNKNOWN, unspecified or unix family).
        destination: the address the client connected to, likewise.
        size: the header's length in bytes.
    """

    version: int
    source: Optional[tuple[str, int]]
    destination: Optional[tuple[str, int]]
    size: int


def needed(data: bytes) -> Optional[int]:
    """The header's total length once ``data`` (the connection's first bytes) shows it,
    None while more bytes are needed to tell.

    Raises:
        ProxyHeaderError: the bytes cannot start a PROXY header, or a v1 line runs past
            107 bytes without its CRLF.
    """
    if data[:1] == b"\r":
        if not V2_SIGNATURE.startswith(data[:12]):
            raise ProxyHeaderError("not a PROXY protocol header")
        if len(data) < _V2_FIXED:
            return None
        length: int = struct.unpack_from("!H", data, 14)[0]
        return _V2_FIXED + length
    if not V1_PREFIX.startswith(data[:6]):
        raise ProxyHeaderError("not a PROXY protocol header")
    end = data.find(b"\r\n", 0, V1_MAX)
    if end >= 0:
        return end + 2
    if len(data) >= V1_MAX:
        raise ProxyHeaderError(f"PROXY v1 line longer than {V1_MAX} bytes")
    return None


def parse(header: bytes) -> ProxyHeader:
    """Read one whole header (exactly ``needed`` bytes).

    Raises:
        ProxyHeaderError: what is wrong with it.
    """
    if header.startswith(V2_SIGNATURE):
        return _parse_v2(header)
    if header.startswith(V1_PREFIX):
        return _parse_v1(header)
    raise ProxyHeaderError("not a PROXY protocol header")


def _address(text: str, version: int) -> str:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError(f"bad IPv{version} address {text!r}") from None
    if ip.version != version:
        raise ProxyHeaderError(f"bad IPv{version} address {text!r}")
    return str(ip)


def _port(text: str) -> int:
    # Decimal without sign or leading zeros, 0-65535 (the spec's form).
    if not text.isdigit() or not text.isascii() or len(text) > 5 or (len(text) > 1 and text[0] == "0"):
        raise ProxyHeaderError(f"bad port {text!r}")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError(f"bad port {text!r}")
    return port


def _parse_v1(header: bytes) -> ProxyHeader:
    if not header.endswith(b"\r\n") or len(header) > V1_MAX:
        raise ProxyHeaderError("PROXY v1 line does not end with CRLF within 107 bytes")
    try:
        line = header[:-2].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 line is not ASCII") from None
    words = line.split(" ")
    if len(words) >= 2 and words[1] == "UNKNOWN":
        return ProxyHeader(1, None, None, len(header))  # the rest of the line is ignored (spec)
    if len(words) != 6 or words[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"bad PROXY v1 line {line[:60]!r}: expected PROXY TCP4|TCP6 src dst sport dport")
    version = 4 if words[1] == "TCP4" else 6
    source = (_address(words[2], version), _port(words[4]))
    destination = (_address(words[3], version), _port(words[5]))
    return ProxyHeader(1, source, destination, len(header))


def _parse_v2(header: bytes) -> ProxyHeader:
    if len(header) < _V2_FIXED:
        raise ProxyHeaderError("truncated PROXY v2 header")
    ver_cmd, family = header[12], header[13]
    length = struct.unpack_from("!H", header, 14)[0]
    if len(header) != _V2_FIXED + length:
        raise ProxyHeaderError("PROXY v2 length does not match the header")
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError(f"unsupported PROXY v2 version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command not in (0, 1):
        raise ProxyHeaderError(f"unsupported PROXY v2 command {command}")
    body = header[_V2_FIXED:]
    size = _V2_ADDRESS_SIZES.get(family, 216 if family in _V2_UNIX else 0)
    if family not in _V2_ADDRESS_SIZES and family not in _V2_UNIX and family != 0x00:
        raise ProxyHeaderError(f"unsupported PROXY v2 family/transport 0x{family:02x}")
    if len(body) < size:
        raise ProxyHeaderError("PROXY v2 address block shorter than its family needs")
    _check_tlvs(body[size:])
    if command == 0 or family not in _V2_ADDRESS_SIZES:
        return ProxyHeader(2, None, None, len(header))  # LOCAL, unspecified or unix: no address
    if size == 12:
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", body)
    else:
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", body)
    source = (str(ipaddress.ip_address(src)), sport)
    destination = (str(ipaddress.ip_address(dst)), dport)
    return ProxyHeader(2, source, destination, len(header))


def _check_tlvs(data: bytes) -> None:
    """TLVs are skipped, but each must fit: a length running past the header is refused."""
    i = 0
    while i < len(data):
        if len(data) - i < 3:
            raise ProxyHeaderError("truncated PROXY v2 TLV")
        (length,) = struct.unpack_from("!H", data, i + 1)
        i += 3 + length
        if i > len(data):
            raise ProxyHeaderError("PROXY v2 TLV runs past the header")
