"""mod_alias's redirect directives, mixed into the parser (R94): ``Redirect``,
``RedirectMatch``, ``RedirectPermanent``, ``RedirectTemp``.

Arguments are read as mod_alias's add_redirect_internal reads them: a first argument
``permanent``, ``temp``, ``seeother``, ``gone`` or a number is the status (default 302);
a 3xx status needs a URL (an absolute URL or a path; RedirectMatch's may hold ``$N``),
any other status takes none. Inside `<Location>`, ``Redirect [status] URL`` (and
``Redirect gone``) is the location's own redirect, for every path it matches.
"""

from __future__ import annotations

import re
from typing import Optional

from .build import LocationDraft, ScopeDraft
from .model import AliasRedirect
from .values import BadDirective, compile_regex

__all__ = ["AliasHooks"]

_STATUS_WORDS = {"permanent": 301, "temp": 302, "seeother": 303, "gone": 410}
_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


class AliasHooks:
    """The Redirect* handlers: server and vhost lines go to the scope, `<Location>`
    lines to the location."""

    file: str
    line: int

    @property
    def scope(self) -> ScopeDraft:
        raise NotImplementedError

    def _location(self) -> Optional[LocationDraft]:
        raise NotImplementedError

    def _redirect_internal(self, args: list[str], *, regex: bool, status: int, most: int) -> None:
        if not 1 <= len(args) <= most:
            raise BadDirective("expected [status] URL-path URL" if most == 3 else "expected URL-path URL")
        arg1, arg2, arg3 = (args + [None, None])[:3]
        assert arg1 is not None
        grok = 1
        lowered = arg1.lower()
        if lowered in _STATUS_WORDS:
            status = _STATUS_WORDS[lowered]
            grok = -1 if status == 410 else 1
        elif arg1[:1].isdigit():
            if not re.fullmatch(r"[1-5][0-9][0-9]", arg1):
                raise BadDirective(f'"{arg1}" is not an HTTP status code (100-599)')
            status = int(arg1)
            grok = 1 if 300 <= status <= 399 else -1
        else:
            grok = 0
        if arg3 is not None and not grok:
            raise BadDirective(f'invalid first argument (of three): "{arg1}" is not a status (permanent, temp, '
                               "seeother, gone or a number)")
        location = self._location()
        if location is not None and not regex:
            own: Optional[str] = None
            if (grok > 0 and arg2 is not None and arg3 is None) or (not grok and arg2 is None):
                own = arg2 if grok else arg1
            if own is not None or (grok < 0 and arg2 is None):
                self._add(location, AliasRedirect("", self._check_url(own, status, regex, one=True), status,
                                                  self.file, self.line))
                return
        fake: Optional[str] = arg1 if arg3 is None and not grok else arg2
        url = arg2 if arg3 is None and not grok else arg3
        if fake is None:
            raise BadDirective("expected a URL-path (or a regular expression) to redirect")
        compiled = compile_regex(fake) if regex else None
        if not regex and not fake.startswith("/"):
            raise BadDirective(f'the URL-path must start with "/", got "{fake}"')
        self._add(location, AliasRedirect(fake, self._check_url(url, status, regex), status, self.file, self.line,
                                          compiled))

    def _check_url(self, url: Optional[str], status: int, regex: bool, one: bool = False) -> Optional[str]:
        if 300 <= status <= 399:
            if not url:
                raise BadDirective("the URL to redirect to is missing")
            if not regex and not _URL_RE.match(url) and not url.startswith("/"):
                raise BadDirective(f'redirect to a non-URL "{url}" (expected scheme://... or a path starting with /)')
            if one and "%{" in url:
                raise BadDirective(f'"{url}": expressions (%{{...}}) in the URL are not supported; write it literally')
            return url
        if url is not None:
            raise BadDirective(f"a URL is not valid with status {status} (only 3xx redirects take one)")
        return None

    def _add(self, location: Optional[LocationDraft], rule: AliasRedirect) -> None:
        if location is not None:
            location.redirects.append(rule)
        else:
            self.scope.redirects.append(rule)

    def _redirect(self, args: list[str]) -> None:
        self._redirect_internal(args, regex=False, status=302, most=3)

    def _redirect_match(self, args: list[str]) -> None:
        if len(args) < 2:
            raise BadDirective("expected [status] regex URL")
        self._redirect_internal(args, regex=True, status=302, most=3)

    def _redirect_permanent(self, args: list[str]) -> None:
        if len(args) != 2:
            raise BadDirective("expected URL-path URL")
        self._redirect_internal(args, regex=False, status=301, most=2)

    def _redirect_temp(self, args: list[str]) -> None:
        if len(args) != 2:
            raise BadDirective("expected URL-path URL")
        self._redirect_internal(args, regex=False, status=302, most=2)
