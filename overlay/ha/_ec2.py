"""The floating address as the EC2 API sees it: read who holds it, move it to our ENI.

Blocking boto3 calls; the agent runs them in a worker thread. The moves are written so that they
are correct on AWS and checkable on moto 5.2.5, which differs from AWS in three ways:

* ``assign_private_ip_addresses(AllowReassignment=True)`` adds the IP to the new ENI but leaves it
  on the old one, so the IP is first unassigned from the ENIs that have it, explicitly (AWS would
  move it; unassigning first does no harm there).
* ``associate_address`` ignores ``PrivateIpAddress`` and reports the ENI's primary IP, so the
  holder is judged by the EIP's ``NetworkInterfaceId`` only, never by its private IP.
* After a re-association the old ENI still shows the EIP in its ``Association``, so ENI
  descriptions are never asked about the EIP: ``describe_addresses`` is the only source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import botocore.exceptions
import botocore.parsers

from ._core import AddressView, Holder, classify

__all__ = [
    "API_ERRORS",
    "ROLES",
    "FloatingAddress",
    "MoveReport",
    "PairResources",
    "find_pair",
    "peer_role",
]

#: What a failed EC2 call raises: an error answer, a transport or credentials problem, or an
#: answer botocore cannot parse (an endpoint without the call). The agent survives all of them.
API_ERRORS: tuple[type[Exception], ...] = (
    botocore.exceptions.ClientError,
    botocore.exceptions.BotoCoreError,
    botocore.parsers.ResponseParserError,
)


#: The two members of a pair, as the deployer names and tags them.
ROLES = ("active", "standby")


def peer_role(role: str) -> str:
    """The other member's role."""
    return ROLES[1 - ROLES.index(role)]


@dataclass(frozen=True, slots=True)
class PairResources:
    """What the EC2 API calls a pair's floating address: both members' ENIs and the EIP."""

    own_eni: str
    peer_eni: str
    allocation_id: str


def find_pair(ec2: Any, *, fleet: str, pair: str, role: str) -> PairResources:  # noqa: ANN401
    """Find a pair's ENIs and EIP by the tags the deployer gives them: ``overlay:fleet``, and
    ``overlay:name`` ``<fleet>-<pair>-<role>`` for an ENI, ``<fleet>-<pair>`` for the EIP.

    Raises:
        LookupError: one of them is not there (named in the message).
        One of :data:`API_ERRORS`.
    """
    peer = peer_role(role)
    names = {which: f"{fleet}-{pair}-{which}" for which in (role, peer)}
    interfaces = ec2.describe_network_interfaces(Filters=_tagged(fleet, *names.values()))
    by_name = {
        _tag(interface, "overlay:name"): str(interface["NetworkInterfaceId"])
        for interface in interfaces["NetworkInterfaces"]
    }
    addresses = ec2.describe_addresses(Filters=_tagged(fleet, f"{fleet}-{pair}"))["Addresses"]
    missing = [f"network interface {name}" for name in names.values() if name not in by_name]
    if not addresses:
        missing.append(f"Elastic IP {fleet}-{pair}")
    if missing:
        raise LookupError(f"not found in the account: {', '.join(missing)}")
    return PairResources(
        by_name[names[role]], by_name[names[peer]], str(addresses[0]["AllocationId"])
    )


def _tagged(fleet: str, *names: str) -> list[dict[str, Any]]:
    return [
        {"Name": "tag:overlay:fleet", "Values": [fleet]},
        {"Name": "tag:overlay:name", "Values": list(names)},
    ]


def _tag(resource: dict[str, Any], key: str) -> str:
    for tag in resource.get("TagSet", resource.get("Tags", ())):
        if tag["Key"] == key:
            return str(tag["Value"])
    return ""


@dataclass(frozen=True, slots=True)
class MoveReport:
    """What :meth:`FloatingAddress.take_over` found and did."""

    #: The holder right before moving.
    holder_before: Holder
    #: False when the re-read found nothing to move (OURS) or nothing we may move (OTHER).
    moved: bool
    #: The EC2 calls made, in order, for the log.
    steps: tuple[str, ...]


class FloatingAddress:
    """A secondary private IP plus the EIP associated with it, shared by two ENIs.

    Args:
        ec2: a boto3 EC2 client for the pair's region (``ClientFactory.client("ec2", region)``).
        own_eni: our ENI, where :meth:`take_over` moves the address.
        peer_eni: the other member's ENI.
        private_ip: the floating secondary private IP.
        allocation_id: the EIP's allocation id.
    """

    def __init__(
        self,
        ec2: Any,  # noqa: ANN401 - boto3 clients are untyped
        *,
        own_eni: str,
        peer_eni: str,
        private_ip: str,
        allocation_id: str,
    ) -> None:
        self._ec2 = ec2
        self.own_eni = own_eni
        self.peer_eni = peer_eni
        self.private_ip = private_ip
        self.allocation_id = allocation_id

    def read(self) -> AddressView:
        """Ask the API where the EIP and the private IP are (two calls).

        Raises:
            One of :data:`API_ERRORS`.
        """
        addresses = self._ec2.describe_addresses(AllocationIds=[self.allocation_id])["Addresses"]
        eip_eni: str | None = None
        association: str | None = None
        if addresses:
            eip_eni = addresses[0].get("NetworkInterfaceId") or None
            association = addresses[0].get("AssociationId") or None
        interfaces = self._ec2.describe_network_interfaces(
            NetworkInterfaceIds=[self.own_eni, self.peer_eni]
        )["NetworkInterfaces"]
        ip_enis = frozenset(
            str(interface["NetworkInterfaceId"])
            for interface in interfaces
            if any(
                entry.get("PrivateIpAddress") == self.private_ip
                for entry in interface.get("PrivateIpAddresses", ())
            )
        )
        return AddressView(
            eip_eni=None if eip_eni is None else str(eip_eni),
            ip_enis=ip_enis,
            association_id=None if association is None else str(association),
        )

    def holder(self) -> Holder:
        """Who holds the address now (:meth:`read` + :func:`classify`)."""
        return classify(self.read(), self.own_eni, self.peer_eni)

    def take_over(self) -> MoveReport:
        """Move the private IP and the EIP to our ENI, unless they are ours already.

        Re-reads first: if the address is already ours (or on a stranger's ENI), nothing is
        called, so an agent never moves the address to itself while it holds it. Every step is
        skipped when already done, so a takeover cut short is finished by the next one.

        Raises:
            One of :data:`API_ERRORS`; the address may then be split between the two ENIs.
        """
        view = self.read()
        holder = classify(view, self.own_eni, self.peer_eni)
        if holder in (Holder.OURS, Holder.OTHER):
            return MoveReport(holder, moved=False, steps=())
        ec2, ip, own = self._ec2, self.private_ip, self.own_eni
        steps: list[str] = []
        for eni in sorted(view.ip_enis - {own}):  # the peer's (OTHER was excluded above)
            ec2.unassign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=[ip])
            steps.append(f"unassign {ip} from {eni}")
        if own not in view.ip_enis:
            ec2.assign_private_ip_addresses(
                NetworkInterfaceId=own, PrivateIpAddresses=[ip], AllowReassignment=True
            )
            steps.append(f"assign {ip} to {own}")
        if view.eip_eni != own:
            ec2.associate_address(
                AllocationId=self.allocation_id,
                NetworkInterfaceId=own,
                PrivateIpAddress=ip,
                AllowReassociation=True,
            )
            steps.append(f"associate {self.allocation_id} with {own}/{ip}")
        return MoveReport(holder, moved=True, steps=tuple(steps))
