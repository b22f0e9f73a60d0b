"""Fixtures of the search tests (test_search.py, test_search_state.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import ray

from tests.jobs.test_search import Collector


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    # "local": a new cluster of our own, never one another process left running.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.server.shutdown()
