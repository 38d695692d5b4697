/*
 * Small inline helpers for fastpath/_relay.pyx: atomics, big-endian field access, socket
 * address comparison, the monotonic clock and integer hashing. Everything here is called from
 * the forwarding loop with the GIL released, so nothing here touches Python.
 */
#ifndef FASTPATH_RELAY_HELPERS_H
#define FASTPATH_RELAY_HELPERS_H

#include <endian.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

/* Flags shared by the loop thread and the Python side (stop request, waiting callers). */
static inline int fp_load(int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void fp_store(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void fp_add(int *p, int v) { __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL); }

/* Counters have one writer (the loop) and readers in other threads: relaxed atomic loads and
 * stores (plain moves on x86-64), so a reader never sees a torn value. */
static inline uint64_t fp_load_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void fp_store_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline void fp_add_u64(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + v, __ATOMIC_RELAXED);
}

/* A sequence lock around the endpoint addresses: the loop (the only writer) makes the count odd
 * while it writes; a reader retries when the count was odd or changed under it. */
static inline void fp_seq_write_begin(uint32_t *seq) {
    __atomic_store_n(seq, __atomic_load_n(seq, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
}
static inline void fp_seq_write_end(uint32_t *seq) {
    __atomic_store_n(seq, __atomic_load_n(seq, __ATOMIC_RELAXED) + 1, __ATOMIC_RELEASE);
}
static inline uint32_t fp_seq_read_begin(const uint32_t *seq) {
    return __atomic_load_n(seq, __ATOMIC_ACQUIRE);
}
static inline int fp_seq_read_retry(const uint32_t *seq, uint32_t start) {
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return (start & 1) || __atomic_load_n(seq, __ATOMIC_RELAXED) != start;
}

/* Header fields are big endian and may sit at any alignment in a receive buffer. */
static inline uint32_t fp_get_be32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return be32toh(v);
}
static inline uint64_t fp_get_be64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return be64toh(v);
}
static inline void fp_put_be32(uint8_t *p, uint32_t v) {
    v = htobe32(v);
    memcpy(p, &v, 4);
}
static inline void fp_put_be64(uint8_t *p, uint64_t v) {
    v = htobe64(v);
    memcpy(p, &v, 8);
}

/* Same family, address and port (and scope for IPv6): the latching test. */
static inline int fp_addr_equal(const struct sockaddr_storage *a,
                                const struct sockaddr_storage *b) {
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)a;
        const struct sockaddr_in *y = (const struct sockaddr_in *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a;
        const struct sockaddr_in6 *y = (const struct sockaddr_in6 *)b;
        return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
    }
    return 0;
}

static inline int fp_addr_port(const struct sockaddr_storage *a) {
    if (a->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)a)->sin_port);
    if (a->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)a)->sin6_port);
    return 0;
}

static inline void fp_addr_set_port(struct sockaddr_storage *a, int port) {
    if (a->ss_family == AF_INET)
        ((struct sockaddr_in *)a)->sin_port = htons((uint16_t)port);
    else if (a->ss_family == AF_INET6)
        ((struct sockaddr_in6 *)a)->sin6_port = htons((uint16_t)port);
}

static inline socklen_t fp_addr_len(const struct sockaddr_storage *a) {
    return a->ss_family == AF_INET6 ? (socklen_t)sizeof(struct sockaddr_in6)
                                    : (socklen_t)sizeof(struct sockaddr_in);
}

/* CLOCK_MONOTONIC in nanoseconds: the clock Python's time.monotonic() reads on Linux. */
static inline uint64_t fp_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* Finalisers of splitmix64 / murmur3: ids that differ in a few bits land far apart. */
static inline uint64_t fp_mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}
static inline uint32_t fp_mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x85ebca6bU;
    x ^= x >> 13;
    x *= 0xc2b2ae35U;
    x ^= x >> 16;
    return x;
}

/* The hash of an address (family, address, port, IPv6 scope) for the address-keyed tables. */
static inline uint32_t fp_addr_hash(const struct sockaddr_storage *a) {
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)a;
        return (uint32_t)fp_mix64(((uint64_t)x->sin_addr.s_addr << 16) | x->sin_port);
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a;
        uint64_t hi, lo;
        memcpy(&hi, &x->sin6_addr, 8);
        memcpy(&lo, (const uint8_t *)&x->sin6_addr + 8, 8);
        return (uint32_t)fp_mix64(hi ^ fp_mix64(lo ^ ((uint64_t)x->sin6_port << 32) ^
                                                x->sin6_scope_id));
    }
    return 0;
}

/* xorshift64* (Vigna, 2016): the loss decisions of fault injection. Not for secrets; the state
 * is never 0. */
static inline uint64_t fp_random64(uint64_t *state) {
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545f4914f6cdd1dULL;
}

/* Set the calling thread's nice value (on Linux a per-thread attribute, which a thread it creates
 * inherits); the previous one goes to *previous. 0, or the errno (EACCES/EPERM: lowering it
 * needs CAP_SYS_NICE). */
static inline int fp_thread_nice(int value, int *previous) {
    errno = 0;
    int old = getpriority(PRIO_PROCESS, 0);
    if (old == -1 && errno != 0)
        return errno;
    *previous = old;
    if (setpriority(PRIO_PROCESS, 0, value) < 0)
        return errno;
    return 0;
}

/* Run ``thread`` under SCHED_FIFO at ``priority`` (1-99): ahead of every ordinary thread of the
 * machine. 0, or the error (EPERM: it needs CAP_SYS_NICE). */
static inline int fp_thread_realtime(pthread_t thread, int priority) {
    struct sched_param param;
    memset(&param, 0, sizeof param);
    param.sched_priority = priority;
    return pthread_setschedparam(thread, SCHED_FIFO, &param);
}

/* A non-blocking, close-on-exec timer on the monotonic clock; -1 and errno on failure. */
static inline int fp_timer_new(void) {
    return timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
}

/* Fire every interval_ns from now on; 0 stops the timer. */
static inline int fp_timer_every(int fd, uint64_t interval_ns) {
    struct itimerspec spec;
    spec.it_interval.tv_sec = (time_t)(interval_ns / 1000000000ULL);
    spec.it_interval.tv_nsec = (long)(interval_ns % 1000000000ULL);
    spec.it_value = spec.it_interval;
    return timerfd_settime(fd, 0, &spec, NULL);
}

/* Join the loop thread, writing the wakeup eventfd again every 100 ms while it runs: stop()
 * returns even if a wakeup were ever lost. */
static inline int fp_join_waking(pthread_t thread, int wakefd) {
    const uint64_t one = 1;
    for (;;) {
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_nsec += 100000000L;
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec += 1;
            deadline.tv_nsec -= 1000000000L;
        }
        int rc = pthread_timedjoin_np(thread, NULL, &deadline);
        if (rc != ETIMEDOUT)
            return rc;
        if (write(wakefd, &one, sizeof one) < 0) {
            /* the counter is full: the loop has a wakeup pending anyway */
        }
    }
}

#endif
