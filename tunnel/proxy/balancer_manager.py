"""``SetHandler balancer-manager``: mod_proxy_balancer's manager page and form (R112).

The same parameters, checks and page links as httpd's balancer_handler, so scripts
written for httpd drive tunnel's unchanged:

* a GET reads only ``b``, ``w``, ``nonce`` and ``xml`` from the query; a POST reads
  every parameter from its form body (``application/x-www-form-urlencoded``), and
  not the query; names and values are %-decoded (values twice, as httpd);
* parameters from a request without a ``Referer`` whose host is the host the request
  names are dropped ("cross-site"), and the page is shown as if none were sent;
* changes are made only when ``b`` names a balancer and ``nonce`` equals its nonce
  (``ProxySet nonce=None`` makes it empty: then nothing can be changed, as in httpd);
* member fields: ``w_lf`` (loadfactor 1..100), ``w_ls`` (lbset 0..99), ``w_wr``
  (route), ``w_rr`` (redirect), ``w_status_I``/``_N``/``_D``/``_H``/``_R``/``_S`` (1 sets
  the flag, 0 clears it); balancer fields: ``b_lbm``, ``b_tmo`` (0..7200 s), ``b_max``
  (0..99), ``b_sforce``, ``b_ss`` ("-" clears it). A value out of range is ignored as
  httpd ignores it, and the page says so; what tunnel has no use for (health-check
  fields, ``w_status_C``, adding a member with ``b_nwrkr``) is ignored and named.
* ``xml`` gives httpd's XML document (``httpd:manager``) instead of the page.

A change is applied in this worker and sent to every sibling (`cluster.push`); the page
says which workers took it.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Generator, Mapping
from typing import Any, Optional
from urllib.parse import quote, unquote, urlsplit

from ..io.loop import Wait
from ..protocol.balancer import LBMETHODS, BadChange
from . import cluster
from .failover import peer_ip
from .handler_types import Answer, Request

__all__ = ["serve", "parse_params", "form_change"]

log = logging.getLogger("tunnel.error")

#: The query parameters a GET may carry (httpd's "allowed" list).
GET_PARAMS = ("w", "b", "nonce", "xml")
#: httpd's worker status words, in its order (ap_proxy_parse_wstatus).
_STATUS_WORDS = (("I", "Ign "), ("N", "Drn "), ("D", "Dis "), ("S", "Stop "), ("E", "Err "), ("H", "Stby "), ("R", "Spar "))
_IGNORED_FIELDS = {
    "w_hm": "health checks", "w_he": "health checks", "w_hi": "health checks",
    "w_hp": "health checks", "w_hf": "health checks", "w_hu": "health checks",
    "w_status_C": "health checks", "b_nwrkr": "adding members (members come from the configuration)",
    "b_wyes": "adding members (members come from the configuration)",
}


def parse_params(text: str, allowed: Optional[tuple[str, ...]] = None) -> dict[str, str]:
    """httpd's push2table: ``&``-separated ``key=value``, key %-decoded once and the
    value twice; a later key replaces an earlier one; ``allowed`` filters the keys."""
    params: dict[str, str] = {}
    for piece in text.split("&"):
        if not piece:
            continue
        key, _, value = piece.partition("=")
        key, value = unquote(key), unquote(unquote(value))
        if allowed is None or key in allowed:
            params[key] = value
    return params


def _atoi(text: str) -> int:
    """C's atoi: optional blanks and sign, then digits; anything else ends it (0 if none)."""
    m = re.match(r"\s*([+-]?\d+)", text)
    return int(m.group(1)) if m else 0


def _ranged(params: Mapping[str, str], field: str, key: str, top: int, change: dict[str, Any], notes: list[str]) -> None:
    """An integer field httpd takes from 0 to ``top`` (atoi), dropped with a note when out of range."""
    if field not in params:
        return
    value = _atoi(params[field])
    if 0 <= value <= top:
        change[key] = value
    else:
        notes.append(f"{field}={params[field]!r} ignored: expected 0..{top}")


