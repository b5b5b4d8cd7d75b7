"""`python -m dlrm synth`: a synthetic, learnable click log in NVIDIA's split-binary format.

    python -m dlrm synth --out data/synth --rows 2000000 --seed 1 [--tables small|criteo-fl15 --scale 100]
                         [--multi-hot mlperf|3,2,1,...]

Rows are drawn from a hidden ground-truth model, so a trained DLRM has a known target:
  - ids: per table, Zipf-like popularity over a pseudo-random permutation of the ids (rank r is
    drawn by inverse-CDF sampling of a continuous power law, then mapped to id (a*r + c) mod C);
  - numerical: log(1 + count), counts geometric with some exact zeros, stored as float16 like
    NVIDIA's preprocessing output;
  - label: Bernoulli(sigmoid(logit)), logit = bias + per-id weights of every table (heavier for
    popular ids, zero for ranks past the first 2^18, so what is learnable is seen often) + linear
    weights on the standardised numerical features + a few pairwise interactions (id x id,
    numerical x numerical); the bias is found by bisection so the click rate is `click_rate`.
Multi-hot (`--multi-hot`): each table's one-hot id is expanded to `hotness` ids as MLPerf's
materialize_synthetic_multihot_dataset.py does for DLRM-DCNv2: a per-table map [C, hotness] whose
column 0 is the id itself and whose other columns are uniform over [0, C), drawn from one
RandomState(0) stream table after table; a row's ids are the map's row for its one-hot id. The
labels stay those of the one-hot ids (the expansion is a function of them), so the oracle holds.
The hidden model's AUC on the test split (`oracle_auc`, the best any model can do) is stored in
feature_spec.yaml under metadata.synthetic. Everything is drawn in fixed chunks from generators
seeded by (seed, split, chunk), so memory stays bounded and a seed always gives the same bytes.
"""
from __future__ import annotations

import argparse
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dlrm.data.spec import MAX_HOTNESS, FeatureSpec
from dlrm.data.writer import SplitBinaryWriter, claim_folder
from dlrm.errors import UserError
from dlrm.io.fsutil import local_path
from dlrm.metrics import roc_auc
from dlrm.modules.tables import CRITEO_FL15_CARDINALITIES, MULTI_HOT_PRESETS, SMALL_CARDINALITIES, TABLE_PRESETS  # noqa: F401 (tests use them)

CHUNK_ROWS = 1 << 18  # rows drawn per step: fixed, so output never depends on memory settings
WEIGHTED_RANKS = 1 << 18  # ids ranked past this carry no weight (and are rare)
CALIBRATION_ROWS = 100_000
SPLIT_STREAM = {"train": 1, "test": 2, "calibration": 3}


@dataclass
class Truth:
    """The hidden model and the sampling parameters, all drawn from the seed."""

    cards: np.ndarray  # [F]
    zipf_a: np.ndarray  # [F] power-law exponents
    perm_a: np.ndarray  # [F] rank -> id multipliers, coprime with the cardinality
    perm_c: np.ndarray  # [F] rank -> id offsets
    weights: list  # F arrays [min(C, WEIGHTED_RANKS) + 1], last entry 0 for the tail
    signs: list  # per id x id pair: two ±1 arrays over ranks, same layout as weights
    pairs: list  # [(table a, table b, strength)]
    zero_p: np.ndarray  # [N] chance a numerical feature is exactly 0
    geo_p: np.ndarray  # [N] geometric parameter of the counts
    num_w: np.ndarray  # [N] linear weights on standardised numerical features
    num_pairs: list  # [(i, j, strength)]
    num_mean: np.ndarray | None = None  # [N], set from the calibration sample
    num_std: np.ndarray | None = None
    bias: float = 0.0


