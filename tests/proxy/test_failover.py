"""proxy/failover.py on a live engine: reaching the backend for one request.

Balancer members (``<Proxy balancer://c>`` with ``BalancerMember`` lines and ``ProxySet``,
then ``ProxyPass /ws/ balancer://c/``, as an httpd user writes them): each member an
`EchoServer` of its own, told apart by its ``accepted`` counter (an upgrade's 101 is sent
by a thread started after the count, so the count is up to date when the client reads
the 101) and, for plain GETs, by its page (``member-N``). Then the balancer's
``timeout=`` wait, and a plain worker's failures: the status of each, with its timing
bound (R18).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import trustme
from websockets.sync.client import connect as ws_connect

from tests.support.backends import Recorder, closing, silent
from tests.support.clients import (
    free_port_refused,
    http_get,
    raw_upgrade,
    read_head,
    recv_exactly,
    recv_until_eof,
    status_of,
    upgrade_request,
)
from tests.support.clocks import FakeClock
from tests.support.strategies import STRATEGY_CONFIGS
from tests.support.waiting import wait_for
from tunnel.echo import EchoServer
from tunnel.protocol.balancer import Balancers

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
    grew = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if b != a]
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
            [f"ws://127.0.0.1:{p} loadfactor={lf}" for p, lf in zip(ports, (1, 2, 3), strict=True)],
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
            [f"ws://127.0.0.1:{p} route={r}" for p, r in zip(ports, "abc", strict=True)],
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
            [f"ws://127.0.0.1:{p} route={r}" for p, r in zip(ports, "abc", strict=True)],
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
    assert [a - b for a, b in zip(counts(members), before, strict=True)] == [0, 1, 0]


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
    # The sticky member refuses: another one serves, the client never knows. Which one is
    # httpd's byrequests count: the sticky pick of b charged a=b=c=1, b-=3; b fails and
    # the lbmethod picks among a, c: a=2 c=2, a wins the tie, a-=2. The next request's
    # route b is in error: a=1 c=3, c.
    assert upgrade_to(engine, live, extra="Cookie: ROUTEID=s.b") == 0
    assert upgrade_to(engine, live, "/ws/?rid=s.b") == 1  # the separate URL parameter name
    assert upgrade_to(engine, live, "/ws/?rid=s.c") == 1

    # Balancer keys on the ProxyPass line this time, as httpd also allows.
    strict = make_proxy(balancer(strategy, lines, passkeys="stickysession=ROUTEID nofailover=On"))
    caplog.clear()
    for _ in range(2):  # refused once (error state), then unusable: 503 both times
        status, sock, body = upgrade(strict, extra="Cookie: ROUTEID=s.b")
        sock.close()
        assert status == 503 and body.startswith(b"503 "), body
    # The first request tried the member (refused: logged once), neither went elsewhere.
    assert caplog.text.count(f"member ws://127.0.0.1:{dead}/ failed") == 1, caplog.text
    refused = [r.getMessage() for r in caplog.records if r.getMessage().startswith("503 no usable member in balancer://c")]
    assert len(refused) == 2, caplog.text
    assert all("route 'b' is unusable and nofailover is on" in line for line in refused), refused
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
            assert [a - b for a, b in zip(counts(servers), before, strict=True)] == [int(j == i) for j in range(3)]
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


# -- the balancer's timeout= wait ------------------------------------------------------------


def upgrade_status(engine) -> int:
    with socket.create_connection(engine.addresses[0], timeout=10) as sock:
        sock.sendall(upgrade_request("/ws/"))
        head, _ = read_head(sock, timeout=10)
    return status_of(head)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("wait", [0, 5])
def test_member_in_error_state_waited_for_only_with_timeout(make_proxy, wait):
    port = free_port_refused()
    # forcerecovery=Off: otherwise a lone member in error is tried at once (httpd too).
    engine = make_proxy(
        "<Proxy balancer://c>\n"
        f"  BalancerMember ws://127.0.0.1:{port} retry=1\n"
        f"  ProxySet timeout={wait} forcerecovery=Off\n"
        "</Proxy>\n"
        "ProxyPass /ws/ balancer://c/\n"
    )
    assert upgrade_status(engine) == 503  # refused: the member enters error state for 1 s
    with EchoServer("127.0.0.1", port):  # the member comes back on the same port
        started = time.monotonic()
        status = upgrade_status(engine)
        took = time.monotonic() - started
    if wait:
        assert status == 101  # waited for the error state to expire, then connected
        assert 0.5 < took < 5
    else:
        assert status == 503  # still in error: answered at once
        assert took < 0.5


@pytest.mark.timeout(30)
def test_a_client_that_leaves_during_the_wait_is_let_go_at_once(make_proxy, caplog):
    """R41 tunnel line: the balancer's timeout= wait watches the client; one that leaves
    ends the wait at once (no member picked or connected for nobody)."""
    import logging

    caplog.set_level(logging.INFO)
    port = free_port_refused()
    engine = make_proxy(
        "<Proxy balancer://c>\n"
        f"  BalancerMember ws://127.0.0.1:{port} retry=30\n"
        "  ProxySet timeout=20 forcerecovery=Off\n"
        "</Proxy>\n"
        "ProxyPass /ws/ balancer://c/\n"
    )
    assert upgrade_status(engine) == 503  # the member is now in error for 30 s
    sock = socket.create_connection(engine.addresses[0], timeout=10)
    sock.sendall(upgrade_request("/ws/"))
    wait_for(lambda: engine._tasks, what="the request waiting for a member")
    started = time.monotonic()
    sock.close()
    wait_for(lambda: not engine._tasks, timeout=10, what="the wait to end with the client")
    assert time.monotonic() - started < 3  # not the 20 s of timeout=
    assert "left" in caplog.text


# -- a plain worker: the status of each backend failure, with its timing bound ------------------


def error_case(engine, caplog, path="/f/"):
    """An upgrade on ``path``; returns (status, reason body, seconds taken)."""
    started = time.monotonic()
    with socket.create_connection(engine.addresses[0], timeout=15) as sock:
        sock.sendall(upgrade_request(path))
        head, rest = read_head(sock, timeout=15)
        while b"\n" not in rest:
            chunk = sock.recv(1024)
            if not chunk:
                break
            rest += chunk
    return status_of(head), rest, time.monotonic() - started


def error_logged(caplog, status: int, backend: str) -> str:
    """The ERROR line for a failed handshake: it names the status, the route and the backend."""
    lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR" and r.getMessage().startswith(str(status))]
    assert lines, caplog.text
    line = lines[-1]
    assert "/f/ (test.conf:" in line and backend in line, line  # route (with where) and backend
    return line


@pytest.mark.timeout(30)
def test_connect_refused_is_503(make_proxy, caplog):
    port = free_port_refused()
    engine = make_proxy(f"ProxyPass /f/ ws://127.0.0.1:{port}/\n")
    status, body, took = error_case(engine, caplog)
    assert status == 503 and took < 2
    assert body.startswith(b"503 ") and b"refused" in body and len(body) < 200
    error_logged(caplog, 503, f"ws://127.0.0.1:{port}/")


def filled_listener():
    """A loopback listener whose accept queue is full: further SYNs are dropped, so a
    connect hangs (a blackhole that stays on loopback). None if this kernel answers."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    fillers = []
    for _ in range(3):
        c = socket.socket()
        c.settimeout(0.2)
        try:
            c.connect(lsock.getsockname())
        except OSError:
            c.close()
            return lsock, fillers  # this one timed out: the queue is full
        fillers.append(c)
    for c in fillers:
        c.close()
    lsock.close()
    return None, []


