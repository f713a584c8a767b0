"""SetHandler balancer-manager, live, driven the way scripts drive httpd's: the nonce read
from the page, a POST of httpd's form fields with a Referer (R112)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import quote, urlencode

import pytest

from tests.support.backends import Recorder
from tests.support.clients import http_get, raw_upgrade, recv_exactly, status_of
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

CONF = """\
<Proxy balancer://pool>
BalancerMember ws://127.0.0.1:{a}/ route=a
BalancerMember ws://127.0.0.1:{b}/ route=b
BalancerMember ws://127.0.0.1:{c}/ route=c
</Proxy>
ProxyPass /ws balancer://pool/
<Location /balancer-manager>
SetHandler balancer-manager
Require ip 127.0.0.1
</Location>
<Location /bm-closed>
SetHandler balancer-manager
Require ip 10.1.2.3
</Location>
"""


@pytest.fixture
def members():
    servers = [Recorder(name) for name in "ABC"]
    yield servers
    for s in servers:
        s.close()


class Members(HTMLParser):
    """The members tables: {member URL: {column: text}}."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self._row: str | None = None
        self._cls = ""
        self._text: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-member" in a:
            self._row = a["data-member"]
            self.rows[self._row] = {}
        elif tag == "td" and self._row is not None:
            self._cls, self._text = a.get("class", ""), []

    def handle_endtag(self, tag):
        if tag == "td" and self._text is not None and self._row is not None:
            if self._cls:
                self.rows[self._row][self._cls] = "".join(self._text)
            self._text = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)


def page(addr, query="", **kw):
    status, head, body = http_get(addr, "/balancer-manager" + query, **kw)
    assert status == 200, head
    return body.decode()


def members_of(body: str) -> dict[str, dict[str, str]]:
    parser = Members()
    parser.feed(body)
    return parser.rows


def nonce_of(body: str) -> str:
    return re.search(r"\?b=pool&amp;nonce=([0-9a-f-]+)", body).group(1)


def post(addr, fields: dict[str, str], *, referer: str | None = "http://t/balancer-manager") -> str:
    body = urlencode(fields).encode()
    headers = "Content-Type: application/x-www-form-urlencoded\r\n"
    if referer is not None:
        headers += f"Referer: {referer}\r\n"
    status, head, answer = http_get(addr, "/balancer-manager", method="POST", headers=headers, body=body)
    assert status == 200, head
    return answer.decode()


def tunnel_to(addr) -> tuple:
    sock, head, rest = raw_upgrade(addr, "/ws/x")
    assert status_of(head) == 101, head
    return sock, recv_exactly(sock, 1, initial=rest)


def test_disable_a_member_new_tunnels_go_elsewhere_open_ones_stay(make_proxy, members):
    a, b, c = (m.address[1] for m in members)
    engine = make_proxy(CONF.format(a=a, b=b, c=c))
    addr = engine.addresses[0]
    body = page(addr)
    nonce = nonce_of(body)
    url_a = f"ws://127.0.0.1:{a}/"
    opened = [tunnel_to(addr) for _ in range(3)]
    assert sorted(name for _, name in opened) == [b"A", b"B", b"C"]
    answer = post(addr, {"b": "pool", "w": url_a, "w_status_D": "1", "nonce": nonce})
    assert "changed: " in answer and members_of(answer)[url_a]["status"] == "Init Dis "
    later = [tunnel_to(addr) for _ in range(6)]
    assert b"A" not in {name for _, name in later}
    rows = members_of(page(addr))
    assert rows[url_a]["busy"] == "1"  # its open tunnel stays
    first_a = next(sock for sock, name in opened if name == b"A")
    first_a.sendall(b"still here")  # the Recorder holds the tunnel until it reads a byte
    assert first_a.recv(10) == b""  # ... and then the member closes it: it was still open
    for sock, _ in opened + later:
        sock.close()
    wait_for(lambda: not engine.live_tunnels(), what="tunnels closed")
    # enable again, through the same form
    post(addr, {"b": "pool", "w": url_a, "w_status_D": "0", "nonce": nonce})
    assert members_of(page(addr))[url_a]["status"] == "Init Ok "


def test_drain_keeps_open_tunnels_and_takes_no_new_ones(make_proxy, members):
    a, b, c = (m.address[1] for m in members)
    engine = make_proxy(CONF.format(a=a, b=b, c=c))
    addr = engine.addresses[0]
    nonce = nonce_of(page(addr))
    first = tunnel_to(addr)
    assert first[1] == b"A"
    url_a = f"ws://127.0.0.1:{a}/"
    post(addr, {"b": "pool", "w": url_a, "w_status_N": "1", "nonce": nonce})
    row = members_of(page(addr))[url_a]
    assert row["status"] == "Init Drn Ok " and row["busy"] == "1"
    later = [tunnel_to(addr) for _ in range(4)]
    assert b"A" not in {name for _, name in later}
    for sock, _ in [first, *later]:
        sock.close()


