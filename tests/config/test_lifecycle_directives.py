"""PidFile, GracefulShutdownTimeout, ProxyWebsocketPingInterval, ProxyWebsocketHalfCloseTimeout."""

from __future__ import annotations

import pytest

from tunnel import Config
from tunnel.config import ConfigError


def test_values_and_contexts(tmp_path):
    conf = tmp_path / "t.conf"
    conf.write_text(
        "PidFile run/t.pid\nGracefulShutdownTimeout 30\nProxyWebsocketPingInterval 500ms\n"
        "<Location /a>\nProxyWebsocketHalfCloseTimeout 2\n</Location>\n"
    )
    config = Config.from_file(str(conf))
    assert config.pid_file == str(tmp_path / "run" / "t.pid")  # relative to the file's folder
    assert config.graceful_shutdown_timeout == 30.0
    assert config.scope.websocket_ping_interval == 0.5
    assert config.scope.locations[0].settings == (("websocket_half_close_timeout", 2.0),)
    assert Config.from_text("").pid_file == "" and Config.from_text("").graceful_shutdown_timeout == 0.0


@pytest.mark.parametrize(
    "text, message",
    [
        ("GracefulShutdownTimeout -1", 'GracefulShutdownTimeout: expected a whole number of seconds from 0 to 86400 (0: no limit), got "-1"'),
        ("GracefulShutdownTimeout 1.5", "got \"1.5\""),
        ("GracefulShutdownTimeout 86401", "got \"86401\""),
        ("PidFile", "PidFile: expected one file name"),
        ("PidFile a b", "PidFile: expected one file name"),
        ("<VirtualHost *:80>\nPidFile x\n</VirtualHost>", "PidFile: not allowed in <VirtualHost>"),
        ("<Location />\nGracefulShutdownTimeout 3\n</Location>", "GracefulShutdownTimeout: not allowed in <Location>"),
        ("ProxyWebsocketPingInterval soon", 'ProxyWebsocketPingInterval: expected a number with optional "ms" suffix, got "soon"'),
        ("ProxyWebsocketHalfCloseTimeout 1s", 'ProxyWebsocketHalfCloseTimeout: expected a number with optional "ms" suffix, got "1s"'),
    ],
)
def test_errors_name_the_file_and_line(text, message):
    with pytest.raises(ConfigError) as err:
        Config.from_text(text + "\n", filename="t.conf")
    assert str(err.value).startswith("t.conf:") and message in str(err.value)


def test_pidfile_is_no_longer_ignored():
    assert not any("PidFile" in w for w in Config.from_text("PidFile /tmp/x.pid\n").warnings)
