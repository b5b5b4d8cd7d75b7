"""`feature_spec.yaml`: the description of a split-binary dataset, as NVIDIA's DLRM tools write it.

    feature_spec:  {num_0: {dtype: float16}, ..., cat_0.bin: {dtype: int32, cardinality: 7912889}, label: {dtype: bool}}
    channel_spec:  {numerical: [num_0, ...], categorical: [cat_0.bin, ...], label: [label]}
    source_spec:   {train: [{type: split_binary, features: [...], files: [train/numerical.bin]}, ...], test: [...]}
    metadata:      {...}

Every file holds its features row-major with no header: rows = file size / (columns x itemsize).

Multi-hot: a categorical feature may carry `hotness: k` (k >= 1, default 1): each row holds k ids
of the feature's table, k consecutive columns of its file, sum-pooled by the model (MLPerf's
DLRM-DCNv2 data). One-hot features carry no `hotness` key, so a one-hot dataset is exactly NVIDIA's
format. Rows of different lengths: `hotness: k` with `padded: true` lets a row hold fewer than k
ids, the rest of its k columns -1 (padding, which pools to nothing; an all-padding row pools to zeros).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from dlrm.errors import DataError
from dlrm.io.fsutil import atomic_write, load_yaml, local_path, read_text

SPEC_FILE = "feature_spec.yaml"
NUMERICAL, CATEGORICAL, LABEL = "numerical", "categorical", "label"
SPLITS = ("train", "test")
# Bounds on what a feature_spec.yaml may say, checked before anything is sized from it. Ids reach the
# exported model as int32; MLPerf DLRM-DCNv2's largest hotness is 100, and every batch holds
# batch x sum(hotness) ids, so 1024 leaves room without letting a typo size a TiB buffer.
MAX_CARDINALITY = 2**31 - 1
MAX_HOTNESS = 1024


def categorical_dtype(cardinality: int) -> np.dtype:
    """The narrowest signed dtype NVIDIA's preprocessing picks for a feature's ids."""
    if cardinality < 127:
        return np.dtype(np.int8)
    if cardinality < 32767:
        return np.dtype(np.int16)
    return np.dtype(np.int32)


def file_inside(root: Path, name, where: str) -> Path:
    """`name` (a `files:` entry of the spec) resolved under the dataset folder `root`, or a DataError:
    a file outside it (../x.bin, /abs/x.bin, a symlink leading out) would be read by the trainer but
    not shipped by `data push`. The one copy of this rule: the trainer (FeatureSpec.from_dict) and
    push (dlrm.data.manifest.check_spec_files) both call it."""
    if not isinstance(name, str) or not name or Path(name).is_absolute():
        raise DataError(f"{where}: {name!r} must be a path relative to the dataset folder {root}")
    path = (root / name).resolve()
    if not path.is_relative_to(root.resolve()):
        raise DataError(f"{where}: {name!r} leads outside the dataset folder {root} (to {path}); "
                        f"every file of a dataset must be inside its folder")
    return path


@dataclass
class Chunk:
    """One file holding one or more features of one split, row-major: [rows, columns]."""

    features: list[str]
    file: Path  # absolute
    dtype: np.dtype
    widths: list[int] | None = None  # columns per feature (multi-hot hotness); None: one each

    @property
    def columns(self) -> int:
        return sum(self.widths) if self.widths else len(self.features)

    def columns_of(self, feature: str) -> slice:
        """The columns of `feature` in this file's rows."""
        i = self.features.index(feature)
        widths = self.widths or [1] * len(self.features)
        start = sum(widths[:i])
        return slice(start, start + widths[i])


