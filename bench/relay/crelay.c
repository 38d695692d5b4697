/*
 * crelay: the minimal C relay of bench/relay_pps, the floor any relay's cost is judged by.
 *
 *   crelay  < "HOST N" then N lines "SINK_IP SINK_PORT"
 *
 * One thread. For each session i one UDP socket bound to HOST on a port the kernel picks;
 * every packet arriving on session i's socket is sent, unchanged, from that same socket to
 * sink i. epoll (level-triggered) over the sockets; per ready socket one recvmmsg of up to 64
 * packets and one sendmmsg of what arrived. No parsing, no latching, no counters per packet
 * beyond a total.
 *
 * stdout: "ready PORT_1 ... PORT_N" once every socket is bound. It exits when stdin reaches
 * EOF (the bench closes it to stop the relay) or on SIGTERM, and then prints the number of
 * packets received and sent on stderr.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 64
#define MAX_SESSIONS 100000

static void die(const char *what) {
    perror(what);
    exit(2);
}

int main(void) {
    char host[64];
    int n;
    if (scanf("%63s %d", host, &n) != 2 || n < 0 || n > MAX_SESSIONS) {
        fprintf(stderr, "crelay: expected \"HOST N\" on stdin\n");
        return 2;
    }
    int *fds = calloc(n + 1, sizeof *fds);
    struct sockaddr_in *sinks = calloc(n + 1, sizeof *sinks);
    if (!fds || !sinks)
        die("calloc");
    int ep = epoll_create1(0);
    if (ep < 0)
        die("epoll_create1");
    printf("ready");
    for (int i = 0; i < n; i++) {
        char ip[64];
        int port;
        if (scanf("%63s %d", ip, &port) != 2) {
            fprintf(stderr, "crelay: expected %d sink lines\n", n);
            return 2;
        }
        sinks[i].sin_family = AF_INET;
        sinks[i].sin_port = htons(port);
        if (inet_pton(AF_INET, ip, &sinks[i].sin_addr) != 1) {
            fprintf(stderr, "crelay: bad address %s\n", ip);
            return 2;
        }
        int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        if (fd < 0)
            die("socket");
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
        if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
            fprintf(stderr, "crelay: bad address %s\n", host);
            return 2;
        }
        socklen_t len = sizeof a;
        if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 ||
            getsockname(fd, (struct sockaddr *)&a, &len) < 0)
            die("bind");
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
            die("epoll_ctl");
        fds[i] = fd;
        printf(" %d", ntohs(a.sin_port));
    }
    printf("\n");
    fflush(stdout);
    /* stdin's EOF is the stop signal. */
    struct epoll_event stop_ev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, STDIN_FILENO, &stop_ev) < 0)
        die("epoll_ctl stdin");

    static unsigned char buf[BATCH][2048];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    struct epoll_event evs[64];
    uint64_t received = 0, sent = 0;
    for (int k = 0; k < BATCH; k++) {
        iov[k].iov_base = buf[k];
        msgs[k].msg_hdr.msg_iov = &iov[k];
        msgs[k].msg_hdr.msg_iovlen = 1;
        msgs[k].msg_hdr.msg_control = NULL;
        msgs[k].msg_hdr.msg_controllen = 0;
        msgs[k].msg_hdr.msg_flags = 0;
    }
    for (;;) {
        int ne = epoll_wait(ep, evs, 64, -1);
        if (ne < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int e = 0; e < ne; e++) {
            uint32_t i = evs[e].data.u32;
            if (i == UINT32_MAX) {
                char c[256];
                if (read(STDIN_FILENO, c, sizeof c) <= 0)
                    goto out;
                continue;
            }
            for (int k = 0; k < BATCH; k++) {
                iov[k].iov_len = sizeof buf[k];
                msgs[k].msg_hdr.msg_name = NULL;
                msgs[k].msg_hdr.msg_namelen = 0;
            }
            int got = recvmmsg(fds[i], msgs, BATCH, MSG_DONTWAIT, NULL);
            if (got <= 0)
                continue;
            received += got;
            for (int k = 0; k < got; k++) {
                iov[k].iov_len = msgs[k].msg_len;
                msgs[k].msg_hdr.msg_name = &sinks[i];
                msgs[k].msg_hdr.msg_namelen = sizeof sinks[i];
            }
            int off = 0;
            while (off < got) {
                int s = sendmmsg(fds[i], msgs + off, got - off, 0);
                if (s <= 0)
                    break; /* a full send buffer drops the rest, like any relay */
                off += s;
            }
            sent += off;
        }
    }
out:
    fprintf(stderr, "crelay: received %llu sent %llu\n", (unsigned long long)received,
            (unsigned long long)sent);
    return 0;
}
