"""``tunnel ctl``: talk to a running instance over its control socket (R117).

``tunnel ctl --config FILE status|tunnels|member|drain|undrain ...`` finds the socket the way ``serve``
made it (the file's ``TunnelControlSocket``, else the default under the run directory),
checks it is a socket of this user with mode 0600, sends one request and prints the
answer: a table by default, JSON with ``--json``. Any problem (no instance, a socket
with the wrong owner or mode, an unknown balancer or member, a bad value) is one line on
stderr and exit status 1.

Each subcommand is one click command here and one operation in
`tunnel.proxy.cluster.OPS`; ``close ID`` and the lifecycle commands are added the same
way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

import click

from ..config import Config, ConfigError
from ..proxy.control import ControlError, ask_blocking, check_socket, default_control_socket
from ..proxy.status import auto_text
from .lifecycle import LIFECYCLE_COMMANDS

__all__ = ["ctl", "CtlContext"]

#: ``--status`` words: a flag letter, optionally after + (set, the default) or - (clear);
#: "drain" is N; E puts the member in error state (-E takes it out).
_FLAG_WORDS = {"drain": "N"}
_FLAGS = "DHSENIR"


def _socket_path(config_file: Optional[str], socket_path: Optional[str]) -> str:
    if socket_path:
        return socket_path
    if not config_file:
        raise click.UsageError("give --config FILE (the instance's configuration) or --socket PATH")
    try:
        config = Config.from_file(config_file)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if config.control_socket == "":
        raise click.ClickException(f"{config_file} has TunnelControlSocket none: the instance has no control socket")
    return config.control_socket or default_control_socket(config_file)


@dataclass
class CtlContext:
    """What every ``ctl`` subcommand gets (``ctx.obj``): the configuration file, and the
    control socket (found from it on first use, so that the lifecycle commands work
    with a file that no longer parses)."""

    config_file: Optional[str]
    socket_path: Optional[str] = None
    timeout: float = 10.0

    def socket(self) -> str:
        if self.socket_path is None:
            self.socket_path = _socket_path(self.config_file, None)
        return self.socket_path


def _request(ctx: click.Context, request: dict[str, Any]) -> dict[str, Any]:
    obj: CtlContext = ctx.obj
    path = obj.socket()
    try:
        check_socket(path)
        answer = ask_blocking(path, request, timeout=obj.timeout)
    except ControlError as exc:
        raise click.ClickException(str(exc)) from None
    if not answer.get("ok"):
        raise click.ClickException(str(answer.get("error") or "the instance refused the request"))
    return answer


@click.group()
@click.option("--config", "-c", "config_file", type=click.Path(dir_okay=False), help="The configuration file the instance serves.")
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False), help="The control socket (instead of finding it from --config).")
@click.option("--timeout", type=click.FloatRange(0.1, 300), default=10.0, show_default=True, help="Seconds to wait for the answer.")
@click.pass_context
def ctl(ctx: click.Context, config_file: Optional[str], socket_path: Optional[str], timeout: float) -> None:
    """Ask a running instance what is open, change a balancer member, or stop or
    restart it (graceful, graceful-stop, stop, restart: through its PidFile)."""
    ctx.obj = CtlContext(config_file, socket_path, timeout)


@ctl.command()
@click.option("--json", "as_json", is_flag=True, help="JSON instead of Key: value lines.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """The figures of server-status?auto, every worker's added up."""
    merged = _request(ctx, {"op": "status"})["status"]
    if as_json:
        shown = {k: v for k, v in merged.items() if k != "tunnels"}  # `ctl tunnels` lists them
        shown["tunnels_open"] = len(merged["tunnels"])
        click.echo(json.dumps(shown, indent=2, sort_keys=True))
        return
    click.echo(auto_text(merged, merged.get("server_name", "tunnel")), nl=False)


_COLUMNS = (
    ("ID", "id"), ("CLIENT", "client"), ("VHOST", "vhost"), ("PATH", "path"), ("ROUTE", "route"),
    ("BACKEND", "backend"), ("STRATEGY", "strategy"), ("AGE", "age"), ("IDLE", "idle"),
    ("TO_BACKEND", "to_backend"), ("TO_CLIENT", "to_client"),
)


