"""Options of the chaos tests: the seed of the random scenario (``--chaos-seed`` or the
``OVERLAY_CHAOS_SEED`` environment variable), so that any run can be replayed."""

from __future__ import annotations

import os

import pytest

DEFAULT_SEED = 1


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-seed",
        type=int,
        default=None,
        help=f"seed of test_chaos_random (env OVERLAY_CHAOS_SEED; default {DEFAULT_SEED})",
    )


@pytest.fixture
def chaos_seed(request: pytest.FixtureRequest) -> int:
    """The seed for this run's random chaos scenario."""
    seed: int | None = request.config.getoption("--chaos-seed")
    if seed is None:
        seed = int(os.environ.get("OVERLAY_CHAOS_SEED", DEFAULT_SEED))
    return seed
