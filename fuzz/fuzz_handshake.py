"""atheris target: any bytes into the front end's head parser and upgrade checks, and into
the backend handshake, end in a decision or a documented TunnelError, never anything else.

Run by `make fuzz` (FUZZ_SECONDS bounds it): python fuzz/fuzz_handshake.py -max_total_time=N
"""

import sys

import atheris

with atheris.instrument_imports():
    from tunnel.config import Config
    from tunnel.errors import BadGateway, ClientError
    from tunnel.protocol import routing
    from tunnel.protocol.backend import BackendHandshake
from tunnel.protocol.request import FrontEnd
from tunnel.protocol.upgrade import validate_upgrade

KEY = "MDEyMzQ1Njc4OWFiY2RlZg=="
SCOPE = Config.from_text("ProxyPass /ws/ ws://127.0.0.1:9/\nProxyPass / http://127.0.0.1:9/\n").scope


def one(data: bytes) -> None:
    split = data[0] if data else 0
    front, back = data[1 : 1 + split * 4], data[1 + split * 4 :]
    fe = FrontEnd()
    fe.feed(front)
    try:
        head = fe.next_head()
        if head is not None:
            decision = routing.route(SCOPE, head.target, head.get("upgrade"), method=head.method)
            if decision.upgrade_token:
                validate_upgrade(head, decision.upgrade_token)
    except ClientError as exc:
        assert 400 <= exc.status < 500 and exc.reason, exc
    hs = BackendHandshake("GET", "/x", [("Host", "b"), ("Connection", "Upgrade"), ("Upgrade", "websocket")],
                          upgrade_token="websocket", client_key=KEY)
    hs.request_bytes()
    try:
        resp = hs.feed(back)
        if resp is not None and resp.status == 101:
            hs.check_switch(resp)
    except BadGateway as exc:
        assert exc.status == 502 and exc.reason


def main() -> None:
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
