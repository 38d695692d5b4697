"""LSDB and reliable flooding: sequence numbers, aging, resync, relay around broken paths."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from overlay.linkstate import (
    FloodConfig,
    Flooder,
    InstallResult,
    LinkMetrics,
    LinkStateDb,
    Lsa,
    LsaAck,
    significant_change,
)

CONFIG = FloodConfig(refresh_interval=10.0, max_age=40.0, retransmit_interval=1.0)


def lsa(origin: str, seq: int, age: float = 0.0, *links: LinkMetrics) -> Lsa:
    return Lsa(origin, seq, age, "r", "", tuple(links))


class Mesh:
    """Flooders wired by an in-memory network; `sessions` says which pairs can talk."""

    def __init__(self, names: list[str], *, config: FloodConfig = CONFIG) -> None:
        self.now = 0.0
        self.config = config
        self.nodes = {
            name: Flooder(name, "r", "", config, initial_seq=1000, now=0.0) for name in names
        }
        self.sent: list[tuple[str, str, Lsa | LsaAck]] = []
        self.drop: set[tuple[str, str]] = set()
        for a, b in itertools.permutations(names, 2):
            self.nodes[a].session_up(b, self.now)

    def set_links(self, name: str, up: dict[str, bool], rtt: float = 10.0) -> None:
        links = [LinkMetrics(peer, state, rtt_ms=rtt) for peer, state in up.items()]
        self.nodes[name].set_links(links, self.now)

    def full_links(self) -> None:
        for name in self.nodes:
            self.set_links(name, {peer: True for peer in self.nodes if peer != name})

    def deliver(self) -> int:
        """Deliver messages until quiet; returns how many LSAs were carried."""
        carried = 0
        while True:
            batch = [
                (src, dst, msg)
                for src, node in self.nodes.items()
                for dst, msg in node.messages_to_send()
            ]
            if not batch:
                return carried
            for src, dst, msg in batch:
                self.sent.append((src, dst, msg))
                if (src, dst) in self.drop or dst not in self.nodes:
                    continue
                if src not in self.nodes[dst].sessions:
                    continue
                if isinstance(msg, Lsa):
                    carried += 1
                    self.nodes[dst].receive_lsa(src, msg, self.now)
                else:
                    self.nodes[dst].receive_ack(src, msg)

    def advance(self, seconds: float, step: float = 0.1) -> None:
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now = round(self.now + step, 6)
            for node in self.nodes.values():
                node.handle_timer(self.now)
            self.deliver()

    def cut(self, a: str, b: str) -> None:
        self.nodes[a].session_down(b)
        self.nodes[b].session_down(a)

    def heal(self, a: str, b: str) -> None:
        self.nodes[a].session_up(b, self.now)
        self.nodes[b].session_up(a, self.now)

    def seqs(self, name: str) -> dict[str, int | None]:
        db = self.nodes[name].lsdb
        return {origin: db.seq(origin) for origin in self.nodes}

    def converged(self) -> bool:
        views = [self.seqs(name) for name in self.nodes]
        return all(view == views[0] for view in views) and None not in views[0].values()


# -- LinkStateDb -------------------------------------------------------------------------------


def test_lsdb_installs_only_newer_instances():
    db = LinkStateDb(max_age=40.0)
    assert db.install(lsa("a", 5), 0.0) is InstallResult.NEWER
    assert db.install(lsa("a", 5), 1.0) is InstallResult.SAME
    assert db.install(lsa("a", 4), 1.0) is InstallResult.OLDER
    assert db.install(lsa("a", 6), 2.0) is InstallResult.NEWER
    assert db.seq("a") == 6
    assert db.version == 2


def test_lsdb_ages_instances_and_expires_them_at_max_age():
    db = LinkStateDb(max_age=40.0)
    db.install(lsa("a", 1, age=10.0), 100.0)
    db.install(lsa("b", 1), 100.0)
    got = db.get("a", 105.0)
    assert got is not None
    assert got.age == pytest.approx(15.0)
    assert db.get_timer() == pytest.approx(130.0)
    assert db.expire(129.9) == []
    assert db.expire(130.0) == ["a"]
    assert "a" not in db
    assert db.get_timer() == pytest.approx(140.0)


def test_lsdb_refuses_an_instance_already_at_max_age():
    db = LinkStateDb(max_age=40.0)
    db.install(lsa("a", 1, age=40.0), 0.0)
    assert "a" not in db


def test_significant_change_thresholds():
    base = LinkMetrics("b", True, rtt_ms=68.0, jitter_ms=1.0, loss_ratio=0.0)
    assert not significant_change(base, dataclasses.replace(base, rtt_ms=72.0), CONFIG)
    assert significant_change(base, dataclasses.replace(base, rtt_ms=90.0), CONFIG)
    assert significant_change(base, dataclasses.replace(base, loss_ratio=0.05), CONFIG)
    assert significant_change(base, dataclasses.replace(base, jitter_ms=10.0), CONFIG)
    assert significant_change(base, dataclasses.replace(base, up=False), CONFIG)
    assert significant_change(base, dataclasses.replace(base, admin_cost=5.0), CONFIG)


# -- Flooder ------------------------------------------------------------------------------------


def test_full_mesh_converges_and_acks_stop_retransmissions():
    mesh = Mesh(["a", "b", "c", "d"])
    mesh.full_links()
    mesh.deliver()
    assert mesh.converged()
    before = sum(n.statistics().retransmissions for n in mesh.nodes.values())
    mesh.advance(3.0)
    assert sum(n.statistics().retransmissions for n in mesh.nodes.values()) == before


def test_a_change_costs_n_minus_1_messages_in_a_healthy_mesh():
    names = [f"n{i}" for i in range(10)]
    mesh = Mesh(names)
    mesh.full_links()
    mesh.deliver()
    up = {peer: True for peer in names if peer != "n0"}
    mesh.set_links("n0", {**up, "n1": False})
    carried = mesh.deliver()
    # n0 tells the 9 others; n1 is not told by anyone else again because n0 reaches it directly
    # over the session (the link's probes are down, the session is not: a different failure).
    # The others relay to n1 because n0's LSA now says n0-n1 is down: 8 relays.
    assert carried == 9 + 8
    assert mesh.converged()
    mesh.now = 0.5
    mesh.set_links("n0", up, rtt=100.0)
    assert mesh.deliver() == 9


def test_lost_lsa_is_retransmitted_until_acknowledged():
    mesh = Mesh(["a", "b", "c"])
    mesh.full_links()
    mesh.deliver()
    mesh.drop.add(("a", "b"))
    mesh.now = 0.5  # past min_originate_interval: a metric change floods at once
    mesh.set_links("a", {"b": True, "c": True}, rtt=80.0)
    mesh.deliver()
    assert mesh.nodes["b"].lsdb.seq("a") != mesh.nodes["a"].lsdb.seq("a")
    mesh.drop.clear()
    mesh.advance(1.0)
    assert mesh.converged()
    assert mesh.nodes["a"].statistics().retransmissions >= 1


def test_lsa_is_relayed_around_a_broken_direct_path():
    mesh = Mesh(["a", "b", "c", "d"])
    mesh.full_links()
    mesh.deliver()
    mesh.cut("a", "d")
    mesh.set_links("a", {"b": True, "c": True, "d": False})
    mesh.set_links("d", {"a": False, "b": True, "c": True})
    mesh.deliver()
    assert mesh.converged()
    assert mesh.nodes["d"].lsdb.seq("a") == mesh.nodes["a"].lsdb.seq("a")


def test_healed_partition_converges_by_database_exchange():
    mesh = Mesh(["a", "b", "c", "d"])
    mesh.full_links()
    mesh.deliver()
    for left, right in itertools.product("ab", "cd"):
        mesh.cut(left, right)
    mesh.set_links("a", {"b": True, "c": False, "d": False}, rtt=30.0)
    mesh.set_links("c", {"a": False, "b": False, "d": True}, rtt=40.0)
    mesh.deliver()
    assert not mesh.converged()
    for left, right in itertools.product("ab", "cd"):
        mesh.heal(left, right)
    mesh.deliver()
    assert mesh.converged()


def test_silent_node_ages_out_and_live_ones_refresh():
    mesh = Mesh(["a", "b", "c"])
    mesh.full_links()
    mesh.deliver()
    mesh.nodes.pop("c")
    for name in ("a", "b"):
        mesh.nodes[name].session_down("c")
    mesh.advance(39.0, step=0.5)
    assert "c" in mesh.nodes["a"].lsdb
    mesh.advance(1.5, step=0.5)
    assert "c" not in mesh.nodes["a"].lsdb
    assert "c" not in mesh.nodes["b"].lsdb
    # a and b refreshed every 10 s: still present everywhere.
    assert mesh.nodes["a"].lsdb.seq("b") == mesh.nodes["b"].lsdb.seq("b")
    assert mesh.nodes["a"].statistics().originated >= 5


def test_restarted_node_jumps_past_its_previous_sequence_number():
    mesh = Mesh(["a", "b"])
    mesh.full_links()
    mesh.deliver()
    old_seq = mesh.nodes["a"].lsdb.seq("a")
    assert old_seq is not None
    # "a" restarts with a lower starting number (a clock step back).
    mesh.nodes["a"] = Flooder("a", "r", "", CONFIG, initial_seq=5, now=mesh.now)
    mesh.nodes["b"].session_down("a")
    mesh.heal("a", "b")
    mesh.deliver()
    new_seq = mesh.nodes["a"].lsdb.seq("a")
    assert new_seq is not None
    assert new_seq > old_seq
    assert mesh.nodes["b"].lsdb.seq("a") == new_seq


def test_older_instance_makes_us_send_ours_back():
    node = Flooder("x", "r", "", CONFIG, initial_seq=0, now=0.0)
    node.session_up("y", 0.0)
    node.messages_to_send()
    node.receive_lsa("y", lsa("z", 7), 0.0)
    node.receive_lsa("y", lsa("z", 3), 0.1)
    out = node.messages_to_send()
    assert ("y", LsaAck("z", 3)) in out
    sent_back = [m for dst, m in out if dst == "y" and isinstance(m, Lsa)]
    assert [m.seq for m in sent_back] == [7]


def test_metric_changes_are_rate_limited_but_state_changes_are_not():
    node = Flooder("x", "r", "", CONFIG, initial_seq=0, now=0.0)
    node.set_links([LinkMetrics("y", True, rtt_ms=10.0)], 0.0)
    first = node.lsdb.seq("x")
    node.set_links([LinkMetrics("y", True, rtt_ms=50.0)], 0.05)
    assert node.lsdb.seq("x") == first
    assert node.get_timer() == pytest.approx(0.2)
    node.handle_timer(0.2)
    assert node.lsdb.seq("x") == first + 1
    node.set_links([LinkMetrics("y", False)], 0.25)
    assert node.lsdb.seq("x") == first + 2


def test_sessions_get_the_whole_database_on_up():
    node = Flooder("x", "r", "", CONFIG, initial_seq=0, now=0.0)
    node.receive_lsa("y", lsa("z", 7), 0.0)
    node.receive_lsa("y", lsa("y", 2), 0.0)
    node.messages_to_send()
    node.session_up("w", 1.0)
    sent = sorted(m.origin for dst, m in node.messages_to_send() if isinstance(m, Lsa))
    assert sent == ["x", "y", "z"]
