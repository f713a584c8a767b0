"""mod_remoteip's walk over RemoteIPHeader (R131)."""

from __future__ import annotations

import ipaddress

from tunnel.protocol.remoteip import client_from_header


def nets(*specs: tuple[str, bool]):
    return tuple((ipaddress.ip_network(n), internal) for n, internal in specs)


def test_without_proxy_lists_every_sender_is_a_trusted_external_proxy():
    found = client_from_header("198.51.100.9, 203.0.113.7", "192.0.2.1", ())
    assert found is not None
    assert (found.ip, found.remaining, found.proxies) == ("198.51.100.9", None, "192.0.2.1, 203.0.113.7")


def test_an_external_proxy_may_not_present_a_private_address():
    found = client_from_header("10.1.1.1, 203.0.113.7", "192.0.2.1", ())
    assert found is not None and found.ip == "203.0.113.7" and found.remaining == "10.1.1.1"
    assert client_from_header("192.168.1.5", "192.0.2.1", ()) is None
    assert client_from_header("fd00::1", "192.0.2.1", ()) is None  # outside 2000::/3


def test_internal_proxies_may_present_private_addresses_and_are_not_recorded():
    proxies = nets(("127.0.0.0/8", True), ("10.0.0.0/8", True))
    found = client_from_header("192.168.7.7, 10.0.0.5", "127.0.0.1", proxies)
    assert found is not None and (found.ip, found.remaining, found.proxies) == ("192.168.7.7", None, "")


def test_a_sender_outside_the_lists_stops_the_walk():
    proxies = nets(("127.0.0.1/32", True))
    found = client_from_header("198.51.100.9, 203.0.113.7", "127.0.0.1", proxies)
    # 127.0.0.1 presents 203.0.113.7, which is no proxy of ours: it is the client.
    assert found is not None and found.ip == "203.0.113.7" and found.remaining == "198.51.100.9"
    assert client_from_header("203.0.113.7", "192.0.2.50", proxies) is None  # not from a proxy at all


def test_an_internal_proxy_may_present_an_external_one_but_not_the_reverse():
    proxies = nets(("127.0.0.1/32", True), ("203.0.113.0/24", False))
    found = client_from_header("10.9.9.9, 198.51.100.9, 203.0.113.7", "127.0.0.1", proxies)
    # 127.0.0.1 (internal) -> 203.0.113.7 (trusted, external) -> 198.51.100.9; the
    # private 10.9.9.9 behind an external proxy is refused.
    assert found is not None and found.ip == "198.51.100.9" and found.remaining == "10.9.9.9"
    assert found.proxies == "203.0.113.7"


def test_junk_stops_the_walk_and_stays_in_the_header():
    found = client_from_header("not-an-ip, 203.0.113.7", "192.0.2.1", ())
    assert found is not None and found.ip == "203.0.113.7" and found.remaining == "not-an-ip"
    assert client_from_header("", "192.0.2.1", ()) is None
    assert client_from_header(" , ", "192.0.2.1", ()) is None


def test_ipv4_mapped_addresses_are_taken_as_ipv4():
    found = client_from_header("::ffff:203.0.113.7", "192.0.2.1", ())
    assert found is not None and found.ip == "203.0.113.7"
