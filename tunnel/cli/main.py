"""The ``tunnel`` command line (click): serve, demo, configtest."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import click

from .._version import __version__
from ..accesslog import LOG_LEVELS
from ..config import Config, ConfigError
from ..engine import Engine
from ..proxy.control import Cluster, ControlError, default_control_socket, private_dir
from . import gctune
from .ctl import ctl
from .demo import DEMO_PAGE, listen_host, throwaway_certificate

__all__ = ["main", "cli"]

def setup_logging(config: Config, override: Optional[str]) -> None:
    """Route the ``tunnel`` loggers to ErrorLog (default stderr) at LogLevel."""
    level_name = (override or config.log.level or "warn").lower()
    if level_name.startswith("trace"):
        level_name = "debug"
    level = LOG_LEVELS.get(level_name, logging.WARNING)
    root = logging.getLogger("tunnel")
    for old in list(root.handlers):
        root.removeHandler(old)
    if config.log.error_log:
        handler: logging.Handler = logging.FileHandler(config.log.error_log)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s] [%(levelname)s] [%(name)s] %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def _config_text(listen: Sequence[str], passes: Sequence[str], extra: Sequence[str]) -> str:
    lines = [f"Listen {addr}" for addr in listen]
    for item in passes:
        path, sep, url = item.partition("=")
        if not sep or not path or not url:
            raise click.BadParameter(f"expected PATH=URL, got {item!r}", param_hint="--pass")
        lines.append(f"ProxyPass {path} {url}")
    lines.extend(extra)
    return "\n".join(lines) + "\n"


def _load(
    config_file: Optional[str], listen: Sequence[str], passes: Sequence[str], extra: Sequence[str], defines: Sequence[str] = ()
) -> Config:
    if config_file:
        config = Config.from_file(config_file, defines=defines)
        if listen or passes:
            add = Config.from_text(_config_text(listen, passes, extra), filename="<command line>")
            config = config.replace(listeners=config.listeners + add.listeners)
        return config
    if not listen:
        listen = ["127.0.0.1:8080"]
    return Config.from_text(_config_text(listen, passes, extra), filename="<command line>")


def run_engine(engine: Engine, **signals: Any) -> None:
    """Serve until stopped by a signal, then stop cleanly (exit status 0); httpd's
    signals meanwhile (`tunnel.cli.lifecycle.serve_with_signals`, which takes ``signals``)."""
    from .lifecycle import serve_with_signals

    serve_with_signals(engine, **signals)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tunnel")
def cli() -> None:
    """tunnel: a WebSocket reverse proxy with httpd's mod_proxy_wstunnel semantics."""


@cli.command()
@click.option("--config", "-c", "config_file", type=click.Path(dir_okay=False), help="httpd-style configuration file.")
@click.option("--listen", "-l", multiple=True, metavar="ADDR", help="Listen address, e.g. 127.0.0.1:8080 or [::1]:8080.")
@click.option("--pass", "passes", multiple=True, metavar="PATH=URL", help="A ProxyPass rule, e.g. /chat/=ws://127.0.0.1:9000/.")
@click.option("--async/--sync", "use_async", default=None, help="ProxyWebsocketAsync On/Off (default: the file's, else Off).")
@click.option("--max-threads", type=click.IntRange(1), default=None, help="MaxTunnelThreads: sync tunnel threads.")
@click.option("--workers", default="1", show_default=True, metavar="N|auto", help="Worker processes sharing the ports (SO_REUSEPORT).")
@click.option("--log-level", type=click.Choice(sorted(LOG_LEVELS)), default=None, help="Override LogLevel.")
@click.option("-D", "defines", multiple=True, metavar="NAME", help="Define NAME before reading the file, as httpd -D (for <IfDefine>).")
@click.option("--graceful-term", is_flag=True, help="SIGTERM stops gracefully (as SIGWINCH), for orchestrators that send only SIGTERM.")
def serve(
    config_file: Optional[str],
    listen: tuple[str, ...],
    passes: tuple[str, ...],
    use_async: Optional[bool],
    max_threads: Optional[int],
    workers: str,
    log_level: Optional[str],
    defines: tuple[str, ...],
    graceful_term: bool,
) -> None:
    """Run the proxy from a configuration file or from --listen/--pass."""
    from .upgrade import Inheritance

    inheritance = Inheritance.from_env()  # a binary upgrade's new process (R155)
    try:
        _serve(config_file, listen, passes, use_async, max_threads, workers, log_level, defines, graceful_term, inheritance)
    except click.ClickException as exc:
        if inheritance is not None:
            inheritance.fail(exc.format_message())  # the old process goes on serving and says why
        raise
    except BaseException as exc:
        if inheritance is not None and not isinstance(exc, SystemExit):
            inheritance.fail(f"{type(exc).__name__}: {exc}")
        raise


