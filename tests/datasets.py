"""Small learnable datasets for tests, written with the project's own writer (no synth needed)."""
from __future__ import annotations

import numpy as np
import pytest

from dlrm.config import TrainConfig, load_config
from dlrm.data.spec import FeatureSpec
from dlrm.data.writer import write_dataset


def make_dataset(root, rows: int = 4096, test_rows: int = 2048, sizes=(7, 50, 300, 3, 1000), num_numerical: int = 4,
                 seed: int = 0, hotness=None, padded=None) -> FeatureSpec:
    """Labels from a logistic model of a few ids and one numerical feature: an AUC well above 0.5 is learnable.

    hotness: ids per row per table (multi-hot: the first id drives the label, the others are uniform);
    padded: per table, rows hold a random number of ids (at least 0), the rest -1."""
    rng = np.random.default_rng(seed)
    weights = [rng.normal(0, 1.5, n) for n in sizes]
    hot = list(hotness) if hotness is not None else [1] * len(sizes)
    pads = list(padded) if padded is not None else [False] * len(sizes)

    def split(n):
        cats = np.stack([np.minimum(rng.zipf(1.3, n) - 1, s - 1) for s in sizes], 1)
        num = rng.exponential(1.0, (n, num_numerical)).astype(np.float32)
        logit = sum(weights[t][cats[:, t]] for t in range(len(sizes))) + 0.8 * (num[:, 0] - 1) - 0.5
        label = rng.random(n) < 1 / (1 + np.exp(-logit))
        if hotness is None and padded is None:
            return num, cats, label
        cols = []
        for t, (s, h) in enumerate(zip(sizes, hot)):
            ids = np.concatenate([cats[:, t:t + 1], rng.integers(0, s, (n, h - 1))], 1)
            if pads[t]:
                ids[np.arange(h) >= rng.integers(0, h + 1, (n, 1))] = -1
            cols.append(ids if h > 1 else ids[:, 0])
        return num, cols, label

    spec = FeatureSpec.default(root, list(sizes), num_numerical=num_numerical, hotness=hotness, padded=padded)
    write_dataset(spec, {"train": split(rows), "test": split(test_rows)})
    return FeatureSpec.load(root)


def tiny_config(tmp_path, dataset, **overrides) -> TrainConfig:
    """The built-in `tiny` training config on `dataset`, run folder tmp_path/run, plus KEY=VALUE overrides."""
    from dlrm.training.train import BUILTIN_CONFIGS

    ov = [f"data.dataset={dataset}", f"out={tmp_path / 'run'}"] + [f"{k}={v}" for k, v in overrides.items()]
    return load_config(TrainConfig, files=[BUILTIN_CONFIGS / "tiny.yaml"], overrides=ov)


@pytest.fixture(scope="session", name="dataset")
def small_dataset(tmp_path_factory):
    """2,048 train and 512 test rows of make_dataset's defaults, shared read-only by a worker's tests."""
    root = tmp_path_factory.mktemp("ds")
    make_dataset(root, rows=2048, test_rows=512)
    return root
