"""The trunk prober: OPTIONS to every trunk this node sends calls to, on trio (one task).

``TrunkHealth`` (``overlay.routing``) decides everything: which probes leave when, what an
answer proves, UP and DOWN, the order of a trunk's next hops. This shell gives it time, the
node's SIP transport and DNS:

* **Which trunks.** The targets of the dialplan rules whose calls may leave the overlay here
  (``egress`` empty, or naming this node): a ``host:port`` target is one trunk address (a host
  name: each of its A/AAAA addresses); a ``sip:``/``sips:`` target is every address of its
  RFC 3263 list, asked of the ``SipResolver`` the calls use (one cache). A DNS target is looked
  up again when the earliest TTL of the answers it took runs out (RFC 3263 §4.3), after at
  least ``MIN_REFRESH`` and at most ``MAX_REFRESH`` seconds, so the list probed is the list the
  calls get. A failed lookup keeps the addresses found before (a DNS outage does not unlearn a
  trunk) and is tried again after ``RETRY``; ``unresolved`` says why, for ListTrunks.
* **Probes** go from the node's own SIP transport (the listener's socket for UDP, so a trunk
  sees them from the address calls come from); answers come back to the signalling pump,
  whose ``_deliver`` hands those with ``TRUNK_MARK`` to ``handle_answer`` before the proxy core
  sees them. A TLS address found for a domain is checked against that domain, as for a call.
* **Verdicts** are logged (DOWN at WARNING) and published as ``TrunkChanged`` events.

Several workers (``sip.workers > 1``): every worker is a process with its own proxy core, so
each one runs its own ``TrunkHealth`` and prober and orders its own calls by its own probes.
Their probe Call-IDs are chosen so that answers are steered back to the worker that sent them
(``TrunkHealth``); a trunk then gets ``workers`` OPTIONS per probe interval. Sharing one
prober's verdicts between processes would need a channel between the workers for a few
datagrams a second, and a worker whose prober died would lose only its own ordering.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Protocol

import structlog
import trio

from overlay.config import DnsTarget, NodeConfig, StaticTarget
from overlay.linkstate import LinkState
from overlay.noc import EventSink, TrunkChanged, hostport
from overlay.routing import TrunkHealth, TrunkStateChanged, trunk_name
from overlay.shell.transport import ResolutionError, SipResolver
from overlay.sip import Peer

log = structlog.get_logger("overlay.trunks")

#: Seconds between two lookups of a DNS target, whatever its TTL says.
MIN_REFRESH = 1.0
MAX_REFRESH = 60.0
#: Seconds before a failed lookup is tried again.
RETRY = 5.0


class SipSender(Protocol):
    """What the prober needs of the node's SIP transport (``SipTransport``)."""

    def send(self, data: bytes, peer: Peer) -> None: ...

    def verify_as(self, peer: Peer, server_name: str) -> None: ...


def target_name(target: StaticTarget | DnsTarget) -> str:
    """A dialplan target as ListTrunks and the events name it: ``sip:carrier.example``,
    ``198.51.100.7:5060``, with ``;transport=tcp`` when the rule forces one."""
    if isinstance(target, StaticTarget):
        name = hostport(target.host, target.port)
    else:
        name = f"{target.scheme}:{target.domain}"
    return name if target.transport is None else f"{name};transport={target.transport}"


def trunk_targets(config: NodeConfig) -> dict[str, StaticTarget | DnsTarget]:
    """The targets of the dialplan rules whose calls may leave the overlay at this node."""
    node_id = config.node.node_id
    return {
        target_name(rule.target): rule.target
        for rule in config.dialplan
        if not rule.egress or node_id in rule.egress
    }


