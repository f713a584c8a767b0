/* loadgen: the benchmark's WebSocket load generator, in C (epoll, one thread) so that it
 * costs far less CPU than the proxy under test.
 *
 * Every connection starts with the same HTTP/1.1 upgrade (fixed Sec-WebSocket-Key, the
 * one bench/echo_backend.c answers) and, after the 101, moves raw bytes: a proxy in
 * tunnel mode is byte-transparent, so no WebSocket framing is needed. With --frame F
 * (F > 0) it speaks WebSocket framing instead (RFC 6455 section 5.2): every byte it sends
 * is a masked binary frame with an F-byte payload (ping-pong: one F-byte frame per
 * message, --size ignored), and it asks the backend (?frame=F on the request path) for
 * unmasked frames back, so that a proxy that follows frame headers reads real ones both
 * ways.
 *
 *   loadgen bulk-down  --port P --bytes N                 backend -> client throughput
 *   (every mode: --frame F for WebSocket frames of F-byte payloads instead of raw bytes)
 *   loadgen bulk-up    --port P --bytes N                 client -> backend throughput
 *   loadgen pingpong   --port P --conns C --size 64 --warmup W --duration D
 *   loadgen handshake  --port P --conc 32 --warmup W --duration D
 *                      (connect, upgrade, one 64-byte echo, close; again)
 *   loadgen hold       --port P --max N                   commands on stdin, one a line:
 *        open N        grow to N idle tunnels (besides one probe tunnel)
 *        probe W D     ping-pong on the probe tunnel while the others idle
 *        pingall T     one echo on every idle tunnel (all must answer within T s)
 *        check         count idle tunnels the proxy closed
 *        quit
 *
 * Every result is one JSON line on stdout, with the generator's own CPU time (cpu_s).
 * Every loop is bounded by a deadline (--timeout, default 60 s, per phase).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SCRATCH (256 * 1024)
#define HEADBUF 2048

enum { C_FREE, C_CONNECTING, C_REQ, C_HEAD, C_OPEN, C_ECHO, C_DEAD };

typedef struct conn {
    int fd;
    int state;
    uint32_t ev;
    int reqoff;
    int headlen;
    char *head;
    int sent, got;     /* current message: bytes sent, bytes echoed */
    int waiting;       /* a message is out */
    uint64_t t0;       /* send (or connect) time, ns */
    uint64_t bytes;    /* bytes after the 101 (bulk) */
} conn;

/* ---- options ---- */
static const char *host = "127.0.0.1";
static int port;
static const char *path = "/echo";
static int nconns = 1, msgsize = 64, conc = 64, maxconns = 10000;
static double warmup = 0.2, duration = 1.0, timeout_s = 60.0;
static unsigned long long nbytes = 64ULL << 20;
static int framesize = 0;     /* --frame: 0 raw bytes, else WebSocket frames of this payload */
static int msg_out, msg_back; /* bytes of one message sent, and of its echo */
static size_t patlen = SCRATCH; /* the pattern's length: whole frames when framing */

static int ep;
static char scratch[SCRATCH];
static char pattern[SCRATCH];
static char request[1024];
static int reqlen;
static struct sockaddr_in addr;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* ---- latency histogram: 100 ns buckets to 100 ms, then 1 ms buckets to 10 s ---- */
#define FINE 1000000
#define COARSE 10001
static uint64_t *hfine, *hcoarse, hcount, hmax;

static void hreset(void) {
    memset(hfine, 0, FINE * sizeof *hfine);
    memset(hcoarse, 0, COARSE * sizeof *hcoarse);
    hcount = hmax = 0;
}
static void hrecord(uint64_t ns) {
    uint64_t b = ns / 100;
    if (b < FINE) hfine[b]++;
    else {
        uint64_t ms = ns / 1000000;
        hcoarse[ms < COARSE - 1 ? ms : COARSE - 1]++;
    }
    hcount++;
    if (ns > hmax) hmax = ns;
}
static double hpct(double p) { /* microseconds */
    if (!hcount) return -1;
    uint64_t want = (uint64_t)ceil(p * (double)hcount), cum = 0;
    if (want < 1) want = 1;
    for (uint64_t i = 0; i < FINE; i++) {
        cum += hfine[i];
        if (cum >= want) return (i * 100 + 50) / 1000.0;
    }
    for (uint64_t i = 0; i < COARSE; i++) {
        cum += hcoarse[i];
        if (cum >= want) return i * 1000.0 + 500.0;
    }
    return hmax / 1000.0;
}

