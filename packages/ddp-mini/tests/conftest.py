from __future__ import annotations

import pytest
from _pool import DistPool


@pytest.fixture(scope="session")
def pool():
    """The shared 4-process gloo pool; it restarts itself after a failed task."""
    workers = DistPool()
    yield workers
    workers.close()
