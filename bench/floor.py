"""The pure-Python floor: the cheapest WebSocket relay Python can be, to measure tunnel against.

Standard library only, run as its own process by the benchmark harness::

    python bench/floor.py --listen 127.0.0.1:0 --backend 127.0.0.1:PORT --mode async|threads

It prints ``port N`` on stdout once it listens. It does what every WebSocket reverse proxy
must do and nothing else: read the request head up to its blank line, connect to the
backend, send the head there in one send, read the answer's head, check it is a ``101``,
send it to the client in one send, then relay bytes both ways, half-closing each way at
its end of file, and close. No configuration, no logging, no header checks, no timeouts:
this is a floor for ``tunnel``, not a proxy to use.

* ``async``: one thread, level-triggered ``select.epoll``, an fd-to-callback table, one
  scratch buffer, ``recv_into`` and ``send`` with ``MSG_DONTWAIT`` (so accepted sockets
  need no ``FIONBIO``); a short send keeps the rest pending, waits for ``EPOLLOUT`` and
  stops reading the other side meanwhile.
* ``threads``: the sync model. The main thread accepts (blocking) and hands each
  connection to a pool thread (an idle one when there is one, as tunnel's pool does),
  which serves the handshake and then the tunnel with blocking ``poll`` on its two sockets.
  Thread stacks are 256 KiB and the switch interval is raised to 50 ms, as tunnel does
  for its sync threads.
"""

from __future__ import annotations

import argparse
import mmap
import queue
import resource
import select
import socket
import sys
import threading
from collections.abc import Callable

SCRATCH_SIZE = 256 * 1024  # tunnel's scratch size
END = b"\r\n\r\n"
DONTWAIT = socket.MSG_DONTWAIT
IN, OUT, ERR, HUP = select.EPOLLIN, select.EPOLLOUT, select.EPOLLERR, select.EPOLLHUP

Address = tuple[str, int]


def is_101(head: bytes | bytearray) -> bool:
    return head[9:12] == b"101" and head.startswith(b"HTTP/1.")


# ----------------------------------------------------------------------- async (epoll)


