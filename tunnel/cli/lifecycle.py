"""httpd's signals for ``tunnel serve``, and ``tunnel ctl graceful|graceful-stop|stop|restart``.

Signals (R120), as httpd's:

* ``SIGTERM`` (and ``SIGINT``): stop now; live tunnels are dropped. With
  ``serve --graceful-term`` SIGTERM is a graceful stop instead (for orchestrators that
  send only SIGTERM); SIGINT stays a stop now.
* ``SIGWINCH``: graceful stop (`tunnel.engine.Engine.graceful_stop`).
* ``SIGUSR1``: graceful restart: the configuration is read and checked again; on an
  error it is logged (file, line), the old configuration keeps serving and the status
  file says why; otherwise new connections get the new one and live tunnels go on.
* ``SIGHUP``: restart: the same, but live tunnels are closed.
* ``SIGUSR2`` (tunnel's own, not httpd's): a binary upgrade (`tunnel.cli.upgrade`).

The signals are taken by a thread of their own with ``sigwait`` (blocked in every other
thread), so that what they start never runs inside an interrupted frame of the loop.

``tunnel ctl`` finds the instance by the configuration's ``PidFile``, sends the signal
and waits for its outcome in the status file (`tunnel.cli.pidfile`), or for the process
to exit (stop, graceful-stop).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Optional

import click

from ..config import Config, ConfigError
from ..config.lexer import logical_lines, split_words
from ..engine import Engine
from .pidfile import PidFile, alive, default_pid_file, read_pid, read_status
from .upgrade import Inheritance, Upgrader

__all__ = ["serve_with_signals", "LIFECYCLE_COMMANDS", "pid_file_of", "SIGNALS", "action_for"]

log = logging.getLogger("tunnel")

#: What each signal means (httpd's).
SIGNALS: dict[int, str] = {
    signal.SIGTERM: "stop",
    signal.SIGINT: "stop",
    signal.SIGWINCH: "graceful-stop",
    signal.SIGUSR1: "graceful",
    signal.SIGHUP: "restart",
    signal.SIGUSR2: "upgrade",  # tunnel's own: a binary upgrade (R155, cli/upgrade.py)
}

#: Loads the configuration again (the file plus the command line's overrides).
Loader = Callable[[], Config]


def action_for(signum: int, graceful_term: bool) -> str:
    action = SIGNALS[signum]
    if signum == signal.SIGTERM and graceful_term:
        return "graceful-stop"
    return action


def serve_with_signals(
    engine: Engine,
    *,
    loader: Optional[Loader] = None,
    graceful_term: bool = False,
    pid_file: Optional[PidFile] = None,
    on_reload: Optional[Callable[[Config], None]] = None,
    inheritance: Optional[Inheritance] = None,
) -> None:
    """Serve until stopped by a signal; handle httpd's signals meanwhile (see above).

    Args:
        engine: the engine to run (its loop runs in this thread).
        loader: reads the configuration again for SIGUSR1/SIGHUP (None: they are logged
            and ignored: there is no file to read).
        graceful_term: SIGTERM is a graceful stop.
        pid_file: written once the signals are taken, removed at exit; outcomes go to its
            status file.
        on_reload: called with a new configuration once it serves (logging set-up).
        inheritance: this is a binary upgrade's new process: the PidFile is written
            once it serves on the sockets passed (a failure must not take it).
    """
    wanted = set(SIGNALS)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    done = threading.Event()

    def report(state: str, error: str = "") -> None:
        if pid_file is not None:
            pid_file.report(state, error)

    def take_signals() -> None:
        stopping = upgraded = False
        while True:
            signum = signal.sigwait(wanted)
            if done.is_set():
                return
            action = action_for(signum, graceful_term)
            name = signal.Signals(signum).name
            if action == "stop" or (action == "graceful-stop" and stopping):
                log.info("%s: stopping now", name)
                report("stopping")
                engine.request_stop()
                stopping = True
            elif action == "graceful-stop":
                log.info("%s: graceful stop", name)
                report("stopping")
                engine.graceful_stop()
                stopping = True
            elif action == "upgrade":
                if stopping or upgraded:
                    log.error("%s: binary upgrade asked, but this process is %s; ignored", name, "stopping" if stopping else "upgraded already")
                    report("upgrade-failed", "the process is stopping" if stopping else "an upgrade already took place")
                else:
                    log.info("%s: binary upgrade", name)
                    try:
                        upgraded = Upgrader(engine, pid_file, report).run()
                    except Exception as exc:  # noqa: BLE001 - reported; this process serves on
                        log.exception("binary upgrade failed")
                        report("upgrade-failed", f"internal error: {exc!r}")
            elif not stopping:
                _restart(engine, name, action, loader, report, on_reload)

    thread = threading.Thread(target=take_signals, name="tunnel-signals", daemon=True)
    thread.start()
    if inheritance is not None:
        inheritance.pid_file = pid_file
        engine.on_ready = inheritance.ready
    elif pid_file is not None:
        pid_file.write()
    try:
        engine.serve_forever()
    finally:
        engine.stop()
        done.set()
        signal.pthread_kill(thread.ident or 0, signal.SIGTERM)  # ends its sigwait
        thread.join(5)
        if pid_file is not None:
            pid_file.remove()
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _restart(
    engine: Engine,
    name: str,
    action: str,
    loader: Optional[Loader],
    report: Callable[..., None],
    on_reload: Optional[Callable[[Config], None]],
) -> None:
    what = "graceful restart" if action == "graceful" else "restart"
    if loader is None:
        log.error("%s: %s asked, but there is no configuration file to read again; ignored", name, what)
        report("reload-failed", "no configuration file to read again (serve was started without --config)")
        return
    try:
        config = loader()
        engine.reload(config, close_tunnels=action == "restart")
    except ConfigError as exc:
        log.error("%s: %s failed: %s; still serving the previous configuration", name, what, exc)
        report("reload-failed", str(exc))
        return
    except OSError as exc:
        error = f"cannot listen: {exc.strerror or exc}"
        log.error("%s: %s failed: %s; still serving the previous configuration", name, what, error)
        report("reload-failed", error)
        return
    if on_reload is not None:
        on_reload(config)
    for warning in config.warnings:
        log.warning("%s", warning)
    log.info("%s: %s done: %s", name, what, config.source)
    report("reloaded" if action == "graceful" else "restarted")


# -- tunnel ctl ----------------------------------------------------------------------------


def pid_file_of(config_file: str) -> str:
    """The PidFile a configuration file names (its default when none).

    A file that does not parse any more (the case ``ctl graceful`` must report) is
    scanned for a ``PidFile`` line instead, so that the running instance can be asked
    and answer with the error itself.
    """
    try:
        config = Config.from_file(config_file)
    except ConfigError:
        pass
    else:
        return config.pid_file or default_pid_file()
    try:
        with open(config_file, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{config_file}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    found = ""
    for _, line in logical_lines(text):
        try:
            words = split_words(line)
        except (ValueError, ConfigError):
            continue
        if len(words) == 2 and words[0].lower() == "pidfile":
            found = words[1]
    if not found:
        return default_pid_file()
    if not os.path.isabs(found):
        found = os.path.join(os.path.dirname(os.path.abspath(config_file)), found)
    return os.path.normpath(found)


def _instance(config_file: str) -> tuple[str, int]:
    pid_file = pid_file_of(config_file)
    pid = read_pid(pid_file)
    if pid is None:
        raise click.ClickException(f"no running instance: no pid in {pid_file} (PidFile)")
    if not alive(pid):
        raise click.ClickException(f"no running instance: process {pid} named by {pid_file} is gone")
    return pid_file, pid


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        raise click.ClickException(f"process {pid} is gone") from None
    except PermissionError:
        raise click.ClickException(f"not allowed to signal process {pid} (another user's?)") from None


def _wait_outcome(pid_file: str, pid: int, seq: int, wait: float) -> None:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        status = read_status(pid_file)
        if status is not None and status.pid == pid and status.seq > seq:
            if status.state in ("reloaded", "restarted"):
                click.echo(f"tunnel (pid {pid}): {status.state}")
                return
            if status.state == "reload-failed":
                raise click.ClickException(f"configuration not reloaded, the previous one still serves: {status.error}")
        if not alive(pid):
            raise click.ClickException(f"process {pid} exited")
        time.sleep(0.02)  # a command line tool polling a file: short and bounded
    raise click.ClickException(f"no answer from process {pid} within {wait:g}s")


def _wait_exit(pid: int, wait: Optional[float]) -> None:
    deadline = None if wait is None else time.monotonic() + wait
    while alive(pid):
        if deadline is not None and time.monotonic() >= deadline:
            raise click.ClickException(f"process {pid} still runs after {wait:g}s")
        time.sleep(0.02)
    click.echo(f"tunnel (pid {pid}): stopped")


def _config_file(ctx: click.Context) -> str:
    obj = ctx.find_root().obj if ctx.obj is None else ctx.obj
    config_file = getattr(obj, "config_file", None)
    if not config_file:
        raise click.UsageError("tunnel ctl needs --config FILE (the running instance's configuration)")
    return str(config_file)


_WAIT = click.option("--wait", "wait", type=click.FloatRange(min=0), default=None, metavar="SECONDS", help="How long to wait for the outcome.")


@click.command()
@_WAIT
@click.pass_context
def graceful(ctx: click.Context, wait: Optional[float]) -> None:
    """Graceful restart (SIGUSR1): re-read the configuration, keep live tunnels."""
    _reload(ctx, signal.SIGUSR1, wait)


@click.command()
@_WAIT
@click.pass_context
def restart(ctx: click.Context, wait: Optional[float]) -> None:
    """Restart (SIGHUP): re-read the configuration, close live tunnels."""
    _reload(ctx, signal.SIGHUP, wait)


def _reload(ctx: click.Context, signum: int, wait: Optional[float]) -> None:
    pid_file, pid = _instance(_config_file(ctx))
    before = read_status(pid_file)
    seq = before.seq if before is not None and before.pid == pid else -1
    _signal(pid, signum)
    _wait_outcome(pid_file, pid, seq, 30.0 if wait is None else wait)


@click.command("graceful-stop")
@_WAIT
@click.pass_context
def graceful_stop(ctx: click.Context, wait: Optional[float]) -> None:
    """Graceful stop (SIGWINCH): Close 1001 to every WebSocket, wait, exit.

    Waits for the process to exit: GracefulShutdownTimeout plus 10 s by default (with
    no timeout, as long as it takes)."""
    config_file = _config_file(ctx)
    _, pid = _instance(config_file)
    if wait is None:
        try:
            timeout = Config.from_file(config_file).graceful_shutdown_timeout
        except ConfigError:
            timeout = 0.0
        wait = timeout + 10.0 if timeout > 0 else None
    _signal(pid, signal.SIGWINCH)
    _wait_exit(pid, wait)


@click.command()
@_WAIT
@click.pass_context
def stop(ctx: click.Context, wait: Optional[float]) -> None:
    """Stop now (SIGTERM): live tunnels are dropped."""
    _, pid = _instance(_config_file(ctx))
    _signal(pid, signal.SIGTERM)
    _wait_exit(pid, 15.0 if wait is None else wait)


@click.command()
@click.option("--wait", "wait", type=click.FloatRange(min=0), default=None, metavar="SECONDS", help="How long to wait for the outcome (default 60).")
@click.pass_context
def upgrade(ctx: click.Context, wait: Optional[float]) -> None:
    """Binary upgrade (SIGUSR2): a new process of the installed version takes over the
    listeners and every plain tunnel; TLS tunnels drain in the old one."""
    pid_file, pid = _instance(_config_file(ctx))
    before = read_status(pid_file)
    seq = before.seq if before is not None and before.pid == pid else -1
    _signal(pid, signal.SIGUSR2)
    deadline = time.monotonic() + (60.0 if wait is None else wait)
    while time.monotonic() < deadline:
        status = read_status(pid_file)
        if status is not None and status.pid == pid and status.seq > seq and status.state == "upgrade-failed":
            raise click.ClickException(f"upgrade failed; pid {pid} still serves: {status.error}")
        new = read_pid(pid_file)
        if new is not None and new != pid and status is not None and status.pid == new and status.state == "upgraded":
            click.echo(f"tunnel: upgraded: {status.detail}; pid {pid} exits once its TLS tunnels end" if alive(pid) else f"tunnel: upgraded: {status.detail}")
            return
        if not alive(pid) and (new is None or new == pid):
            raise click.ClickException(f"process {pid} exited during the upgrade")
        time.sleep(0.02)  # a command line tool polling a file: short and bounded
    raise click.ClickException(f"no outcome of the upgrade of pid {pid} within {60.0 if wait is None else wait:g}s")


#: The lifecycle subcommands of ``tunnel ctl``.
LIFECYCLE_COMMANDS = (graceful, graceful_stop, stop, restart, upgrade)
