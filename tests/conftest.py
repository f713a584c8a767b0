"""Fixtures: the echo backends and a proxy factory, all on loopback ports the OS picks."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest

from tests.support.strategies import STRATEGY_CONFIGS
from tunnel import Config, Engine, HostCapabilities
from tunnel.echo import EchoServer


@pytest.fixture(autouse=True)
def _tunnel_logs_to_caplog():
    """Let caplog see tunnel's loggers even after a CLI test reconfigured them."""
    root = logging.getLogger("tunnel")
    root.propagate = True
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.DEBUG)
    yield


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    with EchoServer("127.0.0.1", 0) as server:
        yield server


@pytest.fixture
def raw_echo() -> Iterator[EchoServer]:
    with EchoServer("127.0.0.1", 0, raw=True) as server:
        yield server


ProxyFactory = Callable[..., Engine]


@pytest.fixture
def make_proxy() -> Iterator[ProxyFactory]:
    """make_proxy(config_text, host=None) -> a running Engine (listening on 127.0.0.1:0
    unless the text has its own Listen)."""
    engines: list[Engine] = []

    def factory(text: str, *, host: HostCapabilities | None = None, start: bool = True) -> Engine:
        if "Listen" not in text:
            text = "Listen 127.0.0.1:0\n" + text
        engine = Engine(Config.from_text(text, filename="test.conf"), host=host, server_name="proxy.test")
        engines.append(engine)
        if start:
            engine.start()
        return engine

    yield factory
    for engine in engines:
        engine.stop()


@pytest.fixture(params=sorted(STRATEGY_CONFIGS))
def strategy(request) -> str:
    """Each behaviour test runs with sync, async, and async with a delay that expires
    mid-transfer (the sync -> async hand-over)."""
    return request.param