class TrunkProber:
    """Probes the trunks of one node (or worker); see the module docstring.

    Args:
        health: the trunks' sans-IO state, the one the proxy core asks.
        targets: what to probe, by name (``trunk_targets``).
        resolver: the node's RFC 3263 resolver (shared with the signalling pump).
        events: where verdicts are published (the node's ``EventHub.publish``).
        clock: the node's clock (``trio.current_time``).
    """

    def __init__(
        self,
        health: TrunkHealth,
        targets: Mapping[str, StaticTarget | DnsTarget],
        *,
        resolver: SipResolver,
        events: EventSink,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.health = health
        self.targets = dict(targets)
        self._resolver = resolver
        self._events = events
        self._clock = clock
        self._resolved: dict[str, list[Peer]] = {}
        #: Target name -> why its last lookup failed.
        self.unresolved: dict[str, str] = {}
        self.lookups = 0
        self.lookup_failures = 0
        self._wake = trio.Event()
        self._sleeping_until = math.inf

    async def run(
        self,
        transport: SipSender,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Look the targets up and probe their addresses until cancelled."""
        async with trio.open_nursery() as nursery:
            for name, target in self.targets.items():
                nursery.start_soon(self._keep_resolved, name, target, transport)
            nursery.start_soon(self._timer_loop, transport)
            task_status.started()

    # -- answers (from the signalling pump) --------------------------------------------------

    def handle_answer(self, data: bytes, peer: Peer) -> bool:
        """Take ``data`` if it answers one of this node's trunk probes (``False``: hand it to
        the proxy core)."""
        if not self.health.receive_answer_untrusted(data, peer, self._clock()):
            return False
        self._publish_changes()
        return True

    # -- DNS -----------------------------------------------------------------------------------

    async def _keep_resolved(
        self, name: str, target: StaticTarget | DnsTarget, transport: SipSender
    ) -> None:
        """Keep ``name``'s addresses current: look it up now and whenever its TTL runs out."""
        if isinstance(target, StaticTarget):
            query: DnsTarget | tuple[str, str, int | None, str | None] = (
                "sip",
                target.host,
                target.port,
                target.transport,
            )
            domain = target.host
        else:
            query, domain = target, target.domain
        while True:
            expiries: list[float] = []
            self.lookups += 1
            try:
                found = await self._resolver.resolve(query, expiries=expiries)
            except ResolutionError as error:
                self.lookup_failures += 1
                if self.unresolved.get(name) != str(error):
                    log.warning("trunk lookup failed", target=name, reason=str(error))
                self.unresolved[name] = str(error)
                await trio.sleep(RETRY)
                continue
            except Exception:
                # As in the signalling pump: a bug costs this lookup, never the node.
                self.lookup_failures += 1
                log.exception("internal error looking a trunk up", target=name)
                self.unresolved[name] = "internal error"
                await trio.sleep(RETRY)
                continue
            self.unresolved.pop(name, None)
            peers = [Peer(r.transport, r.host, r.port) for r in found]
            for peer in peers:
                if peer.transport == "tls" and peer.host != domain:
                    transport.verify_as(peer, domain)
            if peers != self._resolved.get(name):
                log.info("trunk addresses", target=name, trunks=[trunk_name(p) for p in peers])
                self._resolved[name] = peers
                self.health.set_trunks(self._resolved, self._clock())
                self._wake.set()
            if not expiries:
                return  # an IP address: nothing to look up again
            now = self._clock()
            wait = min(max(min(expiries) - now, MIN_REFRESH), MAX_REFRESH)
            await trio.sleep(wait)

    # -- time ----------------------------------------------------------------------------------

    async def _timer_loop(self, transport: SipSender) -> None:
        health = self.health
        while True:
            deadline = health.get_timer()
            self._sleeping_until = math.inf if deadline is None else deadline
            self._wake = trio.Event()
            with trio.move_on_at(self._sleeping_until):
                await self._wake.wait()
            self._sleeping_until = math.inf
            now = self._clock()
            health.handle_timer(now)
            for data, peer in health.datagrams_to_send(now):
                transport.send(data, peer)
            self._publish_changes()

    def _publish_changes(self) -> None:
        while (event := self.health.next_event()) is not None:
            self._publish(event)

    def _publish(self, event: TrunkStateChanged) -> None:
        stats = event.statistics
        up = stats.state is LinkState.UP
        name = trunk_name(stats.trunk)
        # A trunk going down costs calls their first choice: the NOC must see it at WARNING.
        emit = log.info if up else log.warning
        emit(
            "trunk " + stats.state.value.lower(),
            trunk=name,
            targets=list(stats.targets),
            rtt_ms=stats.rtt_ms,
            last_status=stats.last_status or None,
            silent_ms=stats.silent_ms,
        )
        self._events(
            TrunkChanged(name, stats.targets, up, stats.rtt_ms, stats.last_status, stats.silent_ms)
        )

    # -- reading -------------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """The trunks' counters, by dotted name (GetCounters, ``/metrics``)."""
        counters = self.health.counters()
        counters["trunks.lookups"] = self.lookups
        counters["trunks.lookup_failures"] = self.lookup_failures
        return counters
