"""Is the node past its capacity? Judged by how long it has been behind its UDP socket.

The shell's receive loop drains a socket in batches. While the node keeps up, a batch ends with
the socket empty; past capacity every batch finds more waiting, and the time since the loop
last emptied the socket grows with the queue. That time bounds how long a new request waits in
the kernel before the node even sees it: once it passes ``threshold`` (well under T1, 500 ms,
after which callers retransmit and the queue grows faster) new INVITEs are refused with 503
until the loop has caught up, while everything already admitted keeps flowing.
"""

from __future__ import annotations

import math

#: An episode (one log line at each end) lasts until no INVITE was shed for this long, so a
#: node that sheds and catches up in turns under a steady overload reports one episode.
EPISODE_QUIET = 1.0


class Overload:
    """Overload state from the receive loop's backlog reports.

    Args:
        threshold: seconds behind the socket before new INVITEs are shed; 0 never sheds.
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.behind_since: float | None = None
        self.shed = 0  # INVITEs refused, over the node's life
        self.episodes = 0
        self._episode_shed = 0
        self._last_shed = -math.inf
        self._in_episode = False

    def backlog(self, since: float | None) -> None:
        """The receive loop is behind its socket since ``since``, or caught up (``None``)."""
        self.behind_since = since

    def shedding(self, now: float) -> bool:
        """Whether a new INVITE arriving ``now`` is to be refused (counted; the caller answers
        503). The first of an episode raises ``episodes``."""
        since = self.behind_since
        if not self.threshold or since is None or now - since < self.threshold:
            return False
        self.shed += 1
        self._episode_shed += 1
        self._last_shed = now
        if not self._in_episode:
            self._in_episode = True
            self.episodes += 1
        return True

    def end_episode(self, now: float) -> int | None:
        """Close the episode once it has been quiet for ``EPISODE_QUIET``; returns how many
        INVITEs it shed, or ``None`` while it goes on (or there is none)."""
        if not self._in_episode or now - self._last_shed < EPISODE_QUIET:
            return None
        shed, self._episode_shed = self._episode_shed, 0
        self._in_episode = False
        return shed