def test_forged_forms_change_nothing(make_proxy, members, caplog):
    a, b, c = (m.address[1] for m in members)
    engine = make_proxy(CONF.format(a=a, b=b, c=c))
    addr = engine.addresses[0]
    url_b = f"ws://127.0.0.1:{b}/"
    nonce = nonce_of(page(addr))
    answer = post(addr, {"b": "pool", "w": url_b, "w_status_D": "1"})  # no nonce
    assert "nonce is missing or wrong" in answer
    forged = ("1" if nonce[0] == "0" else "0") + nonce[1:]  # one character off, always
    answer = post(addr, {"b": "pool", "w": url_b, "w_status_D": "1", "nonce": forged})
    assert "nonce is missing or wrong" in answer
    answer = post(addr, {"b": "pool", "w": url_b, "w_status_D": "1", "nonce": nonce}, referer=None)  # no Referer
    assert "does not name this host" in answer
    answer = post(addr, {"b": "pool", "w": url_b, "w_status_D": "1", "nonce": nonce}, referer="http://evil.example/x")
    assert "does not name this host" in answer
    assert "cross-site access" in caplog.text
    # a GET carries only b, w, nonce and xml: the status field in its query is dropped
    page(addr, f"?b=pool&w={quote(url_b, safe='')}&nonce={nonce}&w_status_D=1", headers="Referer: http://t/\r\n")
    assert members_of(page(addr))[url_b]["status"] == "Init Ok "
    assert {sock_name for _, sock_name in (tunnel_to(addr) for _ in range(3))} == {b"A", b"B", b"C"}


def test_out_of_range_values_are_ignored_and_named(make_proxy, members):
    a, b, c = (m.address[1] for m in members)
    engine = make_proxy(CONF.format(a=a, b=b, c=c))
    addr = engine.addresses[0]
    nonce = nonce_of(page(addr))
    url_c = f"ws://127.0.0.1:{c}/"
    answer = post(addr, {"b": "pool", "w": url_c, "w_lf": "500", "w_ls": "3", "w_wr": "cc", "w_hm": "GET", "nonce": nonce})
    assert "w_lf=&#x27;500&#x27; ignored" in answer and "w_hm ignored: tunnel has no health checks" in answer
    state = engine.balancers["pool"].member_named(url_c)
    assert state.member.loadfactor == 1 and state.member.lbset == 3 and state.member.route == "cc"
    answer = post(addr, {"b": "pool", "b_lbm": "bybusyness", "b_tmo": "9999", "b_max": "2", "nonce": nonce})
    assert "b_tmo=&#x27;9999&#x27; ignored" in answer
    bal = engine.balancers["pool"].balancer
    assert bal.lbmethod == "bybusyness" and bal.timeout == 0 and bal.maxattempts == 2


def test_edit_form_xml_and_access(make_proxy, members):
    a, b, c = (m.address[1] for m in members)
    engine = make_proxy(CONF.format(a=a, b=b, c=c))
    addr = engine.addresses[0]
    nonce = nonce_of(page(addr))
    url_a = f"ws://127.0.0.1:{a}/"
    form = page(addr, f"?b=pool&w={quote(url_a, safe='')}&nonce={nonce}", headers="Referer: http://t/balancer-manager\r\n")
    for field in ("w_lf", "w_ls", "w_wr", "w_rr", "w_status_I", "w_status_N", "w_status_D", "w_status_H", "w_status_R", "w_status_S"):
        assert f"name='{field}'" in form
    assert f"name='nonce' id='nonce' value='{nonce}'" in form
    status, head, xml = http_get(addr, "/balancer-manager?xml=1", headers="Referer: http://t/\r\n")
    assert status == 200 and b"text/xml" in head
    assert f"<httpd:nonce>{nonce}</httpd:nonce>".encode() in xml and xml.count(b"<httpd:worker>") == 3
    assert http_get(addr, "/bm-closed")[0] == 403
    assert http_get(addr, "/balancer-manager", method="PUT")[0] == 405


def test_proxyset_nonce_none_allows_no_change(make_proxy, members):
    a, b, c = (m.address[1] for m in members)
    engine = make_proxy(CONF.format(a=a, b=b, c=c).replace("</Proxy>", "ProxySet nonce=None\n</Proxy>"))
    addr = engine.addresses[0]
    url_a = f"ws://127.0.0.1:{a}/"
    post(addr, {"b": "pool", "w": url_a, "w_status_D": "1", "nonce": ""})
    assert engine.balancers["pool"].member_named(url_a).member.status == frozenset()


def test_member_and_close_reason_in_the_access_logs(make_proxy, members, tmp_path):
    a, b, c = (m.address[1] for m in members)
    text_log, json_log = tmp_path / "access.log", tmp_path / "access.json"
    engine = make_proxy(
        CONF.format(a=a, b=b, c=c)
        + f'LogFormat "%r %>s %{{member}}n %{{close_reason}}n" tun\nCustomLog {text_log} tun\nCustomLog {json_log} json\n'
    )
    addr = engine.addresses[0]
    sock, name = tunnel_to(addr)
    assert name == b"A"
    sock.close()
    wait_for(lambda: not engine.live_tunnels(), what="the tunnel closed")
    line = wait_for(lambda: text_log.read_text(), what="the access log line")
    assert line.startswith(f"GET /ws/x HTTP/1.1 101 ws://127.0.0.1:{a}/ ")
    import json

    record = json.loads(json_log.read_text().splitlines()[0])
    assert record["member"] == f"ws://127.0.0.1:{a}/" and record["balancer"] == "pool"
    assert record["status"] == 101 and record["tunnel"] is True and record["close_reason"] == line.split(" ", 5)[5].strip()