/* ---- connections ---- */
static void set_events(conn *c, uint32_t ev) {
    if (c->ev == ev) return;
    struct epoll_event e = {.events = ev, .data.ptr = c};
    epoll_ctl(ep, c->ev ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &e);
    c->ev = ev;
}

static void kill_conn(conn *c) {
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->ev = 0;
    free(c->head);
    c->head = NULL;
    c->state = C_DEAD;
    c->waiting = 0;
}

/* A frame header for an F-byte payload: 2 bytes, plus 2 or 8 of extended length, plus
 * the 4-byte mask key when masked. Returns its length. */
static int frame_header(unsigned char *h, uint64_t len, int masked) {
    int n = 2;
    h[0] = 0x82; /* FIN, binary */
    if (len < 126) h[1] = (unsigned char)len;
    else if (len < 65536) {
        h[1] = 126;
        h[2] = (unsigned char)(len >> 8);
        h[3] = (unsigned char)len;
        n = 4;
    } else {
        h[1] = 127;
        for (int i = 0; i < 8; i++) h[2 + i] = (unsigned char)(len >> (56 - 8 * i));
        n = 10;
    }
    if (masked) {
        h[1] |= 0x80;
        memcpy(h + n, "\x37\xfa\x21\x3d", 4);
        n += 4;
    }
    return n;
}

static int header_len(uint64_t len, int masked) { return (len < 126 ? 2 : len < 65536 ? 4 : 10) + (masked ? 4 : 0); }

/* The pattern: raw letters, or as many whole masked F-byte frames as fit in SCRATCH. */
static void build_pattern(void) {
    for (int i = 0; i < SCRATCH; i++) pattern[i] = (char)('a' + i % 26);
    msg_out = msg_back = msgsize;
    if (!framesize) return;
    size_t flen = (size_t)header_len((uint64_t)framesize, 1) + (size_t)framesize;
    size_t frames = SCRATCH / flen;
    for (size_t f = 0; f < frames; f++) {
        unsigned char *at = (unsigned char *)pattern + f * flen;
        int h = frame_header(at, (uint64_t)framesize, 1);
        for (int i = 0; i < framesize; i++) at[h + i] = (unsigned char)(('a' + i % 26) ^ "\x37\xfa\x21\x3d"[i & 3]);
    }
    patlen = frames * flen;
    msg_out = (int)flen;
    msg_back = header_len((uint64_t)framesize, 0) + framesize;
}

static void build_request(const char *p) {
    char target[256];
    if (framesize) snprintf(target, sizeof target, "%s%cframe=%d", p, strchr(p, '?') ? '&' : '?', framesize);
    else snprintf(target, sizeof target, "%s", p);
    p = target;
    reqlen = snprintf(request, sizeof request,
                      "GET %s HTTP/1.1\r\n"
                      "Host: %s:%d\r\n"
                      "Upgrade: websocket\r\n"
                      "Connection: Upgrade\r\n"
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      "Sec-WebSocket-Version: 13\r\n"
                      "\r\n",
                      p, host, port);
}

/* Start a non-blocking connect; returns -1 on immediate failure. */
static int start_connect(conn *c) {
    memset(c, 0, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        c->state = C_DEAD;
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->t0 = now_ns();
    c->state = C_CONNECTING;
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        kill_conn(c);
        return -1;
    }
    set_events(c, EPOLLOUT);
    return 0;
}

/* Advance the upgrade of c on an event: 1 = open, -1 = failed, 0 = not yet. */
static int step_open(conn *c, uint32_t events) {
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err || (events & EPOLLERR)) return -1;
        c->state = C_REQ;
    }
    if (c->state == C_REQ) {
        while (c->reqoff < reqlen) {
            ssize_t n = send(c->fd, request + c->reqoff, reqlen - c->reqoff, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EAGAIN) return 0;
                return -1;
            }
            c->reqoff += (int)n;
        }
        c->state = C_HEAD;
        c->head = malloc(HEADBUF);
        if (!c->head) abort();
        set_events(c, EPOLLIN);
        return 0;
    }
    if (c->state == C_HEAD) {
        ssize_t n = recv(c->fd, c->head + c->headlen, HEADBUF - 1 - c->headlen, 0);
        if (n == 0) return -1;
        if (n < 0) return errno == EAGAIN ? 0 : -1;
        c->headlen += (int)n;
        c->head[c->headlen] = 0;
        char *end = memmem(c->head, c->headlen, "\r\n\r\n", 4);
        if (!end) return c->headlen >= HEADBUF - 1 ? -1 : 0;
        if (strncmp(c->head, "HTTP/1.1 101", 12) != 0) return -1;
        c->bytes = (uint64_t)(c->headlen - (end + 4 - c->head));
        free(c->head);
        c->head = NULL;
        c->state = C_OPEN;
        return 1;
    }
    return -1;
}