@pytest.mark.timeout(30)
def test_connect_timeout_is_503_after_connectiontimeout(make_proxy, caplog):
    lsock, fillers = filled_listener()
    if lsock is None:
        pytest.skip("this kernel does not drop SYNs to a full accept queue")
    try:
        port = lsock.getsockname()[1]
        engine = make_proxy(f"ProxyPass /f/ ws://127.0.0.1:{port}/ connectiontimeout=300ms timeout=5\n")
        status, body, took = error_case(engine, caplog)
        assert status == 503 and 0.25 <= took < 2, took  # connectiontimeout, not timeout=
        assert body.startswith(b"503 ") and b"timed out" in body
        error_logged(caplog, 503, f"ws://127.0.0.1:{port}/")
        # retry=: the worker is now in error, the next request gets 503 at once
        status, _, took = error_case(engine, caplog)
        assert status == 503 and took < 0.25
    finally:
        for c in fillers:
            c.close()
        lsock.close()


@pytest.mark.timeout(30)
def test_dns_failure_is_500(make_proxy, caplog):
    engine = make_proxy("ProxyPass /f/ ws://no-such-host.invalid:9000/\n")
    status, body, took = error_case(engine, caplog)
    assert status == 500 and took < 10
    assert body.startswith(b"500 ") and b"resolved" in body and len(body) < 200
    error_logged(caplog, 500, "no-such-host.invalid")


@pytest.mark.timeout(30)
def test_backend_tls_handshake_timeout_is_504(make_proxy, caplog):
    """A wss:// backend that accepts and never says a TLS word: 504 at the connect
    deadline (a timeout, not a failed handshake: not 502)."""
    backend = silent()
    try:
        port = backend.port
        engine = make_proxy(f"SSLProxyEngine On\nProxyPass /f/ wss://127.0.0.1:{port}/ connectiontimeout=1\n")
        status, body, took = error_case(engine, caplog)
        assert status == 504 and 0.9 <= took < 5, (status, took)
        assert body.startswith(b"504 ") and b"TLS handshake with the backend timed out" in body
    finally:
        backend.close()


@pytest.mark.timeout(30)
def test_backend_head_timeout_is_504_after_timeout(make_proxy, caplog):
    backend = silent()  # accepts, never answers
    try:
        port = backend.port
        engine = make_proxy(f"ProxyPass /f/ ws://127.0.0.1:{port}/ timeout=1\n")
        status, body, took = error_case(engine, caplog)
        assert status == 504 and 0.9 <= took < 3, took
        assert body.startswith(b"504 ") and b"did not answer" in body
        error_logged(caplog, 504, f"ws://127.0.0.1:{port}/")
    finally:
        backend.close()


