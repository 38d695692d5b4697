# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=False
"""The media relay: RTP/RTCP forwarding between endpoints and relays, in C, GIL released.

Theory of operation
-------------------
A ``Relay`` owns one C struct (``relay_t``) that holds every socket, table and counter. The
forwarding loop runs in a pthread that ``start()`` creates (named "fastpath", every signal
blocked, so signals keep going to Python's main thread); the thread function is ``noexcept
nogil`` and never touches a Python object or the GIL, so Python threads (the trio node) run
alongside it at full speed. ``stop()`` sets a flag, writes the eventfd and joins the thread.

Sockets and epoll. One overlay socket (the relay's address for other relays), per session one
RTP socket and, unless rtcp-mux, one RTCP socket, all non-blocking and close-on-exec, all in
one epoll set (level-triggered), plus an eventfd that wakes the loop (stop, commands). Each
registration carries a 64-bit tag instead of a file descriptor: bits 0-1 the kind (RTP, RTCP,
overlay, wakeup), bits 2-31 the session slot, bits 32-63 the slot's generation. The tag is the
fd -> session table; the generation makes an event that was returned by ``epoll_wait`` just
before its session was removed (and its fd number perhaps reused by a new session) harmless:
it no longer matches the slot and is skipped.

Tables, all plain C; the packet path allocates nothing (only commands grow tables):

- sessions: an array of ``session_t`` slots with a free list, plus an open-addressing hash
  (linear probing, backward-shift deletion, load <= 1/2) from the 64-bit session id to the
  slot.
- next hops: an open-addressing hash from destination media id to (address, link index), built
  by ``set_next_hops`` in the calling thread and swapped in as a whole; the caller frees the old
  one. Lookups happen per packet, so live sessions follow a route change with the next packet.
- links: per destination media id, packets and bytes sent to its next hop (cumulative, kept
  across ``set_next_hops``); next-hop entries point at their link by index.
- echo replies: a bounded ring (oldest dropped, counted), each with its CLOCK_MONOTONIC time
  of reception, read once per receive batch and only when the batch holds an echo reply.
- peers: the overlay socket's source allowlist, an open-addressing hash of socket addresses
  (the overlay addresses of the configured peer nodes). NULL (never set, or set to None)
  accepts every source; otherwise a datagram from any other source is dropped before its
  header is read, so nobody else can inject media into a live session or use the relay as a
  reflector for echo requests.
- faults: the same kind of hash, address -> (loss threshold, blackhole): what the relay sends
  on its overlay socket to that address (forwarded packets, echo requests and replies) is
  dropped with that probability or always (fault injection for the lab). NULL when no fault is
  set, so that the packet path pays one pointer test. Loss is drawn from xorshift64*, seeded
  from the node's media id, so a lab run is reproducible.
  Peers and faults are built by ``set_peers`` / ``set_faults`` in the calling thread and
  swapped in as a whole, like the next hops.

Ownership and locking. While it runs, the loop thread owns the tables: nothing else writes
them, and the packet path takes no lock at all. Python calls that change them (``add_session``,
``remove_session``, ``set_next_hops``, ``set_peers``, ``set_faults``) or consume the echo ring
are *commands*: the caller binds sockets and builds tables first, then links a command record
(on its own C stack) into a queue under ``qlock``, writes the eventfd and waits on ``qcond``
with the GIL released. The loop runs pending commands between two descriptors' batches (or as
soon as ``epoll_wait`` returns), then marks them done and broadcasts ``qcond``; a call
therefore waits at most one batch, and the loop never waits for Python. Reading calls
(``session_counters``, ``counters``) and ``send_echo`` do not go through the queue: they take
``table_lock``, which the loop holds only while it runs commands, and it takes it with
``trylock``: if a reader holds it, the commands wait for the next batch, the packets do not.
(``send_echo`` draws its loss decisions from a random state of its own, also under
``table_lock``; the loop's is the loop's.) Counters have a single writer (the loop) and are
read with relaxed atomic loads; the latched endpoint addresses are read under a per-session
sequence lock. Before ``start()`` and after the loop has ended, commands run directly in the
calling thread, under ``table_lock`` and the GIL. File descriptors of a removed session are
closed by the caller only after the loop has taken them out of epoll and the tables, so the
loop never reads or writes a closed or reused descriptor.

Packets. Datagrams from an endpoint are received 20 bytes into a buffer so that the overlay
header is written in front of them in place; datagrams from the overlay are forwarded (ttl - 1)
or delivered (payload sent from the session's socket) from the same buffer. No datagram is
copied except an echo reply into the ring. Every packet that cannot be forwarded is counted by
reason (``DROP_REASONS``) and, when it belongs to a session, in that session's ``drops``.
"""

from libc.errno cimport EINTR, ENOMEM, errno
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset

from fastpath._sys cimport *

import operator
import os

cdef enum:
    BATCH = 64
    MAX_EVENTS = 64
    MAX_DGRAM = 4096
    HDR = 20
    ECHO_RING = 1024
    ECHO_MAX = 512
    INITIAL_TTL = 8
    VERSION = 1
    F_RTCP = 1
    F_ECHO_REQUEST = 2
    F_ECHO_REPLY = 4
    K_RTP = 0
    K_RTCP = 1
    K_OVERLAY = 2
    K_WAKE = 3
    TAG_TIMER = K_WAKE | 4  # the liveness timer: a K_WAKE kind with a tag of its own
    A_NONE = 0
    A_INITIAL = 1
    A_LATCHED = 2
    OVERLAY_SOCKBUF = 4 * 1024 * 1024

cdef enum:
    C_ADD
    C_REMOVE
    C_NEXT_HOPS
    C_TAKE_ECHO
    C_PEERS
    C_FAULTS
    C_LIVENESS

cdef enum:
    E_STOPPED = -1001
    E_EXISTS = -1002
    E_UNKNOWN = -1003

cdef enum:
    D_SHORT
    D_BAD_VERSION
    D_BAD_FLAGS
    D_RESERVED
    D_TTL_EXPIRED
    D_UNKNOWN_SESSION
    D_NO_NEXT_HOP
    D_NO_ENDPOINT
    D_UNKNOWN_SOURCE
    D_OVERSIZED
    D_SEND_ERROR
    D_ECHO_OVERFLOW
    D_UNKNOWN_PEER
    D_FAULT
    N_DROPS

DROP_REASONS = (
    "short",
    "bad_version",
    "bad_flags",
    "reserved",
    "ttl_expired",
    "unknown_session",
    "no_next_hop",
    "no_endpoint",
    "unknown_source",
    "oversized",
    "send_error",
    "echo_overflow",
    "unknown_peer",
    "fault",
)
BATCH_SIZE = BATCH
MAX_DATAGRAM = MAX_DGRAM
MAX_PAYLOAD = MAX_DGRAM - HDR
ECHO_QUEUE_LEN = ECHO_RING
ECHO_MAX_PAYLOAD = ECHO_MAX

cdef uint64_t U64_MAX = 0xFFFFFFFFFFFFFFFF
# The session field of a liveness echo ("ovllive!"); measurement echoes carry 0 there. A relay
# reflects an echo request whatever that field holds, so every relay version answers both.
cdef uint64_t LIVE_MARK = 0x6F766C6C69766521
cdef uint32_t U32_MAX = 0xFFFFFFFF
# A loss ratio is compared with the top 53 bits of a random number: 1.0 is 2**53, every one.
_LOSS_ONE = 1 << 53


cdef struct session_t:
    uint64_t id  # 0: free slot
    uint32_t gen
    int32_t next_free
    int rtp_fd
    int rtcp_fd  # -1: rtcp-mux
    int rtp_port
    int rtcp_port
    uint32_t remote_node
    uint64_t remote_session
    uint32_t addr_seq  # sequence lock around the four fields below
    int rtp_state
    int rtcp_state
    sockaddr_storage rtp_addr
    sockaddr_storage rtcp_addr
    uint64_t packets_in
    uint64_t bytes_in
    uint64_t packets_out
    uint64_t bytes_out
    uint64_t drops
    uint64_t last_seen_ns  # CLOCK_MONOTONIC; 0: never


cdef struct nexthop_t:
    uint32_t media_id
    int used
    int32_t link
    sockaddr_storage addr
    socklen_t addr_len


cdef struct nhtable_t:
    uint32_t mask
    nexthop_t* entries


cdef struct addrent_t:
    int used
    int blackhole  # faults: drop everything
    uint64_t loss  # faults: drop when the top 53 bits of a random number are below it
    sockaddr_storage addr


cdef struct addrtable_t:
    uint32_t mask
    addrent_t* entries


cdef struct link_t:
    uint32_t media_id
    uint64_t packets  # written by the loop
    uint64_t bytes
    uint64_t echo_packets  # written by send_echo, under table_lock
    uint64_t echo_bytes


cdef struct echo_ring_t:
    uint32_t head
    uint32_t count
    uint32_t source[ECHO_RING]
    uint16_t length[ECHO_RING]
    uint64_t received_ns[ECHO_RING]  # CLOCK_MONOTONIC, per receive batch
    uint8_t data[ECHO_RING][ECHO_MAX]


cdef struct live_t:
    uint32_t media_id
    int silent  # as of the last tick (or the reply that ended the silence)
    uint64_t heard_ns  # CLOCK_MONOTONIC of the last reply; 0: none yet
    uint64_t since_ns  # when the peer was set: a peer never heard is silent from here
    uint64_t sent
    uint64_t answered
    uint64_t gap_ns  # smoothed time between two replies (0: not measured yet)
    uint64_t gap_dev_ns  # its smoothed deviation
    uint64_t detect_ns  # the detection time in force for this peer (see live_detection)
    sockaddr_storage addr
    uint8_t packet[HDR]


