"""LSAs to and from their protobuf form (proto/overlay/v1/linkstate.proto).

Decoding reads what a peer sent, so it checks everything routing relies on: node ids in the
config's alphabet, finite non-negative metrics, ratios within 0..1, a bounded number of links and
no duplicates. The only exception it raises is ``BadLsa``; the flooding shell drops and counts
such messages instead of installing them.
"""

from __future__ import annotations

import math
import re

from overlay.v1 import linkstate_pb2

from ._lsa import METRIC_NAMES, LinkMetrics, Lsa

MAX_LINKS = 1024
_NODE_ID = re.compile(r"[a-z0-9-]{1,63}")
_MAX_MS = 3_600_000.0  # one hour: anything larger is nonsense, not a slow link
_MAX_GRACE_S = 60.0  # a takeover longer than this is a dead node
_MAX_EPOCH_BYTES = 32
#: The largest value of each metric: ratios are fractions, the others milliseconds.
_METRIC_LIMITS = {name: 1.0 if name.endswith("_ratio") else _MAX_MS for name in METRIC_NAMES}


class BadLsa(Exception):
    """A peer's LSA that cannot be used; the message says why."""


def lsa_to_message(lsa: Lsa) -> linkstate_pb2.Lsa:
    return linkstate_pb2.Lsa(
        origin=lsa.origin,
        seq=lsa.seq,
        age=lsa.age,
        region=lsa.region,
        az=lsa.az,
        draining=lsa.draining,
        takeover_grace_s=lsa.takeover_grace_s,
        state_epoch=lsa.state_epoch,
        links=[
            linkstate_pb2.Link(
                neighbor=link.neighbor, up=link.up, grace=link.grace, **link.measurements()
            )
            for link in lsa.links
        ],
    )


def lsa_from_message_untrusted(message: linkstate_pb2.Lsa) -> Lsa:
    """The ``Lsa`` a peer sent, validated.

    Raises:
        BadLsa: a field is out of range; nothing of the message is kept.
    """
    _check_node_id(message.origin, "origin")
    if not math.isfinite(message.age) or message.age < 0:
        raise BadLsa(f"bad age {message.age!r}")
    if len(message.links) > MAX_LINKS:
        raise BadLsa(f"{len(message.links)} links (limit {MAX_LINKS})")
    if len(message.state_epoch) > _MAX_EPOCH_BYTES:
        raise BadLsa(f"state_epoch of {len(message.state_epoch)} bytes")
    grace = message.takeover_grace_s
    if not math.isfinite(grace) or not 0.0 <= grace <= _MAX_GRACE_S:
        raise BadLsa(f"bad takeover_grace_s {grace!r}")
    for name, value in (("region", message.region), ("az", message.az)):
        if len(value) > 64 or not value.isprintable():
            raise BadLsa(f"bad {name} {value[:64]!r}")
    links = []
    seen = set()
    for link in message.links:
        _check_node_id(link.neighbor, "neighbor")
        if link.neighbor in seen or link.neighbor == message.origin:
            raise BadLsa(f"duplicate or self link {link.neighbor!r}")
        seen.add(link.neighbor)
        metrics = {name: getattr(link, name) for name in METRIC_NAMES}
        for name, value in metrics.items():
            if not math.isfinite(value) or not 0.0 <= value <= _METRIC_LIMITS[name]:
                raise BadLsa(f"link {link.neighbor}: bad {name} {value!r}")
        links.append(LinkMetrics(link.neighbor, link.up, **metrics, grace=link.grace and link.up))
    links.sort(key=lambda item: item.neighbor)
    return Lsa(
        origin=message.origin,
        seq=message.seq,
        age=message.age,
        region=message.region,
        az=message.az,
        links=tuple(links),
        draining=message.draining,
        takeover_grace_s=grace,
        state_epoch=message.state_epoch,
    )


def _check_node_id(value: str, what: str) -> None:
    if not _NODE_ID.fullmatch(value):
        raise BadLsa(f"bad {what} {value[:64]!r}")
