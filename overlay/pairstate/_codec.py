"""A call's state to and from its protobuf form (proto/overlay/v1/pair.proto).

The owners' own records cross the wire: the call book's ``CallRecord``, the dialog book's
``EdgeDialog``, the media edge's ``CallMediaState`` (with its sessions) and the proxy core's
``InviteHandover`` s. This is the one place that knows both forms.

The call record's times are on the trio clock of the node that holds it, and the two members'
clocks differ (trio starts each at a random offset), so they travel as ages: seconds before
``at``, the sending node's clock when the batch was sent. The receiver passes its own clock at
that same moment (``ReplicaStore`` derives it from the batch's wall-clock ``sent_at``), which
puts them on its clock. A media session's ``created`` travels as it is: a restored session
keeps its active's value, on the active's clock (``MediaSession``).

Decoding reads the other member's records, so it checks what the owners' restore APIs would
trip over (enum values, ports, ids, finite times); its only exception is ``BadRecord``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from overlay.media import (
    CallMediaState,
    MediaSession,
    OverlaySession,
    PortPair,
    SessionState,
    Side,
)
from overlay.noc import CallRecord, CallRole, CallState
from overlay.sip import EdgeDialog, InviteHandover, LocalProtocolError, Peer, Target
from overlay.v1 import pair_pb2

_ROLES = {
    CallRole.INGRESS: pair_pb2.CallRecord.INGRESS,
    CallRole.EGRESS: pair_pb2.CallRecord.EGRESS,
}
_STATES = {
    CallState.TRYING: pair_pb2.CallRecord.TRYING,
    CallState.RINGING: pair_pb2.CallRecord.RINGING,
    CallState.ANSWERED: pair_pb2.CallRecord.ANSWERED,
    CallState.ENDED: pair_pb2.CallRecord.ENDED,
    CallState.FAILED: pair_pb2.CallRecord.FAILED,
    CallState.CANCELLED: pair_pb2.CallRecord.CANCELLED,
}
_SIDES = {Side.CALLER: pair_pb2.MEDIA_SIDE_CALLER, Side.CALLEE: pair_pb2.MEDIA_SIDE_CALLEE}
_ROLE_OF = {wire: role for role, wire in _ROLES.items()}
_STATE_OF = {wire: state for state, wire in _STATES.items()}
_SIDE_OF = {wire: side for side, wire in _SIDES.items()}
_TRANSPORTS = frozenset({"udp", "tcp", "tls"})
_MEDIA_DIRECTIONS = frozenset({"", "entering", "leaving"})


class BadRecord(Exception):
    """A record from the other member that cannot be applied; the message says why."""


@dataclass(frozen=True, slots=True)
class CallReplica:
    """A ``CallState`` record decoded, as the owners' restore APIs take it.

    Attributes:
        record: for ``CallTracker.restore``, on the receiver's clock.
        dialog: for ``DialogBook.restore``; ``None``: the call has no dialog entry.
        media: for ``MediaEdge.restore_call``; ``None``: the sender has no media plane.
        invites: for ``ProxyCore.restore_handovers``.
    """

    record: CallRecord
    dialog: EdgeDialog | None
    media: CallMediaState | None
    invites: tuple[InviteHandover, ...] = ()


# -- encoding (the active) ---------------------------------------------------------------------


def call_state_message(
    record: CallRecord,
    dialog: EdgeDialog | None,
    media: CallMediaState | None,
    *,
    at: float,
    invites: tuple[InviteHandover, ...] = (),
) -> pair_pb2.CallState:
    """A live call's state; ``at``: this node's clock when the batch is sent."""
    return pair_pb2.CallState(
        call_id=record.call_id,
        record=_record_message(record, at),
        dialog=None if dialog is None else _dialog_message(dialog),
        media=None if media is None else _media_message(media),
        invites=[_invite_message(invite) for invite in invites],
    )


def _peer_message(peer: Peer) -> pair_pb2.SipPeer:
    return pair_pb2.SipPeer(transport=peer.transport, host=peer.host, port=peer.port)


def _invite_message(invite: InviteHandover) -> pair_pb2.InviteContext:
    message = pair_pb2.InviteContext(
        server_key=invite.server_key,
        server_peer=_peer_message(invite.server_peer),
        request=invite.request,
        last_status=invite.last_status,
        forward=invite.forward,
        media=invite.media or "",
        from_overlay=invite.from_overlay,
        far_node=invite.far_node,
        alternates=[
            pair_pb2.EgressTarget(
                host=target.host,
                port=target.port or 0,
                transport=target.transport or "",
                route=target.route or "",
                egress=target.egress or "",
            )
            for target in invite.alternates
        ],
        next_hops=[_peer_message(peer) for peer in invite.next_hops],
        attempts=invite.attempts,
        egress_tries=invite.egress_tries,
        provisional=invite.provisional,
        replied=invite.replied,
        cancelled=invite.cancelled,
    )
    if invite.last_response is not None:
        message.last_response = invite.last_response
    if invite.egress is not None:
        message.egress = invite.egress
    if invite.route is not None:
        message.route = invite.route
    if invite.branch is not None and invite.branch_peer is not None:
        message.branch = invite.branch
        message.branch_peer.CopyFrom(_peer_message(invite.branch_peer))
    if invite.timer_c_left is not None:
        message.timer_c_left = invite.timer_c_left
    return message


def call_gone_message(call_id: str, final: CallRecord | None, *, at: float) -> pair_pb2.CallGone:
    """A call over here; ``final``: its last record, if the call book still has it."""
    return pair_pb2.CallGone(
        call_id=call_id, final=None if final is None else _record_message(final, at)
    )


def _record_message(record: CallRecord, at: float) -> pair_pb2.CallRecord:
    message = pair_pb2.CallRecord(
        role=_ROLES[record.role],
        state=_STATES[record.state],
        from_uri=record.from_uri,
        to_uri=record.to_uri,
        request_uri=record.request_uri,
        far_node=record.far_node,
        started_ago=at - record.started,
        final_status=record.final_status,
        final_reason=record.final_reason,
        requests=record.requests,
        responses=record.responses,
        had_media=record.had_media,
        egress_tries=record.egress_tries,
        setup_extra_s=record.setup_extra,
    )
    if record.answered is not None:
        message.answered_ago = at - record.answered
    if record.ended is not None:
        message.ended_ago = at - record.ended
    return message


def _dialog_message(dialog: EdgeDialog) -> pair_pb2.EdgeDialog:
    return pair_pb2.EdgeDialog(
        far_node=dialog.far_node,
        party=dialog.party,
        far=dialog.far,
        target=dialog.target,
        route_set=dialog.route_set,
        peer=_peer_message(dialog.peer),
        far_cseq=dialog.far_cseq,
    )


def _media_message(media: CallMediaState) -> pair_pb2.CallMedia:
    message = pair_pb2.CallMedia(
        answered=media.answered,
        delayed=media.delayed,
        origins=[pair_pb2.SdpOrigin(side=_SIDES[side], sdp=sdp) for side, sdp in media.origins],
        sessions=[
            pair_pb2.SessionState(
                session=_session_message(state.session),
                confirmed=state.confirmed,
                rtp_latched=_address_message(state.rtp_latched),
                rtcp_latched=_address_message(state.rtcp_latched),
            )
            for state in media.sessions
        ],
        forwarding=[_session_message(session) for session in media.forwarding],
    )
    if media.caller_tag is not None:
        message.caller_tag = media.caller_tag
    return message


def _session_message(session: MediaSession) -> pair_pb2.MediaSession:
    remote = session.remote
    return pair_pb2.MediaSession(
        session_id=session.session_id,
        side=_SIDES[session.side],
        index=session.index,
        rtp_port=session.ports.rtp,
        rtcp_port=session.ports.rtcp or 0,
        created=session.created,
        endpoint=_address_message(session.endpoint),
        remote=None
        if remote is None
        else pair_pb2.RemoteSession(node_id=remote.node_id, session_id=remote.session_id),
    )


def _address_message(address: tuple[str, int] | None) -> pair_pb2.MediaAddress | None:
    return None if address is None else pair_pb2.MediaAddress(host=address[0], port=address[1])


# -- decoding (the follower) -------------------------------------------------------------------


def call_state_from_message_untrusted(message: pair_pb2.CallState, *, at: float) -> CallReplica:
    """The call state the other member sent; ``at``: this node's clock when it was sent.

    Raises:
        BadRecord: a field that the owners could not take; nothing of the record is kept.
    """
    call_id = _call_id(message.call_id)
    if not message.HasField("record"):
        raise BadRecord(f"call {call_id!r}: a live call's state without its record")
    record = _record(call_id, message.record, at)
    if record.state.over:
        raise BadRecord(f"call {call_id!r}: a live call's state with an over record")
    dialog = _dialog(call_id, message.dialog) if message.HasField("dialog") else None
    media = _media(call_id, message.media) if message.HasField("media") else None
    invites = tuple(_invite(call_id, invite) for invite in message.invites)
    return CallReplica(record, dialog, media, invites)


def call_gone_from_message_untrusted(
    message: pair_pb2.CallGone, *, at: float
) -> tuple[str, CallRecord | None]:
    """The call id of a ``CallGone`` and the call's last record, if it came with one.

    Raises:
        BadRecord: as ``call_state_from_message_untrusted``, or a last record not over.
    """
    call_id = _call_id(message.call_id)
    if not message.HasField("final"):
        return call_id, None
    final = _record(call_id, message.final, at)
    if not final.state.over:
        raise BadRecord(f"call {call_id!r}: gone, with a record of a call not over")
    return call_id, final


def _call_id(call_id: str) -> str:
    if not call_id:
        raise BadRecord("a record without a Call-ID")
    return call_id


def _record(call_id: str, message: pair_pb2.CallRecord, at: float) -> CallRecord:
    role, state = _ROLE_OF.get(message.role), _STATE_OF.get(message.state)
    if role is None or state is None:
        raise BadRecord(f"call {call_id!r}: role {message.role}, state {message.state}")
    return CallRecord(
        call_id=call_id,
        role=role,
        state=state,
        from_uri=message.from_uri,
        to_uri=message.to_uri,
        request_uri=message.request_uri,
        far_node=message.far_node,
        started=at - _seconds(call_id, message.started_ago),
        answered=at - _seconds(call_id, message.answered_ago)
        if message.HasField("answered_ago")
        else None,
        ended=at - _seconds(call_id, message.ended_ago) if message.HasField("ended_ago") else None,
        final_status=message.final_status,
        final_reason=message.final_reason,
        requests=message.requests,
        responses=message.responses,
        had_media=message.had_media,
        egress_tries=message.egress_tries,
        setup_extra=_seconds(call_id, message.setup_extra_s),
    )


def _seconds(call_id: str, value: float) -> float:
    if not math.isfinite(value):
        raise BadRecord(f"call {call_id!r}: a time of {value!r} s")
    return value


def _peer(call_id: str, what: str, peer: pair_pb2.SipPeer) -> Peer:
    if peer.transport not in _TRANSPORTS or not peer.host or not 0 < peer.port < 65536:
        raise BadRecord(f"call {call_id!r}: {what} {peer.transport}:{peer.host}:{peer.port}")
    return Peer(peer.transport, peer.host, peer.port)


def _invite(call_id: str, message: pair_pb2.InviteContext) -> InviteHandover:
    if message.media not in _MEDIA_DIRECTIONS:
        raise BadRecord(f"call {call_id!r}: INVITE media direction {message.media!r}")
    timer_c = message.timer_c_left if message.HasField("timer_c_left") else None
    if timer_c is not None and not (math.isfinite(timer_c) and timer_c >= 0):
        raise BadRecord(f"call {call_id!r}: Timer C left {timer_c!r}")
    branch = message.branch if message.HasField("branch") else None
    return InviteHandover(
        call_id=call_id,
        server_key=tuple(message.server_key),
        server_peer=_peer(call_id, "INVITE peer", message.server_peer),
        request=message.request,
        last_response=message.last_response if message.HasField("last_response") else None,
        last_status=message.last_status,
        forward=message.forward,
        media=message.media or None,
        from_overlay=message.from_overlay,
        far_node=message.far_node,
        egress=message.egress if message.HasField("egress") else None,
        route=message.route if message.HasField("route") else None,
        alternates=tuple(
            Target(
                target.host,
                target.port or None,
                target.transport or None,
                route=target.route or None,
                egress=target.egress or None,
            )
            for target in message.alternates
        ),
        next_hops=tuple(_peer(call_id, "next hop", peer) for peer in message.next_hops),
        attempts=message.attempts,
        egress_tries=message.egress_tries,
        branch=branch,
        branch_peer=None if branch is None else _peer(call_id, "branch", message.branch_peer),
        provisional=message.provisional,
        replied=message.replied,
        cancelled=message.cancelled,
        timer_c_left=timer_c,
    )


def _dialog(call_id: str, message: pair_pb2.EdgeDialog) -> EdgeDialog:
    peer = _peer(call_id, "dialog peer", message.peer)
    return EdgeDialog(
        call_id=call_id,
        far_node=message.far_node,
        party=message.party,
        far=message.far,
        target=message.target,
        route_set=tuple(message.route_set),
        peer=peer,
        far_cseq=message.far_cseq,
    )


def _media(call_id: str, message: pair_pb2.CallMedia) -> CallMediaState:
    try:
        return CallMediaState(
            call_id=call_id,
            caller_tag=message.caller_tag if message.HasField("caller_tag") else None,
            answered=message.answered,
            delayed=message.delayed,
            origins=tuple((_side(origin.side), origin.sdp) for origin in message.origins),
            sessions=tuple(
                SessionState(
                    _session(call_id, state.session),
                    state.confirmed,
                    _address(state.rtp_latched) if state.HasField("rtp_latched") else None,
                    _address(state.rtcp_latched) if state.HasField("rtcp_latched") else None,
                )
                for state in message.sessions
            ),
            forwarding=tuple(_session(call_id, session) for session in message.forwarding),
        )
    except (ValueError, LocalProtocolError) as error:  # PortPair, OverlaySession, _side
        raise BadRecord(f"call {call_id!r}: media: {error}") from None


def _session(call_id: str, message: pair_pb2.MediaSession) -> MediaSession:
    remote = message.remote
    return MediaSession(
        session_id=message.session_id,
        call_id=call_id,
        side=_side(message.side),
        index=message.index,
        ports=PortPair(message.rtp_port, message.rtcp_port or None),
        created=message.created,
        endpoint=_address(message.endpoint) if message.HasField("endpoint") else None,
        remote=OverlaySession(remote.node_id, remote.session_id)
        if message.HasField("remote")
        else None,
    )


def _side(wire: pair_pb2.MediaSide) -> Side:
    side = _SIDE_OF.get(wire)
    if side is None:
        raise ValueError(f"media side {wire}")
    return side


def _address(message: pair_pb2.MediaAddress) -> tuple[str, int]:
    if not message.host or not 0 < message.port < 65536:
        raise ValueError(f"media address {message.host}:{message.port}")
    return message.host, message.port
