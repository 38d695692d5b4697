"""overlay.lab.impair over real UDP: the addresses each end sees, delay, jitter, loss, change."""

from __future__ import annotations

import random
import statistics
from collections.abc import AsyncIterator, Callable

import pytest
import trio
import trio.testing

from overlay.lab.impair import NO_FAULT, ImpairmentRelay, open_impairment_relay
from overlay.shell.transport import Fault

pytestmark = pytest.mark.integration

Address = tuple[str, int]

#: What the relay and a busy 2-core machine may add to a configured delay. Measured over 200
#: datagrams on an idle machine: the median one-way time through the relay is the delay + 0.2 ms
#: without a delay and + 0.7 ms with one (trio's timer), the 90th percentile + 1.2 ms, the worst
#: + 5-6 ms; with other tests loading both cores (load 3) medians of + 3.4 ms were seen.
MEDIAN_SLACK_S = 0.008
WORST_SLACK_S = 0.040


class Ends:
    """A client socket talking to a target socket through the relay."""

    def __init__(
        self, relay: ImpairmentRelay, client: trio.socket.SocketType, target: trio.socket.SocketType
    ) -> None:
        self.relay, self.client, self.target = relay, client, target

    async def one_way(self, *, to_target: bool) -> tuple[float, Address]:
        """Send one datagram one way; how long it took and the source the receiver saw."""
        payload = random.randbytes(8)
        start = trio.current_time()
        if to_target:
            await self.client.sendto(payload, self.relay.client_side)
            receiver = self.target
        else:
            await self.target.sendto(payload, self.relay.target_side)
            receiver = self.client
        with trio.fail_after(5):
            data, source = await receiver.recvfrom(100)
        assert data == payload
        return trio.current_time() - start, (source[0], source[1])

    async def one_way_times(self, n: int, *, to_target: bool) -> list[float]:
        return [(await self.one_way(to_target=to_target))[0] for _ in range(n)]


@pytest.fixture
async def ends(loopback_host: Callable[[], str]) -> AsyncIterator[Ends]:
    client_host, relay_host, target_host = loopback_host(), loopback_host(), loopback_host()
    with (
        trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as client,
        trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as target,
    ):
        await client.bind((client_host, 0))
        await target.bind((target_host, 0))
        async with open_impairment_relay(
            target.getsockname(),
            client_side=(relay_host, 0),
            target_side=(relay_host, 0),
            seed=17,
        ) as relay:
            yield Ends(relay, client, target)


def within(times: list[float], delay_s: float) -> None:
    assert min(times) >= delay_s - 0.0005, times
    assert statistics.median(times) <= delay_s + MEDIAN_SLACK_S, times
    assert max(times) <= delay_s + WORST_SLACK_S, times


@pytest.mark.trio
async def test_each_end_sees_the_relay_as_the_other_party(ends: Ends) -> None:
    relay = ends.relay
    # The client (first to speak) reaches the target, which hears it from Y ...
    _, source = await ends.one_way(to_target=True)
    assert source == relay.target_side
    # ... and the target's answer to Y comes back to the client from X.
    _, source = await ends.one_way(to_target=False)
    assert source == relay.client_side
    await trio.testing.wait_all_tasks_blocked()  # the relay counts once its send returned
    stats = relay.statistics()
    assert stats.client == ends.client.getsockname()
    assert (stats.to_target.forwarded, stats.to_client.forwarded) == (1, 1)
    # Only the target may send to Y: anybody else's datagram is dropped and counted.
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as stranger:
        await stranger.bind((ends.target.getsockname()[0], 0))
        await stranger.sendto(b"let me in", relay.target_side)
        with trio.move_on_after(0.1):
            await ends.client.recv(100)
            pytest.fail("a stranger's datagram was relayed to the client")
        assert relay.statistics().foreign == 1


@pytest.mark.trio
async def test_each_direction_is_delayed_by_its_own_fault(ends: Ends) -> None:
    ends.relay.impair(to_target=Fault(delay_ms=40.0), to_client=Fault(delay_ms=70.0))
    within(await ends.one_way_times(10, to_target=True), 0.040)
    within(await ends.one_way_times(10, to_target=False), 0.070)


@pytest.mark.trio
async def test_jitter_spreads_the_delay_over_its_range(ends: Ends) -> None:
    ends.relay.impair_both(Fault(delay_ms=20.0, jitter_ms=30.0))
    for to_target in (True, False):
        times = await ends.one_way_times(15, to_target=to_target)
        assert min(times) >= 0.0195, times
        assert max(times) <= 0.050 + WORST_SLACK_S, times
        # 15 uniform draws over 30 ms: the spread is most of the range.
        assert max(times) - min(times) >= 0.015, times


@pytest.mark.trio
async def test_loss_follows_the_seeded_draws_in_each_direction(ends: Ends) -> None:
    relay = ends.relay
    relay.impair(to_target=Fault(loss_ratio=0.2), to_client=Fault(loss_ratio=0.05))
    n, batch = 1000, 50
    # One random.Random(seed) draws for both directions, in arrival order: the client's
    # datagrams all go first here, so the drops are exactly these draws.
    draws = random.Random(relay.seed)
    expected_to_target = sum(draws.random() < 0.2 for _ in range(n))
    expected_to_client = sum(draws.random() < 0.05 for _ in range(n))
    for to_target, expected, ratio in (
        (True, expected_to_target, 0.2),
        (False, expected_to_client, 0.05),
    ):
        sender, receiver = (ends.client, ends.target) if to_target else (ends.target, ends.client)
        address = relay.client_side if to_target else relay.target_side
        arrived = 0
        for start in range(0, n, batch):  # in batches: no socket buffer overflows
            for i in range(start, start + batch):
                await sender.sendto(i.to_bytes(4, "big"), address)
            with trio.fail_after(5):
                while True:
                    await trio.testing.wait_all_tasks_blocked()
                    stats = relay.statistics()
                    direction = stats.to_target if to_target else stats.to_client
                    if direction.received == start + batch and direction.held == 0:
                        break
                    await trio.sleep(0.001)
                while arrived < direction.forwarded:
                    await receiver.recv(100)
                    arrived += 1
        with trio.move_on_after(0.05):
            await receiver.recv(100)
            pytest.fail("more datagrams arrived than the relay forwarded")
        assert direction.dropped == expected
        assert arrived == direction.forwarded == n - expected
        assert abs(expected / n - ratio) < 0.02


@pytest.mark.trio
async def test_faults_change_at_run_time(ends: Ends) -> None:
    relay = ends.relay
    within(await ends.one_way_times(5, to_target=True), 0.0)
    relay.impair_both(Fault(delay_ms=60.0))
    within(await ends.one_way_times(5, to_target=True), 0.060)
    within(await ends.one_way_times(5, to_target=False), 0.060)
    relay.impair(to_client=Fault(blackhole=True))
    with trio.move_on_after(0.2):
        await ends.one_way(to_target=False)
        pytest.fail("a blackholed direction delivered")
    assert relay.statistics().to_client.dropped == 1
    relay.impair_both(NO_FAULT)
    assert relay.faults() == (NO_FAULT, NO_FAULT)
    within(await ends.one_way_times(5, to_target=False), 0.0)
