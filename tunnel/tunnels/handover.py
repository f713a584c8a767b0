"""A live tunnel as data, for a binary upgrade that moves it to a new process (R155-R157).

`freeze` turns a stopped `Pump` (no driver touches it any more) into JSON-able state and
a list of byte blobs (the bytes pending in each direction, the frames of the proxy's own
waiting for a boundary); `thaw` builds the same pump in the new process around the two
sockets that came with it over ``SCM_RIGHTS``. What is carried:

* each flow's half-close state, its byte count (so the access log's totals and the
  balancer's traffic are the whole tunnel's) and its pending bytes;
* each flow's `FrameFollower` (where the next frame boundary is, whether a Close passed);
* the timers: last activity (the idle deadline follows from it), the send-stall mark,
  a graceful close time, and the whole `Control` (ping marks and deadlines, a close
  handshake under way, the half-close clock). They are ``time.monotonic()`` values:
  CLOCK_MONOTONIC is one clock for every process of the machine, so they mean the same
  thing in the new process and nothing is shifted.

Only plain-socket tunnels move (`movable`): a TLS end's state lives inside OpenSSL.

`Parker` stops sync tunnels at a safe point: their thread, woken by its pipe, sees
``pump.hold`` between two events and returns the pump to the engine untouched.
"""

from __future__ import annotations

import os
import select
import socket
from typing import Any, Optional

from ..protocol.frames import FrameFollower
from .pump import Budget, Flow, FlowState, Pump
from .wscontrol import Control

__all__ = ["freeze", "thaw", "movable", "Parker", "HandoverError"]

#: The Control slots carried as they are (numbers, flags, lists of them).
_CTL_PLAIN = (
    "ping_interval",
    "half_close",
    "graceful_at",
    "closing",
    "reason",
    "close_deadline",
    "next_due",
    "_swallow",
    "_dead",
    "_marks",
    "_silent_since",
    "_ping_due",
    "_ping_sent",
    "_next_ping_check",
    "_half_since",
)


class HandoverError(ValueError):
    """A tunnel's state that cannot be rebuilt (a version mismatch, a bug)."""


def movable(pump: Pump) -> bool:
    """Both ends are plain sockets (TCP or unix): the tunnel can move to another process."""
    return type(pump.client) is socket.socket and type(pump.backend) is socket.socket and not pump.done


def _flow_state(flow: Flow, blobs: list[bytes]) -> dict[str, Any]:
    pending = -1
    if flow.pending is not None:
        pending = len(blobs)
        blobs.append(bytes(flow.pending))
    return {
        "state": flow.state.value,
        "count": flow.count,
        "pending": pending,
        "frames": flow.frames.state() if flow.frames is not None else None,
    }


def freeze(pump: Pump) -> tuple[dict[str, Any], list[bytes]]:
    """The state of a stopped pump and its byte blobs (see the module docstring)."""
    pump.release_pipes()  # a bulk flow's pipe is empty between events: nothing to carry
    blobs: list[bytes] = []
    state: dict[str, Any] = {
        "c2b": _flow_state(pump.c2b, blobs),
        "b2c": _flow_state(pump.b2c, blobs),
        "high_water": pump.high_water,
        "reason": pump.reason,
        "last_activity": pump.last_activity,
        "stall_mark": list(pump._stall_mark),
        "stall_since": pump._stall_since,
        "close_at": pump.close_at,
        "close_watch": pump.close_watch,
        "ctl": None,
    }
    ctl = pump.ctl
    if isinstance(ctl, Control):
        queued = []
        for frames in ctl._queued:
            queued.append(list(range(len(blobs), len(blobs) + len(frames))))
            blobs.extend(frames)
        state["ctl"] = {name: _plain(getattr(ctl, name)) for name in _CTL_PLAIN} | {"queued": queued}
    return state, blobs


def _plain(value: Any) -> Any:
    if isinstance(value, float) and value == float("inf"):
        return "inf"
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _unplain(value: Any) -> Any:
    if value == "inf":
        return float("inf")
    if isinstance(value, list):
        return [_unplain(v) for v in value]
    return value


def _restore_flow(flow: Flow, state: dict[str, Any], blobs: list[bytes], budget: Optional[Budget]) -> None:
    flow.state = FlowState(state["state"])
    flow.count = int(state["count"])
    index = int(state["pending"])
    if index >= 0:
        flow.pending = bytearray(blobs[index])
        if budget is not None:
            budget.take(len(flow.pending))
    frames = state["frames"]
    flow.frames = FrameFollower.restore(frames) if frames is not None else None


def thaw(
    state: dict[str, Any], blobs: list[bytes], client: socket.socket, backend: socket.socket, *, budget: Optional[Budget] = None
) -> Pump:
    """The pump `freeze` described, around the tunnel's two (non-blocking) sockets.

    Raises:
        HandoverError: the state is not one `freeze` made.
    """
    try:
        pump = Pump(client, backend, high_water=int(state["high_water"]), budget=budget)
        _restore_flow(pump.c2b, state["c2b"], blobs, budget)
        _restore_flow(pump.b2c, state["b2c"], blobs, budget)
        pump.reason = str(state["reason"])
        pump.last_activity = float(state["last_activity"])
        pump._stall_mark = tuple(int(v) for v in state["stall_mark"])
        pump._stall_since = float(state["stall_since"])
        pump.close_at = float(state["close_at"])
        pump.close_watch = bool(state.get("close_watch", False))
        ctl_state = state["ctl"]
        if ctl_state is not None:
            ctl = Control(pump)
            for name in _CTL_PLAIN:
                setattr(ctl, name, _unplain(ctl_state[name]))
            ctl._queued = tuple([blobs[i] for i in indexes] for indexes in ctl_state["queued"])  # type: ignore[assignment]
            pump.ctl = ctl
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise HandoverError(f"cannot rebuild a tunnel from its state: {exc!r}") from None
    return pump


class Parker:
    """Stops sync tunnels at a safe point for a hand-over (their threads watch ``fileno``).

    ``begin`` makes the pipe readable: every sync thread wakes, and one whose pump has
    ``hold`` set returns it (`tunnel.tunnels.sync_driver.run_sync`). While ``active`` a
    thread that was not asked keeps its poll short, so that a pump held a moment later
    is still seen at once; ``end`` empties the pipe.
    """

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self.active = False

    def fileno(self) -> int:
        return self._r

    def begin(self) -> None:
        self.active = True
        try:
            os.write(self._w, b"!")
        except OSError:
            pass  # full or closed: readable already, or shutting down

    def end(self) -> None:
        self.active = False
        try:
            while select.select([self._r], [], [], 0)[0] and os.read(self._r, 4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
