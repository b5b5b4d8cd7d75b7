"""Split-binary writer and reader: round trips, slicing, order, resume, and every error a user can cause."""
from __future__ import annotations

import gc
import os
import threading

import numpy as np
import pytest
import torch
import yaml

from dlrm.data.reader import SplitBinaryReader, local_rows
from dlrm.data.spec import FeatureSpec, categorical_dtype
from dlrm.data.writer import SplitBinaryWriter, write_dataset
from dlrm.errors import DataError, UserError

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


# -- round trip and layout --------------------------------------------------------------------


@pytest.mark.parametrize("prefetch", [0, 2])
def test_round_trip(dataset, prefetch):
    spec, arrays = dataset
    num, cat, lab = arrays["train"]
    reader = SplitBinaryReader(spec, "train", 10, prefetch=prefetch)
    assert len(reader) == 5
    batches, got_num, got_cat, got_lab = read_all(reader)
    assert [b.index for b in batches] == [0, 1, 2, 3, 4] and [b.position for b in batches] == [0, 1, 2, 3, 4]
    assert [b.categorical.shape[0] for b in batches] == [10, 10, 10, 10, 7]
    assert got_num.dtype == torch.float16 and got_cat.dtype == torch.int32 and got_lab.dtype == torch.bool
    np.testing.assert_array_equal(got_num.numpy(), num.astype(np.float16))
    np.testing.assert_array_equal(got_cat.numpy(), cat)
    np.testing.assert_array_equal(got_lab.numpy(), lab.astype(bool))


def test_dtypes_follow_cardinality(dataset):
    spec, _ = dataset
    got = [spec.dtypes[f].name for f in spec.categorical]
    assert got == ["int8", "int8", "int16", "int16", "int32", "int32"]
    assert [categorical_dtype(c).name for c in CARDS] == got
    for name, card in zip(spec.categorical, CARDS):  # the files really hold that many bytes per row
        assert (spec.root / "train" / name).stat().st_size == 47 * np.dtype(got[CARDS.index(card)]).itemsize
    assert (spec.root / "train" / "numerical.bin").stat().st_size == 47 * 4 * 2
    assert (spec.root / "train" / "label.bin").stat().st_size == 47


def test_spec_matches_nvidia_layout(dataset):
    spec, _ = dataset
    raw = yaml.safe_load(spec.path.read_text())
    assert set(raw) == {"channel_spec", "feature_spec", "metadata", "source_spec"}
    assert raw["channel_spec"] == {"categorical": [f"cat_{i}.bin" for i in range(6)], "label": ["label"],
                                   "numerical": [f"num_{i}" for i in range(4)]}
    assert raw["feature_spec"]["num_0"] == {"dtype": "float16"}
    assert raw["feature_spec"]["label"] == {"dtype": "bool"}
    assert raw["feature_spec"]["cat_5.bin"] == {"dtype": "int32", "cardinality": 100_000}
    for split in ("train", "test"):
        files = [(tuple(c["features"]), c["files"], c["type"]) for c in raw["source_spec"][split]]
        assert files[0] == (tuple(f"num_{i}" for i in range(4)), [f"{split}/numerical.bin"], "split_binary")
        assert files[1] == (("label",), [f"{split}/label.bin"], "split_binary")
        assert files[2:] == [((f"cat_{i}.bin",), [f"{split}/cat_{i}.bin"], "split_binary") for i in range(6)]
    assert sorted(os.listdir(spec.root)) == ["feature_spec.yaml", "test", "train"]


# -- subsets and slices -----------------------------------------------------------------------


def test_feature_subset(dataset):
    spec, arrays = dataset
    num, cat, lab = arrays["train"]
    _, got_num, got_cat, _ = read_all(SplitBinaryReader(spec, "train", 16, categorical=["cat_3.bin", "cat_0.bin"]))
    np.testing.assert_array_equal(got_cat.numpy(), cat[:, [3, 0]])
    batches, got_num, got_cat, got_lab = read_all(
        SplitBinaryReader(spec, "train", 16, categorical=[], numerical=False, label=False))
    assert got_cat.shape == (47, 0) and got_num is None and got_lab is None
    with pytest.raises(UserError, match="cat_9.bin"):
        SplitBinaryReader(spec, "train", 16, categorical=["cat_9.bin"])


