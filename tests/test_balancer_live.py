"""balancer:// end to end: real members (echo backends on loopback), real clients.

Each member is an `EchoServer` of its own, told apart by its ``accepted`` counter (an
upgrade's 101 is sent by a thread started after the count, so the count is up to date
when the client reads the 101) and, for plain GETs, by its page (``member-N``).
Configurations are written as an httpd user would: ``<Proxy balancer://c>`` with
``BalancerMember`` lines and ``ProxySet``, then ``ProxyPass /ws/ balancer://c/``.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections import Counter
from collections.abc import Iterator

import pytest
import trustme
from websockets.sync.client import connect as ws_connect

from tunnel.echo import EchoServer
from tunnel.protocol.balancer import Balancers

from .conftest import STRATEGY_CONFIGS
from .helpers import free_port_refused, http_get, raw_upgrade, recv_exactly, recv_until_eof, status_of, wait_for

pytestmark = pytest.mark.timeout(60)

STRATEGIES = ["sync", "async"]


@pytest.fixture
def members() -> Iterator[list[EchoServer]]:
    """Three echo backends, each with its own page (``member-0`` ...)."""
    servers = [EchoServer("127.0.0.1", 0, page=f"member-{i}".encode()).start() for i in range(3)]
    try:
        yield servers
    finally:
        for s in servers:
            s.stop()


def balancer(strategy: str, member_lines: list[str], proxyset: str = "", extra: str = "", passkeys: str = "") -> str:
    """A configuration with one ``balancer://c`` on ``/ws/`` (balancer keys in ProxySet,
    or on the ProxyPass line with ``passkeys``)."""
    lines = [STRATEGY_CONFIGS[strategy].strip(), "<Proxy balancer://c>"]
    lines += [f"    BalancerMember {m}" for m in member_lines]
    if proxyset:
        lines.append(f"    ProxySet {proxyset}")
    lines += ["</Proxy>", f"ProxyPass /ws/ balancer://c/ {passkeys}".rstrip()]
    return extra + "\n".join(lines) + "\n"


def counts(servers: list[EchoServer]) -> list[int]:
    return [s.accepted for s in servers]


def upgrade(engine, path: str = "/ws/", extra: str = "") -> tuple[int, socket.socket, bytes]:
    """One upgrade; returns (status, socket, response body or b"" after a 101)."""
    sock, head, rest = raw_upgrade(engine.addresses[0], path, extra=extra)
    status = status_of(head)
    if status != 101:  # an error answer: its body (the connection may stay open)
        length = [int(v) for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:]) if k.strip().lower() == b"content-length"]
        rest = recv_exactly(sock, length[0], initial=rest) if length else recv_until_eof(sock, initial=rest)
    return status, sock, rest


def upgrade_to(engine, servers: list[EchoServer], path: str = "/ws/", extra: str = "", *, keep: list | None = None) -> int:
    """Upgrade once and return the index of the member that got the connection."""
    before = counts(servers)
    status, sock, body = upgrade(engine, path, extra)
    assert status == 101, body
    after = counts(servers)
    grew = [i for i, (a, b) in enumerate(zip(before, after)) if b != a]
    assert len(grew) == 1, (before, after)
    if keep is not None:
        keep.append(sock)
    else:
        sock.close()
    return grew[0]


def member_state(engine, index: int) -> dict:
    return engine.balancers["c"].snapshot()[index]


# -- lbmethods ----------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_byrequests_distribution_follows_loadfactors_exactly(make_proxy, members, strategy):
    ports = [s.address[1] for s in members]
    engine = make_proxy(
        balancer(
            strategy,
            [f"ws://127.0.0.1:{p} loadfactor={lf}" for p, lf in zip(ports, (1, 2, 3))],
            "lbmethod=byrequests",
        )
    )
    # httpd's weighted counting: loadfactors 1:2:3 give C B A C B C, then repeat.
    first = [upgrade_to(engine, members) for _ in range(6)]
    assert first == [2, 1, 0, 2, 1, 2]
    for _ in range(294):
        upgrade_to(engine, members)
    assert counts(members) == [50, 100, 150]
    assert [m["elected"] for m in engine.balancers["c"].snapshot()] == [50, 100, 150]
    wait_for(lambda: engine.stats["tunnels.closed"] == 300, timeout=20, what="every tunnel closed")
    assert [m["busy"] for m in engine.balancers["c"].snapshot()] == [0, 0, 0]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_bybusyness_sends_new_tunnels_away_from_a_member_holding_open_ones(make_proxy, members, strategy):
    ports = [s.address[1] for s in members]
    engine = make_proxy(
        balancer(
            strategy,
            [f"ws://127.0.0.1:{p} route={r}" for p, r in zip(ports, "abc")],
            "lbmethod=bybusyness stickysession=ROUTEID",
        )
    )
    held: list[socket.socket] = []
    try:
        # Ten long-lived tunnels pinned on member a by their sticky cookie.
        for _ in range(10):
            assert upgrade_to(engine, members, extra="Cookie: ROUTEID=s.a", keep=held) == 0
        assert member_state(engine, 0)["busy"] == 10
        # The next ten (also held open) go to b and c only: each stays below a's ten.
        got = Counter(upgrade_to(engine, members, keep=held) for _ in range(10))
        assert got == Counter({1: 5, 2: 5})
        # Tunnels closed on a free it up: it is the least busy again.
        for sock in held[:10]:
            sock.close()
        wait_for(lambda: member_state(engine, 0)["busy"] == 0, what="member a idle")
        assert upgrade_to(engine, members) == 0
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: [m["busy"] for m in engine.balancers["c"].snapshot()] == [0, 0, 0], what="all idle")


# -- failures -----------------------------------------------------------------------------


class FakeClock:
    """The balancers' clock, moved only by the test: error states end when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def with_fake_clock(engine) -> FakeClock:
    """Give the engine's balancers a fake clock (before any request reaches them)."""
    clock = FakeClock()
    engine.balancers = Balancers(engine.config.balancers, clock=clock, lock=threading.Lock)
    return clock


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_dead_member_is_skipped_silently_and_retried_after_retry(make_proxy, members, strategy, caplog):
    live = [members[0], members[2]]
    dead_port = free_port_refused()
    engine = make_proxy(
        balancer(
            strategy,
            [
                f"ws://127.0.0.1:{members[0].address[1]}",
                f"ws://127.0.0.1:{dead_port} retry=5",
                f"ws://127.0.0.1:{members[2].address[1]}",
            ],
            "lbmethod=byrequests",
        )
    )
    clock = with_fake_clock(engine)
    url = f"ws://127.0.0.1:{engine.addresses[0][1]}/ws/x"
    for i in range(6):  # every client is served, by a live member, with a working echo
        with ws_connect(url, open_timeout=5) as ws:
            ws.send(f"m{i}")
            assert ws.recv(timeout=5) == f"m{i}"
    assert counts(live) == [3, 3]
    state = member_state(engine, 1)
    assert "E" in state["status"] and not state["usable"] and state["error_for"] == 5
    assert caplog.text.count(f"member ws://127.0.0.1:{dead_port}/ failed") == 1  # tried once, then skipped
    # The member comes back on its port; while its error state lasts it gets nothing...
    with EchoServer("127.0.0.1", dead_port) as revived:
        clock.now += 4.9
        for _ in range(4):
            upgrade_to(engine, live)
        assert revived.accepted == 0
        # ... and once retry= has passed it is tried again and takes its share.
        clock.now += 0.1
        assert member_state(engine, 1)["usable"]
        got = Counter(upgrade_to(engine, [members[0], revived, members[2]]) for _ in range(3))
        assert got == Counter({0: 1, 1: 1, 2: 1})
        assert member_state(engine, 1)["status"] == ""


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_member_dead_is_503_with_a_reason(make_proxy, strategy, caplog):
    ports = [free_port_refused() for _ in range(3)]
    engine = make_proxy(balancer(strategy, [f"ws://127.0.0.1:{p}" for p in ports]))
    for _ in range(2):  # the second time forcerecovery clears the error states: same answer
        status, sock, body = upgrade(engine)
        sock.close()
        assert status == 503
        assert body.startswith(b"503 ") and len(body.strip()) > len(b"503 "), body
    for p in ports:
        assert caplog.text.count(f"member ws://127.0.0.1:{p}/ failed") == 2
    assert all("E" in m["status"] for m in engine.balancers["c"].snapshot())
    assert engine.live_tunnels() == []


