"""SetHandler, ExtendedStatus, TunnelControlSocket, ProxySet nonce= (R110-R117),
TunnelLoopLagLimit (R151)."""

from __future__ import annotations

import pytest

from tunnel.config import Config, ConfigError
from tunnel.config.scopes import effective_scope
from tunnel.config.statushooks import LOCAL_HANDLERS
from tunnel.proxy.handlers import HANDLERS

pytestmark = pytest.mark.timeout(30)


def test_every_sethandler_name_has_a_handler():
    assert set(LOCAL_HANDLERS) == set(HANDLERS)


def test_sethandler_by_location_and_none_turns_it_off():
    config = Config.from_text(
        "<Location /s>\nSetHandler SERVER-STATUS\n</Location>\n<Location /s/x>\nSetHandler none\n</Location>\n"
    )
    assert effective_scope(config.scope, "/s").handler == "server-status"
    assert effective_scope(config.scope, "/s/x").handler == ""
    assert effective_scope(config.scope, "/t").handler == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SetHandler cgi-script", 'test.conf:1: SetHandler: expected one of server-status, balancer-manager, metrics, ready, live or none, got "cgi-script"'),
        ("SetHandler proxy:unix:/run/x|fcgi://l", "use ProxyPass"),
        ("SetHandler a b", "expected one argument, got 2"),
        ("ExtendedStatus maybe", 'ExtendedStatus: expected On or Off, got "maybe"'),
        ("<VirtualHost *:80>\nExtendedStatus On\n</VirtualHost>", "test.conf:2: ExtendedStatus: not allowed in <VirtualHost>"),
        ("TunnelControlSocket", "TunnelControlSocket: expected a socket path or none, got 0 arguments"),
        ("TunnelControlSocket /" + "x" * 120, "shorter than 100 bytes"),
        ("<Proxy balancer://b>\nBalancerMember ws://a/\nProxySet nonce=a/b\n</Proxy>", "nonce= expected None or a nonce"),
        ("TunnelLoopLagLimit", "test.conf:1: TunnelLoopLagLimit: expected a number of seconds, got 0 arguments"),
        ("TunnelLoopLagLimit 1 2", "expected a number of seconds, got 2 arguments"),
        ("TunnelLoopLagLimit soon", 'TunnelLoopLagLimit: expected a number of seconds from 0.1 to 3600, got "soon"'),
        ("TunnelLoopLagLimit 0.01", 'from 0.1 to 3600, got "0.01"'),
        ("TunnelLoopLagLimit nan", 'from 0.1 to 3600, got "nan"'),
        ("TunnelLoopLagLimit inf", 'from 0.1 to 3600, got "inf"'),
        ("<VirtualHost *:80>\nTunnelLoopLagLimit 2\n</VirtualHost>", "test.conf:2: TunnelLoopLagLimit: not allowed in <VirtualHost>"),
    ],
)
def test_bad_lines_are_errors_naming_file_and_line(text, message):
    with pytest.raises(ConfigError) as info:
        Config.from_text(text + "\n", filename="test.conf")
    assert message in str(info.value)


def test_ready_and_live_handlers_and_the_lag_limit():
    config = Config.from_text("<Location /ready>\nSetHandler Ready\n</Location>\n<Location /live>\nSetHandler live\n</Location>\nTunnelLoopLagLimit 2.5\n")
    assert effective_scope(config.scope, "/ready").handler == "ready"
    assert effective_scope(config.scope, "/live").handler == "live"
    assert config.loop_lag_limit == 2.5
    assert Config.from_text("").loop_lag_limit == 5.0


def test_values():
    config = Config.from_text("ExtendedStatus Off\nTunnelControlSocket /run/t.sock\n")
    assert config.extended_status is False and config.control_socket == "/run/t.sock"
    assert Config.from_text("TunnelControlSocket none\n").control_socket == ""
    assert Config.from_text("").control_socket is None and Config.from_text("").extended_status is True
    b = Config.from_text("<Proxy balancer://b>\nBalancerMember ws://a/\nProxySet nonce=None\n</Proxy>\n").balancers["b"]
    assert b.nonce == ""
