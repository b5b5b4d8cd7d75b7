"""Optimizers: torch's for the dense (MLP) parameters, fused sparse updates for embedding tables.

Embedding gradients arrive as uncoalesced sparse COO tensors (one row per lookup). Coalescing a
33M-row table's gradient every step is the slow part of torch.optim.SGD's sparse path, so:
- SGD: a row scatter-add of the looked-up rows' gradients (dlrm.modules.kernels: index_add_, or a Triton
  kernel on CUDA): duplicates sum, exactly SGD on the table;
- Adagrad: row-wise (one accumulator per row, as FBGEMM's and TorchRec's rowwise Adagrad): the
  gradient is coalesced (needed: the accumulator sees each row's summed gradient once), the
  accumulator grows by the row's mean squared gradient, the row moves by lr * g / (sqrt(acc) + eps).
Row-wise Adagrad costs 4 bytes per row instead of 4 * D: the planner counts it that way.
"""
from __future__ import annotations

import torch

from dlrm.config import OptimConfig
from dlrm.modules.kernels import row_scatter_add


class SparseTableOptimizer:
    """Updates fused embedding weights [R, D] from their sparse gradients; state per row."""

    def __init__(self, weights: list[torch.Tensor], cfg: OptimConfig):
        self.weights = weights
        self.kind = cfg.optimizer
        self.eps = cfg.adagrad_eps
        self.state: dict[int, dict[str, torch.Tensor]] = {}
        if self.kind == "adagrad":
            for i, w in enumerate(weights):
                self.state[i] = {"sum": torch.full((w.shape[0],), cfg.adagrad_initial_accumulator,
                                                   dtype=torch.float32, device=w.device)}

    @torch.no_grad()
    def step(self, lr: float) -> None:
        for i, w in enumerate(self.weights):
            g = w.grad
            if g is None:
                continue
            if not g.is_sparse:  # a dense gradient (e.g. from a custom lookup): treat every row as touched
                g = g.to_sparse()
            if self.kind == "sgd":
                update, _ = row_scatter_add(w.device.type)
                update(w, g._indices()[0], g._values(), -lr)
            else:
                g = g.coalesce()
                rows, values = g.indices()[0], g.values().float()
                acc = self.state[i]["sum"]
                acc.index_add_(0, rows, values.pow(2).mean(dim=1))
                step = values / (acc[rows].sqrt().unsqueeze(1) + self.eps)
                w.index_add_(0, rows, step.to(w.dtype), alpha=-lr)

    def zero_grad(self) -> None:
        for w in self.weights:
            w.grad = None

    def state_tensors(self, i: int) -> dict[str, torch.Tensor]:
        """Per-row state of table weight i (checkpointed alongside its rows)."""
        return self.state.get(i, {})


class Optimizers:
    """The dense optimizer and the sparse table optimizer, stepped together with one lr."""

    def __init__(self, dense_params: list[torch.nn.Parameter], table_weights: list[torch.Tensor], cfg: OptimConfig):
        if cfg.optimizer == "sgd":
            self.dense = torch.optim.SGD(dense_params, lr=cfg.lr)
        else:
            self.dense = torch.optim.Adagrad(dense_params, lr=cfg.lr, eps=cfg.adagrad_eps,
                                             initial_accumulator_value=cfg.adagrad_initial_accumulator)
        self.sparse = SparseTableOptimizer(table_weights, cfg)

    def set_lr(self, lr: float) -> None:
        for group in self.dense.param_groups:
            group["lr"] = lr
        self.lr = lr

    def step(self) -> None:
        self.dense.step()
        self.sparse.step(self.lr)

    def zero_grad(self) -> None:
        self.dense.zero_grad(set_to_none=True)
        self.sparse.zero_grad()
