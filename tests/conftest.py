"""Fixtures shared by the integration tests."""

import os

import pytest


@pytest.fixture(scope="module")
def local_ray():
    import ray

    os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
