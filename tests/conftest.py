"""Shared fixtures. Tests are seeded and CPU-only; multi-process ones are marked `dist`."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # the CPU path, even where a GPU is visible
# One OpenMP thread per process, for the workers and every trainer they start: the suite runs several
# processes per core, where OpenMP threads spin-waiting for each other burn CPU the other tests need.
# (Tests of what a pod prints unset it: torchrun warns when it is unset, as in a real pod.)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # export compiles in-process: no pool of workers to start


@pytest.fixture
def shared_dir() -> Path:
    """../shared beside the checkout (read-only extras); tests using it skip cleanly without it."""
    if not SHARED.is_dir():
        pytest.skip("../shared is absent: extra checks against the shared CRD/sample are skipped")
    return SHARED

# A real S3 HTTP endpoint (moto server on 127.0.0.1) for every test that asks for it.
from s3_fixtures import s3_bucket, s3_endpoint, s3_env  # noqa: E402,F401


# `make test` runs the suite on every core (pytest-xdist, --dist loadgroup). A module whose
# module-scoped fixture trains, exports or starts Spark stays on one worker, so that fixture is
# built once, not once per worker; every other test goes wherever a core is free.
ONE_WORKER_MODULES = {"test_export", "test_dist_train", "test_preprocess", "test_preprocess_spark", "test_faults",
                      "test_faults_checkpoints", "test_checkpoint_verify", "test_train", "test_synth", "test_runlog",
                      "test_validate", "test_suite"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups into the test ids
def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rpartition(".")[2]
        if module in ONE_WORKER_MODULES:
            item.add_marker(pytest.mark.xdist_group(module))
