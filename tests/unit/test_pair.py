"""A pair member's node: in the mesh only while it holds the pair's address (``[pair]``)."""

from __future__ import annotations

import textwrap

import pytest
import trio
import trio.testing

from overlay.config import ConfigError, PairSection, parse_config
from overlay.shell import pair
from overlay.shell.pair import PairAddressLost, run_mesh
from tests.unit.own_netns import run_in_own_netns

BASE = """\
[node]
node_id = "usw2-a"
region = "us-west-2"
[sip]
listen = ["udp:127.20.1.10:5060", "tcp:127.20.1.10:5060"]
[grpc]
listen = "0.0.0.0:7000"
insecure = true
[[peers]]
node_id = "use1-a"
region = "us-east-1"
sip = "10.30.1.10:5060"
grpc = "10.30.1.10:7000"
"""


def test_pair_section_read() -> None:
    config = parse_config(BASE + '[pair]\naddress = "127.20.1.10"\n', source="node.toml")
    assert config.pair == PairSection("127.20.1.10", 0.1)
    assert parse_config(BASE, source="node.toml").pair is None


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ('[pair]\naddress = "127.20.1.99"\n', "pair.address: 127.20.1.99 must be a sip.listen"),
        ('[pair]\naddress = "127.20.1.10"\ncheck_interval = 2\n', "pair.check_interval: must be"),
        ("[pair]\ncheck_interval = 0.5\n", "pair.address: required key is missing"),
        ('[pair]\naddress = "127.20.1.10"\nfloat = 1\n', "pair.float"),
    ],
)
def test_bad_pair_section_refused(section: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"node\.toml") as caught:
        parse_config(BASE + section, source="node.toml")
    assert message in str(caught.value)


def test_a_pair_member_may_run_several_workers() -> None:
    text = BASE.replace('"tcp:127.20.1.10:5060"]', '"tcp:127.20.1.10:5060"]\nworkers = 2')
    config = parse_config(text + '[pair]\naddress = "127.20.1.10"\n', source="node.toml")
    assert (config.sip.workers, config.pair is not None) == (2, True)


def test_peer_grpc_is_where_a_standby_follows_its_active() -> None:
    section = '[pair]\naddress = "127.20.1.10"\npeer_grpc = "{}"\n'
    config = parse_config(BASE + section.format("127.20.1.12:7000"), source="node.toml")
    assert config.pair is not None
    assert config.pair.peer_grpc == ("127.20.1.12", 7000)
    with pytest.raises(ConfigError, match=r"node\.toml:\d+: pair\.peer_grpc: needs a port"):
        parse_config(BASE + section.format("127.20.1.12"), source="node.toml")


def test_pair_needs_peers() -> None:
    alone = BASE.split("[[peers]]")[0].replace("[grpc]\nlisten", "[grpc]\nlisten", 1)
    with pytest.raises(ConfigError, match=r"pair: needs \[\[peers\]\]"):
        parse_config(alone + '[pair]\naddress = "127.20.1.10"\n', source="node.toml")


def test_holds_address_follows_the_kernel() -> None:
    """In a network namespace of its own: an address on the subnet but not assigned is not
    held (though a non-local bind would take it), and is the moment it is assigned."""
    script = textwrap.dedent(
        """
        import subprocess
        from overlay.shell.pair import holds_address
        def ip(*args): subprocess.run(["ip", *args], check=True)
        ip("link", "set", "lo", "up")
        ip("link", "add", "ovl0", "type", "veth", "peer", "name", "ovl1")
        ip("addr", "add", "10.99.0.11/24", "dev", "ovl0")
        ip("link", "set", "ovl0", "up")
        ip("link", "set", "ovl1", "up")
        seen = [holds_address("10.99.0.11"), holds_address("10.99.0.10"),
                holds_address("192.0.2.1")]
        ip("addr", "add", "10.99.0.10/32", "dev", "ovl0")
        seen.append(holds_address("10.99.0.10"))
        ip("addr", "del", "10.99.0.10/32", "dev", "ovl0")
        seen.append(holds_address("10.99.0.10"))
        print(seen)
        """
    )
    assert run_in_own_netns(script).strip() == "[True, False, False, True, False]"


class FakeMesh:
    def __init__(self) -> None:
        self.joined = False
        self.runs = 0

    async def run(self, bridge: object) -> None:
        self.runs += 1
        await trio.sleep_forever()


@pytest.mark.trio
async def test_standby_joins_when_it_gets_the_address_and_stops_when_it_loses_it(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    held = False
    monkeypatch.setattr(pair, "holds_address", lambda address: held)
    mesh = FakeMesh()
    lost_at = None
    async with trio.open_nursery() as nursery:

        async def member() -> None:
            nonlocal lost_at
            with pytest.RaisesGroup(PairAddressLost, flatten_subgroups=True):
                await run_mesh(PairSection("127.20.1.10", 0.1), mesh, bridge=None)  # type: ignore[arg-type]
            lost_at = trio.current_time()

        nursery.start_soon(member)
        await trio.sleep(60)
        assert (mesh.runs, mesh.joined) == (0, False)  # a standby stays out of the mesh
        held = True
        await trio.sleep(0.1)
        assert (mesh.runs, mesh.joined) == (1, True)
        held = False
        taken_over = trio.current_time()
    assert lost_at is not None
    assert lost_at - taken_over <= 0.1 + 1e-9


@pytest.mark.trio
async def test_a_node_without_a_pair_is_always_in_the_mesh() -> None:
    mesh = FakeMesh()
    with trio.move_on_after(0.05):
        await run_mesh(None, mesh, bridge=None)  # type: ignore[arg-type]
    assert (mesh.runs, mesh.joined) == (1, True)
