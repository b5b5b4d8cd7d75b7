"""One-process pieces of dlrm.dist: runtime env checks, the sharded lookup, checkpoint pieces."""
import pytest
import torch

from dlrm.config import ModelConfig
from dlrm.data.reader import local_rows
from dlrm.dist.parallel import build_model, parallelize, plan_pieces
from dlrm.dist.plan import plan_tables
from dlrm.dist.runtime import Runtime, init_runtime
from dlrm.dist.sharded import ShardedEmbedding
from dlrm.errors import UserError
from dlrm.modules.model import DLRM

CFG = ModelConfig(embedding_dim=4, bottom_mlp=[8, 4], top_mlp=[8])


def test_single_process_without_world_size():
    rt = init_runtime("cpu", env={})
    assert (rt.rank, rt.world_size, rt.backend, rt.distributed) == (0, 1, None, False)


@pytest.mark.parametrize("env,message", [
    ({"WORLD_SIZE": "2"}, "RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT unset"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two': expected an integer"),
    ({"WORLD_SIZE": "2", "RANK": "5", "LOCAL_RANK": "0", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, "RANK=5 outside 0..1"),
])
def test_bad_torchrun_env_is_a_user_error(env, message):
    with pytest.raises(UserError, match=message):
        init_runtime("cpu", env=env)


def test_cuda_without_a_gpu_is_a_user_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(UserError, match="no CUDA device"):
        init_runtime("cuda", env={})


@pytest.mark.parametrize("sharding", ["table", "row"])
def test_one_rank_lookup_equals_the_whole_model(sharding):
    sizes = [7, 3, 11]
    torch.manual_seed(0)
    whole = DLRM(2, sizes, CFG, seed=5)
    plan = plan_tables(sizes, 4, 1, 1 << 30, 8, reserve_bytes=0, sharding=sharding)
    cats = torch.stack([torch.randint(0, n, (9,)) for n in sizes], 1)
    num = torch.rand(9, 2)
    expected = whole(num, cats)
    torch.manual_seed(0)
    sharded = parallelize(build_model(2, len(sizes), CFG), plan, Runtime(), seed=5)
    assert torch.equal(sharded(num, cats), expected)
    assert torch.equal(sharded.table_weight.data, whole.sparse_arch.embedding.weight.data)


def test_row_shards_answer_zeros_outside_their_rows():
    plan = plan_tables([10], 4, 2, 1 << 30, 8, reserve_bytes=0, sharding="row")
    full = torch.arange(40, dtype=torch.float32).view(10, 4)
    shard = ShardedEmbedding.from_full(plan, 1, full, [0])  # rows 5..9; lookup() needs no peers
    ids = torch.tensor([[0], [5], [9], [4]])
    out = shard.lookup(ids)
    assert torch.equal(out[:, 0], torch.stack([torch.zeros(4), full[5], full[9], torch.zeros(4)]))


def test_plan_pieces_index_each_ranks_fused_weight():
    plan = plan_tables([10, 4], 4, 2, 1 << 30, 8, reserve_bytes=0, sharding="row", table_names=["a", "b"])
    pieces = plan_pieces(plan)
    assert [(p.table, p.start, p.end, p.offset) for p in pieces[1]] == [("a", 5, 10, 0), ("b", 2, 4, 5)]


def test_slices_are_the_readers():
    assert [local_rows(101, r, 4) for r in range(4)] == [(0, 26), (26, 51), (51, 76), (76, 101)]


@pytest.mark.parametrize("sharding", ["table", "row"])
@pytest.mark.parametrize("padded", [False, True])
def test_one_rank_multi_hot_lookup_equals_the_whole_model(sharding, padded):
    """Multi-hot ids (and -1 padding) sum-pooled on the owning rank equal the whole model's pooling."""
    sizes, hot = [7, 3, 11], [3, 1, 4]
    torch.manual_seed(0)
    whole = DLRM(2, sizes, CFG, seed=5, hotness=hot, padded=padded)
    plan = plan_tables(sizes, 4, 1, 1 << 30, 8, reserve_bytes=0, sharding=sharding, hotness=hot)
    cats = torch.cat([torch.randint(0, n, (9, h)) for n, h in zip(sizes, hot)], 1)
    if padded:
        cats[::2, 1:3] = -1
        cats[:, 4] = -1  # a one-hot table with no id in any row pools to zeros
    pooled = whole.sparse_arch(cats)
    cols = torch.tensor([0, 3, 4])
    manual = torch.stack([sum(whole.sparse_arch.table(t)[i] if i >= 0 else torch.zeros(4)
                              for i in cats[b, cols[t]:cols[t] + hot[t]].tolist())
                          for b in range(9) for t in range(3)]).view(9, 3, 4)
    assert torch.allclose(pooled, manual, atol=1e-6)
    num = torch.rand(9, 2)
    expected = whole(num, cats)
    torch.manual_seed(0)
    sharded = parallelize(build_model(2, len(sizes), CFG, hotness=hot, padded=padded), plan, Runtime(), seed=5)
    assert torch.allclose(sharded(num, cats), expected, atol=1e-6)


def test_multi_hot_row_shards_pool_only_their_rows():
    plan = plan_tables([10], 4, 2, 1 << 30, 8, reserve_bytes=0, sharding="row", hotness=[3])
    full = torch.arange(40, dtype=torch.float32).view(10, 4)
    shard = ShardedEmbedding.from_full(plan, 1, full, [0])  # rows 5..9
    out = shard.lookup(torch.tensor([[0, 5, 9], [1, 2, 3]]))
    assert torch.equal(out[:, 0], torch.stack([full[5] + full[9], torch.zeros(4)]))
