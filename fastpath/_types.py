"""The records the relay's counter calls return (plain dicts at run time)."""

from __future__ import annotations

from typing import TypedDict


class SessionCounters(TypedDict):
    """``Relay.session_counters()``: one session since it was added.

    ``packets_in``/``bytes_in`` count datagrams accepted from the endpoint (RTP and RTCP,
    payload bytes); ``packets_out``/``bytes_out`` datagrams sent to it; ``drops`` every datagram
    of this session dropped, whatever the reason. ``last_seen`` is the CLOCK_MONOTONIC time
    (``time.monotonic()``) of the last datagram accepted from the endpoint, ``None`` before the
    first. ``endpoint`` / ``rtcp_endpoint`` are where RTP / RTCP are delivered (``None`` while
    unknown); ``latched`` tells whether ``endpoint`` was learnt from the endpoint's packets,
    ``rtcp_latched`` whether ``rtcp_endpoint`` was (else it is the RTP endpoint's port + 1), or
    whether ``add_session`` started them latched.
    """

    packets_in: int
    bytes_in: int
    packets_out: int
    bytes_out: int
    drops: int
    last_seen: float | None
    endpoint: tuple[str, int] | None
    rtcp_endpoint: tuple[str, int] | None
    latched: bool
    rtcp_latched: bool
    rtp_port: int
    rtcp_port: int | None


class TrafficCounters(TypedDict):
    """Datagrams and their bytes (overlay header included where there is one)."""

    packets: int
    bytes: int


class RelayCounters(TypedDict):
    """``Relay.counters()``: the whole relay since it was created.

    ``drops`` has every name of ``DROP_REASONS``; ``links`` maps a destination media id of the
    next-hop table to what was sent toward it (kept across ``set_next_hops``); ``overlay_in``
    counts datagrams received on the overlay socket; ``sessions`` is the number of sessions;
    ``liveness_stalls`` the liveness ticks that came late because the loop could not run (their
    delay did not count toward any peer's silence).
    """

    drops: dict[str, int]
    links: dict[int, TrafficCounters]
    overlay_in: TrafficCounters
    sessions: int
    liveness_stalls: int


class LivenessCounters(TypedDict):
    """``Relay.liveness()``, per peer: ``silent`` when no liveness echo came back for longer than
    the detection time (as of the loop's last tick, or until the reply that ended it);
    ``heard`` the CLOCK_MONOTONIC time in seconds of the last reply (``None``: none yet);
    ``sent`` and ``answered`` echoes since the peer was first set; ``detection`` the detection
    time in force for this peer, in seconds (the configured one, or longer where its answers'
    spacing varies: ``Relay.set_liveness``)."""

    silent: bool
    heard: float | None
    sent: int
    answered: int
    detection: float