def form_change(params: Mapping[str, str], balancer: str, member: Optional[str], current_lbmethod: str) -> tuple[dict[str, Any], list[str]]:
    """The change the form asks for, read as httpd reads it, and the notes on what was
    ignored. Out-of-range values are dropped, as httpd drops them."""
    change: dict[str, Any] = {"balancer": balancer}
    notes: list[str] = []
    if member is not None:
        change["member"] = member
        if "w_lf" in params:
            try:
                lf = float(params["w_lf"])
            except ValueError:
                lf = 0.0
            if 1 <= lf <= 100 and lf == int(lf):
                change["loadfactor"] = int(lf)
            else:
                notes.append(f"w_lf={params['w_lf']!r} ignored: tunnel takes a whole loadfactor from 1 to 100")
        if "w_wr" in params:
            change["route"] = params["w_wr"] if len(params["w_wr"]) < 64 else ""
        if "w_rr" in params:
            change["redirect"] = params["w_rr"] if len(params["w_rr"]) < 64 else ""
        flags = {flag: _atoi(params[f"w_status_{flag}"]) != 0 for flag in "INDHRS" if f"w_status_{flag}" in params}
        if flags:
            change["flags"] = flags
        _ranged(params, "w_ls", "lbset", 99, change, notes)
    if "b_lbm" in params:
        if params["b_lbm"] in LBMETHODS:
            if params["b_lbm"] != current_lbmethod:
                change["lbmethod"] = params["b_lbm"]
        else:
            notes.append(f"b_lbm={params['b_lbm']!r} ignored: expected one of {', '.join(LBMETHODS)}")
    _ranged(params, "b_tmo", "timeout", 7200, change, notes)
    _ranged(params, "b_max", "maxattempts", 99, change, notes)
    if "b_sforce" in params:
        change["nofailover"] = _atoi(params["b_sforce"]) != 0
    if params.get("b_ss"):
        value = params["b_ss"].replace(" ", "")
        change["stickysession"] = [] if value == "-" else value.split("|", 1)
    for key, what in _IGNORED_FIELDS.items():
        if key in params and (key != "b_wyes" or "b_nwrkr" not in params):
            notes.append(f"{key} ignored: tunnel has no {what}")
    return change, notes


def serve(request: Request) -> Generator[Wait, None, Answer]:
    engine = request.engine
    head = request.head
    if head.method == "POST":
        params = parse_params(request.body.decode("latin-1"))
    else:
        params = parse_params(request.query, GET_PARAMS) if request.query else {}
    notes: list[str] = []
    referer = head.get("referer")
    if params and not _safe_referer(referer, request.host):
        log.error("balancer-manager: ignoring parameters from %s: cross-site access (Referer %s, host %s)",
                  peer_ip(request.ex.peer), referer or "none", request.host)
        notes.append(f"parameters ignored: the Referer ({referer or 'none'}) does not name this host ({request.host})")
        params = {}
    balancers = engine.config.balancers
    bsel = params.get("b") if params.get("b") in balancers else None
    wsel: Optional[str] = None
    if bsel is not None and params.get("w"):
        try:
            wsel = engine.balancer(bsel).member_named(params["w"]).name
        except KeyError as exc:
            notes.append(str(exc.args[0]))
    applied: list[str] = []
    workers: list[dict[str, Any]] = []
    nonce = engine.nonce(bsel) if bsel is not None else ""
    if bsel is not None and nonce and params.get("nonce") == nonce:
        change, more = form_change(params, bsel, wsel, engine.balancer(bsel).balancer.lbmethod)
        notes += more
        try:
            applied = cluster.apply_change(engine, change)
        except (KeyError, BadChange) as exc:
            notes.append(f"nothing changed: {exc.args[0] if isinstance(exc, KeyError) else exc}")
        else:
            if applied:
                log.warning("balancer-manager: %s changed %s", peer_ip(request.ex.peer), "; ".join(applied))
                workers = yield from cluster.push(engine, change)
    elif bsel is not None and any(k not in GET_PARAMS for k in params):
        notes.append("nothing changed: the nonce is missing or wrong")
    merged = yield from cluster.gather(engine)
    views = merged["balancers"]
    if "xml" in params:
        return Answer(200, "text/xml; charset=utf-8", _xml(views).encode("utf-8"))
    page = _page(request, views, bsel, wsel, applied, workers, notes)
    return Answer(200, "text/html; charset=utf-8", page.encode("utf-8"))


def _safe_referer(referer: Optional[str], host: str) -> bool:
    """httpd's safe_referer: the Referer parses as a URL with a host name, and that name
    is the request's host (case-insensitive)."""
    if not referer:
        return False
    try:
        name = urlsplit(referer.strip()).hostname
    except ValueError:
        return False
    return name is not None and name != "" and name.lower() == host.strip("[]").lower()


