/* echo_backend: the benchmark's WebSocket backend, in C so that it costs far less CPU
 * than the proxy under test.
 *
 * One thread, epoll, non-blocking sockets.  Listens on K ports of 127.0.0.1 chosen by
 * the OS (one per proxy under test, so their backend connections never share an
 * ephemeral-port space) and prints them on one line: "PORTS p1 p2 ...".
 *
 * Each connection sends an HTTP/1.1 upgrade request; the backend answers
 * "101 Switching Protocols" with the Sec-WebSocket-Accept of the fixed key the load
 * generator uses (bench/loadgen.c), then, by the request path:
 *
 *   /down/N   sends N bytes, then echoes (bulk throughput backend -> client)
 *   /up/N     reads N bytes, then sends one byte "K", then echoes (client -> backend)
 *   anything  raw-byte echo (the tunnel is byte-transparent after the 101)
 *
 * With "frame=F" in the request target (bench/loadgen.c --frame F) the bytes after the
 * 101 are WebSocket frames of F-byte payloads both ways: the client's are masked, the
 * backend's are not (RFC 6455 section 5.1). /down/N sends N bytes of unmasked frames, /up/N
 * answers with a 3-byte frame, and the echo answers each whole client frame with one
 * unmasked frame of the same payload length (the payload bytes are not looked at).
 *
 * Backpressure: a partial echo write keeps the rest in a per-connection buffer and stops
 * reading that connection until it drains.  EOF or an error closes the connection.
 * SIGTERM/SIGINT end the process.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_PORTS 32
#define SCRATCH (256 * 1024)
#define HEAD_MAX 8192

static const char RESPONSE[] =
    "HTTP/1.1 101 Switching Protocols\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    /* base64(sha1("dGhlIHNhbXBsZSBub25jZQ==" + GUID)), RFC 6455 section 1.3 */
    "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    "\r\n";

enum { HEAD, ECHO, DOWN, UP };

typedef struct conn {
    int fd;
    int state;
    uint32_t ev;         /* the events registered */
    char *head;          /* request head while state == HEAD */
    int headlen;
    char *pend;          /* unsent bytes (echo backpressure / 101 / "K") */
    size_t pendlen, pendoff;
    uint64_t remaining;  /* DOWN: bytes to send; UP: bytes to read */
    uint64_t sentdown;   /* DOWN: bytes sent (where in the frame pattern) */
    int frame;           /* 0: raw bytes; else the payload size of the frames both ways */
    size_t cframe, sframe; /* framing: one client frame's length, one server frame's */
    size_t cgot;         /* framing, echo: bytes of the current client frame received */
} conn;

static int ep;
static int listeners[MAX_PORTS];
static int nlisteners;
static char scratch[SCRATCH];
static char pattern[SCRATCH];
/* Unmasked frames of the last payload size asked for, back to back (built on demand). */
static char fpattern[SCRATCH];
static int fpattern_size;
static size_t fpattern_len;

static size_t header_len(uint64_t len, int masked) { return (len < 126 ? 2 : len < 65536 ? 4 : 10) + (masked ? 4 : 0); }

static void build_frames(int size) {
    if (size == fpattern_size) return;
    size_t flen = header_len((uint64_t)size, 0) + (size_t)size;
    size_t frames = SCRATCH / flen;
    for (size_t f = 0; f < frames; f++) {
        unsigned char *h = (unsigned char *)fpattern + f * flen;
        h[0] = 0x82;
        int n = 2;
        if (size < 126) h[1] = (unsigned char)size;
        else if (size < 65536) {
            h[1] = 126;
            h[2] = (unsigned char)(size >> 8);
            h[3] = (unsigned char)size;
            n = 4;
        } else {
            h[1] = 127;
            for (int i = 0; i < 8; i++) h[2 + i] = (unsigned char)((uint64_t)size >> (56 - 8 * i));
            n = 10;
        }
        memset(h + n, 'f', (size_t)size);
    }
    fpattern_size = size;
    fpattern_len = frames * flen;
}
static volatile sig_atomic_t stop;

static void on_signal(int sig) { (void)sig; stop = 1; }

static void set_events(conn *c, uint32_t ev) {
    if (ev == c->ev) return; /* modify the set only on a change */
    c->ev = ev;
    struct epoll_event e = {.events = ev, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
}

static void close_conn(conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->head);
    free(c->pend);
    free(c);
}