def make_truth(seed: int, cardinalities: list[int], num_numerical: int) -> Truth:
    rng = np.random.default_rng([seed, 0])
    f = len(cardinalities)
    cards = np.asarray(cardinalities, dtype=np.int64)
    perm_a = np.empty(f, np.int64)
    for t, c in enumerate(cards):
        a = int(rng.integers(1, max(c, 2))) | 1
        while np.gcd(a, c) != 1:
            a += 1
        perm_a[t] = a % c if c > 1 else 0
    # Table importance varies a lot, as in real logs: a few tables carry most of the signal.
    scale = np.exp(rng.normal(-1.5, 0.7, f))
    weights, signs = [], []
    for t, c in enumerate(cards):
        k = int(min(c, WEIGHTED_RANKS))
        w = rng.normal(0.0, 1.0, k) * scale[t] * (1.0 + np.arange(k)) ** -0.15
        weights.append(np.append(w, 0.0).astype(np.float32))
    pairs = []
    for _ in range(min(3, f // 2)):
        a, b = rng.choice(f, 2, replace=False)
        pairs.append((int(a), int(b), float(rng.uniform(0.3, 0.6))))
        signs.append(tuple(np.append(rng.choice([-1.0, 1.0], int(min(cards[x], WEIGHTED_RANKS))), 0.0).astype(np.float32)
                           for x in (a, b)))
    n = num_numerical
    num_pairs = []
    for _ in range(min(2, n // 2)):
        i, j = rng.choice(n, 2, replace=False)
        num_pairs.append((int(i), int(j), float(rng.uniform(-0.3, 0.3))))
    return Truth(cards, rng.uniform(1.05, 1.4, f), perm_a, rng.integers(0, cards), weights, signs, pairs,
                 rng.uniform(0.05, 0.5, n), rng.uniform(0.005, 0.3, n), rng.normal(0.0, 0.3, n), num_pairs)


def zipf_ranks(u: np.ndarray, c: int, a: float) -> np.ndarray:
    """Ranks in [0, c) with P(rank r) ~ (r + 1)^-a: inverse CDF of a power law on [1, c + 1)."""
    top = (c + 1.0) ** (1.0 - a)
    x = (1.0 + u * (top - 1.0)) ** (1.0 / (1.0 - a))
    return np.minimum(x.astype(np.int64) - 1, c - 1)


def sample(truth: Truth, rng: np.random.Generator, n: int):
    """n rows: numerical float16 [n, N], ids list of F int64 [n], ranks list of F int64 [n]."""
    nn = len(truth.zero_p)
    counts = rng.geometric(truth.geo_p, size=(n, nn)) - 1
    counts[rng.random((n, nn)) < truth.zero_p] = 0
    numerical = np.log1p(counts.astype(np.float32)).astype(np.float16)
    ids, ranks = [], []
    for t, c in enumerate(truth.cards):
        r = zipf_ranks(rng.random(n), int(c), float(truth.zipf_a[t]))
        ranks.append(r)
        ids.append((truth.perm_a[t] * r + truth.perm_c[t]) % c)
    return numerical, ids, ranks


def logits(truth: Truth, numerical: np.ndarray, ranks: list[np.ndarray]) -> np.ndarray:
    """The hidden model's logit per row, [n], bias included. Uses the stored (float16) values."""
    x = (numerical.astype(np.float32) - truth.num_mean) / truth.num_std
    out = x @ truth.num_w.astype(np.float32) + np.float32(truth.bias)
    for i, j, s in truth.num_pairs:
        out += np.float32(s) * x[:, i] * x[:, j]
    clipped = [np.minimum(r, len(w) - 1) for r, w in zip(ranks, truth.weights)]
    for w, r in zip(truth.weights, clipped):
        out += w[r]
    for (a, b, s), (sa, sb) in zip(truth.pairs, truth.signs):
        out += np.float32(s) * sa[clipped[a]] * sb[clipped[b]]
    return out


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def calibrate(truth: Truth, seed: int, click_rate: float) -> None:
    """Set the standardisation of the numerical features and the bias, from a fixed-size sample."""
    numerical, _, ranks = sample(truth, np.random.default_rng([seed, SPLIT_STREAM["calibration"]]), CALIBRATION_ROWS)
    x = numerical.astype(np.float32)
    truth.num_mean, truth.num_std = x.mean(0), np.maximum(x.std(0), 1e-3)
    truth.bias = 0.0
    z = logits(truth, numerical, ranks).astype(np.float64)
    lo, hi = -30.0, 30.0
    for _ in range(60):  # mean click probability is monotone in the bias
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sigmoid(z + mid).mean() < click_rate else (lo, mid)
    truth.bias = (lo + hi) / 2


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Exact ROC AUC (dlrm.metrics.roc_auc: ties counted half); None when one class is absent."""
    value = roc_auc(torch.from_numpy(np.asarray(scores, np.float64)), torch.from_numpy(np.asarray(labels, bool)))
    return None if math.isnan(value) else value


MULTI_HOT_MAP_CHUNK = 1 << 20  # map rows drawn per call: the same stream as one call, bounded temporaries


def multi_hot_maps(cardinalities: list[int], hotness: list[int]) -> list[np.ndarray | None]:
    """MLPerf's one-hot -> multi-hot maps, [C, hotness] int32 per table (None for one-hot tables).

    Drawn as the reference (torchrec_dlrm's multi_hot.py, uniform) does: one RandomState(0), per
    table in order randint(0, C, size=(C, hotness - 1)), even for hotness 1 (an empty draw), and
    the id itself in front. Legacy randint draws element by element, so drawing the rows in chunks
    gives the same stream as the reference's single call.
    """
    rs = np.random.RandomState(0)
    maps = []
    for c, h in zip(cardinalities, hotness):
        c = int(c)
        if h == 1:
            rs.randint(0, c, size=(c, 0))
            maps.append(None)
            continue
        m = np.empty((c, h), np.int32)
        m[:, 0] = np.arange(c, dtype=np.int32)
        for lo in range(0, c, MULTI_HOT_MAP_CHUNK):
            hi = min(c, lo + MULTI_HOT_MAP_CHUNK)
            m[lo:hi, 1:] = rs.randint(0, c, size=(hi - lo, h - 1))
        maps.append(m)
    return maps


def parse_multi_hot(text: str | None, num_tables: int) -> list[int] | None:
    """--multi-hot: a preset name (mlperf) or comma-separated hotness per table; None: one-hot."""
    if not text:
        return None
    if text in MULTI_HOT_PRESETS:
        hot = list(MULTI_HOT_PRESETS[text])
    else:
        try:
            hot = [int(x) for x in text.split(",")]
        except ValueError:
            raise UserError(f"synth: --multi-hot {text!r}: expected {' or '.join(MULTI_HOT_PRESETS)} or comma-separated "
                            f"integers, one per table") from None
    if len(hot) != num_tables or min(hot) < 1 or max(hot) > MAX_HOTNESS:
        raise UserError(f"synth: --multi-hot {text!r}: needs {num_tables} values in 1..{MAX_HOTNESS} (one per table), "
                        f"got {len(hot)}: {hot}")
    return hot


def write_split(truth: Truth, spec: FeatureSpec, split: str, rows: int, seed: int, keep_scores: int = 0,
                maps: list[np.ndarray | None] | None = None):
    """Draw and write `rows` rows; returns (clicks, scores [<= keep_scores], labels [<= keep_scores])."""
    clicks, scores, labels = 0, [], []
    kept = 0
    with SplitBinaryWriter(spec, split) as w:
        for c, start in enumerate(range(0, rows, CHUNK_ROWS)):
            n = min(CHUNK_ROWS, rows - start)
            rng = np.random.default_rng([seed, SPLIT_STREAM[split], c])
            numerical, ids, ranks = sample(truth, rng, n)
            z = logits(truth, numerical, ranks)
            label = rng.random(n) < sigmoid(z)
            if maps is not None:
                ids = [i if m is None else m[i] for i, m in zip(ids, maps)]
            w.append(numerical, ids, label)
            clicks += int(label.sum())
            if kept < keep_scores:
                take = min(n, keep_scores - kept)
                scores.append(z[:take])
                labels.append(label[:take])
                kept += take
    def cat(xs, dt):
        return np.concatenate(xs) if xs else np.zeros(0, dt)
    return clicks, cat(scores, np.float32), cat(labels, bool)


MAX_NUMERICAL = 1000  # Criteo has 13; each one costs CHUNK_ROWS x 4 bytes while drawing
AUC_MAX_ROWS = 4_000_000  # the oracle AUC is measured on at most this many test rows (memory)


def _check_free_space(spec: FeatureSpec, rows: int, test_rows: int) -> None:
    """A dataset larger than the disk is refused before it starts: --rows 10^14 otherwise wrote for hours
    (silently, on a quiet terminal) before the disk filled."""
    need = sum(n * sum(c.columns * c.dtype.itemsize for c in spec.sources[split])
               for split, n in (("train", rows), ("test", test_rows)))
    where = Path(spec.root).absolute()
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if need > free:
        raise UserError(f"synth: --rows {rows:,} and --test-rows {test_rows:,} need {need / 2**30:,.1f} GiB in "
                        f"{spec.root}, but {where} has {free / 2**30:,.1f} GiB free; write fewer rows or elsewhere")


def generate(out, rows: int, seed: int, *, cardinalities: list[int], test_rows: int, click_rate: float = 0.25,
             num_numerical: int = 13, overwrite: bool = False, hotness: list[int] | None = None,
             multi_hot_name: str | None = None) -> FeatureSpec:
    """Write a synthetic dataset to `out` (feature_spec.yaml last) and return its spec.

    hotness: ids per row of each table (MLPerf's expansion, see the module docstring); None: one-hot."""
    # Every dataset synth writes must train: rows in both splits (the trainer refuses an empty one).
    if rows < 1 or test_rows < 1:
        raise UserError(f"synth: --rows and --test-rows must be >= 1 (training needs rows in both splits), "
                        f"got rows={rows}, test_rows={test_rows}")
    if not 0 <= seed < 2**63:
        raise UserError(f"synth: --seed must be in [0, 2**63), got {seed}")
    if not 0.0 < click_rate < 1.0:
        raise UserError(f"synth: --click-rate must be in (0, 1), got {click_rate}")
    if not 0 <= num_numerical <= MAX_NUMERICAL:
        raise UserError(f"synth: --num-numerical must be in [0, {MAX_NUMERICAL}], got {num_numerical}")
    if not cardinalities or min(cardinalities) < 1:
        raise UserError(f"synth: need at least one table, each of >= 1 rows, got {cardinalities}")
    if hotness is not None and (len(hotness) != len(cardinalities) or min(hotness) < 1):
        raise UserError(f"synth: hotness needs {len(cardinalities)} values >= 1, got {hotness}")
    spec = FeatureSpec.default(out, list(cardinalities), num_numerical=num_numerical, hotness=hotness)
    _check_free_space(spec, rows, test_rows)
    claim_folder(spec, overwrite)  # before minutes of work, not after
    truth = make_truth(seed, list(cardinalities), num_numerical)
    calibrate(truth, seed, click_rate)
    maps = multi_hot_maps(list(cardinalities), hotness) if hotness is not None and max(hotness) > 1 else None
    train_clicks, _, _ = write_split(truth, spec, "train", rows, seed, maps=maps)
    _, scores, labels = write_split(truth, spec, "test", test_rows, seed, keep_scores=AUC_MAX_ROWS, maps=maps)
    oracle = auc(scores, labels)
    spec.metadata["synthetic"] = {
        "seed": int(seed), "rows": int(rows), "test_rows": int(test_rows),
        "click_rate": round(train_clicks / rows, 6),
        "oracle_auc": None if oracle is None else round(oracle, 6),
    }
    if maps is not None:
        spec.metadata["synthetic"]["multi_hot"] = {"hotness": list(hotness), "preset": multi_hot_name,
                                                   "distribution": "uniform", "map_seed": 0}
    spec.save()
    return spec


# -- command line -----------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="dataset folder to write (feature_spec.yaml + train/ + test/)")
    p.add_argument("--rows", type=int, default=1_000_000, help="train rows (default 1000000)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    p.add_argument("--test-rows", type=int, default=None, help="test rows (default rows // 8)")
    p.add_argument("--tables", choices=sorted(TABLE_PRESETS), default="small",
                   help="cardinalities: small (26 tables, 4 to 50000 ids), criteo-fl15 (Criteo 1TB, frequency limit 15) "
                        "or mlperf-dcnv2 (MLPerf DLRM-DCNv2: Criteo 1TB capped at 40M rows a table)")
    p.add_argument("--scale", type=float, default=1.0, help="divide every cardinality by this (each stays >= 2)")
    p.add_argument("--click-rate", type=float, default=0.25, help="target fraction of positive labels (default 0.25)")
    p.add_argument("--num-numerical", type=int, default=13, help="numerical features (default 13, as Criteo)")
    p.add_argument("--multi-hot", metavar="mlperf|H,H,...", default=None,
                   help="multi-hot ids per table: mlperf (MLPerf DLRM-DCNv2's 3,2,1,2,6,...,100,27,10,3,1,1) or one "
                        "integer per table; ids expanded from the one-hot id as MLPerf's materialize script does")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")


def scaled(cardinalities: list[int], scale: float) -> list[int]:
    if not scale > 0:
        raise UserError(f"synth: --scale must be > 0, got {scale}")
    return [max(2, int(round(c / scale))) for c in cardinalities]


def _push_hint(uri: str) -> str:
    return f"write it to a local folder, then upload it: python -m launcher data push DIR {uri}"


def main(args: argparse.Namespace) -> int:
    cards = scaled(TABLE_PRESETS[args.tables], args.scale)
    hotness = parse_multi_hot(args.multi_hot, len(cards))
    test_rows = max(1, args.rows // 8) if args.test_rows is None else args.test_rows
    t0 = time.perf_counter()
    out = local_path(args.out, "--out", "dlrm synth", _push_hint(args.out))
    spec = generate(out, args.rows, args.seed, cardinalities=cards, test_rows=test_rows,
                    click_rate=args.click_rate, num_numerical=args.num_numerical, overwrite=args.overwrite,
                    hotness=hotness, multi_hot_name=args.multi_hot if args.multi_hot in MULTI_HOT_PRESETS else None)
    meta = spec.metadata["synthetic"]
    auc_text = "n/a" if meta["oracle_auc"] is None else f"{meta['oracle_auc']:.4f}"
    multi = f", multi-hot {sum(hotness)} ids per row" if hotness else ""
    print(f"synth: {args.rows} train + {test_rows} test rows, {len(cards)} tables ({args.tables}, "
          f"{sum(cards)} ids{multi}) -> {spec.root} in {time.perf_counter() - t0:.1f}s; "
          f"click rate {meta['click_rate']:.4f}, oracle test AUC {auc_text}")
    return 0
