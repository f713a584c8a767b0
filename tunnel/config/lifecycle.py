"""The parser's process-life directives (PidFile, GracefulShutdownTimeout), mixed into it."""

from __future__ import annotations

import os
from typing import Any

from .values import BadDirective, Expected

__all__ = ["LifecycleHooks", "MAX_GRACEFUL_SHUTDOWN_TIMEOUT"]

#: The longest GracefulShutdownTimeout accepted (a day): a longer one is a typo.
MAX_GRACEFUL_SHUTDOWN_TIMEOUT = 86400


class LifecycleHooks:
    """``PidFile path`` and ``GracefulShutdownTimeout seconds`` (server context only)."""

    globals: dict[str, Any]
    file: str

    def _pid_file(self, args: list[str]) -> None:
        if len(args) != 1 or not args[0]:
            raise BadDirective("expected one file name")
        path = args[0]
        if "\0" in path:
            raise Expected("a file name", path)
        if not os.path.isabs(path):
            # httpd resolves a relative PidFile against ServerRoot, which tunnel ignores:
            # the folder of the file that names it stands in (as for Include).
            real_file = os.path.isabs(self.file) or os.path.isfile(self.file)
            base = os.path.dirname(os.path.abspath(self.file)) if real_file else os.getcwd()
            path = os.path.join(base, path)
        self.globals["pid_file"] = os.path.normpath(path)

    def _graceful_shutdown_timeout(self, args: list[str]) -> None:
        if len(args) != 1:
            raise BadDirective("expected one number of seconds")
        value = args[0]
        if not value.isdigit() or int(value) > MAX_GRACEFUL_SHUTDOWN_TIMEOUT:
            raise Expected(f"a whole number of seconds from 0 to {MAX_GRACEFUL_SHUTDOWN_TIMEOUT} (0: no limit)", value)
        self.globals["graceful_shutdown_timeout"] = float(int(value))
        self.globals["graceful_shutdown_set"] = True
