"""Shared by the split-binary reader and spec tests: a small dataset with one table per dtype boundary."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dlrm.data.spec import FeatureSpec
from dlrm.data.writer import write_dataset

# One table per dtype boundary: int8 below 127, int16 below 32767, int32 from there.
CARDS = [5, 126, 127, 32766, 32767, 100_000]


def make_arrays(rows: int, seed: int = 0, cards=CARDS, n_num: int = 4):
    rng = np.random.default_rng(seed)
    numerical = (rng.random((rows, n_num)) * 10).astype(np.float32)
    categorical = np.stack([rng.integers(0, c, rows) for c in cards], axis=1)
    label = rng.random(rows) < 0.3
    return numerical, categorical, label


@pytest.fixture
def dataset(tmp_path):
    """(spec, {split: arrays}) with 47 train rows (not a multiple of the batch sizes used) and 9 test rows."""
    spec = FeatureSpec.default(tmp_path / "ds", CARDS, num_numerical=4)
    arrays = {"train": make_arrays(47, 1), "test": make_arrays(9, 2)}
    write_dataset(spec, arrays)
    return FeatureSpec.load(tmp_path / "ds"), arrays


def read_all(reader):
    batches = list(reader)
    cat = torch.cat([b.categorical for b in batches])
    num = torch.cat([b.numerical for b in batches]) if batches and batches[0].numerical is not None else None
    lab = torch.cat([b.label for b in batches]) if batches and batches[0].label is not None else None
    return batches, num, cat, lab
