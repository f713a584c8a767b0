"""The sync driver: a thread per tunnel, blocking in ``poll`` on the tunnel's two sockets.

It drives the same `tunnel.tunnels.pump.Pump` as the async driver, so buffering, backpressure and
half-close behave identically; only the waiting differs. Threads come from a bounded
`ThreadPool`: when every thread is busy a new tunnel is refused (503), never queued
(docs/httpd-behaviour.md, R34).

``run_sync`` can stop at a hand-over time (``ProxyWebsocketAsyncDelay``): it then returns
with the pump still open, and the caller hands the same pump to the loop.
"""

from __future__ import annotations

import _thread
import logging
import mmap
import os
import queue
import select
import sys
import threading
import time
from collections.abc import Callable
from typing import Optional

from ..io import heldio
from ..io.heldio import held_socket, pointer_to
from ..io.streams import EVENT_READ, EVENT_WRITE
from .handover import Parker
from .pump import SCRATCH_SIZE, Pump
from .wscontrol import NEVER, attach

__all__ = ["run_sync", "ThreadPool", "Waker", "take_asked_close"]

log = logging.getLogger("tunnel.sync")

#: How long an idle pool thread waits for work before it exits.
THREAD_IDLE_EXIT = 30.0
#: Poll cap while the global buffer cap pauses every flow of a tunnel.
BUDGET_RECHECK = 0.05
#: The interpreter's switch interval once sync tunnel threads run (``sys.setswitchinterval``;
#: Python's default is 5 ms). Every thread waiting for the GIL wakes at each interval to
#: ask the holder to drop it, and a holder asked that way hands the GIL over at its next
#: system call and queues for it again: with a thousand busy tunnel threads that was
#: most of the process's time (a thousand context switches per message; 1,000 tunnels
#: at 0.02x of a direct connection, p99 0.9 s). No thread of the proxy computes for long
#: without a system call (each lets the GIL go), so a longer interval costs nothing but
#: those forced hand-offs (docs/performance.md, "The sync strategy").
SWITCH_INTERVAL = 0.05
#: Busy sync threads from which a new tunnel's reads and sends keep the GIL: below it the
#: GIL has few takers and a ctypes call costs more than the hand-off it saves (about 1 us
#: a call; docs/performance.md).
HOLD_GIL_FROM = 8
#: Poll cap of a sync thread while a binary upgrade's hand-over is under way.
PARK_RECHECK = 0.05

#: Seconds a sync tunnel's poll waits with nothing to do before its thread's scratch
#: buffer gives its pages back (`ThreadScratch.release`); the poll then waits on for the
#: rest of its time. An idle tunnel otherwise keeps every page its reads ever wrote: one
#: for a small message, 64 (256 KiB) once it has moved bulk data.
SCRATCH_RELEASE_AFTER = 1.0

#: Stack of a sync tunnel thread (the system's default is 8 MiB). The deepest any
#: thread's stack reached over the end-to-end and tunnel tests of both strategies (TLS,
#: frame tracking, errors logged with their traceback) was 20 KiB; a recursion through C
#: frames down to the interpreter's recursion limit fits in 256 KiB (not in 64 KiB: the
#: process crashes). Only address space and page tables shrink, a stack's pages existing
#: once written: each 8 MiB stack sat in a 2 MiB region of its own and cost a page-table
#: page per thread (docs/performance.md).
TUNNEL_STACK_SIZE = 1024 * 1024

_POLL_READ = select.POLLIN | select.POLLPRI
_POLL_ERR = select.POLLERR | select.POLLHUP
_local = threading.local()


