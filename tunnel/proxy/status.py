"""``SetHandler server-status``: mod_status's page for tunnel (R111).

An HTML page by default; ``?auto`` anywhere in the query gives httpd's machine-readable
``Key: value`` lines (the keys httpd prints where they mean something here, then
tunnel's own); ``?refresh=N`` adds a ``Refresh`` header (N < 1 means 10, as httpd);
``?notable`` leaves the tables out. The query is searched for these words as httpd
does (a substring test).

With ``ExtendedStatus On`` (the default, as httpd with mod_status loaded) the page has
a row for every live tunnel, its byte counts read from the pump at that moment, and
``?auto`` the totals (Total Accesses, Total kBytes, ...). With ``--workers N`` every
figure is the sum over the workers and the tunnel table lists them all (`cluster`).
What httpd's scoreboard means here: a "worker" is a sync tunnel thread
(MaxTunnelThreads): BusyWorkers are those in use, IdleWorkers the rest.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Generator, Mapping, Sequence
from typing import Any

from ..io.loop import Wait
from . import cluster
from .handler_types import Answer, Request

__all__ = ["serve", "auto_text", "format_uptime"]

_HTTPD_TIME = "%A, %d-%b-%Y %H:%M:%S %Z"  # httpd's DEFAULT_TIME_FORMAT


def format_uptime(seconds: float) -> str:
    """httpd's show_time: " 1 day 2 hours 3 minutes 4 seconds" (zero parts left out)."""
    secs = int(seconds)
    parts = []
    for value, unit in ((secs // 86400, "day"), (secs // 3600 % 24, "hour"), (secs // 60 % 60, "minute"), (secs % 60, "second")):
        if value:
            parts.append(f" {value} {unit}{'' if value == 1 else 's'}")
    return "".join(parts)


def serve(request: Request) -> Generator[Wait, None, Answer]:
    merged = yield from cluster.gather(request.engine)
    query = request.query
    headers: list[tuple[str, str]] = []
    if "refresh" in query:
        after = query[query.index("refresh") + len("refresh") :]
        seconds = 0
        if after.startswith("="):
            digits = after[1:].split("&", 1)[0]
            seconds = int(digits) if digits.isdigit() else 0
        headers.append(("Refresh", str(seconds if seconds >= 1 else 10)))
    if "auto" in query:
        body = auto_text(merged, request.host).encode("latin-1", "replace")
        return Answer(200, "text/plain; charset=ISO-8859-1", body, headers)
    page = _html(merged, request.host, tables="notable" not in query)
    return Answer(200, "text/html; charset=utf-8", page.encode("utf-8"), headers)


def _figures(m: Mapping[str, Any]) -> dict[str, Any]:
    totals = m["totals"]
    uptime = max((w["uptime"] for w in m["workers"] if w["up"]), default=0.0)
    pool = m["pool"]
    opened = m["tunnels"]
    by_strategy: dict[str, int] = {}
    for t in opened:
        by_strategy[t["strategy"]] = by_strategy.get(t["strategy"], 0) + 1
    sent = totals.get("http_out", 0) + totals.get("tunnel_b2c", 0)
    return {
        "uptime": int(uptime),
        "accesses": totals.get("accesses", 0),
        "kbytes": sent // 1024,
        "duration_ms": totals.get("duration_ms", 0),
        "busy": pool.get("busy", 0),
        "idle": max(0, pool.get("max", 0) - pool.get("busy", 0)),
        "open": len(opened),
        "by_strategy": by_strategy,
    }


def auto_text(m: Mapping[str, Any], host: str) -> str:
    """The ``?auto`` report: one ``Key: value`` per line, httpd's keys first."""
    f = _figures(m)
    now = time.time()
    totals = m["totals"]
    lines = [host]
    lines.append(f"ServerVersion: tunnel/{m.get('version', '?')}")
    lines.append(f"ServerMPM: tunnel ({len(m['workers'])} worker process{'es' if len(m['workers']) != 1 else ''})")
    lines.append("Server Built: -")
    lines.append(f"CurrentTime: {time.strftime(_HTTPD_TIME, time.localtime(now))}")
    lines.append(f"RestartTime: {time.strftime(_HTTPD_TIME, time.localtime(m.get('started', now)))}")
    lines.append("ParentServerConfigGeneration: 1")
    lines.append("ParentServerMPMGeneration: 0")
    lines.append(f"ServerUptimeSeconds: {f['uptime']}")
    lines.append(f"ServerUptime:{format_uptime(f['uptime'])}")
    load = os.getloadavg()
    lines.append(f"Load1: {load[0]:.2f}\nLoad5: {load[1]:.2f}\nLoad15: {load[2]:.2f}")
    if m.get("extended", True):
        lines.append(f"Total Accesses: {f['accesses']}")
        lines.append(f"Total kBytes: {f['kbytes']}")
        lines.append(f"Total Duration: {f['duration_ms']}")
        times = os.times()
        lines.append(f"CPUUser: {times.user:g}\nCPUSystem: {times.system:g}")
        lines.append(f"CPUChildrenUser: {times.children_user:g}\nCPUChildrenSystem: {times.children_system:g}")
        lines.append(f"Uptime: {f['uptime']}")
        if f["uptime"] > 0:
            lines.append(f"ReqPerSec: {f['accesses'] / f['uptime']:g}")
            lines.append(f"BytesPerSec: {1024 * f['kbytes'] / f['uptime']:g}")
        if f["accesses"] > 0:
            lines.append(f"BytesPerReq: {1024 * f['kbytes'] / f['accesses']:g}")
            lines.append(f"DurationPerReq: {f['duration_ms'] / f['accesses']:g}")
    lines.append(f"BusyWorkers: {f['busy']}\nGracefulWorkers: 0\nIdleWorkers: {f['idle']}")
    lines.append(f"Processes: {sum(1 for w in m['workers'] if w['up'])}\nStopping: 0")
    lines.append(f"ConnsTotal: {m['connections']}")
    lines.append("ConnsAsyncWaitIO: 0\nConnsAsyncWriting: 0\nConnsAsyncKeepAlive: 0\nConnsAsyncClosing: 0")
    # tunnel's own keys
    lines.append(f"TunnelsOpen: {f['open']}")
    for strategy in ("sync", "async", "sync->async"):
        key = {"sync": "Sync", "async": "Async", "sync->async": "HandedOver"}[strategy]
        lines.append(f"Tunnels{key}: {f['by_strategy'].get(strategy, 0)}")
    lines.append(f"TunnelBytesToBackend: {totals.get('tunnel_c2b', 0)}")
    lines.append(f"TunnelBytesToClient: {totals.get('tunnel_b2c', 0)}")
    lines.append(f"Handshakes: {sum(m['handshakes'].values())}")
    lines.append(f"HandshakesOK: {m['handshakes'].get('101', 0)}")
    lines.append(f"Requests: {sum(m['requests'].values())}")
    lines.append(f"BufferedBytes: {m['buffer'].get('used', 0)}")
    lines.append(f"BufferLimit: {m['buffer'].get('limit', 0)}")
    lines.append(f"WorkersDown: {len(m.get('down', []))}")
    pool = m["pool"]
    lines.append("Scoreboard: " + "W" * pool.get("busy", 0) + "_" * max(0, pool.get("max", 0) - pool.get("busy", 0)))
    return "\n".join(lines) + "\n"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(caption: str, head: tuple[str, ...], rows: Sequence[Sequence[object]], css: str) -> str:
    out = [f"<h2>{_e(caption)}</h2>", f'<table class="{css}"><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>")
    if not rows:
        out.append(f'<tr><td colspan="{len(head)}">none</td></tr>')
    out.append("</table>")
    return "\n".join(out)


def _frames(n: object) -> object:
    """A frame count, or "-" for a tunnel whose frames are not followed (R162)."""
    return "-" if n is None else n


def _html(m: Mapping[str, Any], host: str, *, tables: bool) -> str:
    f = _figures(m)
    totals = m["totals"]
    now = time.time()
    buffer = m["buffer"]
    limit = buffer.get("limit", 0)
    out = [
        "<!DOCTYPE html>",
        f"<html><head><meta charset='utf-8'><title>tunnel status for {_e(host)}</title>",
        "<style>body{font-family:sans-serif} table{border-collapse:collapse;margin-bottom:1em}"
        " td,th{border:1px solid #999;padding:2px 6px;text-align:right} th{background:#ddd}"
        " td:first-child{text-align:left} .down{color:#b00}</style></head><body>",
        f"<h1>tunnel Status for {_e(host)}</h1>",
        "<dl>",
        f"<dt>Server Version: tunnel/{_e(m.get('version', '?'))}</dt>",
        f"<dt>Configuration file: {_e(m.get('config', '-'))}</dt>",
        f"<dt>Current Time: {_e(time.strftime(_HTTPD_TIME, time.localtime(now)))}</dt>",
        f"<dt>Restart Time: {_e(time.strftime(_HTTPD_TIME, time.localtime(m.get('started', now))))}</dt>",
        f"<dt>Server uptime: {_e(format_uptime(f['uptime']).strip() or '0 seconds')}</dt>",
        f"<dt>Worker processes: {sum(1 for w in m['workers'] if w['up'])} up, {len(m.get('down', []))} unreachable</dt>",
    ]
    if m.get("extended", True):
        out.append(f"<dt>Total accesses: {f['accesses']} - Total Traffic: {f['kbytes']} kB - Total Duration: {f['duration_ms']} ms</dt>")
    out += [
        f"<dt id='open'>{f['open']} tunnels open</dt>",
        f"<dt id='pool'>Sync tunnel threads: {f['busy']} busy, {f['idle']} idle (MaxTunnelThreads {m['pool'].get('max', 0)})</dt>",
        f"<dt id='buffer'>Buffered bytes: {buffer.get('used', 0)} of {limit if limit else 'no'} limit (TunnelBufferLimit)</dt>",
        f"<dt id='bytes'>Tunnel bytes: {totals.get('tunnel_c2b', 0)} to backends, {totals.get('tunnel_b2c', 0)} to clients;"
        f" HTTP bytes: {totals.get('http_in', 0)} in, {totals.get('http_out', 0)} out</dt>",
        "</dl>",
    ]
    for gone in m.get("down", []):
        out.append(f"<p class='down'>worker {_e(gone['worker'])} did not answer: {_e(gone['error'])}</p>")
    if tables:
        workers = [(w["worker"], w.get("pid") or "-", "up" if w["up"] else "unreachable", int(w["uptime"])) for w in m["workers"]]
        out.append(_table("Workers", ("Worker", "PID", "State", "Uptime (s)"), workers, "workers"))
        out.append(_table("Tunnels open by strategy", ("Strategy", "Open"), sorted(f["by_strategy"].items()), "strategies"))
        out.append(_table("Handshakes", ("Status", "Count"), sorted(m["handshakes"].items()), "handshakes"))
        out.append(_table("Requests", ("Status", "Count"), sorted(m["requests"].items()), "requests"))
        out.append(_table("Tunnel closes", ("Reason", "Count"), sorted(m["closes"].items()), "closes"))
        if m.get("extended", True):
            rows = [
                (
                    t["id"], t["client"], t["vhost"] or "-", t["path"], t["rewrite"] or t["route"],
                    t["member"] or t["backend"], t["strategy"], f"{t['age']:.1f}", f"{t['idle']:.1f}",
                    t["to_backend"], t["to_client"], _frames(t.get("frames_to_backend")), _frames(t.get("frames_to_client")),
                )
                for t in sorted(m["tunnels"], key=lambda t: (-t["age"], t["id"]))
            ]
            head = ("ID", "Client", "VHost", "Request", "Route", "Backend", "Strategy", "Age (s)", "Idle (s)", "To backend", "To client", "Frames to backend", "Frames to client")
            out.append(_table("Live tunnels", head, rows, "tunnels"))
    out.append("</body></html>")
    return "\n".join(out) + "\n"
