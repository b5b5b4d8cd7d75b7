"""Synthetic data: deterministic, calibrated, skewed, and learnable (with a known best AUC)."""
from __future__ import annotations

import numpy as np
import pytest

from dlrm.__main__ import main as cli
from dlrm.data import synth
from dlrm.data.reader import SplitBinaryReader
from dlrm.data.spec import FeatureSpec
from dlrm.errors import DataError, UserError

CARDS = synth.scaled(synth.SMALL_CARDINALITIES, 10)  # 26 tables, 2 to 5000 ids


def files_of(spec: FeatureSpec) -> dict[str, bytes]:
    return {str(c.file.relative_to(spec.root)): c.file.read_bytes() for s in spec.sources.values() for c in s}


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    return synth.generate(out, 20_000, 5, cardinalities=CARDS, test_rows=5_000)


def load(spec: FeatureSpec, split: str):
    r = SplitBinaryReader(spec, split, 1 << 20, prefetch=0)
    (b,) = list(r)
    return b.numerical.float().numpy(), b.categorical.numpy(), b.label.float().numpy()


def test_metadata_and_layout(data):
    spec = FeatureSpec.load(data.root)
    meta = spec.metadata["synthetic"]
    assert set(meta) == {"seed", "rows", "test_rows", "click_rate", "oracle_auc"}
    assert (meta["seed"], meta["rows"], meta["test_rows"]) == (5, 20_000, 5_000)
    assert spec.check() == {"train": 20_000, "test": 5_000}
    assert spec.table_sizes == CARDS and len(spec.numerical) == 13


def test_deterministic_for_a_seed(tmp_path, data):
    again = synth.generate(tmp_path / "a", 20_000, 5, cardinalities=CARDS, test_rows=5_000)
    assert files_of(again) == files_of(data)
    assert again.metadata == data.metadata
    other = synth.generate(tmp_path / "b", 20_000, 6, cardinalities=CARDS, test_rows=5_000)
    assert files_of(other)["train/label.bin"] != files_of(data)["train/label.bin"]


@pytest.mark.parametrize("target", [0.25, 0.05])
def test_click_rate_near_target(tmp_path, data, target):
    spec = data if target == 0.25 else synth.generate(tmp_path, 20_000, 1, cardinalities=CARDS, test_rows=100,
                                                      click_rate=target)
    _, _, label = load(spec, "train")
    assert abs(label.mean() - target) < 0.02
    assert spec.metadata["synthetic"]["click_rate"] == pytest.approx(label.mean(), abs=1e-6)


def test_features_look_like_criteo(data):
    num, cat, _ = load(data, "train")
    assert num.min() >= 0 and (num == 0).mean() > 0.1 and num.max() > 2  # log(1 + count), zeros common
    for t, c in enumerate(CARDS):
        assert 0 <= cat[:, t].min() and cat[:, t].max() < c
    counts = np.sort(np.bincount(cat[:, 9], minlength=CARDS[9]))[::-1]  # 4000 ids
    assert counts[:40].sum() > 0.3 * counts.sum()  # 1% of the ids draw a third of the rows
    assert (counts > 0).sum() > 1000  # and the tail is still there


def test_oracle_auc_is_high_and_exact(data):
    num, cat, label = load(data, "test")
    oracle = data.metadata["synthetic"]["oracle_auc"]
    assert oracle > 0.7
    # The stored figure is the hidden model's AUC on exactly these rows.
    truth = synth.make_truth(5, CARDS, 13)
    synth.calibrate(truth, 5, 0.25)
    rng = np.random.default_rng([5, synth.SPLIT_STREAM["test"], 0])
    numerical, _, ranks = synth.sample(truth, rng, 5_000)
    assert synth.auc(synth.logits(truth, numerical, ranks), label) == pytest.approx(oracle, abs=1e-6)


