"""Where a new request goes: the dialplan's rule, the egress node of an overlay call, and the
refusals of a draining node or an unreachable egress (the proxy core's ``locate``).

An overlay call is sent to its egress node, which applies the rule's target itself. The rule's
``egress`` nodes that are reachable (and, for a new call, not draining) are put in fail-over
order by ``order_egress``: the call goes to the first, and the others ride along in
``Target.alternates`` for the proxy core to try when that one fails the call before answering.
When none is reachable but one would be chosen, the call may wait ``linkstate.route_wait`` for
a route to it (``Target.await_route``): a peer's pause or a link in hold-down then costs set-up
time instead of the call.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from overlay.config import DnsTarget, StaticTarget
from overlay.sip import Refusal, Request, SipUri, Target, TelUri, overlay_route

from ._dialplan import Dialplan, choose_egress, order_egress
from ._view import RouteView

#: Retry-After of a draining node's 503, unless the operator's Drain says otherwise.
DEFAULT_RETRY_AFTER_S = 300


@dataclass
class DrainState:
    """Whether the node takes new calls; changed only by the Control service (Drain,
    Undrain), read for every new INVITE. ``since`` is wall-clock seconds since the epoch."""

    draining: bool = False
    since: float = 0.0
    reason: str = ""
    by: str = ""
    retry_after_s: int = DEFAULT_RETRY_AFTER_S


class CallRouter:
    """The dialplan as the proxy core asks it; see the module docstring.

    Args:
        node_id: this node.
        dialplan: its rules.
        view: the overlay's routes (``None``: no ``[[peers]]``, no egress is reachable).
        drain: this node's drain state.
        route_wait: whether a call may wait for a route to its egress (``route_wait > 0``).
    """

    def __init__(
        self,
        node_id: str,
        dialplan: Dialplan,
        view: RouteView | None,
        drain: DrainState,
        *,
        route_wait: bool,
    ) -> None:
        self.node_id = node_id
        self.dialplan = dialplan
        self._view = view
        self._drain = drain
        self._route_wait = route_wait

    def locate(self, request: Request, uri: SipUri | TelUri) -> Target | Refusal | None:
        """Where ``request`` goes (``None``: no rule matches, 404)."""
        if isinstance(uri, SipUri):
            user, host = uri.user, uri.host
        else:
            user, host = uri.number, ""
        match = self.dialplan.match(user, host)
        if match is None:
            return None
        new_call = request.method == "INVITE" and request.to_tag is None
        if new_call and self._drain.draining:
            return Refusal(503, "Draining", self._drain.retry_after_s)
        if match.rule.egress:
            order = self.egress_order(match.rule.egress, request.call_id, new_call=new_call)
            if isinstance(order, Refusal):
                waiting = None
                if order.reason == "No Route to Egress":
                    waiting = self._awaiting_route(match.rule.egress, request, new_call=new_call)
                return order if waiting is None else waiting
            if order[0] != self.node_id:
                alternates = tuple(self._toward_egress(node) for node in order[1:])
                first = self._toward_egress(order[0])
                return dataclasses.replace(first, alternates=alternates) if alternates else first
        request_uri = None
        if match.user != user and isinstance(uri, SipUri):
            request_uri = str(dataclasses.replace(uri, user=match.user))
        target = match.target
        if isinstance(target, StaticTarget):
            return Target(target.host, target.port, target.transport, "sip", request_uri)
        assert isinstance(target, DnsTarget)
        return Target(target.domain, None, target.transport, target.scheme, request_uri)

    def choose(self, candidates: tuple[str, ...], call_id: str, *, new_call: bool) -> str | Refusal:
        """The egress node of a call among a rule's ``egress`` nodes (this one if it is one),
        or why there is none (see ``egress_order``)."""
        order = self.egress_order(candidates, call_id, new_call=new_call)
        return order if isinstance(order, Refusal) else order[0]

    def egress_order(
        self, candidates: tuple[str, ...], call_id: str, *, new_call: bool
    ) -> list[str] | Refusal:
        """The egress nodes a call tries, in order (``order_egress``; for a new call, those in
        takeover grace last), or why there is none: every reachable one is draining (a new
        call), or none is reachable."""
        view = self._view
        if view is None:
            order = [self.node_id] if self.node_id in candidates else []
        else:
            order = order_egress(
                candidates,
                call_id,
                self.node_id,
                lambda node_id: (
                    view.reachable(node_id) and not (new_call and view.draining(node_id))
                ),
                view.region,
            )
            if new_call:
                # A pair member in takeover grace last: its standby is taking over, so a new
                # call goes there only when no other egress can take it (and then waits for
                # the takeover on its INVITE's retransmissions).
                order.sort(key=view.in_grace)
        if order:
            return order
        if view is not None and any(view.reachable(node_id) for node_id in candidates):
            return Refusal(503, "Egress Draining")
        return Refusal(503, "No Route to Egress")

    def _awaiting_route(
        self, candidates: tuple[str, ...], request: Request, *, new_call: bool
    ) -> Target | None:
        """With every egress unreachable, the egress the call would take, to wait for a route
        to (module notes); ``None``: refuse at once."""
        view = self._view
        if view is None or not self._route_wait:
            return None
        egress = choose_egress(
            candidates,
            request.call_id,
            self.node_id,
            lambda node_id: not (new_call and view.draining(node_id)),
        )
        if egress is None:
            return None
        return dataclasses.replace(self._toward_egress(egress), await_route=egress)

    def _toward_egress(self, egress: str) -> Target:
        """An overlay call: to the egress node, which applies the dialplan's target itself."""
        assert self._view is not None  # an egress other than this node: an overlay node
        address = self._view.sip_address(egress)
        route = overlay_route(egress, address)
        return Target(address.host, address.port, "udp", route=route, egress=egress)