@dataclass
class FeatureSpec:
    root: Path
    numerical: list[str]
    categorical: list[str]
    label: str
    cardinalities: dict[str, int]
    dtypes: dict[str, np.dtype]
    sources: dict[str, list[Chunk]]
    metadata: dict = field(default_factory=dict)
    hotness: dict[str, int] = field(default_factory=dict)  # multi-hot features only; absent: 1
    padded: set[str] = field(default_factory=set)  # multi-hot features whose rows may end in -1 padding

    # -- queries -------------------------------------------------------------------------------
    @property
    def table_sizes(self) -> list[int]:
        """Rows of the embedding table of each categorical feature, in channel order."""
        return [self.cardinalities[f] for f in self.categorical]

    @property
    def table_hotness(self) -> list[int]:
        """Ids per row of each categorical feature, in channel order (1: one-hot)."""
        return [self.hotness.get(f, 1) for f in self.categorical]

    @property
    def multi_hot(self) -> bool:
        return any(h > 1 for h in self.table_hotness) or bool(self.padded)

    @property
    def path(self) -> Path:
        return self.root / SPEC_FILE

    def chunk_of(self, split: str, feature: str) -> tuple[Chunk, slice]:
        """The chunk holding `feature` in `split`, and the feature's columns in it."""
        for chunk in self.sources[split]:
            if feature in chunk.features:
                return chunk, chunk.columns_of(feature)
        raise DataError(f"{self.path}: no source for feature {feature!r} in split {split!r}")

    def num_rows(self, split: str) -> int:
        """Rows of `split`, after checking that every file holds exactly the same number of rows.

        The row count most files agree on is taken as right (so one truncated file is blamed, not
        the others); the first file that disagrees is a DataError naming its size and the size expected.
        """
        if split not in self.sources:
            raise DataError(f"{self.path}: no split {split!r} in source_spec (have {sorted(self.sources)})")
        sizes = []
        for chunk in self.sources[split]:
            try:
                sizes.append(chunk.file.stat().st_size)
            except FileNotFoundError:
                raise DataError(f"{chunk.file}: missing (listed in {self.path}, split {split})") from None
        row_bytes = [c.columns * c.dtype.itemsize for c in self.sources[split]]
        counts: dict[int, int] = {}
        for size, rb in zip(sizes, row_bytes):
            if size % rb == 0:
                counts[size // rb] = counts.get(size // rb, 0) + 1
        if not counts:  # every file is ragged: nothing to compare against, blame the first
            rows = sizes[0] // row_bytes[0]
        else:
            rows = max(counts, key=lambda r: (counts[r], r))  # ties: blame the shorter file (a crash truncates)
        for chunk, size, rb in zip(self.sources[split], sizes, row_bytes):
            expected = rows * rb
            if size != expected:
                what = "truncated" if size < expected else "oversized (extra bytes at the end)"
                raise DataError(
                    f"{chunk.file}: size {size} bytes, expected {expected} bytes ({rows} rows as in the other files of "
                    f"split {split}, {chunk.columns} x {chunk.dtype.name} per row); the file is {what}"
                )
        return rows

    def check(self, splits=SPLITS) -> dict[str, int]:
        """Check every file's size against the spec before training; returns rows per split."""
        return {s: self.num_rows(s) for s in splits if s in self.sources}

    def require_rows(self, splits) -> dict[str, int]:
        """check(), and at least one row in each of `splits`; returns rows per split."""
        rows = self.check(splits)
        for split in splits:
            if not rows.get(split):
                what = "0 rows" if split in rows else "no files in source_spec"
                raise DataError(f"{self.path}: split {split} has {what}; expected rows in {' and '.join(splits)}")
        return rows

    # -- (de)serialisation ----------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureSpec":
        # the readers map local files: a dataset on S3 is staged first (the launcher's init container does)
        path = local_path(path, "dataset", "dlrm", f"stage it first: python -m launcher data stage {path} DIR, "
                          "then pass DIR", what="reads datasets from local files")
        if path.is_dir():
            path = path / SPEC_FILE
        if not path.exists():
            raise DataError(f"{path}: no feature spec here (a dataset folder holds feature_spec.yaml, written last)")
        try:  # read_text: a binary file, a folder, no permission are one-line errors too
            raw = load_yaml(read_text(path, "feature spec", DataError), str(path), DataError)  # aliases bounded
        except FileNotFoundError:
            raise DataError(f"{path}: no feature spec here (a dataset folder holds feature_spec.yaml, written last)") from None
        return cls.from_dict(raw, path.parent.resolve(), where=str(path))

    @classmethod
    def from_dict(cls, raw: dict, root: Path, where: str = SPEC_FILE) -> "FeatureSpec":
        def need(mapping, key, ctx):
            if not isinstance(mapping, dict) or key not in mapping:
                raise DataError(f"{where}: missing key {ctx}{key}")
            return mapping[key]

        def mapping(value, ctx):
            if not isinstance(value, dict):
                raise DataError(f"{where}: {ctx} must be a mapping, got {value!r}")
            return value

        def names(value, ctx):  # a channel's feature names: a list of distinct strings
            value = [] if value is None else value
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise DataError(f"{where}: {ctx} must be a list of feature names, got {value!r}")
            if len(set(value)) != len(value):
                raise DataError(f"{where}: {ctx} lists a feature twice: {value}")
            return value

        fspec = mapping(need(raw, "feature_spec", ""), "feature_spec")
        chan = mapping(need(raw, "channel_spec", ""), "channel_spec")
        src = mapping(need(raw, "source_spec", ""), "source_spec")
        numerical = names(chan.get(NUMERICAL), "channel_spec.numerical")
        categorical = names(chan.get(CATEGORICAL), "channel_spec.categorical")
        labels = names(need(chan, LABEL, "channel_spec."), "channel_spec.label")
        shared = set(numerical) & set(categorical) | set(labels) & set(numerical + categorical)
        if shared:
            raise DataError(f"{where}: channel_spec lists {sorted(shared)} in more than one channel")
        if len(labels) != 1:
            raise DataError(f"{where}: channel_spec.label must list exactly one feature, got {labels}")
        dtypes, cards = {}, {}
        for name in numerical + categorical + labels:
            entry = mapping(need(fspec, name, "feature_spec."), f"feature_spec.{name}")
            try:
                dtypes[name] = np.dtype(entry.get("dtype", "float16" if name in numerical else "bool"))
            except TypeError:
                raise DataError(f"{where}: feature_spec.{name}.dtype {entry.get('dtype')!r} is not a numpy dtype") from None
        for name in numerical + labels:  # read as numbers: cast to float on the device
            if dtypes[name].kind not in "biuf":
                raise DataError(f"{where}: feature_spec.{name}.dtype must be a number type, got {dtypes[name].name}")
        for name in categorical:
            card = fspec[name].get("cardinality")
            if not isinstance(card, int) or isinstance(card, bool) or not 1 <= card <= MAX_CARDINALITY:
                raise DataError(f"{where}: feature_spec.{name}.cardinality must be an integer in 1..{MAX_CARDINALITY:,} "
                                f"(ids are int32 in the exported model), got {card!r}")
            if dtypes[name].kind not in "iu":
                raise DataError(f"{where}: feature_spec.{name}.dtype must be an integer type, got {dtypes[name].name}")
            if card - 1 > np.iinfo(dtypes[name]).max:
                raise DataError(
                    f"{where}: feature_spec.{name}: cardinality {card} does not fit dtype {dtypes[name].name} "
                    f"(max id {np.iinfo(dtypes[name]).max})"
                )
            cards[name] = card
        hotness, padded = {}, set()
        for name in categorical:
            h = fspec[name].get("hotness", 1)
            if not isinstance(h, int) or isinstance(h, bool) or not 1 <= h <= MAX_HOTNESS:
                raise DataError(f"{where}: feature_spec.{name}.hotness must be an integer in 1..{MAX_HOTNESS} (ids per "
                                f"row), got {h!r}")
            pad = fspec[name].get("padded", False)
            if not isinstance(pad, bool):
                raise DataError(f"{where}: feature_spec.{name}.padded must be true or false, got {pad!r}")
            if pad and dtypes[name].kind != "i":
                raise DataError(f"{where}: feature_spec.{name}: padded rows hold -1, which needs a signed dtype, "
                                f"got {dtypes[name].name}")
            if h > 1:
                hotness[name] = h
            if pad:
                padded.add(name)
        for name in numerical + labels:
            extra = [k for k in ("hotness", "padded") if k in (fspec[name] or {})]
            if extra:
                raise DataError(f"{where}: feature_spec.{name}.{extra[0]}: only categorical features are multi-hot")
        sources: dict[str, list[Chunk]] = {}
        for split, chunks in src.items():
            out = []
            if not isinstance(chunks, list):
                raise DataError(f"{where}: source_spec.{split} must be a list of files, got {chunks!r}")
            for i, ch in enumerate(chunks):
                ctx = f"source_spec.{split}[{i}]"
                if mapping(ch, ctx).get("type") != "split_binary":
                    raise DataError(f"{where}: {ctx}.type must be split_binary, got {ch.get('type')!r}")
                feats, files = names(ch.get("features"), f"{ctx}.features"), ch.get("files") or []
                if not isinstance(files, list):
                    raise DataError(f"{where}: {ctx}.files must be a list, got {files!r}")
                if len(files) != 1:
                    raise DataError(f"{where}: {ctx}.files must list exactly one file, got {files}")
                unknown = [f for f in feats if f not in dtypes]
                if unknown or not feats:
                    raise DataError(f"{where}: {ctx}.features names features not in channel_spec: {unknown or feats}")
                kinds = {dtypes[f] for f in feats}
                if len(kinds) != 1:
                    raise DataError(f"{where}: {ctx} mixes dtypes {sorted(k.name for k in kinds)} in one file")
                widths = [hotness.get(f, 1) for f in feats]
                out.append(Chunk(feats, file_inside(root, files[0], f"{where}: {ctx}.files"), kinds.pop(),
                                 widths if max(widths) > 1 else None))
            covered = [f for c in out for f in c.features]
            missing = [f for f in numerical + categorical + labels if f not in covered]
            if missing:
                raise DataError(f"{where}: source_spec.{split} has no file for features {missing}")
            sources[split] = out
        return cls(root, numerical, categorical, labels[0], cards, dtypes, sources, dict(raw.get("metadata") or {}),
                   hotness, padded)

    @classmethod
    def default(cls, root: str | os.PathLike, cardinalities: list[int], num_numerical: int = 13,
                splits=SPLITS, metadata: dict | None = None, hotness: list[int] | None = None,
                padded: list[bool] | None = None) -> "FeatureSpec":
        """NVIDIA's default layout: numerical.bin (float16, all numerical features), label.bin, cat_<i>.bin.

        hotness: ids per row of each categorical feature (None: all one-hot); padded: which of them
        hold rows of fewer ids, padded with -1."""
        root = Path(root).resolve()
        numerical = [f"num_{i}" for i in range(num_numerical)]
        categorical = [f"cat_{i}.bin" for i in range(len(cardinalities))]
        dtypes = {n: np.dtype(np.float16) for n in numerical}
        dtypes["label"] = np.dtype(np.bool_)
        cards = {}
        hot = list(hotness) if hotness is not None else [1] * len(categorical)
        pads = list(padded) if padded is not None else [False] * len(categorical)
        if len(hot) != len(categorical) or len(pads) != len(categorical) or min(hot, default=1) < 1:
            raise DataError(f"{root}: {len(categorical)} categorical features need as many positive hotness values "
                            f"and padded flags, got {hot} and {pads}")
        for name, card in zip(categorical, cardinalities):
            dtypes[name] = categorical_dtype(card)
            cards[name] = int(card)
        sources = {}
        for split in splits:
            chunks = []
            if numerical:
                chunks.append(Chunk(numerical, root / split / "numerical.bin", dtypes[numerical[0]]))
            chunks.append(Chunk(["label"], root / split / "label.bin", dtypes["label"]))
            for name in categorical:
                h = hot[categorical.index(name)]
                chunks.append(Chunk([name], root / split / name, dtypes[name], [h] if h > 1 else None))
            sources[split] = chunks
        return cls(root, numerical, categorical, "label", cards, dtypes, sources, dict(metadata or {}),
                   {f: h for f, h in zip(categorical, hot) if h > 1}, {f for f, p in zip(categorical, pads) if p})

    def to_dict(self) -> dict:
        fspec = {}
        for name in self.numerical + self.categorical + [self.label]:
            fspec[name] = {"dtype": self.dtypes[name].name}
            if name in self.cardinalities:
                fspec[name]["cardinality"] = self.cardinalities[name]
            if name in self.hotness:  # one-hot features stay as NVIDIA writes them
                fspec[name]["hotness"] = self.hotness[name]
            if name in self.padded:
                fspec[name]["padded"] = True
        return {
            "channel_spec": {CATEGORICAL: list(self.categorical), LABEL: [self.label], NUMERICAL: list(self.numerical)},
            "feature_spec": fspec,
            "metadata": dict(self.metadata),
            "source_spec": {
                split: [
                    {"features": list(c.features), "files": [os.path.relpath(c.file, self.root)], "type": "split_binary"}
                    for c in chunks
                ]
                for split, chunks in self.sources.items()
            },
        }

    def save(self) -> Path:
        """Write feature_spec.yaml atomically. Call it last: its presence marks the dataset complete."""
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, yaml.safe_dump(self.to_dict(), sort_keys=False))  # a full disk leaves no half spec
        return self.path
