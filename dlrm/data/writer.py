"""Write a split-binary dataset: one file per chunk of a split, appended batch by batch.

    with SplitBinaryWriter(spec, "train") as w:      # opens train/*.bin.partial
        for numerical, categorical, label in batches:
            w.append(numerical, categorical, label)  # [B, N], [B, F] (or F x [B] / [B, hotness]), [B]
    # closed: the .partial files are renamed to their final names
    spec.save()                                      # last: the yaml marks the dataset complete

Files are written under a temporary `.partial` name and renamed only on a clean close, so a crash
or an exception never leaves a final-named file that holds part of a split. `feature_spec.yaml`
is written after every split (by `write_dataset`, or the caller), so a folder with a yaml in it is
a complete dataset and a folder without one is leftovers to be replaced.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from dlrm.data.spec import FeatureSpec
from dlrm.errors import DataError

PARTIAL = ".partial"


def _partial(path: Path) -> Path:
    return path.with_name(path.name + PARTIAL)


def claim_folder(spec: FeatureSpec, overwrite: bool) -> None:
    """Refuse to write into a folder that already holds a complete dataset, unless `overwrite`.

    With `overwrite` the old yaml goes first: from then on the folder is an incomplete dataset,
    so a crash half way through never leaves an old yaml describing a mix of old and new files.
    """
    if spec.path.exists():
        if not overwrite:
            raise DataError(
                f"{spec.root}: already holds a dataset ({spec.path.name} present); "
                f"pass overwrite=True (--overwrite) to replace it, or choose another folder"
            )
        spec.path.unlink()


def check_ids(feature: str, ids: np.ndarray, cardinality: int, first_row: int = 0, where: str = "",
              padded: bool = False) -> None:
    """Vectorised range check of one feature's ids [B] or [B, hotness]: 0 <= id < cardinality
    (or -1, padding, when `padded`), else a DataError.

    The message names the feature, the first bad id, its row (first_row + position) and the
    cardinality. One reduction per batch: seen as unsigned, a negative id is larger than any
    cardinality its dtype can hold, so max < cardinality covers both ends (padding: id + 1 <=
    cardinality, in a wider type). The slow path runs only on failure.
    """
    if ids.size == 0:
        return
    if padded:
        if (ids.min() >= -1) and (ids.max() < cardinality):
            return
        bad_mask = (ids < -1) | (ids >= cardinality)
    else:
        if ids.view(np.dtype(f"u{ids.dtype.itemsize}")).max() < cardinality:
            return
        bad_mask = (ids < 0) | (ids >= cardinality)
    flat = np.flatnonzero(bad_mask.reshape(-1))[0]
    width = ids.shape[1] if ids.ndim == 2 else 1
    prefix = f"{where}: " if where else ""
    allowed = f"[0, {cardinality}) or -1 (padding)" if padded else f"[0, {cardinality})"
    raise DataError(
        f"{prefix}feature {feature}: id {int(ids.reshape(-1)[flat])} at row {first_row + int(flat) // width} is "
        f"outside {allowed} (cardinality {cardinality})"
    )


class SplitBinaryWriter:
    """Appends batches of rows to every file of one split of `spec`, in the spec's dtypes.

    Inputs per `append`: numerical [B, N] (any float; cast to the chunk dtype, float16 in NVIDIA's
    layout), categorical [B, F] (one-hot datasets) or a list of F arrays, [B] for a one-hot feature
    and [B, hotness] for a multi-hot one (integers, range-checked then cast to the feature's dtype),
    label [B] (bool or 0/1). Columns follow spec.numerical / spec.categorical.
    """

    def __init__(self, spec: FeatureSpec, split: str, *, overwrite: bool = False):
        if split not in spec.sources:
            raise DataError(f"{spec.path}: no split {split!r} in source_spec (have {sorted(spec.sources)})")
        claim_folder(spec, overwrite)
        self.spec, self.split, self.rows = spec, split, 0
        self.chunks = spec.sources[split]
        self._num_col = {f: i for i, f in enumerate(spec.numerical)}
        self._cat_col = {f: i for i, f in enumerate(spec.categorical)}
        self._files: list = []
        try:
            for chunk in self.chunks:
                chunk.file.parent.mkdir(parents=True, exist_ok=True)
                self._files.append(open(_partial(chunk.file), "wb"))
        except OSError as e:
            self.abort()
            raise DataError(f"{spec.root}: cannot open split {split!r} for writing: {e}") from None

    # -- writing --------------------------------------------------------------------------------
    def append(self, numerical: np.ndarray | None, categorical: np.ndarray | Sequence[np.ndarray] | None,
               label: np.ndarray) -> None:
        """Append B rows. `numerical` may be None only when the spec has no numerical features."""
        if self._files is None:
            raise RuntimeError("SplitBinaryWriter: append after close/abort")
        label = np.asarray(label).reshape(-1)
        b = label.shape[0]
        num = self._numerical(numerical, b)
        cats = self._categorical(categorical, b)
        if label.dtype != np.bool_:
            if np.any((label != 0) & (label != 1)):
                raise DataError(f"{self.spec.root}/{self.split}: labels must be 0 or 1 (or bool), got values "
                                f"{np.unique(label)[:5].tolist()}")
        columns = {self.spec.label: label}
        for f, i in self._num_col.items():
            columns[f] = num[:, i]
        columns.update(cats)
        for chunk, fh in zip(self.chunks, self._files):
            if len(chunk.features) == 1:
                block = columns[chunk.features[0]].astype(chunk.dtype, copy=False)
            elif [f for f in chunk.features] == self.spec.numerical:
                block = num.astype(chunk.dtype, copy=False)  # the common case: no column shuffle
            else:  # multi-hot features bring their hotness columns each
                block = np.concatenate([columns[f].reshape(b, -1) for f in chunk.features], axis=1).astype(chunk.dtype, copy=False)
            try:
                fh.write(np.ascontiguousarray(block).tobytes() if block.size == 0 else
                         memoryview(np.ascontiguousarray(block)).cast("B"))  # memoryview refuses empty casts
            except OSError as e:  # a full disk: the error names the file (the caller's `with` aborts)
                raise OSError(e.errno, e.strerror, fh.name) from None
        self.rows += b

    def _numerical(self, numerical, b: int) -> np.ndarray:
        n = len(self.spec.numerical)
        if numerical is None:
            if n:
                raise DataError(f"{self.spec.root}/{self.split}: the spec has {n} numerical features, got none")
            return np.zeros((b, 0), np.float32)
        numerical = np.asarray(numerical)
        if numerical.shape != (b, n):
            raise DataError(f"{self.spec.root}/{self.split}: numerical has shape {numerical.shape}, expected ({b}, {n})")
        return numerical

    def _categorical(self, categorical, b: int) -> dict[str, np.ndarray]:
        names = self.spec.categorical
        if categorical is None:
            categorical = []
        if isinstance(categorical, np.ndarray) and categorical.ndim == 2:
            cols = [categorical[:, i] for i in range(categorical.shape[1])]
        else:
            cols = [np.asarray(c) for c in categorical]
        if len(cols) != len(names):
            raise DataError(f"{self.spec.root}/{self.split}: got {len(cols)} categorical features, expected {len(names)}")
        out = {}
        for name, ids in zip(names, cols):
            h = self.spec.hotness.get(name, 1)
            if ids.shape != ((b,) if h == 1 else (b, h)) and not (h == 1 and ids.shape == (b, 1)):
                expected = f"({b},)" if h == 1 else f"({b}, {h}) (hotness {h})"
                raise DataError(f"{self.spec.root}/{self.split}: feature {name} has shape {ids.shape}, expected {expected}")
            if ids.dtype.kind not in "iu":
                raise DataError(f"{self.spec.root}/{self.split}: feature {name} ids must be integers, got {ids.dtype}")
            check_ids(name, ids, self.spec.cardinalities[name], self.rows, where=f"{self.spec.root}/{self.split}",
                      padded=name in self.spec.padded)
            out[name] = ids
        return out

    # -- finishing ------------------------------------------------------------------------------
    def close(self) -> None:
        """Flush every file and give it its final name. Idempotent."""
        if self._files is None:
            return
        for fh in self._files:
            try:
                fh.close()  # flushes: a full disk can fail here too
            except OSError as e:
                self.abort()
                raise OSError(e.errno, e.strerror, fh.name) from None
        self._files = None
        for chunk in self.chunks:
            os.replace(_partial(chunk.file), chunk.file)

    def abort(self) -> None:
        """Close and delete every partial file; final-named files are left as they were."""
        files, self._files = self._files, None
        for fh in files or []:
            fh.close()
        for chunk in self.chunks:
            try:
                _partial(chunk.file).unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> "SplitBinaryWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_dataset(spec: FeatureSpec, splits: dict[str, tuple], *, overwrite: bool = False) -> Path:
    """Write whole in-memory splits {split: (numerical [B, N], categorical [B, F], label [B])}.

    Every split of the spec must be given. The yaml is saved last; returns its path.
    """
    missing = [s for s in spec.sources if s not in splits]
    extra = [s for s in splits if s not in spec.sources]
    if missing or extra:
        raise DataError(f"{spec.root}: splits given {sorted(splits)} do not match the spec's {sorted(spec.sources)}")
    claim_folder(spec, overwrite)
    for split, (numerical, categorical, label) in splits.items():
        with SplitBinaryWriter(spec, split) as w:
            w.append(numerical, categorical, label)
    return spec.save()
