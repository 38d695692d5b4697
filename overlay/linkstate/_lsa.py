"""Link-state advertisements: what one node says about its links to its peers.

An LSA is the unit of flooding (RFC 2328's idea, much simplified): its ``origin`` node owns it and
is the only node that creates new instances of it, each with a higher ``seq``. Every other node
stores the newest instance it has seen and passes it on. ``age`` is how old the instance was when
it was sent; a receiver adds the time it has held it (see ``LinkStateDb``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class LinkMetrics:
    """The origin's view of its link to one peer, as measured by its probes and SIP traffic.

    ``rtt_ms`` and ``jitter_ms`` are smoothed round-trip time and its variation; ``loss_ratio``
    is the fraction of recent probes lost (0..1); ``retrans_ratio`` is SIP retransmissions sent
    to that peer per request sent on real traffic (0..1, capped); ``admin_cost`` is the operator's
    extra cost in milliseconds (config, later an override with expiry). A link that is not ``up``
    carries no meaningful metrics. ``grace``: the peer is a pair member that fell silent and is
    in its takeover grace (``Lsa.takeover_grace_s``): ``up`` stays true, with the last metrics.
    """

    neighbor: str
    up: bool
    rtt_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_ratio: float = 0.0
    retrans_ratio: float = 0.0
    admin_cost: float = 0.0
    grace: bool = False

    def measurements(self) -> dict[str, float]:
        """The metrics by name (``METRIC_NAMES``), as a routing graph's edge attributes and the
        LSA's protobuf ``Link`` name them."""
        # Spelled out rather than read through METRIC_NAMES: encoding an LSA calls this once
        # per link for every peer it goes to, and a literal is several times faster.
        return {
            "rtt_ms": self.rtt_ms,
            "jitter_ms": self.jitter_ms,
            "loss_ratio": self.loss_ratio,
            "retrans_ratio": self.retrans_ratio,
            "admin_cost": self.admin_cost,
        }


#: The names of a link's metrics: the fields of ``LinkMetrics`` but whom it leads to and whether
#: it is up. Those named ``*_ratio`` are fractions (0..1), the others milliseconds.
METRIC_NAMES = tuple(
    f.name for f in fields(LinkMetrics) if f.name not in ("neighbor", "up", "grace")
)


@dataclass(frozen=True, slots=True)
class Lsa:
    """One instance of a node's advertisement.

    ``links`` is sorted by neighbor id, so that equal states compare (and serialise) equal.
    ``draining`` marks a node that takes no new calls as transit or edge (NOC Drain, later).
    ``takeover_grace_s`` (a pair member's, else 0) is how long its peers keep it as a
    destination after it falls silent, for its standby to take its address over (RFC 3623's
    graceful-restart helper mode, for a pair).
    """

    origin: str
    seq: int
    age: float
    region: str
    az: str
    links: tuple[LinkMetrics, ...]
    draining: bool = False
    takeover_grace_s: float = 0.0
    #: Random per start of the origin's call state (a pair's promoted standby keeps the one
    #: its active had): when it changes, the calls anchored there are gone.
    state_epoch: bytes = b""

    def link(self, neighbor: str) -> LinkMetrics | None:
        """The origin's link to ``neighbor``, or ``None`` when it does not report one."""
        for link in self.links:
            if link.neighbor == neighbor:
                return link
        return None
