"""The embedding planner: fits, balance, row-wise splits, does-not-fit errors, JSON, CLI."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from dlrm.dist.plan import Plan, plan_tables
from dlrm.modules.tables import CRITEO_FL15_CARDINALITIES
from dlrm.errors import UserError

GiB = 1 << 30
ROOT = Path(__file__).resolve().parents[1]
SMALL_FL15 = [n for n in CRITEO_FL15_CARDINALITIES if n < 100_000]  # the 18 small tables, 113k rows
# NVIDIA reports ~132 GB (FL=3) and ~199 GB (FL=2) of fp32 dim-128 tables; Criteo's real lists are
# not public here, so: plausible big tables (40-100M rows) with those totals, plus FL=15's small ones.
FL3 = [80_000_000, 60_000_000, 50_000_000, 40_000_000, 15_000_000, 8_000_000, 3_000_000, 1_500_000] + SMALL_FL15
FL2 = [100_000_000, 90_000_000, 80_000_000, 60_000_000, 30_000_000, 15_000_000, 8_000_000, 5_500_000] + SMALL_FL15


def check_valid(plan: Plan) -> None:
    """Every row of every table on exactly one rank, row shards on distinct ranks, budgets kept."""
    for t, rows in enumerate(plan.table_sizes):
        shards = plan.table_shards(t)
        assert shards[0].row_start == 0 and shards[-1].row_end == rows
        assert all(a.row_end == b.row_start for a, b in zip(shards, shards[1:]))
        assert len({s.rank for s in shards}) == len(shards)
    for r in range(plan.world_size):
        assert plan.rank_bytes(r) <= plan.budget_bytes


def test_table_totals_match_nvidia():
    assert sum(CRITEO_FL15_CARDINALITIES) == 32_709_138
    assert sum(CRITEO_FL15_CARDINALITIES) * 128 * 4 == pytest.approx(16.7e9, rel=0.01)
    assert sum(FL3) * 128 * 4 == pytest.approx(132e9, rel=0.01)
    assert sum(FL2) * 128 * 4 == pytest.approx(199e9, rel=0.01)


def test_fl15_fits_one_80gb_gpu_table_wise():
    plan = plan_tables(CRITEO_FL15_CARDINALITIES, 128, 1, 80 * GiB, 65536)
    check_valid(plan)
    assert len(plan.shards) == 26 and not any(plan.is_row_wise(t) for t in range(26))
    # 16.7 GB of weights + 26 x 65536 x (3 x 512 + 8) B of batch buffers + 2 x 65536 x 26 x 512 B all-to-all
    expected = 32_709_138 * 512 + 26 * 65536 * (3 * 512 + 8) + 2 * 65536 * 26 * 512
    assert plan.rank_bytes(0) == expected


def test_fl3_needs_two_gpus():
    with pytest.raises(UserError) as e:
        plan_tables(FL3, 128, 1, 80 * GiB, 65536)
    msg = str(e.value)
    total = sum(FL3) * 512 + len(FL3) * 65536 * (3 * 512 + 8)
    for number in (str(total), str(80 * GiB - 4 * GiB), "world size 1", "80,000,000 rows", "table_0"):
        assert number in msg, (number, msg)
    plan = plan_tables(FL3, 128, 2, 80 * GiB, 65536)
    check_valid(plan)
    assert not any(plan.is_row_wise(t) for t in range(len(FL3)))


def test_fl3_on_32gb_gpus_splits_the_largest_tables_by_rows():
    plan = plan_tables(FL3, 128, 8, 32 * GiB, 65536)
    check_valid(plan)
    # 80M and 60M rows (41, 30.7 GB) exceed a 28 GiB (30.1 GB) budget; 50M rows (25.6 GB) do not
    assert [plan.is_row_wise(t) for t in range(4)] == [True, True, False, False]
    assert not any(plan.is_row_wise(t) for t in range(8, len(FL3)))


def test_fl2_needs_several_gpus_and_row_wise_on_40gb():
    with pytest.raises(UserError, match="world size 2"):
        plan_tables(FL2, 128, 2, 80 * GiB, 65536)
    assert not any(plan_tables(FL2, 128, 4, 80 * GiB, 65536, optimizer="adagrad").is_row_wise(t) for t in range(len(FL2)))
    plan = plan_tables(FL2, 128, 8, 40 * GiB, 65536, optimizer="adagrad")
    check_valid(plan)
    # 100M, 90M and 80M rows (51, 46, 41 GB) exceed a 36 GiB (38.7 GB) budget; 60M (30.7 GB) does not
    assert [plan.is_row_wise(t) for t in range(4)] == [True, True, True, False]
    # row-wise Adagrad: one fp32 per row on top of 512 B of weights
    sgd = plan_tables(FL2, 128, 8, 40 * GiB, 65536)
    assert sum(map(plan.rank_bytes, range(8))) - sum(map(sgd.rank_bytes, range(8))) == 4 * sum(FL2)


def test_sharding_table_refuses_what_needs_rows():
    with pytest.raises(UserError, match="sharding=table but table table_0"):
        plan_tables(FL2, 128, 8, 40 * GiB, 65536, sharding="table")


def test_sharding_row_splits_every_table_over_all_ranks():
    plan = plan_tables([10, 7, 3], 4, 4, GiB, 8, reserve_bytes=0, sharding="row")
    check_valid(plan)
    assert [len(plan.table_shards(t)) for t in range(3)] == [4, 4, 3]  # never an empty shard
    assert [(s.row_start, s.row_end) for s in plan.table_shards(0)] == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert plan.rank_tables(3) in ([0, 1], [0, 1, 2])


def test_equal_tables_balance_perfectly():
    plan = plan_tables([1000] * 16, 16, 4, GiB, 64, reserve_bytes=0)
    assert [len(plan.rank_shards(r)) for r in range(4)] == [4, 4, 4, 4]
    assert plan.imbalance() == (1.0, 1.0)


def test_fl15_balance_on_four_ranks():
    plan = plan_tables(CRITEO_FL15_CARDINALITIES, 128, 4, 80 * GiB, 65536)
    ib, il = plan.imbalance()
    assert ib < 1.05 and il < 1.1, plan.describe()


def test_lookup_costs_spread_hot_tables():
    # four tiny but hot tables and four big cold ones on two ranks: each rank gets two hot ones
    plan = plan_tables([10] * 4 + [10_000] * 4, 8, 2, GiB, 16, reserve_bytes=0,
                       lookup_costs=[10.0] * 4 + [1.0] * 4)
    hot = [sum(1 for t in plan.rank_tables(r) if t < 4) for r in range(2)]
    assert hot == [2, 2], plan.describe()


def test_random_shapes_always_valid_or_user_error():
    rng = random.Random(0)
    for _ in range(200):
        sizes = [rng.choice([1, 3, 50, 1000, 200_000]) for _ in range(rng.randint(1, 12))]
        W = rng.randint(1, 6)
        try:
            plan = plan_tables(sizes, 8, W, rng.choice([2, 8, 64]) << 20, rng.choice([1, 7, 256]),
                               reserve_bytes=0, sharding=rng.choice(["auto", "table", "row"]),
                               optimizer=rng.choice(["sgd", "adagrad"]))
        except UserError as e:
            assert "do not fit" in str(e)
            continue
        check_valid(plan)


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match="optimizer must be one of"):
        plan_tables([10], 4, 1, GiB, 8, optimizer="adam")
    with pytest.raises(UserError, match="sharding must be one of"):
        plan_tables([10], 4, 1, GiB, 8, sharding="column")
    with pytest.raises(UserError, match="1 tables but 2 names"):
        plan_tables([10], 4, 1, GiB, 8, table_names=["a", "b"])
    with pytest.raises(UserError, match="leave no room"):
        plan_tables([10], 4, 1, GiB, 8)  # the default 4 GiB reserve exceeds 1 GiB


def test_json_round_trip_and_describe():
    plan = plan_tables(FL3, 128, 8, 32 * GiB, 65536, table_names=[f"cat_{i}.bin" for i in range(len(FL3))])
    back = Plan.from_json(json.dumps(json.loads(plan.to_json())))
    assert back == plan
    text = plan.describe()
    assert "rank 7:" in text and "cat_0.bin[" in text and "imbalance (max/mean)" in text
    assert "% of lookups" in text and "row-wise tables: cat_0.bin" in text


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dlrm", "plan", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_cli_fits_and_does_not_fit():
    ok = run_cli("--tables", "criteo-fl15", "--world-size", "1", "--device-memory", "80Gi", "--batch-size", "65536")
    assert ok.returncode == 0, ok.stderr
    assert "rank 0:" in ok.stdout and "row-wise tables: none" in ok.stdout
    bad = run_cli("--tables", "criteo-fl15", "--world-size", "2", "--device-memory", "8Gi", "--batch-size", "65536")
    assert bad.returncode == 2 and "do not fit" in bad.stderr and "world size 2" in bad.stderr


def test_cli_reads_a_feature_spec(tmp_path):
    from dlrm.data.spec import FeatureSpec

    FeatureSpec.default(tmp_path, [100, 20, 5], num_numerical=2).save()
    out = run_cli("--feature-spec", str(tmp_path / "feature_spec.yaml"), "--world-size", "2", "--device-memory",
                  "1Gi", "--reserve", "0", "--batch-size", "16", "--dim", "8", "--sharding", "row", "--json")
    assert out.returncode == 0, out.stderr
    plan = Plan.from_json(out.stdout)
    assert plan.table_names == ["cat_0.bin", "cat_1.bin", "cat_2.bin"] and plan.world_size == 2
    assert len(plan.shards) == 6


# -- DLRM-DCNv2 on multi-hot data ----------------------------------------------------------------


def test_multi_hot_shards_count_their_ids_and_sparse_gradients():
    """Per shard: pooled output + its gradient (2 x B x D x 4), then per id (B x h) its gradient row
    and int64 id, and for h > 1 the bag offsets (B x 8) and per-id weights (B x h x 4)."""
    B, D = 1000, 16
    one = plan_tables([100, 50], D, 1, GiB, B, reserve_bytes=0)
    multi = plan_tables([100, 50], D, 1, GiB, B, reserve_bytes=0, hotness=[1, 5])
    s1, s5 = multi.table_shards(0)[0], multi.table_shards(1)[0]
    assert s1.bytes == one.table_shards(0)[0].bytes == 100 * D * 4 + B * (3 * D * 4 + 8)
    assert s5.bytes == 50 * D * 4 + B * (2 * D * 4 + 5 * (D * 4 + 8)) + B * 8 + B * 5 * 4
    # the all-to-all carries pooled rows: the same buffers whatever the hotness
    assert multi.rank_fixed_bytes == one.rank_fixed_bytes
    assert multi.table_hotness == [1, 5] and one.table_hotness == []
    assert "multi-hot: 6 ids per row over 2 tables (hotness 1,5)" in multi.describe()
    again = Plan.from_json(multi.to_json())
    assert again.hotness(1) == 5 and again.table_shards(1)[0].bytes == s5.bytes


def test_mlperf_dcnv2_fits_8_h100s_and_counts_the_dense_arches():
    """MLPerf's DLRM-DCNv2: 26 tables capped at 40M rows (~204M rows, 104 GB fp32 + row-wise
    Adagrad), hotness 3..100, batch 65536 on 8 x 80 GB; the cross layers are counted on every rank."""
    from dlrm.config import ModelConfig
    from dlrm.dist.plan import dense_memory_bytes
    from dlrm.dist.plan import dense_parameter_count
    from dlrm.modules.tables import MLPERF_DCNV2_CARDINALITIES, MLPERF_HOTNESS

    cfg = ModelConfig(interaction="dcn", dcn_num_layers=3, dcn_low_rank_dim=512)
    params = dense_parameter_count(13, 26, cfg)
    cross = 3 * (2 * 3456 * 512 + 3456)
    assert params == cross + (13 * 512 + 512 + 512 * 256 + 256 + 256 * 128 + 128) + (
        3456 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 512 + 512 + 512 * 256 + 256 + 256 + 1)
    dense = dense_memory_bytes(params, "adagrad")
    plan = plan_tables(MLPERF_DCNV2_CARDINALITIES, 128, 8, 80 * GiB, 65536, optimizer="adagrad",
                       hotness=MLPERF_HOTNESS, dense_bytes=dense)
    check_valid(plan)
    assert plan.dense_bytes == dense == params * 16
    assert plan.rank_fixed_bytes == 2 * 8192 * 26 * 128 * 4 + dense
    assert "dense arches (replicated)" in plan.describe()
    with pytest.raises(UserError, match="replicated dense arches"):  # too little room is explained with it
        plan_tables(MLPERF_DCNV2_CARDINALITIES, 128, 1, 80 * GiB, 65536, optimizer="adagrad",
                    hotness=MLPERF_HOTNESS, dense_bytes=dense)
