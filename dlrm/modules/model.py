"""DLRM: dense arch (bottom MLP), sparse arch (embedding tables), interaction arch, over arch (top MLP).

Shapes: B batch, N numerical features, F categorical features (one table each), D embedding dim,
H = sum of the features' hotness (ids per row; H = F for one-hot data).

    numerical [B, N] --DenseArch--> dense [B, D] ------------------+
    categorical [B, H] --SparseArch--> sparse [B, F, D] --Interaction--> [B, I] --OverArch--> logits [B]

Multi-hot features are sum-pooled: a feature's embedding is the sum of its ids' rows (padding
ids, -1, add nothing).

Interactions: `dot` (DLRM v1, NVIDIA's), `cat`, and `dcn` (DLRM-DCNv2, the MLPerf Training
recommendation benchmark: low-rank cross layers over the concatenated dense and sparse vectors).

The model knows nothing of distribution: `dlrm.dist.parallelize` swaps the sparse arch's lookup
for a sharded one and wraps the MLPs in DDP from outside, calling `DLRM.predict(dense, sparse)`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from dlrm.config import ModelConfig

INIT_CHUNK_ROWS = 1 << 16


def init_table_rows(seed: int, table: int, num_rows: int, row_start: int, row_end: int, dim: int,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows [row_start, row_end) of table `table`'s initial weights, uniform(+-1/sqrt(num_rows)).

    Rows are generated in fixed chunks, each from its own seeded generator, so any row range of a
    table comes out bit-identical whether a rank holds the whole table or a row-wise shard of it.
    """
    bound = 1.0 / math.sqrt(num_rows)
    out = torch.empty(row_end - row_start, dim, dtype=torch.float32)
    gen = torch.Generator()
    first, last = row_start // INIT_CHUNK_ROWS, (max(row_end, row_start + 1) - 1) // INIT_CHUNK_ROWS
    for c in range(first, last + 1):
        lo, hi = c * INIT_CHUNK_ROWS, min((c + 1) * INIT_CHUNK_ROWS, num_rows)
        gen.manual_seed((seed * 1_000_003 + table * 65_537 + c) % (2**63))
        chunk = torch.empty(hi - lo, dim).uniform_(-bound, bound, generator=gen)
        a, b = max(lo, row_start), min(hi, row_end)
        if a < b:
            out[a - row_start : b - row_start] = chunk[a - lo : b - lo]
    return out.to(dtype)


