"""SetHandler server-status and metrics, live: pages parsed with html.parser, ?auto line
by line, the Prometheus text with prometheus_client's parser, counters checked against
the traffic the test made (R110, R111, R113)."""

from __future__ import annotations

import socket
from html.parser import HTMLParser

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.clients import http_get, raw_upgrade, recv_exactly, status_of
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(60)


class Tables(HTMLParser):
    """Every <table class=...> of a page as rows of cell texts, and the <dt> lines."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.dts: list[str] = []
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self._dt: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._table = self.tables.setdefault(dict(attrs).get("class", ""), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "dt":
            self._dt = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self._table[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "dt" and self._dt is not None:
            self.dts.append("".join(self._dt).strip())
            self._dt = None

    def handle_data(self, data):
        for part in (self._cell, self._dt):
            if part is not None:
                part.append(data)


def parse_page(body: bytes) -> Tables:
    parser = Tables()
    parser.feed(body.decode())
    parser.close()
    return parser


def auto(addr, path="/server-status?auto") -> dict[str, str]:
    status, head, body = http_get(addr, path)
    assert status == 200 and b"text/plain" in head
    lines = body.decode("latin-1").splitlines()
    fields = {}
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        assert sep, f"not a Key: value line: {line!r}"
        fields[key] = value.strip()
    return fields


def scrape(addr, path="/metrics") -> dict[tuple[str, tuple], float]:
    status, head, body = http_get(addr, path)
    assert status == 200 and b"version=0.0.4" in head
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


STATUS_CONF = """\
ProxyPass /raw ws://127.0.0.1:{port}/
<Location /server-status>
SetHandler server-status
Require ip 127.0.0.1
</Location>
<Location /metrics>
SetHandler metrics
</Location>
<Location /closed>
SetHandler server-status
Require ip 10.9.9.9
</Location>
"""


def open_raw(addr, path="/raw/t"):
    sock, head, rest = raw_upgrade(addr, path)
    assert status_of(head) == 101, head
    assert rest == b""
    return sock


def test_fifty_tunnels_on_the_status_page_with_growing_byte_counts(make_proxy, raw_echo):
    engine = make_proxy(STATUS_CONF.format(port=raw_echo.address[1]))
    addr = engine.addresses[0]
    socks = [open_raw(addr, f"/raw/t{i}") for i in range(50)]
    try:
        for i, s in enumerate(socks):
            s.sendall(b"x" * (i + 1))
            assert recv_exactly(s, i + 1) == b"x" * (i + 1)
        status, _, body = http_get(addr, "/server-status")
        assert status == 200
        page = parse_page(body)
        rows = page.tables["tunnels"]
        head, rows = rows[0], rows[1:]
        assert head[:4] == ["ID", "Client", "VHost", "Request"]
        by_path = {r[3]: r for r in rows}
        assert len(by_path) == 50
        col_in, col_out = head.index("To backend"), head.index("To client")
        for i in range(50):
            row = by_path[f"/raw/t{i}"]
            assert row[1] == "127.0.0.1" and row[4] == "/raw (test.conf:2)"
            assert int(row[col_in]) == i + 1 and int(row[col_out]) == i + 1
        assert "50 tunnels open" in page.dts
        # the counts grow while the tunnels are open: read from the pumps, not at close
        socks[7].sendall(b"y" * 1000)
        assert recv_exactly(socks[7], 1000) == b"y" * 1000
        page = parse_page(http_get(addr, "/server-status")[2])
        row = next(r for r in page.tables["tunnels"][1:] if r[3] == "/raw/t7")
        assert int(row[col_in]) == 1008 and int(row[col_out]) == 1008
        fields = auto(addr)
        assert fields["TunnelsOpen"] == "50"
        assert int(fields["TunnelBytesToBackend"]) == sum(range(1, 51)) + 1000
    finally:
        for s in socks:
            s.close()
    wait_for(lambda: not engine.live_tunnels(), what="tunnels closed")


def test_auto_has_httpd_keys_line_by_line(make_proxy, raw_echo):
    engine = make_proxy(STATUS_CONF.format(port=raw_echo.address[1]) + "MaxTunnelThreads 8\n")
    addr = engine.addresses[0]
    sock = open_raw(addr)
    try:
        fields = auto(addr)
    finally:
        sock.close()
    for key in ("ServerVersion", "ServerMPM", "ServerUptimeSeconds", "ServerUptime", "Total Accesses", "Total kBytes",
                "Total Duration", "Uptime", "BusyWorkers", "IdleWorkers", "ConnsTotal", "Scoreboard", "Load1"):
        assert key in fields, key
    assert fields["BusyWorkers"] == "1" and fields["IdleWorkers"] == "7"  # the sync thread of the tunnel
    assert fields["Scoreboard"] == "W_______"
    assert fields["Total Accesses"] == "1" and fields["HandshakesOK"] == "1"
    assert int(fields["ConnsTotal"]) >= 1
    # httpd searches the query for "auto"
    assert "TunnelsOpen" in auto(addr, "/server-status?x=1&auto")


def test_refused_address_gets_403_and_post_405(make_proxy, raw_echo):
    engine = make_proxy(STATUS_CONF.format(port=raw_echo.address[1]))
    addr = engine.addresses[0]
    status, _, _ = http_get(addr, "/closed")
    assert status == 403
    status, head, _ = http_get(addr, "/server-status", method="POST", body=b"a=1")
    assert status == 405 and b"Allow: GET, HEAD" in head
    assert http_get(addr, "/server-status?refresh=3")[1].count(b"Refresh: 3") == 1
    status, head, body = http_get(addr, "/server-status", method="HEAD")
    assert status == 200 and body == b""


def test_extended_status_off_leaves_the_tunnel_table_and_totals_out(make_proxy, raw_echo):
    engine = make_proxy(STATUS_CONF.format(port=raw_echo.address[1]) + "ExtendedStatus Off\n")
    addr = engine.addresses[0]
    sock = open_raw(addr)
    try:
        page = parse_page(http_get(addr, "/server-status")[2])
        assert "tunnels" not in page.tables and "workers" in page.tables
        fields = auto(addr)
        assert "Total Accesses" not in fields and fields["TunnelsOpen"] == "1"
    finally:
        sock.close()


def test_a_proxypass_takes_the_path_before_sethandler_unless_excluded(make_proxy, raw_echo):
    port = raw_echo.address[1]
    engine = make_proxy(f"""