/* Open conns[lo..hi) with at most `conc` upgrades in flight. */
static void open_range(conn *cs, int lo, int hi, int *ok, int *err, uint64_t deadline) {
    int next = lo, inflight = 0;
    struct epoll_event evs[1024];
    *ok = *err = 0;
    while ((next < hi || inflight > 0) && now_ns() < deadline) {
        while (inflight < conc && next < hi) {
            if (start_connect(&cs[next++]) < 0) (*err)++;
            else inflight++;
        }
        int n = epoll_wait(ep, evs, 1024, 100);
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            if (c->state == C_OPEN || c->state == C_DEAD) {
                /* an idle tunnel spoke: only an EOF or an error is expected */
                ssize_t r = recv(c->fd, scratch, SCRATCH, 0);
                if (r == 0 || (r < 0 && errno != EAGAIN)) kill_conn(c);
                continue;
            }
            int rc = step_open(c, evs[i].events);
            if (rc == 1) {
                (*ok)++;
                inflight--;
            } else if (rc < 0) {
                kill_conn(c);
                (*err)++;
                inflight--;
            }
        }
    }
    for (int i = lo; i < next; i++) /* the deadline passed: unfinished upgrades fail */
        if (cs[i].state != C_OPEN && cs[i].state != C_DEAD) {
            kill_conn(&cs[i]);
            (*err)++;
        }
    *err += hi - next;
}

static int send_msg(conn *c) {
    c->t0 = now_ns();
    c->got = 0;
    c->waiting = 1;
    ssize_t n = send(c->fd, pattern, msg_out, MSG_NOSIGNAL);
    if (n != msg_out) return -1; /* one small message into an empty socket buffer: all or error */
    return 0;
}

/* Ping-pong on the open conns of cs[lo..hi): returns JSON fields via printf. */
static void pingpong(conn *cs, int lo, int hi, double wu, double dur, const char *tag, double cpu0, int open_err) {
    hreset();
    uint64_t t_start = now_ns();
    uint64_t t_meas = t_start + (uint64_t)(wu * 1e9);
    uint64_t t_end = t_meas + (uint64_t)(dur * 1e9);
    uint64_t t_drain = t_end + 2000000000ULL;
    uint64_t msgs = 0, errors = 0;
    int outstanding = 0, active = 0;
    for (int i = lo; i < hi; i++) {
        if (cs[i].state != C_OPEN) continue;
        active++;
        if (send_msg(&cs[i]) < 0) {
            kill_conn(&cs[i]);
            errors++;
        } else outstanding++;
    }
    struct epoll_event evs[1024];
    for (;;) {
        uint64_t t = now_ns();
        if (t >= t_drain || (t >= t_end && outstanding == 0)) break;
        uint64_t until = t < t_end ? t_end : t_drain;
        int ms = (int)((until - t) / 1000000) + 1;
        int n = epoll_wait(ep, evs, 1024, ms);
        uint64_t tn = now_ns();
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            ssize_t r = recv(c->fd, scratch, SCRATCH, 0);
            if (r < 0 && errno == EAGAIN) continue;
            if (r <= 0) {
                if (c->waiting) outstanding--;
                kill_conn(c);
                errors++;
                continue;
            }
            if (!c->waiting) continue;
            c->got += (int)r;
            if (c->got < msg_back) continue;
            c->waiting = 0;
            outstanding--;
            if (c->t0 >= t_meas && tn <= t_end) {
                hrecord(tn - c->t0);
                msgs++;
            }
            if (tn < t_end) {
                if (send_msg(c) < 0) {
                    kill_conn(c);
                    errors++;
                } else outstanding++;
            }
        }
    }
    errors += (uint64_t)outstanding; /* echoes that never came back */
    for (int i = lo; i < hi; i++)
        if (cs[i].state == C_OPEN && cs[i].waiting) kill_conn(&cs[i]);
    printf("{\"mode\":\"%s\",\"conns\":%d,\"open_errors\":%d,\"msgs\":%llu,\"seconds\":%.3f,"
           "\"msgs_per_s\":%.1f,\"p50_us\":%.2f,\"p90_us\":%.2f,\"p99_us\":%.2f,\"max_us\":%.2f,"
           "\"errors\":%llu,\"cpu_s\":%.4f}\n",
           tag, active, open_err, (unsigned long long)msgs, dur, msgs / dur, hpct(0.50), hpct(0.90), hpct(0.99),
           hmax / 1000.0, (unsigned long long)errors, cpu_s() - cpu0);
    fflush(stdout);
}