class ThreadScratch:
    """A sync thread's scratch buffer: a private anonymous mapping, so that its pages
    exist only once a read has written them and can be given back while the thread's
    tunnel is idle (the next read finds zeroed pages, which is all a scratch needs)."""

    __slots__ = ("_map", "view", "pointer", "dirty")

    def __init__(self, size: int = SCRATCH_SIZE) -> None:
        self._map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.view = memoryview(self._map)
        #: for held reads (`tunnel.io.heldio`): one per thread, not one per socket.
        self.pointer = pointer_to(self.view) if heldio.AVAILABLE else None
        #: a read may have written pages since the last release.
        self.dirty = False

    def release(self) -> None:
        """Give the written pages back to the kernel (nothing is kept in a scratch
        between two events: bytes a read leaves are copied to the flow's own buffer)."""
        self._map.madvise(mmap.MADV_DONTNEED)
        self.dirty = False


def thread_scratch() -> ThreadScratch:
    """The calling thread's scratch buffer (one per sync thread, reused by its tunnels)."""
    scratch: Optional[ThreadScratch] = getattr(_local, "scratch", None)
    if scratch is None:
        scratch = _local.scratch = ThreadScratch()
    return scratch


class Waker:
    """A descriptor another thread makes readable to wake one sync tunnel's poll
    (``tunnel ctl close``, R161): an eventfd, or a pipe where there is none. Made only
    for tunnels whose frames are followed (the only ones a Close can be put into)."""

    __slots__ = ("fd", "_write_fd", "_lock", "_closed")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        if hasattr(os, "eventfd"):
            self.fd = self._write_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:  # pragma: no cover - Linux has eventfd
            self.fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def wake(self) -> None:
        """Any thread: make ``fd`` readable (nothing once closed)."""
        with self._lock:
            if not self._closed:
                try:
                    os.write(self._write_fd, (1).to_bytes(8, "little"))
                except OSError:
                    pass  # already readable (a full counter or pipe): woken all the same

    def drain(self) -> None:
        """The polling thread: readable no more."""
        try:
            os.read(self.fd, 4096)
        except OSError:
            pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            os.close(self.fd)
            if self._write_fd != self.fd:
                os.close(self._write_fd)


def take_asked_close(pump: Pump, now: float) -> None:
    """The driver's thread: send the Close an operator asked for, if any (R161)."""
    asked = pump.asked_close
    if asked is not None and not pump.done:
        pump.asked_close = None
        attach(pump).close_with(now, *asked)


def _to_poll(mask: int) -> int:
    return (select.POLLIN if mask & EVENT_READ else 0) | (select.POLLOUT if mask & EVENT_WRITE else 0)


def run_sync(
    pump: Pump,
    *,
    idle_timeout: float = 0.0,
    handover_at: Optional[float] = None,
    fresh: bool = True,
    stopping: Optional[threading.Event] = None,
    send_timeout: float = 0.0,
    wake_fd: Optional[int] = None,
    hold_gil: bool = True,
    parker: Optional[Parker] = None,
    restored: bool = False,
) -> bool:
    """Relay until the pump is done (True) or ``handover_at`` passes (False).

    Args:
        pump: the tunnel's pump.
        idle_timeout: seconds with no byte moving either way before the tunnel is
            aborted with reason "idle timeout"; 0 for none.
        handover_at: a ``time.monotonic()`` value at which to return with the pump open.
        fresh: False when the pump was already started elsewhere.
        stopping: set by the engine at shutdown; the tunnel is aborted when seen.
        send_timeout: seconds a pending write may make no progress before the tunnel
            is aborted ("send timeout", R37); 0 for none.
        wake_fd: a descriptor the engine makes readable when it has set
            ``pump.close_at`` on its tunnels (a graceful stop); watched until then.
        hold_gil: read and send with the GIL held (`tunnel.io.heldio`), for a thread
            among many (`HOLD_GIL_FROM`).
        parker: a binary upgrade's `Parker`: when it wakes the thread and ``pump.hold``
            is set, the pump is returned as it is, between two events (R157).
        restored: the pump was rebuilt from another process's state: its activity
            stamp and timers are kept, not started again.

    Returns:
        True when the tunnel ended (the caller closes it), False at the hand-over time
        or when held (``pump.hold``).
    """
    # The flows read and send through ends that keep the GIL (tunnel.io.heldio): only
    # the poll that waits lets it go. The pump's own ends are put back on return (a
    # hand-over gives the pump to the loop as it came).
    if not hold_gil:
        return _relay(pump, idle_timeout, handover_at, fresh, stopping, send_timeout, wake_fd, parker, restored)
    c2b, b2c = pump.c2b, pump.b2c
    own = thread_scratch()
    client = held_socket(pump.client, own.view, own.pointer)
    backend = held_socket(pump.backend, own.view, own.pointer)
    c2b.src = b2c.dst = client
    c2b.dst = b2c.src = backend
    try:
        return _relay(pump, idle_timeout, handover_at, fresh, stopping, send_timeout, wake_fd, parker, restored)
    finally:
        c2b.src = b2c.dst = pump.client
        c2b.dst = b2c.src = pump.backend


