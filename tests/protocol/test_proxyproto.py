"""The PROXY protocol header, v1 and v2: good headers, every malformation, every
truncation (R130)."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from tunnel.protocol.proxyproto import V2_SIGNATURE, ProxyHeaderError, needed, parse


def v2(command: int = 1, family: int = 0x11, body: bytes = b"", *, version: int = 2, length: int | None = None) -> bytes:
    return V2_SIGNATURE + bytes([version << 4 | command, family]) + struct.pack("!H", len(body) if length is None else length) + body


def v2_inet4(src="203.0.113.7", dst="192.0.2.1", sport=51000, dport=443, tlvs=b"") -> bytes:
    body = ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed + struct.pack("!HH", sport, dport)
    return v2(1, 0x11, body + tlvs)


def v2_inet6(src="2001:db8::7", dst="2001:db8::1", sport=51000, dport=443, tlvs=b"") -> bytes:
    body = ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + struct.pack("!HH", sport, dport)
    return v2(1, 0x21, body + tlvs)


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


GOOD = {
    "v1-tcp4": (b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n", ("203.0.113.7", 51000)),
    "v1-tcp6": (b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n", ("2001:db8::7", 51000)),
    "v1-unknown": (b"PROXY UNKNOWN\r\n", None),
    "v1-unknown-with-addresses": (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None),
    "v1-longest": (b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n", ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)),
    "v2-inet4": (v2_inet4(), ("203.0.113.7", 51000)),
    "v2-inet6": (v2_inet6(), ("2001:db8::7", 51000)),
    "v2-tlvs": (v2_inet4(tlvs=tlv(0x01, b"h2") + tlv(0x02, b"app.example") + tlv(0x20, b"\x01" + b"\0" * 4) + tlv(0x04, b"\0" * 7)), ("203.0.113.7", 51000)),
    "v2-local": (v2(0, 0x00), None),
    "v2-local-with-addresses": (v2(0, 0x11, v2_inet4()[16:]), None),
    "v2-unspec": (v2(1, 0x00), None),
    "v2-unix": (v2(1, 0x31, b"/tmp/a".ljust(108, b"\0") + b"/tmp/b".ljust(108, b"\0")), None),
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_headers(name):
    raw, source = GOOD[name]
    assert needed(raw) == len(raw)
    header = parse(raw)
    assert header.source == source and header.size == len(raw)
    assert header.version == (1 if raw.startswith(b"PROXY") else 2)


@pytest.mark.parametrize("name", sorted(GOOD))
def test_every_truncation_asks_for_more_and_never_misreads_the_length(name):
    raw, _ = GOOD[name]
    for n in range(1, len(raw)):
        got = needed(raw[:n])
        assert got is None or got == len(raw), (n, got)
        if got is not None:
            with pytest.raises(ProxyHeaderError):
                parse(raw[:n])  # a header cut short is never taken as whole


def test_what_follows_the_header_is_not_part_of_it():
    raw = v2_inet4() + b"\x16\x03\x01 ClientHello"
    assert needed(raw) == 28
    line = b"PROXY TCP4 203.0.113.7 192.0.2.1 1 2\r\nGET / HTTP/1.1\r\n\r\n"
    assert needed(line) == line.index(b"\r\n") + 2


BAD = {
    "http": b"GET / HTTP/1.1\r\n\r\n",
    "tls-hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    "lower-case": b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "v1-bad-family": b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "v1-missing-field": b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
    "v1-extra-field": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
    "v1-double-space": b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
    "v1-v6-in-tcp4": b"PROXY TCP4 ::1 ::1 1 2\r\n",
    "v1-v4-in-tcp6": b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
    "v1-bad-address": b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
    "v1-port-too-big": b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
    "v1-port-leading-zero": b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
    "v1-port-sign": b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
    "v1-non-ascii": "PROXY TCP4 1.2.3.4 5.6.7.8 1 ²\r\n".encode(),
    "v1-lf-only": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n" + b"x" * 120,
    "v1-too-long": b"PROXY " + b"A" * 110,
    "v2-bad-signature": b"\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x0c" + b"\0" * 12,
    "v2-version-1": v2(1, 0x11, b"\0" * 12, version=1),
    "v2-version-3": v2(1, 0x11, b"\0" * 12, version=3),
    "v2-command-2": v2(2, 0x11, b"\0" * 12),
    "v2-family-0x41": v2(1, 0x41, b"\0" * 12),
    "v2-family-0x13": v2(1, 0x13, b"\0" * 12),
    "v2-short-inet4": v2(1, 0x11, b"\0" * 11),
    "v2-short-inet6": v2(1, 0x21, b"\0" * 35),
    "v2-short-unix": v2(1, 0x31, b"\0" * 100),
    "v2-tlv-overrun": v2_inet4(tlvs=b"\x01\x00\x09abc"),
    "v2-tlv-truncated": v2_inet4(tlvs=b"\x01\x00"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_malformed_headers_are_refused_with_a_reason(name):
    raw = BAD[name]
    with pytest.raises(ProxyHeaderError) as info:
        total = needed(raw)
        assert total is not None, "a malformed header must not ask for ever more bytes"
        parse(raw[:total])
    assert str(info.value)


def test_a_length_that_disagrees_with_the_bytes_is_refused():
    raw = v2_inet4()
    with pytest.raises(ProxyHeaderError, match="length"):
        parse(raw + b"x")
    with pytest.raises(ProxyHeaderError, match="length"):
        parse(raw[:-1])
