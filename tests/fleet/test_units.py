"""The systemd subset the fabric runs, on hand-made units and on the units the deployer renders
for a pair member (no root needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy._pairs import MEMBER_USER_DATA
from deploy.fleet import load_fleet
from deploy.render import member_files, members
from tests.fleet._units import UnitError, parse_unit, start_order, units_to_start

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "fleet.example.toml"


def test_parse_unit_keeps_what_the_fabric_runs():
    unit = parse_unit(
        "echo.service",
        """
# a comment
[Unit]
After=prep.service network-online.target
Requires=prep.service

[Service]
Type=notify
Environment="GREETING=hello world" PORT=7
ExecStartPre=-/bin/false
ExecStartPre=+/bin/sh -c 'echo "$PORT"'
ExecStart=/usr/bin/python3 -c \\
    "print('hi')"
RuntimeDirectory=echo other/nested
TimeoutStartSec=15s
Restart=always
""",
    )
    assert unit.type == "notify"
    assert unit.after == {"prep.service", "network-online.target"}
    assert unit.environment == {"GREETING": "hello world", "PORT": "7"}
    assert [(c.argv, c.ignore_failure) for c in unit.exec_start_pre] == [
        (("/bin/false",), True),
        (("/bin/sh", "-c", 'echo "$PORT"'), False),
    ]
    assert [c.argv for c in unit.exec_start] == [("/usr/bin/python3", "-c", "print('hi')")]
    assert unit.runtime_directories == ("echo", "other/nested")
    assert unit.timeout_start_s == 15.0


@pytest.mark.parametrize(
    ("service", "error"),
    [
        ("Type=forking\nExecStart=/bin/true", "Type=forking"),
        ("ExecStart=/bin/true\nExecStart=/bin/false", "exactly one ExecStart"),
        ("ExecStart=@/bin/true true", "@ prefix"),
        ("not a setting", "not a setting"),
    ],
)
def test_parse_unit_refuses_what_it_cannot_run(service: str, error: str):
    with pytest.raises(UnitError, match=error):
        parse_unit("x.service", f"[Service]\n{service}\n")


def test_an_empty_assignment_resets_a_list():
    unit = parse_unit("x.service", "[Service]\nExecStart=/bin/a\nExecStart=\nExecStart=/bin/b\n")
    assert [c.argv for c in unit.exec_start] == [("/bin/b",)]


def test_units_to_start_reads_the_systemctl_calls():
    calls = "daemon-reload\nenable --now a.service b\nenable c.service\nstart d\nrestart a\n"
    assert units_to_start(calls) == ["a.service", "b.service", "d.service"]


def test_start_order_follows_after_and_requires_then_the_listing():
    first = parse_unit("first.service", "[Service]\nExecStart=/bin/true\n")
    second = parse_unit(
        "second.service", "[Unit]\nRequires=first.service\n[Service]\nExecStart=/bin/true\n"
    )
    other = parse_unit(
        "other.service", "[Unit]\nAfter=gone.target\n[Service]\nExecStart=/bin/true\n"
    )
    assert start_order([second, other, first]) == [other, first, second]
    loop = parse_unit(
        "first.service", "[Unit]\nAfter=second.service\n[Service]\nExecStart=/bin/true\n"
    )
    with pytest.raises(UnitError, match="cycle"):
        start_order([second, loop])


def test_a_pair_members_units_run_in_the_fabric():
    fleet = load_fleet(EXAMPLE)
    member = members(fleet)[0]
    files = member_files(fleet, member)
    calls = "\n".join(
        line.removeprefix("systemctl ")
        for line in MEMBER_USER_DATA.splitlines()
        if line.startswith("systemctl ")
    )
    names = units_to_start(calls)
    units = [parse_unit(name, files[f"/etc/systemd/system/{name}"]) for name in names]
    ordered = start_order(units)
    assert ordered[0].name == "overlay-secrets.service"
    assert ordered[0].type == "oneshot"
    by_name = {unit.name: unit for unit in ordered}
    assert by_name["overlay.service"].type == "notify"
    assert by_name["overlay.service"].exec_start[0].argv[0] == "/opt/overlay/bin/overlay"
    assert by_name["overlay-ha.service"].type == "simple"