@pytest.mark.parametrize("world", [1, 3, 4])
def test_local_slices_cover_the_global_batch(dataset, world):
    spec, arrays = dataset
    num, cat, lab = arrays["train"]
    per_rank = [list(SplitBinaryReader(spec, "train", 10, local_slice=(r, world), prefetch=1)) for r in range(world)]
    for i in range(5):
        parts = [per_rank[r][i] for r in range(world)]
        b = 7 if i == 4 else 10  # the last batch is uneven
        sizes = [p.label.shape[0] for p in parts]
        assert sizes == [b // world + (1 if r < b % world else 0) for r in range(world)]
        rows = slice(i * 10, i * 10 + b)
        np.testing.assert_array_equal(torch.cat([p.numerical for p in parts]).numpy(),
                                      num[rows].astype(np.float16))
        np.testing.assert_array_equal(torch.cat([p.label for p in parts]).numpy(), lab[rows])
        for p in parts:  # every rank gets the ids of the whole global batch
            np.testing.assert_array_equal(p.categorical.numpy(), cat[rows])


def test_local_rows_split():
    assert [local_rows(7, r, 3) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]
    assert [local_rows(2, r, 4) for r in range(4)] == [(0, 1), (1, 2), (2, 2), (2, 2)]


# -- order, shuffle, resume -------------------------------------------------------------------


def test_shuffle_is_seeded_and_covers_every_batch_once(dataset):
    spec, arrays = dataset
    cat = arrays["train"][1]

    def order(seed, epoch):
        r = SplitBinaryReader(spec, "train", 4, shuffle=True, seed=seed)
        r.set_epoch(epoch)
        return [b.index for b in r]

    assert order(7, 0) == order(7, 0)
    assert sorted(order(7, 0)) == list(range(12))
    assert order(7, 0) != order(7, 1) and order(7, 0) != order(8, 0)
    r = SplitBinaryReader(spec, "train", 4, shuffle=True, seed=7)
    for b in r:  # rows inside a batch stay the contiguous block of its index
        np.testing.assert_array_equal(b.categorical.numpy(), cat[b.index * 4 : b.index * 4 + 4])


def test_start_batch_resumes_the_same_epoch(dataset):
    spec, _ = dataset
    full = SplitBinaryReader(spec, "train", 4, shuffle=True, seed=3)
    full.set_epoch(5)
    expected = [(b.index, b.position, b.categorical.numpy().tobytes()) for b in full]
    resumed = SplitBinaryReader(spec, "train", 4, shuffle=True, seed=3, start_batch=7)
    resumed.set_epoch(5)
    got = [(b.index, b.position, b.categorical.numpy().tobytes()) for b in resumed]
    assert got == expected[7:]
    resumed.set_epoch(6)  # the offset was for one epoch only
    assert len(list(resumed)) == len(resumed) == 12
    with pytest.raises(UserError, match="start_batch 13"):
        SplitBinaryReader(spec, "train", 4, start_batch=13)


def test_drop_last_and_max_batches(dataset):
    spec, _ = dataset
    assert len(SplitBinaryReader(spec, "train", 10, drop_last=True)) == 4
    r = SplitBinaryReader(spec, "train", 10, max_batches=2)
    assert len(r) == 2 and [b.index for b in r] == [0, 1]
    assert len(SplitBinaryReader(spec, "train", 100, drop_last=True)) == 0


# -- errors -----------------------------------------------------------------------------------


def test_truncated_file(dataset):
    spec, _ = dataset
    f = spec.root / "train" / "cat_3.bin"  # int16: 94 bytes
    os.truncate(f, 92)
    with pytest.raises(DataError, match=r"cat_3\.bin: size 92 bytes, expected 94 bytes.*truncated"):
        SplitBinaryReader(spec, "train", 8)
    os.truncate(f, 93)  # not even a whole row
    with pytest.raises(DataError, match=r"cat_3\.bin: size 93 bytes, expected 94 bytes"):
        spec.check()


def test_oversized_file(dataset):
    spec, _ = dataset
    f = spec.root / "test" / "numerical.bin"
    with open(f, "ab") as fh:
        fh.write(b"\0" * 8)
    with pytest.raises(DataError, match=r"numerical\.bin: size 80 bytes, expected 72 bytes.*oversized"):
        SplitBinaryReader(spec, "test", 8)
    SplitBinaryReader(spec, "train", 8)  # the other split is fine


def test_missing_file(dataset):
    spec, _ = dataset
    os.remove(spec.root / "train" / "label.bin")
    with pytest.raises(DataError, match=r"label\.bin: missing"):
        SplitBinaryReader(spec, "train", 8)


@pytest.mark.parametrize("bad", [-3, 126, 127])
def test_bad_ids_are_caught_while_reading(dataset, bad):
    spec, arrays = dataset
    ids = arrays["train"][1][:, 1].astype(np.int8)  # cat_1.bin: cardinality 126, int8
    ids[33] = bad
    ids.tofile(spec.root / "train" / "cat_1.bin")
    reader = SplitBinaryReader(spec, "train", 10, prefetch=2)
    it = iter(reader)
    for _ in range(3):  # the batches before the bad one still arrive
        next(it)
    with pytest.raises(DataError, match=rf"feature cat_1.bin: id {bad} at row 33 .*cardinality 126"):
        next(it)
    assert len(list(SplitBinaryReader(spec, "train", 10, check_ids=False))) == 5


def test_writer_rejects_bad_ids(tmp_path):
    spec = FeatureSpec.default(tmp_path, CARDS, num_numerical=4)
    num, cat, lab = make_arrays(20)
    for bad in (-1, 32767):
        cat2 = cat.copy()
        cat2[11, 3] = bad
        with pytest.raises(DataError, match=rf"feature cat_3.bin: id {bad} at row 11 .*cardinality 32766"):
            write_dataset(spec, {"train": (num, cat2, lab), "test": make_arrays(3)})
    assert not spec.path.exists()
    with pytest.raises(DataError, match="labels must be 0 or 1"):
        write_dataset(spec, {"train": (num, cat, lab * 2.0), "test": make_arrays(3)})


def _raw_spec(dataset):
    spec, _ = dataset
    return yaml.safe_load(spec.path.read_text()), spec


def test_bad_spec_missing_key(dataset):
    raw, spec = _raw_spec(dataset)
    del raw["channel_spec"]
    with pytest.raises(DataError, match="missing key channel_spec"):
        FeatureSpec.from_dict(raw, spec.root)
    raw, spec = _raw_spec(dataset)
    del raw["feature_spec"]["cat_2.bin"]
    with pytest.raises(DataError, match=r"missing key feature_spec\.cat_2\.bin"):
        FeatureSpec.from_dict(raw, spec.root)


def test_bad_spec_unknown_feature_in_source(dataset):
    raw, spec = _raw_spec(dataset)
    raw["source_spec"]["train"][2]["features"] = ["cat_77.bin"]
    with pytest.raises(DataError, match=r"source_spec\.train\[2\]\.features .*cat_77\.bin"):
        FeatureSpec.from_dict(raw, spec.root)


def test_bad_spec_cardinality_does_not_fit_dtype(dataset):
    raw, spec = _raw_spec(dataset)
    raw["feature_spec"]["cat_0.bin"]["cardinality"] = 300  # int8 holds ids up to 127
    spec.path.write_text(yaml.safe_dump(raw))
    with pytest.raises(DataError, match=r"cat_0\.bin: cardinality 300 does not fit dtype int8"):
        FeatureSpec.load(spec.root)


# -- writer lifecycle -------------------------------------------------------------------------


def test_writer_abort_leaves_nothing(tmp_path):
    spec = FeatureSpec.default(tmp_path / "ds", CARDS, num_numerical=4)
    num, cat, lab = make_arrays(20)
    with pytest.raises(RuntimeError, match="boom"):
        with SplitBinaryWriter(spec, "train") as w:
            w.append(num, cat, lab)
            w.append(num, list(cat.T), lab)
            assert w.rows == 40
            raise RuntimeError("boom")
    assert [p for p in (tmp_path / "ds").rglob("*") if p.is_file()] == []


def test_writer_appends_in_chunks_and_renames_on_close(tmp_path):
    spec = FeatureSpec.default(tmp_path / "ds", CARDS, num_numerical=4)
    num, cat, lab = make_arrays(30)
    w = SplitBinaryWriter(spec, "train")
    assert (spec.root / "train" / "label.bin.partial").exists() and not (spec.root / "train" / "label.bin").exists()
    w.append(num[:13], cat[:13], lab[:13])
    w.append(num[13:], list(cat[13:].T), lab[13:])
    w.close()
    assert sorted(p.name for p in (spec.root / "train").iterdir()) == sorted(["numerical.bin", "label.bin"] + spec.categorical)
    assert spec.num_rows("train") == 30 and not spec.path.exists()  # the yaml is the caller's, last
    np.testing.assert_array_equal(np.fromfile(spec.root / "train" / "cat_5.bin", np.int32), cat[:, 5])


def test_write_dataset_refuses_an_existing_dataset(dataset):
    spec, arrays = dataset
    with pytest.raises(DataError, match="already holds a dataset.*overwrite"):
        write_dataset(spec, arrays)
    new = {"train": make_arrays(5, 9), "test": make_arrays(2, 9)}
    write_dataset(spec, new, overwrite=True)
    assert FeatureSpec.load(spec.root).check() == {"train": 5, "test": 2}


def test_abandoned_iterator_stops_its_threads(dataset):
    spec, _ = dataset
    before = threading.active_count()
    it = iter(SplitBinaryReader(spec, "train", 2, prefetch=3))
    next(it)
    assert threading.active_count() > before
    del it
    gc.collect()
    assert threading.active_count() == before
    with iter(SplitBinaryReader(spec, "train", 2, prefetch=3)) as it:
        next(it)
    assert threading.active_count() == before


def test_writer_accepts_an_empty_batch(tmp_path):
    import numpy as np

    from dlrm.data.spec import FeatureSpec
    from dlrm.data.writer import SplitBinaryWriter

    spec = FeatureSpec.default(tmp_path, [5, 300], num_numerical=2, splits=("train",))
    with SplitBinaryWriter(spec, "train") as w:
        w.append(np.zeros((0, 2), np.float32), np.zeros((0, 2), np.int64), np.zeros(0, bool))
        w.append(np.ones((3, 2), np.float32), np.array([[1, 2]] * 3), np.array([0, 1, 1]))
    assert w.rows == 3 and spec.num_rows("train") == 3


# -- labels and numerical values are checked as they are read ------------------------------------


@pytest.mark.parametrize("prefetch", [0, 2])
def test_label_other_than_0_or_1_names_file_and_row(dataset, prefetch):
    spec, _ = dataset
    raw = np.fromfile(spec.root / "train" / "label.bin", np.uint8)
    raw[23] = 2  # a bool file: numpy and torch would read this byte as True
    raw.tofile(spec.root / "train" / "label.bin")
    with pytest.raises(DataError, match=r"train/label\.bin: label 2 at row 23 is not 0 or 1"):
        read_all(SplitBinaryReader(spec, "train", 10, prefetch=prefetch))
    # each rank checks its own slice: the rank holding row 23 finds it, with the split's row number
    with pytest.raises(DataError, match=r"label 2 at row 23 "):
        read_all(SplitBinaryReader(spec, "train", 10, local_slice=(0, 2)))
    read_all(SplitBinaryReader(spec, "train", 10, local_slice=(1, 2)))  # rank 1 never reads row 23


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_numerical_names_file_feature_and_row(dataset, value):
    spec, arrays = dataset
    num = arrays["train"][0].astype(np.float16)
    num[31, 2] = value
    num.tofile(spec.root / "train" / "numerical.bin")
    with pytest.raises(DataError, match=rf"train/numerical\.bin: feature num_2: {value} at row 31 is not a finite number"):
        read_all(SplitBinaryReader(spec, "train", 8))
    read_all(SplitBinaryReader(spec, "train", 8, numerical=False))  # not read, not checked


def test_largest_finite_float16_is_fine(dataset):
    spec, arrays = dataset
    num = arrays["train"][0].astype(np.float16)
    num[5] = [np.finfo(np.float16).max, -np.finfo(np.float16).max, 0, np.finfo(np.float16).tiny]
    num.tofile(spec.root / "train" / "numerical.bin")
    _, got, _, _ = read_all(SplitBinaryReader(spec, "train", 8))
    assert torch.equal(got, torch.from_numpy(num))


def test_dataset_without_numerical_features_gives_empty_columns(tmp_path):
    spec = FeatureSpec.default(tmp_path / "ds", [3, 4], num_numerical=0)
    num, cat, lab = make_arrays(11, cards=[3, 4], n_num=0)
    write_dataset(spec, {"train": (num, cat, lab), "test": (num, cat, lab)})
    batches, got, _, _ = read_all(SplitBinaryReader(FeatureSpec.load(tmp_path / "ds"), "train", 4, local_slice=(0, 2)))
    assert got.shape == (6, 0) and [b.numerical.shape for b in batches] == [(2, 0), (2, 0), (2, 0)]


@pytest.mark.parametrize("how", ["parent", "absolute", "symlink"])
def test_spec_files_outside_the_dataset_folder_are_refused(dataset, how):
    spec, _ = dataset
    outside = spec.root.parent / "elsewhere.bin"
    (spec.root / "train" / "label.bin").rename(outside)
    raw = yaml.safe_load(spec.path.read_text())
    if how == "symlink":
        (spec.root / "train" / "label.bin").symlink_to(outside)
    else:
        for ch in raw["source_spec"]["train"]:
            if ch["files"] == ["train/label.bin"]:
                ch["files"] = ["../elsewhere.bin" if how == "parent" else str(outside)]
    spec.path.write_text(yaml.safe_dump(raw))
    with pytest.raises(DataError, match=r"source_spec\.train\[\d+\]\.files: .*(leads outside|must be a path relative to) "
                                        r"the dataset folder"):
        FeatureSpec.load(spec.root)


def test_files_may_go_up_and_back_in(dataset):
    spec, _ = dataset
    raw = yaml.safe_load(spec.path.read_text())
    raw["source_spec"]["train"][0]["files"] = [f"train/../{raw['source_spec']['train'][0]['files'][0]}"]
    spec.path.write_text(yaml.safe_dump(raw))
    assert FeatureSpec.load(spec.root).check()["train"] == 47


@pytest.mark.parametrize("path,value,message", [
    (["source_spec"], ["train"], r"source_spec must be a mapping"),
    (["source_spec", "train", 0], "numerical.bin", r"source_spec\.train\[0\] must be a mapping"),
    (["source_spec", "train", 0, "files"], "x.bin", r"source_spec\.train\[0\]\.files must be a list"),
    (["feature_spec", "num_1"], [1], r"feature_spec\.num_1 must be a mapping"),
    (["channel_spec", "numerical"], "num_0", r"channel_spec\.numerical must be a list of feature names"),
    (["channel_spec", "numerical"], [{"a": 1}], r"channel_spec\.numerical must be a list of feature names"),
    (["channel_spec", "label"], ["num_0"], r"channel_spec lists \['num_0'\] in more than one channel"),
    (["feature_spec", "num_0", "dtype"], "S4", r"feature_spec\.num_0\.dtype must be a number type"),
])
def test_spec_structure_errors_name_the_key(dataset, path, value, message):
    raw, spec = _raw_spec(dataset)
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    spec.path.write_text(yaml.safe_dump(raw))
    with pytest.raises(DataError, match=message):
        FeatureSpec.load(spec.root)


def test_require_rows(dataset):
    spec, _ = dataset
    assert spec.require_rows(["train", "test"]) == {"train": 47, "test": 9}
    for f in (spec.root / "test").iterdir():
        os.truncate(f, 0)
    with pytest.raises(DataError, match=r"split test has 0 rows"):
        spec.require_rows(["train", "test"])


# -- multi-hot -----------------------------------------------------------------------------------


def test_multi_hot_round_trip_and_spec(tmp_path):
    """hotness k: k columns per row in the feature's file, read back side by side [B, H]; the yaml
    records `hotness` (and `padded`) only where they differ from one-hot."""
    sizes, hot = [10, 300, 5], [3, 1, 2]
    spec = FeatureSpec.default(tmp_path, sizes, num_numerical=2, hotness=hot, padded=[False, False, True])
    rng = np.random.default_rng(0)
    n = 37
    a, b, c = rng.integers(0, 10, (n, 3)), rng.integers(0, 300, n), rng.integers(-1, 5, (n, 2))
    num, label = rng.random((n, 2)), rng.random(n) < 0.5
    write_dataset(spec, {"train": (num, [a, b, c], label), "test": (num, [a, b, c], label)})
    raw = yaml.safe_load((tmp_path / "feature_spec.yaml").read_text())
    assert raw["feature_spec"]["cat_0.bin"]["hotness"] == 3 and "hotness" not in raw["feature_spec"]["cat_1.bin"]
    assert raw["feature_spec"]["cat_2.bin"]["padded"] is True and "padded" not in raw["feature_spec"]["cat_0.bin"]
    assert (tmp_path / "train" / "cat_0.bin").stat().st_size == n * 3 * 1  # int8, 3 ids a row
    loaded = FeatureSpec.load(tmp_path)
    assert loaded.table_hotness == hot and loaded.padded == {"cat_2.bin"} and loaded.multi_hot
    r = SplitBinaryReader(loaded, "train", 16, prefetch=0)
    batch = next(iter(r))
    assert batch.categorical.shape == (16, 6)
    assert torch.equal(batch.categorical, torch.from_numpy(np.concatenate([a, b[:, None], c], 1)[:16]).int())
    sub = SplitBinaryReader(loaded, "train", 16, categorical=["cat_2.bin", "cat_0.bin"], prefetch=0)
    assert sub.hotness == [2, 3]
    assert torch.equal(next(iter(sub)).categorical, torch.from_numpy(np.concatenate([c, a], 1)[:16]).int())


def test_one_hot_spec_has_no_multi_hot_keys(dataset):
    raw = yaml.safe_load(dataset[0].path.read_text())
    assert not any({"hotness", "padded"} & set(v) for v in raw["feature_spec"].values())


def test_multi_hot_bad_ids_name_the_row(tmp_path):
    spec = FeatureSpec.default(tmp_path, [10], num_numerical=1, hotness=[3])
    ids = np.zeros((4, 3), np.int64)
    ids[2, 1] = 10
    with SplitBinaryWriter(spec, "train") as w, pytest.raises(DataError, match=r"id 10 at row 2 is outside \[0, 10\)"):
        w.append(np.zeros((4, 1)), [ids], np.zeros(4, bool))
    ids[2, 1] = -1  # padding only where the spec says so
    with SplitBinaryWriter(spec, "train") as w, pytest.raises(DataError, match="id -1 at row 2"):
        w.append(np.zeros((4, 1)), [ids], np.zeros(4, bool))
    with SplitBinaryWriter(spec, "train") as w, pytest.raises(DataError, match=r"expected \(4, 3\) \(hotness 3\)"):
        w.append(np.zeros((4, 1)), [ids[:, :2]], np.zeros(4, bool))


@pytest.mark.parametrize("entry,message", [
    ({"hotness": 0}, "hotness must be a positive integer"),
    ({"hotness": "3"}, "hotness must be a positive integer"),
    ({"padded": "yes"}, "padded must be true or false"),
])
def test_bad_multi_hot_spec(dataset, tmp_path, entry, message):
    spec = dataset[0]
    raw = yaml.safe_load(spec.path.read_text())
    raw["feature_spec"][raw["channel_spec"]["categorical"][0]].update(entry)
    with pytest.raises(DataError, match=message):
        FeatureSpec.from_dict(raw, spec.root)


def test_multi_hot_file_of_the_wrong_width_is_caught(tmp_path):
    spec = FeatureSpec.default(tmp_path, [10, 10], num_numerical=1, hotness=[3, 1])
    write_dataset(spec, {s: (np.zeros((8, 1)), [np.zeros((8, 3), int), np.zeros(8, int)], np.zeros(8, bool))
                         for s in ("train", "test")})
    raw = yaml.safe_load(spec.path.read_text())
    raw["feature_spec"]["cat_0.bin"]["hotness"] = 2  # the file holds 3 ids a row
    with pytest.raises(DataError, match="cat_0.bin: size 24 bytes, expected 16 bytes"):
        FeatureSpec.from_dict(raw, spec.root).num_rows("train")