class Side:
    """One socket of a relayed tunnel: what it reads goes to ``peer``."""

    __slots__ = ("loop", "sock", "fd", "peer", "pending", "reading", "shut_after", "mask")

    def __init__(self, loop: Loop, sock: socket.socket) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.peer: Side = self
        self.pending: bytes | None = None  # bytes read from peer that this socket has not taken yet
        self.reading = True
        self.shut_after = False  # the peer ended: shut this socket's write side once pending is out
        self.mask = IN

    def on_event(self, ev: int) -> None:
        if ev & ERR:
            self.loop.close_pair(self)
            return
        if self.pending is not None and ev & OUT:
            self.flush()
        if self.reading and self.peer.pending is None and ev & (IN | HUP):
            self.read()
        elif ev & HUP and not self.reading and self.pending is None:
            self.loop.close_pair(self)

    def read(self) -> None:
        scratch = self.loop.scratch
        try:
            n = self.sock.recv_into(scratch, SCRATCH_SIZE, DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            self.loop.close_pair(self)
            return
        if n:
            self.peer.write(scratch[:n])
            return
        self.reading = False  # end of file: half-close the other way
        peer = self.peer
        if peer.pending is not None:
            peer.shut_after = True
        else:
            try:
                peer.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if not peer.reading and peer.pending is None and self.pending is None:
            self.loop.close_pair(self)
        else:
            self.update()

    def write(self, data: memoryview | bytes) -> None:
        """Send ``data`` now; keep what the socket did not take and wait for EPOLLOUT."""
        try:
            sent = self.sock.send(data, DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.loop.close_pair(self)
            return
        if sent < len(data):
            self.pending = bytes(data[sent:])
            self.update()
            self.peer.update()  # stop reading the source while this is pending

    def flush(self) -> None:
        assert self.pending is not None
        try:
            sent = self.sock.send(self.pending, DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            self.loop.close_pair(self)
            return
        if sent < len(self.pending):
            self.pending = self.pending[sent:]
            return
        self.pending = None
        if self.shut_after:
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            if not self.reading and self.peer.pending is None:
                self.loop.close_pair(self)
                return
        self.update()
        self.peer.update()

    def update(self) -> None:
        mask = (IN if self.reading and self.peer.pending is None else 0) | (OUT if self.pending is not None else 0)
        if mask != self.mask:
            self.mask = mask
            self.loop.ep.modify(self.fd, mask)


class Handshake:
    """A client from accept to the 101: its head, the backend's connect and its answer."""

    __slots__ = ("loop", "client", "cfd", "head", "backend", "answer")

    def __init__(self, loop: Loop, client: socket.socket) -> None:
        self.loop = loop
        self.client = client
        self.cfd = client.fileno()
        self.head = bytearray()
        self.backend: socket.socket | None = None
        self.answer = bytearray()

    def fail(self) -> None:
        handlers = self.loop.handlers
        for s in (self.client, self.backend):
            if s is not None:
                handlers.pop(s.fileno(), None)
                s.close()

    def _recv(self, sock: socket.socket, into: bytearray) -> bool:
        """One read appended to ``into``; False (connection failed) at an error or EOF."""
        scratch = self.loop.scratch
        try:
            n = sock.recv_into(scratch, SCRATCH_SIZE, DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            n = 0
        if not n:
            self.fail()
            return False
        into += scratch[:n]
        return True

    def client_head(self, ev: int) -> None:
        # also reads bytes sent after the head before the 101: they go to the backend with it
        if not self._recv(self.client, self.head) or self.backend is not None or END not in self.head:
            return
        loop = self.loop
        b = self.backend = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        b.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        b.connect_ex(loop.backend)
        try:
            sent = b.send(self.head)  # done already on loopback, mostly
        except BlockingIOError:
            sent = 0
        except OSError:
            self.fail()
            return
        del self.head[:sent]
        loop.handlers[b.fileno()] = self.backend_ready if self.head else self.backend_answer
        loop.ep.register(b.fileno(), OUT if self.head else IN)

    def backend_ready(self, ev: int) -> None:
        assert self.backend is not None
        try:
            sent = self.backend.send(self.head)
        except BlockingIOError:
            return
        except OSError:
            self.fail()
            return
        del self.head[:sent]
        if not self.head:
            self.loop.handlers[self.backend.fileno()] = self.backend_answer
            self.loop.ep.modify(self.backend.fileno(), IN)

    def backend_answer(self, ev: int) -> None:
        assert self.backend is not None
        if not self._recv(self.backend, self.answer) or END not in self.answer:
            return
        if not is_101(self.answer):
            try:
                self.client.send(self.answer, DONTWAIT)
            except OSError:
                pass
            self.fail()
            return
        loop = self.loop
        c, b = Side(loop, self.client), Side(loop, self.backend)
        c.peer, b.peer = b, c
        loop.handlers[c.fd] = c.on_event
        loop.handlers[b.fd] = b.on_event
        early = bytes(self.head)  # bytes the client sent after its head
        c.write(bytes(self.answer))
        if early and c.fd in loop.handlers:
            b.write(early)


class Loop:
    """One epoll set, one fd-to-callback table, one scratch buffer."""

    def __init__(self, listener: socket.socket, backend: Address) -> None:
        self.listener = listener
        self.backend = backend
        self.ep = select.epoll()
        self.scratch = memoryview(mmap.mmap(-1, SCRATCH_SIZE))
        self.handlers: dict[int, Callable[[int], None]] = {listener.fileno(): self.accept}
        listener.setblocking(False)
        self.ep.register(listener.fileno(), IN)

    def accept(self, ev: int) -> None:
        while True:  # a batch, until EAGAIN
            try:
                client, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError:  # e.g. out of descriptors: the next readiness tries again
                return
            h = Handshake(self, client)
            self.handlers[h.cfd] = h.client_head
            self.ep.register(h.cfd, IN)

    def close_pair(self, side: Side) -> None:
        for s in (side, side.peer):
            if self.handlers.pop(s.fd, None) is not None:
                s.sock.close()  # closing the descriptor removes it from the epoll set

    def run(self) -> None:
        poll = self.ep.poll
        handlers = self.handlers
        while True:
            for fd, ev in poll():
                handler = handlers.get(fd)
                if handler is not None:
                    handler(ev)


# ------------------------------------------------------------------- threads (sync)


def relay(c: socket.socket, b: socket.socket, scratch: memoryview) -> None:
    """Both ways until end of file each way, with blocking poll on the two sockets."""
    poller = select.poll()
    other = {c.fileno(): (c, b), b.fileno(): (b, c)}
    for fd in other:
        poller.register(fd, select.POLLIN)
    while other:
        for fd, _ in poller.poll():
            src, dst = other[fd]
            try:
                n = src.recv_into(scratch)
                if n:
                    dst.sendall(scratch[:n])
                    continue
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                return
            poller.unregister(fd)
            del other[fd]


def read_head(sock: socket.socket) -> bytes:
    """Up to the blank line and any bytes after it. Not into the thread's scratch buffer:
    an idle tunnel's thread then never touches it (one page less per idle tunnel)."""
    head = b""
    while END not in head:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("end of file before the end of the head")
        head += chunk
    return head


def serve(client: socket.socket, backend: Address, scratch: memoryview) -> None:
    b = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        head = read_head(client)  # with any bytes after it: they go along
        b.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        b.connect(backend)
        b.sendall(head)
        answer = read_head(b)
        client.sendall(answer)
        if is_101(answer):
            relay(client, b, scratch)
    except OSError:
        pass
    finally:
        b.close()
        client.close()


class Pool:
    """A thread per tunnel; a thread whose tunnel ended waits for the next one."""

    def __init__(self, backend: Address) -> None:
        self.backend = backend
        self.work: queue.SimpleQueue[socket.socket] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.idle = 0

    def submit(self, client: socket.socket) -> None:
        with self.lock:
            spawn = self.idle == 0
            if not spawn:
                self.idle -= 1
        if spawn:
            threading.Thread(target=self.worker, daemon=True).start()
        self.work.put(client)

    def worker(self) -> None:
        scratch = memoryview(mmap.mmap(-1, SCRATCH_SIZE))  # pages exist once written
        while True:
            serve(self.work.get(), self.backend, scratch)
            with self.lock:
                self.idle += 1


def run_threads(listener: socket.socket, backend: Address) -> None:
    threading.stack_size(256 * 1024)
    sys.setswitchinterval(0.05)
    pool = Pool(backend)
    while True:
        try:
            client, _ = listener.accept()
        except OSError:  # e.g. out of descriptors
            continue
        pool.submit(client)


# ------------------------------------------------------------------------------ main


def address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="the pure-Python floor WebSocket relay")
    parser.add_argument("--listen", type=address, required=True, help="HOST:PORT (port 0: the OS picks)")
    parser.add_argument("--backend", type=address, required=True, help="HOST:PORT of the backend")
    parser.add_argument("--mode", choices=("async", "threads"), required=True)
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted sockets inherit it
    listener.bind(args.listen)
    listener.listen(4096)
    print(f"port {listener.getsockname()[1]}", flush=True)
    try:
        if args.mode == "async":
            Loop(listener, args.backend).run()
        else:
            run_threads(listener, args.backend)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
