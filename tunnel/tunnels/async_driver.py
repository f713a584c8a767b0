"""The async driver: a tunnel's two sockets on the engine's loop, driving a `Pump`.

All async tunnels share the loop's one epoll set and one scratch buffer. The driver only
forwards readiness to the pump and mirrors the pump's wanted events into the epoll set
(``Loop.modify`` is a no-op when nothing changed, so a busy tunnel makes no epoll
calls at all). Idle expiry is checked lazily: one timer per tunnel, re-armed from the
last activity stamp when it fires, never touched per event (R38).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

from ..io.loop import Deadline, Loop, Timer
from ..io.streams import EVENT_READ, EVENT_WRITE
from .pump import FlowState, Pump
from .wscontrol import NEVER, attach

__all__ = ["AsyncTunnel"]

_OPEN = FlowState.OPEN


class AsyncTunnel(Deadline):
    """Run ``pump`` on ``loop`` until it is done; then close both ends and call ``on_close``.

    Args:
        loop: the engine's loop; ``start`` must run in its thread.
        pump: the tunnel's pump (fresh, or handed over by the sync driver).
        scratch: the loop's shared scratch buffer.
        idle_timeout: seconds without a byte moving either way before the tunnel is
            closed; 0 for none.
        send_timeout: seconds a pending write may make no progress before the tunnel is
            closed ("send timeout", R37); 0 for none. Checked every half of it, by a
            timer armed only while something waits to be written.
        on_close: called once with the pump when the tunnel has ended.

    The tunnel is its own idle timer (a `Deadline` the loop arms again and again), so an
    idle tunnel holds no timer handle and no bound method for it.
    """

    __slots__ = (
        "loop",
        "pump",
        "scratch",
        "idle_timeout",
        "send_timeout",
        "on_close",
        "_stall_timer",
        "_cfd",
        "_bfd",
        "_ctl_timer",
        "_detached",
        "_steady",
    )

    def __init__(
        self,
        loop: Loop,
        pump: Pump,
        scratch: memoryview,
        *,
        idle_timeout: float = 0.0,
        send_timeout: float = 0.0,
        on_close: Optional[Callable[[Pump], None]] = None,
    ) -> None:
        self.loop = loop
        self.pump = pump
        self.scratch = scratch
        self.idle_timeout = idle_timeout
        self.send_timeout = send_timeout
        self.on_close = on_close
        Deadline.__init__(self, 0.0, loop, armed=False)  # the idle watch, armed by start
        self._stall_timer: Optional[Timer] = None
        self._ctl_timer: Optional[Timer] = None  # the pump's Control's next due time
        self._detached = False  # a binary upgrade took the pump: callbacks still queued do nothing
        #: both ends watched for reading only, both flows OPEN with nothing buffered, no
        #: TLS, no global cap, no Control: a read event needs only the pump's ``read``,
        #: and leaves the interest as it was unless that read buffered, ended or failed.
        self._steady = False
        self._cfd = pump.client.fileno()
        self._bfd = pump.backend.fileno()

    def start(self, *, fresh: bool = True, restored: bool = False) -> None:
        """Register both ends. ``fresh`` False: a handed-over pump (no early data to send).
        ``restored``: rebuilt from another process's state (R156): its activity stamp
        and its Control's timers are kept as they came."""
        loop, pump = self.loop, self.pump
        if not restored:
            pump.last_activity = loop.time()
        if fresh:
            pump.start()
        cmask, bmask = pump.interest()
        loop.register(self._cfd, cmask, self._on_client)
        loop.register(self._bfd, bmask, self._on_backend)
        if self.idle_timeout > 0:
            loop.schedule(self, pump.last_activity + self.idle_timeout)
        if pump.close_at:
            attach(pump)
        if pump.ctl is not None and not restored:
            pump.ctl.start(pump.last_activity)
        asked = pump.asked_close
        if asked is not None:  # asked while the sync driver handed it over (R161)
            pump.asked_close = None
            attach(pump).close_with(pump.last_activity, *asked)
        if not fresh:
            # Handed over: a TLS end may hold bytes the sync driver left decrypted or
            # buffered, which no poll will report: look once, as after a budgeted read.
            loop.call_soon(self._poke)
        self._after()

    def close_at(self, when: float) -> None:
        """A graceful close of the tunnel at ``when`` (engine stop). Loop thread only."""
        pump = self.pump
        pump.close_at = when
        attach(pump).schedule_close(when)
        self._after()

    def close_with(self, code: int, text: str) -> bool:
        """A Close of ``code`` and ``text`` to both sides between frames, then the close
        handshake (``tunnel ctl close``, R161). Loop thread only. False when it cannot
        go (see `tunnel.tunnels.wscontrol.Control.close_with`)."""
        pump = self.pump
        if pump.done:
            return False
        sent = attach(pump).close_with(self.loop.time(), code, text)
        self._after()
        return sent

    def abort(self, reason: str) -> None:
        """End the tunnel now (engine shutdown). Loop thread only."""
        self.pump.abort(reason)
        self._after()

    def detach(self) -> None:
        """Stop driving the pump without ending it (a binary upgrade moves it): both
        ends leave the loop, the timers are cancelled, nothing is closed. Loop thread."""
        self.on_close = None
        self._detached = True
        # The sockets live on in another process (SCM_RIGHTS shares the file
        # description), so closing ours would not take them out of this epoll set: they
        # leave it explicitly, or their events would keep waking this loop.
        self.loop.unregister(self._cfd)
        self.loop.unregister(self._bfd)
        self._stop_driving()

    def _on_client(self, mask: int) -> None:
        pump = self.pump
        if self._steady:  # the mask is EVENT_READ: nothing else is watched
            flow = pump.c2b
            pump.read(flow, self.scratch)
            pump.last_activity = self.loop.now
            if flow.pending is None and flow.state is _OPEN and not pump.done:
                return  # still steady: the interest is what it was
        else:
            if self._detached:
                return  # an event of the same wake-up as the detach
            pump.on_event(True, mask, self.scratch)
            pump.last_activity = self.loop.now
        self._after()

    def _on_backend(self, mask: int) -> None:
        pump = self.pump
        if self._steady:
            flow = pump.b2c
            pump.read(flow, self.scratch)
            pump.last_activity = self.loop.now
            if flow.pending is None and flow.state is _OPEN and not pump.done:
                return
        else:
            if self._detached:
                return  # an event of the same wake-up as the detach
            pump.on_event(False, mask, self.scratch)
            pump.last_activity = self.loop.now
        self._after()

    def _after(self) -> None:
        self._steady = False
        if self._detached:
            return
        pump = self.pump
        ctl = pump.ctl
        if ctl is not None and not pump.done:
            due = ctl.after(self.loop.now)
            timer = self._ctl_timer
            if timer is None or timer.when != due:
                if timer is not None:
                    timer.cancel()
                self._ctl_timer = None if due is NEVER else self.loop.call_at(due, self._on_ctl)
        if pump.done:
            self._finish()
            return
        cmask, bmask = pump.interest()
        loop = self.loop
        loop.modify(self._cfd, cmask)
        loop.modify(self._bfd, bmask)
        if (cmask | bmask) & EVENT_WRITE and self._stall_timer is None and self.send_timeout > 0:
            # A write is pending: the send timeout's watch starts now, and stops when
            # nothing is left to write (an idle tunnel holds no stall timer).
            pump.check_stall(loop.time(), self.send_timeout)
            self._stall_timer = loop.call_later(self.send_timeout / 2, self._check_stall)
        if pump.more:  # a TLS source may hold decrypted bytes no poll reports
            pump.more = False
            loop.call_soon(self._poke)
        elif pump.budget is not None:
            if pump.budget.exhausted and not (cmask or bmask):
                loop.call_later(0.05, self._after)  # paused by the global cap: look again soon
        elif (
            cmask == EVENT_READ
            and bmask == EVENT_READ
            and ctl is None
            and pump.c2b.src_tls is None
            and pump.b2c.src_tls is None
        ):
            # Both flows OPEN with nothing pending (else a mask would differ), plain sockets.
            self._steady = True

    def _poke(self) -> None:
        if not self.pump.done and not self._detached:
            self.pump.on_event(True, 1, self.scratch)
            self.pump.on_event(False, 1, self.scratch)
            self._after()

    def _on_ctl(self) -> None:
        self._ctl_timer = None
        ctl = self.pump.ctl
        if ctl is not None and not self.pump.done:
            ctl.tick(self.loop.time())
        self._after()

    args = ()  # what the loop calls when the idle watch is due: callback(*args)

    @property
    def callback(self) -> Callable[[], None]:  # type: ignore[override]
        return self._check_idle

    def _check_idle(self) -> None:
        pump = self.pump
        if pump.done:
            return
        deadline = pump.last_activity + self.idle_timeout
        if self.loop.time() >= deadline:
            pump.abort("idle timeout")
            self._finish()
        else:
            self.loop.schedule(self, deadline)

    def _check_stall(self) -> None:
        self._stall_timer = None
        pump = self.pump
        if pump.done:
            return
        if pump.check_stall(self.loop.time(), self.send_timeout):
            self._finish()
        elif pump.c2b.backlog or pump.b2c.backlog:
            self._stall_timer = self.loop.call_later(self.send_timeout / 2, self._check_stall)

    def _finish(self) -> None:
        self._stop_driving()
        self.pump.close()
        if self.on_close is not None:
            cb, self.on_close = self.on_close, None
            cb(self.pump)

    def _stop_driving(self) -> None:
        self._steady = False
        loop = self.loop
        loop.forget(self._cfd)  # both are closed below: no epoll_ctl needed
        loop.forget(self._bfd)
        self.cancel()  # the idle watch (a no-op unless armed)
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self._ctl_timer is not None:
            self._ctl_timer.cancel()
            self._ctl_timer = None

    def __repr__(self) -> str:
        return f"<AsyncTunnel fds={self._cfd},{self._bfd} {self.pump!r}>"
