"""Pair state replication, sans-IO: the standby of a pair follows its active's calls (issue 16,
docs/internal/pair-state-design.md §3, §4).

On the active, the owners of a call's state mark the call when it may have changed, and
``ReplicaLog.flush`` reads the marked calls back whole, once per signalling turn, into one
numbered ``StateBatch``; a (re)connecting follower first gets a snapshot (``follow``). On the
standby, ``ReplicaStore.apply`` puts each batch into its own owners through their restore APIs,
as foreign state, and says when it must take a snapshot again (``ResyncNeeded``). ``_codec``
maps the owners' records to proto/overlay/v1/pair.proto and back. The trio shell that carries
the batches over gRPC is ``overlay.shell.replication``.
"""

from ._codec import (
    BadRecord,
    CallReplica,
    call_gone_from_message_untrusted,
    call_gone_message,
    call_state_from_message_untrusted,
    call_state_message,
)
from ._log import EPOCH_SIZE, MAX_BATCH_RECORDS, ReplicaLog
from ._store import OVER_ON_THE_ACTIVE, ReplicaStore, ResyncNeeded

__all__ = [
    "EPOCH_SIZE",
    "MAX_BATCH_RECORDS",
    "OVER_ON_THE_ACTIVE",
    "BadRecord",
    "CallReplica",
    "ReplicaLog",
    "ReplicaStore",
    "ResyncNeeded",
    "call_gone_from_message_untrusted",
    "call_gone_message",
    "call_state_from_message_untrusted",
    "call_state_message",
]
