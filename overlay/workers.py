"""Run a node as one process, or as ``sip.workers`` processes sharing its sockets.

The sockets are bound once, then the workers are forked, as Kamailio forks its children: every
worker reads the same UDP and TCP sockets. UDP datagrams are steered by Call-ID
(``overlay.transport.Steering``) so a call's state lives in one worker; a TCP connection stays
with the worker that accepted or opened it. The parent only supervises: it forwards SIGTERM and
SIGINT to the workers, and if one worker dies the others are stopped and the node exits with an
error, for the service manager to restart it whole.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal

import structlog
import trio

from overlay.config import NodeConfig
from overlay.node import Node
from overlay.transport import BoundSocket, Steering

log = structlog.get_logger("overlay")

#: Middle-generation passes between full passes: about 7e9 allocations with the defaults.
FULL_COLLECTION_THRESHOLD = 1_000_000


async def _serve_until_signal(node: Node, bound: list[BoundSocket]) -> None:
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            await nursery.start(node.serve, bound)
            async for signum in signals:
                log.info("stopping", signal=signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def tune_garbage_collector() -> None:
    """Keep the cyclic collector's full passes off the signalling path.

    A node holds every transaction for up to 32 s (Timers D, J, L, M): hundreds of thousands
    of live objects at a few thousand calls/s. A full collection walks all of them and stops
    the node for a large fraction of a second, long enough for callers to retransmit and tip a
    busy node into collapse (measured: 3,000 calls/s failed with the defaults, passed without
    full passes). The SIP core frees its state by reference counting (it breaks its own
    cycles), so young-generation passes stay on and full passes are made practically never.
    """
    gc.freeze()  # what start-up allocated is never garbage
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_THRESHOLD)


def run_node(config: NodeConfig) -> int:
    """Serve ``config`` until SIGINT/SIGTERM; returns the process exit code.

    Raises:
        OSError: a listen address cannot be bound.
    """
    tune_garbage_collector()
    workers = config.sip.workers
    bound = Node(config).bind()
    if workers == 1:
        trio.run(_serve_until_signal, Node(config), bound)
        return 0
    pipes = Steering.open_pipes(workers)
    outbound = tuple(write for _, write in pipes)
    # Signals that arrive between the forks and the children's own handlers must not kill the
    # parent before it can stop what it started.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    children: dict[int, int] = {}
    for index in range(workers):
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the parent's code
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
            try:
                steering = Steering(index, pipes[index][0], outbound)
                trio.run(_serve_until_signal, Node(config, steering=steering), bound)
            except BaseException:
                log.exception("worker failed", worker=index)
                os._exit(1)
            os._exit(0)
        children[pid] = index
    for item in bound:
        item.sock.close()
    log.info("workers started", workers=workers, pids=sorted(children))
    return _supervise(children)


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