def _relay(
    pump: Pump,
    idle_timeout: float,
    handover_at: Optional[float],
    fresh: bool,
    stopping: Optional[threading.Event],
    send_timeout: float,
    wake_fd: Optional[int],
    parker: Optional[Parker],
    restored: bool,
) -> bool:
    own = thread_scratch()
    own.dirty = True  # (a tunnel before this one may have left pages written)
    scratch = own.view
    release_ms = int(SCRATCH_RELEASE_AFTER * 1000)
    cfd, bfd = pump.client.fileno(), pump.backend.fileno()
    poller = select.poll()
    registered = {cfd: -1, bfd: -1}
    now = time.monotonic()
    if not restored:
        pump.last_activity = now
    next_stall_check = now
    if pump.close_at:
        attach(pump)
    ctl = pump.ctl
    if ctl is not None and not restored:
        ctl.start(now)
    if wake_fd is not None:
        poller.register(wake_fd, select.POLLIN)
    waker: Optional[Waker] = None
    if pump.c2b.frames is not None:
        waker = Waker()
        poller.register(waker.fd, select.POLLIN)
        pump.waker = waker
    park_fd = parker.fileno() if parker is not None else None
    parking = False  # the parker's pipe is in the poll set
    if fresh:
        pump.start()
    try:
        if pump.asked_close is not None:  # asked before the waker was there to wake us
            take_asked_close(pump, now)
            ctl = pump.ctl
        while not pump.done:
            if pump.hold:
                return False  # a binary upgrade moves it: stopped between two events
            if parker is not None and park_fd is not None and parking == parker.active:
                # Watch the pipe while no hand-over is under way; during one, poll briefly
                # instead (the pipe stays readable until it ends).
                if parking:
                    poller.unregister(park_fd)
                else:
                    poller.register(park_fd, select.POLLIN)
                parking = not parking
            if stopping is not None and stopping.is_set():
                pump.abort("shutdown")
                break
            cmask, bmask = pump.interest()
            for fd, mask in ((cfd, cmask), (bfd, bmask)):
                if registered[fd] != mask:
                    if mask:
                        poller.register(fd, _to_poll(mask))  # register() modifies when present
                    elif registered[fd] > 0:
                        # No interest: out of the poll set. poll() reports POLLERR/POLLHUP
                        # whatever the mask, and an end the pump has nothing to do with (a
                        # client that half-closed, then reset) would spin this loop and keep
                        # the idle timer from ever firing; the async driver unregisters too.
                        poller.unregister(fd)
                    registered[fd] = mask
            wait = None
            if idle_timeout > 0:
                wait = pump.last_activity + idle_timeout - now
            if handover_at is not None:
                left = handover_at - now
                wait = left if wait is None else min(wait, left)
            if send_timeout > 0 and (cmask & EVENT_WRITE or bmask & EVENT_WRITE):
                probe = send_timeout / 2  # bytes wait: look at their progress now and then
                wait = probe if wait is None else min(wait, probe)
            if ctl is not None and ctl.next_due is not NEVER:
                left = ctl.next_due - now
                wait = left if wait is None else min(wait, left)
            if parker is not None and parker.active:
                wait = PARK_RECHECK if wait is None else min(wait, PARK_RECHECK)
            if pump.more:
                wait = 0.0
            elif not (cmask or bmask):
                # Paused by the global cap: look again soon. (Shutdown wakes us by shutting
                # the sockets: Engine._wake_sync_tunnels.)
                wait = BUDGET_RECHECK if wait is None else min(wait, BUDGET_RECHECK)
            timeout_ms = -1 if wait is None else max(0, int(wait * 1000 + 0.999))
            releasing = own.dirty and (timeout_ms < 0 or timeout_ms > release_ms)
            if releasing:
                timeout_ms = release_ms  # first a while; idle by then: the pages go back
            try:
                events = poller.poll(timeout_ms)
            except InterruptedError:
                events = []
            now = time.monotonic()
            if releasing and not events:
                own.release()
                continue  # the loop's top: the same wait again, for the rest of its time
            if stopping is not None and stopping.is_set():
                pump.abort("shutdown")
                break
            if events:
                own.dirty = True
                for fd, ev in events:
                    if fd == park_fd:
                        continue  # the loop's top looks at pump.hold and the parker
                    if waker is not None and fd == waker.fd:
                        waker.drain()
                        take_asked_close(pump, now)  # tunnel ctl close (R161)
                        ctl = pump.ctl
                        continue
                    if fd == wake_fd:
                        # A graceful stop: the engine set pump.close_at. Watched once.
                        poller.unregister(fd)
                        wake_fd = None
                        if pump.close_at:
                            ctl = attach(pump)
                            ctl.schedule_close(pump.close_at)
                        continue
                    if ev & select.POLLNVAL:
                        pump.abort("error: socket closed under the tunnel")
                        break
                    mask = (EVENT_READ if ev & _POLL_READ else 0) | (EVENT_WRITE if ev & select.POLLOUT else 0)
                    if ev & _POLL_ERR:
                        mask = EVENT_READ | EVENT_WRITE  # the next I/O reports the cause (R30)
                    pump.on_event(fd == cfd, mask, scratch)
                pump.last_activity = now
            if pump.more and not pump.done:
                # A TLS end may hold bytes no poll reports: read both ends again, whatever
                # else was ready (a socket always writable must not starve the poke).
                pump.more = False
                pump.on_event(True, EVENT_READ, scratch)
                pump.on_event(False, EVENT_READ, scratch)
            if ctl is not None and ctl.after(now) <= now:
                ctl.tick(now)
            if _ended(pump):
                break
            if handover_at is not None and now >= handover_at:
                return False
            if idle_timeout > 0 and now - pump.last_activity >= idle_timeout:
                pump.abort("idle timeout")
            elif send_timeout > 0 and now >= next_stall_check:
                next_stall_check = now + send_timeout / 2
                pump.check_stall(now, send_timeout)
        return True
    finally:
        if waker is not None:
            pump.waker = None
            waker.close()


