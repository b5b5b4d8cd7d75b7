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

from reader_common import CARDS, dataset, make_arrays, read_all  # noqa: F401 (dataset is a fixture)


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
