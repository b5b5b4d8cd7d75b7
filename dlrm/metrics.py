"""Exact ROC AUC in torch, and the run's metrics log (metrics.jsonl plus a PNG plot)."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Exact ROC AUC (Mann-Whitney U with average ranks for ties); nan when one class is absent.

    scores [N] any float dtype, labels [N] {0, 1}. Computed in float64 so that sums of ranks over
    hundreds of millions of samples stay exact.
    """
    scores = scores.detach().flatten().double().cpu()
    labels = labels.detach().flatten().cpu() > 0.5
    n = scores.numel()
    n_pos = int(labels.sum())
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    sorted_scores, order = torch.sort(scores, stable=True)
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()  # 1-based rank of each tie group's last member
    avg_rank = ends - (counts.double() - 1) / 2
    pos_rank_sum = avg_rank[inverse][labels[order]].sum().item()
    return (pos_rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


AUC_UNDEFINED = "undefined: the split holds one class only (ROC AUC needs positives and negatives)"


def auc_fields(auc: float | None) -> dict:
    """What a JSON report says of an AUC: the number, or null and why (never NaN, which is not JSON).
    Every report of metrics (metrics.jsonl, `dlrm eval`, `dlrm predict`) says it this way and
    dumps with allow_nan=False, so a NaN that slips past is an error here, not a broken file later."""
    if auc is None or math.isfinite(auc):
        return {"auc": auc}
    return {"auc": None, "auc_undefined": AUC_UNDEFINED}


def _json_value(v):
    """NaN and inf (an AUC on a one-class test split, a diverged loss) become null: every line
    stays valid JSON, which bare NaN is not."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _num(v) -> float:
    return math.nan if v is None else v


class MetricsLog:
    """Appends one JSON object per line; `plot()` draws loss and AUC against step.

    Every line is strict JSON: a value that is NaN or infinite is written as null.
    """

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record) -> None:
        if not self.enabled:
            return
        record.setdefault("time", round(time.time(), 3))
        if "auc" in record:
            record.update(auc_fields(record["auc"]))
        line = json.dumps({k: _json_value(v) for k, v in record.items()}, sort_keys=False, allow_nan=False)
        with self.path.open("a") as f:
            f.write(line + "\n")

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def plot(self, out: str | Path) -> Path | None:
        """Loss (train and eval) and AUC against step, one PNG; people would rather look than read."""
        if not self.enabled:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        recs = self.records()
        train = [r for r in recs if r.get("kind") == "train"]
        evals = [r for r in recs if r.get("kind") == "eval"]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        ax1.plot([r["step"] for r in train], [_num(r["loss"]) for r in train], label="train loss", lw=1)
        if evals:
            ax1.plot([r["step"] for r in evals], [_num(r["loss"]) for r in evals], "o-", label="eval loss")
            ax2.plot([r["step"] for r in evals], [_num(r["auc"]) for r in evals], "o-", color="C2", label="eval AUC")
        summary = next((r for r in reversed(recs) if r.get("kind") == "summary"), {})
        if summary.get("oracle_auc"):
            ax2.axhline(summary["oracle_auc"], ls="--", color="gray", label="hidden model AUC")
        ax1.set_xlabel("step"), ax1.set_ylabel("BCE loss"), ax1.legend(), ax1.grid(alpha=0.3)
        ax2.set_xlabel("step"), ax2.set_ylabel("ROC AUC"), ax2.legend(), ax2.grid(alpha=0.3)
        fig.suptitle(str(self.path.parent))
        fig.tight_layout()
        out = Path(out)
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out
