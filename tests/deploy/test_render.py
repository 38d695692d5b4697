"""``deploy.render`` and ``overlay deploy render``: every member's node.toml from fleet.toml
alone, loaded by the node's own loader; a bad overlay setting refused at fleet.toml's line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from deploy.fleet import load_fleet, parse_fleet
from deploy.render import (
    HA_TOML,
    HA_UNIT,
    NODE_TLS_FILES,
    NODE_TOML,
    NODE_UNIT,
    SECRETS_UNIT,
    TLS_DIR,
    ha_toml,
    member_files,
    members,
    node_toml,
)
from overlay.cli import app
from overlay.config import ConfigError, DnsTarget, StaticTarget, parse_config
from overlay.ha import parse_ha_config

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "fleet.example.toml"


def example_with(extra: str) -> str:
    return EXAMPLE.read_text() + "\n" + extra


def test_every_member_of_the_example_boots_with_a_node_toml_the_node_loads() -> None:
    fleet = load_fleet(EXAMPLE)
    every = members(fleet)
    assert len(every) == 16  # four regions, two AZ pairs each, two members a pair
    for member in every:
        config = parse_config(node_toml(fleet, member), source=member.id, check_files=False)
        az = member.az
        assert (config.node.node_id, config.node.region, config.node.az) == (
            az.name,
            member.region.name,
            az.name,
        )
        assert {(a.transport, a.host, a.port) for a in config.sip.listen} == {
            ("udp", member.floating_ip, 5060),
            ("tcp", member.floating_ip, 5060),
        }
        assert config.media is not None
        assert (config.media.address, config.media.overlay) == (
            member.floating_ip,
            (member.floating_ip, 7001),
        )
        assert (config.media.port_first, config.media.port_last) == (10000, 20000)
        others = {(p.node_id, p.sip, p.grpc, p.media) for p in config.peers}
        assert len(others) == 7
        assert member.node_id not in {p.node_id for p in config.peers}
        for region in fleet.regions:
            for other in region.azs:
                if other.name != az.name:
                    address = str(other.subnet_cidr).rsplit(".", 1)[0] + ".10"
                    sip, grpc, relay = ((address, port) for port in (5060, 7000, 7001))
                    assert (other.name, sip, grpc, relay) in others
        assert config.cloudwatch is not None
        assert config.cloudwatch.fleet == "voice"
        assert config.grpc is not None
        assert not config.grpc.insecure
        # Both members run the node; only the one holding the address is in the mesh.
        assert config.pair is not None
        assert config.pair.address == member.floating_ip


def test_the_dialplan_egress_regions_become_their_pairs() -> None:
    fleet = load_fleet(EXAMPLE)
    config = parse_config(node_toml(fleet, members(fleet)[0]), source="n", check_files=False)
    east, west = config.dialplan
    assert east.user_prefix == "+1212"
    assert east.target == DnsTarget("sip", "trunk-east.carrier.example")
    assert east.egress == ("us-east-1a", "us-east-1b", "us-east-2a", "us-east-2b")
    assert west.target == StaticTarget("203.0.113.20", 5060)
    assert west.egress == ("us-west-2a", "us-west-2b")


def test_both_members_of_a_pair_run_the_same_node() -> None:
    fleet = load_fleet(EXAMPLE)
    active, standby = members(fleet)[:2]
    assert (active.id, standby.id) == ("us-west-2a-active", "us-west-2a-standby")
    body = [node_toml(fleet, m).split("\n", 1)[1] for m in (active, standby)]
    # The same node but for whom each follows: the other member, at its own address.
    peers = [line for text in body for line in text.splitlines() if line.startswith("peer_grpc")]
    assert peers == [
        f'peer_grpc = "{standby.own_ip()}:7000"',
        f'peer_grpc = "{active.own_ip()}:7000"',
    ]
    assert [text.replace(peers[1], peers[0]) for text in body] == [body[0], body[0]]
    assert set(member_files(fleet, active)) == {
        NODE_TOML,
        NODE_UNIT,
        HA_TOML,
        HA_UNIT,
        SECRETS_UNIT,
    }


def test_each_member_fetches_its_own_tls_files_before_its_node_and_agent_start() -> None:
    fleet = load_fleet(EXAMPLE)
    for member in members(fleet):
        files = member_files(fleet, member)
        unit = files[SECRETS_UNIT]
        assert "Type=oneshot\nRemainAfterExit=yes\n" in unit
        assert "RuntimeDirectory=overlay/tls\nRuntimeDirectoryMode=0700\n" in unit
        assert "RuntimeDirectoryPreserve=yes\n" in unit
        assert (
            f"secrets fetch --region {member.region.name}"
            f" --path /overlay/voice/{member.id} --dir {TLS_DIR} --log-json"
        ) in unit
        for service in (files[NODE_UNIT], files[HA_UNIT]):
            assert "Requires=overlay-secrets.service\nAfter=overlay-secrets.service\n" in service
        # The node and the agent read what the fetch writes, in the RuntimeDirectory.
        node = parse_config(files[NODE_TOML], source=member.id, check_files=False)
        assert node.grpc is not None
        assert (node.grpc.ca, node.grpc.cert, node.grpc.key) == tuple(NODE_TLS_FILES.values())
        assert all(path.startswith(f"{TLS_DIR}/") for path in NODE_TLS_FILES.values())
        ha = parse_ha_config(files[HA_TOML], source=member.id, check_files=False)
        assert ha.tls_files == tuple(NODE_TLS_FILES.values())


def test_each_members_ha_agent_watches_the_other_member() -> None:
    fleet = load_fleet(EXAMPLE)
    for member in members(fleet):
        ha = parse_ha_config(ha_toml(fleet, member), source=member.id, check_files=False)
        assert (ha.region, ha.fleet, ha.pair, ha.role) == (
            member.region.name,
            "voice",
            member.az.name,
            member.role,
        )
        assert ha.floating_private_ip == member.floating_ip
        assert ha.peer_grpc_target == f"{member.own_ip(member.peer_role)}:7000"
        assert member.own_ip(member.peer_role) != member.own_ip()
        assert ha.options == {
            "heartbeat_interval": 0.5,
            "dead_after": 3,
            "hold_down": 10.0,
            "interface": "auto",
        }


def test_linkstate_security_and_media_reach_every_node() -> None:
    text = example_with(
        "[linkstate]\nprobe_interval = 0.2\nroute_wait = 4.0\n"
        '[security]\nrate = 30.0\ntrunks = [{ cidr = "203.0.113.0/24", rate = 500.0 }]\n'
        "[media]\ninactivity_timeout = 90.0\n"
    )
    fleet = parse_fleet(text)
    for member in members(fleet):
        config = parse_config(node_toml(fleet, member), source=member.id, check_files=False)
        assert (config.linkstate.probe_interval, config.linkstate.route_wait) == (0.2, 4.0)
        assert config.security is not None
        assert config.security.rate == 30.0
        [trunk] = config.security.trunks
        assert (str(trunk.cidr), trunk.rate) == ("203.0.113.0/24", 500.0)
        assert config.media is not None
        assert config.media.inactivity_timeout == 90.0


def test_no_security_table_is_no_edge_security() -> None:
    fleet = load_fleet(EXAMPLE)
    config = parse_config(node_toml(fleet, members(fleet)[0]), source="n", check_files=False)
    assert config.security is None


@pytest.mark.parametrize(
    ("extra", "key", "reason"),
    [
        ("[linkstate]\nprobe_interval = -1\n", "linkstate.probe_interval", "must be"),
        ("[linkstate]\nprobe_intervall = 0.1\n", "linkstate.probe_intervall", "unknown key"),
        ("[security]\nrate = 0\n", "security.rate", "must be"),
        ("[media]\nport_first = 20000\n", "media.port_first", "unknown key"),
        (
            '[[dialplan]]\ntarget = "203.0.113.9:5060"\negress = ["eu-west-1"]\n',
            "dialplan[2].egress",
            "must name regions of this fleet",
        ),
        ('[[dialplan]]\nuser_prefix = "+44"\n', "dialplan[2].target", "required"),
    ],
)
def test_a_bad_overlay_setting_is_refused_at_its_line(extra: str, key: str, reason: str) -> None:
    text = example_with(extra)
    with pytest.raises(ConfigError) as caught:
        parse_fleet(text, source="fleet.toml")
    error = caught.value
    assert error.key == key
    assert reason in error.reason
    assert error.line is not None
    written = text.splitlines()[error.line - 1]
    assert key.rsplit(".", 1)[-1] in written or written.startswith("[["), written


def test_render_prints_one_members_files() -> None:
    result = CliRunner().invoke(
        app, ["deploy", "render", "-f", str(EXAMPLE), "--member", "us-east-1b-standby"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("# ==> us-east-1b-standby: ") == 5
    assert f"# ==> us-east-1b-standby: {NODE_TOML} <==" in result.output
    assert 'node_id = "us-east-1b"' in result.output


def test_render_refuses_an_unknown_member_and_a_bad_fleet(tmp_path: Path) -> None:
    runner = CliRunner()
    unknown = runner.invoke(app, ["deploy", "render", "-f", str(EXAMPLE), "--member", "x"])
    assert unknown.exit_code == 2
    assert "no member 'x'" in unknown.output
    bad = tmp_path / "fleet.toml"
    bad.write_text(example_with("[linkstate]\nhold_down = -3\n"))
    refused = runner.invoke(app, ["deploy", "render", "-f", str(bad)])
    assert refused.exit_code == 2
    assert f"{bad}:" in refused.output
    assert "linkstate.hold_down" in refused.output
