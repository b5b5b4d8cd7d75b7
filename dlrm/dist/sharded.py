"""The sharded sparse arch: this rank's tables (or row shards) looked up for the GLOBAL batch,
then one all-to-all so every rank ends with ITS slice of the batch for ALL tables.

Shapes: B global batch, B_q rank q's slice (dlrm.data.reader.local_rows: the first B % W ranks
get one row more), S_r the shards rank r holds, H_r their ids per row (the sum of their tables'
hotness; H_r = S_r for one-hot data), F tables, D dim.

    categorical [B, H_r] --lookup (+ sum pooling)--> [B, S_r, D] --all_to_all--> from each r: [B_q, S_r, D]
        --cat--> [B_q, sum_r S_r, D] --sum shards per table--> sparse [B_q, F, D]

Multi-hot tables are pooled on the rank that owns them, before the exchange: only pooled rows
cross the network, so the all-to-all moves the same bytes whatever the hotness.

A row shard answers zeros for ids outside its rows, so summing a table's shards gives exactly
the one nonzero lookup (x + 0 == x in floating point): the reduce-scatter of row-wise sharding
rides on the same all-to-all. Backward sends gradients the reverse way (AllToAll below), and
each shard's sparse gradient stays on its rank: no embedding gradient is ever all-reduced.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from dlrm.data.reader import local_rows
from dlrm.dist.plan import Plan
from dlrm.dist.runtime import collective
from dlrm.modules.model import init_table_rows, pooled_lookup


class AllToAll(torch.autograd.Function):
    """all_to_all_single with split sizes on a flat tensor; backward is the same exchange reversed."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, send: list[int], recv: list[int], group) -> torch.Tensor:
        ctx.send, ctx.recv, ctx.group = send, recv, group
        out = x.new_empty(sum(recv))
        with collective("all_to_all (embedding lookup)"):
            dist.all_to_all_single(out, x.contiguous(), output_split_sizes=recv, input_split_sizes=send, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out = grad.new_empty(sum(ctx.send))
        with collective("all_to_all (embedding gradients)"):
            dist.all_to_all_single(out, grad.contiguous(), output_split_sizes=ctx.send, input_split_sizes=ctx.recv,
                                   group=ctx.group)
        return out, None, None, None


class ShardedEmbedding(nn.Module):
    """Rank `rank`'s shards of `plan` in one fused weight [R, D], rows in `plan.rank_shards(rank)` order.

    forward(categorical [B, H_r] ids, each of `self.tables`' hotness columns side by side)
    -> sparse [B_local, F, D]. `padded`: ids may be -1 (no id), pooled as nothing.
    """

    def __init__(self, plan: Plan, rank: int, weight: torch.Tensor, group=None, padded: bool = False):
        super().__init__()
        self.plan, self.rank, self.group = plan, rank, group
        self.world_size = plan.world_size
        self.dim = plan.dim
        self.num_tables = plan.num_tables
        shards = plan.rank_shards(rank)
        self.tables = [s.table for s in shards]  # the categorical columns this rank reads, in order
        rows = [s.rows for s in shards]
        if weight.shape != (sum(rows), plan.dim):
            raise ValueError(f"rank {rank} weight is {tuple(weight.shape)}, plan says {(sum(rows), plan.dim)}")
        self.weight = nn.Parameter(weight)
        offsets = torch.tensor([0] + rows, dtype=torch.int64).cumsum(0)[:-1]
        self.register_buffer("offsets", offsets, persistent=False)
        self.register_buffer("row_start", torch.tensor([s.row_start for s in shards], dtype=torch.int64), persistent=False)
        self.register_buffer("rows", torch.tensor(rows, dtype=torch.int64), persistent=False)
        # only row shards need masking: a whole table's ids are all in range
        self.masked = any(plan.is_row_wise(t) for t in self.tables)
        self.hotness = [plan.hotness(t) for t in self.tables]
        self.padded = padded
        self.pooled = padded or any(h > 1 for h in self.hotness)
        if self.pooled:  # per id column: its shard's first row, row count and offset in the fused weight
            col = torch.tensor([k for k, h in enumerate(self.hotness) for _ in range(h)], dtype=torch.int64)
            self.register_buffer("col_row_start", self.row_start[col].clone(), persistent=False)
            self.register_buffer("col_rows", self.rows[col].clone(), persistent=False)
            self.register_buffer("col_offsets", self.offsets[col].clone(), persistent=False)
            starts = torch.tensor([0] + self.hotness, dtype=torch.int64).cumsum(0)[:-1]
            self.register_buffer("bag_starts", starts, persistent=False)
        self.shards_per_rank = [len(plan.rank_shards(r)) for r in range(self.world_size)]
        order = [s.table for r in range(self.world_size) for s in plan.rank_shards(r)]  # received shards' tables
        self.register_buffer("received_tables", torch.tensor(order, dtype=torch.int64), persistent=False)
        # one shard per table: reassembly is a permutation, no sum needed
        self.permutation = len(order) == self.num_tables
        if self.permutation:
            inverse = sorted(range(len(order)), key=lambda k: order[k])
            self.register_buffer("inverse", torch.tensor(inverse, dtype=torch.int64), persistent=False)
            self.identity = inverse == list(range(len(order)))  # one rank holding every table whole

    @classmethod
    def from_seed(cls, plan: Plan, rank: int, seed: int, device=None, dtype=torch.float32, group=None,
                  padded: bool = False):
        """Initialise only this rank's rows, bit-identical to the unsharded model's (dlrm.modules.model)."""
        parts = [init_table_rows(seed, s.table, plan.table_sizes[s.table], s.row_start, s.row_end, plan.dim, dtype)
                 for s in plan.rank_shards(rank)]
        weight = torch.cat(parts) if parts else torch.empty(0, plan.dim, dtype=dtype)
        return cls(plan, rank, weight.to(device), group, padded)

    @classmethod
    def from_full(cls, plan: Plan, rank: int, full: torch.Tensor, table_offsets: list[int], group=None,
                  padded: bool = False):
        """Cut this rank's rows out of a whole fused weight (the unsharded model's)."""
        parts = [full[table_offsets[s.table] + s.row_start : table_offsets[s.table] + s.row_end]
                 for s in plan.rank_shards(rank)]
        weight = torch.cat(parts).detach().clone() if parts else full.new_empty(0, plan.dim)
        return cls(plan, rank, weight, group, padded)

    def lookup(self, categorical: torch.Tensor) -> torch.Tensor:
        """categorical [B, H_r] -> [B, S_r, D]: this rank's shards for the whole batch, pooled."""
        ids = categorical.to(torch.int64)
        if self.pooled:
            if not (self.masked or self.padded):
                return pooled_lookup(ids + self.col_offsets, self.weight, self.bag_starts)
            local = ids - self.col_row_start
            inside = (local >= 0) & (local < self.col_rows)  # padding (-1) is outside every shard
            # outside ids look up the shard's first row with weight 0: nothing pooled, a zero gradient
            return pooled_lookup(torch.where(inside, local, 0) + self.col_offsets, self.weight, self.bag_starts,
                                 inside.to(self.weight.dtype))
        if self.masked:
            local = ids - self.row_start
            inside = (local >= 0) & (local < self.rows)
            # out-of-range ids look up the shard's first row and are zeroed: their gradient is 0 too
            out = nn.functional.embedding(torch.where(inside, local, 0) + self.offsets, self.weight, sparse=True)
            return out * inside.unsqueeze(-1).to(out.dtype)
        return nn.functional.embedding(ids + self.offsets, self.weight, sparse=True)

    def forward(self, categorical: torch.Tensor) -> torch.Tensor:
        B = categorical.shape[0]
        if categorical.shape[1] != sum(self.hotness):
            raise ValueError(f"rank {self.rank} reads {sum(self.hotness)} categorical columns (tables {self.tables}, "
                             f"hotness {self.hotness}), got {categorical.shape[1]}")
        local = self.lookup(categorical)  # [B, S_r, D]
        if self.world_size > 1:
            W, D, S = self.world_size, self.dim, len(self.tables)
            slices = [local_rows(B, q, W) for q in range(W)]
            b_me = slices[self.rank][1] - slices[self.rank][0]
            # [B, S_r, D] row-major is already the rank-ordered concatenation of the slices
            send = [(hi - lo) * S * D for lo, hi in slices]
            recv = [b_me * s * D for s in self.shards_per_rank]
            flat = AllToAll.apply(local.reshape(-1), send, recv, self.group)
            parts = flat.split(recv)
            local = torch.cat([p.view(b_me, s, D) for p, s in zip(parts, self.shards_per_rank)], dim=1)
        if self.permutation:
            return local if self.identity else local.index_select(1, self.inverse)
        out = local.new_zeros(local.shape[0], self.num_tables, self.dim)
        return out.index_add(1, self.received_tables, local)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, tables={self.tables}, rows={tuple(self.weight.shape)}"