/* ---- modes ---- */
static conn *alloc_conns(int n) {
    conn *cs = calloc((size_t)n, sizeof *cs);
    if (!cs) abort();
    for (int i = 0; i < n; i++) cs[i].fd = -1;
    return cs;
}

static int mode_pingpong(void) {
    double cpu0 = cpu_s();
    build_request(path);
    conn *cs = alloc_conns(nconns);
    int ok, err;
    uint64_t t0 = now_ns();
    open_range(cs, 0, nconns, &ok, &err, t0 + (uint64_t)(timeout_s * 1e9));
    pingpong(cs, 0, nconns, warmup, duration, "pingpong", cpu0, err);
    for (int i = 0; i < nconns; i++) kill_conn(&cs[i]);
    return 0;
}

static int mode_bulk(int down) {
    double cpu0 = cpu_s();
    char p[128];
    snprintf(p, sizeof p, "/%s/%llu", down ? "down" : "up", nbytes);
    build_request(p);
    conn *c = alloc_conns(1);
    int ok, err;
    uint64_t deadline = now_ns() + (uint64_t)(timeout_s * 1e9);
    open_range(c, 0, 1, &ok, &err, deadline);
    if (!ok) {
        printf("{\"mode\":\"bulk-%s\",\"bytes\":0,\"seconds\":0,\"mb_per_s\":0,\"errors\":1,\"cpu_s\":%.4f}\n",
               down ? "down" : "up", cpu_s() - cpu0);
        return 0;
    }
    uint64_t t0 = now_ns(), got = c->bytes, sent = 0;
    int done = 0, errors = 0;
    struct epoll_event evs[4];
    if (!down) set_events(c, EPOLLIN | EPOLLOUT);
    while (!done && now_ns() < deadline) {
        int n = epoll_wait(ep, evs, 4, 100);
        if (n <= 0) continue;
        uint32_t e = evs[0].events;
        if (e & EPOLLIN) {
            ssize_t r = recv(c->fd, scratch, SCRATCH, 0);
            if (r == 0 || (r < 0 && errno != EAGAIN)) {
                errors = 1;
                break;
            }
            if (r > 0) got += (uint64_t)r;
            if (down ? got >= nbytes : got >= 1) done = 1;
        }
        if (!down && (e & EPOLLOUT)) {
            while (sent < nbytes) {
                size_t off = (size_t)(sent % patlen); /* whole frames, back to back */
                size_t chunk = nbytes - sent < patlen - off ? (size_t)(nbytes - sent) : patlen - off;
                ssize_t w = send(c->fd, pattern + off, chunk, MSG_NOSIGNAL);
                if (w < 0) {
                    if (errno != EAGAIN) errors = 1;
                    break;
                }
                sent += (uint64_t)w;
            }
            if (errors) break;
            if (sent >= nbytes) set_events(c, EPOLLIN);
        }
    }
    uint64_t t1 = now_ns();
    if (!done) errors = 1;
    double secs = (t1 - t0) / 1e9;
    printf("{\"mode\":\"bulk-%s\",\"bytes\":%llu,\"seconds\":%.4f,\"mb_per_s\":%.1f,\"errors\":%d,\"cpu_s\":%.4f}\n",
           down ? "down" : "up", done ? nbytes : 0ULL, secs, done ? nbytes / secs / 1e6 : 0.0, errors, cpu_s() - cpu0);
    kill_conn(c);
    return 0;
}