# -- sticky sessions ----------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sticky_route_from_cookie_and_url_parameter(make_proxy, members, strategy):
    ports = [s.address[1] for s in members]
    engine = make_proxy(
        balancer(
            strategy,
            [f"ws://127.0.0.1:{p} route={r}" for p, r in zip(ports, "abc")],
            "lbmethod=byrequests stickysession=ROUTEID",
        )
    )
    # An unknown route or a value without a dot: the lbmethod chooses (a b c a b c).
    assert [upgrade_to(engine, members, extra="Cookie: ROUTEID=s.zz") for _ in range(3)] == [0, 1, 2]
    assert [upgrade_to(engine, members, extra="Cookie: ROUTEID=nodot") for _ in range(3)] == [0, 1, 2]
    # A route: always its member.
    assert {upgrade_to(engine, members, extra="Cookie: theme=x; ROUTEID=session1.b") for _ in range(5)} == {1}
    assert {upgrade_to(engine, members, "/ws/room?ROUTEID=session2.c") for _ in range(5)} == {2}
    # The URL parameter is looked at first.
    assert upgrade_to(engine, members, "/ws/?x=1&ROUTEID=s.a", extra="Cookie: ROUTEID=s.c") == 0
    # The session also sticks through a real WebSocket client.
    before = counts(members)
    port = engine.addresses[0][1]
    with ws_connect(f"ws://127.0.0.1:{port}/ws/", additional_headers={"Cookie": "ROUTEID=z.b"}, open_timeout=5) as ws:
        ws.send("sticky")
        assert ws.recv(timeout=5) == "sticky"
    assert [a - b for a, b in zip(counts(members), before)] == [0, 1, 0]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sticky_member_dead_fails_over_unless_nofailover(make_proxy, members, strategy, caplog):
    dead = free_port_refused()
    lines = [
        f"ws://127.0.0.1:{members[0].address[1]} route=a",
        f"ws://127.0.0.1:{dead} route=b",
        f"ws://127.0.0.1:{members[2].address[1]} route=c",
    ]
    live = [members[0], members[2]]
    engine = make_proxy(balancer(strategy, lines, "stickysession=ROUTEID|rid"))
    # The sticky member refuses: another one serves, the client never knows.
    assert upgrade_to(engine, live, extra="Cookie: ROUTEID=s.b") in (0, 1)
    assert upgrade_to(engine, live, "/ws/?rid=s.b") in (0, 1)  # the separate URL parameter name
    assert upgrade_to(engine, live, "/ws/?rid=s.c") == 1

    # Balancer keys on the ProxyPass line this time, as httpd also allows.
    strict = make_proxy(balancer(strategy, lines, passkeys="stickysession=ROUTEID nofailover=On"))
    caplog.clear()
    for _ in range(2):  # refused once (error state), then unusable: 503 both times
        status, sock, body = upgrade(strict, extra="Cookie: ROUTEID=s.b")
        sock.close()
        assert status == 503 and body.startswith(b"503 "), body
    assert "nofailover" in caplog.text or f"member ws://127.0.0.1:{dead}/ failed" in caplog.text
    # Other routes on the same balancer are unaffected.
    assert upgrade_to(strict, live, extra="Cookie: ROUTEID=s.a") == 0


