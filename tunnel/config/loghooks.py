"""The parser's log directives (LogLevel, ErrorLog, LogFormat, CustomLog, TransferLog),
mixed into it. ``CustomLog file format env=[!]VAR`` logs only the requests whose
environment has (or lacks) VAR (R85); ``TransferLog file`` logs with the last
``LogFormat`` given without a nickname, else the common format (R86)."""

from __future__ import annotations

from typing import Any, Optional

from .values import BadDirective, Expected, log_level

__all__ = ["LogHooks"]


class LogHooks:
    """One error log and one set of access logs for all hosts: in a vhost they warn."""

    log: dict[str, Any]
    log_formats: dict[str, str]
    log_default_format: Optional[str]
    custom_logs: list[tuple[str, Optional[str], str, int, str]]
    file: str
    line: int

    def warn(self, text: str) -> None:
        raise NotImplementedError

    def in_vhost(self) -> bool:
        raise NotImplementedError

    def _in_vhost_warning(self, name: str, what: str) -> bool:
        if self.in_vhost():
            self.warn(f"{name} inside <VirtualHost>: {what}")
            return True
        return False

    def log_level(self, args: list[str]) -> None:
        levels = [a for a in args if ":" not in a]
        if not args or len(levels) > 1:
            raise BadDirective("expected [level] [module:level ...]")
        for extra in args:
            if ":" in extra:
                self.warn(f"LogLevel {extra}: per-module levels are ignored")
        if levels and not self._in_vhost_warning("LogLevel", "ignored (one log for all hosts)"):
            self.log["level"] = log_level(levels[0])

    def _error_log(self, args: list[str]) -> None:
        if len(args) != 1:
            raise BadDirective(f"expected a file name, got {len(args)} arguments")
        path = args[0]
        if path.startswith("|") or path.lower() == "syslog" or path.lower().startswith("syslog:"):
            raise BadDirective("piped logs and syslog are not supported; give a file name")
        if not self._in_vhost_warning("ErrorLog", "ignored (one error log for all hosts)"):
            self.log["error_log"] = path

    def _log_format(self, args: list[str]) -> None:
        if len(args) == 1:
            # No nickname: the format TransferLog uses (the last one in the file wins;
            # a nickname names a defined format, as mod_log_config resolves it at open).
            self._in_vhost_warning("LogFormat", "a format without a nickname is TransferLog's default for every host")
            self.log_default_format = args[0]
            return
        if len(args) != 2:
            raise BadDirective('expected "FORMAT" [nickname]')
        self.log_formats[args[1]] = args[0]

    def _custom_log(self, args: list[str]) -> None:
        if len(args) not in (2, 3):
            raise BadDirective("expected FILE FORMAT|nickname [env=[!]VAR]")
        if args[0].startswith("|"):
            raise BadDirective("piped logs are not supported; give a file name or -")
        condition = ""
        if len(args) == 3:
            clause = args[2]
            if clause.lower().startswith("env="):
                condition = clause[4:]
                if condition in ("", "!"):
                    raise BadDirective(f'missing environment variable name in "{clause}" (expected env=VAR or env=!VAR)')
            elif clause.lower().startswith("expr="):
                raise BadDirective(f"the condition {clause} is not supported (expr= in CustomLog); use env=[!]VAR")
            else:
                raise Expected("env=[!]VAR after the format", clause)
        self._in_vhost_warning("CustomLog", "logs the requests of every host, not only this one")
        self.custom_logs.append((args[0], args[1], self.file, self.line, condition))

    def _transfer_log(self, args: list[str]) -> None:
        if len(args) != 1:
            raise BadDirective(f"expected a file name, got {len(args)} arguments")
        if args[0].startswith("|"):
            raise BadDirective("piped logs are not supported; give a file name or -")
        self._in_vhost_warning("TransferLog", "logs the requests of every host, not only this one")
        self.custom_logs.append((args[0], None, self.file, self.line, ""))
