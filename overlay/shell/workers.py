"""Run a node as one process, or as ``sip.workers`` processes sharing its sockets.

The sockets are bound once, then the workers are forked, as Kamailio forks its children: every
worker reads the same UDP and TCP sockets. UDP datagrams are steered by Call-ID
(``overlay.shell.transport.Steering``) so a call's state lives in one worker; a TCP connection stays
with the worker that accepted or opened it. The parent only supervises: it forwards SIGTERM and
SIGINT to the workers, and if one worker dies the others are stopped and the node exits with an
error, for the service manager to restart it whole; a supervisor that dies itself takes its workers
with it (the kernel signals them: ``PR_SET_PDEATHSIG``), so no orphan keeps the sockets from the
restart. Each worker tells the service manager it is
ready and feeds its watchdog (``overlay.shell.systemd``; with several workers the unit needs
``NotifyAccess=all``, and a wedged worker goes unnoticed while another still feeds it).

An overlay node (``[[peers]]``) with several workers has one owner of its link state and
routes, worker 0: its mesh probes and floods, its gRPC server serves LinkState and Control.
Link probes and their answers are steered to worker 0 whichever worker reads them (their
Call-ID prefix is ``pinned``); each other worker is joined to the owner by a stream socketpair
made here before the fork (``overlay.shell.workerlink``), over which it receives the route
tables, reroutes, drain state and faults, and sends its traffic, events and answers to the
Control service. With ``[media]`` the node's one relay is worker 0's, and the other workers'
media edges send it their sessions over the same channel (``overlay.shell.media``). A pair
member (``[pair]``) replicates per worker over the same channels (``overlay.shell.replication``);
one that holds the pair's address by file binds nothing here: its worker 0 binds the SIP
sockets once it holds the address and passes them to the others (``overlay.shell.node``).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal

import structlog
import trio

from overlay.config import NodeConfig
from overlay.linkstate import PROBE_MARK
from overlay.shell.node import NodeTls, bind, open_node
from overlay.shell.pair import PairAddressLost
from overlay.shell.systemd import Notifier
from overlay.shell.transport import BoundSocket, Steering
from overlay.shell.workerlink import WorkerSockets, open_channels

log = structlog.get_logger("overlay")

#: The exit code of a pair member's node taken over (``overlay.shell.pair``).
EXIT_PAIR_ADDRESS_LOST = 3

#: prctl(2)'s option that signals a child when its parent dies.
PR_SET_PDEATHSIG = 1

#: Seconds between two young collections (``collect_young``).
YOUNG_COLLECTION_INTERVAL = 0.1


async def _serve_until_signal(
    config: NodeConfig,
    tls: NodeTls | None,
    bound: list[BoundSocket] | None,
    steering: Steering | None = None,
    links: WorkerSockets | None = None,
) -> None:
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            nursery.start_soon(collect_young, YOUNG_COLLECTION_INTERVAL)
            async with open_node(config, bound=bound, steering=steering, tls=tls, links=links):
                nursery.start_soon(Notifier(os.environ).serve)
                async for signum in signals:
                    log.info("stopping", signal=signal.Signals(signum).name)
                    break
            nursery.cancel_scope.cancel()


def tune_garbage_collector() -> None:
    """Take the cyclic collector off the allocation counter; ``collect_young`` runs it by time.

    A node holds every transaction for up to 32 s (Timers D, J, L, M): hundreds of thousands
    of live objects at a few thousand calls/s. A full collection walks all of them and stops
    the node for a large fraction of a second (measured: 3,000 calls/s failed with the
    defaults), so there are none: the SIP core frees its state by reference counting (it
    breaks its own cycles; tests/unit/test_call_garbage.py holds it to that).

    The young passes cannot be left to the allocation counter either. CPython 3.11 counts
    allocations minus deallocations against the young generation's threshold, deallocations of
    *old* objects included; a node frees old call state as fast as it allocates new, so the
    counter hovers near zero while the young generation grows to hundreds of thousands of
    objects, and the pass that finally comes walks them all: measured on the two-node chain
    at 175 calls/s, young passes of 80-210 ms collecting nothing, both nodes taking their
    healthy link down. ``collect_young`` bounds the young generation by time instead.
    """
    gc.freeze()  # what start-up allocated is never garbage
    gc.disable()


async def collect_young(interval: float) -> None:
    """Every ``interval`` seconds, collect the young generations (0 and 1): a pass walks only
    what was allocated since the last one and is still alive, and moves it to the old
    generation, which is never walked (``tune_garbage_collector``)."""
    while True:
        await trio.sleep(interval)
        gc.collect(1)


def run_node(config: NodeConfig) -> int:
    """Serve ``config`` until SIGINT/SIGTERM, or, for a pair member in the mesh, until its
    pair's address leaves (``EXIT_PAIR_ADDRESS_LOST``); returns the process exit code.

    Raises:
        TlsError: a TLS file cannot work (checked before any socket is bound).
        OSError: a listen address cannot be bound.
    """
    tune_garbage_collector()
    workers = config.sip.workers
    tls = NodeTls.load(config)
    # A pair member that holds by file binds once it holds (overlay.shell.node): with several
    # workers, its worker 0 binds and passes the sockets to the others.
    held_by_file = config.pair is not None and config.pair.hold == "file"
    bound = None if held_by_file else bind(config)
    if workers == 1:
        taken_over = False
        try:
            trio.run(_serve_until_signal, config, tls, bound)
        except* PairAddressLost:  # logged where seen; the service manager restarts a standby
            taken_over = True
        return EXIT_PAIR_ADDRESS_LOST if taken_over else 0
    pipes = Steering.open_pipes(workers)
    outbound = tuple(write for _, write in pipes)
    overlay = bool(config.peers)
    # An overlay node's channels between worker 0 (the owner) and the others (module notes).
    channels = open_channels(workers) if overlay else []
    # Signals that arrive between the forks and the children's own handlers must not kill the
    # parent before it can stop what it started.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    children: dict[int, int] = {}
    parent = os.getpid()
    for index in range(workers):
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the parent's code
            _die_with(parent)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
            try:
                steering = Steering(
                    index, pipes[index][0], outbound, pinned=PROBE_MARK if overlay else b""
                )
                links = WorkerSockets.of(index, channels) if overlay else None
                # Each worker loads its own TLS material (checked above, before the fork).
                trio.run(_serve_until_signal, config, None, bound, steering, links)
            except BaseException:
                log.exception("worker failed", worker=index)
                os._exit(1)
            os._exit(0)
        children[pid] = index
    for item in bound or ():
        item.sock.close()
    for owner_end, worker_end in channels:
        owner_end.close()
        worker_end.close()
    log.info("workers started", workers=workers, pids=sorted(children))
    return _supervise(children)


def _die_with(parent: int) -> None:
    """Have the kernel send this worker SIGTERM when the supervisor dies (``PR_SET_PDEATHSIG``),
    however it dies: workers left serving the shared sockets would keep the service manager's
    restart from binding them. A supervisor already gone before the call: stop at once."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("workers will outlive a dead supervisor", error=os.strerror(ctypes.get_errno()))
    if os.getppid() != parent:
        os._exit(1)


def _supervise(children: dict[int, int]) -> int:
    """Wait for the workers; stop them all on a signal or when one of them dies."""
    stopping = False
    exit_code = 0
    pending_signals = {signal.SIGINT, signal.SIGTERM, signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, pending_signals)
    while children:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            received = signal.sigwait(pending_signals)
            if received != signal.SIGCHLD and not stopping:
                stopping = True
                _signal_all(children, signal.SIGTERM)
            continue
        index = children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if not stopping:
            log.error("worker died; stopping the node", worker=index, exit_code=code)
            stopping = True
            exit_code = 1
            _signal_all(children, signal.SIGTERM)
    return exit_code


def _signal_all(children: dict[int, int], signum: signal.Signals) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