# -- mixed schemes ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_member(ca, tmp_path) -> Iterator[tuple[EchoServer, str]]:
    """A wss:// member (a TLS echo backend for "localhost") and the CA file to trust it."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with EchoServer("127.0.0.1", 0, page=b"member-tls", ssl_context=ctx) as server:
        yield server, str(ca_file)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_wss_ws_and_http_members_on_one_balancer(make_proxy, members, tls_member, strategy):
    tls, ca_file = tls_member
    servers = [tls, members[0], members[1]]
    engine = make_proxy(
        balancer(
            strategy,
            [
                f"wss://localhost:{tls.address[1]}",
                f"ws://127.0.0.1:{members[0].address[1]}",
                f"http://127.0.0.1:{members[1].address[1]} upgrade=websocket",
            ],
            "lbmethod=byrequests",
            extra=f"SSLProxyEngine On\nSSLProxyCACertificateFile {ca_file}\n",
        )
    )
    url = f"ws://127.0.0.1:{engine.addresses[0][1]}/ws/chat"
    for round_ in range(2):  # byrequests, equal loadfactors: each member in turn
        for i in range(3):
            before = counts(servers)
            with ws_connect(url, open_timeout=5) as ws:
                ws.send(f"hello {round_}.{i}")
                assert ws.recv(timeout=5) == f"hello {round_}.{i}"
            assert [a - b for a, b in zip(counts(servers), before)] == [int(j == i) for j in range(3)]
    # Plain GETs are proxied as HTTP, each member in turn, the http:// one included.
    pages = []
    for _ in range(3):
        status, head, body = http_get(engine.addresses[0], "/ws/index.html")
        assert status == 200, head
        pages.append(body)
    assert pages == [b"member-tls", b"member-0", b"member-1"]
    wait_for(lambda: engine.stats["tunnels.closed"] == 6, what="tunnels closed")
    assert [m["busy"] for m in engine.balancers["c"].snapshot()] == [0, 0, 0]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_tls_failure_on_a_member_is_502_and_puts_it_in_error(make_proxy, members, tls_member, strategy):
    # R46: a TLS failure (here: a certificate the system store does not trust) marks the
    # member, without failing the request over; the following ones avoid the member.
    tls, _ = tls_member
    engine = make_proxy(
        balancer(
            strategy,
            [f"wss://localhost:{tls.address[1]} retry=30", f"ws://127.0.0.1:{members[0].address[1]}"],
            extra="SSLProxyEngine On\n",
        )
    )
    status, sock, body = upgrade(engine)
    sock.close()
    assert status == 502 and b"certificate" in body, body
    assert counts(members) == [0, 0, 0]  # not failed over
    state = member_state(engine, 0)
    assert "E" in state["status"] and state["busy"] == 0
    assert {upgrade_to(engine, [tls, members[0]]) for _ in range(4)} == {1}
