import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from dlrm.metrics import MetricsLog, roc_auc
from dlrm.training.schedule import learning_rate
from dlrm.config import OptimConfig


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 5000)
    scores = np.round(rng.normal(size=5000) + labels * 0.7, 1)  # rounding makes many ties
    assert roc_auc(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_all_tied_is_half_and_one_class_is_nan():
    assert roc_auc(torch.zeros(10), torch.tensor([0, 1] * 5)) == 0.5
    assert math.isnan(roc_auc(torch.rand(10), torch.ones(10)))
    assert roc_auc(torch.tensor([0.1, 0.9]), torch.tensor([0, 1])) == 1.0


def test_auc_float16_scores():
    s = torch.rand(1000).half()
    y = (torch.rand(1000) < s.float()).float()
    assert roc_auc(s, y) == pytest.approx(roc_auc_score(y.numpy(), s.float().numpy()), abs=1e-12)


def test_nvidia_schedule_shape():
    cfg = OptimConfig(lr=24, warmup_steps=8000, decay_start_step=48000, decay_steps=24000)
    assert learning_rate(0, cfg) == pytest.approx(24 / 8000)
    assert learning_rate(3999, cfg) == pytest.approx(12)
    assert learning_rate(8000, cfg) == 24 and learning_rate(47999, cfg) == 24
    assert learning_rate(48000, cfg) == 24
    assert learning_rate(60000, cfg) == pytest.approx(24 * 0.25)  # halfway: (1/2)^2
    assert learning_rate(72000, cfg) == 0 and learning_rate(10**6, cfg) == 0


def test_schedule_without_warmup_or_decay():
    cfg = OptimConfig(lr=0.1, warmup_steps=0, decay_steps=0)
    assert learning_rate(0, cfg) == 0.1 and learning_rate(10**7, cfg) == 0.1


def test_metrics_log_and_plot(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for s in range(1, 4):
        log.write(kind="train", step=s, loss=1.0 / s, lr=0.1, samples_per_s=10.0)
    log.write(kind="eval", step=3, auc=0.7, loss=0.5)
    log.write(kind="summary", step=3, auc=0.7, oracle_auc=0.8)
    assert [r["kind"] for r in log.records()] == ["train"] * 3 + ["eval", "summary"]
    png = log.plot(tmp_path / "m.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_lines_are_strict_json(tmp_path):
    """A NaN AUC (one-class test split) or a diverged loss is written as null, never bare NaN."""
    import json
    import math

    from dlrm.metrics import MetricsLog

    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write(kind="train", step=1, loss=float("nan"), lr=0.1)
    log.write(kind="eval", step=1, auc=math.nan, loss=float("inf"))
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c, line=line: pytest.fail(f"bare {c} in {line}"))
    assert [r.get("auc", r.get("loss")) for r in log.records()] == [None, None]
    assert log.plot(tmp_path / "m.png").exists()
