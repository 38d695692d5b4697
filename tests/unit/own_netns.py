"""Run a Python script in a network namespace of its own (``unshare --net``): loopback down,
no interface but what the script makes, nothing outside it touched."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest


def run_in_own_netns(script: str, timeout: float = 60) -> str:
    """``script``'s standard output; skips the test where namespaces cannot be made.

    Raises:
        AssertionError: the script failed (its standard error in the message).
    """
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    result = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0 and "Operation not permitted" in result.stderr:
        pytest.skip("no permission to make a network namespace")
    assert result.returncode == 0, result.stderr
    return result.stdout
