"""Typed interface of the compiled relay (fastpath/_relay.pyx); the docstrings live here."""

from collections.abc import Iterable, Mapping
from types import TracebackType

from fastpath._types import LivenessCounters, RelayCounters, SessionCounters

DROP_REASONS: tuple[str, ...]
"""Names of the drop counters, in ``counters()["drops"]``:

- ``short``: an overlay datagram shorter than the 20-byte header;
- ``bad_version``: overlay version not 1;
- ``bad_flags``: undefined flag bits, or echo request and reply at once;
- ``reserved``: the reserved header field is not 0;
- ``ttl_expired``: an overlay datagram arrived with ttl 0;
- ``unknown_session``: addressed to this node, but no such session;
- ``no_next_hop``: no next hop for the destination (also for ``send_echo`` without ``via``);
- ``no_endpoint``: a session has no endpoint address yet (none given, none latched);
- ``unknown_source``: a datagram on a session port from another source than the latched one;
- ``oversized``: a datagram larger than ``MAX_DATAGRAM`` (overlay) or ``MAX_PAYLOAD``
  (endpoint), or an echo reply larger than ``ECHO_MAX_PAYLOAD``;
- ``send_error``: the kernel refused a send (full socket buffer, unreachable network);
- ``echo_overflow``: the oldest echo reply was dropped because the queue was full;
- ``unknown_peer``: a datagram on the overlay socket from a source not in ``set_peers``;
- ``fault``: an overlay send dropped by fault injection (``set_faults``).
"""

BATCH_SIZE: int
"""Datagrams per recvmmsg/sendmmsg call."""
MAX_DATAGRAM: int
"""Largest overlay datagram accepted (header included)."""
MAX_PAYLOAD: int
"""Largest RTP/RTCP datagram accepted from an endpoint (``MAX_DATAGRAM`` - 20)."""
ECHO_QUEUE_LEN: int
"""Echo replies kept until ``take_echo_replies``; older ones are dropped (``echo_overflow``)."""
ECHO_MAX_PAYLOAD: int
"""Largest echo payload ``send_echo`` accepts and the queue stores."""

