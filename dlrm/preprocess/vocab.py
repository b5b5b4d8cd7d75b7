"""Counting categorical values and turning the counts into ids.

Counts are kept as one sorted array of keys `feature << 32 | hash` (uint64) with a count each,
so all 26 features merge, save and look up as one table. Ids, per feature: values seen at least
`threshold` times in the vocabulary days get 1, 2, ... by descending count, ties broken by
ascending hash value; rare and missing values get 0; cardinality = largest id + 1.

The vocabulary days (Settings.vocabulary_days): by default every day given, the test/validation
day included - what NVIDIA's Spark scripts do (spark_data_utils.py --mode generate_models
--days 0-23, then the transform of days 0-22 and day 23), so the FL=15 cardinalities are NVIDIA's
published table sizes and checkpoints are interchangeable with theirs. `train` counts the
training days only: the test day never shapes the ids, so evaluation meets unseen values as
production would, at the price of table sizes (and ids) that differ from NVIDIA's.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlrm.io.fsutil import atomic_path
from dlrm.preprocess.parse import NUM_CATEGORICAL

_FEATURE = np.arange(NUM_CATEGORICAL, dtype=np.uint64) << np.uint64(32)
_LOW = np.uint64(0xFFFFFFFF)


def count_values(categorical: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique keys of a block's present values [R, 26] and how often each occurs."""
    keys = (_FEATURE | categorical.astype(np.uint64))[present]
    keys, counts = np.unique(keys, return_counts=True)
    return keys, counts.astype(np.int64)


def merge_counts(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Sum counts over several (keys, counts) pairs; the result is sorted by key."""
    parts = [p for p in parts if p[0].size]
    if not parts:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    if len(parts) == 1:
        return parts[0]
    keys = np.concatenate([p[0] for p in parts])
    counts = np.concatenate([p[1] for p in parts])
    order = np.argsort(keys, kind="stable")
    keys, counts = keys[order], counts[order]
    first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return keys[first], np.add.reduceat(counts, first)


@dataclass
class Vocab:
    keys: np.ndarray  # [V] uint64 sorted, feature << 32 | hash, only values that got an id
    ids: np.ndarray  # [V] int32, the id of each key
    cardinalities: list[int]  # per feature: largest id + 1

    def lookup(self, categorical: np.ndarray, present: np.ndarray) -> np.ndarray:
        """Ids [R, 26] int32 of hashes [R, 26]; missing and unknown values get 0."""
        if not self.keys.size:
            return np.zeros(categorical.shape, np.int32)
        q = _FEATURE | categorical.astype(np.uint64)
        pos = np.minimum(np.searchsorted(self.keys, q), self.keys.size - 1)
        hit = present & (self.keys[pos] == q)
        return np.where(hit, self.ids[pos], 0).astype(np.int32)

    def save(self, path: Path) -> None:
        with atomic_path(path, fsync=False, tag=".tmp.npz") as tmp:  # savez adds .npz to any other name
            np.savez(tmp, keys=self.keys, ids=self.ids, cardinalities=np.asarray(self.cardinalities, np.int64))

    @classmethod
    def load(cls, path: Path) -> "Vocab":
        with np.load(path) as z:
            return cls(z["keys"], z["ids"], [int(c) for c in z["cardinalities"]])


def build_vocab(keys: np.ndarray, counts: np.ndarray, thresholds: list[int]) -> Vocab:
    """Ids from merged training counts; thresholds[f] is feature f's frequency threshold."""
    feature = (keys >> np.uint64(32)).astype(np.int64)
    value = keys & _LOW
    keep = counts >= np.asarray(thresholds, np.int64)[feature]
    keys, counts, feature, value = keys[keep], counts[keep], feature[keep], value[keep]
    # Rank within each feature: by count descending, then hash ascending (deterministic ties).
    order = np.lexsort((value, -counts, feature))
    sizes = np.bincount(feature, minlength=NUM_CATEGORICAL)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    ids = np.empty(keys.size, np.int32)
    ids[order] = np.arange(keys.size) - np.repeat(starts, sizes) + 1
    return Vocab(keys, ids, [int(s) + 1 for s in sizes])
