"""LSA protobuf codec: round trip, and every bad field refused with BadLsa."""

from __future__ import annotations

import contextlib
import math

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from overlay.linkstate import (
    METRIC_NAMES,
    BadLsa,
    LinkMetrics,
    Lsa,
    lsa_from_message_untrusted,
    lsa_to_message,
)
from overlay.v1 import linkstate_pb2

LSA = Lsa(
    "usw2",
    1234567890123,
    1.5,
    "us-west-2",
    "us-west-2a",
    (
        LinkMetrics("use1", True, 68.0, 1.5, 0.01, 0.0, 0.0),
        LinkMetrics("usw1", False),
    ),
)


def test_round_trip_through_bytes():
    data = lsa_to_message(LSA).SerializeToString()
    assert lsa_from_message_untrusted(linkstate_pb2.Lsa.FromString(data)) == LSA


def test_every_metric_crosses_the_wire():
    link = LinkMetrics("use1", True, 68.0, 1.5, 0.01, 0.02, 7.0)
    lsa = Lsa("usw2", 1, 0.0, "us-west-2", "us-west-2a", (link,))
    assert len(set(link.measurements().values())) == len(METRIC_NAMES)  # told apart
    assert lsa_from_message_untrusted(lsa_to_message(lsa)) == lsa


def test_metric_names_are_the_measurements_and_the_wire_fields():
    assert tuple(LinkMetrics("use1", True).measurements()) == METRIC_NAMES
    assert set(METRIC_NAMES) <= set(linkstate_pb2.Link.DESCRIPTOR.fields_by_name)


def test_links_are_sorted_on_decode():
    message = lsa_to_message(LSA)
    message.links.reverse()
    assert lsa_from_message_untrusted(message).links == LSA.links


def _bad(edit: str, value: object) -> linkstate_pb2.Lsa:
    message = lsa_to_message(LSA)
    target, _, field = edit.rpartition(".")
    obj = message.links[0] if target == "link" else message
    setattr(obj, field, value)
    return message


@pytest.mark.parametrize(
    ("edit", "value", "reason"),
    [
        ("origin", "", "bad origin"),
        ("origin", "USW2", "bad origin"),
        ("age", -1.0, "bad age"),
        ("age", math.inf, "bad age"),
        ("region", "x\n", "bad region"),
        ("link.neighbor", "use 1", "bad neighbor"),
        ("link.neighbor", "usw2", "self link"),
        ("link.neighbor", "usw1", "duplicate"),
        ("link.rtt_ms", math.nan, "bad rtt_ms"),
        ("link.rtt_ms", -5.0, "bad rtt_ms"),
        ("link.jitter_ms", 1e12, "bad jitter_ms"),
        ("link.loss_ratio", 1.5, "bad loss_ratio"),
        ("link.retrans_ratio", -0.1, "bad retrans_ratio"),
        ("link.admin_cost", math.inf, "bad admin_cost"),
    ],
)
def test_bad_fields_are_refused(edit: str, value: object, reason: str):
    with pytest.raises(BadLsa, match=reason):
        lsa_from_message_untrusted(_bad(edit, value))


def test_too_many_links_refused():
    message = lsa_to_message(LSA)
    for i in range(1030):
        message.links.add(neighbor=f"n{i}", up=True)
    with pytest.raises(BadLsa, match="links"):
        lsa_from_message_untrusted(message)


@given(st.binary(max_size=300))
def test_random_bytes_decode_or_raise_bad_lsa(data: bytes):
    try:
        message = linkstate_pb2.Lsa.FromString(data)
    except DecodeError:  # the bridge's deserializer fails first: the stream breaks
        return
    with contextlib.suppress(BadLsa):
        lsa_from_message_untrusted(message)