def test_auc_matches_sklearn_with_ties():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 20, 5000).astype(np.float32)  # many ties
    labels = rng.random(5000) < sigmoid_np(scores / 5 - 2)
    assert synth.auc(scores, labels) == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-12)
    assert synth.auc(np.array([0.1, 0.9]), np.array([0, 1])) == 1.0
    assert synth.auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    assert synth.auc(np.array([0.3, 0.2]), np.array([1, 1])) is None


def sigmoid_np(z):
    return 1 / (1 + np.exp(-z))


def test_learnable_from_popular_ids(data):
    linear_model = pytest.importorskip("sklearn.linear_model")
    sparse = pytest.importorskip("scipy.sparse")

    def one_hot(cat, tops):
        blocks = []
        for t, top in enumerate(tops):  # one column per popular id, the rest all-zero
            hit = (cat[:, t][:, None] == top[None, :]).astype(np.float32)
            blocks.append(sparse.csr_matrix(hit))
        return sparse.hstack(blocks).tocsr()

    num, cat, label = load(data, "train")
    tnum, tcat, tlabel = load(data, "test")
    tops = [np.argsort(np.bincount(cat[:, t], minlength=c))[::-1][:20] for t, c in enumerate(CARDS)]
    x, tx = (sparse.hstack([one_hot(c, tops), sparse.csr_matrix(n)]).tocsr() for c, n in ((cat, num), (tcat, tnum)))
    model = linear_model.LogisticRegression(C=1.0, max_iter=300).fit(x, label)
    got = synth.auc(model.decision_function(tx), tlabel)
    print(f"logistic regression AUC {got:.4f}, oracle {data.metadata['synthetic']['oracle_auc']:.4f}")
    assert 0.6 < got <= data.metadata["synthetic"]["oracle_auc"] + 0.01


def test_cli(tmp_path, capsys):
    out = tmp_path / "c"
    args = ["synth", "--out", str(out), "--rows", "3000", "--tables", "criteo-fl15", "--scale", "5000", "--seed", "3"]
    assert cli(args) == 0
    line = capsys.readouterr().out
    assert "3000 train + 375 test rows" in line and "oracle test AUC" in line
    spec = FeatureSpec.load(out)
    assert spec.table_sizes == [max(2, round(c / 5000)) for c in synth.CRITEO_FL15_CARDINALITIES]
    assert spec.check() == {"train": 3000, "test": 375}
    assert cli(args) == 2  # refuses to overwrite
    assert "already holds a dataset" in capsys.readouterr().err
    assert cli(args + ["--overwrite", "--test-rows", "10"]) == 0
    assert FeatureSpec.load(out).check()["test"] == 10


def test_bad_arguments(tmp_path):
    with pytest.raises(UserError, match="click-rate"):
        synth.generate(tmp_path, 10, 0, cardinalities=CARDS, test_rows=1, click_rate=1.5)
    with pytest.raises(UserError, match="rows"):
        synth.generate(tmp_path, 0, 0, cardinalities=CARDS, test_rows=1)
    with pytest.raises(UserError, match="scale"):
        synth.scaled(CARDS, 0)
    for kwargs, message in [(dict(test_rows=0), "--test-rows must be >= 1"), (dict(seed=-1), "--seed"),
                            (dict(num_numerical=-1), "--num-numerical"), (dict(num_numerical=10**6), "--num-numerical"),
                            (dict(cardinalities=[]), "at least one table"), (dict(click_rate=float("nan")), "click-rate")]:
        with pytest.raises(UserError, match=message):
            synth.generate(tmp_path, **{"rows": 10, "seed": 0, "cardinalities": CARDS, "test_rows": 1, **kwargs})
    assert not (tmp_path / "feature_spec.yaml").exists()


