/*
 * loadgen: the RTP load generator of bench/relay_pps.
 *
 *   loadgen RATE_PPS SECONDS [BURST] [DRAIN_MS]  < sessions
 *
 * stdin holds one line per session: "SRC_IP SRC_PORT DST_IP DST_PORT SINK_IP SINK_PORT".
 * The generator binds one socket per session on SRC (the address declared to the relay, so a
 * relay that latches onto the first source it sees learns that very address) and sends to
 * DST, the relay's port; it binds one socket per session on SINK, where the relay forwards.
 *
 * Sender thread: 172-byte packets (12-byte RTP header, PT 0, then 160 bytes whose first 8 are
 * the session index and a 32-bit per-session sequence number), the sessions round robin,
 * BURST packets to one session per sendmmsg, paced by a token bucket at RATE_PPS for SECONDS.
 * The bucket holds 10 ms of tokens: a sender descheduled for a few ms (other work on its core)
 * catches up, a longer stall is not made up for by a flood, and the achieved rate shows it.
 * Receiver thread: epoll over the sink sockets, recvmmsg in batches of 64, counts per session
 * and checks the sequence: a jump forward counts the skipped packets as lost by sequence, a
 * number below the expected one as reordered (or duplicated); a session whose last packet
 * arrived more than 250 ms before the sender finished counts as stalled (a relay that stopped
 * forwarding it: the loss at its tail is not seen by the sequence check). It stops DRAIN_MS after the
 * sender finished once nothing arrives any more, and one second after it at the latest.
 *
 * stdout: "go" when the sockets are bound and the first packet is about to leave, "done"
 * when the receiver has stopped, then one line of JSON with the counts and rates. The caller
 * samples the relay's CPU time between "go" and "done". Every loop is bounded by the clock.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PACKET_SIZE 172
#define RTP_HEADER 12
#define RECV_BATCH 64
#define MAX_BURST 64
#define MAX_SESSIONS 100000
#define SINK_RCVBUF (4 * 1024 * 1024)

struct session {
    int tx_fd, rx_fd;
    struct sockaddr_in dst;
    uint32_t next_tx;      /* sender only */
    uint64_t received;     /* receiver only */
    uint32_t expected;     /* receiver only: next sequence number */
    uint64_t lost_by_seq;  /* receiver only */
    uint64_t reordered;    /* receiver only */
    double last_rx;        /* receiver only: monotonic time of the last packet */
};

static struct session *sessions;
static int n_sessions;
static double rate_pps, run_seconds;
static int burst = 8, drain_ms = 200;
static atomic_int sender_done;
static uint64_t sent, send_errors;
static double send_elapsed, send_end, recv_last_packet;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void sleep_s(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static int udp_socket(const char *ip, int port, int rcvbuf) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0)
        die("socket");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
        fprintf(stderr, "loadgen: bad address %s\n", ip);
        exit(2);
    }
    if (rcvbuf > 0 && setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        fprintf(stderr, "loadgen: bind %s:%d: %s\n", ip, port, strerror(errno));
        exit(2);
    }
    return fd;
}

