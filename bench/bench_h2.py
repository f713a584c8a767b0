"""WebSockets over HTTP/2 (RFC 8441) next to WebSockets over TLS HTTP/1.1, through the
same ``tunnel serve`` process (async) to the same backend: bulk throughput through one
tunnel, one tunnel's round-trip latency, and WebSockets opened per second (HTTP/2: new
streams on one connection; HTTP/1.1: a TLS connection each). When HAProxy is installed
(it has RFC 8441 on its HTTP/2 frontends since 2.4), the same figures through HAProxy:
a TLS frontend with ``alpn h2,http/1.1`` and an HTTP/1.1 backend, the same echo server,
the same certificate and the same stream window (1 MiB), so the two proxies are read
side by side.

The backend is the project's raw echo server (it answers the proxy's own
Sec-WebSocket-Key, which the C backend cannot); the clients are Python: h2 over
``ssl`` for HTTP/2 (tests/support/h2client.py), the project's ``TLSStream`` for
HTTP/1.1. Figures are bounded by the Python clients; the ratios compare the two paths
through the proxy. Reports: ``bench/build/h2.{json,md}``. Nothing is asserted.
"""

from __future__ import annotations

import json
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trustme

from tests.support.h2client import H2Client
from tunnel.echo import EchoServer

from .bench_tls import REQUEST, WOULD_BLOCK, _accepts, _open, _read_head, _recv_exactly, _send_all, _wait, bulk
from .harness import BUILD, PEER_WORKERS, Proc, find_peer, peer_version, wait_until

#: h2 bulk: the most bytes sent and not yet echoed back. Without a bound the client
#: once stalled for good through HAProxy (16 MiB sent, 0.6 MiB echoed, its window shut);
#: 8 MiB keeps both proxies' pipelines full.
IN_FLIGHT = 8 << 20


def _h2_tunnel(client: H2Client) -> int:
    sid = client.connect_ws("/ws/")
    state = client.response(sid)
    if state.status != 200:
        raise ConnectionError(f"extended CONNECT answered {state.status}")
    return sid


def h2_bulk(addr, ctx, total: int) -> float:
    """MB/s of ``total`` bytes sent and echoed back through one stream."""
    with H2Client(addr, ctx) as client:
        sid = _h2_tunnel(client)
        state = client.streams[sid]
        chunk = b"\xa5" * (1 << 16)
        sent = 0
        started = time.monotonic()
        deadline = started + 60
        while state.received < total:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"h2 bulk stalled: {sent} sent, {state.received} echoed, stream window "
                    f"{client.conn.local_flow_control_window(sid)}, connection window "
                    f"{client.conn.outbound_flow_control_window}"
                )
            window = min(client.conn.local_flow_control_window(sid), client.conn.max_outbound_frame_size)
            # At most IN_FLIGHT bytes not yet echoed (see there).
            if sent < total and window > 0 and sent - state.received < IN_FLIGHT:
                n = min(window, total - sent, len(chunk))
                client.conn.send_data(sid, chunk[:n])
                client._flush()
                sent += n
                client.pump(0)
            else:
                client.pump(0.05)
            state.data.clear()
        return total / (time.monotonic() - started) / 1e6


def h2_latency(addr, ctx, rounds: int) -> float:
    """Median µs of a 32-byte round trip through one stream."""
    with H2Client(addr, ctx) as client:
        sid = _h2_tunnel(client)
        state = client.streams[sid]
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            client.conn.send_data(sid, b"x" * 32)
            client._flush()
            client.wait(lambda: len(state.data) >= 32, 10, "echo")
            state.data.clear()
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e6


def h1_latency(addr, ctx, rounds: int) -> float:
    deadline = time.monotonic() + 60
    end = _open(addr, ctx, deadline)
    _send_all(end, REQUEST.format(path="ws/").encode(), deadline)
    _read_head(end, deadline)
    buf = bytearray(4096)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        _send_all(end, b"x" * 32, deadline)
        have = 0
        while have < 32:
            try:
                n = end.recv_into(buf)
                if n == 0:
                    raise ConnectionError("closed early")
                have += n
            except WOULD_BLOCK:
                _wait(end, False, deadline)
        times.append(time.perf_counter() - t)
    end.close()
    return statistics.median(times) * 1e6


def h2_opens(addr, ctx, seconds: float) -> float:
    """WebSockets opened, echoed 4 bytes and ended per second, all on one connection."""
    done = 0
    with H2Client(addr, ctx) as client:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            sid = _h2_tunnel(client)
            state = client.streams[sid]
            client.conn.send_data(sid, b"ping", end_stream=True)
            client._flush()
            client.wait(lambda s=state: len(s.data) >= 4, 10, "echo")
            client.complete(sid)
            del client.streams[sid]
            done += 1
        return done / (time.monotonic() - started)


def h1_opens(addr, ctx, seconds: float) -> float:
    """The same over TLS HTTP/1.1: a TLS connection per WebSocket."""
    deadline = time.monotonic() + seconds + 60
    done = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        end = _open(addr, ctx, deadline)
        _send_all(end, REQUEST.format(path="ws/").encode(), deadline)
        rest = _read_head(end, deadline)
        _send_all(end, b"ping", deadline)
        _recv_exactly(end, 4, len(rest), deadline)
        end.close()
        done += 1
    return done / (time.monotonic() - started)


def _haproxy(work: Path, pem: Path, backend_port: int) -> tuple[Proc, int]:
    """HAProxy with a TLS frontend offering h2 and http/1.1, an HTTP/1.1 backend."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    cfg = work / "haproxy.cfg"
    cfg.write_text(f"""
