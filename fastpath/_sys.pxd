# C declarations the relay needs from Linux and glibc (pyconfig.h defines _GNU_SOURCE, which
# recvmmsg, sendmmsg and pthread_setname_np need). Only what fastpath/_relay.pyx uses.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "<sys/types.h>" nogil:
    ctypedef long ssize_t


cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void* iov_base
        size_t iov_len


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t

    struct sockaddr:
        sa_family_t sa_family

    struct sockaddr_storage:
        sa_family_t ss_family

    struct msghdr:
        void* msg_name
        socklen_t msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags

    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len

    enum:
        AF_INET
        AF_INET6
        SOCK_DGRAM
        SOCK_NONBLOCK
        SOCK_CLOEXEC
        SOL_SOCKET
        SO_RCVBUF
        SO_SNDBUF
        MSG_DONTWAIT
        MSG_TRUNC

    int socket(int domain, int type, int protocol)
    int bind(int fd, const sockaddr* addr, socklen_t addrlen)
    int getsockname(int fd, sockaddr* addr, socklen_t* addrlen)
    int setsockopt(int fd, int level, int optname, const void* optval, socklen_t optlen)
    ssize_t sendto(int fd, const void* buf, size_t n, int flags, const sockaddr* addr,
                   socklen_t addrlen)
    int recvmmsg(int fd, mmsghdr* vmessages, unsigned int vlen, int flags, void* timeout)
    int sendmmsg(int fd, mmsghdr* vmessages, unsigned int vlen, int flags)


cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr

    struct in6_addr:
        pass

    struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr

    struct sockaddr_in6:
        sa_family_t sin6_family
        uint16_t sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id

    uint16_t htons(uint16_t)
    uint16_t ntohs(uint16_t)


cdef extern from "<arpa/inet.h>" nogil:
    enum:
        INET6_ADDRSTRLEN
    int inet_pton(int af, const char* src, void* dst)
    const char* inet_ntop(int af, const void* src, char* dst, socklen_t size)


cdef extern from "<sys/epoll.h>" nogil:
    union epoll_data_t:
        void* ptr
        int fd
        uint32_t u32
        uint64_t u64

    struct epoll_event:
        uint32_t events
        epoll_data_t data

    enum:
        EPOLL_CLOEXEC
        EPOLLIN
        EPOLL_CTL_ADD
        EPOLL_CTL_DEL

    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* event)
    int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout)


cdef extern from "<sys/eventfd.h>" nogil:
    enum:
        EFD_NONBLOCK
        EFD_CLOEXEC
    int eventfd(unsigned int initval, int flags)


cdef extern from "<signal.h>" nogil:
    ctypedef struct sigset_t:
        pass
    enum:
        SIG_BLOCK
        SIG_SETMASK
    int sigfillset(sigset_t* s)


cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t

    ctypedef struct pthread_attr_t:
        pass

    ctypedef struct pthread_mutexattr_t:
        pass

    ctypedef struct pthread_mutex_t:
        pass

    ctypedef struct pthread_condattr_t:
        pass

    ctypedef struct pthread_cond_t:
        pass

    int pthread_create(pthread_t* thread, const pthread_attr_t* attr,
                       void* (*start)(void*) noexcept nogil, void* arg)
    int pthread_join(pthread_t thread, void** retval)
    int pthread_setname_np(pthread_t thread, const char* name)
    int pthread_sigmask(int how, const sigset_t* newmask, sigset_t* oldmask)
    int pthread_mutex_init(pthread_mutex_t* mutex, const pthread_mutexattr_t* attr)
    int pthread_mutex_destroy(pthread_mutex_t* mutex)
    int pthread_mutex_lock(pthread_mutex_t* mutex)
    int pthread_mutex_trylock(pthread_mutex_t* mutex)
    int pthread_mutex_unlock(pthread_mutex_t* mutex)
    int pthread_cond_init(pthread_cond_t* cond, const pthread_condattr_t* attr)
    int pthread_cond_destroy(pthread_cond_t* cond)
    int pthread_cond_wait(pthread_cond_t* cond, pthread_mutex_t* mutex)
    int pthread_cond_broadcast(pthread_cond_t* cond)


cdef extern from "<sched.h>" nogil:
    int sched_yield()


cdef extern from "<unistd.h>" nogil:
    int close(int fd)
    ssize_t read(int fd, void* buf, size_t n)
    ssize_t write(int fd, const void* buf, size_t n)


cdef extern from "_relay_helpers.h" nogil:
    int fp_load(int* p)
    void fp_store(int* p, int v)
    void fp_add(int* p, int v)
    uint32_t fp_get_be32(const uint8_t* p)
    uint64_t fp_get_be64(const uint8_t* p)
    void fp_put_be32(uint8_t* p, uint32_t v)
    void fp_put_be64(uint8_t* p, uint64_t v)
    int fp_addr_equal(const sockaddr_storage* a, const sockaddr_storage* b)
    int fp_addr_port(const sockaddr_storage* a)
    void fp_addr_set_port(sockaddr_storage* a, int port)
    socklen_t fp_addr_len(const sockaddr_storage* a)
    uint64_t fp_monotonic_ns()
    uint64_t fp_load_u64(const uint64_t* p)
    void fp_store_u64(uint64_t* p, uint64_t v)
    void fp_add_u64(uint64_t* p, uint64_t v)
    void fp_seq_write_begin(uint32_t* seq)
    void fp_seq_write_end(uint32_t* seq)
    uint32_t fp_seq_read_begin(const uint32_t* seq)
    int fp_seq_read_retry(const uint32_t* seq, uint32_t start)
    int fp_join_waking(pthread_t thread, int wakefd)
    uint64_t fp_mix64(uint64_t x)
    uint32_t fp_mix32(uint32_t x)
    uint32_t fp_addr_hash(const sockaddr_storage* a)
    uint64_t fp_random64(uint64_t* state)
    int fp_thread_nice(int value, int* previous)
    int fp_thread_realtime(pthread_t thread, int priority)
    int fp_timer_new()
    int fp_timer_every(int fd, uint64_t interval_ns)
