"""Small learnable datasets for tests, written with the project's own writer (no synth needed)."""
from __future__ import annotations

import numpy as np

from dlrm.data.spec import FeatureSpec
from dlrm.data.writer import write_dataset


def make_dataset(root, rows: int = 4096, test_rows: int = 2048, sizes=(7, 50, 300, 3, 1000), num_numerical: int = 4,
                 seed: int = 0) -> FeatureSpec:
    """Labels from a logistic model of a few ids and one numerical feature: an AUC well above 0.5 is learnable."""
    rng = np.random.default_rng(seed)
    weights = [rng.normal(0, 1.5, n) for n in sizes]

    def split(n):
        cats = np.stack([np.minimum(rng.zipf(1.3, n) - 1, s - 1) for s in sizes], 1)
        num = rng.exponential(1.0, (n, num_numerical)).astype(np.float32)
        logit = sum(weights[t][cats[:, t]] for t in range(len(sizes))) + 0.8 * (num[:, 0] - 1) - 0.5
        label = rng.random(n) < 1 / (1 + np.exp(-logit))
        return num, cats, label

    spec = FeatureSpec.default(root, list(sizes), num_numerical=num_numerical)
    write_dataset(spec, {"train": split(rows), "test": split(test_rows)})
    return FeatureSpec.load(root)
