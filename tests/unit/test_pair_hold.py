"""A pair member that holds the pair's address by file (``[pair] hold = "file"``: the lab, two
members on one machine), and the HA agent's side of that file (``HoldFile``, ha.toml)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from overlay.config import ConfigError, PairSection, parse_config
from overlay.ha import HaAgentConfig, HoldFile, parse_ha_config, read_holder
from overlay.lab.topology import PairMember, Topology, lab_nodes, node_config
from overlay.shell.pair import PairAddressLost, holds, run_mesh

FLOATING = "127.0.10.1"
BASE = f"""\
[node]
node_id = "use1"
region = "us-east-1"
[sip]
listen = ["udp:{FLOATING}:5060"]
[grpc]
listen = "127.0.10.21:7000"
insecure = true
[[peers]]
node_id = "usw2"
region = "us-west-2"
sip = "127.0.10.2:5060"
grpc = "127.0.10.2:7000"
"""


def file_pair(hold_file: Path, member: str = "use1.1") -> str:
    return f'[pair]\naddress = "{FLOATING}"\nhold = "file"\nhold_file = "{hold_file}"\n' + (
        f'member = "{member}"\ncheck_interval = 0.05\n'
    )


def test_a_file_held_pair_is_read(tmp_path: Path) -> None:
    config = parse_config(BASE + file_pair(tmp_path / "use1.hold"), source="node.toml")
    assert config.pair == PairSection(
        FLOATING, 0.05, hold="file", hold_file=str(tmp_path / "use1.hold"), member="use1.1"
    )
    kernel = parse_config(BASE + f'[pair]\naddress = "{FLOATING}"\n', source="node.toml")
    assert kernel.pair is not None
    assert (kernel.pair.hold, kernel.pair.hold_file, kernel.pair.member) == ("kernel", None, None)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda text: text.replace('hold = "file"', 'hold = "disk"'),
            'pair.hold: must be "kernel" or "file", got \'disk\'',
        ),
        (
            lambda text: text.replace('member = "use1.1"\n', ""),
            "pair.member: required key is missing",
        ),
        (
            lambda text: text.replace('hold = "file"\n', ""),
            'pair.hold_file: only with hold = "file"',
        ),
        (
            lambda text: text.replace('hold_file = "/', 'hold_file = "'),
            "pair.hold_file: must be an absolute path",
        ),
        (
            lambda text: text.replace('member = "use1.1"', 'member = "Use1/1"'),
            "pair.member: must match",
        ),
        (
            lambda text: text.replace("udp:127.0.10.1:5060", "udp:127.0.10.1:0"),
            'sip.listen[0]: needs a port with [pair] hold = "file"',
        ),
        (
            lambda text: text.replace('listen = "127.0.10.21:7000"', f'listen = "{FLOATING}:7000"'),
            "grpc.listen: must be this member's own address",
        ),
        (
            lambda text: text.replace('listen = "127.0.10.21:7000"', 'listen = "0.0.0.0:7000"'),
            "grpc.listen: must be this member's own address",
        ),
        (
            lambda text: text + f'[health]\nlisten = "{FLOATING}:8080"\n',
            "health.listen: must be this member's own address",
        ),
    ],
)
def test_bad_file_held_pairs_are_refused(
    tmp_path: Path, edit: Callable[[str], str], message: str
) -> None:
    text = edit(BASE + file_pair(tmp_path / "use1.hold"))
    with pytest.raises(ConfigError, match=r"node\.toml") as caught:
        parse_config(text, source="node.toml")
    assert message in str(caught.value)


def test_the_hold_files_directory_must_exist_here_only(tmp_path: Path) -> None:
    text = BASE + file_pair(tmp_path / "missing" / "use1.hold")
    with pytest.raises(ConfigError, match="is not a directory here"):
        parse_config(text, source="node.toml")
    assert parse_config(text, source="node.toml", check_files=False).pair is not None


@pytest.mark.trio
async def test_the_file_names_the_holder_and_agents_never_erase_each_other(tmp_path: Path) -> None:
    path = str(tmp_path / "use1.hold")
    one, two = HoldFile(FLOATING, path, "use1.1"), HoldFile(FLOATING, path, "use1.2")
    pair_one = PairSection(FLOATING, hold="file", hold_file=path, member="use1.1")
    pair_two = PairSection(FLOATING, hold="file", hold_file=path, member="use1.2")
    assert read_holder(path) is None
    assert (holds(pair_one), holds(pair_two)) == (False, False)
    assert await one.set_present(True) == path
    await one.set_present(True)  # idempotent
    assert (holds(pair_one), holds(pair_two)) == (True, False)
    # The peer took over; the old holder, giving up late, leaves the new name alone.
    await two.set_present(True)
    await one.set_present(False)
    assert read_holder(path) == "use1.2"
    assert (holds(pair_one), holds(pair_two)) == (False, True)
    await two.set_present(False)
    await two.set_present(False)  # idempotent
    assert read_holder(path) is None


def name_holder(path: str, member: str) -> None:
    """What the holder's agent writes (``HoldFile``), written plainly."""
    Path(path).write_text(f"{member}\n")


