"""ProxyWebsocketFrameTracking On|Off|Auto: values, contexts, errors, and what Auto turns
on (R160)."""

from __future__ import annotations

import pytest

from tunnel import Config
from tunnel.config import ConfigError
from tunnel.config.scopes import effective_scope
from tunnel.tunnels.wscontrol import tracks_frames


def test_values_contexts_and_default():
    config = Config.from_text(
        "ProxyWebsocketFrameTracking off\n"
        "<VirtualHost *:80>\nServerName v\nProxyWebsocketFrameTracking AUTO\n</VirtualHost>\n"
        "<Location /a>\nProxyWebsocketFrameTracking On\n</Location>\n"
    )
    assert config.scope.websocket_frame_tracking == "off"
    assert config.vhosts[0].scope.websocket_frame_tracking == "auto"
    assert config.scope.locations[0].settings == (("websocket_frame_tracking", "on"),)
    assert Config.from_text("").scope.websocket_frame_tracking == "auto"


@pytest.mark.parametrize(
    "text, message",
    [
        ("ProxyWebsocketFrameTracking maybe", 'ProxyWebsocketFrameTracking: expected On, Off or Auto, got "maybe"'),
        ("ProxyWebsocketFrameTracking", "ProxyWebsocketFrameTracking"),
        ("ProxyWebsocketFrameTracking On Off", "ProxyWebsocketFrameTracking"),
        ("<Proxy balancer://b>\nProxyWebsocketFrameTracking On\n</Proxy>", "not allowed in <Proxy"),
    ],
)
def test_errors_name_the_file_and_line(text, message):
    with pytest.raises(ConfigError) as err:
        Config.from_text(text + "\n", filename="t.conf")
    assert str(err.value).startswith("t.conf:") and message in str(err.value)


@pytest.mark.parametrize(
    "text, tracked",
    [
        ("", False),  # Auto with nothing that needs frame boundaries: the relay costs nothing more
        ("ProxyWebsocketFrameTracking On\n", True),
        ("ProxyWebsocketFrameTracking Off\nProxyWebsocketPingInterval 5\n", False),  # Off wins: no pings then
        ("ProxyWebsocketPingInterval 5\n", True),
        ("ProxyWebsocketHalfCloseTimeout 2\n", True),
        ("GracefulShutdownTimeout 0\n", True),  # any value: the graceful stop's Close 1001
        ("GracefulShutdownTimeout 30\n", True),
        ("<Location /ws>\nProxyWebsocketPingInterval 1\n</Location>\n", "/ws"),
    ],
)
def test_what_auto_turns_on(text, tracked):
    config = Config.from_text(text)
    graceful = config.graceful_shutdown_set
    if tracked == "/ws":
        assert tracks_frames(effective_scope(config.scope, "/ws/x"), graceful_set=graceful)
        assert not tracks_frames(effective_scope(config.scope, "/other"), graceful_set=graceful)
    else:
        assert tracks_frames(config.scope, graceful_set=graceful) is tracked