cdef struct livetable_t:
    uint32_t count
    uint64_t interval_ns
    uint64_t detect_ns
    live_t* entries


cdef struct tx_t:
    int fd
    uint8_t* base
    size_t length
    sockaddr_storage* dst
    int32_t link  # -1: not an overlay send
    int32_t out_slot  # -1: not a delivery to an endpoint
    int32_t drop_slot  # session charged with a failed send, -1: none


cdef struct cmd_t:
    int op
    int done
    int result
    cmd_t* next
    uint64_t sid
    int rtp_fd
    int rtcp_fd
    int rtp_port
    int rtcp_port
    uint32_t remote_node
    uint64_t remote_session
    int has_endpoint
    int latched  # C_ADD: the endpoint starts latched (a session restored from a replica)
    int has_rtcp_latched
    sockaddr_storage endpoint
    sockaddr_storage rtcp_latched
    nhtable_t* table  # C_NEXT_HOPS: the new table in, the old one out
    addrtable_t* addrs  # C_PEERS, C_FAULTS: the new table in, the old one out (NULL: none)
    livetable_t* live  # C_LIVENESS: the new table in, the old one out (NULL: none)
    uint32_t n_echo  # C_TAKE_ECHO out: malloc'ed arrays the caller frees
    uint32_t* echo_source
    uint16_t* echo_length
    uint64_t* echo_received_ns
    uint8_t* echo_data


cdef struct relay_t:
    uint32_t self_id
    int family
    int epfd
    int wakefd
    int ovl_fd
    int closed
    pthread_t thread
    int stopping
    int loop_errno
    # commands
    pthread_mutex_t qlock
    pthread_cond_t qcond
    cmd_t* qhead
    cmd_t* qtail
    int pending
    int loop_running
    pthread_mutex_t table_lock
    # sessions
    session_t* sessions
    int32_t sess_cap
    int32_t sess_count
    int32_t free_head
    int32_t* sess_index  # slot + 1, 0: empty
    uint32_t sess_index_mask
    # next hops and links
    nhtable_t* nh
    link_t* links
    int32_t links_len
    int32_t links_cap
    # overlay source allowlist and fault injection (NULL: accept any, no fault)
    addrtable_t* peers
    addrtable_t* faults
    uint64_t rng  # the loop's random state
    uint64_t caller_rng  # send_echo's, under table_lock
    # counters
    uint64_t drops[N_DROPS]  # written by the loop
    uint64_t caller_drops[N_DROPS]  # written by send_echo, under table_lock
    uint64_t ovl_packets
    uint64_t ovl_bytes
    echo_ring_t echo
    # liveness echoes (NULL: none): sent by the loop every interval, answers stamped here
    livetable_t* live
    int timerfd
    int notifyfd  # written when a peer's silence starts or ends
    uint64_t last_tick_ns
    uint64_t live_stalls  # ticks that came late: the loop could not run (excused)
    # loop-private buffers
    epoll_event events[MAX_EVENTS]
    mmsghdr rxmsg[BATCH]
    iovec rxiov[BATCH]
    sockaddr_storage rxaddr[BATCH]
    uint8_t rxbuf[BATCH][MAX_DGRAM]
    int ntx
    tx_t tx[BATCH]
    uint8_t txdone[BATCH]
    int32_t txorder[BATCH]
    mmsghdr txmsg[BATCH]
    iovec txiov[BATCH]


# ---------------------------------------------------------------------------------------------
# Tables (structure changed only by commands: in the loop thread, or when none runs)
# ---------------------------------------------------------------------------------------------

cdef inline int32_t sess_find(relay_t* r, uint64_t sid) noexcept nogil:
    cdef uint32_t mask = r.sess_index_mask
    cdef uint32_t h = <uint32_t>fp_mix64(sid) & mask
    cdef int32_t v
    while True:
        v = r.sess_index[h]
        if v == 0:
            return -1
        if r.sessions[v - 1].id == sid:
            return v - 1
        h = (h + 1) & mask


cdef inline void sess_index_put(int32_t* table, uint32_t mask, uint64_t sid,
                                int32_t slot) noexcept nogil:
    cdef uint32_t h = <uint32_t>fp_mix64(sid) & mask
    while table[h] != 0:
        h = (h + 1) & mask
    table[h] = slot + 1


cdef void sess_index_delete(relay_t* r, uint64_t sid) noexcept nogil:
    cdef uint32_t mask = r.sess_index_mask
    cdef uint32_t i = <uint32_t>fp_mix64(sid) & mask
    cdef uint32_t j, home
    cdef int32_t v
    while True:
        v = r.sess_index[i]
        if v == 0:
            return
        if r.sessions[v - 1].id == sid:
            break
        i = (i + 1) & mask
    # Backward-shift deletion: pull later members of the probe run into the hole so that
    # lookups can stop at the first empty bucket (no tombstones).
    j = i
    while True:
        j = (j + 1) & mask
        v = r.sess_index[j]
        if v == 0:
            break
        home = <uint32_t>fp_mix64(r.sessions[v - 1].id) & mask
        if i <= j:
            if i < home <= j:
                continue
        elif i < home or home <= j:
            continue
        r.sess_index[i] = v
        i = j
    r.sess_index[i] = 0


cdef int sess_reserve(relay_t* r) noexcept nogil:
    """Room for one more session: grow the slot array and the index. 0, or -ENOMEM."""
    cdef int32_t new_cap, k
    cdef session_t* grown
    cdef uint32_t size, new_mask
    cdef int32_t* table
    if r.free_head < 0:
        new_cap = r.sess_cap * 2 if r.sess_cap else 16
        grown = <session_t*>realloc(r.sessions, <size_t>new_cap * sizeof(session_t))
        if grown == NULL:
            return -ENOMEM
        memset(&grown[r.sess_cap], 0, <size_t>(new_cap - r.sess_cap) * sizeof(session_t))
        for k in range(r.sess_cap, new_cap):
            grown[k].next_free = k + 1 if k + 1 < new_cap else -1
            grown[k].rtp_fd = -1
            grown[k].rtcp_fd = -1
        r.free_head = r.sess_cap
        r.sessions = grown
        r.sess_cap = new_cap
    if <uint32_t>(r.sess_count + 1) * 2 > r.sess_index_mask + 1:
        size = (r.sess_index_mask + 1) * 2
        new_mask = size - 1
        table = <int32_t*>calloc(size, sizeof(int32_t))
        if table == NULL:
            return -ENOMEM
        for k in range(r.sess_cap):
            if r.sessions[k].id != 0:
                sess_index_put(table, new_mask, r.sessions[k].id, k)
        free(r.sess_index)
        r.sess_index = table
        r.sess_index_mask = new_mask
    return 0


cdef inline nexthop_t* nh_find(nhtable_t* t, uint32_t media_id) noexcept nogil:
    cdef uint32_t h = fp_mix32(media_id) & t.mask
    cdef nexthop_t* e
    while True:
        e = &t.entries[h]
        if not e.used:
            return NULL
        if e.media_id == media_id:
            return e
        h = (h + 1) & t.mask


cdef void nh_free(nhtable_t* t) noexcept nogil:
    if t != NULL:
        free(t.entries)
        free(t)


cdef inline addrent_t* addr_find(addrtable_t* t, sockaddr_storage* addr) noexcept nogil:
    cdef uint32_t h = fp_addr_hash(addr) & t.mask
    cdef addrent_t* e
    while True:
        e = &t.entries[h]
        if not e.used:
            return NULL
        if fp_addr_equal(&e.addr, addr):
            return e
        h = (h + 1) & t.mask


cdef void addr_table_free(addrtable_t* t) noexcept nogil:
    if t != NULL:
        free(t.entries)
        free(t)


cdef inline bint faulted(addrtable_t* faults, uint64_t* rng, sockaddr_storage* dst) noexcept nogil:
    """Whether fault injection drops this datagram to ``dst`` (``faults`` not NULL)."""
    cdef addrent_t* e = addr_find(faults, dst)
    if e == NULL:
        return False
    return e.blackhole or (fp_random64(rng) >> 11) < e.loss


cdef inline uint64_t tag_of(int32_t slot, uint32_t gen, int kind) noexcept nogil:
    return (<uint64_t>gen << 32) | (<uint64_t>slot << 2) | <uint64_t>kind


# ---------------------------------------------------------------------------------------------
# The forwarding loop (its own pthread, no GIL, no Python objects)
# ---------------------------------------------------------------------------------------------

cdef inline void drop(relay_t* r, int reason, int32_t slot) noexcept nogil:
    fp_add_u64(&r.drops[reason], 1)
    if slot >= 0:
        fp_add_u64(&r.sessions[slot].drops, 1)


cdef inline void tx_add(relay_t* r, int fd, uint8_t* base, size_t length, sockaddr_storage* dst,
                        int32_t link, int32_t out_slot, int32_t drop_slot) noexcept nogil:
    cdef tx_t* t = &r.tx[r.ntx]
    r.ntx += 1
    t.fd = fd
    t.base = base
    t.length = length
    t.dst = dst
    t.link = link
    t.out_slot = out_slot
    t.drop_slot = drop_slot


cdef inline void tx_sent(relay_t* r, int32_t k) noexcept nogil:
    cdef tx_t* t = &r.tx[k]
    cdef session_t* s
    if t.link >= 0:
        fp_add_u64(&r.links[t.link].packets, 1)
        fp_add_u64(&r.links[t.link].bytes, t.length)
    if t.out_slot >= 0:
        s = &r.sessions[t.out_slot]
        fp_add_u64(&s.packets_out, 1)
        fp_add_u64(&s.bytes_out, t.length)


