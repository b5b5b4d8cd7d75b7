import torch

from dlrm.config import ModelConfig
from dlrm.modules.model import DLRM, INIT_CHUNK_ROWS, init_table_rows

SIZES = [5, 3, 100, 7] * 6 + [11, 2]  # 26 tables


def test_nvidia_shapes():
    m = DLRM(13, SIZES, ModelConfig(), seed=0)
    assert m.interaction_arch.out_features == 480 and m.interaction_arch.padding == 1  # 128 + 351 = 479 -> 480
    first_top = m.over_arch.mlp[0]
    assert first_top.in_features == 480 and torch.all(first_top.weight[:, 479] == 0)
    assert [layer.out_features for layer in m.dense_arch.mlp if isinstance(layer, torch.nn.Linear)] == [512, 256, 128]
    assert [layer.out_features for layer in m.over_arch.mlp if isinstance(layer, torch.nn.Linear)] == [1024, 1024, 512, 256, 1]
    B = 4
    logits = m(torch.randn(B, 13), torch.stack([torch.randint(0, n, (B,)) for n in SIZES], 1))
    assert logits.shape == (B,)


def test_padding_weights_stay_zero_after_training():
    torch.manual_seed(0)
    m = DLRM(13, SIZES, ModelConfig(embedding_dim=8, bottom_mlp=[8], top_mlp=[16]), seed=0)
    opt = torch.optim.SGD([p for p in m.dense_parameters()], lr=0.1)
    pad = m.interaction_arch.padding
    assert pad > 0
    for _ in range(3):
        x, c = torch.randn(16, 13), torch.stack([torch.randint(0, n, (16,)) for n in SIZES], 1)
        m(x, c).sum().backward()
        opt.step()
        opt.zero_grad()
    assert torch.all(m.over_arch.mlp[0].weight[:, -pad:] == 0)


def test_dot_interaction_is_strict_lower_triangle():
    m = DLRM(2, [3, 3], ModelConfig(embedding_dim=2, bottom_mlp=[2], top_mlp=[4]), seed=0)
    dense = torch.tensor([[1.0, 2.0]])
    sparse = torch.tensor([[[3.0, 4.0], [5.0, 6.0]]])
    out = m.interaction_arch(dense, sparse)
    # vectors d, e0, e1: pairs (e0.d, e1.d, e1.e0) = (11, 17, 39), no self terms; 2 + 3 = 5 -> pad to 8
    assert out.tolist() == [[1.0, 2.0, 11.0, 17.0, 39.0, 0.0, 0.0, 0.0]]


def test_cat_interaction():
    cfg = ModelConfig(embedding_dim=4, bottom_mlp=[6], top_mlp=[8], interaction="cat")
    m = DLRM(3, [5, 6], cfg, seed=0)
    assert m.interaction_arch.out_features == 6 + 2 * 4
    assert m(torch.randn(2, 3), torch.tensor([[1, 2], [4, 5]])).shape == (2,)


def test_fused_table_lookup_matches_per_table():
    m = DLRM(13, SIZES, ModelConfig(embedding_dim=4, bottom_mlp=[4], top_mlp=[4]), seed=3)
    ids = torch.stack([torch.randint(0, n, (5,)) for n in SIZES], 1)
    out = m.sparse_arch(ids)
    for t in range(len(SIZES)):
        assert torch.equal(out[:, t], m.sparse_arch.table(t)[ids[:, t]])


def test_row_shards_init_identically():
    n = INIT_CHUNK_ROWS * 2 + 17
    full = init_table_rows(5, 2, n, 0, n, 3)
    for a, b in [(0, 10), (INIT_CHUNK_ROWS - 3, INIT_CHUNK_ROWS + 9), (n - 5, n)]:
        assert torch.equal(init_table_rows(5, 2, n, a, b, 3), full[a:b])
    assert full.abs().max() <= 1 / n**0.5
    assert not torch.equal(init_table_rows(5, 3, n, 0, 10, 3), full[:10])  # tables differ


def test_seeded_model_is_reproducible():
    a = DLRM(13, SIZES, ModelConfig(embedding_dim=4, bottom_mlp=[4], top_mlp=[4]), seed=1)
    torch.manual_seed(0)
    b = DLRM(13, SIZES, ModelConfig(embedding_dim=4, bottom_mlp=[4], top_mlp=[4]), seed=1)
    assert torch.equal(a.sparse_arch.embedding.weight, b.sparse_arch.embedding.weight)


