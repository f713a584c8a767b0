"""Protocols and the H2* directives (R140-R142): values, defaults, contexts, errors."""

from __future__ import annotations

import pytest

from tests.support.sansio import conf
from tunnel.errors import ConfigError


def test_defaults_are_httpds():
    scope = conf("Listen 80").scope
    assert scope.protocols == ("http/1.1",)
    assert scope.h2_websockets is False
    assert (scope.h2_max_session_streams, scope.h2_window_size, scope.h2_stream_max_mem_size) == (100, 65535, 65536)


def test_values_and_vhost_inheritance():
    c = conf(
        "Listen 443 https\nProtocols H2 http/1.1 h2\nH2WebSockets On\nH2MaxSessionStreams 7\n"
        "H2WindowSize 1048576\nH2StreamMaxMemSize 1024\n"
        "<VirtualHost *:443>\nServerName a\nProtocols http/1.1\nH2WebSockets off\n</VirtualHost>\n"
        "<VirtualHost *:443>\nServerName b\n</VirtualHost>\n"
    )
    assert c.scope.protocols == ("h2", "http/1.1")  # case folded, a repeat dropped
    assert (c.scope.h2_websockets, c.scope.h2_max_session_streams, c.scope.h2_window_size, c.scope.h2_stream_max_mem_size) == (True, 7, 1048576, 1024)
    a, b = c.vhosts
    assert (a.scope.protocols, a.scope.h2_websockets) == (("http/1.1",), False)
    assert (b.scope.protocols, b.scope.h2_websockets, b.scope.h2_max_session_streams) == (("h2", "http/1.1"), True, 7)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("Protocols h2c http/1.1", "Protocols: h2c (HTTP/2 over cleartext) is not supported"),
        ("Protocols spdy/3", 'Protocols: expected h2 or http/1.1, got "spdy/3"'),
        ("Protocols", "Protocols: expected one or more of h2, http/1.1"),
        ("H2WebSockets yes", 'H2WebSockets: expected On or Off, got "yes"'),
        ("H2MaxSessionStreams 0", 'H2MaxSessionStreams: expected an integer from 1 to 2147483647, got "0"'),
        ("H2WindowSize 1023", 'H2WindowSize: expected an integer from 1024 to 2147483647, got "1023"'),
        ("H2WindowSize 2147483648", "H2WindowSize: expected an integer from 1024"),
        ("H2StreamMaxMemSize 64k", 'H2StreamMaxMemSize: expected an integer from 1024 to 2147483647, got "64k"'),
    ],
)
def test_bad_values_name_the_directive_file_and_line(line, message):
    with pytest.raises(ConfigError) as err:
        conf(f"Listen 80\n{line}\n", filename="h2.conf")
    assert str(err.value).startswith("h2.conf:2: ")
    assert message in str(err.value)


def test_h2_directives_are_not_for_locations():
    with pytest.raises(ConfigError, match="not allowed in <Location>"):
        conf("Listen 80\n<Location /x>\nH2WebSockets on\n</Location>\n")
