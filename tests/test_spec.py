"""feature_spec.yaml: structure errors name the key, files stay inside the folder, splits need rows, multi-hot keys."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import yaml

from dlrm.data.reader import SplitBinaryReader
from dlrm.data.spec import FeatureSpec
from dlrm.data.writer import SplitBinaryWriter, write_dataset
from dlrm.errors import DataError

from reader_common import dataset  # noqa: F401 (a fixture)


# -- the spec's structure ------------------------------------------------------------------------

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
    ({"hotness": 0}, r"hotness must be an integer in 1\.\.1024 \(ids per row\), got 0"),
    ({"hotness": "3"}, r"hotness must be an integer in 1\.\.1024"),
    # a typo must not size a 3.6 TiB batch buffer
    ({"hotness": 10**9}, r"cat_0\.bin\.hotness must be an integer in 1\.\.1024 \(ids per row\), got 1000000000"),
    ({"cardinality": 2**40, "dtype": "int64"}, r"cat_0\.bin\.cardinality must be an integer in 1\.\.2,147,483,647 "
                                                r"\(ids are int32 in the exported model\), got 1099511627776"),
    ({"cardinality": True}, r"cardinality must be an integer in 1\.\."),
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