static void *sender(void *arg) {
    (void)arg;
    static unsigned char buf[MAX_BURST][PACKET_SIZE];
    struct mmsghdr msgs[MAX_BURST];
    struct iovec iov[MAX_BURST];
    memset(buf, 0, sizeof buf);
    double cap = rate_pps * 0.010;
    if (cap < burst)
        cap = burst;
    double tokens = burst, t0 = now_s(), last = t0, end = t0 + run_seconds;
    int s = 0;
    for (;;) {
        double t = now_s();
        if (t >= end)
            break;
        tokens += (t - last) * rate_pps;
        last = t;
        if (tokens > cap)
            tokens = cap;
        if (tokens < burst) {
            /* Wait for the missing tokens; short sleeps (timer slack 1 µs) keep the pace. */
            double wait = (burst - tokens) / rate_pps;
            if (wait > end - t)
                wait = end - t;
            sleep_s(wait);
            continue;
        }
        struct session *se = &sessions[s];
        for (int k = 0; k < burst; k++) {
            unsigned char *p = buf[k];
            uint32_t seq = se->next_tx + k;
            p[0] = 0x80; /* RTP version 2 */
            p[1] = 0;    /* PT 0 (PCMU) */
            p[2] = (seq >> 8) & 0xff;
            p[3] = seq & 0xff;
            uint32_t ts = htonl(seq * 160), ssrc = htonl(0x5eed0000u + s), idx = htonl(s),
                     seq32 = htonl(seq);
            memcpy(p + 4, &ts, 4);
            memcpy(p + 8, &ssrc, 4);
            memcpy(p + RTP_HEADER, &idx, 4);
            memcpy(p + RTP_HEADER + 4, &seq32, 4);
            iov[k].iov_base = p;
            iov[k].iov_len = PACKET_SIZE;
            memset(&msgs[k].msg_hdr, 0, sizeof msgs[k].msg_hdr);
            msgs[k].msg_hdr.msg_iov = &iov[k];
            msgs[k].msg_hdr.msg_iovlen = 1;
            msgs[k].msg_hdr.msg_name = &se->dst;
            msgs[k].msg_hdr.msg_namelen = sizeof se->dst;
        }
        int n = sendmmsg(se->tx_fd, msgs, burst, 0);
        if (n < 0) {
            send_errors++;
            n = 0;
        }
        /* Packets the kernel refused are not sent: their numbers are used again. */
        se->next_tx += n;
        sent += n;
        tokens -= n > 0 ? n : 1;
        s = (s + 1) % n_sessions;
    }
    send_end = now_s();
    send_elapsed = send_end - t0;
    atomic_store(&sender_done, 1);
    return NULL;
}

