"""The balancer's timeout=: wait for a member to become usable instead of a 503 at once."""

from __future__ import annotations

import socket
import time

import pytest

from tunnel.echo import EchoServer

from .helpers import free_port_refused, read_head, status_of, upgrade_request, wait_for

pytestmark = pytest.mark.timeout(30)


def upgrade_status(engine) -> int:
    with socket.create_connection(engine.addresses[0], timeout=10) as sock:
        sock.sendall(upgrade_request("/ws/"))
        head, _ = read_head(sock, timeout=10)
    return status_of(head)


@pytest.mark.parametrize("wait", [0, 5])
def test_member_in_error_state_waited_for_only_with_timeout(make_proxy, wait):
    port = free_port_refused()
    # forcerecovery=Off: otherwise a lone member in error is tried at once (httpd too).
    engine = make_proxy(
        "<Proxy balancer://c>\n"
        f"  BalancerMember ws://127.0.0.1:{port} retry=1\n"
        f"  ProxySet timeout={wait} forcerecovery=Off\n"
        "</Proxy>\n"
        "ProxyPass /ws/ balancer://c/\n"
    )
    assert upgrade_status(engine) == 503  # refused: the member enters error state for 1 s
    with EchoServer("127.0.0.1", port):  # the member comes back on the same port
        started = time.monotonic()
        status = upgrade_status(engine)
        took = time.monotonic() - started
    if wait:
        assert status == 101  # waited for the error state to expire, then connected
        assert 0.5 < took < 5
    else:
        assert status == 503  # still in error: answered at once
        assert took < 0.5


def test_a_client_that_leaves_during_the_wait_is_let_go_at_once(make_proxy, caplog):
    """R41 tunnel line: the balancer's timeout= wait watches the client; one that leaves
    ends the wait at once (no member picked or connected for nobody)."""
    import logging

    caplog.set_level(logging.INFO)
    port = free_port_refused()
    engine = make_proxy(
        "<Proxy balancer://c>\n"
        f"  BalancerMember ws://127.0.0.1:{port} retry=30\n"
        "  ProxySet timeout=20 forcerecovery=Off\n"
        "</Proxy>\n"
        "ProxyPass /ws/ balancer://c/\n"
    )
    assert upgrade_status(engine) == 503  # the member is now in error for 30 s
    sock = socket.create_connection(engine.addresses[0], timeout=10)
    sock.sendall(upgrade_request("/ws/"))
    wait_for(lambda: engine._tasks, what="the request waiting for a member")
    started = time.monotonic()
    sock.close()
    wait_for(lambda: not engine._tasks, timeout=10, what="the wait to end with the client")
    assert time.monotonic() - started < 3  # not the 20 s of timeout=
    assert "left" in caplog.text