cdef void flush(relay_t* r) noexcept nogil:
    """Send what the batch produced: one sendmmsg per distinct socket, order kept per socket."""
    cdef int n = r.ntx
    cdef int i, j, m, k, rc, fd
    cdef msghdr* h
    if n == 0:
        return
    memset(r.txdone, 0, <size_t>n)
    for i in range(n):
        if r.txdone[i]:
            continue
        fd = r.tx[i].fd
        m = 0
        for j in range(i, n):
            if r.txdone[j] == 0 and r.tx[j].fd == fd:
                r.txdone[j] = 1
                r.txorder[m] = j
                r.txiov[m].iov_base = r.tx[j].base
                r.txiov[m].iov_len = r.tx[j].length
                h = &r.txmsg[m].msg_hdr
                h.msg_name = r.tx[j].dst
                h.msg_namelen = fp_addr_len(r.tx[j].dst)
                h.msg_iov = &r.txiov[m]
                h.msg_iovlen = 1
                h.msg_control = NULL
                h.msg_controllen = 0
                h.msg_flags = 0
                m += 1
        k = 0
        while k < m:
            rc = sendmmsg(fd, &r.txmsg[k], <unsigned int>(m - k), MSG_DONTWAIT)
            if rc < 0 and errno == EINTR:
                continue
            if rc <= 0:
                # The first datagram of the rest was refused (full buffer, no route...):
                # count it and go on with the others.
                drop(r, D_SEND_ERROR, r.tx[r.txorder[k]].drop_slot)
                k += 1
                continue
            for j in range(k, k + rc):
                tx_sent(r, r.txorder[j])
            k += rc
    r.ntx = 0


