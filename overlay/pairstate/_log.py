"""The active's side of pair replication: which calls changed, read back whole, numbered.

``ReplicaLog`` never holds a call's state itself. The owners (the call book, the dialog book, the
media edge) mark a call when it may have changed (``mark``); ``flush`` reads each marked call
back through their read APIs, which change nothing, and makes one ``StateBatch``: a
``CallState`` for a live call, a ``CallGone`` for one the call book holds no more. So the
owners stay the only writers of their state (STYLE.md §3), and a call that changed ten times
in one signalling turn costs one record.

Every record takes the next ``seq``. While no follower listens (``follow`` not called, or
``unfollow`` since), ``flush`` reads nothing and still counts the records it would have made,
so a follower that comes back at an older seq is owed a snapshot. The log knows which calls
are live (those it last found live), and a snapshot is one read of each, all under one seq.
"""

from __future__ import annotations

import itertools

from overlay.linkstate import LinkStateDb, Lsa, lsa_to_message
from overlay.media import MediaEdge
from overlay.noc import CallTracker
from overlay.sip import DialogBook, ProxyCore
from overlay.v1 import pair_pb2

from ._codec import call_gone_message, call_state_message

#: Bytes of an epoch: drawn at random when a node starts without a replica.
EPOCH_SIZE = 16
#: Records in one batch at most: a turn that changed more calls leaves the rest for the next
#: flush, and a snapshot is cut into batches this size, so no message nears gRPC's 4 MB.
MAX_BATCH_RECORDS = 256