def _serve(
    config_file: Optional[str],
    listen: tuple[str, ...],
    passes: tuple[str, ...],
    use_async: Optional[bool],
    max_threads: Optional[int],
    workers: str,
    log_level: Optional[str],
    defines: tuple[str, ...],
    graceful_term: bool,
    inheritance: Any,
) -> None:
    from .workers import resolve_workers, run_workers

    try:
        n_workers = resolve_workers(workers)
    except ValueError:
        raise click.BadParameter(f"expected a positive number or 'auto', got {workers!r}", param_hint="--workers") from None
    extra = []
    if use_async is not None and not config_file:
        extra.append(f"ProxyWebsocketAsync {'On' if use_async else 'Off'}")
    if max_threads and not config_file:
        extra.append(f"MaxTunnelThreads {max_threads}")

    def load() -> Config:
        config = _load(config_file, listen, passes, extra, defines)
        if config_file and use_async is not None:
            config = config.with_websocket_async(use_async)  # every scope: server, vhosts, locations
        if config_file and max_threads:
            config = config.replace(max_tunnel_threads=max_threads)
        return config

    try:
        config = load()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if not config.listeners:
        raise click.ClickException(f"{config.source}: no Listen directive: nothing to serve")
    from ..io.contexts import check_tls

    problems = check_tls(config)  # a bad certificate or cipher string: now, not at the first client
    if problems:
        raise click.ClickException("\n".join(problems))
    setup_logging(config, log_level)
    for warning in config.warnings:
        logging.getLogger("tunnel").warning("%s", warning)
    from .pidfile import PidFile, default_pid_file

    pid_file = PidFile(config.pid_file or default_pid_file())
    loader = load if config_file else None

    def relog(new: Config) -> None:
        gctune.thaw()  # the replaced configuration may be garbage now
        setup_logging(new, log_level)

    if inheritance is not None and n_workers > 1:
        raise click.ClickException("a binary upgrade needs --workers 1")
    gctune.tune()
    try:
        clusters = _clusters(config, config_file, n_workers)
        if n_workers > 1:

            def serve_worker(cfg: Config, reload: Optional[Callable[[], Config]], slot: int) -> None:
                engine = Engine(cfg, reuse_port=True, cluster=clusters[slot])
                gctune.freeze()  # the worker's engine too; what the supervisor froze stays shared
                run_engine(engine, loader=reload, graceful_term=graceful_term, on_reload=relog)

            gctune.freeze()  # before the fork: the workers share these pages unwritten
            try:
                status = run_workers(
                    config, n_workers, serve_worker, loader=loader, pid_file=pid_file, graceful_term=graceful_term
                )
            finally:
                if not clusters[0].control:  # a directory of our own for the workers' sockets
                    shutil.rmtree(clusters[0].peers, ignore_errors=True)
            sys.exit(status)
        engine = Engine(config, cluster=clusters[0])
        if inheritance is not None:
            inheritance.take_listeners(engine)
        gctune.freeze()
        run_engine(
            engine, loader=loader, graceful_term=graceful_term, pid_file=pid_file, on_reload=relog, inheritance=inheritance
        )
    except ControlError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen: {exc.strerror or exc}") from None


