"""The pure-Python floor: the cheapest WebSocket relay Python can be, to measure tunnel against.

``python bench/floor.py --listen 127.0.0.1:0 --backend HOST:PORT --mode async|threads``
(standard library only) prints ``port N`` once it listens, then does what every WebSocket
reverse proxy must and nothing more: the request head up to its blank line, the backend
connected, the head sent in one send, the answer checked for ``101`` and sent in one send,
bytes relayed both ways with a half-close at each end of file. No configuration, checks,
logs or timeouts. ``async``: one thread, level-triggered epoll, an fd-to-callback table,
one scratch buffer, ``recv_into``/``send`` with ``MSG_DONTWAIT`` (no ``FIONBIO`` per
socket), ``EPOLLOUT`` only after a short send. ``threads``: the main thread accepts and
hands each connection to a pool thread (a thread per tunnel, reused, as tunnel's pool) that
serves it with blocking ``poll``; 256 KiB stacks and a 50 ms switch interval, as tunnel's.
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


def shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


class Side:
    """One socket of a relayed tunnel: what it reads goes to ``peer``; ``pending`` holds
    what this socket did not take yet (its peer is not read meanwhile)."""

    __slots__ = ("loop", "sock", "fd", "peer", "pending", "reading", "shut_after", "mask")

    def __init__(self, loop: Loop, sock: socket.socket) -> None:
        self.loop, self.sock, self.fd, self.peer = loop, sock, sock.fileno(), self
        self.pending: bytes | None = None
        self.reading, self.shut_after, self.mask = True, False, IN

    def on_event(self, ev: int) -> None:
        if ev & ERR:
            return self.loop.close_pair(self)
        if self.pending is not None and ev & OUT:
            self.send(self.pending)
        if self.reading and self.peer.pending is None and ev & (IN | HUP):
            self.read()
        elif ev & HUP and not self.reading and self.pending is None:
            self.loop.close_pair(self)

    def read(self) -> None:
        try:
            n = self.sock.recv_into(self.loop.scratch, SCRATCH_SIZE, DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            return self.loop.close_pair(self)
        if n:
            return self.peer.send(self.loop.scratch[:n])
        self.reading = False  # end of file: half-close the other way (once its bytes are out)
        peer = self.peer
        if peer.pending is not None:
            peer.shut_after = True
            self.update()
        else:
            shut(peer.sock)
            if peer.reading or self.pending is not None:
                self.update()
            else:
                self.loop.close_pair(self)

    def send(self, data: memoryview | bytes) -> None:
        """Send ``data`` (new bytes, or what was pending); keep the rest for EPOLLOUT."""
        was = self.pending
        try:
            sent = self.sock.send(data, DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError:
            return self.loop.close_pair(self)
        self.pending = bytes(data[sent:]) if sent < len(data) else None
        if (was is None) == (self.pending is None):
            return  # no change of interest: the common case
        if self.pending is None and self.shut_after:
            shut(self.sock)
            if not self.reading and self.peer.pending is None:
                return self.loop.close_pair(self)
        self.update()
        self.peer.update()

    def update(self) -> None:
        mask = (IN if self.reading and self.peer.pending is None else 0) | (OUT if self.pending is not None else 0)
        if mask != self.mask:
            self.mask = mask
            self.loop.ep.modify(self.fd, mask)


class Handshake:
    """A client from accept to the 101: its head, the backend's connect and its answer."""

    __slots__ = ("loop", "client", "head", "backend", "answer")

    def __init__(self, loop: Loop, client: socket.socket) -> None:
        self.loop, self.client, self.head, self.answer = loop, client, bytearray(), bytearray()
        self.backend: socket.socket | None = None

    def fail(self) -> None:
        for s in (self.client, self.backend):
            if s is not None:
                self.loop.handlers.pop(s.fileno(), None)
                s.close()
        self.backend = None

    def _recv(self, sock: socket.socket, into: bytearray) -> bool:
        """One read appended to ``into``; False (and both closed) at an error or EOF."""
        try:
            n = sock.recv_into(self.loop.scratch, SCRATCH_SIZE, DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            n = 0
        into += self.loop.scratch[:n]
        if not n:
            self.fail()
        return bool(n)

    def _send_head(self, b: socket.socket) -> bool:
        """Send what is left of the head (bytes after it included); True once all is out."""
        try:
            del self.head[: b.send(self.head)]
        except BlockingIOError:
            pass  # not connected yet
        except OSError:
            self.fail()
            return False
        return not self.head

    def client_head(self, ev: int) -> None:
        # also takes bytes sent after the head before the 101: they follow it to the backend
        if not self._recv(self.client, self.head) or self.backend is not None or END not in self.head:
            return
        b = self.backend = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        b.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        b.connect_ex(self.loop.backend)
        done = self._send_head(b)  # on loopback the connect is mostly done already
        if self.backend is not None:  # not failed
            self.loop.handlers[b.fileno()] = self.backend_answer if done else self.backend_ready
            self.loop.ep.register(b.fileno(), IN if done else OUT)

    def backend_ready(self, ev: int) -> None:
        assert self.backend is not None
        if self._send_head(self.backend):
            self.loop.handlers[self.backend.fileno()] = self.backend_answer
            self.loop.ep.modify(self.backend.fileno(), IN)

    def backend_answer(self, ev: int) -> None:
        assert self.backend is not None
        if not self._recv(self.backend, self.answer) or END not in self.answer:
            return
        if not is_101(self.answer):  # the client gets the answer, then the connection closes
            try:
                self.client.send(self.answer, DONTWAIT)
            except OSError:
                pass
            return self.fail()
        loop = self.loop
        c, b = Side(loop, self.client), Side(loop, self.backend)
        c.peer, b.peer = b, c
        loop.handlers[c.fd], loop.handlers[b.fd] = c.on_event, b.on_event
        c.send(bytes(self.answer))
        if self.head and c.fd in loop.handlers:  # bytes the client sent after its head
            b.send(bytes(self.head))


class Loop:
    """One epoll set, one fd-to-callback table, one scratch buffer."""

    def __init__(self, listener: socket.socket, backend: Address) -> None:
        self.listener, self.backend, self.ep = listener, backend, select.epoll()
        self.scratch = memoryview(mmap.mmap(-1, SCRATCH_SIZE))
        self.handlers: dict[int, Callable[[int], None]] = {listener.fileno(): self.accept}
        listener.setblocking(False)
        self.ep.register(listener.fileno(), IN)

    def accept(self, ev: int) -> None:
        while True:  # a batch, until EAGAIN (or out of descriptors: the next readiness retries)
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.handlers[client.fileno()] = Handshake(self, client).client_head
            self.ep.register(client.fileno(), IN)

    def close_pair(self, side: Side) -> None:
        for s in (side, side.peer):
            if self.handlers.pop(s.fd, None) is not None:
                s.sock.close()  # closing the descriptor takes it out of the epoll set

    def run(self) -> None:
        poll, handlers = self.ep.poll, self.handlers
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
        self.backend, self.lock, self.idle = backend, threading.Lock(), 0
        self.work: queue.SimpleQueue[socket.socket] = queue.SimpleQueue()

    def submit(self, client: socket.socket) -> None:
        with self.lock:
            spawn, self.idle = self.idle == 0, max(0, self.idle - 1)
        if spawn:
            threading.Thread(target=self.worker, daemon=True).start()
        self.work.put(client)

    def worker(self) -> None:
        scratch = memoryview(mmap.mmap(-1, SCRATCH_SIZE))  # its pages exist once written
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
    return text.rpartition(":")[0], int(text.rpartition(":")[2])


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
    Loop(listener, args.backend).run() if args.mode == "async" else run_threads(listener, args.backend)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