cdef int rx(relay_t* r, int fd, int offset) noexcept nogil:
    cdef int i, n
    for i in range(BATCH):
        r.rxiov[i].iov_base = &r.rxbuf[i][offset]
        r.rxiov[i].iov_len = MAX_DGRAM - offset
        r.rxmsg[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
        r.rxmsg[i].msg_hdr.msg_flags = 0
    while True:
        n = recvmmsg(fd, r.rxmsg, BATCH, MSG_DONTWAIT, NULL)
        if n < 0 and errno == EINTR:
            continue
        return n


cdef inline void forward(relay_t* r, uint8_t* p, size_t length, uint32_t dst,
                         int32_t origin) noexcept nogil:
    cdef nexthop_t* e = nh_find(r.nh, dst)
    if e == NULL:
        drop(r, D_NO_NEXT_HOP, origin)
        return
    if r.faults != NULL and faulted(r.faults, &r.rng, &e.addr):
        drop(r, D_FAULT, origin)
        return
    tx_add(r, r.ovl_fd, p, length, &e.addr, e.link, -1, origin)


cdef void deliver(relay_t* r, uint8_t* p, size_t length, int flags, int32_t origin) noexcept nogil:
    """Send the payload of an overlay packet addressed to this node to the session's endpoint."""
    cdef int32_t slot = sess_find(r, fp_get_be64(p + 12))
    cdef session_t* s
    if slot < 0:
        drop(r, D_UNKNOWN_SESSION, origin)
        return
    s = &r.sessions[slot]
    if (flags & F_RTCP) and s.rtcp_fd >= 0:
        if s.rtcp_state == A_NONE:
            drop(r, D_NO_ENDPOINT, slot)
            return
        tx_add(r, s.rtcp_fd, p + HDR, length - HDR, &s.rtcp_addr, -1, slot, slot)
    else:
        if s.rtp_state == A_NONE:
            drop(r, D_NO_ENDPOINT, slot)
            return
        tx_add(r, s.rtp_fd, p + HDR, length - HDR, &s.rtp_addr, -1, slot, slot)


cdef void echo_push(relay_t* r, uint32_t source, uint8_t* payload, size_t length,
                    uint64_t received_ns) noexcept nogil:
    cdef echo_ring_t* ring = &r.echo
    cdef uint32_t pos
    if length > ECHO_MAX:
        drop(r, D_OVERSIZED, -1)
        return
    if ring.count == ECHO_RING:
        ring.head = (ring.head + 1) % ECHO_RING
        ring.count -= 1
        fp_add_u64(&r.drops[D_ECHO_OVERFLOW], 1)
    pos = (ring.head + ring.count) % ECHO_RING
    ring.source[pos] = source
    ring.length[pos] = <uint16_t>length
    ring.received_ns[pos] = received_ns
    memcpy(ring.data[pos], payload, length)
    ring.count += 1


cdef inline void live_notify(relay_t* r) noexcept nogil:
    cdef uint64_t one = 1
    write(r.notifyfd, &one, sizeof(one))


cdef inline uint64_t live_detection(livetable_t* t, live_t* e) noexcept nogil:
    """The detection time for ``e``: the configured one, stretched where the replies' spacing
    varies (as a retransmission timeout follows its RTT's variance, RFC 6298: the smoothed gap
    plus four deviations), up to four times the configured one. On a path that answers on time
    it is the configured one; a peer whose answers come late and unevenly (its machine busy,
    a path with jitter) is given the time its own spacing says it needs."""
    cdef uint64_t stretched = e.gap_ns + 4 * e.gap_dev_ns
    if stretched <= t.detect_ns:
        return t.detect_ns
    if stretched >= 4 * t.detect_ns:
        return 4 * t.detect_ns
    return stretched


cdef void live_heard(relay_t* r, uint32_t source, uint64_t now_ns) noexcept nogil:
    """A liveness echo came back from ``source``: the peer's relay is alive."""
    cdef livetable_t* t = r.live
    cdef live_t* e
    cdef uint32_t k
    cdef uint64_t gap, error
    if t == NULL:
        return  # a reply to a peer no longer probed
    for k in range(t.count):  # a few dozen peers: a scan costs less than a hash here
        e = &t.entries[k]
        if e.media_id != source:
            continue
        fp_add_u64(&e.answered, 1)
        if e.heard_ns != 0 and now_ns > e.heard_ns and not e.silent:
            gap = now_ns - e.heard_ns
            if e.gap_ns == 0:
                e.gap_ns = gap
                e.gap_dev_ns = gap // 2
            else:
                error = gap - e.gap_ns if gap > e.gap_ns else e.gap_ns - gap
                e.gap_dev_ns = e.gap_dev_ns - e.gap_dev_ns // 4 + error // 4
                e.gap_ns = e.gap_ns - e.gap_ns // 8 + gap // 8
            fp_store_u64(&e.detect_ns, live_detection(t, e))
        fp_store_u64(&e.heard_ns, now_ns)
        if e.silent:
            fp_store(&e.silent, 0)
            live_notify(r)
        return


cdef void live_tick(relay_t* r) noexcept nogil:
    """The liveness timer fired: mark the peers silent for longer than the detection time,
    then send every peer its next echo.

    A tick that comes more than two intervals after the last one means this thread could not
    run meanwhile (the machine was busy): answers may wait unread in the socket, so that time
    does not count toward anyone's silence (the Python side excuses its own stalls the same
    way)."""
    cdef livetable_t* t = r.live
    cdef uint64_t now_ns = fp_monotonic_ns()
    cdef uint64_t expirations, stalled = 0, reference
    cdef live_t* e
    cdef uint32_t k
    cdef int silent, changed = 0
    read(r.timerfd, &expirations, sizeof(expirations))
    if t == NULL:
        return
    if r.last_tick_ns != 0 and now_ns - r.last_tick_ns > 2 * t.interval_ns:
        stalled = now_ns - r.last_tick_ns - t.interval_ns
        fp_add_u64(&r.live_stalls, 1)
    r.last_tick_ns = now_ns
    for k in range(t.count):
        e = &t.entries[k]
        if stalled:
            e.since_ns += stalled
            if e.heard_ns != 0:
                fp_store_u64(&e.heard_ns, e.heard_ns + stalled)
        reference = e.heard_ns if e.heard_ns != 0 else e.since_ns
        silent = now_ns > reference and now_ns - reference > live_detection(t, e)
        if silent != e.silent:
            fp_store(&e.silent, silent)
            changed = 1
        fp_add_u64(&e.sent, 1)
        if r.faults != NULL and faulted(r.faults, &r.rng, &e.addr):
            drop(r, D_FAULT, -1)
            continue
        tx_add(r, r.ovl_fd, e.packet, HDR, &e.addr, -1, -1, -1)
        if r.ntx == BATCH:
            flush(r)
    flush(r)
    if changed:
        live_notify(r)


cdef void live_table_free(livetable_t* t) noexcept nogil:
    if t != NULL:
        free(t.entries)
        free(t)


cdef inline void latch(session_t* s, int kind, sockaddr_storage* src) noexcept nogil:
    fp_seq_write_begin(&s.addr_seq)
    if kind == K_RTP:
        memcpy(&s.rtp_addr, src, sizeof(sockaddr_storage))
        s.rtp_state = A_LATCHED
        if s.rtcp_fd >= 0 and s.rtcp_state != A_LATCHED:
            # Until the endpoint's own RTCP arrives, assume RTCP on the next port (RFC 3550).
            memcpy(&s.rtcp_addr, src, sizeof(sockaddr_storage))
            if fp_addr_port(src) < 65535:
                fp_addr_set_port(&s.rtcp_addr, fp_addr_port(src) + 1)
            s.rtcp_state = A_INITIAL
    else:
        memcpy(&s.rtcp_addr, src, sizeof(sockaddr_storage))
        s.rtcp_state = A_LATCHED
    fp_seq_write_end(&s.addr_seq)


cdef void on_endpoint(relay_t* r, int32_t slot, int kind, uint64_t now_ns) noexcept nogil:
    """Datagrams from an endpoint: latch, wrap, send toward the remote edge."""
    cdef session_t* s = &r.sessions[slot]
    cdef int fd = s.rtp_fd if kind == K_RTP else s.rtcp_fd
    cdef int n, i, flags, state
    cdef size_t length
    cdef uint8_t* p
    cdef sockaddr_storage* src
    if fd < 0:
        return
    n = rx(r, fd, HDR)
    for i in range(n):
        if r.rxmsg[i].msg_hdr.msg_flags & MSG_TRUNC:
            drop(r, D_OVERSIZED, slot)
            continue
        src = &r.rxaddr[i]
        state = s.rtp_state if kind == K_RTP else s.rtcp_state
        if state == A_LATCHED:
            if not fp_addr_equal(src, &s.rtp_addr if kind == K_RTP else &s.rtcp_addr):
                drop(r, D_UNKNOWN_SOURCE, slot)
                continue
        else:
            latch(s, kind, src)
        length = r.rxmsg[i].msg_len
        fp_add_u64(&s.packets_in, 1)
        fp_add_u64(&s.bytes_in, length)
        fp_store_u64(&s.last_seen_ns, now_ns)
        p = r.rxbuf[i]
        flags = 0
        if kind == K_RTCP:
            flags = F_RTCP
        elif s.rtcp_fd < 0 and length >= 2 and 192 <= p[HDR + 1] <= 223:
            flags = F_RTCP  # rtcp-mux: RTCP packet types 192-223 (RFC 5761 section 4)
        p[0] = <uint8_t>((VERSION << 4) | flags)
        p[1] = INITIAL_TTL
        p[2] = 0
        p[3] = 0
        fp_put_be32(p + 4, s.remote_node)
        fp_put_be32(p + 8, r.self_id)
        fp_put_be64(p + 12, s.remote_session)
        if s.remote_node == r.self_id:
            deliver(r, p, length + HDR, flags, slot)  # both legs of the call on this node
        else:
            forward(r, p, length + HDR, s.remote_node, slot)
    flush(r)


cdef void on_overlay(relay_t* r) noexcept nogil:
    """Datagrams from other relays: check the source and the header, then forward, deliver or
    answer."""
    cdef int n, i, flags
    cdef size_t length
    cdef uint8_t* p
    cdef uint32_t dst, src
    cdef uint64_t now_ns = 0  # read at the batch's first echo reply: the clock costs nothing else
    n = rx(r, r.ovl_fd, 0)
    for i in range(n):
        length = r.rxmsg[i].msg_len
        fp_add_u64(&r.ovl_packets, 1)
        fp_add_u64(&r.ovl_bytes, length)
        p = r.rxbuf[i]
        if r.peers != NULL and addr_find(r.peers, &r.rxaddr[i]) == NULL:
            drop(r, D_UNKNOWN_PEER, -1)
            continue
        if r.rxmsg[i].msg_hdr.msg_flags & MSG_TRUNC:
            drop(r, D_OVERSIZED, -1)
            continue
        if length < HDR:
            drop(r, D_SHORT, -1)
            continue
        if (p[0] >> 4) != VERSION:
            drop(r, D_BAD_VERSION, -1)
            continue
        flags = p[0] & 0x0F
        if (flags & 0x08) or (flags & (F_ECHO_REQUEST | F_ECHO_REPLY)) == (F_ECHO_REQUEST | F_ECHO_REPLY):
            drop(r, D_BAD_FLAGS, -1)
            continue
        if p[2] != 0 or p[3] != 0:
            drop(r, D_RESERVED, -1)
            continue
        if p[1] == 0:
            drop(r, D_TTL_EXPIRED, -1)
            continue
        dst = fp_get_be32(p + 4)
        if dst != r.self_id:
            p[1] -= 1
            forward(r, p, length, dst, -1)
        elif flags & F_ECHO_REQUEST:
            src = fp_get_be32(p + 8)
            p[0] = <uint8_t>((VERSION << 4) | F_ECHO_REPLY)
            p[1] = INITIAL_TTL
            fp_put_be32(p + 4, src)
            fp_put_be32(p + 8, r.self_id)
            # Back to the UDP source of the request, not through the next-hop table: a probe
            # sent straight to a neighbour measures that link both ways. Not a link counter's
            # (those count what goes through the next-hop table).
            if r.faults != NULL and faulted(r.faults, &r.rng, &r.rxaddr[i]):
                drop(r, D_FAULT, -1)
            else:
                tx_add(r, r.ovl_fd, p, length, &r.rxaddr[i], -1, -1, -1)
        elif flags & F_ECHO_REPLY:
            if now_ns == 0:
                now_ns = fp_monotonic_ns()
            if fp_get_be64(p + 12) == LIVE_MARK:
                live_heard(r, fp_get_be32(p + 8), now_ns)
            else:
                echo_push(r, fp_get_be32(p + 8), p + HDR, length - HDR, now_ns)
        else:
            deliver(r, p, length, flags, -1)
    flush(r)


# ---------------------------------------------------------------------------------------------
# Commands: table changes, run by the loop thread (or by the caller when no loop runs)
# ---------------------------------------------------------------------------------------------

cdef void sess_unlink(relay_t* r, int32_t slot) noexcept nogil:
    """Take a session out of epoll and the index and free its slot; its fds stay open."""
    cdef session_t* s = &r.sessions[slot]
    if s.rtp_fd >= 0:
        epoll_ctl(r.epfd, EPOLL_CTL_DEL, s.rtp_fd, NULL)
    if s.rtcp_fd >= 0:
        epoll_ctl(r.epfd, EPOLL_CTL_DEL, s.rtcp_fd, NULL)
    sess_index_delete(r, s.id)
    s.id = 0
    s.gen += 1
    s.rtp_fd = -1
    s.rtcp_fd = -1
    s.next_free = r.free_head
    r.free_head = slot
    r.sess_count -= 1


cdef int exec_add(relay_t* r, cmd_t* c) noexcept nogil:
    cdef int rc
    cdef int32_t slot
    cdef uint32_t gen
    cdef session_t* s
    cdef epoll_event ev
    if r.closed:
        return E_STOPPED
    if sess_find(r, c.sid) >= 0:
        return E_EXISTS
    rc = sess_reserve(r)
    if rc != 0:
        return rc
    slot = r.free_head
    s = &r.sessions[slot]
    r.free_head = s.next_free
    gen = s.gen
    memset(s, 0, sizeof(session_t))
    s.gen = gen
    s.next_free = -1
    s.id = c.sid
    s.rtp_fd = c.rtp_fd
    s.rtcp_fd = c.rtcp_fd
    s.rtp_port = c.rtp_port
    s.rtcp_port = c.rtcp_port
    s.remote_node = c.remote_node
    s.remote_session = c.remote_session
    if c.has_endpoint:
        memcpy(&s.rtp_addr, &c.endpoint, sizeof(sockaddr_storage))
        s.rtp_state = A_LATCHED if c.latched else A_INITIAL
        if c.rtcp_fd >= 0:
            memcpy(&s.rtcp_addr, &c.endpoint, sizeof(sockaddr_storage))
            if fp_addr_port(&c.endpoint) < 65535:
                fp_addr_set_port(&s.rtcp_addr, fp_addr_port(&c.endpoint) + 1)
            s.rtcp_state = A_INITIAL
    if c.has_rtcp_latched:
        memcpy(&s.rtcp_addr, &c.rtcp_latched, sizeof(sockaddr_storage))
        s.rtcp_state = A_LATCHED
    sess_index_put(r.sess_index, r.sess_index_mask, c.sid, slot)
    r.sess_count += 1
    ev.events = EPOLLIN
    ev.data.u64 = tag_of(slot, s.gen, K_RTP)
    rc = 0
    if epoll_ctl(r.epfd, EPOLL_CTL_ADD, c.rtp_fd, &ev) < 0:
        rc = errno
    elif c.rtcp_fd >= 0:
        ev.data.u64 = tag_of(slot, s.gen, K_RTCP)
        if epoll_ctl(r.epfd, EPOLL_CTL_ADD, c.rtcp_fd, &ev) < 0:
            rc = errno
    if rc != 0:
        sess_unlink(r, slot)
    return rc


cdef int exec_remove(relay_t* r, cmd_t* c) noexcept nogil:
    cdef int32_t slot = sess_find(r, c.sid)
    if slot < 0:
        return E_UNKNOWN
    c.rtp_fd = r.sessions[slot].rtp_fd
    c.rtcp_fd = r.sessions[slot].rtcp_fd
    sess_unlink(r, slot)
    return 0


cdef int exec_next_hops(relay_t* r, cmd_t* c) noexcept nogil:
    cdef nhtable_t* table = c.table
    cdef nexthop_t* e
    cdef uint32_t h
    cdef int32_t k, link, cap
    cdef link_t* grown
    for h in range(table.mask + 1):
        e = &table.entries[h]
        if not e.used:
            continue
        link = -1
        for k in range(r.links_len):
            if r.links[k].media_id == e.media_id:
                link = k
                break
        if link < 0:
            if r.links_len == r.links_cap:
                cap = r.links_cap * 2 + 16
                grown = <link_t*>realloc(r.links, <size_t>cap * sizeof(link_t))
                if grown == NULL:
                    return -ENOMEM
                r.links = grown
                r.links_cap = cap
            link = r.links_len
            memset(&r.links[link], 0, sizeof(link_t))
            r.links[link].media_id = e.media_id
            r.links_len += 1
        e.link = link
    c.table = r.nh
    r.nh = table
    return 0


cdef int exec_swap_addrs(relay_t* r, cmd_t* c) noexcept nogil:
    cdef addrtable_t* old
    if c.op == C_PEERS:
        old = r.peers
        r.peers = c.addrs
    else:
        old = r.faults
        r.faults = c.addrs
    c.addrs = old
    return 0


cdef int exec_liveness(relay_t* r, cmd_t* c) noexcept nogil:
    """Swap the liveness table; a peer in both keeps what was heard of it and its counters."""
    cdef livetable_t* new = c.live
    cdef livetable_t* old = r.live
    cdef live_t* e
    cdef uint32_t k, j
    cdef uint64_t now_ns = fp_monotonic_ns()
    if new != NULL:
        for k in range(new.count):
            e = &new.entries[k]
            e.since_ns = now_ns
            if old == NULL:
                continue
            for j in range(old.count):
                if old.entries[j].media_id == e.media_id:
                    e.silent = old.entries[j].silent
                    e.heard_ns = old.entries[j].heard_ns
                    e.since_ns = old.entries[j].since_ns
                    e.sent = old.entries[j].sent
                    e.answered = old.entries[j].answered
                    e.gap_ns = old.entries[j].gap_ns
                    e.gap_dev_ns = old.entries[j].gap_dev_ns
                    break
            e.detect_ns = live_detection(new, e)
    r.live = new
    r.last_tick_ns = 0
    c.live = old
    if fp_timer_every(r.timerfd, new.interval_ns if new != NULL else 0) < 0:
        return errno
    return 0


cdef int exec_take_echo(relay_t* r, cmd_t* c) noexcept nogil:
    cdef echo_ring_t* ring = &r.echo
    cdef uint32_t count = ring.count
    cdef uint32_t k, pos
    cdef size_t total = 0
    cdef uint8_t* cursor
    c.n_echo = 0
    if count == 0:
        return 0
    for k in range(count):
        total += ring.length[(ring.head + k) % ECHO_RING]
    c.echo_source = <uint32_t*>malloc(count * sizeof(uint32_t))
    c.echo_length = <uint16_t*>malloc(count * sizeof(uint16_t))
    c.echo_received_ns = <uint64_t*>malloc(count * sizeof(uint64_t))
    c.echo_data = <uint8_t*>malloc(total + 1)
    if (c.echo_source == NULL or c.echo_length == NULL or c.echo_received_ns == NULL
            or c.echo_data == NULL):
        return -ENOMEM  # the caller frees what was allocated
    cursor = c.echo_data
    for k in range(count):
        pos = (ring.head + k) % ECHO_RING
        c.echo_source[k] = ring.source[pos]
        c.echo_length[k] = ring.length[pos]
        c.echo_received_ns[k] = ring.received_ns[pos]
        memcpy(cursor, ring.data[pos], ring.length[pos])
        cursor += ring.length[pos]
    ring.head = 0
    ring.count = 0
    c.n_echo = count
    return 0


cdef int execute(relay_t* r, cmd_t* c) noexcept nogil:
    if c.op == C_ADD:
        return exec_add(r, c)
    if c.op == C_REMOVE:
        return exec_remove(r, c)
    if c.op == C_NEXT_HOPS:
        return exec_next_hops(r, c)
    if c.op == C_PEERS or c.op == C_FAULTS:
        return exec_swap_addrs(r, c)
    if c.op == C_LIVENESS:
        return exec_liveness(r, c)
    return exec_take_echo(r, c)


cdef void complete(relay_t* r, cmd_t* head) noexcept nogil:
    """Mark commands done; a caller may return (and its command vanish) right after."""
    cdef cmd_t* nxt
    pthread_mutex_lock(&r.qlock)
    while head != NULL:
        nxt = head.next
        head.done = 1
        head = nxt
    pthread_cond_broadcast(&r.qcond)
    pthread_mutex_unlock(&r.qlock)


cdef void drain(relay_t* r) noexcept nogil:
    """Run the queued commands, unless a reader holds table_lock (then: next time)."""
    cdef cmd_t* head
    cdef cmd_t* c
    if pthread_mutex_trylock(&r.table_lock) != 0:
        return
    pthread_mutex_lock(&r.qlock)
    head = r.qhead
    r.qhead = NULL
    r.qtail = NULL
    fp_store(&r.pending, 0)
    pthread_mutex_unlock(&r.qlock)
    c = head
    while c != NULL:
        c.result = execute(r, c)
        c = c.next
    pthread_mutex_unlock(&r.table_lock)
    if head != NULL:
        complete(r, head)


cdef void drain_final(relay_t* r) noexcept nogil:
    """At exit: run what is queued and leave loop_running cleared, so callers run directly."""
    cdef cmd_t* head
    cdef cmd_t* c
    while True:
        pthread_mutex_lock(&r.table_lock)
        pthread_mutex_lock(&r.qlock)
        head = r.qhead
        r.qhead = NULL
        r.qtail = NULL
        fp_store(&r.pending, 0)
        if head == NULL:
            r.loop_running = 0
        pthread_mutex_unlock(&r.qlock)
        c = head
        while c != NULL:
            c.result = execute(r, c)
            c = c.next
        pthread_mutex_unlock(&r.table_lock)
        if head == NULL:
            return
        complete(r, head)


cdef int submit(relay_t* r, cmd_t* c) noexcept nogil:
    """Queue a command for the loop and wait for it. 0, or 1 when no loop runs any more."""
    cdef uint64_t one = 1
    pthread_mutex_lock(&r.qlock)
    if not r.loop_running:
        pthread_mutex_unlock(&r.qlock)
        return 1
    c.next = NULL
    c.done = 0
    if r.qtail == NULL:
        r.qhead = c
    else:
        r.qtail.next = c
    r.qtail = c
    fp_store(&r.pending, 1)
    pthread_mutex_unlock(&r.qlock)
    write(r.wakefd, &one, sizeof(one))
    pthread_mutex_lock(&r.qlock)
    while not c.done:
        pthread_cond_wait(&r.qcond, &r.qlock)
    pthread_mutex_unlock(&r.qlock)
    return 0


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

cdef void run_loop(relay_t* r) noexcept nogil:
    cdef int n, i, kind
    cdef uint64_t tag
    cdef uint64_t wake_count
    cdef int32_t slot
    cdef uint32_t gen
    cdef uint64_t now_ns
    cdef int tick
    while True:
        # Both flags are set before the eventfd is written, and a wakeup may have been consumed
        # by reading the eventfd for an earlier one: test them before every wait.
        if fp_load(&r.stopping):
            return
        # With commands postponed (a reader held table_lock), poll instead of sleeping.
        n = epoll_wait(r.epfd, r.events, MAX_EVENTS, 0 if fp_load(&r.pending) else -1)
        if n < 0:
            if errno == EINTR:
                continue
            r.loop_errno = errno
            return
        if fp_load(&r.pending):
            drain(r)
            if n == 0:
                sched_yield()
        now_ns = fp_monotonic_ns()
        tick = 0
        for i in range(n):
            tag = r.events[i].data.u64
            kind = <int>(tag & 3)
            if tag == TAG_TIMER:
                tick = 1  # after the batch: the answers it holds count before any silence
            elif kind == K_WAKE:
                read(r.wakefd, &wake_count, sizeof(wake_count))
            elif kind == K_OVERLAY:
                on_overlay(r)
            else:
                # A stale event of a session removed since epoll_wait: the generation differs.
                slot = <int32_t>((tag >> 2) & 0x3FFFFFFF)
                gen = <uint32_t>(tag >> 32)
                if slot < r.sess_cap and r.sessions[slot].id != 0 and r.sessions[slot].gen == gen:
                    on_endpoint(r, slot, kind, now_ns)
            if fp_load(&r.pending):
                drain(r)
        if tick:
            live_tick(r)


cdef void* thread_main(void* arg) noexcept nogil:
    cdef relay_t* r = <relay_t*>arg
    run_loop(r)
    drain_final(r)
    return NULL


# ---------------------------------------------------------------------------------------------
# Python side
# ---------------------------------------------------------------------------------------------

cdef object _checked_int(object value, str name, object low, object high):
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None
    if not low <= number <= high:
        raise OverflowError(f"{name} must be in {low}..{high}, got {number}")
    return number


cdef str _host_port(str host, object port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


cdef int _parse_addr(object host, object port, str what, sockaddr_storage* out) except -1:
    """A numeric IPv4 or IPv6 address and a port into ``out``; returns the family."""
    cdef bytes raw
    cdef sockaddr_in* v4 = <sockaddr_in*>out
    cdef sockaddr_in6* v6 = <sockaddr_in6*>out
    if not isinstance(host, str):
        raise TypeError(f"{what} host must be a str, not {type(host).__name__}")
    try:
        raw = (<str>host).encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"{what} host {host!r} is not a numeric IPv4 or IPv6 address") from None
    memset(out, 0, sizeof(sockaddr_storage))
    if inet_pton(AF_INET, raw, &v4.sin_addr) == 1:
        v4.sin_family = AF_INET
        v4.sin_port = htons(<uint16_t>port)
        return AF_INET
    memset(out, 0, sizeof(sockaddr_storage))
    if inet_pton(AF_INET6, raw, &v6.sin6_addr) == 1:
        v6.sin6_family = AF_INET6
        v6.sin6_port = htons(<uint16_t>port)
        return AF_INET6
    raise ValueError(f"{what} host {host!r} is not a numeric IPv4 or IPv6 address")


cdef object _format_addr(sockaddr_storage* a):
    cdef char text[INET6_ADDRSTRLEN + 1]
    if a.ss_family == AF_INET:
        inet_ntop(AF_INET, &(<sockaddr_in*>a).sin_addr, text, sizeof(text))
    elif a.ss_family == AF_INET6:
        inet_ntop(AF_INET6, &(<sockaddr_in6*>a).sin6_addr, text, sizeof(text))
    else:
        return None
    return (text.decode("ascii"), fp_addr_port(a))


cdef bytes _overlay_address(relay_t* r, object value, str what):
    """``value``, a (host, port) tuple of the overlay socket's family, as a packed
    ``sockaddr_storage``."""
    cdef sockaddr_storage addr
    try:
        host, port = value
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a (host, port) tuple, not {value!r}") from None
    port = _checked_int(port, f"{what} port", 1, 65535)
    if _parse_addr(host, port, what, &addr) != r.family:
        raise ValueError(f"{what}: {_host_port(host, port)} is not of the overlay socket's "
                         f"address family")
    return (<char*>&addr)[:sizeof(sockaddr_storage)]


cdef list _media_addresses(relay_t* r, object mapping, str what):
    """``{media id: (host, port)}`` checked, as ``[(media id, packed address)]``; ``what`` names
    the entries in errors ("next hop")."""
    items = []
    for key, value in dict(mapping).items():
        media = _checked_int(key, f"{what} media id", 0, U32_MAX)
        if media == r.self_id:
            raise ValueError(f"{what} for this node's own media id {media}")
        items.append((media, _overlay_address(r, value, f"{what} for {media}")))
    return items


cdef addrtable_t* _new_addr_table(list entries) except NULL:
    """An address table of ``entries``, (packed address, loss, blackhole) each; a later entry for
    an address replaces an earlier one."""
    cdef uint32_t size = 8, h
    cdef addrtable_t* t
    cdef addrent_t* e
    cdef sockaddr_storage addr
    cdef bytes packed
    while size < 2 * len(entries):
        size *= 2
    t = <addrtable_t*>calloc(1, sizeof(addrtable_t))
    if t == NULL:
        raise MemoryError()
    t.entries = <addrent_t*>calloc(size, sizeof(addrent_t))
    if t.entries == NULL:
        free(t)
        raise MemoryError()
    t.mask = size - 1
    for packed, loss, blackhole in entries:
        memcpy(&addr, <const char*>packed, sizeof(sockaddr_storage))
        h = fp_addr_hash(&addr) & t.mask
        while t.entries[h].used and not fp_addr_equal(&t.entries[h].addr, &addr):
            h = (h + 1) & t.mask
        e = &t.entries[h]
        e.used = 1
        e.loss = loss
        e.blackhole = blackhole
        memcpy(&e.addr, &addr, sizeof(sockaddr_storage))
    return t


cdef int _bind_udp(sockaddr_storage* addr, str host, object port, int bufsize) except -1:
    """A non-blocking, close-on-exec UDP socket bound to ``addr``; OSError names host:port."""
    cdef int fd = socket(addr.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
    cdef int err
    if fd < 0:
        err = errno
        raise OSError(err, f"cannot create a UDP socket for {_host_port(host, port)}: "
                      f"{os.strerror(err)}")
    if bufsize > 0:
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof(int))
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof(int))
    if bind(fd, <sockaddr*>addr, fp_addr_len(addr)) < 0:
        err = errno
        close(fd)
        raise OSError(err, f"cannot bind UDP {_host_port(host, port)}: {os.strerror(err)}")
    return fd