class ReplicaLog:
    """See the module docstring.

    Args:
        epoch: ``EPOCH_SIZE`` random bytes naming this node's run (a follower of another run
            needs a snapshot).
        calls, dialogs, edge: the owners of the calls' state; ``dialogs`` and ``edge`` are
            ``None`` when the node has no dialog book or no media plane.
        core: the proxy core, whose INVITEs at the edge go with their call (``None``: none).

    Raises:
        ValueError: an epoch of another size.
    """

    def __init__(
        self,
        epoch: bytes,
        calls: CallTracker,
        dialogs: DialogBook | None,
        edge: MediaEdge | None,
        core: ProxyCore | None = None,
    ) -> None:
        if len(epoch) != EPOCH_SIZE:
            raise ValueError(f"an epoch is {EPOCH_SIZE} bytes, not {len(epoch)}")
        self.epoch = epoch
        #: The seq of the last record made (counted also while nobody follows).
        self.last_seq = 0
        self._calls = calls
        self._dialogs = dialogs
        self._edge = edge
        self._core = core
        #: The mesh's link-state database, once there is one: its LSAs go to the follower as
        #: they change, so a standby that takes over has the routes at once.
        self.links: LinkStateDb | None = None
        self._lsas_sent: dict[str, int] = {}  # origin -> seq the follower has
        self._links_version = -1
        self._dirty: dict[str, None] = {}  # marked since the last flush, in order
        self._live: dict[str, None] = {}  # found live at their last read
        self._following = False

    @property
    def following(self) -> bool:
        """Whether a follower takes the batches (between ``follow`` and ``unfollow``)."""
        return self._following

    @property
    def calls(self) -> int:
        """Live calls, as last read."""
        return len(self._live)

    def mark(self, call_id: str) -> None:
        """The call may have changed: ``flush`` reads it again."""
        self._dirty[call_id] = None

    def follow(
        self, epoch: bytes, applied_seq: int, now: float, now_wall: float
    ) -> list[pair_pb2.StateBatch]:
        """A follower holding state up to ``applied_seq`` of ``epoch`` starts to follow: what
        to send it before the batches of the next flushes.

        Args:
            epoch, applied_seq: from its ``FollowerHello``.
            now: this node's clock; now_wall: the wall clock (the batches' ``sent_at``).

        Returns:
            Nothing when it is up to date (this epoch, the last seq); else a snapshot of every
            live call under one new seq, in batches of at most ``MAX_BATCH_RECORDS``.
        """
        self._following = True
        if epoch == self.epoch and applied_seq == self.last_seq:
            return []
        for call_id in self._dirty:  # the snapshot reads them: no record of their own
            self._note(call_id)
        self._dirty.clear()
        self.last_seq += 1
        seq = self.last_seq
        records = [
            record
            for call_id in list(self._live)
            if (record := self._live_record(call_id, seq, now)) is not None
        ]
        if self.links is not None:
            self._lsas_sent.clear()
            records += [
                pair_pb2.Record(seq=seq, lsa=lsa_to_message(lsa)) for lsa in self._changed_lsas(now)
            ]
        chunks = [
            records[start : start + MAX_BATCH_RECORDS]
            for start in range(0, len(records), MAX_BATCH_RECORDS)
        ] or [[]]
        return [
            pair_pb2.StateBatch(
                epoch=self.epoch,
                first_seq=seq,
                sent_at=now_wall,
                snapshot_begin=index == 0,
                snapshot_end=index == len(chunks) - 1,
                records=chunk,
            )
            for index, chunk in enumerate(chunks)
        ]

    def unfollow(self) -> None:
        """The follower is gone: ``flush`` only counts records until the next ``follow``."""
        self._following = False

    def flush(self, now: float, now_wall: float) -> pair_pb2.StateBatch | None:
        """The calls marked since the last flush, read back: one batch of at most
        ``MAX_BATCH_RECORDS`` records (the calls beyond wait for the next flush), or ``None``
        when nothing was marked or nobody follows.

        Args:
            now: this node's clock; now_wall: the wall clock (the batch's ``sent_at``).
        """
        dirty = self._dirty
        links = self.links
        lsas_changed = links is not None and links.version != self._links_version
        if not dirty and not lsas_changed:
            return None
        if not self._following:
            for call_id in dirty:
                self._note(call_id)
            self.last_seq += len(dirty)
            dirty.clear()
            return None
        taken = list(itertools.islice(dirty, MAX_BATCH_RECORDS))
        first_seq = self.last_seq + 1
        records = [self._read(call_id, first_seq + i, now) for i, call_id in enumerate(taken)]
        for call_id in taken:
            del dirty[call_id]
        self.last_seq += len(taken)
        if lsas_changed:
            for lsa in self._changed_lsas(now):
                self.last_seq += 1
                records.append(pair_pb2.Record(seq=self.last_seq, lsa=lsa_to_message(lsa)))
        if not records:
            return None
        return pair_pb2.StateBatch(
            epoch=self.epoch, first_seq=first_seq, sent_at=now_wall, records=records
        )

    def _changed_lsas(self, now: float) -> list[Lsa]:
        """The LSAs the follower does not have yet, with their ages brought up to ``now``."""
        links = self.links
        assert links is not None
        self._links_version = links.version
        changed = []
        for origin in links.origins():
            lsa = links.get(origin, now)
            if lsa is not None and self._lsas_sent.get(origin) != lsa.seq:
                self._lsas_sent[origin] = lsa.seq
                changed.append(lsa)
        return changed

    def _note(self, call_id: str) -> None:
        """Keep the set of live calls right without reading the rest of the call."""
        if self._calls.live(call_id) is None:
            self._live.pop(call_id, None)
        else:
            self._live[call_id] = None

    def _read(self, call_id: str, seq: int, now: float) -> pair_pb2.Record:
        """The call's ``CallState``, or its ``CallGone`` when the call book holds it no more."""
        record = self._live_record(call_id, seq, now)
        if record is not None:
            return record
        final = self._calls.final(call_id)
        return pair_pb2.Record(seq=seq, gone=call_gone_message(call_id, final, at=now))

    def _live_record(self, call_id: str, seq: int, now: float) -> pair_pb2.Record | None:
        record = self._calls.live(call_id)
        if record is None:
            self._live.pop(call_id, None)
            return None
        self._live[call_id] = None
        dialog = None if self._dialogs is None else self._dialogs.get(call_id)
        media = None if self._edge is None else self._edge.call_state(call_id)
        invites = () if self._core is None else tuple(self._core.invite_handovers(call_id, now))
        message = call_state_message(record, dialog, media, at=now, invites=invites)
        return pair_pb2.Record(seq=seq, call=message)
