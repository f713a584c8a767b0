"""wss next to ws: bulk throughput and handshake rate through the tunnel with
TLS on neither, either or both legs, reported as ratios to the clear-text tunnel.

The proxy is a separate ``tunnel serve`` process (async). The clear backend is the C echo
backend; the TLS backend is the project's raw echo server with a trustme certificate, in
this process. The client is Python (the project's ``TLSStream`` for wss), one tunnel at a
time, so absolute figures are bounded by the client; the ratios show what TLS costs the
proxy. Reports: ``bench/build/tls.{json,md}`` (printed at the end). Nothing is asserted.
"""

from __future__ import annotations

import json
import os
import select
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trustme

from tunnel.echo import EchoServer
from tunnel.io.tls import TLSStream

from .harness import BUILD, Backend, Proc, build, wait_until

WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 sample key: the C backend answers its Accept
REQUEST = (
    "GET /{path} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _wait(end, write: bool, deadline: float) -> None:
    if time.monotonic() > deadline:
        raise TimeoutError("bench exchange did not finish in time")
    select.select([end], [end] if write else [], [], 0.5)


def _open(addr, ctx, deadline):
    raw = socket.create_connection(addr, timeout=5)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ctx is None:
        raw.setblocking(False)
        return raw
    end = TLSStream(raw, ctx, server_hostname="localhost")
    while True:
        try:
            end.do_handshake()
            return end
        except ssl.SSLWantReadError:
            _wait(end, False, deadline)
        except ssl.SSLWantWriteError:
            _wait(end, True, deadline)


def _send_all(end, data: bytes, deadline) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[end.send(view) :]
        except WOULD_BLOCK:
            _wait(end, True, deadline)
    while getattr(end, "unsent", 0) and not end.flush():
        _wait(end, True, deadline)


def _read_head(end, deadline) -> bytes:
    buf = bytearray(65536)
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            n = end.recv_into(buf)
            if n == 0:
                raise ConnectionError("closed before the 101")
            data += buf[:n]
        except WOULD_BLOCK:
            _wait(end, False, deadline)
    head, _, rest = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head[:80])
    return rest


def _recv_exactly(end, n: int, have: int, deadline) -> None:
    buf = bytearray(1 << 18)
    while have < n:
        try:
            got = end.recv_into(buf)
            if got == 0:
                raise ConnectionError("closed early")
            have += got
        except WOULD_BLOCK:
            _wait(end, False, deadline)


class Stalled(Exception):
    """An exchange made no progress before its deadline (reported, not raised further)."""


def bulk(addr, ctx, path: str, total: int, limit: float = 120) -> float:
    """MB/s of ``total`` bytes sent and echoed back through one tunnel (both at once)."""
    deadline = time.monotonic() + limit
    end = _open(addr, ctx, deadline)
    _send_all(end, REQUEST.format(path=path).encode(), deadline)
    have = len(_read_head(end, deadline))
    chunk = memoryview(os.urandom(1 << 18))
    buf = bytearray(1 << 18)
    sent = 0
    started = time.monotonic()
    while have < total:
        moved = False
        if sent < total:
            try:
                sent += end.send(chunk[: min(len(chunk), total - sent)])
                moved = True
            except WOULD_BLOCK:
                pass
        if getattr(end, "unsent", 0):
            end.flush()
        try:
            n = end.recv_into(buf)
            if n == 0:
                raise ConnectionError("closed early")
            have += n
            moved = True
        except WOULD_BLOCK:
            pass
        if not moved:
            try:
                _wait(end, sent < total or bool(getattr(end, "unsent", 0)), deadline)
            except TimeoutError:
                end.close()
                raise Stalled(f"{sent:,} of {total:,} bytes sent, {have:,} echoed after {limit:.0f} s ({end!r})") from None
    took = time.monotonic() - started
    end.close()
    return total / took / 1e6


def handshakes(addr, ctx, path: str, seconds: float) -> float:
    """Upgrade + 4-byte echo + close, one after another, per second (TLS handshake included)."""
    deadline = time.monotonic() + seconds + 60
    done = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        end = _open(addr, ctx, deadline)
        _send_all(end, REQUEST.format(path=path).encode(), deadline)
        rest = _read_head(end, deadline)
        _send_all(end, b"ping", deadline)
        _recv_exactly(end, 4, len(rest), deadline)
        end.close()
        done += 1
    return done / (time.monotonic() - started)


