"""`amp: auto` (issue 28): bf16 autocast only where it is faster, i.e. CUDA with bf16 and CPUs with AMX."""
from __future__ import annotations

import pytest
import torch

from dlrm.config import TrainConfig
from dlrm.training import precision

FLAGS = "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 {}\n"


@pytest.mark.parametrize("flags, amx", [("amx_bf16 amx_tile", True), ("amx_tile", False), ("", False)])
def test_amx_is_read_from_the_cpu_flags(tmp_path, flags, amx):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\n" + FLAGS.format(flags) + "\nprocessor\t: 1\n" + FLAGS.format(flags))
    assert precision.cpu_has_amx(str(info)) is amx
    assert precision.cpu_has_amx(str(tmp_path / "none")) is False  # no /proc (macOS): no AMX


@pytest.mark.parametrize("amx, want", [(True, torch.bfloat16), (False, None)])
def test_auto_is_bf16_on_a_cpu_only_with_amx(monkeypatch, amx, want):
    monkeypatch.setattr(precision, "cpu_has_amx", lambda: amx)
    cfg = TrainConfig()
    assert cfg.amp == "auto" and precision.amp_dtype(cfg, torch.device("cpu")) is want
    cfg.amp = "none"
    assert precision.amp_dtype(cfg, torch.device("cpu")) is None  # an explicit choice wins
    name, why = precision.auto_amp(torch.device("cpu"))
    assert (name == "bf16") is amx and ("AMX" in why)


@pytest.mark.parametrize("bf16, want", [(True, "bf16"), (False, "none")])
def test_auto_on_cuda_follows_bf16_support(monkeypatch, bf16, want):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert precision.auto_amp(torch.device("cuda", 0))[0] == want