cdef int _bound_port(int fd) noexcept nogil:
    cdef sockaddr_storage a
    cdef socklen_t n = sizeof(sockaddr_storage)
    if getsockname(fd, <sockaddr*>&a, &n) < 0:
        return 0
    return fp_addr_port(&a)


cdef enum:
    S_NEW
    S_RUNNING
    S_STOPPED


cdef class Relay:
    cdef relay_t* _r
    cdef int _state
    cdef int _overlay_port
    cdef int _niceness_error
    cdef int _realtime_error

    def __cinit__(self, node_media_id, overlay_host, overlay_port):
        self._r = NULL
        self._state = S_NEW
        cdef uint32_t media_id = _checked_int(node_media_id, "node_media_id", 0, U32_MAX)
        port = _checked_int(overlay_port, "overlay_port", 0, 65535)
        cdef sockaddr_storage addr
        cdef int family = _parse_addr(overlay_host, port, "overlay", &addr)
        cdef relay_t* r = <relay_t*>calloc(1, sizeof(relay_t))
        cdef int err, i
        cdef epoll_event ev
        if r == NULL:
            raise MemoryError()
        r.self_id = media_id
        r.family = family
        # Fixed seeds (never 0): the same node drops the same packets of the same stream.
        r.rng = fp_mix64(media_id ^ <uint64_t>0x9E3779B97F4A7C15) | 1
        r.caller_rng = fp_mix64(r.rng) | 1
        r.epfd = -1
        r.wakefd = -1
        r.ovl_fd = -1
        r.timerfd = -1
        r.notifyfd = -1
        r.free_head = -1
        pthread_mutex_init(&r.qlock, NULL)
        pthread_mutex_init(&r.table_lock, NULL)
        pthread_cond_init(&r.qcond, NULL)
        for i in range(BATCH):
            r.rxmsg[i].msg_hdr.msg_name = &r.rxaddr[i]
            r.rxmsg[i].msg_hdr.msg_iov = &r.rxiov[i]
            r.rxmsg[i].msg_hdr.msg_iovlen = 1
        self._r = r  # from here on __dealloc__ cleans up
        r.sess_index = <int32_t*>calloc(16, sizeof(int32_t))
        r.sess_index_mask = 15
        r.nh = <nhtable_t*>calloc(1, sizeof(nhtable_t))
        if r.sess_index == NULL or r.nh == NULL:
            raise MemoryError()
        r.nh.entries = <nexthop_t*>calloc(1, sizeof(nexthop_t))
        if r.nh.entries == NULL:
            raise MemoryError()
        r.epfd = epoll_create1(EPOLL_CLOEXEC)
        if r.epfd < 0:
            err = errno
            raise OSError(err, f"epoll_create1: {os.strerror(err)}")
        r.wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        r.notifyfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if r.wakefd < 0 or r.notifyfd < 0:
            err = errno
            raise OSError(err, f"eventfd: {os.strerror(err)}")
        r.timerfd = fp_timer_new()
        if r.timerfd < 0:
            err = errno
            raise OSError(err, f"timerfd_create: {os.strerror(err)}")
        r.ovl_fd = _bind_udp(&addr, overlay_host, port, OVERLAY_SOCKBUF)
        self._overlay_port = _bound_port(r.ovl_fd)
        ev.events = EPOLLIN
        ev.data.u64 = K_WAKE
        if epoll_ctl(r.epfd, EPOLL_CTL_ADD, r.wakefd, &ev) < 0:
            err = errno
            raise OSError(err, f"epoll_ctl: {os.strerror(err)}")
        ev.data.u64 = K_OVERLAY
        if epoll_ctl(r.epfd, EPOLL_CTL_ADD, r.ovl_fd, &ev) < 0:
            err = errno
            raise OSError(err, f"epoll_ctl: {os.strerror(err)}")
        ev.data.u64 = TAG_TIMER
        if epoll_ctl(r.epfd, EPOLL_CTL_ADD, r.timerfd, &ev) < 0:
            err = errno
            raise OSError(err, f"epoll_ctl: {os.strerror(err)}")

    def __dealloc__(self):
        cdef relay_t* r = self._r
        if r == NULL:
            return
        if self._state == S_RUNNING:
            self._join()
        self._close_all()
        pthread_cond_destroy(&r.qcond)
        pthread_mutex_destroy(&r.qlock)
        pthread_mutex_destroy(&r.table_lock)
        nh_free(r.nh)
        addr_table_free(r.peers)
        addr_table_free(r.faults)
        live_table_free(r.live)
        free(r.sessions)
        free(r.sess_index)
        free(r.links)
        free(r)
        self._r = NULL

    @property
    def overlay_port(self):
        return self._overlay_port

    @property
    def niceness_error(self):
        return self._niceness_error

    @property
    def realtime_error(self):
        return self._realtime_error

    @property
    def liveness_fd(self):
        return self._r.notifyfd

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()

    cdef int _check_open(self) except -1:
        if self._state == S_STOPPED:
            raise RuntimeError("the relay is stopped")
        return 0

    cdef int _run(self, cmd_t* c) noexcept:
        """Have the loop run a command (GIL released while waiting), or run it here."""
        cdef relay_t* r = self._r
        cdef int direct = 1
        if self._state == S_RUNNING:
            with nogil:
                direct = submit(r, c)
        if direct:
            pthread_mutex_lock(&r.table_lock)
            c.result = execute(r, c)
            pthread_mutex_unlock(&r.table_lock)
        return c.result

    def start(self, niceness=0, realtime=0):
        cdef relay_t* r = self._r
        cdef sigset_t all_signals, previous
        cdef int rc, nice = _checked_int(niceness, "niceness", -20, 19), caller_nice = 0
        cdef int rt = _checked_int(realtime, "realtime", 0, 99)
        self._check_open()
        if self._state == S_RUNNING:
            raise RuntimeError("the relay is already started")
        # The loop thread inherits the nice value of the thread that creates it: this one's,
        # set for the moment of the creation (Linux keeps nice values per thread).
        self._niceness_error = fp_thread_nice(nice, &caller_nice) if nice else 0
        pthread_mutex_lock(&r.qlock)
        r.loop_running = 1
        pthread_mutex_unlock(&r.qlock)
        # The loop thread starts with every signal blocked, so that signals go to Python's
        # main thread and never interrupt the loop.
        sigfillset(&all_signals)
        pthread_sigmask(SIG_BLOCK, &all_signals, &previous)
        rc = pthread_create(&r.thread, NULL, thread_main, r)
        pthread_sigmask(SIG_SETMASK, &previous, NULL)
        if nice and self._niceness_error == 0:
            fp_thread_nice(caller_nice, &nice)  # back: raising a nice value needs no privilege
        if rc != 0:
            r.loop_running = 0
            raise OSError(rc, f"cannot start the fastpath thread: {os.strerror(rc)}")
        pthread_setname_np(r.thread, b"fastpath")
        self._realtime_error = fp_thread_realtime(r.thread, rt) if rt else 0
        self._state = S_RUNNING

    cdef void _join(self) noexcept:
        cdef relay_t* r = self._r
        cdef uint64_t one = 1
        fp_store(&r.stopping, 1)
        write(r.wakefd, &one, sizeof(one))
        with nogil:
            fp_join_waking(r.thread, r.wakefd)

    cdef void _close_all(self) noexcept:
        cdef relay_t* r = self._r
        cdef int32_t k
        pthread_mutex_lock(&r.table_lock)
        r.closed = 1
        for k in range(r.sess_cap):
            if r.sessions[k].rtp_fd >= 0:
                close(r.sessions[k].rtp_fd)
                r.sessions[k].rtp_fd = -1
            if r.sessions[k].rtcp_fd >= 0:
                close(r.sessions[k].rtcp_fd)
                r.sessions[k].rtcp_fd = -1
        if r.ovl_fd >= 0:
            close(r.ovl_fd)
        if r.wakefd >= 0:
            close(r.wakefd)
        if r.epfd >= 0:
            close(r.epfd)
        if r.timerfd >= 0:
            close(r.timerfd)
        if r.notifyfd >= 0:
            close(r.notifyfd)
        r.ovl_fd = -1
        r.wakefd = -1
        r.epfd = -1
        r.timerfd = -1
        r.notifyfd = -1
        pthread_mutex_unlock(&r.table_lock)

    def stop(self):
        if self._state == S_STOPPED:
            return
        was_running = self._state == S_RUNNING
        self._state = S_STOPPED
        if was_running:
            self._join()
        self._close_all()
        err = self._r.loop_errno
        if err:
            raise OSError(err, f"the fastpath loop failed: {os.strerror(err)}")

    def add_session(self, session_id, local_host, rtp_port, rtcp_port, endpoint, remote_node,
                    remote_session, *, latched=False, rtcp_latched=None):
        cdef relay_t* r = self._r
        cdef cmd_t c
        cdef sockaddr_storage local_rtp, local_rtcp
        cdef int family, ep_family, rc, known
        memset(&c, 0, sizeof(cmd_t))
        c.op = C_ADD
        c.rtp_fd = -1
        c.rtcp_fd = -1
        c.rtcp_port = -1
        c.sid = _checked_int(session_id, "session_id", 0, U64_MAX)
        c.remote_node = _checked_int(remote_node, "remote_node", 0, U32_MAX)
        c.remote_session = _checked_int(remote_session, "remote_session", 0, U64_MAX)
        self._check_open()
        if c.sid == 0:
            raise ValueError("session_id must not be 0")
        if c.remote_session == 0:
            raise ValueError("remote_session must not be 0")
        rtp = _checked_int(rtp_port, "rtp_port", 0, 65535)
        family = _parse_addr(local_host, rtp, "local", &local_rtp)
        rtcp = None
        if rtcp_port is not None:
            rtcp = _checked_int(rtcp_port, "rtcp_port", 0, 65535)
            if rtcp == rtp and rtp != 0:
                raise ValueError(f"rtcp_port {rtcp} is the RTP port; use None for rtcp-mux")
            _parse_addr(local_host, rtcp, "local", &local_rtcp)
        if endpoint is not None:
            try:
                ep_host, ep_port = endpoint
            except (TypeError, ValueError):
                raise TypeError(
                    f"endpoint must be a (host, port) tuple or None, not {endpoint!r}"
                ) from None
            ep_port = _checked_int(ep_port, "endpoint port", 1, 65535)
            ep_family = _parse_addr(ep_host, ep_port, "endpoint", &c.endpoint)
            if ep_family != family:
                raise ValueError(f"endpoint {_host_port(ep_host, ep_port)} and local host "
                                 f"{local_host} are not of the same address family")
            c.has_endpoint = 1
        if not isinstance(latched, bool):
            raise TypeError(f"latched must be a bool, not {type(latched).__name__}")
        if latched:
            if endpoint is None:
                raise ValueError("latched needs the endpoint it latched on")
            c.latched = 1
        if rtcp_latched is not None:
            if rtcp_port is None:
                raise ValueError("rtcp_latched needs an RTCP port (not rtcp-mux)")
            try:
                ep_host, ep_port = rtcp_latched
            except (TypeError, ValueError):
                raise TypeError(
                    f"rtcp_latched must be a (host, port) tuple or None, not {rtcp_latched!r}"
                ) from None
            ep_port = _checked_int(ep_port, "rtcp_latched port", 1, 65535)
            if _parse_addr(ep_host, ep_port, "rtcp_latched", &c.rtcp_latched) != family:
                raise ValueError(f"rtcp_latched {_host_port(ep_host, ep_port)} and local host "
                                 f"{local_host} are not of the same address family")
            c.has_rtcp_latched = 1
        pthread_mutex_lock(&r.table_lock)
        known = sess_find(r, c.sid) >= 0
        pthread_mutex_unlock(&r.table_lock)
        if known:
            raise ValueError(f"session {c.sid:#018x} already exists")

        c.rtp_fd = _bind_udp(&local_rtp, local_host, rtp, 0)
        c.rtp_port = _bound_port(c.rtp_fd)
        if rtcp is not None:
            try:
                c.rtcp_fd = _bind_udp(&local_rtcp, local_host, rtcp, 0)
            except BaseException:
                close(c.rtp_fd)
                raise
            c.rtcp_port = _bound_port(c.rtcp_fd)
        rc = self._run(&c)
        if rc == 0:
            return
        close(c.rtp_fd)
        if c.rtcp_fd >= 0:
            close(c.rtcp_fd)
        if rc == E_STOPPED:
            raise RuntimeError("the relay is stopped")
        if rc == E_EXISTS:
            raise ValueError(f"session {c.sid:#018x} already exists")
        if rc == -ENOMEM:
            raise MemoryError()
        raise OSError(rc, f"epoll_ctl: {os.strerror(rc)}")

    def remove_session(self, session_id):
        cdef cmd_t c
        memset(&c, 0, sizeof(cmd_t))
        c.op = C_REMOVE
        c.sid = _checked_int(session_id, "session_id", 0, U64_MAX)
        self._check_open()
        if self._run(&c) != 0:
            raise KeyError(f"no session {c.sid:#018x}")
        if c.rtp_fd >= 0:
            close(c.rtp_fd)
        if c.rtcp_fd >= 0:
            close(c.rtcp_fd)

    def set_next_hops(self, next_hops):
        cdef relay_t* r = self._r
        cdef cmd_t c
        cdef nhtable_t* table
        cdef nexthop_t* e
        cdef uint32_t size = 8, h, media_id
        cdef bytes packed
        self._check_open()
        items = _media_addresses(r, next_hops, "next hop")
        while size < 2 * len(items):
            size *= 2
        table = <nhtable_t*>calloc(1, sizeof(nhtable_t))
        if table == NULL:
            raise MemoryError()
        table.entries = <nexthop_t*>calloc(size, sizeof(nexthop_t))
        if table.entries == NULL:
            free(table)
            raise MemoryError()
        table.mask = size - 1
        for media, packed in items:
            media_id = media
            h = fp_mix32(media_id) & table.mask
            while table.entries[h].used:
                h = (h + 1) & table.mask
            e = &table.entries[h]
            e.used = 1
            e.media_id = media_id
            memcpy(&e.addr, <const char*>packed, sizeof(sockaddr_storage))
            e.addr_len = fp_addr_len(&e.addr)
            e.link = -1
        memset(&c, 0, sizeof(cmd_t))
        c.op = C_NEXT_HOPS
        c.table = table
        rc = self._run(&c)
        nh_free(c.table)  # the replaced table, or the new one when the swap failed
        if rc != 0:
            raise MemoryError()

    def set_peers(self, addresses):
        cdef cmd_t c
        cdef addrtable_t* table = NULL
        self._check_open()
        if addresses is not None:
            entries = [(_overlay_address(self._r, address, "peer"), 0, False)
                       for address in addresses]
            table = _new_addr_table(entries)
        memset(&c, 0, sizeof(cmd_t))
        c.op = C_PEERS
        c.addrs = table
        self._run(&c)
        addr_table_free(c.addrs)  # the replaced table

    def set_faults(self, faults):
        cdef cmd_t c
        cdef addrtable_t* table = NULL
        self._check_open()
        entries = []
        for address, fault in dict(faults).items():
            packed = _overlay_address(self._r, address, "fault address")
            host, port = address
            where = _host_port(host, port)
            try:
                loss_ratio, blackhole = fault
            except (TypeError, ValueError):
                raise TypeError(f"fault for {where} must be a (loss_ratio, blackhole) tuple, "
                                f"not {fault!r}") from None
            if not isinstance(loss_ratio, (int, float)) or not isinstance(blackhole, bool):
                raise TypeError(f"fault for {where} must be a (float, bool) tuple, "
                                f"not {fault!r}")
            if not 0.0 <= loss_ratio <= 1.0:
                raise ValueError(f"loss_ratio for {where} must be between 0 and 1, "
                                 f"got {loss_ratio}")
            if blackhole or loss_ratio > 0:
                entries.append((packed, int(loss_ratio * _LOSS_ONE), blackhole))
        if entries:
            table = _new_addr_table(entries)
        memset(&c, 0, sizeof(cmd_t))
        c.op = C_FAULTS
        c.addrs = table
        self._run(&c)
        addr_table_free(c.addrs)  # the replaced table

    def set_liveness(self, peers, interval, detection_time):
        cdef relay_t* r = self._r
        cdef cmd_t c
        cdef livetable_t* table = NULL
        cdef live_t* e
        cdef uint32_t k = 0
        cdef bytes packed
        self._check_open()
        items = _media_addresses(r, peers, "liveness peer")
        if not isinstance(interval, (int, float)) or not 0.001 <= interval <= 60:
            raise ValueError(f"interval must be between 0.001 and 60 seconds, got {interval!r}")
        if not isinstance(detection_time, (int, float)) or not interval <= detection_time <= 600:
            raise ValueError(f"detection_time must be between the interval and 600 seconds, "
                             f"got {detection_time!r}")
        if items:
            table = <livetable_t*>calloc(1, sizeof(livetable_t))
            if table == NULL:
                raise MemoryError()
            table.entries = <live_t*>calloc(len(items), sizeof(live_t))
            if table.entries == NULL:
                free(table)
                raise MemoryError()
            table.count = len(items)
            table.interval_ns = <uint64_t>(interval * 1e9)
            table.detect_ns = <uint64_t>(detection_time * 1e9)
            for media, packed in items:
                e = &table.entries[k]
                k += 1
                e.media_id = media
                memcpy(&e.addr, <const char*>packed, sizeof(sockaddr_storage))
                e.packet[0] = (VERSION << 4) | F_ECHO_REQUEST
                e.packet[1] = INITIAL_TTL
                fp_put_be32(e.packet + 4, e.media_id)
                fp_put_be32(e.packet + 8, r.self_id)
                fp_put_be64(e.packet + 12, LIVE_MARK)
        memset(&c, 0, sizeof(cmd_t))
        c.op = C_LIVENESS
        c.live = table
        rc = self._run(&c)
        live_table_free(c.live)  # the replaced table
        if rc != 0:
            raise OSError(rc, f"timerfd_settime: {os.strerror(rc)}")

    def liveness(self):
        cdef relay_t* r = self._r
        cdef livetable_t* t
        cdef live_t* e
        cdef uint32_t k
        cdef uint64_t heard
        result = {}
        pthread_mutex_lock(&r.table_lock)
        t = r.live
        try:
            if t != NULL:
                for k in range(t.count):
                    e = &t.entries[k]
                    heard = fp_load_u64(&e.heard_ns)
                    result[e.media_id] = {
                        "silent": bool(fp_load(&e.silent)),
                        "heard": heard / 1e9 if heard else None,
                        "sent": fp_load_u64(&e.sent),
                        "answered": fp_load_u64(&e.answered),
                        "detection": fp_load_u64(&e.detect_ns) / 1e9,
                    }
        finally:
            pthread_mutex_unlock(&r.table_lock)
        return result

    def take_liveness_notice(self):
        cdef uint64_t count = 0
        cdef int fd = self._r.notifyfd
        if fd >= 0 and read(fd, &count, sizeof(count)) < 0:
            count = 0
        return count != 0

    def send_echo(self, destination, payload, via=None):
        cdef relay_t* r = self._r
        cdef uint32_t dst = _checked_int(destination, "destination", 0, U32_MAX)
        cdef uint8_t packet[HDR + ECHO_MAX]
        cdef size_t length
        cdef nexthop_t* e
        cdef ssize_t sent
        cdef sockaddr_storage via_addr
        cdef bytes packed
        self._check_open()
        if dst == r.self_id:
            raise ValueError(f"echo destination {dst} is this node")
        data = bytes(payload)
        if len(data) > ECHO_MAX:
            raise ValueError(f"echo payload of {len(data)} bytes exceeds {ECHO_MAX} bytes")
        if via is not None:
            packed = _overlay_address(r, via, "via")
            memcpy(&via_addr, <const char*>packed, sizeof(sockaddr_storage))
        length = HDR + len(data)
        packet[0] = (VERSION << 4) | F_ECHO_REQUEST
        packet[1] = INITIAL_TTL
        packet[2] = 0
        packet[3] = 0
        fp_put_be32(packet + 4, dst)
        fp_put_be32(packet + 8, r.self_id)
        fp_put_be64(packet + 12, 0)
        if len(data):
            memcpy(packet + HDR, <const char*>data, len(data))
        # A reader of the next-hop table: table_lock keeps the loop from swapping it meanwhile.
        # The send itself shares the overlay socket with the loop (the kernel serialises).
        pthread_mutex_lock(&r.table_lock)
        if via is not None:
            # Straight to that relay: no next-hop lookup, no link counter (those count what
            # goes through the next-hop table).
            if r.faults != NULL and faulted(r.faults, &r.caller_rng, &via_addr):
                r.caller_drops[D_FAULT] += 1
            elif sendto(r.ovl_fd, packet, length, MSG_DONTWAIT, <sockaddr*>&via_addr,
                        fp_addr_len(&via_addr)) < 0:
                r.caller_drops[D_SEND_ERROR] += 1
            pthread_mutex_unlock(&r.table_lock)
            return
        e = nh_find(r.nh, dst)
        if e == NULL:
            r.caller_drops[D_NO_NEXT_HOP] += 1
        elif r.faults != NULL and faulted(r.faults, &r.caller_rng, &e.addr):
            r.caller_drops[D_FAULT] += 1
        else:
            sent = sendto(r.ovl_fd, packet, length, MSG_DONTWAIT, <sockaddr*>&e.addr, e.addr_len)
            if sent < 0:
                r.caller_drops[D_SEND_ERROR] += 1
            else:
                r.links[e.link].echo_packets += 1
                r.links[e.link].echo_bytes += length
        pthread_mutex_unlock(&r.table_lock)

    def take_echo_replies(self):
        cdef cmd_t c
        cdef uint32_t k
        cdef uint8_t* cursor
        memset(&c, 0, sizeof(cmd_t))
        c.op = C_TAKE_ECHO
        rc = self._run(&c)
        replies = []
        try:
            if rc != 0:
                raise MemoryError()
            cursor = c.echo_data
            for k in range(c.n_echo):
                replies.append((
                    c.echo_source[k],
                    (<char*>cursor)[:c.echo_length[k]],
                    c.echo_received_ns[k] / 1e9,
                ))
                cursor += c.echo_length[k]
        finally:
            free(c.echo_source)
            free(c.echo_length)
            free(c.echo_received_ns)
            free(c.echo_data)
        return replies

    def session_counters(self, session_id):
        cdef relay_t* r = self._r
        cdef uint64_t sid = _checked_int(session_id, "session_id", 0, U64_MAX)
        cdef session_t* s
        cdef session_t copy
        cdef int32_t slot
        cdef uint32_t seq
        cdef int attempt
        memset(&copy, 0, sizeof(session_t))
        pthread_mutex_lock(&r.table_lock)
        slot = sess_find(r, sid) if sid != 0 else -1
        if slot >= 0:
            s = &r.sessions[slot]
            copy.packets_in = fp_load_u64(&s.packets_in)
            copy.bytes_in = fp_load_u64(&s.bytes_in)
            copy.packets_out = fp_load_u64(&s.packets_out)
            copy.bytes_out = fp_load_u64(&s.bytes_out)
            copy.drops = fp_load_u64(&s.drops)
            copy.last_seen_ns = fp_load_u64(&s.last_seen_ns)
            copy.rtp_port = s.rtp_port
            copy.rtcp_port = s.rtcp_port
            for attempt in range(1000):
                seq = fp_seq_read_begin(&s.addr_seq)
                copy.rtp_state = s.rtp_state
                copy.rtcp_state = s.rtcp_state
                memcpy(&copy.rtp_addr, &s.rtp_addr, sizeof(sockaddr_storage))
                memcpy(&copy.rtcp_addr, &s.rtcp_addr, sizeof(sockaddr_storage))
                if not fp_seq_read_retry(&s.addr_seq, seq):
                    break
        pthread_mutex_unlock(&r.table_lock)
        if slot < 0:
            raise KeyError(f"no session {sid:#018x}")
        return {
            "packets_in": copy.packets_in,
            "bytes_in": copy.bytes_in,
            "packets_out": copy.packets_out,
            "bytes_out": copy.bytes_out,
            "drops": copy.drops,
            "last_seen": copy.last_seen_ns / 1e9 if copy.last_seen_ns else None,
            "endpoint": _format_addr(&copy.rtp_addr) if copy.rtp_state != A_NONE else None,
            "rtcp_endpoint": (
                _format_addr(&copy.rtcp_addr) if copy.rtcp_state != A_NONE else None
            ),
            "latched": copy.rtp_state == A_LATCHED,
            "rtcp_latched": copy.rtcp_state == A_LATCHED,
            "rtp_port": copy.rtp_port,
            "rtcp_port": copy.rtcp_port if copy.rtcp_port >= 0 else None,
        }

    def counters(self):
        cdef relay_t* r = self._r
        cdef uint64_t drops[N_DROPS]
        cdef uint64_t ovl_packets, ovl_bytes
        cdef int32_t n_links, sessions, k
        cdef link_t* links
        pthread_mutex_lock(&r.table_lock)
        for k in range(N_DROPS):
            drops[k] = fp_load_u64(&r.drops[k]) + r.caller_drops[k]
        ovl_packets = fp_load_u64(&r.ovl_packets)
        ovl_bytes = fp_load_u64(&r.ovl_bytes)
        sessions = r.sess_count
        n_links = r.links_len
        links = <link_t*>malloc(<size_t>(n_links + 1) * sizeof(link_t))
        if links != NULL:
            for k in range(n_links):
                links[k].media_id = r.links[k].media_id
                links[k].packets = fp_load_u64(&r.links[k].packets) + r.links[k].echo_packets
                links[k].bytes = fp_load_u64(&r.links[k].bytes) + r.links[k].echo_bytes
        pthread_mutex_unlock(&r.table_lock)
        if links == NULL:
            raise MemoryError()
        try:
            return {
                "drops": {DROP_REASONS[k]: drops[k] for k in range(N_DROPS)},
                "links": {
                    links[k].media_id: {"packets": links[k].packets, "bytes": links[k].bytes}
                    for k in range(n_links)
                },
                "overlay_in": {"packets": ovl_packets, "bytes": ovl_bytes},
                "sessions": sessions,
                "liveness_stalls": fp_load_u64(&r.live_stalls),
            }
        finally:
            free(links)
