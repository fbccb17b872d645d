"""Fixtures shared by the integration tests."""

import os

import pytest


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray for every test that asks for it (a start costs ~5 s on 2 cores); tests that
    need a Ray of their own (a factory module in their folder) start a driver process."""
    import ray

    os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