def bench_tls_legs(benchmark, request):
    quick = request.config.getoption("--bench-mode") == "quick"
    rounds = 1 if quick else 3
    total = (32 if quick else 128) << 20
    hs_seconds = 1.5 if quick else 4.0
    build()
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    work = Path(tempfile.mkdtemp(prefix="bench-tls-"))
    pem = work / "proxy.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    ca.cert_pem.write_to_path(str(work / "ca.pem"))
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    backend_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(backend_ctx)
    clear = Backend(1)
    tls_backend = EchoServer("127.0.0.1", 0, raw=True, ssl_context=backend_ctx).start()
    ports = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        ports.append(s.getsockname()[1])
        s.close()
    conf = work / "tunnel.conf"
    conf.write_text(
        f"Listen 127.0.0.1:{ports[0]}\nListen 127.0.0.1:{ports[1]} https\n"
        f"SSLEngine On\nSSLCertificateFile {pem}\n"
        f"SSLProxyEngine On\nSSLProxyCACertificateFile {work / 'ca.pem'}\n"
        "ProxyWebsocketAsync On\nLogLevel warn\n"
        f"ProxyPass /clear/ ws://127.0.0.1:{clear.allot()}/\n"
        f"ProxyPass /tls/ wss://localhost:{tls_backend.address[1]}/\n"
    )
    exe = Path(sys.executable).with_name("tunnel")
    proxy = Proc([str(exe), "serve", "--config", str(conf)], name="tunnel-tls", log=work / "tunnel.log")
    results: dict[str, dict[str, list[float]]] = {}
    stalls: list[str] = []
    try:
        for port in ports:
            wait_until(lambda p=port: _accepts(p), 15, f"the proxy on port {port}")
        legs = {
            "ws → tunnel → ws": (ports[0], None, "clear/"),
            "wss → tunnel → ws": (ports[1], client_ctx, "clear/"),
            "ws → tunnel → wss": (ports[0], None, "tls/"),
            "wss → tunnel → wss": (ports[1], client_ctx, "tls/"),
        }

        def one_round():
            for name, (port, ctx, path) in legs.items():
                r = results.setdefault(name, {"bulk MB/s": [], "handshakes/s": []})
                try:
                    r["bulk MB/s"].append(bulk(("127.0.0.1", port), ctx, path, total, limit=30 if quick else 120))
                except (Stalled, TimeoutError) as exc:
                    # A stalled exchange is a finding: reported (table, json, proxy log tail),
                    # and the other legs are still measured.
                    stalls.append(f"{name}, bulk: {exc}")
                r["handshakes/s"].append(handshakes(("127.0.0.1", port), ctx, path, hs_seconds))

        benchmark.pedantic(one_round, rounds=rounds, iterations=1)
    finally:
        proxy.stop()
        tls_backend.stop()
        clear.stop()
    medians = {leg: {k: (statistics.median(v) if v else float("nan")) for k, v in r.items()} for leg, r in results.items()}
    base = medians["ws → tunnel → ws"]
    lines = [
        "# TLS legs through the tunnel (async), Python client, one tunnel at a time",
        "",
        f"{rounds} round(s), medians; ratio to the clear-text tunnel.",
        "",
        "| legs | bulk MB/s | handshakes/s |",
        "|---|---|---|",
    ]
    for leg, m in medians.items():
        cells = []
        for key in ("bulk MB/s", "handshakes/s"):
            value = m[key]
            cells.append("stalled" if value != value else f"{value:,.0f} ({value / base[key]:.2f}×)")  # NaN: no measurement
        lines.append(f"| {leg} | {cells[0]} | {cells[1]} |")
    if stalls:
        log = (work / "tunnel.log").read_text(errors="replace").splitlines()[-20:] if (work / "tunnel.log").exists() else []
        lines += ["", "**Stalled exchanges** (no progress before the deadline; a finding to follow up):", ""]
        lines += [f"- {s}" for s in stalls]
        lines += ["", "Last lines of the proxy's log:", "", "```", *log, "```"]
    text = "\n".join(lines) + "\n"
    BUILD.mkdir(parents=True, exist_ok=True)
    (BUILD / "tls.md").write_text(text)
    (BUILD / "tls.json").write_text(json.dumps({"medians": medians, "stalls": stalls}, indent=2))
    print("\n" + text)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False
