"""The standby's side of pair replication: the active's batches applied, live, to its own owners.

``ReplicaStore`` keeps no copy of the calls. Each ``CallState`` goes straight into the
standby's own objects through their restore APIs: the call book (``CallTracker.restore``), the
dialog book (``DialogBook.restore``) and the media edge (``MediaEdge.restore_call``, whose relay
sessions are foreign until a takeover promotes them). A ``CallGone`` ends what the standby holds
of the call: its media sessions (their ports freed), its dialog entry, and its record (moved to
the history as the active's last record says, else as ``OVER_ON_THE_ACTIVE``).

Batches must follow each other: a delta batch starts at the last applied seq + 1 of the epoch
held. Anything else (an unknown epoch, a gap, records out of order) raises ``ResyncNeeded``:
the follower closes its stream and dials again with what it holds, and the active sends a
snapshot. A snapshot (``snapshot_begin`` .. ``snapshot_end``, one seq) is applied as a diff:
each call it names is restored as any ``CallState`` is, which leaves unchanged relay sessions
with their sockets, and at its end every call it did not name is ended. A record the owners
refuse also raises ``ResyncNeeded``, and forgets the epoch: the calls may then be partly
applied, and only a snapshot makes them whole again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NoReturn

from overlay.linkstate import BadLsa, Lsa, lsa_from_message_untrusted
from overlay.media import CallMediaState, MediaEdge, PortTaken
from overlay.noc import CallRecord, CallState, CallTracker
from overlay.sip import DialogBook, LocalProtocolError, ProxyCore
from overlay.v1 import pair_pb2

from ._codec import BadRecord, call_gone_from_message_untrusted, call_state_from_message_untrusted

#: The final reason of a call the active ended without telling how (its record was gone).
OVER_ON_THE_ACTIVE = "over on the active"


class ResyncNeeded(Exception):
    """The batch cannot be applied after what the store holds: the follower must dial again and
    take a snapshot. The message says why."""


class ReplicaStore:
    """See the module docstring.

    Args:
        calls, dialogs, edge: this node's owners of call state; ``dialogs`` and ``edge`` are
            ``None`` when the node has no dialog book or no media plane.
        core: the proxy core, which keeps the INVITEs until a takeover (``None``: none).
    """

    def __init__(
        self,
        calls: CallTracker,
        dialogs: DialogBook | None,
        edge: MediaEdge | None,
        core: ProxyCore | None = None,
    ) -> None:
        self._calls = calls
        self._dialogs = dialogs
        self._edge = edge
        self._core = core
        #: Takes the active's LSAs (its mesh's link-state database), with this node's clock
        #: when they were sent; ``None``: not kept.
        self.take_lsa: Callable[[Lsa, float], object] | None = None
        #: The active's epoch of the state held (``b""``: none, a snapshot is needed).
        self.epoch = b""
        #: The seq of the last record applied.
        self.applied_seq = 0
        #: This node's wall clock minus the ``sent_at`` of the last batch applied, in ms.
        self.lag_ms = 0.0
        #: Snapshots applied, the first one included.
        self.snapshots = 0
        self._held: dict[str, None] = {}  # calls with state here, in order
        self._named: set[str] | None = None  # during a snapshot: the calls it named so far
        self._snapshot: tuple[bytes, int] = (b"", 0)  # (epoch, seq) of the snapshot applied

    @property
    def calls(self) -> int:
        """Calls this node holds the active's state of."""
        return len(self._held)

    def apply(self, batch: pair_pb2.StateBatch, now: float, now_wall: float) -> None:
        """Apply one batch from the active.

        Args:
            batch: the next batch of the stream.
            now: this node's clock; now_wall: its wall clock, to move the active's times onto
                this clock (through the batch's ``sent_at``) and to measure the lag.

        Raises:
            ResyncNeeded: the batch does not follow what is held, or the owners refused one of
                its records (the epoch is then forgotten). Either way the stream is over.
        """
        first_seq, epoch = batch.first_seq, batch.epoch
        snapshot = batch.snapshot_begin or self._named is not None
        if batch.snapshot_begin:
            self._named, self._snapshot = set(), (epoch, first_seq)
        elif snapshot:
            if (epoch, first_seq) != self._snapshot:
                self._resync(f"snapshot {self._snapshot[1]} broken off by seq {first_seq}")
        elif not self.epoch or epoch != self.epoch:
            raise ResyncNeeded("a batch of an epoch this node holds no snapshot of")
        elif first_seq != self.applied_seq + 1:
            raise ResyncNeeded(f"records {self.applied_seq + 1}..{first_seq - 1} missed")
        records = batch.records
        wanted = (
            [first_seq] * len(records) if snapshot else range(first_seq, first_seq + len(records))
        )
        if [record.seq for record in records] != list(wanted):
            self._resync(f"records out of order in the batch of seq {first_seq}")
        # This node's clock when the active sent the batch: the active's times are ages then.
        at = now - (now_wall - batch.sent_at)
        for record in records:
            try:
                call_id = self._apply_record(record, at)
            except (BadRecord, LocalProtocolError, ValueError, PortTaken) as error:
                self._resync(f"record {record.seq} not applied: {error}")
            if self._named is not None and call_id is not None:
                self._named.add(call_id)
        if self._named is not None:
            if not batch.snapshot_end:
                return
            for call_id in [key for key in self._held if key not in self._named]:
                self._end(call_id, None, at)
            self._named = None
            self.epoch, self.applied_seq = self._snapshot
            self.snapshots += 1
        elif records:
            self.applied_seq = records[-1].seq
        self.lag_ms = (now_wall - batch.sent_at) * 1000.0

    def _resync(self, why: str) -> NoReturn:
        """Forget the epoch (the held calls wait for a snapshot to be made whole) and raise."""
        self.epoch = b""
        self._named = None
        raise ResyncNeeded(why)

    def _apply_record(self, record: pair_pb2.Record, at: float) -> str | None:
        """Apply one record; returns its call id (``None``: an LSA)."""
        if record.HasField("lsa"):
            try:
                lsa = lsa_from_message_untrusted(record.lsa)
            except BadLsa as error:
                raise BadRecord(f"record {record.seq}: LSA: {error}") from None
            if self.take_lsa is not None:
                self.take_lsa(lsa, at)
            return None
        if record.HasField("gone"):
            call_id, final = call_gone_from_message_untrusted(record.gone, at=at)
            self._end(call_id, final, at)
            return call_id
        if not record.HasField("call"):
            raise BadRecord(f"record {record.seq} has no call")
        replica = call_state_from_message_untrusted(record.call, at=at)
        call_id = replica.record.call_id
        self._calls.restore(replica.record)
        if self._dialogs is not None:
            if replica.dialog is None:
                self._dialogs.forget(call_id)
            else:
                self._dialogs.restore(replica.dialog)
        if self._edge is not None:
            self._edge.restore_call(replica.media or CallMediaState(call_id))
        if self._core is not None:
            self._core.restore_handovers(call_id, replica.invites)
        self._held[call_id] = None
        return call_id

    def _end(self, call_id: str, final: CallRecord | None, at: float) -> None:
        """The call is over at the active: end what this node holds of it."""
        if self._dialogs is not None:
            self._dialogs.forget(call_id)
        if self._edge is not None:
            self._edge.restore_call(CallMediaState(call_id))
        if self._core is not None:
            self._core.restore_handovers(call_id, ())
        live = self._calls.live(call_id)
        if final is not None:
            self._calls.restore(final)
        elif live is not None:
            over = dataclasses.replace(
                live, state=CallState.ENDED, ended=at, final_reason=OVER_ON_THE_ACTIVE
            )
            self._calls.restore(over)
        self._held.pop(call_id, None)