class FakeMesh:
    def __init__(self) -> None:
        self.joined = False

    async def run(self, bridge: object) -> None:
        await trio.sleep_forever()


@pytest.mark.trio
async def test_a_member_joins_when_the_file_names_it_and_stops_when_it_names_the_other(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = str(tmp_path / "use1.hold")
    pair = PairSection(FLOATING, 0.05, hold="file", hold_file=path, member="use1.2")
    mesh = FakeMesh()
    stopped_at = None
    async with trio.open_nursery() as nursery:

        async def member() -> None:
            nonlocal stopped_at
            with pytest.RaisesGroup(PairAddressLost, flatten_subgroups=True):
                await run_mesh(pair, mesh, bridge=None)  # type: ignore[arg-type]
            stopped_at = trio.current_time()

        nursery.start_soon(member)
        name_holder(path, "use1.1")
        await trio.sleep(10)
        assert (mesh.joined, holds(pair)) == (False, False)  # the file names the other member
        name_holder(path, "use1.2")
        await trio.sleep(0.05)
        assert (mesh.joined, holds(pair)) == (True, True)
        name_holder(path, "use1.1")
        taken_over = trio.current_time()
    assert stopped_at is not None
    assert stopped_at - taken_over <= 0.05 + 1e-9


HA_TOML = """\
[ha]
region = "us-east-1"
fleet = "lab"
pair = "use1"
role = "active"
floating_private_ip = "10.1.1.10"
peer_grpc = "127.0.10.22:7000"
insecure = true
"""


def test_ha_toml_hold_file_and_member(tmp_path: Path) -> None:
    hold = f'hold_file = "{tmp_path}/use1.hold"\nmember = "use1.1"\n'
    member = parse_ha_config(HA_TOML + hold)
    assert (member.options["hold_file"], member.options["member"]) == (
        f"{tmp_path}/use1.hold",
        "use1.1",
    )
    with pytest.raises(ConfigError, match=r"ha\.member: needs hold_file"):
        parse_ha_config(HA_TOML + 'member = "use1.1"\n')
    with pytest.raises(ConfigError, match=r"ha\.hold_file: needs member"):
        parse_ha_config(HA_TOML + f'hold_file = "{tmp_path}/use1.hold"\n')
    with pytest.raises(ConfigError, match=r"ha\.hold_file: stands for interface"):
        parse_ha_config(HA_TOML + hold + 'interface = "auto"\n')
    with pytest.raises(ConfigError, match=r"ha\.hold_file: must be an absolute path"):
        parse_ha_config(HA_TOML + 'hold_file = "use1.hold"\nmember = "use1.1"\n')


def test_agent_config_checks_the_hold_file_pairing() -> None:
    base = {
        "region": "us-east-1",
        "own_eni_id": "eni-1",
        "peer_eni_id": "eni-2",
        "floating_private_ip": "10.1.1.10",
        "allocation_id": "eipalloc-1",
        "peer_grpc_target": "127.0.10.22:7000",
    }
    with pytest.raises(ValueError, match="go together"):
        HaAgentConfig(**base, hold_file="/run/use1.hold")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stands for interface"):
        HaAgentConfig(**base, hold_file="/run/use1.hold", member="a", interface="auto")  # type: ignore[arg-type]


def test_a_lab_members_config_is_a_file_held_pair_member(tmp_path: Path) -> None:
    """What ``open_lab(pairs=True)`` gives each member: the node's address for SIP and media,
    its own for gRPC, metrics and health; peers reach the pair at the node's address."""
    hosts = {"usw2": "127.0.10.1", "use1": "127.0.10.2"}
    nodes = lab_nodes(hosts, topology=TWO_REGIONS)
    member = PairMember("use1.2", "use1", "127.0.10.24", str(tmp_path / "use1.hold"), "127.0.10.23")
    text = node_config(nodes[1], nodes, egress=["use1"], target="127.0.10.9:5060", member=member)
    config = parse_config(text, source="node.toml")
    assert config.pair == PairSection(
        "127.0.10.2",
        0.05,
        peer_grpc=("127.0.10.23", 7000),
        hold="file",
        hold_file=member.hold_file,
        member="use1.2",
    )
    served = (config.grpc, config.metrics, config.health)
    assert {None if section is None else section.host for section in served} == {"127.0.10.24"}
    peer = parse_config(
        node_config(nodes[0], nodes, egress=["use1"], target="127.0.10.9:5060"), source="node.toml"
    )
    [use1] = peer.peers
    assert (use1.sip, use1.grpc, use1.media) == (
        ("127.0.10.2", 5060),
        ("127.0.10.2", 7000),
        ("127.0.10.2", 7100),
    )


TWO_REGIONS = Topology(
    (("usw2", "us-west-2"), ("use1", "us-east-1")),
    {frozenset({"usw2", "use1"}): 68.0},
    ("usw2",),
    "use1",
)