@pytest.mark.parametrize("num_numerical,cards", [(0, CARDS), (13, [2]), (0, [3])])
def test_every_dataset_synth_writes_trains(tmp_path, num_numerical, cards):
    """Each option by class at its edge (no numerical features, one table of 2 ids): trains."""
    from dlrm.config import TrainConfig, load_config
    from dlrm.training.train import BUILTIN_CONFIGS, train

    synth.generate(tmp_path / "ds", 600, 1, cardinalities=cards, test_rows=1, num_numerical=num_numerical)
    cfg = load_config(TrainConfig, files=[BUILTIN_CONFIGS / "tiny.yaml"],
                      overrides=[f"data.dataset={tmp_path / 'ds'}", f"out={tmp_path / 'run'}", "data.batch_size=128"])
    summary = train(cfg)
    assert summary["step"] == 5 and (tmp_path / "run" / "checkpoints").is_dir()


def test_crash_leaves_no_yaml(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise DataError("disk full")

    monkeypatch.setattr(synth, "auc", boom)  # fails after both splits are written
    with pytest.raises(DataError, match="disk full"):
        synth.generate(tmp_path, 1000, 0, cardinalities=CARDS, test_rows=10)
    assert not (tmp_path / "feature_spec.yaml").exists()


# -- multi-hot (MLPerf DLRM-DCNv2) ---------------------------------------------------------------


def reference_maps(cards, hotness):
    """The reference's recipe, written out: np.random.seed(0), then per table in order one call
    randint(0, C, (C, hotness - 1)) behind the id itself."""
    np.random.seed(0)
    out = []
    for c, h in zip(cards, hotness):
        ids = np.arange(c)[:, None]
        out.append(np.concatenate([ids, np.random.randint(0, c, size=(c, h - 1))], -1))
    return out


def test_multi_hot_maps_are_the_references(monkeypatch):
    cards, hot = CARDS[:6], [3, 2, 1, 2, 6, 1]
    monkeypatch.setattr(synth, "MULTI_HOT_MAP_CHUNK", 7)  # drawn in chunks: still one stream
    ours = synth.multi_hot_maps(cards, hot)
    for mine, ref, h in zip(ours, reference_maps(cards, hot), hot):
        assert (mine is None) == (h == 1)
        if mine is not None:
            assert np.array_equal(mine, ref)


def test_multi_hot_mlperf_expands_the_one_hot_ids(tmp_path, data):
    spec = synth.generate(tmp_path / "mh", 20_000, 5, cardinalities=CARDS, test_rows=5_000,
                          hotness=synth.MULTI_HOT_PRESETS["mlperf"], multi_hot_name="mlperf")
    assert spec.table_hotness == [3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1]
    meta = spec.metadata["synthetic"]
    assert meta["multi_hot"]["preset"] == "mlperf" and meta["oracle_auc"] == data.metadata["synthetic"]["oracle_auc"]
    _, one, label_one = load(data, "train")
    num, multi, label = load(FeatureSpec.load(spec.root), "train")
    assert multi.shape == (20_000, 214) and np.array_equal(label, label_one)
    maps = reference_maps(CARDS, spec.table_hotness)
    col = 0
    for t, h in enumerate(spec.table_hotness):
        assert np.array_equal(multi[:, col:col + h], maps[t][one[:, t]]), t  # the map's row of the one-hot id
        col += h


def test_multi_hot_cli(tmp_path, capsys):
    out = tmp_path / "c"
    assert cli(["synth", "--out", str(out), "--rows", "500", "--scale", "100", "--multi-hot", "mlperf"]) == 0
    assert "multi-hot 214 ids per row" in capsys.readouterr().out
    assert FeatureSpec.load(out).check() == {"train": 500, "test": 62}
    assert cli(["synth", "--out", str(tmp_path / "d"), "--rows", "50", "--multi-hot", "3,2"]) == 2
    assert "needs 26 values in 1..1024 (one per table), got 2" in capsys.readouterr().err
    assert cli(["synth", "--out", str(tmp_path / "d"), "--rows", "50", "--multi-hot", "many"]) == 2
    assert "expected mlperf or comma-separated integers" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
