"""`tunnel configtest` on the httpd configurations applications publish
(tests/fixtures/httpd/, substitutions in tests/support/httpd_fixtures.py).

Each fixture must be accepted: ``Syntax OK`` and exit status 0 (one that httpd itself
refuses, `Fixture.httpd_rejects`, must be refused with its file and line). The ones tunnel cannot
load today are strict expected failures whose reason is the first error tunnel reports:
when the directive named there lands, the test starts passing, strict xfail turns that
into a failure, and the entry is removed from `CANNOT_LOAD_TODAY`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.support.httpd_fixtures import FIXTURES, materials
from tunnel.cli.main import cli

pytestmark = pytest.mark.timeout(60)

#: fixture -> the first error `tunnel configtest` reports today (file:line: stripped).
CANNOT_LOAD_TODAY = {
    "socketio-sticky": 'unknown directive "Header"',
    "jupyterhub": 'unknown directive "Header"',
    "gitea": 'unknown directive "RequestHeader"',
    "gitea-subpath": 'unknown directive "RequestHeader"',
    "synapse": 'unknown directive "RequestHeader"',
    "zulip": 'unknown directive "RequestHeader"',
    "guacamole": 'unknown directive "SetEnvIf"',
    "jellyfin": 'unknown directive "RequestHeader"',
    "vaultwarden": 'unknown directive "RequestHeader"',
    "jenkins-https": 'unknown directive "NameVirtualHost"',
    "ntfy": 'unknown directive "SetEnv"',
}


def _params() -> list[Any]:
    return [
        pytest.param(
            name,
            marks=[pytest.mark.xfail(reason=CANNOT_LOAD_TODAY[name], strict=True)] if name in CANNOT_LOAD_TODAY else [],
            id=name,
        )
        for name in sorted(FIXTURES)
    ]


@pytest.fixture(scope="module")
def values(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = materials(tmp_path_factory.mktemp("configtest-materials"))
    out.update({"p80": "18080", "p443": "18443", "p8448": "18448", "b1": "19001", "b2": "19002", "b3": "19003"})
    return out


@pytest.mark.parametrize("name", _params())
def test_configtest_accepts_the_published_config(name: str, values: dict[str, str], tmp_path: Path) -> None:
    fixture = FIXTURES[name]
    path = tmp_path / f"{name}.conf"
    path.write_text(fixture.prelude(values) + fixture.render(values))
    result = CliRunner().invoke(cli, ["configtest", str(path)])
    if fixture.httpd_rejects:  # httpd itself refuses the published text: so must tunnel
        assert result.exit_code != 0 and f"{path}:" in result.output, result.output
        return
    assert result.exit_code == 0, result.output
    assert "Syntax OK" in result.output


@pytest.mark.parametrize("name", sorted(CANNOT_LOAD_TODAY))
def test_the_table_names_the_first_error_today(name: str, values: dict[str, str], tmp_path: Path) -> None:
    """Each entry of the table is the error configtest prints, with the file and line
    (so the table says what is missing; an entry whose fixture loads is a stale entry)."""
    fixture = FIXTURES[name]
    path = tmp_path / f"{name}.conf"
    path.write_text(fixture.prelude(values) + fixture.render(values))
    result = CliRunner().invoke(cli, ["configtest", str(path)])
    if result.exit_code == 0:
        pytest.fail(f"{name} loads now: remove it from CANNOT_LOAD_TODAY (and from the side-by-side table)")
    assert f"{path}:" in result.output and CANNOT_LOAD_TODAY[name] in result.output, result.output
