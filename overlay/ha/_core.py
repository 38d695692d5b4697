"""The HA decision core: heartbeat results and EC2 answers in, decisions out (sans-IO).

Theory of operation
-------------------
Two instances in one AZ form an active/standby pair. The active holds a floating address: a
secondary private IP on its ENI plus an Elastic IP associated with that ENI and IP. Each instance
runs an agent that watches the *other* one and owns one ``HaCore``. The core does no I/O and reads
no clock: the agent (the trio shell) feeds it what happened and when, and does what it says.

* **Heartbeats.** The shell checks the peer's gRPC health every heartbeat interval and reports
  each result (:meth:`HaCore.heartbeat_succeeded` / :meth:`HaCore.heartbeat_failed`). As in BFD
  (RFC 5880 §6.8.4), the peer is declared dead after ``dead_after`` consecutive misses, so
  detection takes a fixed ``dead_after * interval``; one answer makes it alive again.
* **The EC2 API is the arbiter.** Heartbeats only say whether the peer answers; who holds the
  address is what the EC2 API says (:class:`Holder`, from :func:`classify`). The core asks for
  a reading with a :class:`HolderCheck` event, and the shell answers with
  :meth:`HaCore.holder_observed` (or :meth:`HaCore.holder_check_failed`). Readings are also taken
  every ``api_check_interval`` seconds (:meth:`HaCore.get_timer`), so the agent always knows its
  role.
* **Taking over.** When the peer is declared dead the core asks the API (VERIFYING). A
  :class:`Takeover` is decided only if the answer is not :attr:`Holder.OURS`, nor an ENI that
  belongs to neither member (:attr:`Holder.OTHER`), and no hold-down is running. So the active,
  which holds the address, never moves it to itself, and the standby moves it only when the peer
  is dead. The shell re-reads once more right before moving (the two readings are a few
  milliseconds apart) and reports :meth:`HaCore.takeover_succeeded`,
  :meth:`HaCore.takeover_declined` (the re-read found nothing to move) or
  :meth:`HaCore.takeover_failed` (retried with a fresh reading at the next periodic check).
* **Hold-down.** When the agent starts, until the peer first answers (both members boot
  together; the peer's node may not serve yet), after a takeover, after the peer came back from
  the dead, and after the API showed that the peer took the address from us, no takeover is
  decided for ``hold_down`` seconds. A heartbeat that flaps across the dead line therefore moves
  the address at most once per hold-down instead of on every flap, and two members that cannot
  hear each other (a partition: each thinks the other is dead) move it at most once per
  hold-down each. A peer that is still dead when the hold-down ends is checked again at once
  (:meth:`HaCore.handle_timer`).

Every event carries a ``reason`` for the log. Rule 1 (as in h11's ``_state.py``): only
``_set_state`` changes the state, and only along ``_TRANSITIONS``; any other call order is a bug
in the shell and raises :class:`HaStateError`.
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass

__all__ = [
    "AddressView",
    "HaCore",
    "HaEvent",
    "HaState",
    "HaStateError",
    "HaStatistics",
    "Holder",
    "HolderChanged",
    "HolderCheck",
    "PeerAlive",
    "PeerDead",
    "Takeover",
    "TakeoverSkipped",
    "classify",
]


class HaStateError(RuntimeError):
    """The core was driven out of order (a bug in the shell, never the peer's or AWS's doing)."""


class HaState(enum.Enum):
    #: The peer answers (fewer than ``dead_after`` consecutive misses); nothing to decide.
    WATCHING = "WATCHING"
    #: The peer is dead; waiting for the API's answer to decide whether to take over.
    VERIFYING = "VERIFYING"
    #: A takeover is running: waiting for the shell to report how it went.
    TAKING_OVER = "TAKING_OVER"
    #: The peer is dead and nothing is to be done now (the address is ours, a hold-down runs,
    #: a stranger holds it, or the API failed): waits for a timer or for the peer.
    PEER_DEAD = "PEER_DEAD"


class Holder(enum.Enum):
    """Who holds the floating address, according to the EC2 API."""

    #: The EIP is on our ENI and the floating IP is on our ENI only.
    OURS = "OURS"
    #: The EIP is on the peer's ENI and the floating IP is on the peer's ENI only.
    PEER = "PEER"
    #: Neither: the EIP is not associated and the floating IP is on neither ENI.
    NOBODY = "NOBODY"
    #: Split between us and the peer, or partly unassigned (a takeover cut short).
    SPLIT = "SPLIT"
    #: The EIP or the floating IP is on an ENI that is neither ours nor the peer's.
    OTHER = "OTHER"


@dataclass(frozen=True, slots=True)
class AddressView:
    """One reading of the EC2 API about the floating address.

    ``eip_eni`` is the EIP's ``NetworkInterfaceId`` (``None``: not associated); ``ip_enis`` are
    the ENIs, among the two members', whose private IPs include the floating IP.
    """

    eip_eni: str | None
    ip_enis: frozenset[str]
    association_id: str | None = None


def classify(view: AddressView, own_eni: str, peer_eni: str) -> Holder:
    """Who holds the address in ``view``, seen from the member that owns ``own_eni``."""
    enis = set(view.ip_enis)
    if view.eip_eni is not None:
        enis.add(view.eip_eni)
    if not enis:
        return Holder.NOBODY
    if enis - {own_eni, peer_eni}:
        return Holder.OTHER
    if view.eip_eni == own_eni and view.ip_enis == {own_eni}:
        return Holder.OURS
    if view.eip_eni == peer_eni and view.ip_enis == {peer_eni}:
        return Holder.PEER
    return Holder.SPLIT


# --- events: what the core decided, each with a reason for the log --------------------------


@dataclass(frozen=True, slots=True)
class PeerDead:
    """The peer missed ``misses`` heartbeats in a row: it is declared dead."""

    misses: int
    reason: str


@dataclass(frozen=True, slots=True)
class PeerAlive:
    """The dead peer answered again; no takeover before ``hold_down_until``."""

    hold_down_until: float
    reason: str


@dataclass(frozen=True, slots=True)
class HolderCheck:
    """Read who holds the address, then call ``holder_observed`` or ``holder_check_failed``."""

    reason: str


@dataclass(frozen=True, slots=True)
class HolderChanged:
    """The API shows a different holder than the previous reading."""

    before: Holder | None
    after: Holder
    reason: str


@dataclass(frozen=True, slots=True)
class Takeover:
    """Move the address to our ENI now, then report how it went."""

    reason: str


@dataclass(frozen=True, slots=True)
class TakeoverSkipped:
    """The peer is dead but the address is not moved (already ours, hold-down, API failure...)."""

    reason: str


HaEvent = PeerDead | PeerAlive | HolderCheck | HolderChanged | Takeover | TakeoverSkipped


@dataclass(frozen=True, slots=True)
class HaStatistics:
    """A read-only snapshot for logs, the CLI and tests."""

    state: HaState
    #: The last reading of the API (None before the first one, and after a failed takeover).
    holder: Holder | None
    consecutive_misses: int
    heartbeats_ok: int
    heartbeats_missed: int
    api_checks: int
    api_errors: int
    peer_deaths: int
    peer_recoveries: int
    takeovers: int
    takeover_failures: int
    #: Decided against because the address was ours or a stranger's (also at the last re-read).
    takeovers_skipped: int
    #: Decided against because a hold-down was running.
    takeovers_held_down: int
    #: Readings that showed the address had moved from us to the peer.
    taken_by_peer: int
    hold_down_until: float | None
    #: Seconds the EC2 calls of the last successful takeover took.
    last_takeover_duration: float | None
    #: Seconds from the peer's last answered heartbeat to the end of the last takeover.
    last_failover_time: float | None


# --- the state machine -----------------------------------------------------------------------


class _Input(enum.Enum):
    HEARTBEAT_OK = "heartbeat_succeeded"
    HEARTBEAT_MISSED = "heartbeat_failed"
    HOLDER = "holder_observed"
    CHECK_FAILED = "holder_check_failed"
    MOVED = "takeover_succeeded"
    DECLINED = "takeover_declined"
    MOVE_FAILED = "takeover_failed"
    TIMER = "handle_timer"


_S = HaState
_REPORTED = frozenset({_S.WATCHING, _S.PEER_DEAD})  # where a takeover's outcome leads

#: {state: {input: states it may lead to}}. A missing key is a shell bug (HaStateError).
_TRANSITIONS: dict[HaState, dict[_Input, frozenset[HaState]]] = {
    _S.WATCHING: {
        _Input.HEARTBEAT_OK: frozenset({_S.WATCHING}),
        _Input.HEARTBEAT_MISSED: frozenset({_S.WATCHING, _S.VERIFYING}),
        _Input.HOLDER: frozenset({_S.WATCHING}),
        _Input.CHECK_FAILED: frozenset({_S.WATCHING}),
        _Input.TIMER: frozenset({_S.WATCHING}),
    },
    _S.VERIFYING: {
        _Input.HEARTBEAT_OK: frozenset({_S.WATCHING}),
        _Input.HEARTBEAT_MISSED: frozenset({_S.VERIFYING}),
        _Input.HOLDER: frozenset({_S.TAKING_OVER, _S.PEER_DEAD}),
        _Input.CHECK_FAILED: frozenset({_S.PEER_DEAD}),
        _Input.TIMER: frozenset({_S.VERIFYING}),
    },
    _S.TAKING_OVER: {
        _Input.HEARTBEAT_OK: frozenset({_S.TAKING_OVER}),
        _Input.HEARTBEAT_MISSED: frozenset({_S.TAKING_OVER}),
        _Input.MOVED: _REPORTED,
        _Input.DECLINED: _REPORTED,
        _Input.MOVE_FAILED: _REPORTED,
        _Input.TIMER: frozenset({_S.TAKING_OVER}),
    },
    _S.PEER_DEAD: {
        _Input.HEARTBEAT_OK: frozenset({_S.WATCHING}),
        _Input.HEARTBEAT_MISSED: frozenset({_S.PEER_DEAD}),
        _Input.HOLDER: frozenset({_S.TAKING_OVER, _S.PEER_DEAD}),
        _Input.CHECK_FAILED: frozenset({_S.PEER_DEAD}),
        _Input.TIMER: frozenset({_S.PEER_DEAD, _S.VERIFYING}),
    },
}


class HaCore:
    """The decisions of one member's HA agent (see the theory of operation above).

    Every method that takes ``now`` wants seconds on the shell's one clock. After each call the
    shell drains :meth:`next_event` and acts on :class:`HolderCheck` and :class:`Takeover`.

    Args:
        now: the current time.
        dead_after: consecutive missed heartbeats that make the peer dead (>= 1).
        hold_down: seconds without takeover after a takeover, a recovery or a loss (>= 0).
        api_check_interval: seconds between periodic readings of the holder (> 0).
    """

    def __init__(
        self, now: float, *, dead_after: int, hold_down: float, api_check_interval: float
    ) -> None:
        if dead_after < 1:
            raise ValueError(f"dead_after must be at least 1, not {dead_after}")
        if hold_down < 0:
            raise ValueError(f"hold_down must not be negative, not {hold_down}")
        if api_check_interval <= 0:
            raise ValueError(f"api_check_interval must be positive, not {api_check_interval}")
        self._dead_after = dead_after
        self._hold_down = hold_down
        self._api_check_interval = api_check_interval
        self.state = HaState.WATCHING
        self._events: collections.deque[HaEvent] = collections.deque()
        self._holder: Holder | None = None
        #: The last member seen holding it (NOBODY, between two holders, is skipped).
        self._last_owner: Holder | None = None
        self._misses = 0
        self._last_miss = ""  # why the last heartbeat failed, for reasons
        self._last_answer: float | None = None  # when the peer last answered a heartbeat
        self._check_outstanding = False  # a HolderCheck was emitted and not answered yet
        self._next_check = now  # the first reading tells the agent its role
        # Both members boot together and a node takes seconds to serve: until it first
        # answers, the peer gets a hold-down from the start before its silence costs it the
        # address.
        self._hold_until: float | None = now + hold_down
        self._recheck_at: float | None = None  # PEER_DEAD: decide again then (end of hold-down)
        self._stats = collections.Counter[str]()
        self._last_takeover_duration: float | None = None
        self._last_failover_time: float | None = None

    # -- heartbeats ---------------------------------------------------------------------------

    @property
    def peer_dead(self) -> bool:
        return self._misses >= self._dead_after

    def heartbeat_succeeded(self, now: float) -> None:
        """The peer answered SERVING."""
        self._expect(_Input.HEARTBEAT_OK)
        was_dead = self.peer_dead
        misses = self._misses
        first = self._last_answer is None
        self._misses = 0
        self._last_answer = now
        self._stats["heartbeats_ok"] += 1
        if first:  # the peer's node is up: no start-up hold-down any more, nor a recovery
            self._hold_until = None
            self._recheck_at = None
            if was_dead:
                self._emit(PeerAlive(now, f"the peer answered first after {misses} misses"))
        elif was_dead:
            self._stats["peer_recoveries"] += 1
            self._hold(now)
            self._recheck_at = None
            assert self._hold_until is not None
            self._emit(
                PeerAlive(
                    self._hold_until,
                    f"the peer answered after {misses} missed heartbeats; "
                    f"no takeover for {self._hold_down:g} s",
                )
            )
        new = HaState.TAKING_OVER if self.state is HaState.TAKING_OVER else HaState.WATCHING
        self._set_state(_Input.HEARTBEAT_OK, new)

    def heartbeat_failed(self, now: float, why: str) -> None:
        """The peer did not answer SERVING within the heartbeat interval; ``why`` for the log."""
        self._expect(_Input.HEARTBEAT_MISSED)
        self._misses += 1
        self._last_miss = why
        self._stats["heartbeats_missed"] += 1
        new = self.state
        if self._misses == self._dead_after:
            self._stats["peer_deaths"] += 1
            reason = f"{self._misses} heartbeats missed in a row, the last: {why}"
            self._emit(PeerDead(self._misses, reason))
            if self.state is HaState.WATCHING:
                new = HaState.VERIFYING
                self._recheck_at = None  # left over from a failed takeover: this decides now
                if not self._check_outstanding:  # else the reading under way decides
                    self._request_check(now, "the peer is dead: who holds the address?")
        self._set_state(_Input.HEARTBEAT_MISSED, new)

    # -- readings of the EC2 API ----------------------------------------------------------------

    def holder_observed(self, holder: Holder, now: float) -> None:
        """Answer to a :class:`HolderCheck`: the API says ``holder`` holds the address."""
        self._expect(_Input.HOLDER)
        self._answer_check(_Input.HOLDER)
        self._stats["api_checks"] += 1
        before = self._holder
        self._holder = holder
        if holder is not before:
            self._emit(HolderChanged(before, holder, f"the API shows {holder.name}"))
            if self._last_owner is Holder.OURS and holder is Holder.PEER:
                # The peer was alive enough to move it (seen at once, or through NOBODY while
                # the move was half done): do not snatch it back at once (a partition makes
                # both members see the other dead).
                self._stats["taken_by_peer"] += 1
                self._hold(now)
        if holder is not Holder.NOBODY:
            self._last_owner = holder
        if self.state is HaState.WATCHING:
            self._set_state(_Input.HOLDER, HaState.WATCHING)
        else:
            self._decide(now, _Input.HOLDER, holder, explicit=self.state is HaState.VERIFYING)

    def holder_check_failed(self, now: float, why: str) -> None:
        """Answer to a :class:`HolderCheck`: the API could not be read (retried periodically)."""
        self._expect(_Input.CHECK_FAILED)
        self._answer_check(_Input.CHECK_FAILED)
        self._stats["api_errors"] += 1
        new = self.state
        if self.state is HaState.VERIFYING:
            new = HaState.PEER_DEAD
            self._recheck_at = now + self._api_check_interval
            self._emit(TakeoverSkipped(f"cannot read who holds the address ({why}); retrying"))
        self._set_state(_Input.CHECK_FAILED, new)

    # -- takeovers ----------------------------------------------------------------------------

    def takeover_succeeded(self, now: float, duration: float) -> None:
        """The address is on our ENI; the EC2 calls took ``duration`` seconds."""
        self._expect(_Input.MOVED)
        self._stats["takeovers"] += 1
        self._holder = self._last_owner = Holder.OURS
        self._last_takeover_duration = duration
        if self._last_answer is not None:
            self._last_failover_time = now - self._last_answer
        self._hold(now)
        self._set_state(_Input.MOVED, self._after_takeover())

    def takeover_declined(self, holder: Holder, now: float) -> None:
        """The re-read right before moving showed ``holder`` (OURS or OTHER): nothing moved."""
        self._expect(_Input.DECLINED)
        self._stats["takeovers_skipped"] += 1
        self._holder = holder
        self._set_state(_Input.DECLINED, self._after_takeover())

    def takeover_failed(self, now: float, why: str) -> None:
        """An EC2 call failed; the address may be split. Retried after a fresh reading."""
        self._expect(_Input.MOVE_FAILED)
        self._stats["takeover_failures"] += 1
        self._holder = None  # unknown until the next reading
        self._recheck_at = now + self._api_check_interval
        self._set_state(_Input.MOVE_FAILED, self._after_takeover())

    def _after_takeover(self) -> HaState:
        return HaState.PEER_DEAD if self.peer_dead else HaState.WATCHING

    # -- time ---------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` has something to do; None while waiting for the shell."""
        if self._check_outstanding or self.state in (HaState.TAKING_OVER, HaState.VERIFYING):
            return None
        deadline = self._next_check
        if self.state is HaState.PEER_DEAD and self._recheck_at is not None:
            deadline = min(deadline, self._recheck_at)
        return deadline

    def handle_timer(self, now: float) -> None:
        """Take the periodic reading, or decide again once a hold-down or a retry delay ends."""
        self._expect(_Input.TIMER)
        new = self.state
        deadline = self.get_timer()
        if deadline is not None and now >= deadline:
            recheck = self._recheck_at
            if self.state is HaState.PEER_DEAD and recheck is not None and now >= recheck:
                self._recheck_at = None
                new = HaState.VERIFYING
                self._request_check(now, "the peer is still dead: who holds the address?")
            else:
                self._request_check(now, "periodic check")
        self._set_state(_Input.TIMER, new)

    # -- reading ------------------------------------------------------------------------------

    def next_event(self) -> HaEvent | None:
        """The oldest decision not yet taken by the shell, or None."""
        return self._events.popleft() if self._events else None

    def statistics(self) -> HaStatistics:
        stats = self._stats
        return HaStatistics(
            state=self.state,
            holder=self._holder,
            consecutive_misses=self._misses,
            heartbeats_ok=stats["heartbeats_ok"],
            heartbeats_missed=stats["heartbeats_missed"],
            api_checks=stats["api_checks"],
            api_errors=stats["api_errors"],
            peer_deaths=stats["peer_deaths"],
            peer_recoveries=stats["peer_recoveries"],
            takeovers=stats["takeovers"],
            takeover_failures=stats["takeover_failures"],
            takeovers_skipped=stats["takeovers_skipped"],
            takeovers_held_down=stats["takeovers_held_down"],
            taken_by_peer=stats["taken_by_peer"],
            hold_down_until=self._hold_until,
            last_takeover_duration=self._last_takeover_duration,
            last_failover_time=self._last_failover_time,
        )

    # -- internals ----------------------------------------------------------------------------

    def _decide(self, now: float, input_: _Input, holder: Holder, *, explicit: bool) -> None:
        """The peer is dead and the API said ``holder``: take over or say why not.

        ``explicit``: this reading was asked for to decide (VERIFYING), so a "no" is an event
        and is counted; a periodic reading while the peer stays dead only acts on a "yes".
        """
        skip: str | None = None
        held_down = False
        if holder is Holder.OURS:
            skip = "the address is already ours"
        elif holder is Holder.OTHER:
            skip = "the address is on an ENI that is neither ours nor the peer's"
        elif self._hold_until is not None and now < self._hold_until:
            held_down = True
            skip = f"hold-down for {self._hold_until - now:.3g} s more"
            self._recheck_at = self._hold_until
        if skip is None:
            self._recheck_at = None
            self._emit(
                Takeover(
                    f"the peer is dead ({self._misses} heartbeats missed, the last: "
                    f"{self._last_miss}) and the API shows {holder.name}"
                )
            )
            self._set_state(input_, HaState.TAKING_OVER)
            return
        if explicit:
            self._stats["takeovers_held_down" if held_down else "takeovers_skipped"] += 1
            self._emit(TakeoverSkipped(skip))
        self._set_state(input_, HaState.PEER_DEAD)

    def _hold(self, now: float) -> None:
        until = now + self._hold_down
        self._hold_until = until if self._hold_until is None else max(self._hold_until, until)

    def _request_check(self, now: float, reason: str) -> None:
        self._check_outstanding = True
        self._next_check = now + self._api_check_interval
        self._emit(HolderCheck(reason))

    def _answer_check(self, input_: _Input) -> None:
        if not self._check_outstanding:
            raise HaStateError(f"{input_.value}() without a HolderCheck to answer")
        self._check_outstanding = False

    def _emit(self, event: HaEvent) -> None:
        self._events.append(event)

    def _expect(self, input_: _Input) -> None:
        """Refuse ``input_`` in this state before anything changes."""
        if input_ not in _TRANSITIONS[self.state]:
            raise HaStateError(f"{input_.value}() in state {self.state.name}")

    def _set_state(self, input_: _Input, new: HaState) -> None:
        if new not in _TRANSITIONS[self.state][input_]:  # a bug here, not in the shell
            raise HaStateError(f"{input_.value}() cannot lead from {self.state.name} to {new.name}")
        self.state = new