/* Queue bytes behind what is pending (used only for small or leftover data). */
static void queue(conn *c, const char *data, size_t n) {
    size_t have = c->pendlen - c->pendoff;
    char *buf = malloc(have + n);
    if (!buf) abort();
    if (have) memcpy(buf, c->pend + c->pendoff, have);
    memcpy(buf + have, data, n);
    free(c->pend);
    c->pend = buf;
    c->pendlen = have + n;
    c->pendoff = 0;
}

/* Try to write the pending bytes; returns -1 on error, 0 when all is out, 1 if some remain. */
static int flush_pending(conn *c) {
    while (c->pendoff < c->pendlen) {
        ssize_t n = send(c->fd, c->pend + c->pendoff, c->pendlen - c->pendoff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 1;
            if (errno == EINTR) continue;
            return -1;
        }
        c->pendoff += (size_t)n;
    }
    free(c->pend);
    c->pend = NULL;
    c->pendlen = c->pendoff = 0;
    return 0;
}

/* Send data now; keep what the kernel did not take. Returns -1 on error. */
static int send_or_queue(conn *c, const char *data, size_t n) {
    if (c->pendlen > c->pendoff) {
        queue(c, data, n);
        return 0;
    }
    size_t off = 0;
    while (off < n) {
        ssize_t w = send(c->fd, data + off, n - off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            return -1;
        }
        off += (size_t)w;
    }
    if (off < n) queue(c, data + off, n - off);
    return 0;
}

/* Decide the epoll interest from the state. */
static void update_interest(conn *c) {
    uint32_t ev = 0;
    int pending = c->pendlen > c->pendoff;
    if (pending || c->state == DOWN) ev |= EPOLLOUT;
    if (!pending) ev |= EPOLLIN; /* backpressure: no reading while echo bytes wait */
    if (c->state == DOWN) ev |= EPOLLIN; /* notice EOF */
    set_events(c, ev);
}

/* Bytes that arrived after the 101 (or while echoing). */
static int on_data(conn *c, const char *data, size_t n) {
    if (c->state == UP) {
        if (n < c->remaining) {
            c->remaining -= n;
            return 0;
        }
        n -= (size_t)c->remaining;
        data += c->remaining;
        c->remaining = 0;
        c->state = ECHO;
        if (c->frame ? send_or_queue(c, "\x82\x01K", 3) < 0 : send_or_queue(c, "K", 1) < 0) return -1;
        if (n == 0) return 0;
    }
    if (c->state == DOWN) return 0; /* discard while streaming */
    if (!c->frame) return send_or_queue(c, data, n);
    /* One unmasked frame back for each whole client frame. */
    c->cgot += n;
    size_t whole = c->cgot / c->cframe;
    c->cgot %= c->cframe;
    size_t per = fpattern_len / c->sframe;
    while (whole > 0) {
        size_t k = whole < per ? whole : per;
        if (send_or_queue(c, fpattern, k * c->sframe) < 0) return -1;
        whole -= k;
    }
    return 0;
}

static int on_head(conn *c) {
    char *end = memmem(c->head, (size_t)c->headlen, "\r\n\r\n", 4);
    if (!end) return c->headlen >= HEAD_MAX - 1 ? -1 : 0;
    size_t headsz = (size_t)(end - c->head) + 4;
    /* request line: METHOD SP PATH SP VERSION */
    char *sp = memchr(c->head, ' ', headsz);
    if (!sp) return -1;
    char *path = sp + 1;
    unsigned long long n = 0;
    c->state = ECHO;
    if (strncmp(path, "/down/", 6) == 0) {
        n = strtoull(path + 6, NULL, 10);
        c->state = DOWN;
        c->remaining = n;
    } else if (strncmp(path, "/up/", 4) == 0) {
        n = strtoull(path + 4, NULL, 10);
        c->state = UP;
        c->remaining = n;
    }
    char *line_end = memchr(c->head, '\r', headsz);
    char *fr = memmem(path, (size_t)((line_end ? line_end : end) - path), "frame=", 6);
    if (fr) {
        c->frame = atoi(fr + 6);
        if (c->frame < 1 || c->frame > SCRATCH / 2) return -1;
        build_frames(c->frame);
        c->cframe = header_len((uint64_t)c->frame, 1) + (size_t)c->frame;
        c->sframe = header_len((uint64_t)c->frame, 0) + (size_t)c->frame;
    }
    if (send_or_queue(c, RESPONSE, sizeof(RESPONSE) - 1) < 0) return -1;
    size_t extra = (size_t)c->headlen - headsz;
    int rc = 0;
    if (extra) rc = on_data(c, end + 4, extra);
    free(c->head);
    c->head = NULL;
    return rc;
}

