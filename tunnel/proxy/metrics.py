"""``SetHandler metrics``: the Prometheus text format, built with ``prometheus_client``
from the engine's live state at scrape time (R113).

A custom collector turns one merged snapshot (every worker's, `cluster.gather`) into
metric families; nothing is kept in a global registry, so several engines in a process
(the tests, a host embedding the library) never mix their figures, and with
``--workers N`` one scrape covers every worker. Bytes of open tunnels are read from
their pumps when scraped. Labels stay bounded: a route is its rule's ``file:line``, a
close reason its class, a vhost its ServerName.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ..io.loop import Wait
from . import cluster
from .handler_types import Answer, Request
from .stats import HISTOGRAMS

__all__ = ["serve", "render", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Snapshot(Collector):
    def __init__(self, merged: Mapping[str, Any]) -> None:
        self.m = merged

    def collect(self) -> Iterator[Metric]:
        m = self.m
        totals = m["totals"]
        workers = GaugeMetricFamily("tunnel_workers", "Worker processes, by whether they answered this scrape", labels=["state"])
        workers.add_metric(["up"], sum(1 for w in m["workers"] if w["up"]))
        workers.add_metric(["unreachable"], sum(1 for w in m["workers"] if not w["up"]))
        yield workers
        uptime = GaugeMetricFamily("tunnel_uptime_seconds", "Seconds since the oldest worker started")
        uptime.add_metric([], max((w["uptime"] for w in m["workers"] if w["up"]), default=0.0))
        yield uptime

        opened = CounterMetricFamily("tunnel_tunnels_opened", "Tunnels opened (101 sent)", labels=["vhost", "route", "strategy"])
        for vhost, route, strategy, n in m["opened"]:
            opened.add_metric([vhost, route, strategy], n)
        yield opened
        open_now: dict[tuple[str, str, str], int] = {}
        for t in m["tunnels"]:
            key = (t["vhost"], t["route_at"], t["strategy"])
            open_now[key] = open_now.get(key, 0) + 1
        gauge = GaugeMetricFamily("tunnel_tunnels_open", "Tunnels open now", labels=["vhost", "route", "strategy"])
        for key, n in sorted(open_now.items()):
            gauge.add_metric(list(key), n)
        yield gauge

        yield _by_label("tunnel_handshakes", "WebSocket (Upgrade) requests answered, by status", "status", m["handshakes"])
        yield _by_label("tunnel_http_requests", "Plain HTTP requests answered, by status", "status", m["requests"])
        yield _by_label("tunnel_tunnel_closes", "Tunnels closed, by reason", "reason", m["closes"])

        tbytes = CounterMetricFamily("tunnel_tunnel_bytes", "Tunnel bytes (open tunnels included)", labels=["direction"])
        tbytes.add_metric(["to_backend"], totals.get("tunnel_c2b", 0))
        tbytes.add_metric(["to_client"], totals.get("tunnel_b2c", 0))
        yield tbytes
        frames = CounterMetricFamily(
            "tunnel_websocket_frames", "WebSocket frames seen whole, on tunnels whose frames are followed (open ones included)", labels=["direction"]
        )
        frames.add_metric(["to_backend"], totals.get("frames_c2b", 0))
        frames.add_metric(["to_client"], totals.get("frames_b2c", 0))
        yield frames
        hbytes = CounterMetricFamily("tunnel_http_bytes", "Bytes of HTTP requests and answers on client connections (heads included)", labels=["direction"])
        hbytes.add_metric(["in"], totals.get("http_in", 0))
        hbytes.add_metric(["out"], totals.get("http_out", 0))
        yield hbytes

        pool = m["pool"]
        yield _gauge("tunnel_pool_threads_max", "Sync tunnel threads allowed (MaxTunnelThreads, all workers)", pool.get("max", 0))
        yield _gauge("tunnel_pool_threads_busy", "Sync tunnel threads in use", pool.get("busy", 0))
        yield _gauge("tunnel_buffered_bytes", "Bytes buffered in tunnels now", m["buffer"].get("used", 0))
        yield _gauge("tunnel_buffer_limit_bytes", "TunnelBufferLimit (0: none)", m["buffer"].get("limit", 0))
        yield _gauge("tunnel_client_connections", "Client connections open now (tunnels included)", m["connections"])

        status = GaugeMetricFamily("tunnel_balancer_member_status", "1 when the member has the flag (E: error state, Ok: usable)", labels=["balancer", "member", "flag"])
        busy = GaugeMetricFamily("tunnel_balancer_member_busy", "Requests and tunnels on the member now", labels=["balancer", "member"])
        elected = CounterMetricFamily("tunnel_balancer_member_elected", "Times the member was chosen", labels=["balancer", "member"])
        errors = CounterMetricFamily("tunnel_balancer_member_errors", "Times the member was put in error state", labels=["balancer", "member"])
        lf = GaugeMetricFamily("tunnel_balancer_member_loadfactor", "The member's loadfactor", labels=["balancer", "member"])
        mbytes = CounterMetricFamily("tunnel_balancer_member_bytes", "Bytes exchanged with the member (open tunnels included)", labels=["balancer", "member", "direction"])
        for name, view in sorted(m["balancers"].items()):
            for row in view["members"]:
                labels = [name, row["name"]]
                for flag in "DSHRNIE":
                    status.add_metric([*labels, flag], 1 if flag in row["status"] else 0)
                status.add_metric([*labels, "Ok"], 1 if row["usable"] else 0)
                busy.add_metric(labels, row["busy"])
                elected.add_metric(labels, row["elected"])
                errors.add_metric(labels, row["errors"])
                lf.add_metric(labels, row["loadfactor"])
                mbytes.add_metric([*labels, "to_member"], row["transferred"])
                mbytes.add_metric([*labels, "from_member"], row["read"])
        yield from (status, busy, elected, errors, lf, mbytes)

        for name, (_, help_text) in HISTOGRAMS.items():
            data = m["histograms"].get(name)
            if data is None:
                continue
            buckets, running = [], 0
            for bound, count in zip([*data["bounds"], float("inf")], data["counts"], strict=True):
                running += count
                buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
            fam = HistogramMetricFamily(f"tunnel_{name}_seconds", help_text)
            fam.add_metric([], buckets, data["sum"])
            yield fam


def _by_label(name: str, help_text: str, label: str, values: Mapping[str, int]) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, help_text, labels=[label])
    for key, n in sorted(values.items()):
        fam.add_metric([key], n)
    return fam


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(name, help_text)
    fam.add_metric([], value)
    return fam


def render(merged: Mapping[str, Any]) -> bytes:
    """The Prometheus text exposition of one merged snapshot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(merged))
    return generate_latest(registry)


def serve(request: Request) -> Generator[Wait, None, Answer]:
    merged = yield from cluster.gather(request.engine)
    return Answer(200, CONTENT_TYPE, render(merged))