@pytest.mark.timeout(30)
def test_backend_closing_before_a_head_is_502(make_proxy, caplog):
    closer = closing()
    try:
        port = closer.port
        engine = make_proxy(f"ProxyPass /f/ ws://127.0.0.1:{port}/\n")
        status, body, took = error_case(engine, caplog)
        assert status == 502 and took < 2
        assert body.startswith(b"502 ") and len(body) < 200
        error_logged(caplog, 502, f"ws://127.0.0.1:{port}/")
    finally:
        closer.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["refused", "closes", "silent", "dns"])
def test_plain_http_route_failures_have_the_same_statuses(make_proxy, caplog, kind):
    """The failure table holds for a plain request on an http:// route as for an upgrade:
    refused 503, closed before a head 502, head timeout 504 (after timeout=), DNS 500;
    each with a short reason body and an ERROR line naming the route and the backend."""
    listener = None
    if kind == "refused":
        url, expected = f"http://127.0.0.1:{free_port_refused()}/", 503
    elif kind == "dns":
        url, expected = "http://no-such-host.invalid/", 500
    else:
        listener = closing() if kind == "closes" else silent()
        url, expected = f"http://127.0.0.1:{listener.port}/", 502 if kind == "closes" else 504
    try:
        engine = make_proxy(f"ProxyPass /f/ {url} timeout=1\n")
        started = time.monotonic()
        status, head, body = http_get(engine.addresses[0], "/f/page")
        took = time.monotonic() - started
        assert status == expected, head
        assert body.startswith(b"%d " % expected) and body.endswith(b"\n") and len(body) < 200, body
        if kind == "silent":
            assert 0.9 <= took < 5, took
        else:
            assert took < 2, took
        error_logged(caplog, expected, url.rstrip("/") if kind == "dns" else url)
    finally:
        if listener is not None:
            listener.close()


@pytest.mark.timeout(30)
def test_each_address_gets_its_own_connect_timeout(make_proxy, caplog, monkeypatch):
    """R18: a backend name with two addresses, the first silent (a full accept queue),
    the second answering: the connect times out on the first after connectiontimeout=
    and the tunnel opens on the second, instead of a 503."""
    lsock, fillers = filled_listener()
    if lsock is None:
        pytest.skip("this kernel does not drop SYNs to a full accept queue")
    good = Recorder("GOOD")
    silent_address = lsock.getsockname()
    real_getaddrinfo = socket.getaddrinfo

    def two_addresses(host, port, *args, **kwargs):  # the name resolves to both (DNS only)
        if host == "twice.test":
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", silent_address),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", good.port)),
            ]
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", two_addresses)
    try:
        engine = make_proxy(f"ProxyPass /t/ ws://twice.test:{good.port}/ connectiontimeout=300ms timeout=5\n")
        started = time.monotonic()
        sock, head, rest = raw_upgrade(engine.addresses[0], "/t/x")
        took = time.monotonic() - started
        sock.close()
        assert status_of(head) == 101, head
        assert 0.25 <= took < 3, took  # one connectiontimeout spent on the silent address
        assert good.heads and b"GET /x HTTP/1.1" in good.heads[0]
    finally:
        for c in fillers:
            c.close()
        lsock.close()
        good.close()


@pytest.mark.timeout(30)
def test_a_slow_name_lookup_stalls_no_other_tunnel(make_proxy, caplog, monkeypatch):
    """Lookups run in a resolver thread: while one backend name takes its time, another
    client's tunnel opens and echoes; then the slow one opens too. A lookup that outlives
    the connect timeout is a 500."""
    good = Recorder("GOOD")
    release = threading.Event()
    real_getaddrinfo = socket.getaddrinfo

    def slow(host, port, *args, **kwargs):
        if host in ("slow.test", "stuck.test"):
            release.wait(10)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", good.port))]
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    try:
        engine = make_proxy(
            f"ProxyPass /slow/ ws://slow.test:{good.port}/ connectiontimeout=20\n"
            f"ProxyPass /stuck/ ws://stuck.test:{good.port}/ connectiontimeout=300ms\n"
            f"ProxyPass /fast/ ws://127.0.0.1:{good.port}/\n"
        )
        addr = engine.addresses[0]
        waiting = socket.create_connection(addr, timeout=10)
        waiting.sendall(upgrade_request("/slow/a"))
        stuck = socket.create_connection(addr, timeout=10)
        stuck.sendall(upgrade_request("/stuck/b"))
        sock, head, _ = raw_upgrade(addr, "/fast/c")  # served while both lookups hang
        assert status_of(head) == 101
        sock.close()
        head, _ = read_head(stuck)
        assert status_of(head) == 500 and not release.is_set()  # its own deadline, nobody else's
        stuck.close()
        release.set()
        head, _ = read_head(waiting)
        assert status_of(head) == 101
        waiting.close()
    finally:
        release.set()
        good.close()