static int on_readable(conn *c) {
    for (int rounds = 0; rounds < 4; rounds++) {
        if (c->state == HEAD) {
            ssize_t n = recv(c->fd, c->head + c->headlen, HEAD_MAX - 1 - c->headlen, 0);
            if (n == 0) return -1;
            if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -1;
            c->headlen += (int)n;
            if (on_head(c) < 0) return -1;
            if (c->state == HEAD) continue;
            return 0;
        }
        if (c->pendlen > c->pendoff && c->state != DOWN) return 0; /* backpressure */
        ssize_t n = recv(c->fd, scratch, SCRATCH, 0);
        if (n == 0) return -1;
        if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -1;
        if (on_data(c, scratch, (size_t)n) < 0) return -1;
        if (n < SCRATCH) return 0;
    }
    return 0;
}

static int on_writable(conn *c) {
    int rc = flush_pending(c);
    if (rc < 0) return -1;
    if (rc > 0) return 0;
    while (c->state == DOWN && c->remaining > 0) {
        const char *src = pattern;
        size_t room = SCRATCH;
        if (c->frame) { /* whole frames, back to back, across sends */
            size_t off = (size_t)(c->sentdown % fpattern_len);
            src = fpattern + off;
            room = fpattern_len - off;
        }
        size_t chunk = c->remaining < room ? (size_t)c->remaining : room;
        ssize_t n = send(c->fd, src, chunk, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            if (errno == EINTR) continue;
            return -1;
        }
        c->remaining -= (uint64_t)n;
        c->sentdown += (uint64_t)n;
    }
    if (c->state == DOWN && c->remaining == 0) c->state = ECHO;
    return 0;
}

static void accept_all(int lfd) {
    for (int i = 0; i < 256; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return; /* EAGAIN, or EMFILE: try again on the next event */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn *c = calloc(1, sizeof *c);
        if (!c) abort();
        c->fd = fd;
        c->state = HEAD;
        c->ev = EPOLLIN;
        c->head = malloc(HEAD_MAX);
        if (!c->head) abort();
        struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
    }
}

int main(int argc, char **argv) {
    int k = argc > 1 ? atoi(argv[1]) : 1;
    if (k < 1 || k > MAX_PORTS) {
        fprintf(stderr, "usage: echo_backend [NPORTS<=%d]\n", MAX_PORTS);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    for (int i = 0; i < SCRATCH; i++) pattern[i] = (char)('a' + i % 26);
    ep = epoll_create1(EPOLL_CLOEXEC);
    printf("PORTS");
    for (int i = 0; i < k; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 4096) < 0) {
            perror("bind/listen");
            return 1;
        }
        socklen_t len = sizeof a;
        getsockname(fd, (struct sockaddr *)&a, &len);
        listeners[nlisteners++] = fd;
        struct epoll_event e = {.events = EPOLLIN, .data.ptr = &listeners[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
        printf(" %d", ntohs(a.sin_port));
    }
    printf("\n");
    fflush(stdout);

    struct epoll_event evs[512];
    while (!stop) {
        int n = epoll_wait(ep, evs, 512, 500);
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            if (p >= (void *)&listeners[0] && p < (void *)&listeners[MAX_PORTS]) {
                accept_all(*(int *)p);
                continue;
            }
            conn *c = p;
            int rc = 0;
            if (evs[i].events & (EPOLLERR)) rc = -1;
            if (rc == 0 && (evs[i].events & EPOLLOUT)) rc = on_writable(c);
            if (rc == 0 && (evs[i].events & (EPOLLIN | EPOLLHUP))) rc = on_readable(c);
            if (rc < 0) {
                close_conn(c);
                continue;
            }
            if (c->state != HEAD) update_interest(c);
        }
    }
    return 0;
}