def _clusters(config: Config, config_file: Optional[str], n_workers: int) -> list[Cluster]:
    """Each worker's control sockets (R117): ``tunnel ctl``'s (TunnelControlSocket, by
    default one under the run directory for a configuration file, none for
    --listen/--pass) is served by worker 0; with several workers each has a private one
    in a directory next to it."""
    import secrets
    import tempfile

    control = config.control_socket
    if control is None:
        control = default_control_socket(config_file) if config_file else ""
        if control:
            private_dir(os.path.dirname(control))
    peers = ""
    if n_workers > 1:
        if control:
            peers = control + ".workers"
            private_dir(peers)
        else:
            peers = tempfile.mkdtemp(prefix="tunnel-workers-")
    secret = secrets.token_hex(16)
    return [Cluster(control=control if slot == 0 else "", peers=peers, slot=slot, workers=n_workers, secret=secret) for slot in range(n_workers)]


@cli.command()
@click.option("--listen", "-l", default="127.0.0.1:8080", show_default=True, metavar="ADDR", help="Proxy listen address.")
@click.option("--async/--sync", "use_async", default=True, help="Tunnel strategy for the demo route.")
@click.option("--tls", "use_tls", is_flag=True, help="Listen with TLS (https:// and wss://) on a throw-away self-signed certificate.")
@click.option("--log-level", type=click.Choice(sorted(LOG_LEVELS)), default="info", show_default=True)
def demo(listen: str, use_async: bool, use_tls: bool, log_level: str) -> None:
    """The proxy plus the built-in echo backend: a page and a WebSocket on one path."""
    import tempfile
    import threading

    from ..echo import EchoServer

    page = DEMO_PAGE.read_bytes()
    certdir: Optional[tempfile.TemporaryDirectory[str]] = None
    tls_lines: list[str] = []
    made_by = ""
    cert = None
    if use_tls:
        certdir = tempfile.TemporaryDirectory(prefix="tunnel-demo-")
        cert, key, made_by = throwaway_certificate(Path(certdir.name), [listen_host(listen)])
        tls_lines = ["SSLEngine On", f"SSLCertificateFile {cert}", f"SSLCertificateKeyFile {key}"]
    backend = EchoServer("127.0.0.1", 0, page=page).start()
    host, port = backend.address[:2]
    text = "\n".join(
        [
            f"Listen {listen}{' https' if use_tls else ''}",
            *tls_lines,
            f"ProxyWebsocketAsync {'On' if use_async else 'Off'}",
            "# ws and http on one path: an upgrade goes to the ws route, a plain GET to the http one",
            f"ProxyPass / ws://{host}:{port}/",
            f"ProxyPass / http://{host}:{port}/",
            "",
        ]
    )
    try:
        config = Config.from_text(text, filename="<demo>")
        setup_logging(config, log_level)
        engine = Engine(config)
        engine.start()
    except (ConfigError, OSError) as exc:  # OSError includes ssl.SSLError
        backend.stop()
        if certdir is not None:
            certdir.cleanup()
        raise click.ClickException(str(exc)) from None
    addr_host, addr_port = engine.addresses[0]
    shown = f"[{addr_host}]" if ":" in addr_host else addr_host
    web, ws = ("https", "wss") if use_tls else ("http", "ws")
    click.echo(f"tunnel demo: echo backend on {host}:{port}, proxy on {shown}:{addr_port}{' (TLS)' if use_tls else ''}")
    click.echo(f"  browser:   {web}://{shown}:{addr_port}/")
    if use_tls:
        click.echo(f"  websocket: SSL_CERT_FILE={cert} python -m websockets {ws}://{shown}:{addr_port}/echo")
        click.echo(f"  certificate: {cert} (self-signed, made by {made_by} for this run; a browser will warn)")
    else:
        click.echo(f"  websocket: python -m websockets {ws}://{shown}:{addr_port}/echo")
    click.echo("Ctrl-C stops.", err=False)
    sys.stdout.flush()
    stopped = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopped.set()

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, on_signal)
    try:
        while not stopped.wait(0.5):
            pass
    finally:
        engine.stop()
        backend.stop()
        if certdir is not None:
            certdir.cleanup()