def test_dcn_mlperf_shapes():
    """MLPerf's DLRM-DCNv2: 3 cross layers of rank 512 over [dense, 26 x 128] = 3456, top 1024-1024-512-256-1."""
    cfg = ModelConfig(interaction="dcn", dcn_num_layers=3, dcn_low_rank_dim=512)
    m = DLRM(13, SIZES, cfg, seed=0)
    cross = m.interaction_arch.crossnet
    assert m.interaction_arch.out_features == 3456 and m.interaction_arch.padding == 0
    assert [tuple(u.shape) for u in cross.U] == [(3456, 512)] * 3
    assert [tuple(v.shape) for v in cross.V] == [(512, 3456)] * 3
    assert all(torch.equal(b, torch.zeros(3456)) for b in cross.bias)
    # Xavier normal: std sqrt(2 / (fan_in + fan_out))
    assert abs(cross.U[0].std().item() - (2 / (3456 + 512)) ** 0.5) < 2e-3
    assert m.over_arch.mlp[0].in_features == 3456
    assert [layer.out_features for layer in m.over_arch.mlp if isinstance(layer, torch.nn.Linear)] == [1024, 1024, 512, 256, 1]
    logits = m(torch.randn(4, 13), torch.stack([torch.randint(0, n, (4,)) for n in SIZES], 1))
    assert logits.shape == (4,)


def test_dcn_cross_layers_compute_the_formula():
    """x_{l+1} = x_0 * (U (V x_l) + b) + x_l, layer by layer, over [dense, flattened sparse]."""
    cfg = ModelConfig(embedding_dim=3, bottom_mlp=[5], top_mlp=[4], interaction="dcn", dcn_num_layers=2,
                      dcn_low_rank_dim=2)
    m = DLRM(2, [4, 6], cfg, seed=0)
    cross = m.interaction_arch.crossnet
    with torch.no_grad():
        for b in cross.bias:
            b.normal_()
    dense, sparse = torch.randn(7, 5), torch.randn(7, 2, 3)
    x0 = torch.cat([dense, sparse.reshape(7, 6)], 1)
    x = x0
    for layer in range(2):
        x = x0 * (x @ cross.V[layer].T @ cross.U[layer].T + cross.bias[layer]) + x
    assert m.interaction_arch.out_features == 11
    assert torch.allclose(m.interaction_arch(dense, sparse), x, atol=1e-6)


def test_dcn_exports_with_a_dynamic_batch():
    """No data-dependent control flow: torch.export takes the interaction and over arches whole."""
    cfg = ModelConfig(embedding_dim=4, bottom_mlp=[4], top_mlp=[8], interaction="dcn", dcn_num_layers=2,
                      dcn_low_rank_dim=3)
    m = DLRM(2, [5, 6, 7], cfg, seed=0)
    batch = torch.export.Dim("batch", min=2)
    dense, sparse = torch.randn(5, 4), torch.randn(5, 3, 4)
    prog = torch.export.export(m.interaction_arch, (dense, sparse), dynamic_shapes=({0: batch}, {0: batch}))
    assert torch.allclose(prog.module()(dense[:3], sparse[:3]), m.interaction_arch(dense[:3], sparse[:3]))


def test_dcn_model_is_reproducible_from_the_seed():
    cfg = ModelConfig(embedding_dim=4, bottom_mlp=[4], top_mlp=[4], interaction="dcn", dcn_low_rank_dim=2)
    torch.manual_seed(3)
    a = DLRM(2, SIZES, cfg, seed=1)
    torch.manual_seed(3)
    b = DLRM(2, SIZES, cfg, seed=1)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


def test_dense_parameter_count_matches_the_model():
    from dlrm.dist.plan import dense_parameter_count

    for kind, extra in [("dot", {}), ("cat", {"bottom_mlp": [6, 5]}), ("dcn", {"bottom_mlp": [6, 5], "dcn_low_rank_dim": 3})]:
        cfg = ModelConfig(**{"embedding_dim": 4, "bottom_mlp": [6, 4], "top_mlp": [8, 3], "interaction": kind, **extra})
        m = DLRM(3, [5, 6, 7], cfg, seed=0)
        assert dense_parameter_count(3, 3, cfg) == sum(p.numel() for p in m.dense_parameters()), kind


def test_multi_hot_sparse_arch_sum_pools():
    m = DLRM(2, [4, 6], ModelConfig(embedding_dim=3, bottom_mlp=[3], top_mlp=[4]), seed=0, hotness=[2, 3])
    ids = torch.tensor([[1, 3, 0, 5, 5]])
    out = m.sparse_arch(ids)
    t0, t1 = m.sparse_arch.table(0), m.sparse_arch.table(1)
    assert torch.allclose(out[0], torch.stack([t0[1] + t0[3], t1[0] + 2 * t1[5]]))
    m(torch.randn(1, 2), ids).sum().backward()  # one sparse gradient row per id
    grad = m.sparse_arch.embedding.weight.grad
    assert grad.is_sparse and grad._indices().shape[1] == 5
