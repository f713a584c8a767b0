"""``tunnel ctl close ID``: a Close frame of the operator's to both sides of one tunnel
(R161), mixed into `Engine`.

The request comes on the control thread. It is checked there (the tunnel is open in this
process, its frames are followed, the stream still follows RFC 6455, no close handshake
has begun) and then handed to the thread that drives the tunnel, which alone may touch
its pump: on the loop, its `AsyncTunnel` sends it at once; a sync tunnel's thread is
woken through its `Waker` and reads ``pump.asked_close``; a tunnel between the two (a
sync-to-async hand-over) finds it there when the loop adopts it. The Close goes between
two frames each way (``wscontrol``), then the usual close handshake ends the tunnel.
"""

from __future__ import annotations

import threading
from typing import Optional

from ..io.loop import Loop
from ..protocol.frames import close_problem
from ..tunnels.async_driver import AsyncTunnel
from ..tunnels.pump import Pump
from .records import Exchange
from .stats import Recorder

__all__ = ["Closing", "CloseRefused", "is_websocket"]

#: How long the control thread waits for the loop to take the request.
HAND_OVER_WAIT = 5.0


class CloseRefused(Exception):
    """The Close cannot be sent; the message says why (for ``tunnel ctl``)."""


def is_websocket(ex: Exchange) -> bool:
    """The tunnel switched to WebSocket (the 101's Upgrade), not another protocol."""
    return any(k.lower() == "upgrade" and v.strip().lower() == "websocket" for k, v in ex.response_headers)


def refusal(pump: Pump, ex: Exchange) -> Optional[str]:
    """Why no Close of the proxy's can go into this tunnel now (None: it can)."""
    c2b, b2c = pump.c2b.frames, pump.b2c.frames
    if c2b is None or b2c is None:
        if not is_websocket(ex):
            return "it is not a WebSocket tunnel (its upgrade is not websocket): there are no frames to put a Close between"
        return "its frames are not followed (ProxyWebsocketFrameTracking is Off, or Auto with nothing that needs it, where it opened)"
    if c2b.broken or b2c.broken:
        return "its bytes stopped following WebSocket framing (RFC 6455), so nothing of the proxy's may go into it"
    if pump.done:
        return "it is ending"
    if c2b.close_seen or b2c.close_seen or (pump.ctl is not None and getattr(pump.ctl, "closing", False)):
        return "a close handshake is already under way"
    return None


class Closing:
    """`close_tunnel`; the engine supplies the state below."""

    recorder: Recorder
    _loop: Optional[Loop]
    _tunnels: dict[Pump, AsyncTunnel]

    def close_tunnel(self, ident: str, code: int, reason: str) -> str:
        """Send Close ``code``/``reason`` to both sides of tunnel ``ident`` (from any
        thread). Returns what was done.

        Raises:
            CloseRefused: a bad code or reason, no such tunnel open here, or one no
                Close can go into (the message says which).
        """
        problem = close_problem(code, reason)
        if problem is not None:
            raise CloseRefused(problem)
        live = next((t for t in self.recorder.live() if t.ident == ident), None)
        if live is None:
            raise CloseRefused(f"no open tunnel {ident} (tunnel ctl tunnels lists them)")
        pump, ex = live.pump, live.exchange
        why = refusal(pump, ex)
        if why is not None:
            raise CloseRefused(f"tunnel {ident}: {why}")
        loop = self._loop
        if loop is None or not loop.running:
            self._ask(pump, code, reason)  # no loop: every tunnel is a sync one
        else:
            done = threading.Event()
            answer: list[Optional[str]] = [None]

            def on_loop() -> None:
                try:
                    answer[0] = self._deliver(pump, ex, code, reason)
                finally:
                    done.set()

            loop.call_soon_threadsafe(on_loop)
            if not done.wait(HAND_OVER_WAIT):
                raise CloseRefused(f"tunnel {ident}: the server's loop did not take the request in {HAND_OVER_WAIT:g}s")
            if answer[0] is not None:
                raise CloseRefused(f"tunnel {ident}: {answer[0]}")
        said = f' "{reason}"' if reason else ""
        return f"tunnel {ident}: Close {code}{said} sent to the client and the backend between frames; it ends with their answers"

    def _deliver(self, pump: Pump, ex: Exchange, code: int, reason: str) -> Optional[str]:
        """Loop thread: hand the Close to the tunnel's driver. Returns a refusal or None."""
        why = refusal(pump, ex)
        if why is not None:
            return why
        tunnel = self._tunnels.get(pump)
        if tunnel is not None:
            if not tunnel.close_with(code, reason):
                return refusal(pump, ex) or "its driver could not send the Close"
            return None
        self._ask(pump, code, reason)
        return None

    @staticmethod
    def _ask(pump: Pump, code: int, reason: str) -> None:
        """A sync tunnel (or one on its way to the loop): its driver sends it."""
        pump.asked_close = (code, reason)
        waker = pump.waker
        if waker is not None:
            waker.wake()
