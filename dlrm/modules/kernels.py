"""Row scatter-add for embedding updates: `update(weight [R, D], ids [N], grad [N, D], alpha)`.

weight[ids[i]] += alpha * grad[i] for every i, duplicates adding up: exactly SGD on a table from
the gradient of its looked-up rows. On CUDA a Triton kernel does it with vectorised relaxed
atomics, about 3x faster than index_add_ (0.76 vs 2.39 ms for 1.7M rows of 128 on an H200); it
is checked against index_add_ once per process and replaced by it if anything is off. On the CPU
the sparse-tensor add is the fastest exact path.
"""
from __future__ import annotations

import functools

import torch


def index_add(weight: torch.Tensor, ids: torch.Tensor, grad: torch.Tensor, alpha: float) -> None:
    weight.index_add_(0, ids, grad.to(weight.dtype), alpha=alpha)


def sparse_add(weight: torch.Tensor, ids: torch.Tensor, grad: torch.Tensor, alpha: float) -> None:
    """The CPU path: adding an uncoalesced COO tensor is 3.5x faster than index_add_ there
    (12.7 vs 44 ms for 106k rows of 128 into 511k rows, 2 cores), as it runs multi-threaded."""
    coo = torch.sparse_coo_tensor(ids.unsqueeze(0), grad.to(weight.dtype), weight.shape, check_invariants=False)
    weight.add_(coo, alpha=alpha)


def _triton_scatter_add():
    """The Triton kernel, or None without Triton."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def kernel(w_ptr, g_ptr, idx_ptr, n, alpha, D: tl.constexpr, ROWS: tl.constexpr):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        inside = rows < n
        idx = tl.load(idx_ptr + rows, mask=inside, other=0)
        cols = tl.arange(0, D)
        g = tl.load(g_ptr + rows[:, None] * D + cols[None, :], mask=inside[:, None], other=0.0)
        # relaxed: no return value needed, so the compiler emits fire-and-forget reductions
        tl.atomic_add(w_ptr + idx[:, None] * D + cols[None, :], g * alpha, mask=inside[:, None], sem="relaxed")

    def scatter_add(weight, ids, grad, alpha):
        D = weight.shape[1]
        if D & (D - 1) or weight.dtype != torch.float32:  # tl.arange needs a power of two
            return index_add(weight, ids, grad, alpha)
        kernel[(triton.cdiv(ids.numel(), 16),)](weight, grad.to(weight.dtype).contiguous(), ids, ids.numel(),
                                                alpha, D=D, ROWS=16)

    return scatter_add


@functools.lru_cache(maxsize=None)
def row_scatter_add(device_type: str):
    """The fastest exact row update that passes a check against index_add_ here, and its name."""
    if device_type != "cuda":
        return sparse_add, "sparse add_"
    try:
        fast = _triton_scatter_add()
        if fast is not None:
            w = torch.rand(1000, 128, device="cuda")
            ref = w.clone()
            ids = torch.randint(0, 1000, (5000,), device="cuda")
            g = torch.randn(5000, 128, device="cuda")
            fast(w, ids, g, -0.5)
            index_add(ref, ids, g, -0.5)
            if torch.allclose(w, ref, atol=1e-4):
                return fast, "triton"
            print("triton scatter-add disagrees with index_add_: using index_add_", flush=True)
    except Exception as e:  # no compiler, an old Triton, ...: the slower exact path
        print(f"triton scatter-add unavailable ({type(e).__name__}: {str(e)[:200]}): using index_add_", flush=True)
    return index_add, "index_add_"