@ctl.command()
@click.option("--route", metavar="R", help="Only the tunnels of this route: its file:line, or its path.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@click.pass_context
def tunnels(ctx: click.Context, route: Optional[str], as_json: bool) -> None:
    """Every open tunnel: client, route, backend, age, idle time, bytes each way."""
    answer = _request(ctx, {"op": "tunnels", "route": route})
    rows = answer["tunnels"]
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
    else:
        cells = [[h for h, _ in _COLUMNS]]
        for row in sorted(rows, key=lambda r: r["id"]):
            cells.append([f"{row[k]:.1f}" if k in ("age", "idle") else str(row[k] or "-") for _, k in _COLUMNS])
        widths = [max(len(r[i]) for r in cells) for i in range(len(_COLUMNS))]
        for r in cells:
            click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    for gone in answer.get("down", []):
        click.echo(f"warning: worker {gone['worker']} did not answer: {gone['error']}", err=True)


def _flag_changes(values: tuple[str, ...]) -> tuple[dict[str, bool], Optional[bool]]:
    flags: dict[str, bool] = {}
    error: Optional[bool] = None
    for value in values:
        word = value.strip()
        on = not word.startswith("-")
        letter = _FLAG_WORDS.get(word.lstrip("+-").lower(), word.lstrip("+-").upper())
        if len(letter) != 1 or letter not in _FLAGS:
            raise click.BadParameter(f"expected D, H, S, E, N, I, R or drain (with + or - in front to set or clear), got {value!r}", param_hint="--status")
        if letter == "E":
            error = on
        else:
            flags[letter] = on
    return flags, error


@ctl.command()
@click.argument("balancer")
@click.argument("url")
@click.option("--status", "statuses", multiple=True, metavar="[+|-]FLAG", help="Set (+, the default) or clear (-) D, H, S, E, N (drain), I or R; repeatable.")
@click.option("--loadfactor", type=int, metavar="N", help="Loadfactor 1..100.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of lines.")
@click.pass_context
def member(ctx: click.Context, balancer: str, url: str, statuses: tuple[str, ...], loadfactor: Optional[int], as_json: bool) -> None:
    """Change a balancer member in every worker: BALANCER is the name (or
    balancer://name), URL the member's as configured."""
    name = balancer[len("balancer://") :] if balancer.lower().startswith("balancer://") else balancer
    flags, error = _flag_changes(statuses)
    if not flags and error is None and loadfactor is None:
        raise click.UsageError("nothing to change: give --status and/or --loadfactor")
    change: dict[str, Any] = {"balancer": name, "member": url, "flags": flags or None, "error": error, "loadfactor": loadfactor}
    answer = _request(ctx, {"op": "member", "change": change})
    if as_json:
        click.echo(json.dumps({"changes": answer["changes"], "workers": answer["workers"]}, indent=2, sort_keys=True))
    else:
        for line in answer["changes"] or ["nothing changed (the member already had these values)"]:
            click.echo(line)
        for row in answer["workers"]:
            click.echo(f"worker {row['worker']}: {'applied' if row['ok'] else 'NOT applied: ' + str(row.get('error'))}")
    if any(not row["ok"] for row in answer["workers"]):
        raise click.exceptions.Exit(1)


def _drain(ctx: click.Context, on: bool, as_json: bool) -> None:
    answer = _request(ctx, {"op": "drain", "drained": on})
    rows = answer["workers"]
    if as_json:
        click.echo(json.dumps({"drained": on, "workers": rows}, indent=2, sort_keys=True))
    else:
        state = "drained (ready answers 503)" if on else "undrained (ready answers 200)"
        for row in rows:
            if row["ok"]:
                click.echo(f"worker {row['worker']}: {state}{'' if row.get('changed') else ', as it already was'}")
            else:
                click.echo(f"worker {row['worker']}: NOT {'drained' if on else 'undrained'}: {row.get('error')}")
    if any(not row["ok"] for row in rows):
        raise click.exceptions.Exit(1)


_JSON = click.option("--json", "as_json", is_flag=True, help="JSON instead of lines.")


@ctl.command()
@_JSON
@click.pass_context
def drain(ctx: click.Context, as_json: bool) -> None:
    """Tell balancers to send new clients elsewhere: SetHandler ready answers 503 in
    every worker; the instance keeps serving (R152)."""
    _drain(ctx, True, as_json)


@ctl.command()
@_JSON
@click.pass_context
def undrain(ctx: click.Context, as_json: bool) -> None:
    """Take a drain back: SetHandler ready answers 200 again in every worker."""
    _drain(ctx, False, as_json)


for _command in LIFECYCLE_COMMANDS:
    ctl.add_command(_command)