def _ended(pump: Pump) -> bool:
    """``pump.done``, read again: the pump calls above may have ended the tunnel, which
    a type checker, keeping the loop condition's ``not pump.done``, cannot see."""
    return pump.done


_stack_lock = threading.Lock()


def _start_thread(target: Callable[[], None]) -> None:
    """Start ``target`` on a new thread with a `TUNNEL_STACK_SIZE` stack. The size is
    the interpreter's setting for the next thread started, so it is set and put back
    around this one start (a thread another part of the host starts in between gets
    the same size: still far more than a tunnel needs)."""
    with _stack_lock:
        before = _thread.stack_size(TUNNEL_STACK_SIZE)
        try:
            _thread.start_new_thread(target, ())
        finally:
            _thread.stack_size(before)


def _forget_thread_record() -> None:
    """As a bare pool thread ends: drop the record `threading` made for it if it logged
    (``logging`` asks for the current thread's name, and for a thread `threading` did
    not start that makes a dummy record which Python 3.11 never removes: one per thread
    that ever logged, kept until a later thread happens to reuse its ident)."""
    active = getattr(threading, "_active", None)
    dummy = getattr(threading, "_DummyThread", None)
    lock = getattr(threading, "_active_limbo_lock", None)
    if not isinstance(active, dict) or dummy is None or lock is None:
        return
    ident = _thread.get_ident()
    with lock:
        if isinstance(active.get(ident), dummy):
            del active[ident]


