"""Hybrid parallelism applied from outside the model (torchtitan style): `parallelize(model, plan, runtime)`.

- the sparse arch is swapped for this rank's shards (dlrm.dist.sharded), built from the seed or
  cut from the full model's weight; its sparse gradients stay local, never all-reduced;
- the rest (bottom MLP, interaction, top MLP) is data parallel: DDP over the local batch slice,
  all-reducing with a SUM hook (not DDP's mean), see `local_loss`.

Exactness: single-process training minimises mean_i l_i over the global batch of B samples. Rank r
holds B_r of them (uneven when W does not divide B). With loss_r = sum_{i in r} l_i / B:
  embeddings: the all-to-all backward delivers every rank's d loss_r / d e to the owner, so the
              owner's gradient is sum_r d loss_r = d (mean_i l_i): exact, any B_r;
  dense:      DDP would average (1/W sum_r), the SUM hook makes it sum_r: exact as well.
So every parameter sees the single-process gradient, up to float summation order.
"""
from __future__ import annotations

import datetime
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from dlrm.io.checkpoint import Piece
from dlrm.config import ModelConfig
from dlrm.data.reader import local_rows
from dlrm.dist.plan import Plan, plan_for_config  # noqa: F401 (the trainer's plan, from here as before)
from dlrm.dist.runtime import Runtime
from dlrm.dist.sharded import ShardedEmbedding
from dlrm.modules.model import DLRM, SparseArch


def build_model(num_numerical: int, num_tables: int, cfg: ModelConfig, hotness: list[int] | None = None,
                padded: bool = False) -> DLRM:
    """A DLRM whose tables are one-row placeholders, for `parallelize(..., seed=)` to replace.

    Its dense arches are exactly those of DLRM(num_numerical, table_sizes, cfg) after the same
    torch.manual_seed: they depend on the number of tables, not their sizes, and the tables draw
    from their own generators (dlrm.modules.model.init_table_rows), never from torch's. So no rank ever
    holds (or spends time initialising) a table it does not own.
    """
    return DLRM(num_numerical, [1] * num_tables, cfg, hotness=hotness, padded=padded)


def _allreduce_sum_hook(group, bucket):
    fut = dist.all_reduce(bucket.buffer(), group=group, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


class ShardedDLRM(nn.Module):
    """model(numerical [B_local, N], categorical [B, S_r]) -> logits [B_local]; see the module docstring."""

    def __init__(self, model: DLRM, plan: Plan, runtime: Runtime, ddp: DDP | None):
        super().__init__()
        self.model, self.plan, self.runtime = model, plan, runtime
        object.__setattr__(self, "_ddp", ddp)  # not a submodule: state_dict keys stay the model's

    @property
    def sparse(self) -> ShardedEmbedding:
        return self.model.sparse_arch

    @property
    def table_weight(self) -> nn.Parameter:
        """This rank's fused embedding weight [R, D] (the sparse optimizer's and checkpoint's)."""
        return self.sparse.weight

    @property
    def feature_names(self) -> list[str]:
        """Categorical features this rank reads, in column order: the reader's `categorical=`."""
        return [self.plan.table_names[t] for t in self.sparse.tables]

    def local_rows(self, batch_size: int) -> tuple[int, int]:
        """[start, end) of this rank's slice of a global batch (the reader's local_slice)."""
        return local_rows(batch_size, self.runtime.rank, self.runtime.world_size)

    def dense_parameters(self) -> list[nn.Parameter]:
        return self.model.dense_parameters()

    def dense_state_dict(self) -> dict:
        return {k: v for k, v in self.model.state_dict().items() if not k.startswith("sparse_arch.")}

    def forward(self, numerical: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        return (self._ddp or self.model)(numerical, categorical)

    def pieces_by_rank(self) -> dict[int, list[Piece]]:
        return plan_pieces(self.plan)


def plan_pieces(plan: Plan) -> dict[int, list[Piece]]:
    """Every rank's (table name, rows, offset in its fused weight): the checkpoint's index."""
    out = {}
    for r in range(plan.world_size):
        offset, pieces = 0, []
        for s in plan.rank_shards(r):
            pieces.append(Piece(plan.table_names[s.table], s.row_start, s.row_end, offset))
            offset += s.rows
        out[r] = pieces
    return out


def local_loss(logits: torch.Tensor, label: torch.Tensor, global_batch: int) -> torch.Tensor:
    """This rank's share of the global mean BCE: sum over the local slice / B (see module docstring).

    Summed over ranks it is the global batch's mean loss; backward on it gives exact gradients.
    """
    return F.binary_cross_entropy_with_logits(logits.float(), label.float(), reduction="sum") / global_batch


def parallelize(model: DLRM, plan: Plan, runtime: Runtime, seed: int | None = None) -> ShardedDLRM:
    """Shard `model`'s tables by `plan` and make its MLPs data parallel; returns the wrapper.

    seed: initialise this rank's rows from it (a `build_model` placeholder model); None: cut them
    from `model`'s full tables (which must match the plan's table sizes).
    """
    if plan.world_size != runtime.world_size:
        raise ValueError(f"plan is for {plan.world_size} ranks, runtime has {runtime.world_size}")
    old = model.sparse_arch
    if plan.dim != old.dim:
        raise ValueError(f"plan dim {plan.dim} != model embedding dim {old.dim}")
    plan_hotness = [plan.hotness(t) for t in range(plan.num_tables)]
    if plan_hotness != old.hotness:
        raise ValueError(f"plan hotness {plan_hotness} != model hotness {old.hotness}")
    # the all-to-all gets its own group: DDP's bucket all-reduces run concurrently on the default one
    # and the job's collective timeout: new_group's default would be torch's 30 minutes
    group = (dist.new_group(list(range(runtime.world_size)), timeout=datetime.timedelta(seconds=runtime.timeout_s))
             if runtime.distributed else None)
    if seed is not None:
        sharded = ShardedEmbedding.from_seed(plan, runtime.rank, seed, runtime.device, group=group, padded=old.padded)
    else:
        if not isinstance(old, SparseArch) or old.table_sizes != plan.table_sizes:
            raise ValueError(f"model tables {getattr(old, 'table_sizes', None)} != plan tables {plan.table_sizes}; "
                             "pass seed= to initialise the shards instead")
        sharded = ShardedEmbedding.from_full(plan, runtime.rank, old.embedding.weight.data,
                                             old.offsets.tolist(), group=group, padded=old.padded)
    model.sparse_arch = sharded
    del old
    model.to(runtime.device)
    ddp = None
    if runtime.distributed:
        ignore = [n for n, _ in model.named_parameters() if n.startswith("sparse_arch.")]
        ignore += [n for n, _ in model.named_buffers() if n.startswith("sparse_arch.")]
        DDP._set_params_and_buffers_to_ignore_for_model(model, ignore)
        with warnings.catch_warnings():  # broadcast_buffers=False is still the way to skip per-step syncs
            warnings.simplefilter("ignore", FutureWarning)
            ddp = DDP(model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None,
                      broadcast_buffers=False)
        ddp.register_comm_hook(dist.group.WORLD, _allreduce_sum_hook)
    return ShardedDLRM(model, plan, runtime, ddp)
