"""tunnel and real Apache httpd, side by side, on the configurations applications publish.

For each file in tests/fixtures/httpd/ (see tests/support/httpd_fixtures.py for the
substitutions that put it on loopback) the same text is loaded by tunnel and by httpd
(Debian's apache2, started in the foreground for the test), in front of the same real
backends (tests/support/appbackend.py: plain HTTP and WebSocket echo on one port,
recording every request head). Each of the fixture's probes is sent to httpd and then to
tunnel, and the decisions must be the same: the status, which backend got the request,
the method and target it saw, the forwarding headers it saw, the response headers a
client acts on (Location, with the proxy's own port written as its role, Set-Cookie,
Strict-Transport-Security), and for an upgrade the echoed message.

A fixture httpd itself refuses (`Fixture.httpd_rejects`) must be refused by tunnel too.
A fixture tunnel cannot load yet is an expected failure (strict: it must start failing
the day the missing directive lands, so that the entry is removed). Skipped when no
apache2 is installed (``make system-deps`` installs it).
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.support.appbackend import AppBackend
from tests.support.clients import read_head, status_of
from tests.support.httpd import APACHE2, Httpd, PortTaken, free_ports
from tests.support.httpd_fixtures import FIXTURES, Fixture, Probe, materials
from tunnel import Config, Engine
from tunnel.errors import ConfigError

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(APACHE2 is None, reason="no apache2 with /usr/lib/apache2/modules (install it with `make system-deps`)"),
]

#: Fixtures tunnel cannot load today, with the first error it reports (the directive the
#: other work is adding). Remove an entry when its fixture loads.
TUNNEL_CANNOT_LOAD = {
    "socketio-sticky": 'unknown directive "Header"',
    "jupyterhub": 'unknown directive "Header"',
    "gitea": 'unknown directive "RequestHeader"',
    "gitea-subpath": 'unknown directive "RequestHeader"',
    "synapse": 'unknown directive "RequestHeader"',
    "zulip": 'unknown directive "RequestHeader"',
    "guacamole": 'unknown directive "SetEnvIf"',
    "jellyfin": 'unknown directive "RequestHeader"',
    "vaultwarden": 'unknown directive "RequestHeader"',
    "jenkins-https": 'unknown directive "NameVirtualHost"',
    "ntfy": 'unknown directive "SetEnv"',
}

#: Fixtures tunnel loads but answers differently from httpd (found by this test).
TUNNEL_DIFFERS: dict[str, str] = {}

#: Request headers compared as the backend saw them (lower-case names).
COMPARED_REQUEST_HEADERS = (
    "host", "x-forwarded-for", "x-forwarded-host", "x-forwarded-server", "x-forwarded-proto",
    "x-forwarded-port", "x-real-ip", "origin", "upgrade", "cookie", "sec-websocket-key",
)
#: Response headers compared as the client saw them.
COMPARED_RESPONSE_HEADERS = ("location", "set-cookie", "strict-transport-security")

ROLES = ("80", "443", "8448")


def _params() -> list[Any]:
    out = []
    for name in sorted(FIXTURES):
        marks = []
        if name in TUNNEL_CANNOT_LOAD:
            marks.append(pytest.mark.xfail(reason=f"tunnel: {TUNNEL_CANNOT_LOAD[name]}", strict=True))
        elif name in TUNNEL_DIFFERS:
            marks.append(pytest.mark.xfail(reason=TUNNEL_DIFFERS[name], strict=True))
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.fixture(scope="module")
def mats(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return materials(tmp_path_factory.mktemp("httpd-materials"))


def _server_tls(mats: dict[str, str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(mats["cert"], mats["key"])
    return ctx


@pytest.fixture
def backends(request: pytest.FixtureRequest, mats: dict[str, str]) -> Iterator[list[AppBackend]]:
    fixture = FIXTURES[request.node.callspec.params["name"]]
    tls = _server_tls(mats) if fixture.tls_backends else None
    servers = [AppBackend(f"app{i + 1}", tls=tls) for i in range(fixture.backends)]
    try:
        yield servers
    finally:
        for s in servers:
            s.close()


def _values(mats: dict[str, str], backends: list[AppBackend]) -> dict[str, str]:
    values = dict(mats)
    values.update({f"p{role}": str(port) for role, port in zip(ROLES, free_ports(len(ROLES)), strict=True)})
    values.update({f"b{i + 1}": str(b.port) for i, b in enumerate(backends)})
    return values


def _ports(fixture: Fixture, values: dict[str, str]) -> dict[str, int]:
    return {role: int(values[f"p{role}"]) for role in fixture.roles}


# -- the client side: one probe, one result ----------------------------------------------

def _connect(fixture: Fixture, probe: Probe, port: int, ca: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if fixture.roles[probe.role] == "https":
        ctx = ssl.create_default_context(cafile=ca)
        return ctx.wrap_socket(sock, server_hostname=probe.host)
    return sock


def _head_fields(head: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip().lower()
            fields[key] = f"{fields[key]}, {value.strip()}" if key in fields else value.strip()
    return fields


def _masked_text_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _read_frame(sock: socket.socket, initial: bytes) -> bytes:
    buf = bytearray(initial)
    deadline = time.monotonic() + 5
    while len(buf) < 2 or len(buf) < 2 + (buf[1] & 0x7F):
        if time.monotonic() > deadline:
            break
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    if len(buf) < 2:
        return b""
    return bytes(buf[2 : 2 + (buf[1] & 0x7F)])


KEY = base64.b64encode(b"side-by-side-key").decode()


def _send(fixture: Fixture, probe: Probe, port: int, ca: str) -> dict[str, Any]:
    lines = [f"GET {probe.path} HTTP/1.1", f"Host: {probe.host}"]
    if probe.ws:
        lines += ["Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {KEY}", "Sec-WebSocket-Version: 13"]
    else:
        lines.append("Connection: close")
    lines += [f"{k}: {v}" for k, v in probe.headers]
    with _connect(fixture, probe, port, ca) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head, rest = read_head(sock, timeout=10)
        status = status_of(head)
        echo: Optional[bytes] = None
        if probe.ws and status == 101:
            message = f"echo {probe.name}".encode()
            sock.sendall(_masked_text_frame(message))
            echo = _read_frame(sock, rest)
    fields = _head_fields(head)
    return {"status": status, "response": {k: fields[k] for k in COMPARED_RESPONSE_HEADERS if k in fields}, "echo": echo}


def _run_probe(fixture: Fixture, probe: Probe, port: int, ca: str, backends: list[AppBackend]) -> dict[str, Any]:
    before = [len(b.seen) for b in backends]
    result = _send(fixture, probe, port, ca)
    seen = [s for b, n in zip(backends, before, strict=True) for s in b.seen[n:]]
    result["backend"] = [
        {"backend": s.backend, "method": s.method, "target": s.target,
         "headers": {k: s.headers[k] for k in COMPARED_REQUEST_HEADERS if k in s.headers}}
        for s in seen
    ]
    return result


def _normalise(result: dict[str, Any], ports: dict[str, int]) -> dict[str, Any]:
    """The proxy's own port numbers replaced by their role, so that httpd's and tunnel's
    answers compare."""
    def fix(value: str) -> str:
        for role, port in ports.items():
            value = value.replace(f":{port}", f":<{role}>")
        return value

    result["response"] = {k: fix(v) for k, v in result["response"].items()}
    for seen in result["backend"]:
        seen["headers"] = {k: fix(v) for k, v in seen["headers"].items()}
    return result


# -- the two proxies -----------------------------------------------------------------------

def _start_httpd(fixture: Fixture, workdir: Path, mats: dict[str, str], backends: list[AppBackend]) -> tuple[Httpd, dict[str, int]]:
    for _attempt in range(5):
        values = _values(mats, backends)
        httpd = Httpd(workdir)
        ports = _ports(fixture, values)
        try:
            httpd.start(fixture.prelude(values), fixture.render(values), list(ports.values()))
            return httpd, ports
        except PortTaken:
            continue
    raise AssertionError("httpd could not bind free ports in 5 attempts")


def _start_tunnel(fixture: Fixture, mats: dict[str, str], backends: list[AppBackend]) -> tuple[Engine, dict[str, int]]:
    last: Optional[OSError] = None
    for _attempt in range(5):
        values = _values(mats, backends)
        config = Config.from_text(fixture.prelude(values) + fixture.render(values), filename=f"{fixture.name}.conf")
        engine = Engine(config, server_name="proxy.test")
        try:
            engine.start()
            return engine, _ports(fixture, values)
        except OSError as exc:  # a chosen port was taken meanwhile
            engine.stop()
            last = exc
    raise AssertionError(f"tunnel could not bind free ports in 5 attempts: {last}")


@pytest.mark.parametrize("name", _params())
def test_tunnel_decides_as_httpd(name: str, backends: list[AppBackend], mats: dict[str, str], tmp_path: Path) -> None:
    fixture = FIXTURES[name]
    if fixture.httpd_rejects:
        values = _values(mats, backends)
        ok, output = Httpd(tmp_path / "httpd").configtest(fixture.prelude(values), fixture.render(values))
        assert not ok, f"httpd accepted {name}, which the fixture table says it refuses:\n{output}"
        with pytest.raises(ConfigError):
            Config.from_text(fixture.prelude(values) + fixture.render(values), filename=f"{name}.conf")
        return
    assert fixture.probes, f"{name} has no probes"
    engine, tunnel_ports = _start_tunnel(fixture, mats, backends)
    try:
        httpd, httpd_ports = _start_httpd(fixture, tmp_path / "httpd", mats, backends)
        try:
            differences = []
            for probe in fixture.probes:
                expected = _normalise(_run_probe(fixture, probe, httpd_ports[probe.role], mats["ca"], backends), httpd_ports)
                got = _normalise(_run_probe(fixture, probe, tunnel_ports[probe.role], mats["ca"], backends), tunnel_ports)
                if got != expected:
                    differences.append(f"{probe.name} ({'ws' if probe.ws else 'GET'} {probe.path}):\n"
                                       f"  httpd:  {expected}\n  tunnel: {got}")
            assert not differences, f"{name}: tunnel and httpd decide differently:\n" + "\n".join(differences)
        finally:
            httpd.stop()
    finally:
        engine.stop()


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_httpd_reads_the_fixture_as_the_table_says(name: str, mats: dict[str, str], tmp_path: Path) -> None:
    """The substitutions keep every published file loadable by httpd itself (``apache2
    -t``), except the ones the table marks as refused by httpd, which it must refuse: the
    side-by-side comparison above is only as good as its httpd half."""
    fixture = FIXTURES[name]
    values = _values(mats, [])
    values.update({"b1": "9", "b2": "10", "b3": "11"})
    ok, output = Httpd(tmp_path / "httpd").configtest(fixture.prelude(values), fixture.render(values))
    assert ok is not fixture.httpd_rejects, output
