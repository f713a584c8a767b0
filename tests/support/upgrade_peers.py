"""Many tunnels' two ends in processes of their own, for the binary upgrade tests.

``python -m tests.support.upgrade_peers backend`` listens, answers every upgrade with a
101 and then streams WebSocket frames (unmasked) to each connection while hashing what it
receives; ``... clients PORT N SLOW`` opens N tunnels through the proxy at PORT and does
the same the other way (masked frames). Paths are /ws/NAME, and /ws/sync/NAME for one tunnel in 20 (a
configuration can drive those sync, the others async). The first SLOW tunnels' clients send 8 MiB at
once while the backend does not read them (its receive buffer is small), so the proxy
holds bytes pending for them until ``go``.

Commands on stdin, one a line: ``go`` (the backend reads the slow tunnels too), ``stop``
(no new frames; what is buffered is still sent), ``report`` (one JSON line: per path,
[sent bytes, sent sha256, received bytes, received sha256, bytes still buffered]).
Each side's payloads come from a PRNG seeded by the path, so both runs differ per tunnel.
"""

from __future__ import annotations

import hashlib
import json
import random
import selectors
import socket
import sys
import threading
import time
from base64 import b64encode

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SLOW_BYTES = 8 << 20
#: Seconds between two frames of one tunnel.
TICK = 0.2


def frame(payload: bytes, masked: bool) -> bytes:
    n = len(payload)
    mask = 0x80 if masked else 0
    if n < 126:
        head = bytes((0x82, mask | n))
    elif n < 65536:
        head = bytes((0x82, mask | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x82, mask | 127)) + n.to_bytes(8, "big")
    return head + (b"\0\0\0\0" if masked else b"") + payload  # a zero key: the payload as it is


class Peer:
    def __init__(self, sock: socket.socket, path: str, masked: bool) -> None:
        self.sock = sock
        self.path = path
        self.masked = masked
        self.rng = random.Random(path + ("c" if masked else "b"))
        self.tx = hashlib.sha256()
        self.rx = hashlib.sha256()
        self.tx_n = self.rx_n = 0
        self.out = bytearray()
        self.slow = "slow" in path
        self.eof = False
        self.next_at = time.monotonic() + self.rng.random() * TICK

    def produce(self, data: bytes) -> None:
        self.out += data
        self.tx.update(data)
        self.tx_n += len(data)

    def tick(self, now: float, sending: bool) -> None:
        if sending and now >= self.next_at and len(self.out) < 65536:
            self.next_at = now + TICK
            self.produce(frame(self.rng.randbytes(self.rng.randint(1, 2000)), self.masked))

    def flush(self) -> None:
        while self.out:
            try:
                n = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.out.clear()
                return
            del self.out[:n]

    def read(self) -> None:
        try:
            data = self.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.eof = True
            return
        self.rx.update(data)
        self.rx_n += len(data)

    def row(self) -> list[object]:
        return [self.tx_n, self.tx.hexdigest(), self.rx_n, self.rx.hexdigest(), len(self.out)]


class Runner:
    def __init__(self, masked: bool) -> None:
        self.masked = masked
        self.sel = selectors.DefaultSelector()
        self.peers: dict[str, Peer] = {}
        self.sending = True
        self.go = False
        self.lock = threading.Lock()
        self.commands: list[str] = []
        threading.Thread(target=self._stdin, daemon=True).start()

    def _stdin(self) -> None:
        for line in sys.stdin:
            with self.lock:
                self.commands.append(line.strip())
        with self.lock:
            self.commands.append("exit")

    def add(self, peer: Peer) -> None:
        peer.sock.setblocking(False)
        self.peers[peer.path] = peer
        if not (peer.slow and not self.masked):  # the backend reads a slow tunnel only after "go"
            self.sel.register(peer.sock, selectors.EVENT_READ, peer)

    def serve(self, on_accept=None) -> None:
        while True:
            with self.lock:
                commands, self.commands = self.commands, []
            for cmd in commands:
                if cmd == "exit":
                    return
                if cmd == "go" and not self.go:
                    self.go = True
                    for peer in self.peers.values():
                        if peer.slow and not self.masked:
                            self.sel.register(peer.sock, selectors.EVENT_READ, peer)
                elif cmd == "stop":
                    self.sending = False
                elif cmd == "report":
                    print(json.dumps({p.path: p.row() for p in self.peers.values()}), flush=True)
            for key, _ in self.sel.select(0.02):
                if key.data is None:
                    on_accept()
                    continue
                peer = key.data
                peer.read()
                if peer.eof:
                    self.sel.unregister(peer.sock)
                    peer.sock.close()
            now = time.monotonic()
            for peer in self.peers.values():
                if not peer.eof:
                    peer.tick(now, self.sending and not peer.path.startswith("/ws/loop"))
                    peer.flush()


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The head and the bytes that came after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the head ended")
        data += chunk
    end = data.index(b"\r\n\r\n") + 4
    return data[:end], data[end:]


def backend() -> None:
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)  # inherited: slow tunnels back up quickly
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1024)
    runner = Runner(masked=False)
    runner.sel.register(lsock, selectors.EVENT_READ, None)
    print(json.dumps({"port": lsock.getsockname()[1]}), flush=True)

    def accept() -> None:
        conn, _ = lsock.accept()
        conn.settimeout(10)
        head, _ = read_head(conn)  # a client sends nothing before its 101
        path = head.split(b" ", 2)[1].decode()
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n") if line.lower().startswith(b"sec-websocket-key:"))
        accept_key = b64encode(hashlib.sha1(key + GUID).digest())
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + accept_key + b"\r\n\r\n")
        runner.add(Peer(conn, path, masked=False))

    runner.serve(accept)


def handshake(port: int, path: str) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head, rest = read_head(sock)
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"{path}: {head[:60]!r}")
    return sock, rest  # the backend's first frame may come with the head


def clients(port: int, n: int, slow: int) -> None:
    runner = Runner(masked=True)
    for i in range(n):
        name = f"slow-{i}" if i < slow else f"t-{i}"
        path = f"/ws/sync/{name}" if i % 20 == 0 or i == 1 else f"/ws/{name}"  # 1 in 20 (and a slow one) sync
        sock, rest = handshake(port, path)
        peer = Peer(sock, path, masked=True)
        peer.rx.update(rest)
        peer.rx_n += len(rest)
        runner.add(peer)
        if peer.slow:
            for _ in range(SLOW_BYTES // 65536):
                peer.produce(frame(peer.rng.randbytes(65536 - 14), True))
    print(json.dumps({"open": n}), flush=True)
    runner.serve()


if __name__ == "__main__":
    if sys.argv[1] == "backend":
        backend()
    else:
        clients(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