static void *receiver(void *arg) {
    (void)arg;
    int ep = epoll_create1(0);
    if (ep < 0)
        die("epoll_create1");
    for (int i = 0; i < n_sessions; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, sessions[i].rx_fd, &ev) < 0)
            die("epoll_ctl");
    }
    static unsigned char buf[RECV_BATCH][2048];
    struct mmsghdr msgs[RECV_BATCH];
    struct iovec iov[RECV_BATCH];
    struct epoll_event evs[64];
    double done_at = 0, last_rx = now_s();
    for (;;) {
        int n = epoll_wait(ep, evs, 64, 10);
        double t = now_s();
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        for (int e = 0; e < n; e++) {
            struct session *se = &sessions[evs[e].data.u32];
            for (int k = 0; k < RECV_BATCH; k++) {
                iov[k].iov_base = buf[k];
                iov[k].iov_len = sizeof buf[k];
                memset(&msgs[k].msg_hdr, 0, sizeof msgs[k].msg_hdr);
                msgs[k].msg_hdr.msg_iov = &iov[k];
                msgs[k].msg_hdr.msg_iovlen = 1;
            }
            int got = recvmmsg(se->rx_fd, msgs, RECV_BATCH, MSG_DONTWAIT, NULL);
            if (got <= 0)
                continue;
            last_rx = t;
            se->last_rx = t;
            for (int k = 0; k < got; k++) {
                if (msgs[k].msg_len < RTP_HEADER + 8)
                    continue;
                uint32_t seq;
                memcpy(&seq, buf[k] + RTP_HEADER + 4, 4);
                seq = ntohl(seq);
                se->received++;
                if (seq == se->expected) {
                    se->expected = seq + 1;
                } else if (seq > se->expected) {
                    se->lost_by_seq += seq - se->expected;
                    se->expected = seq + 1;
                } else {
                    se->reordered++;
                }
            }
        }
        if (atomic_load(&sender_done)) {
            if (done_at == 0)
                done_at = t;
            if (t - last_rx > drain_ms / 1000.0 || t - done_at > 1.0)
                break;
        }
    }
    recv_last_packet = last_rx;
    close(ep);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3 || argc > 5) {
        fprintf(stderr, "usage: loadgen RATE_PPS SECONDS [BURST] [DRAIN_MS] < sessions\n");
        return 2;
    }
    rate_pps = atof(argv[1]);
    run_seconds = atof(argv[2]);
    if (argc > 3)
        burst = atoi(argv[3]);
    if (argc > 4)
        drain_ms = atoi(argv[4]);
    if (rate_pps <= 0 || run_seconds <= 0 || run_seconds > 600 || burst < 1 ||
        burst > MAX_BURST || drain_ms < 1 || drain_ms > 1000) {
        fprintf(stderr, "loadgen: bad arguments\n");
        return 2;
    }
    prctl(PR_SET_TIMERSLACK, 1UL); /* nanosleep wakes within µs, not 50 µs */
    sessions = calloc(MAX_SESSIONS, sizeof *sessions);
    if (!sessions)
        die("calloc");
    char src[64], dst[64], sink[64];
    int sp, dp, kp;
    while (n_sessions < MAX_SESSIONS &&
           scanf("%63s %d %63s %d %63s %d", src, &sp, dst, &dp, sink, &kp) == 6) {
        struct session *se = &sessions[n_sessions++];
        se->tx_fd = udp_socket(src, sp, 0);
        se->rx_fd = udp_socket(sink, kp, SINK_RCVBUF);
        se->dst.sin_family = AF_INET;
        se->dst.sin_port = htons(dp);
        if (inet_pton(AF_INET, dst, &se->dst.sin_addr) != 1) {
            fprintf(stderr, "loadgen: bad address %s\n", dst);
            return 2;
        }
    }
    if (n_sessions == 0) {
        fprintf(stderr, "loadgen: no sessions on stdin\n");
        return 2;
    }
    pthread_t rx, tx;
    if (pthread_create(&rx, NULL, receiver, NULL) != 0)
        die("pthread_create");
    printf("go\n");
    fflush(stdout);
    double t0 = now_s();
    if (pthread_create(&tx, NULL, sender, NULL) != 0)
        die("pthread_create");
    pthread_join(tx, NULL);
    pthread_join(rx, NULL);
    printf("done\n");
    uint64_t received = 0, lost = 0, reordered = 0, silent = 0, stalled = 0, min_rx = UINT64_MAX;
    for (int i = 0; i < n_sessions; i++) {
        received += sessions[i].received;
        lost += sessions[i].lost_by_seq;
        reordered += sessions[i].reordered;
        silent += sessions[i].received == 0;
        stalled += sessions[i].received > 0 && sessions[i].last_rx < send_end - 0.25;
        if (sessions[i].received < min_rx)
            min_rx = sessions[i].received;
    }
    double loss_pct = sent ? 100.0 * ((double)sent - (double)received) / (double)sent : 0.0;
    if (loss_pct < 0)
        loss_pct = 0;
    printf("{\"target_pps\": %.0f, \"seconds\": %.6f, \"sessions\": %d, \"burst\": %d, "
           "\"sent\": %llu, \"received\": %llu, \"loss_pct\": %.6f, \"send_pps\": %.1f, "
           "\"recv_pps\": %.1f, \"lost_by_seq\": %llu, \"reordered\": %llu, "
           "\"silent_sessions\": %llu, \"stalled_sessions\": %llu, \"min_session_received\": %llu, "
           "\"send_errors\": %llu, \"last_packet_after_s\": %.6f}\n",
           rate_pps, send_elapsed, n_sessions, burst, (unsigned long long)sent,
           (unsigned long long)received, loss_pct, sent / send_elapsed, received / send_elapsed,
           (unsigned long long)lost, (unsigned long long)reordered, (unsigned long long)silent,
           (unsigned long long)stalled, (unsigned long long)min_rx, (unsigned long long)send_errors, recv_last_packet - t0);
    fflush(stdout);
    return 0;
}