def status_words(row: Mapping[str, Any]) -> str:
    """A member's status as httpd's page writes it ("Init Dis ", "Init Drn Ok ")."""
    words = "Init " + "".join(word for flag, word in _STATUS_WORDS if flag in row["status"])
    return words + ("Ok " if row["usable"] else "")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _page(
    request: Request,
    views: Mapping[str, Any],
    bsel: Optional[str],
    wsel: Optional[str],
    applied: list[str],
    workers: list[dict[str, Any]],
    notes: list[str],
) -> str:
    path = quote(request.path)
    out = [
        "<!DOCTYPE html>",
        "<html><head><meta charset='utf-8'><title>Balancer Manager</title>",
        "<style>body{font-family:sans-serif} table{border-collapse:collapse;margin-bottom:1em}"
        " td,th{border:1px solid #999;padding:2px 6px;text-align:center} th{background:#ddd}"
        " .note{color:#b00} .applied{color:#060}</style></head><body>",
        f"<h1>Load Balancer Manager for {_e(request.host)}</h1>",
        "<dl><dt>Balancer changes will NOT be persisted on restart.</dt></dl>",
    ]
    for line in applied:
        out.append(f"<p class='applied'>changed: {_e(line)}</p>")
    for row in workers:
        state = "applied" if row["ok"] else f"NOT applied: {row.get('error')}"
        out.append(f"<p class='{'applied' if row['ok'] else 'note'}'>worker {_e(row['worker'])}: {_e(state)}</p>")
    for line in notes:
        out.append(f"<p class='note'>{_e(line)}</p>")
    for name, view in views.items():
        nonce = view["nonce"]
        out.append(f"<hr><h3>LoadBalancer Status for <a href=\"{path}?b={_e(quote(name))}&amp;nonce={_e(nonce)}\">balancer://{_e(name)}</a></h3>")
        sticky = " | ".join(view["stickysession"]) or "(None)"
        out.append(
            "<table class='balancer'><tr><th>StickySession</th><th>DisableFailover</th><th>Timeout</th>"
            "<th>FailoverAttempts</th><th>Method</th></tr>"
            f"<tr><td>{_e(sticky)}</td><td>{'On' if view['nofailover'] else 'Off'}</td><td>{int(view['timeout'])}</td>"
            f"<td>{view['maxattempts']}</td><td>{_e(view['lbmethod'])}</td></tr></table>"
        )
        out.append(
            f"<table class='members' data-balancer='{_e(name)}'><tr><th>Worker URL</th><th>Route</th><th>RouteRedir</th>"
            "<th>Factor</th><th>Set</th><th>Status</th><th>Elected</th><th>Busy</th><th>Load</th>"
            "<th>Errors</th><th>To</th><th>From</th></tr>"
        )
        for m in view["members"]:
            link = f"{path}?b={quote(name)}&amp;w={quote(m['name'], safe='')}&amp;nonce={_e(nonce)}"
            out.append(
                f"<tr data-member='{_e(m['name'])}'><td><a href=\"{link}\">{_e(m['name'])}</a></td><td>{_e(m['route'])}</td>"
                f"<td>{_e(m['redirect'])}</td><td>{m['loadfactor']:.2f}</td><td>{m['lbset']}</td>"
                f"<td class='status'>{_e(status_words(m))}</td><td class='elected'>{m['elected']}</td>"
                f"<td class='busy'>{m['busy']}</td><td>{m['lbstatus']}</td><td class='errors'>{m['errors']}</td>"
                f"<td class='to'>{m['transferred']}</td><td class='from'>{m['read']}</td></tr>"
            )
        out.append("</table>")
    out.append("<hr>")
    if bsel is not None and bsel in views:
        view = views[bsel]
        nonce = view["nonce"]
        member = next((m for m in view["members"] if m["name"] == wsel), None)
        if member is not None:
            out += _member_form(path, bsel, member, nonce)
        else:
            out += _balancer_form(path, bsel, view, nonce)
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _radio(name: str, on: bool) -> str:
    return (
        f"<td><label for='{name}1'>On</label> <input name='{name}' id='{name}1' value='1' type=radio{' checked' if on else ''}>"
        f" <br/> <label for='{name}0'>Off</label> <input name='{name}' id='{name}0' value='0' type=radio{'' if on else ' checked'}></td>"
    )


def _member_form(path: str, bsel: str, m: Mapping[str, Any], nonce: str) -> list[str]:
    flags = m["status"]
    return [
        f"<h3>Edit worker settings for {_e(m['name'])}</h3>",
        f"<form method='POST' enctype='application/x-www-form-urlencoded' action=\"{path}\" id='worker-form'>",
        f"<table><tr><td>Load factor:</td><td><input name='w_lf' id='w_lf' type=text value='{m['loadfactor']:.2f}'></td></tr>",
        f"<tr><td>LB Set:</td><td><input name='w_ls' id='w_ls' type=text value='{m['lbset']}'></td></tr>",
        f"<tr><td>Route:</td><td><input name='w_wr' id='w_wr' type=text value=\"{_e(m['route'])}\"></td></tr>",
        f"<tr><td>Route Redirect:</td><td><input name='w_rr' id='w_rr' type=text value=\"{_e(m['redirect'])}\"></td></tr>",
        "<tr><td>Status:</td><td><table><tr><th>Ignore Errors</th><th>Draining Mode</th><th>Disabled</th>"
        "<th>Hot Standby</th><th>Hot Spare</th><th>Stopped</th></tr><tr>"
        + "".join(_radio(f"w_status_{flag}", flag in flags) for flag in "INDHRS")
        + "</tr></table></td></tr>",
        "<tr><td colspan='2'><input type=submit value='Submit' id='submit'></td></tr></table>",
        f"<input type=hidden name='w' id='w' value=\"{_e(m['name'])}\">",
        f"<input type=hidden name='b' id='b' value=\"{_e(bsel)}\">",
        f"<input type=hidden name='nonce' id='nonce' value='{_e(nonce)}'>",
        "</form>",
    ]


