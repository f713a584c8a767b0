"""The ``tunnel`` command line: click commands (`main`), the demo's page and certificate
(`demo`), and the supervisor of ``--workers N`` processes (`workers`)."""

from .main import cli, main

__all__ = ["cli", "main"]