@cli.command()
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.option("-D", "defines", multiple=True, metavar="NAME", help="Define NAME before reading the file, as httpd -D.")
def configtest(config_file: str, defines: tuple[str, ...]) -> None:
    """Check a configuration file and print the routes it would use.

    Besides the syntax, the TLS contexts are built (certificate files, cipher strings)
    and <VirtualHost> host names looked up, as serve does at start-up.
    """
    from ..configtest import ignored_summary, summary
    from ..io.contexts import check_tls
    from ..io.names import resolve_vhost_names

    try:
        config = Config.from_file(config_file, defines=defines)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(summary(config))
    _, unresolved = resolve_vhost_names(config)
    for warning in (*config.warnings, *unresolved):
        click.echo(f"warning: {warning}", err=True)
    ignored = ignored_summary(config)
    if ignored:
        click.echo(ignored, err=True)
    problems = check_tls(config)
    if problems:
        raise click.ClickException("\n".join(problems))
    click.echo("Syntax OK")


@cli.command()
@click.option("--config", "-c", "config_file", required=True, type=click.Path(dir_okay=False), help="httpd-style configuration file.")
@click.argument("request_line")
@click.option("--header", "-H", "headers", multiple=True, metavar="'NAME: VALUE'", help="A request header (repeatable).")
@click.option("--listen", "-l", "listen", default=None, metavar="ADDR", help="The listener it arrives on (default: the first Listen).")
@click.option("--client", "client", default="127.0.0.1", show_default=True, metavar="IP", help="The client's address.")
def explain(config_file: str, request_line: str, headers: tuple[str, ...], listen: Optional[str], client: str) -> None:
    """Show what the proxy would do with one request, without connecting anything.

    REQUEST_LINE is e.g. 'GET /socket.io/?EIO=4 HTTP/1.1'. Without a Host header one is
    added from the listener, as a browser would send it.
    """
    import ipaddress

    from ..proxy.explain import request_head
    from ..tunnels.strategy import LOOP_HOST

    try:
        config = Config.from_file(config_file)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    for header in headers:
        name, colon, _ = header.partition(":")
        if not colon or not name.strip() or name != name.strip():
            raise click.BadParameter(f"expected 'Name: value', got {header!r}", param_hint="--header")
    try:
        ipaddress.ip_address(client)
    except ValueError:
        raise click.BadParameter(f"expected an IP address, got {client!r}", param_hint="--client") from None
    listener = None
    if listen is not None:
        wanted = listen.lower()
        listener = next((li for li in config.listeners if li.display.lower() == wanted or str(li.port) == wanted), None)
        if listener is None:
            shown = ", ".join(li.display for li in config.listeners) or "none"
            raise click.BadParameter(f"no Listen {listen} in {config_file} (listeners: {shown})", param_hint="--listen")
    elif config.listeners:
        listener = config.listeners[0]
    words = request_line.split()
    if not any(h.lower().startswith("host:") for h in headers) and (len(words) == 2 or words[-1:] == ["HTTP/1.1"]):
        host = listener.display if listener is not None else "localhost"
        headers = (f"Host: {host}", *headers)
    engine = Engine(config, host=LOOP_HOST)  # as `serve` runs it; nothing is started
    result = engine.explain(request_head(request_line, headers), listener=listener, peer=(client, 40000))
    click.echo(str(result))


cli.add_command(ctl)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of the ``tunnel`` console script and ``python -m tunnel``."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="tunnel")