class Relay:
    """A media relay: one overlay socket, RTP/RTCP sockets per session, a forwarding thread.

    The forwarding loop runs in its own OS thread with the GIL released and owns the tables
    while it runs. ``add_session``, ``remove_session``, ``set_next_hops``, ``set_peers``,
    ``set_faults`` and ``take_echo_replies`` hand a command to the loop and wait for it (GIL
    released; at most one receive batch, typically tens of microseconds);
    ``session_counters``, ``counters`` and ``send_echo`` read under a lock the loop never
    waits for. All methods are safe to call while the loop runs, from any thread; none runs
    Python code in the loop.

    Args:
        node_media_id: this node's 32-bit media id (``zlib.crc32(node_id.encode())``).
        overlay_host: numeric IPv4 or IPv6 address of the overlay socket.
        overlay_port: its port; 0 picks a free one (read it back from ``overlay_port``).

    Raises:
        OverflowError: a number out of its range.
        ValueError: ``overlay_host`` is not a numeric address.
        OSError: the overlay socket cannot be bound; the message names host:port.

    Resource handling:
        The sockets are open from construction until ``stop()`` (or garbage collection). Use
        the relay as a context manager to stop it on exit.
    """

    def __init__(self, node_media_id: int, overlay_host: str, overlay_port: int) -> None: ...
    @property
    def overlay_port(self) -> int:
        """The bound port of the overlay socket."""

    def __enter__(self) -> Relay: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...
    def start(self, niceness: int = 0, realtime: int = 0) -> None:
        """Start the forwarding thread (GIL released inside; signals blocked in it).

        ``niceness`` (-20..19, 0: the caller's) is the thread's nice value: a negative one keeps
        forwarding and the liveness echoes on time while the node's Python work or the rest of
        the machine is busy, as rtpengine's ``priority`` does for its threads. When the system
        refuses it (no ``CAP_SYS_NICE``), the thread runs at the caller's priority and
        ``niceness_error`` says why. ``realtime`` (1..99, 0: no) runs the thread under
        ``SCHED_FIFO`` at that priority, ahead of every ordinary thread of the machine, as
        rtpengine's ``scheduling=fifo``; refused (no ``CAP_SYS_NICE``), it keeps its nice value
        and ``realtime_error`` says why. The kernel's real-time throttling (95% of a CPU by
        default) keeps a flood of packets from locking a CPU.

        Raises:
            RuntimeError: already started, or stopped.
            OSError: the thread could not be created.
            OverflowError: ``niceness`` out of -20..19 or ``realtime`` out of 0..99.
        """

    def stop(self) -> None:
        """Stop the thread, join it and close every socket. Idempotent; returns within a batch.

        After ``stop()`` the counter calls and ``take_echo_replies`` still answer; every other
        call raises RuntimeError.

        Raises:
            OSError: the loop had ended on an unexpected error (the sockets are closed anyway).
        """

    def add_session(
        self,
        session_id: int,
        local_host: str,
        rtp_port: int,
        rtcp_port: int | None,
        endpoint: tuple[str, int] | None,
        remote_node: int,
        remote_session: int,
        *,
        latched: bool = False,
        rtcp_latched: tuple[str, int] | None = None,
    ) -> None:
        """Open the sockets of one endpoint leg and start relaying it.

        Datagrams from the endpoint to ``local_host:rtp_port`` (RTP) or ``rtcp_port`` (RTCP)
        are wrapped for ``(remote_node, remote_session)`` and sent to the next hop toward
        ``remote_node`` (or delivered directly when ``remote_node`` is this node). The first
        datagram on each socket latches the endpoint's address for that socket; later ones
        from another source are dropped (``unknown_source``).

        Args:
            session_id: this node's id of the session, 1..2**64-1.
            local_host: numeric IPv4 or IPv6 address to bind (the node's media address).
            rtp_port: the port put into the SDP; 0 picks one (see ``session_counters``).
            rtcp_port: the RTCP port (usually ``rtp_port + 1``), or None for rtcp-mux: RTCP
                then shares the RTP socket and is told apart by packet type (RFC 5761).
            endpoint: the endpoint's address from its SDP, used until the first datagram
                latches the real one; None when unknown (nothing is delivered until then).
                RTCP goes to its port + 1 until the endpoint's RTCP arrives.
            remote_node: media id of the other edge.
            remote_session: the session id at the other edge, 1..2**64-1.
            latched: ``endpoint`` is where RTP was latched already (a standby restoring the
                session of its active, pair replication, issue 16): the session starts latched
                on it, so a stranger's datagrams are dropped (``unknown_source``) from the
                first, and nobody can take the port during a takeover.
            rtcp_latched: likewise for RTCP, a source latched already on the RTCP port. It is
                apart from ``latched`` because an endpoint may have latched one and not the
                other (a recvonly endpoint sends RTCP reports and no RTP).

        Raises:
            ValueError: the session id exists already, an id is 0, an address is not numeric
                or of another family than ``local_host``, both ports are equal, ``latched``
                without an ``endpoint``, or ``rtcp_latched`` without an ``rtcp_port``.
            OverflowError: a number out of its range.
            TypeError: an argument of the wrong type (``latched`` must be a bool).
            OSError: a port cannot be bound (e.g. in use); the message names host:port.
            RuntimeError: the relay is stopped.
        """

    def remove_session(self, session_id: int) -> None:
        """Stop relaying a session and close its sockets (its ports are free on return).

        Raises:
            KeyError: no such session.
            RuntimeError: the relay is stopped.
        """

    def set_next_hops(self, next_hops: Mapping[int, tuple[str, int]]) -> None:
        """Replace the whole next-hop table: destination media id -> (relay host, port).

        Takes effect with the next datagram of every session. Link counters of destinations
        are kept across calls.

        Raises:
            ValueError: a host that is not numeric or not of the overlay socket's family, or an
                entry for this node's own media id.
            OverflowError: a media id or port out of range.
            TypeError: an entry that is not ``int: (str, int)``.
            RuntimeError: the relay is stopped.
        """

    def set_peers(self, addresses: Iterable[tuple[str, int]] | None) -> None:
        """Replace the overlay socket's source allowlist: the overlay addresses of the peers.

        Relays send from their overlay socket, so every datagram of a peer relay (forwarded
        media, echo requests and replies) comes from the address its peers configured for it.
        Once a list is set, a datagram on the overlay socket from any other source is dropped
        (``unknown_peer``) before its header is read: nobody else can inject media into a live
        session or have the relay answer echo requests toward a third party. An empty list
        accepts no source at all. ``None``, the state after construction, accepts every
        source (tests, a relay used alone); the node always sets the list. Endpoint
        ports are not affected (they latch their endpoint). Takes effect with the next
        datagram.

        Raises:
            ValueError: a host that is not numeric or not of the overlay socket's family.
            OverflowError: a port out of 1..65535.
            TypeError: an entry that is not a ``(str, int)`` tuple.
            RuntimeError: the relay is stopped.
        """

    def set_faults(self, faults: Mapping[tuple[str, int], tuple[float, bool]]) -> None:
        """Replace the fault injection table: relay address -> ``(loss_ratio, blackhole)``.

        Datagrams this relay sends on its overlay socket to such an address (forwarded media,
        ``send_echo`` requests and echo replies) are dropped, counted as ``fault`` (and in the
        sending session's ``drops``), with probability ``loss_ratio``, or all of them when
        ``blackhole``. Loss is drawn per datagram from a generator seeded by the node's media
        id, so a run is reproducible. The relay holds no packet, so a fault cannot delay
        media: delay and jitter are for signalling only. ``(0.0, False)`` and ``{}`` clear.
        Takes effect with the next datagram.

        Raises:
            ValueError: ``loss_ratio`` outside 0..1, or an address that is not numeric or not
                of the overlay socket's family.
            OverflowError: a port out of 1..65535.
            TypeError: an entry that is not ``(str, int): (float, bool)``.
            RuntimeError: the relay is stopped.
        """

    @property
    def niceness_error(self) -> int:
        """Why ``start(niceness)`` left the thread at the caller's priority: an errno (``EPERM``
        or ``EACCES``: a negative nice value needs ``CAP_SYS_NICE``), or 0."""

    @property
    def realtime_error(self) -> int:
        """Why ``start(realtime=...)`` left the thread under the ordinary scheduler: an errno
        (``EPERM``: it needs ``CAP_SYS_NICE``), or 0."""

    @property
    def liveness_fd(self) -> int:
        """An eventfd that becomes readable when a liveness peer's silence starts or ends
        (``set_liveness``): wait for it (``trio.lowlevel.wait_readable``), then
        ``take_liveness_notice`` and read ``liveness``. -1 once the relay is stopped."""

    def set_liveness(
        self, peers: Mapping[int, tuple[str, int]], interval: float, detection_time: float
    ) -> None:
        """Replace the liveness peers: media id -> overlay address of that peer's relay.

        Every ``interval`` seconds the forwarding loop sends each peer a liveness echo (an echo
        request whose session field is a fixed mark: every relay reflects it) straight to that
        address, and stamps each reply on the monotonic clock as it arrives. A peer is silent
        once nothing came back for longer than its detection time (checked at each tick, after
        the answers the loop had already received); a silence that starts or ends makes
        ``liveness_fd`` readable. The detection time is ``detection_time`` where the peer's
        answers come evenly; where their spacing varies (its machine busy, a jittery path) it is
        the smoothed gap between answers plus four deviations, as a retransmission timeout
        follows its RTT (RFC 6298), at most four times ``detection_time`` (``liveness`` shows
        it). A tick later than two intervals (this thread could not run) does not count its
        delay toward anyone's silence. A peer in the old and new tables keeps its state;
        faults (``set_faults``) apply to the echoes. ``{}`` stops the echoes.

        This is BFD's echo function (RFC 5880 §6.4) in the relay thread: answered by the peer's
        relay in C, so neither node's Python event loop is on the liveness path.

        Raises:
            ValueError: an address that is not numeric or not of the overlay socket's family,
                this node's own media id, an ``interval`` outside 0.001..60 s or a
                ``detection_time`` shorter than it or over 600 s.
            OverflowError: a media id or port out of range.
            RuntimeError: the relay is stopped.
            OSError: the timer cannot be set.
        """

    def liveness(self) -> dict[int, LivenessCounters]:
        """The liveness peers' state (``LivenessCounters``), by media id."""

    def take_liveness_notice(self) -> bool:
        """Consume the pending notice on ``liveness_fd``; whether there was one."""

    def send_echo(
        self, destination: int, payload: bytes, via: tuple[str, int] | None = None
    ) -> None:
        """Send an echo request toward ``destination``.

        Without ``via`` the request goes to the next hop toward ``destination`` (the next-hop
        table); without a next hop it is counted as a ``no_next_hop`` drop. With ``via`` it is
        sent straight to that relay address (a neighbour's overlay socket), whatever the table
        says; it is then not counted in ``counters()["links"]``, which count what goes through
        the table. The destination relay answers with an echo reply carrying the same payload,
        sent back to the UDP source address of the request (so a probe sent straight to a
        neighbour measures that link both ways), and ``take_echo_replies`` returns it here.
        A fault on the address it is sent to (``set_faults``) may drop it (``fault``).

        Raises:
            ValueError: ``destination`` is this node, the payload exceeds ``ECHO_MAX_PAYLOAD``
                bytes, or ``via`` is not numeric or not of the overlay socket's family.
            OverflowError: ``destination`` or the ``via`` port out of range.
            TypeError: ``via`` is not a ``(str, int)`` tuple.
            RuntimeError: the relay is stopped.
        """

    def take_echo_replies(self) -> list[tuple[int, bytes, float]]:
        """The echo replies received since the last call, oldest first: (source media id,
        payload, received_at). At most ``ECHO_QUEUE_LEN``; older ones were dropped
        (``echo_overflow``).

        ``received_at`` is the CLOCK_MONOTONIC time in seconds (the clock of
        ``time.monotonic()``) at which the forwarding loop received the reply. It is read once
        per receive batch (right after the batch's ``recvmmsg``, at its first echo reply), so
        replies of one batch share it and it may be later than the kernel's arrival by the time
        the loop took to reach the batch (typically microseconds)."""

    def session_counters(self, session_id: int) -> SessionCounters:
        """Counters and addresses of one session (see ``SessionCounters``).

        Raises:
            KeyError: no such session.
        """

    def counters(self) -> RelayCounters:
        """Drops by reason, per-destination link counters, overlay input, session count."""
