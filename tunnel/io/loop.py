"""A small epoll event loop that knows nothing of HTTP.

Rules:

* One thread runs the loop (``run``); every other method except ``call_soon_threadsafe``
  and ``stop`` must be called from that thread.
* A file object is registered with a mask (``EVENT_READ | EVENT_WRITE``) and one callback
  that receives the ready mask. Callers modify interest only when it changes: the
  kernel is asked to ``modify`` only when the new mask differs from the one it has.
* The poller is ``select.epoll`` used directly (``select.poll`` where there is none):
  one table from descriptor to callback, no ``selectors`` key objects, level-triggered
  (measured against edge-triggered in docs/performance.md). A descriptor about to be
  closed is ``forget``-ten without a system call: closing it leaves the epoll set.
* Timers live in a heap of ``Deadline``s (``Timer`` handles, or objects that are their
  own, armed again by ``schedule``); a cancelled one stays in the heap until its time
  comes (cheap cancel, like asyncio) unless the heap fills with cancelled ones.
* ``now`` is read once per iteration (after the wait returns), so the many callbacks of
  one iteration share one clock read: cheap enough to stamp activity on every event.
* Other threads schedule work with ``call_soon_threadsafe``; a socketpair wakes the wait.

Also here: a tiny generator-task runner (``spawn``). A task is a generator that yields
``Wait`` requests (a socket, read or write, an optional deadline); the loop resumes it when
the socket is ready, or throws ``TimeoutError`` into it at the deadline. The same generator
can be driven without a loop by ``run_blocking`` (poll in the calling thread), so the
front end's handshake code serves both an engine with a loop and a host thread.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import logging
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Optional, TypeVar, TypeVarTuple

from .streams import EVENT_READ, EVENT_WRITE, Endpoint
from .timer import Deadline, Timer

if TYPE_CHECKING:  # pragma: no cover
    from _typeshed import FileDescriptorLike

__all__ = ["Loop", "Deadline", "Timer", "Wait", "Task", "run_blocking", "EVENT_READ", "EVENT_WRITE"]


log = logging.getLogger("tunnel.loop")

#: Longest a loop sleeps with nothing to do; bounds how late a missed wake-up is noticed.
MAX_WAIT = 3600.0
#: Rebuild the timer heap when more than this share of it is cancelled timers.
CANCELLED_COMPACT_RATIO = 0.5


class Wait:
    """What a task yields: resume me when ``sock`` is ready for ``events`` or at ``deadline``.

    ``deadline`` is a ``time.monotonic()`` value or None for no deadline. A ``Wait`` with
    no socket is a pure sleep until the deadline.
    """

    __slots__ = ("sock", "events", "deadline", "also", "future")

    def __init__(
        self,
        sock: Optional[Endpoint],
        events: int,
        deadline: Optional[float],
        also: Optional[Endpoint] = None,
        future: Optional[concurrent.futures.Future[Any]] = None,
    ) -> None:
        self.sock = sock
        self.events = events
        self.deadline = deadline
        #: a second socket whose readability also resumes the task (e.g. the client
        #: while waiting for the backend: a client that leaves is noticed at once).
        self.also = also
        #: work done in another thread (a DNS lookup): the task resumes when it is done.
        self.future = future

    @classmethod
    def until(cls, future: concurrent.futures.Future[Any], deadline: Optional[float] = None) -> Wait:
        """Resume when ``future`` (run by another thread) is done, or at ``deadline``."""
        return cls(None, 0, deadline, future=future)

    @classmethod
    def read(cls, sock: Endpoint, deadline: Optional[float] = None) -> Wait:
        return cls(sock, EVENT_READ, deadline)

    @classmethod
    def write(cls, sock: Endpoint, deadline: Optional[float] = None) -> Wait:
        return cls(sock, EVENT_WRITE, deadline)


TaskGen = Generator[Wait, None, Any]
_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")


class _PollAdapter:
    """``select.poll`` behind ``select.epoll``'s interface (timeouts in seconds), for a
    system without epoll. Masks are the same bits (POLLIN, POLLOUT)."""

    def __init__(self) -> None:
        self._poll = select.poll()
        self.register = self._poll.register
        self.modify = self._poll.modify
        self.unregister = self._poll.unregister

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        return self._poll.poll(None if timeout < 0 else int(timeout * 1000 + 0.999))

    def close(self) -> None:
        pass


if hasattr(select, "epoll"):
    _Poller: Callable[[], Any] = select.epoll
    _POLLIN, _POLLOUT = select.EPOLLIN, select.EPOLLOUT
    #: close() of a socket's only descriptor removes it from an epoll set.
    _CLOSE_LEAVES_SET = True
else:  # pragma: no cover - not Linux
    _Poller = _PollAdapter
    _POLLIN, _POLLOUT = select.POLLIN, select.POLLOUT
    _CLOSE_LEAVES_SET = False  # a poll set keeps a closed number: always unregister
#: EVENT_READ/EVENT_WRITE masks (0..3) as the poller's bits.
_TO_POLL = (0, _POLLIN, _POLLOUT, _POLLIN | _POLLOUT)


class Loop:
    """The epoll event loop. See the module docstring for the rules."""

    def __init__(self, poller: Optional[Any] = None) -> None:
        #: ``select.epoll`` (or an object with its interface: tests count the calls).
        self._poller = poller if poller is not None else _Poller()
        self._callbacks: dict[int, Callable[[int], None]] = {}
        #: each fd's interest, indexed by fd (a byte a file; fds are small and dense); an
        #: unregistered fd's byte is 0 (``_callbacks`` says which are registered).
        self._masks = bytearray(256)
        self._timers: list[Deadline] = []
        self._cancelled_timers = 0
        self._ready: deque[tuple[Callable[..., Any], tuple[object, ...]]] = deque()
        self._lock = threading.Lock()
        self._stopping = False
        self._running = False
        self._closed = False
        self.thread_id: Optional[int] = None
        self.now = time.monotonic()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_pending = False
        self.register(self._wake_r, EVENT_READ, self._on_wake)

    # -- registration --------------------------------------------------------------
    def register(self, fileobj: FileDescriptorLike, events: int, callback: Callable[[int], None]) -> None:
        """Watch ``fileobj`` for ``events``; ``callback(mask)`` runs when it is ready.

        A file already registered changes hands: its callback is replaced and its mask
        modified (nothing asked of the kernel when the mask is the same), so a task gives
        its sockets to a tunnel without a round of unregister and register."""
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        if fd < 0:
            raise ValueError(f"cannot watch file descriptor {fd}")
        if fd in self._callbacks:
            self._callbacks[fd] = callback
            try:
                self.modify(fd, events)
                return
            except (OSError, KeyError):
                # Closed and its number reused since it was registered (the kernel has
                # dropped the old registration): start afresh.
                self._masks[fd] = 0
                try:
                    self._poller.unregister(fd)
                except (KeyError, ValueError, OSError):
                    pass
        self._callbacks[fd] = callback
        masks = self._masks
        if fd >= len(masks):
            masks.extend(bytes(max(fd + 1, 2 * len(masks)) - len(masks)))
        masks[fd] = events
        if events:
            self._poller.register(fd, _TO_POLL[events])

    def modify(self, fileobj: FileDescriptorLike, events: int) -> None:
        """Change the interest of a registered file; a no-op when it is unchanged."""
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        masks = self._masks
        old = masks[fd] if 0 <= fd < len(masks) else 0
        if old == events and (old or fd in self._callbacks):
            return
        if fd not in self._callbacks:
            raise KeyError(fd)  # never registered (or no longer)
        masks[fd] = events
        if not old:
            self._poller.register(fd, _TO_POLL[events])
        elif not events:
            self._poller.unregister(fd)
        else:
            self._poller.modify(fd, _TO_POLL[events])

    def unregister(self, fileobj: FileDescriptorLike) -> None:
        """Stop watching ``fileobj``. Unknown files are ignored (idempotent close paths)."""
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        if fd < 0:
            return
        self._callbacks.pop(fd, None)
        if self._take_mask(fd):
            try:
                self._poller.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass

    def forget(self, fd: int) -> None:
        """Drop ``fd`` from the tables without a system call: for a descriptor the caller
        closes right away (closing the only descriptor of a socket takes it out of the
        epoll set; nothing else in the process shares the file description)."""
        self._callbacks.pop(fd, None)
        if self._take_mask(fd) and not _CLOSE_LEAVES_SET:
            try:
                self._poller.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass

    def _take_mask(self, fd: int) -> int:  # fd's interest, cleared (0 if never registered)
        masks = self._masks
        if 0 <= fd < len(masks):
            old = masks[fd]
            masks[fd] = 0
            return old
        return 0

    def release(self, fd: int, callback: Callable[[int], None]) -> None:
        """Unregister ``fd`` if ``callback`` still owns it (nobody took it over)."""
        if self._callbacks.get(fd) is callback:
            self.unregister(fd)

    def is_registered(self, fileobj: FileDescriptorLike) -> bool:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return fd in self._callbacks

    # -- scheduling ------------------------------------------------------------------
    def time(self) -> float:
        return time.monotonic()

    def call_at(self, when: float, callback: Callable[[*_Ts], object], *args: *_Ts) -> Timer:
        timer = Timer(when, callback, args, self)
        heapq.heappush(self._timers, timer)
        return timer

    def schedule(self, deadline: Deadline, when: float) -> None:
        """Arm ``deadline`` (not in the heap now: never armed, or fired) for ``when``."""
        deadline.when = when
        deadline.cancelled = False
        heapq.heappush(self._timers, deadline)

    def call_later(self, delay: float, callback: Callable[[*_Ts], object], *args: *_Ts) -> Timer:
        return self.call_at(time.monotonic() + delay, callback, *args)

    def call_soon(self, callback: Callable[[*_Ts], object], *args: *_Ts) -> None:
        self._ready.append((callback, args))

    def call_soon_threadsafe(self, callback: Callable[[*_Ts], object], *args: *_Ts) -> None:
        """Schedule from any thread; wakes the loop if it is waiting."""
        self._ready.append((callback, args))  # deque.append is atomic
        if threading.get_ident() != self.thread_id:
            self._wake()

    def wakeup(self) -> None:
        """Make a waiting ``run`` return from its wait (also from a signal handler)."""
        self._wake()

    def _wake(self) -> None:
        with self._lock:
            if self._wake_pending or self._closed:
                return
            self._wake_pending = True
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, InterruptedError):
            pass  # the pipe is full: the loop is going to wake anyway
        except OSError:
            pass  # closed during shutdown

    def _on_wake(self, mask: int) -> None:
        # Drain first, then clear the flag: cleared first, a wake from another thread in
        # between would set it again and have its byte drained here, leaving the flag set
        # with nothing to read, and every later wake would be skipped (the loop then
        # sleeps until some other event, however long). A wake that sees the flag still
        # set has queued its callback already: this iteration runs it.
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        with self._lock:
            self._wake_pending = False

    def in_loop_thread(self) -> bool:
        return threading.get_ident() == self.thread_id

    @property
    def running(self) -> bool:
        return self._running

    # -- tasks -------------------------------------------------------------------------
    def spawn(self, gen: TaskGen, *, name: object = "task") -> Task:
        """Run generator task ``gen`` on this loop (starts on the next iteration).

        ``name`` is anything whose ``str()`` names the task; it is formatted only when a
        log line or a repr needs it."""
        task = Task(self, gen, name)
        self.call_soon(task._step, None)
        return task

    # -- running -------------------------------------------------------------------
    def stop(self) -> None:
        """Ask ``run`` to return after the current iteration. Thread-safe."""
        self._stopping = True
        if threading.get_ident() != self.thread_id:
            self._wake()

    def run(self) -> None:
        """Run until ``stop()``. Exceptions from callbacks are logged, never fatal."""
        if self._running:
            raise RuntimeError("loop is already running")
        self._running = True
        self._stopping = False
        self.thread_id = threading.get_ident()
        poll = self._poller.poll
        callbacks = self._callbacks
        masks = self._masks
        ready = self._ready
        popleft = ready.popleft
        timers = self._timers
        heappop = heapq.heappop
        monotonic = time.monotonic
        pollin, pollout = _POLLIN, _POLLOUT
        read, write = EVENT_READ, EVENT_WRITE
        try:
            while not self._stopping:
                if ready:
                    timeout = 0.0
                elif timers:
                    timeout = timers[0].when - monotonic()
                    if timeout < 0.0:
                        timeout = 0.0
                    elif timeout > MAX_WAIT:
                        timeout = MAX_WAIT
                else:
                    timeout = MAX_WAIT
                try:
                    events = poll(timeout)
                except InterruptedError:
                    events = []
                self.now = now = monotonic()
                # The whole batch with the names above bound once: per event, one table
                # look-up and one call.
                for fd, ev in events:
                    try:
                        cb = callbacks[fd]
                    except KeyError:
                        continue  # forgotten by an earlier callback of this batch
                    if ev == pollin:
                        mask = read
                    elif ev == pollout:
                        mask = write
                    else:  # errors, hang-ups, both: what selectors reports, within the interest
                        mask = ((read if ev & ~pollout else 0) | (write if ev & ~pollin else 0)) & masks[fd]
                    try:
                        cb(mask)
                    except Exception:
                        log.exception("callback for fd %d failed", fd)
                if timers and timers[0].when <= now:
                    while timers and timers[0].when <= now:
                        timer = heappop(timers)
                        if timer.cancelled:
                            self._cancelled_timers -= 1
                            continue
                        timer.cancelled = True  # a fired timer can no longer be cancelled
                        ready.append((timer.callback, timer.args))
                if self._cancelled_timers > 64 and self._cancelled_timers > len(timers) * CANCELLED_COMPACT_RATIO:
                    timers[:] = [t for t in timers if not t.cancelled]
                    heapq.heapify(timers)
                    self._cancelled_timers = 0
                if ready:
                    for _ in range(len(ready)):
                        cb, args = popleft()
                        try:
                            cb(*args)
                        except Exception:
                            log.exception("scheduled callback %r failed", cb)
        finally:
            self._running = False

    def close(self) -> None:
        """Release the poller and the wake-up pair. Registered files are not closed."""
        if self._closed:
            return
        with self._lock:
            self._closed = True
        self.unregister(self._wake_r)
        self._poller.close()
        self._wake_r.close()
        self._wake_w.close()

    def __repr__(self) -> str:
        return (
            f"<Loop fds={len(self._callbacks) - 1} timers={len(self._timers)} "
            f"running={self._running}>"
        )


class Task:
    """A generator task on a loop: see ``Loop.spawn`` and the module docstring.

    Registrations outlive a step: a socket the next wait names again is only modified
    (often not even that), and at the end the sockets stay registered for whoever the
    done callback gives them to (a tunnel), which then only takes them over. Sockets a
    step stops waiting on are unregistered before anything new is registered, by the fd
    number they were registered under: a socket closed meanwhile may have left its number
    to a new one.
    """

    __slots__ = ("loop", "gen", "name", "done", "result", "error", "_regs", "_timer", "_on_done", "_ready_cb", "_future")

    def __init__(self, loop: Loop, gen: TaskGen, name: object) -> None:
        self.loop = loop
        #: the generator; None once the task is done (its frame is not kept alive).
        self.gen: Optional[TaskGen] = gen
        self.name = name
        self.done = False
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self._regs: list[tuple[Endpoint, int]] = []  # (file object, fd it was registered under)
        self._timer: Optional[Timer] = None
        self._on_done: Optional[Callable[[Task], None]] = None
        self._ready_cb = self._on_ready  # one bound method: the loop compares owners with it
        self._future: Optional[concurrent.futures.Future[Any]] = None

    def add_done_callback(self, fn: Callable[[Task], None]) -> None:
        if self.done:
            fn(self)
        else:
            self._on_done = fn

    def cancel(self) -> None:
        """Throw ``GeneratorExit`` into the task (its ``finally`` blocks run)."""
        gen = self.gen
        if gen is None:  # done
            return
        self._cancel_timer()
        try:
            gen.close()
        except Exception as exc:  # pragma: no cover - a finally block failed
            log.exception("task %s failed while cancelled", self.name)
            self.error = exc
        self._finish()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_ready(self, mask: int) -> None:
        self._step(None)

    def _on_deadline(self) -> None:
        self._timer = None
        self._step(TimeoutError("deadline passed"))

    def _future_done(self, future: concurrent.futures.Future[Any]) -> None:
        if self._future is future:  # still waiting for it (not timed out meanwhile)
            self._step(None)

    def _step(self, exc: Optional[BaseException]) -> None:
        gen = self.gen
        if gen is None:  # done
            return
        self._cancel_timer()
        self._future = None
        try:
            wait = gen.throw(exc) if exc is not None else gen.send(None)
        except StopIteration as stop:
            self.result = stop.value
            self._finish()
            return
        except Exception as err:
            log.exception("task %s failed", self.name)
            self.error = err
            self._finish()
            return
        loop = self.loop
        sock, also = wait.sock, wait.also
        if self._regs:
            # Drop what this wait does not name again (or what was closed meanwhile).
            keep = []
            for obj, fd in self._regs:
                if (obj is sock or obj is also) and obj.fileno() == fd:
                    keep.append((obj, fd))
                else:
                    loop.release(fd, self._ready_cb)
            self._regs = keep
        if sock is not None:
            self._watch(sock, wait.events)
        if also is not None:
            self._watch(also, EVENT_READ)
        future = wait.future
        if future is not None:
            self._future = future
            if future.done():
                loop.call_soon(self._future_done, future)
            else:
                future.add_done_callback(lambda f: loop.call_soon_threadsafe(self._future_done, f))
        if wait.deadline is not None:
            self._timer = loop.call_at(wait.deadline, self._on_deadline)
        elif sock is None and future is None:
            loop.call_soon(self._step, None)

    def _watch(self, obj: Endpoint, events: int) -> None:
        fd = obj.fileno()
        self.loop.register(fd, events, self._ready_cb)
        for kept, _ in self._regs:
            if kept is obj:
                return
        self._regs.append((obj, fd))

    def _finish(self) -> None:
        self.done = True
        self.gen = None
        self._cancel_timer()
        regs, self._regs = self._regs, []
        loop = self.loop
        live = []
        for obj, fd in regs:
            if obj.fileno() == fd:
                live.append(fd)
            else:  # closed: forget it before anyone registers a socket with its number
                loop.release(fd, self._ready_cb)
        try:
            if self._on_done is not None:
                fn, self._on_done = self._on_done, None
                fn(self)  # may take the sockets over (a tunnel registers them)
        finally:
            for fd in live:
                loop.release(fd, self._ready_cb)

    def __repr__(self) -> str:
        return f"<Task {self.name} {'done' if self.done else 'waiting'}>"


def run_blocking(gen: Generator[Wait, None, _T]) -> _T:
    """Drive a generator task in the calling thread, waiting with ``poll``.

    Returns the generator's return value; its exceptions propagate.
    """
    poller = select.poll()
    exc: Optional[BaseException] = None
    while True:
        try:
            wait = gen.throw(exc) if exc is not None else gen.send(None)
        except StopIteration as stop:
            result: _T = stop.value
            return result
        exc = None
        timeout_ms: Optional[int] = None
        if wait.deadline is not None:
            timeout_ms = max(0, int((wait.deadline - time.monotonic()) * 1000) + 1)
        if wait.future is not None:
            done, _ = concurrent.futures.wait([wait.future], None if timeout_ms is None else timeout_ms / 1000)
            if not done:
                exc = TimeoutError("deadline passed")
            continue
        if wait.sock is None and wait.also is None:  # a pure sleep: ends with TimeoutError, as on the loop
            if timeout_ms is not None:
                if timeout_ms:
                    time.sleep(timeout_ms / 1000)
                exc = TimeoutError("deadline passed")
            continue
        # A socket to wait on, and/or one whose readability also resumes the task (a
        # sleep that watches the client, e.g. the balancer's timeout= wait), as on the loop.
        fds: list[tuple[int, int]] = []
        if wait.sock is not None:
            flags = (select.POLLIN if wait.events & EVENT_READ else 0) | (
                select.POLLOUT if wait.events & EVENT_WRITE else 0
            )
            fds.append((wait.sock.fileno(), flags))
        if wait.also is not None:
            fds.append((wait.also.fileno(), select.POLLIN))
        for fd, flags in fds:
            poller.register(fd, flags)
        try:
            ready = poller.poll(timeout_ms)
        finally:
            for fd, _ in fds:
                poller.unregister(fd)
        if not ready and wait.deadline is not None and time.monotonic() >= wait.deadline:
            exc = TimeoutError("deadline passed")