def pooled_lookup(ids: torch.Tensor, weight: torch.Tensor, bag_starts: torch.Tensor,
                  per_id_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Sum-pooled multi-hot lookup: ids [B, H] (rows of the fused `weight` [R, D]), bags of
    consecutive columns starting at `bag_starts` [S] -> [B, S, D].

    One embedding_bag call for every bag of the batch: no [B, H, D] is ever materialised, and the
    sparse gradient holds one row per id. `per_id_weights` [B, H] (0 or 1) drops ids: padding, or
    ids outside a row shard. Shapes only, no data-dependent branches (torch.export takes it).
    """
    B, H = ids.shape
    offsets = (torch.arange(B, device=ids.device, dtype=torch.int64) * H).unsqueeze(1) + bag_starts  # [B, S]
    out = nn.functional.embedding_bag(ids.reshape(-1), weight, offsets.reshape(-1), mode="sum", sparse=True,
                                      per_sample_weights=None if per_id_weights is None else per_id_weights.reshape(-1))
    return out.view(B, bag_starts.shape[0], weight.shape[1])


def mlp(sizes: list[int], final_relu: bool = True) -> nn.Sequential:
    """Linear layers with ReLU between them; NVIDIA's init (normal, Glorot-like std)."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(fan_in, fan_out)
        nn.init.normal_(lin.weight, 0.0, math.sqrt(2.0 / (fan_in + fan_out)))
        nn.init.normal_(lin.bias, 0.0, math.sqrt(1.0 / fan_out))
        layers.append(lin)
        if final_relu or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DenseArch(nn.Module):
    """Bottom MLP: numerical [B, N] -> dense [B, D]."""

    def __init__(self, num_numerical: int, sizes: list[int]):
        super().__init__()
        self.mlp = mlp([num_numerical] + list(sizes))

    def forward(self, numerical: torch.Tensor) -> torch.Tensor:
        return self.mlp(numerical)


class SparseArch(nn.Module):
    """All F tables in one fused [sum(rows), D] weight, looked up with per-table row offsets.

    One gather and one sparse update per step instead of F of each: the fused layout NVIDIA's
    and TorchRec's kernels use. `categorical [B, H]` (each table's `hotness` ids side by side)
    -> `sparse [B, F, D]`, multi-hot features sum-pooled; `padded` tables may hold -1 (no id).
    """

    def __init__(self, table_sizes: list[int], dim: int, seed: int = 0, hotness: list[int] | None = None,
                 padded: bool = False, weight: torch.Tensor | None = None):
        """weight: the fused tables [sum(rows), D] to use (a gathered checkpoint) instead of seeded init."""
        super().__init__()
        self.table_sizes = list(table_sizes)
        self.dim = dim
        self.hotness = list(hotness) if hotness is not None else [1] * len(self.table_sizes)
        self.padded = padded
        self.pooled = padded or any(h > 1 for h in self.hotness)
        offsets = torch.tensor([0] + self.table_sizes, dtype=torch.int64).cumsum(0)
        self.register_buffer("offsets", offsets[:-1].clone(), persistent=False)
        columns = [t for t, h in enumerate(self.hotness) for _ in range(h)]  # the table of each id column
        self.register_buffer("column_offsets", offsets[columns].clone(), persistent=False)
        bag_starts = torch.tensor([0] + self.hotness, dtype=torch.int64).cumsum(0)[:-1]
        self.register_buffer("bag_starts", bag_starts, persistent=False)
        if weight is None:
            weight = torch.cat([init_table_rows(seed, t, n, 0, n, dim) for t, n in enumerate(self.table_sizes)])
        elif tuple(weight.shape) != (int(offsets[-1]), dim):
            raise ValueError(f"weight {tuple(weight.shape)} != tables ({int(offsets[-1])}, {dim})")
        self.embedding = nn.Embedding(int(offsets[-1]), dim, sparse=True, _weight=weight)

    def forward(self, categorical: torch.Tensor) -> torch.Tensor:
        if not self.pooled:
            return self.embedding(categorical.long() + self.offsets)
        ids = categorical.long()
        if not self.padded:
            return pooled_lookup(ids + self.column_offsets, self.embedding.weight, self.bag_starts)
        keep = ids >= 0
        rows = torch.where(keep, ids, 0) + self.column_offsets
        return pooled_lookup(rows, self.embedding.weight, self.bag_starts, keep.to(self.embedding.weight.dtype))

    def table(self, t: int) -> torch.Tensor:
        """Table t's weights, a view into the fused weight: [rows_t, D]."""
        start = int(self.offsets[t])
        return self.embedding.weight.data[start : start + self.table_sizes[t]]


class LowRankCrossNet(nn.Module):
    """DCNv2's low-rank cross layers, x_{l+1} = x_0 * (U_l (V_l x_l) + b_l) + x_l: [B, N] -> [B, N].

    U_l [N, r] and V_l [r, N] are Xavier-normal, b_l zero, drawn in TorchRec's order (every U,
    then every V, then the biases) so a seed gives the reference's initial crosses. A fixed
    number of layers, no data-dependent control flow: torch.compile and torch.export take it whole.
    """

    def __init__(self, in_features: int, num_layers: int, low_rank: int):
        super().__init__()
        self.in_features, self.num_layers, self.low_rank = in_features, num_layers, low_rank
        self.U = nn.ParameterList(nn.Parameter(nn.init.xavier_normal_(torch.empty(in_features, low_rank)))
                                  for _ in range(num_layers))
        self.V = nn.ParameterList(nn.Parameter(nn.init.xavier_normal_(torch.empty(low_rank, in_features)))
                                  for _ in range(num_layers))
        self.bias = nn.ParameterList(nn.Parameter(torch.zeros(in_features)) for _ in range(num_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for U, V, b in zip(self.U, self.V, self.bias):
            x = x0 * nn.functional.linear(nn.functional.linear(x, V), U, b) + x
        return x

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_layers={self.num_layers}, low_rank={self.low_rank}"


class InteractionArch(nn.Module):
    """dot: pairwise dot products of the F + 1 vectors (strictly lower triangle), concatenated with
    dense and zero-padded to a multiple of 8 (479 -> 480 for F = 26, D = 128); cat: concatenation;
    dcn: the concatenation [B, D_dense + F x D] through LowRankCrossNet (3456 wide for MLPerf's 26 x 128)."""

    def __init__(self, num_features: int, dim: int, kind: str = "dot", dense_dim: int | None = None,
                 dcn_num_layers: int = 3, dcn_low_rank_dim: int = 512):
        super().__init__()
        dense_dim = dim if dense_dim is None else dense_dim
        self.kind = kind
        self.pad_vectors_to, self.pad_devices = 32, ("cuda",)  # see forward
        n = num_features + 1
        if kind == "dot":
            rows, cols = torch.tril_indices(n, n, offset=-1)
            self.register_buffer("rows", rows, persistent=False)
            self.register_buffer("cols", cols, persistent=False)
            raw = dim + n * (n - 1) // 2
            self.out_features = (raw + 7) // 8 * 8
            self.padding = self.out_features - raw
        else:
            self.out_features = dense_dim + dim * num_features
            self.padding = 0
        if kind == "dcn":
            self.crossnet = LowRankCrossNet(self.out_features, dcn_num_layers, dcn_low_rank_dim)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        B = dense.shape[0]
        if self.kind == "cat":
            return torch.cat([dense, sparse.flatten(1)], dim=1)  # flatten: a rank's slice may hold 0 rows
        if self.kind == "dcn":
            return self.crossnet(torch.cat([dense, sparse.flatten(1)], dim=1))
        parts = [dense.unsqueeze(1), sparse]
        pad = (-(sparse.shape[1] + 1)) % self.pad_vectors_to if dense.device.type in self.pad_devices else 0
        if pad:  # zero vectors change no pair read out, but cuBLAS has a 3x faster bmm for 32 than for 27
            parts.append(dense.new_zeros(B, pad, dense.shape[1]))
        vectors = torch.cat(parts, dim=1)  # [B, F+1 (+pad), D]
        gram = torch.bmm(vectors, vectors.transpose(1, 2))  # [B, F+1, F+1] (+pad)
        pairs = gram[:, self.rows, self.cols]  # [B, (F+1)F/2]
        parts = [dense, pairs]
        if self.padding:
            parts.append(dense.new_zeros(B, self.padding))
        return torch.cat(parts, dim=1)


class OverArch(nn.Module):
    """Top MLP: interaction [B, I] -> logits [B]."""

    def __init__(self, in_features: int, sizes: list[int], padding: int = 0):
        super().__init__()
        self.mlp = mlp([in_features] + list(sizes) + [1], final_relu=False)
        if padding:  # the padded inputs are always zero; keep their weights zero too
            with torch.no_grad():
                self.mlp[0].weight[:, in_features - padding :] = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x).squeeze(-1)


class DLRM(nn.Module):
    def __init__(self, num_numerical: int, table_sizes: list[int], cfg: ModelConfig, seed: int = 0,
                 hotness: list[int] | None = None, padded: bool = False, table_weight: torch.Tensor | None = None):
        super().__init__()
        D = cfg.embedding_dim
        self.dense_arch = DenseArch(num_numerical, cfg.bottom_mlp)
        self.sparse_arch = SparseArch(table_sizes, D, seed=seed, hotness=hotness, padded=padded, weight=table_weight)
        self.interaction_arch = InteractionArch(len(table_sizes), D, cfg.interaction, dense_dim=cfg.bottom_mlp[-1],
                                                dcn_num_layers=cfg.dcn_num_layers, dcn_low_rank_dim=cfg.dcn_low_rank_dim)
        self.over_arch = OverArch(self.interaction_arch.out_features, cfg.top_mlp, self.interaction_arch.padding)

    def forward(self, numerical: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """numerical [B, N] float, categorical [B, H] ids -> logits [B]."""
        return self.predict(self.dense_arch(numerical), self.sparse_arch(categorical))

    def predict(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """dense [B, D], sparse [B, F, D] -> logits [B]: the part after the embedding lookup."""
        return self.over_arch(self.interaction_arch(dense, sparse.to(dense.dtype)))

    def dense_parameters(self):
        """Everything but the embeddings: what data parallelism replicates."""
        return [p for n, p in self.named_parameters() if not n.startswith("sparse_arch.")]