class PoolFull(Exception):
    """Every thread of the pool is busy."""


class ThreadPool:
    """At most ``max_threads`` threads; idle ones wait for work, then exit.

    ``submit`` never queues behind busy threads: it raises ``PoolFull`` instead.
    """

    def __init__(self, max_threads: int) -> None:
        if max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        self.max_threads = max_threads
        self._lock = threading.Lock()
        self._work: queue.SimpleQueue[Optional[Callable[[], None]]] = queue.SimpleQueue()
        self._threads = 0
        self._idle = 0
        self._busy = 0
        self._closed = False
        self._all_idle = threading.Condition(self._lock)

    @property
    def busy(self) -> int:
        return self._busy

    @property
    def threads(self) -> int:
        return self._threads

    def reserve(self) -> None:
        """Claim a thread for a tunnel about to start (before its 101 is sent).

        Raises:
            PoolFull: every thread is busy and the pool is at its size.
            RuntimeError: the pool is shut down.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("thread pool is shut down")
            if self._busy >= self.max_threads:
                raise PoolFull(f"all {self.max_threads} tunnel threads are busy")
            self._busy += 1

    def release(self) -> None:
        """Give back a reservation that will not be used (the handshake failed)."""
        with self._lock:
            self._busy -= 1
            self._all_idle.notify_all()

    def run(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on a pool thread, under a reservation made with ``reserve``."""
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
            else:
                if sys.getswitchinterval() < SWITCH_INTERVAL:
                    sys.setswitchinterval(SWITCH_INTERVAL)  # only ever raised (see SWITCH_INTERVAL)
                self._threads += 1
                # A bare thread, not a threading.Thread: that object with its name, its
                # started Event and state lock was 2.3 KiB of every idle sync tunnel, and
                # start() waited for the thread to run. (Like a daemon thread, it does
                # not hold up the interpreter's exit; shutdown() ends the pool's own.)
                _start_thread(self._worker)
            self._work.put(fn)

    def _worker(self) -> None:
        try:
            self._serve_work()
        finally:
            _forget_thread_record()

    def _serve_work(self) -> None:
        while True:
            try:
                fn = self._work.get(timeout=THREAD_IDLE_EXIT)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # nobody has claimed us: leave
                        self._idle -= 1
                        self._threads -= 1
                        self._all_idle.notify_all()
                        return
                continue  # a submit claimed us just now: its work is on the way
            if fn is None:
                with self._lock:
                    self._idle = max(0, self._idle - 1)
                    self._threads -= 1
                    self._all_idle.notify_all()
                return
            try:
                fn()
            except Exception:
                log.exception("sync tunnel thread failed")
            with self._lock:
                self._busy -= 1
                self._idle += 1
                self._all_idle.notify_all()

    def shutdown(self, timeout: float = 5.0) -> bool:
        """Stop idle threads, wait up to ``timeout`` for busy ones. True if all exited."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._closed = True
            while self._busy > 0:  # busy threads end when their tunnels are aborted
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._all_idle.wait(left)
            for _ in range(self._threads):
                self._work.put(None)
            while self._threads > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._all_idle.wait(left)
        return True