ProxyPass /server-status !
ProxyPass / http://127.0.0.1:{port}/
<Location /server-status>
SetHandler server-status
</Location>
<Location /metrics>
SetHandler metrics
</Location>
""")
    addr = engine.addresses[0]
    assert http_get(addr, "/server-status?auto")[0] == 200
    # /metrics is taken by ProxyPass / (httpd: mod_proxy's handler runs first): the raw
    # echo backend answers something that is not our metrics
    assert b"tunnel_workers" not in http_get(addr, "/metrics")[2]
    assert any("SetHandler metrics" in w and "ProxyPass" in w for w in engine.config.warnings)


def test_metrics_count_exactly_what_the_test_sent(make_proxy, raw_echo):
    engine = make_proxy(STATUS_CONF.format(port=raw_echo.address[1]))
    addr = engine.addresses[0]
    before = scrape(addr)
    assert value(before, "tunnel_tunnels_opened_total", vhost="", route="test.conf:2", strategy="sync") == 0
    socks = [open_raw(addr) for _ in range(3)]
    for n, s in zip((10, 200, 3000), socks, strict=True):
        s.sendall(b"z" * n)
        assert recv_exactly(s, n) == b"z" * n
    live = scrape(addr)
    assert value(live, "tunnel_tunnels_opened_total", vhost="", route="test.conf:2", strategy="sync") == 3
    assert value(live, "tunnel_tunnels_open", vhost="", route="test.conf:2", strategy="sync") == 3
    assert value(live, "tunnel_tunnel_bytes_total", direction="to_backend") == 3210
    assert value(live, "tunnel_tunnel_bytes_total", direction="to_client") == 3210
    assert value(live, "tunnel_handshakes_total", status="101") == 3
    assert value(live, "tunnel_handshake_seconds_count") == 3
    assert value(live, "tunnel_backend_upgrade_seconds_count") == 3
    assert value(live, "tunnel_pool_threads_busy") == 3
    for s in socks:
        s.shutdown(socket.SHUT_WR)  # half-close: the raw echo ends, the tunnels close with "eof"
        assert s.recv(10) == b""
        s.close()
    wait_for(lambda: not engine.live_tunnels(), what="tunnels closed")
    after = scrape(addr)
    assert value(after, "tunnel_tunnel_bytes_total", direction="to_backend") == 3210  # nothing lost at close
    assert value(after, "tunnel_tunnel_closes_total", reason="eof") == 3
    assert value(after, "tunnel_lifetime_seconds_count") == 3
    assert value(after, "tunnel_tunnels_open", vhost="", route="test.conf:2", strategy="sync") == 0
    # the two scrapes before this one were plain requests answered 200
    assert value(after, "tunnel_http_requests_total", status="200") == 2
    status, _, _ = http_get(addr, "/nothing-here")
    assert status == 404
    assert value(scrape(addr), "tunnel_http_requests_total", status="404") == 1


def test_upgrade_refused_is_a_handshake_status(make_proxy, raw_echo):
    engine = make_proxy(STATUS_CONF.format(port=raw_echo.address[1]))
    addr = engine.addresses[0]
    sock, head, _ = raw_upgrade(addr, "/raw/x", version="8")
    sock.close()
    assert status_of(head) == 426
    assert value(scrape(addr), "tunnel_handshakes_total", status="426") == 1


def test_sethandler_in_a_vhost_scope_serves_every_unrouted_path(make_proxy):
    engine = make_proxy("<VirtualHost *:*>\nSetHandler server-status\n</VirtualHost>\n")
    addr = engine.addresses[0]
    assert "TunnelsOpen" in auto(addr, "/anything?auto")
    assert http_get(addr, "/x", method="DELETE")[0] == 405
