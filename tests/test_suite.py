"""The suite's own machinery: what keeps `make test` fast holds (tests/conftest.py)."""
from __future__ import annotations

import os

import pytest


def test_one_worker_modules_run_on_one_worker(request):
    """Under `make test` (xdist, --dist loadgroup) a one-worker module's tests carry its group in their
    id, which is what sends them to one worker. Without it every worker builds the module's session
    fixtures (a Spark session, reference trainings, exports) again, as happened unnoticed under
    pytest 9.2, whose node ids drop xdist's group suffix (pytest-dev/pytest-xdist#1386)."""
    if not os.environ.get("PYTEST_XDIST_WORKER") or not request.config.getvalue("loadgroup"):
        pytest.skip("not under pytest-xdist with --dist loadgroup")
    assert request.node.nodeid.endswith("@test_suite"), request.node.nodeid
