"""Who may call what on a node's gRPC services (overlay.grpc._auth.AccessPolicy)."""

from __future__ import annotations

import datetime

import pytest

from overlay.grpc import OPERATOR_METHODS, AccessPolicy, Caller, Role, RpcError, StatusCode, node_of
from overlay.tls import Issued, create_ca, issue_client, issue_node

NOW = datetime.datetime(2030, 1, 15, tzinfo=datetime.UTC)
READS = ["ListNodes", "GetTopology", "ListLinks", "GetRoutes", "ExplainRoute", "ListCalls",
         "GetCall", "GetCounters", "ListBlocks", "WatchEvents"]  # fmt: skip


@pytest.fixture(scope="module")
def ca() -> Issued:
    return create_ca("test CA", now=NOW)


def caller(certificate: Issued | None) -> Caller:
    return Caller("ipv4:127.0.0.1:40000", None if certificate is None else certificate.cert)


def policy(*, secure: bool = True) -> AccessPolicy:
    return AccessPolicy("usw2", ["use1", "use2"], secure=secure)


def refused(check: object, method: str, who: Caller) -> RpcError:
    with pytest.raises(RpcError) as caught:
        check(method, who)  # type: ignore[operator]
    return caught.value


def test_operator_may_call_everything(ca: Issued):
    operator = caller(issue_client(ca, "olga", Role.OPERATOR, now=NOW))
    for method in [*READS, *OPERATOR_METHODS]:
        policy().authorize_control(method, operator)


def test_viewer_reads_but_does_not_change(ca: Issued):
    viewer = caller(issue_client(ca, "victor", Role.VIEWER, now=NOW))
    for method in READS:
        policy().authorize_control(method, viewer)
    assert {
        "Drain", "Undrain", "SetLinkOverride", "ClearLinkOverride", "InjectFault", "ClearFaults",
        "Unblock",
    } == OPERATOR_METHODS  # fmt: skip
    for method in OPERATOR_METHODS:
        error = refused(policy().authorize_control, method, viewer)
        assert error.code is StatusCode.PERMISSION_DENIED
        assert (
            error.message == f"{method} needs the operator role; victor (viewer) does not have it"
        )


def test_node_certificates_only_flood(ca: Issued):
    node = caller(issue_node(ca, "use1", ["127.0.0.14"], now=NOW))
    error = refused(policy().authorize_control, "ListNodes", node)
    assert error.code is StatusCode.PERMISSION_DENIED
    assert "node certificate: nodes may only flood link state" in error.message
    policy().authorize_flood("Flood", node)
    assert node_of(node) == "use1"


def test_flooding_needs_the_certificate_of_a_peer(ca: Issued):
    stranger = caller(issue_node(ca, "eu1", ["127.0.0.20"], now=NOW))
    error = refused(policy().authorize_flood, "Flood", stranger)
    assert (error.code, error.message) == (
        StatusCode.PERMISSION_DENIED,
        "node eu1 is not a peer of usw2",
    )
    operator = caller(issue_client(ca, "olga", Role.OPERATOR, now=NOW))
    error = refused(policy().authorize_flood, "Flood", operator)
    assert error.message == "only overlay nodes may flood link state; olga (operator) names no node"


def test_certificate_without_a_role_gets_nothing(ca: Issued):
    nobody = caller(issue_node(ca, "x", ["127.0.0.30"], now=NOW))
    nobody = Caller(nobody.peer, create_ca("not a client", now=NOW).cert)  # no SAN at all
    error = refused(policy().authorize_control, "ListNodes", nobody)
    assert (
        error.message == "ListNodes needs the viewer role; not a client (no role) does not have it"
    )


def test_without_tls_everyone_may_do_everything_and_is_named_by_address():
    anyone = caller(None)
    insecure = policy(secure=False)
    for method in [*READS, *OPERATOR_METHODS]:
        insecure.authorize_control(method, anyone)
    insecure.authorize_flood("Flood", anyone)
    assert insecure.who(anyone) == "ipv4:127.0.0.1:40000"
    assert node_of(anyone) is None


def test_secure_server_without_a_client_certificate_is_unauthenticated():
    error = refused(policy().authorize_control, "ListNodes", caller(None))
    assert error.code is StatusCode.UNAUTHENTICATED


def test_who_is_the_certificate_subject(ca: Issued):
    assert policy().who(caller(issue_client(ca, "olga", Role.OPERATOR, now=NOW))) == "olga"
    assert policy().who(None) == ""


def test_only_the_other_member_of_the_pair_follows_its_state(ca: Issued):
    other_member = caller(issue_node(ca, "usw2", ["127.0.0.12"], now=NOW))
    policy().authorize_pair("Follow", other_member)
    peer = caller(issue_node(ca, "use1", ["127.0.0.14"], now=NOW))
    error = refused(policy().authorize_pair, "Follow", peer)
    assert (error.code, error.message) == (
        StatusCode.PERMISSION_DENIED,
        "only the other member of usw2's pair may follow its state; use1 (node use1) is not",
    )
    operator = caller(issue_client(ca, "olga", Role.OPERATOR, now=NOW))
    assert refused(policy().authorize_pair, "Follow", operator).code is StatusCode.PERMISSION_DENIED
    assert refused(policy().authorize_pair, "Follow", caller(None)).code is (
        StatusCode.UNAUTHENTICATED
    )
    policy(secure=False).authorize_pair("Follow", caller(None))
