"""``tunnel ctl --config FILE COMMAND``: act on the running instance that FILE configures.

A click group; each part adds its own subcommands: the lifecycle ones (graceful,
graceful-stop, stop, restart: signals sent to the process named by ``PidFile``) come
from `tunnel.cli.lifecycle`.
"""

from __future__ import annotations

from dataclasses import dataclass

import click

from .lifecycle import LIFECYCLE_COMMANDS

__all__ = ["ctl", "CtlContext"]


@dataclass(frozen=True)
class CtlContext:
    """What every ``ctl`` subcommand gets (``ctx.obj``)."""

    config_file: str


@click.group()
@click.option("--config", "-c", "config_file", required=True, type=click.Path(dir_okay=False), help="The running instance's configuration file.")
@click.pass_context
def ctl(ctx: click.Context, config_file: str) -> None:
    """Control a running instance (found through the configuration's PidFile)."""
    ctx.obj = CtlContext(config_file)


for _command in LIFECYCLE_COMMANDS:
    ctl.add_command(_command)
