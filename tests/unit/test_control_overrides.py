"""Operator overrides of a node's links (overlay.noc._overrides): checked, applied to what
the node advertises, gone at their expiry."""

from __future__ import annotations

import math

import pytest

from overlay.linkstate import LinkMetrics
from overlay.noc import MAX_OVERRIDE_S, LinkOverride, LinkOverrides, new_override

NOW = 1000.0
LINKS = [LinkMetrics("use1", True, 68.0, admin_cost=5.0), LinkMetrics("use2", True, 50.0)]


def test_cost_override_replaces_the_admin_cost_only():
    override = new_override("use1", admin_cost_ms=500.0, force_down=False, ttl_s=60, now=NOW)
    assert override.expires_at == NOW + 60
    overrides = LinkOverrides()
    assert overrides.set(override) is None
    assert overrides.apply(LINKS) == [
        LinkMetrics("use1", True, 68.0, admin_cost=500.0),
        LinkMetrics("use2", True, 50.0),
    ]
    assert override.describe() == "admin cost 500 ms"


def test_forced_down_link_is_advertised_down():
    override = new_override(
        "use2", admin_cost_ms=None, force_down=True, expires_at=NOW + 5, now=NOW
    )
    overrides = LinkOverrides()
    overrides.set(override)
    assert [link.up for link in overrides.apply(LINKS)] == [True, False]
    assert override.describe() == "forced down"


def test_overrides_expire_and_are_replaced_per_peer():
    overrides = LinkOverrides()
    first = new_override("use1", admin_cost_ms=1.0, force_down=False, ttl_s=10, now=NOW)
    second = new_override("use1", admin_cost_ms=2.0, force_down=False, ttl_s=20, now=NOW)
    other = new_override("use2", admin_cost_ms=None, force_down=True, ttl_s=5, now=NOW)
    overrides.set(first)
    assert overrides.set(second) == first
    overrides.set(other)
    assert overrides.get_timer() == NOW + 5
    assert overrides.expire(NOW + 4.9) == []
    assert overrides.expire(NOW + 5) == [other]
    assert list(overrides) == [second]
    assert overrides.clear("use2") == []
    assert overrides.clear() == [second]
    assert overrides.get_timer() is None
    assert overrides.apply(LINKS) == LINKS


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"admin_cost_ms": -5.0, "ttl_s": 60},
            "admin_cost_ms must be a finite number >= 0, got -5.0",
        ),
        ({"admin_cost_ms": math.nan, "ttl_s": 60}, "finite"),
        ({"admin_cost_ms": math.inf, "ttl_s": 60}, "finite"),
        ({"ttl_s": 60}, "nothing to override"),
        ({"admin_cost_ms": 5.0, "force_down": True, "ttl_s": 60}, "not both"),
        ({"admin_cost_ms": 5.0}, "needs one expiry"),
        ({"admin_cost_ms": 5.0, "ttl_s": 60, "expires_at": NOW + 60}, "needs one expiry"),
        ({"admin_cost_ms": 5.0, "ttl_s": 0}, "ttl_s must be a positive number"),
        ({"admin_cost_ms": 5.0, "expires_at": NOW - 30}, "expires_at is 30 s in the past"),
        ({"admin_cost_ms": 5.0, "expires_at": NOW}, "in the past"),
        ({"admin_cost_ms": 5.0, "ttl_s": MAX_OVERRIDE_S + 1}, "at most 168 h"),
    ],
)
def test_bad_overrides_are_refused_with_what_is_wrong(kwargs: dict[str, object], message: str):
    arguments: dict[str, object] = {"admin_cost_ms": None, "force_down": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        new_override("use1", now=NOW, **arguments)  # type: ignore[arg-type]


def test_who_and_why_are_kept():
    override = new_override(
        "use1", admin_cost_ms=0.0, force_down=False, ttl_s=1, now=NOW, set_by="olga", reason="x"
    )
    assert override == LinkOverride("use1", 0.0, False, NOW + 1, "olga", "x")
