"""ProxyPassReverse live (R77): a backend's redirect to its own URL reaches the client
as the proxy's, on the scheme and Host the client used; the access log sees it."""

from __future__ import annotations

import re

import pytest

from tests.support.backends import Answering
from tests.support.clients import http_get

pytestmark = pytest.mark.timeout(30)


def test_a_backend_redirect_is_mapped_back_to_the_proxy(make_proxy, tmp_path):
    answer = (
        b"HTTP/1.1 302 Found\r\nLocation: http://backend.internal:8080/app/login?next=%2F\r\n"
        b"Content-Location: http://elsewhere/x\r\nContent-Length: 0\r\n\r\n"
    )
    backend = Answering(answer, close=True)
    log = tmp_path / "access.log"
    try:
        engine = make_proxy(
            f"ProxyPass /app/ http://127.0.0.1:{backend.port}/app/\n"
            "ProxyPassReverse /app/ http://backend.internal:8080/app/\n"
            f'CustomLog {log} "%>s %{{Location}}o"\n'
        )
        status, head, _ = http_get(engine.addresses[0], "/app/")
        assert status == 302
        location = re.search(rb"(?im)^location: *(\S+)", head).group(1)
        assert location == b"http://t/app/login?next=%2F"  # the Host the client sent ("t")
        assert re.search(rb"(?im)^content-location: *http://elsewhere/x", head)  # no map: as it was
        engine.stop()
        assert log.read_text().strip() == "302 http://t/app/login?next=%2F"
    finally:
        backend.close()