static int mode_handshake(void) {
    double cpu0 = cpu_s();
    build_request(path);
    conn *cs = alloc_conns(conc);
    hreset();
    uint64_t t_start = now_ns();
    uint64_t t_meas = t_start + (uint64_t)(warmup * 1e9);
    uint64_t t_end = t_meas + (uint64_t)(duration * 1e9);
    uint64_t ok = 0, errors = 0;
    for (int i = 0; i < conc; i++)
        if (start_connect(&cs[i]) < 0) errors++;
    struct epoll_event evs[1024];
    while (now_ns() < t_end) {
        int n = epoll_wait(ep, evs, 1024, 50);
        uint64_t tn = now_ns();
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            int failed = 0, finished = 0;
            if (c->state == C_ECHO) {
                ssize_t r = recv(c->fd, scratch, SCRATCH, 0);
                if (r < 0 && errno == EAGAIN) continue;
                if (r <= 0) failed = 1;
                else if ((c->got += (int)r) >= msg_back) finished = 1;
            } else {
                uint64_t started = c->t0;
                int rc = step_open(c, evs[i].events);
                if (rc < 0) failed = 1;
                else if (rc == 1) {
                    c->state = C_ECHO;
                    uint64_t keep = started;
                    if (send_msg(c) < 0) failed = 1;
                    c->t0 = keep;
                    c->got = (int)c->bytes;
                    if (c->got >= msg_back) finished = 1;
                }
            }
            if (!failed && !finished) continue;
            if (tn >= t_meas) {
                if (failed) errors++;
                else {
                    ok++;
                    hrecord(tn - c->t0);
                }
            }
            kill_conn(c);
            if (tn < t_end && start_connect(c) < 0 && tn >= t_meas) errors++;
        }
    }
    for (int i = 0; i < conc; i++) kill_conn(&cs[i]);
    printf("{\"mode\":\"handshake\",\"conc\":%d,\"ok\":%llu,\"seconds\":%.3f,\"per_s\":%.1f,\"errors\":%llu,"
           "\"p50_us\":%.2f,\"p99_us\":%.2f,\"cpu_s\":%.4f}\n",
           conc, (unsigned long long)ok, duration, ok / duration, (unsigned long long)errors, hpct(0.5), hpct(0.99),
           cpu_s() - cpu0);
    return 0;
}

static int count_alive(conn *cs, int n) {
    int alive = 0;
    for (int i = 0; i < n; i++) alive += cs[i].state == C_OPEN;
    return alive;
}

/* Pick up EOFs and errors that idle tunnels received. */
static void sweep(void) {
    struct epoll_event evs[1024];
    for (int rounds = 0; rounds < 64; rounds++) {
        int n = epoll_wait(ep, evs, 1024, 0);
        if (n <= 0) return;
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            ssize_t r = recv(c->fd, scratch, SCRATCH, 0);
            if (r == 0 || (r < 0 && errno != EAGAIN)) kill_conn(c);
        }
    }
}

/* One echo on every open conn of cs[0..n), at most 256 out at once; returns how many answered. */
static int pingall(conn *cs, int n, double t) {
    uint64_t deadline = now_ns() + (uint64_t)(t * 1e9);
    int next = 0, out = 0, answered = 0;
    struct epoll_event evs[1024];
    while ((next < n || out > 0) && now_ns() < deadline) {
        while (out < 256 && next < n) {
            conn *c = &cs[next++];
            if (c->state != C_OPEN) continue;
            if (send_msg(c) < 0) kill_conn(c);
            else out++;
        }
        int k = epoll_wait(ep, evs, 1024, 50);
        for (int i = 0; i < k; i++) {
            conn *c = evs[i].data.ptr;
            ssize_t r = recv(c->fd, scratch, SCRATCH, 0);
            if (r < 0 && errno == EAGAIN) continue;
            if (r <= 0) {
                if (c->waiting) out--;
                kill_conn(c);
                continue;
            }
            if (!c->waiting) continue;
            if ((c->got += (int)r) >= msg_back) {
                c->waiting = 0;
                out--;
                answered++;
            }
        }
    }
    for (int i = 0; i < n; i++)
        if (cs[i].state == C_OPEN && cs[i].waiting) kill_conn(&cs[i]);
    return answered;
}