global
    nbthread {PEER_WORKERS}
    tune.h2.initial-window-size 1048576
    pidfile {work}/haproxy.pid

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 3600s

frontend fe
    bind 127.0.0.1:{port} ssl crt {pem} alpn h2,http/1.1
    default_backend be

backend be
    server s1 127.0.0.1:{backend_port}
""")
    binary = find_peer("haproxy") or "haproxy"
    return Proc([binary, "-db", "-f", str(cfg)], name="haproxy-h2", log=work / "haproxy.log"), port


def bench_ws_over_h2(benchmark, request):
    quick = request.config.getoption("--bench-mode") == "quick"
    rounds = 1 if quick else 3
    total = (16 if quick else 64) << 20
    seconds = 1.5 if quick else 4.0
    pings = 300 if quick else 2000
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    work = Path(tempfile.mkdtemp(prefix="bench-h2-"))
    pem = work / "proxy.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    backend = EchoServer("127.0.0.1", 0, raw=True).start()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    conf = work / "tunnel.conf"
    conf.write_text(
        f"Listen 127.0.0.1:{port} https\nSSLEngine On\nSSLCertificateFile {pem}\n"
        "Protocols h2 http/1.1\nH2WebSockets On\nH2WindowSize 1048576\n"
        "ProxyWebsocketAsync On\nLogLevel warn\n"
        f"ProxyPass /ws/ ws://127.0.0.1:{backend.address[1]}/\n"
    )
    exe = Path(sys.executable).with_name("tunnel")
    proxy = Proc([str(exe), "serve", "--config", str(conf)], name="tunnel-h2", log=work / "tunnel.log")

    def ctx(alpn: str) -> ssl.SSLContext:
        c = ssl.create_default_context()
        ca.configure_trust(c)
        c.set_alpn_protocols([alpn])
        return c

    proxies = {"tunnel": ("127.0.0.1", port)}
    haproxy = None
    skipped = ""
    if find_peer("haproxy"):
        haproxy, haproxy_port = _haproxy(work, pem, backend.address[1])
        proxies["HAProxy"] = ("127.0.0.1", haproxy_port)
    else:
        skipped = "HAProxy is not installed (make bench-peers): its rows are left out."
    stalls: list[str] = []
    results: dict[str, dict[str, list[float]]] = {
        f"{name}: {path}": {} for name in proxies for path in ("wss over HTTP/1.1", "ws over HTTP/2")
    }
    try:
        for name, (_, p) in proxies.items():
            wait_until(lambda p=p: _accepts(p), 15, f"{name} to listen")

        def one_round() -> None:
            for name, addr in proxies.items():
                h1, h2r = results[f"{name}: wss over HTTP/1.1"], results[f"{name}: ws over HTTP/2"]
                h1.setdefault("bulk MB/s", []).append(bulk(addr, ctx("http/1.1"), "ws/", total))
                try:
                    h2r.setdefault("bulk MB/s", []).append(h2_bulk(addr, ctx("h2"), total))
                except TimeoutError as exc:
                    if name == "tunnel":
                        raise  # our own stall is a failure
                    # A peer's (HAProxy 2.6 sometimes stops echoing an h2 WebSocket in
                    # bulk): reported, not a failure of tunnel's benchmark.
                    h2r.setdefault("bulk MB/s", []).append(float("nan"))
                    stalls.append(f"{name}: {exc}")
                h1.setdefault("1-tunnel RTT µs", []).append(h1_latency(addr, ctx("http/1.1"), pings))
                h2r.setdefault("1-tunnel RTT µs", []).append(h2_latency(addr, ctx("h2"), pings))
                h1.setdefault("WebSockets opened/s", []).append(h1_opens(addr, ctx("http/1.1"), seconds))
                h2r.setdefault("WebSockets opened/s", []).append(h2_opens(addr, ctx("h2"), seconds))

        benchmark.pedantic(one_round, rounds=rounds, iterations=1)
    finally:
        proxy.stop()
        if haproxy is not None:
            haproxy.stop()
        backend.stop()
    def median(values: list[float]) -> float:
        kept = [v for v in values if v == v]  # NaN: a peer's stalled round
        return statistics.median(kept) if kept else float("nan")

    medians = {path: {k: median(v) for k, v in r.items()} for path, r in results.items()}
    keys = ("bulk MB/s", "1-tunnel RTT µs", "WebSockets opened/s")
    lines = [
        "# WebSockets over HTTP/2 (RFC 8441) and over TLS HTTP/1.1, tunnel async, Python clients",
        "",
        f"{rounds} round(s), medians; H2WindowSize 1048576 (HAProxy: tune.h2.initial-window-size 1048576, nbthread {PEER_WORKERS}).",
        "HTTP/1.1 opens a TLS connection per WebSocket, HTTP/2 a stream on one connection.",
        f"HAProxy: {peer_version('haproxy') or '-'}. {skipped}".rstrip(),
        *(f"Stalled (not counted): {stall}" for stall in stalls),
        "",
        "| path | " + " | ".join(keys) + " |",
        "|---|---|---|---|",
    ]
    for path, m in medians.items():
        lines.append(f"| {path} | " + " | ".join(f"{m[k]:,.0f}" for k in keys) + " |")
    text = "\n".join(lines) + "\n"
    BUILD.mkdir(parents=True, exist_ok=True)
    (BUILD / "h2.md").write_text(text)
    (BUILD / "h2.json").write_text(json.dumps({"medians": medians}, indent=2))
    print("\n" + text)
