"""DNS on the fabric's internet: the fleet's Route 53 zone served, and resolved as a trunk would.

Run inside the ``inet`` namespace (``fabric.run("inet", [python, "-m", "tests.fleet.dns", ...])``):

* ``serve ZONE.json HOST`` serves the records of ``ZONE.json`` (``write_zone``) on ``HOST``, a free
  UDP port, and prints that port once it answers;
* ``resolve SERVER PORT NAME`` looks ``_sip._udp.NAME`` up (SRV, RFC 2782: lowest priority first)
  and each target's A records, and prints the ``[address, port]`` pairs in that order as JSON:
  the RFC 3263 §4.2 answer for a UDP trunk.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import dns.resolver
import trio

from tests.dnsserver import Zone, serve_zone


def write_zone(zone: Zone, path: Path) -> None:
    """``zone`` as ``serve`` reads it."""
    path.write_text(json.dumps({"records": zone.records, "ttl": zone.ttl}))


async def _serve(zone: Zone, host: str) -> None:
    async with serve_zone(zone, host) as (_, port):
        print(port, flush=True)
        await trio.sleep_forever()


def _resolve(server: str, port: int, name: str) -> list[tuple[str, int]]:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server]
    resolver.port = port
    resolver.lifetime = 5.0
    srv = sorted(
        resolver.resolve(f"_sip._udp.{name}", "SRV"), key=lambda r: (r.priority, -r.weight)
    )
    return [
        (a.address, record.port)
        for record in srv
        for a in resolver.resolve(record.target.to_text(), "A")
    ]


def main(argv: list[str]) -> None:
    match argv:
        case ["serve", path, host]:
            data = json.loads(Path(path).read_text())
            trio.run(_serve, Zone(data["records"], ttl=data["ttl"]), host)
        case ["resolve", server, port, name]:
            print(json.dumps(_resolve(server, int(port), name)))
        case _:
            sys.exit(f"usage: {__doc__}")


if __name__ == "__main__":
    main(sys.argv[1:])
