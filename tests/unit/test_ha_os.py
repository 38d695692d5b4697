"""The HA agent's floating address in the OS (``overlay.ha._os``), in a network namespace of
the test's own (``unshare --net``: nothing outside it is touched)."""

from __future__ import annotations

import json
import textwrap

from tests.unit.own_netns import run_in_own_netns

SCRIPT = textwrap.dedent(
    """
    import json, subprocess, trio
    from overlay.ha._os import OsAddress, OsAddressError
    from overlay.shell.pair import holds_address

    def ip(*args): subprocess.run(["ip", *args], check=True)

    async def main():
        ip("link", "set", "lo", "up")
        ip("link", "add", "ens5", "type", "veth", "peer", "name", "ens5p")
        ip("addr", "add", "10.99.0.11/24", "dev", "ens5")
        ip("link", "set", "ens5", "up")
        ip("link", "set", "ens5p", "up")
        seen = {}
        auto = OsAddress("10.99.0.10", "auto")
        seen["added_on"] = await auto.set_present(True)
        seen["held"] = holds_address("10.99.0.10")
        await auto.set_present(True)  # again: no error, still one address
        out = subprocess.run(["ip", "-j", "addr", "show", "dev", "ens5"], capture_output=True)
        seen["addresses"] = sorted(
            a["local"] for i in json.loads(out.stdout) for a in i["addr_info"]
            if a["family"] == "inet"
        )
        await auto.set_present(False)
        await auto.set_present(False)  # already gone: no error
        seen["held_after"] = holds_address("10.99.0.10")
        try:
            await OsAddress("10.99.0.10", "nosuch0").set_present(True)
        except OsAddressError as exc:
            seen["error"] = str(exc)
        try:
            await OsAddress("192.0.2.10", "auto").set_present(True)
        except OsAddressError as exc:
            seen["unrouted"] = str(exc)
        print(json.dumps(seen))

    trio.run(main)
    """
)


def test_the_address_is_added_and_removed_idempotently() -> None:
    seen = json.loads(run_in_own_netns(SCRIPT))
    assert seen["added_on"] == "ens5"  # found through the route to the address's subnet
    assert seen["held"] is True
    assert seen["addresses"] == ["10.99.0.10", "10.99.0.11"]
    assert seen["held_after"] is False
    assert seen["error"].startswith("ip addr replace 10.99.0.10/32 dev nosuch0: ")
    assert "Cannot find device" in seen["error"]
    # No route to it at all in this namespace: nothing to guess, the operator must say.
    assert "192.0.2.10" in seen["unrouted"]