static int mode_hold(void) {
    build_request(path);
    conn *probe = alloc_conns(1);
    conn *cs = alloc_conns(maxconns);
    int total = 0, ok, err;
    double cpu0 = cpu_s();
    open_range(probe, 0, 1, &ok, &err, now_ns() + (uint64_t)(timeout_s * 1e9));
    printf("{\"cmd\":\"ready\",\"probe_ok\":%d,\"cpu_s\":%.4f}\n", ok, cpu_s() - cpu0);
    fflush(stdout);
    char line[256];
    while (fgets(line, sizeof line, stdin)) {
        cpu0 = cpu_s();
        if (strncmp(line, "open ", 5) == 0) {
            int want = atoi(line + 5);
            if (want > maxconns) want = maxconns;
            uint64_t t0 = now_ns();
            ok = err = 0;
            if (want > total) open_range(cs, total, want, &ok, &err, t0 + (uint64_t)(timeout_s * 1e9));
            double secs = (now_ns() - t0) / 1e9;
            if (want > total) total = want;
            sweep();
            printf("{\"cmd\":\"open\",\"attempted\":%d,\"ok\":%d,\"errors\":%d,\"alive\":%d,\"seconds\":%.3f,\"cpu_s\":%.4f}\n",
                   total, ok, err, count_alive(cs, total), secs, cpu_s() - cpu0);
        } else if (strncmp(line, "probe ", 6) == 0) {
            double wu = 0.2, dur = 1.0;
            sscanf(line + 6, "%lf %lf", &wu, &dur);
            pingpong(probe, 0, 1, wu, dur, "probe", cpu0, 0);
            if (probe->state != C_OPEN) { /* reopen a lost probe for the next level */
                open_range(probe, 0, 1, &ok, &err, now_ns() + (uint64_t)(timeout_s * 1e9));
            }
        } else if (strncmp(line, "pingall", 7) == 0) {
            double t = 10.0;
            sscanf(line + 7, "%lf", &t);
            sweep();
            int before = count_alive(cs, total);
            int answered = pingall(cs, total, t);
            printf("{\"cmd\":\"pingall\",\"alive_before\":%d,\"answered\":%d,\"alive_after\":%d,\"cpu_s\":%.4f}\n",
                   before, answered, count_alive(cs, total), cpu_s() - cpu0);
        } else if (strncmp(line, "check", 5) == 0) {
            sweep();
            printf("{\"cmd\":\"check\",\"alive\":%d,\"attempted\":%d}\n", count_alive(cs, total), total);
        } else if (strncmp(line, "quit", 4) == 0) {
            break;
        } else {
            printf("{\"cmd\":\"unknown\"}\n");
        }
        fflush(stdout);
    }
    for (int i = 0; i < total; i++) kill_conn(&cs[i]);
    kill_conn(probe);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: loadgen MODE --port P [options]\n");
        return 2;
    }
    const char *mode = argv[1];
    for (int i = 2; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--host")) host = v;
        else if (!strcmp(k, "--port")) port = atoi(v);
        else if (!strcmp(k, "--path")) path = v;
        else if (!strcmp(k, "--conns")) nconns = atoi(v);
        else if (!strcmp(k, "--size")) msgsize = atoi(v);
        else if (!strcmp(k, "--conc")) conc = atoi(v);
        else if (!strcmp(k, "--max")) maxconns = atoi(v);
        else if (!strcmp(k, "--warmup")) warmup = atof(v);
        else if (!strcmp(k, "--duration")) duration = atof(v);
        else if (!strcmp(k, "--timeout")) timeout_s = atof(v);
        else if (!strcmp(k, "--bytes")) nbytes = strtoull(v, NULL, 10);
        else if (!strcmp(k, "--frame")) framesize = atoi(v);
        else {
            fprintf(stderr, "unknown option %s\n", k);
            return 2;
        }
    }
    if (framesize && strcmp(mode, "bulk-down") && strcmp(mode, "bulk-up")) msgsize = framesize; /* a message is one frame */
    if (port <= 0 || msgsize < 1 || msgsize > SCRATCH / 2 || conc < 1 || nconns < 1 || maxconns < 1 || framesize < 0 ||
        framesize > SCRATCH / 2) {
        fprintf(stderr, "bad options\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    build_pattern();
    hfine = calloc(FINE, sizeof *hfine);
    hcoarse = calloc(COARSE, sizeof *hcoarse);
    if (!hfine || !hcoarse) abort();
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "bad host %s\n", host);
        return 2;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (!strcmp(mode, "pingpong")) return mode_pingpong();
    if (!strcmp(mode, "bulk-down")) return mode_bulk(1);
    if (!strcmp(mode, "bulk-up")) return mode_bulk(0);
    if (!strcmp(mode, "handshake")) return mode_handshake();
    if (!strcmp(mode, "hold")) return mode_hold();
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