def _balancer_form(path: str, bsel: str, view: Mapping[str, Any], nonce: str) -> list[str]:
    options = "".join(
        f"<option value='{name}'{' selected' if name == view['lbmethod'] else ''}>{name}</option>" for name in LBMETHODS
    )
    return [
        f"<h3>Edit balancer settings for balancer://{_e(bsel)}</h3>",
        f"<form method='POST' enctype='application/x-www-form-urlencoded' action=\"{path}\" id='balancer-form'>",
        f"<table><tr><td>LBmethod:</td><td><select name='b_lbm' id='b_lbm'>{options}</select></td></tr>",
        f"<tr><td>Timeout:</td><td><input name='b_tmo' id='b_tmo' type=text value='{int(view['timeout'])}'></td></tr>",
        f"<tr><td>Failover Attempts:</td><td><input name='b_max' id='b_max' type=text value='{view['maxattempts']}'></td></tr>",
        "<tr><td>Disable Failover:</td>" + _radio("b_sforce", view["nofailover"]) + "</tr>",
        f"<tr><td>Sticky Session:</td><td><input name='b_ss' id='b_ss' size=64 type=text value=\"{_e('|'.join(view['stickysession']))}\">"
        " (Use '-' to delete)</td></tr>",
        "<tr><td colspan=2><input type=submit value='Submit' id='submit'></td></tr></table>",
        f"<input type=hidden name='b' id='b' value=\"{_e(bsel)}\">",
        f"<input type=hidden name='nonce' id='nonce' value='{_e(nonce)}'>",
        "</form>",
    ]


def _xml(views: Mapping[str, Any]) -> str:
    x = html.escape
    out = ["<?xml version='1.0' encoding='UTF-8' ?>", "<httpd:manager xmlns:httpd='http://httpd.apache.org'>", "  <httpd:balancers>"]
    for name, view in views.items():
        out += ["    <httpd:balancer>", f"      <httpd:name>balancer://{x(name)}</httpd:name>", f"      <httpd:nonce>{x(view['nonce'])}</httpd:nonce>"]
        if view["stickysession"]:
            out.append(f"      <httpd:stickysession>{x('|'.join(view['stickysession']))}</httpd:stickysession>")
            out.append(f"      <httpd:nofailover>{'On' if view['nofailover'] else 'Off'}</httpd:nofailover>")
        out.append(f"      <httpd:timeout>{int(view['timeout'])}</httpd:timeout>")
        out.append(f"      <httpd:maxattempts>{view['maxattempts']}</httpd:maxattempts>")
        out.append(f"      <httpd:lbmethod>{x(view['lbmethod'])}</httpd:lbmethod>")
        out.append("      <httpd:workers>")
        for m in view["members"]:
            split = urlsplit(m["name"].rpartition("|")[2])
            out += [
                "        <httpd:worker>",
                f"          <httpd:name>{x(m['name'])}</httpd:name>",
                f"          <httpd:scheme>{x(split.scheme)}</httpd:scheme>",
                f"          <httpd:hostname>{x(split.hostname or '')}</httpd:hostname>",
                f"          <httpd:loadfactor>{m['loadfactor']:.2f}</httpd:loadfactor>",
                f"          <httpd:port>{split.port or (443 if split.scheme in ('wss', 'https') else 80)}</httpd:port>",
                f"          <httpd:status>{x(status_words(m))}</httpd:status>",
                f"          <httpd:lbstatus>{m['lbstatus']}</httpd:lbstatus>",
                f"          <httpd:transferred>{m['transferred']}</httpd:transferred>",
                f"          <httpd:read>{m['read']}</httpd:read>",
                f"          <httpd:elected>{m['elected']}</httpd:elected>",
                f"          <httpd:route>{x(m['route'])}</httpd:route>",
                f"          <httpd:redirect>{x(m['redirect'])}</httpd:redirect>",
                f"          <httpd:busy>{m['busy']}</httpd:busy>",
                f"          <httpd:lbset>{m['lbset']}</httpd:lbset>",
                f"          <httpd:errors>{m['errors']}</httpd:errors>",
                "        </httpd:worker>",
            ]
        out += ["      </httpd:workers>", "    </httpd:balancer>"]
    out += ["  </httpd:balancers>", "</httpd:manager>"]
    return "\n".join(out) + "\n"
