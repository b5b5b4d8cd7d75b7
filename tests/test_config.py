import pytest

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Annotated

from dlrm.config import (AtLeast1, ByteSize, Length, Range, TrainConfig, check_values, from_dict, load_config,
                         parse_bytes, parse_override)
from dlrm.errors import ConfigError


def test_defaults_are_nvidias():
    cfg = TrainConfig()
    assert cfg.model.bottom_mlp == [512, 256, 128] and cfg.model.top_mlp == [1024, 1024, 512, 256]
    assert cfg.model.embedding_dim == 128
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.decay_start_step, cfg.optim.decay_steps) == (24, 8000, 48000, 24000)


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("optim:\n  lr: 0.5\nmodel:\n  embedding_dim: 16\n  bottom_mlp: [32, 16]\n")
    cfg = load_config(TrainConfig, files=[f], overrides=["optim.lr=2", "data.batch_size=128", "resume=true"])
    assert cfg.optim.lr == 2.0 and cfg.model.embedding_dim == 16 and cfg.data.batch_size == 128 and cfg.resume


def test_unknown_key_names_key_file_and_valid_keys(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("optim:\n  lr: 1\n  momentum: 0.9\n")
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, files=[f])
    msg = str(e.value)
    assert "bad.yaml" in msg and "optim.momentum" in msg and "decay_power" in msg


def test_unknown_override_and_bad_type():
    with pytest.raises(ConfigError, match="unknown key data.batchsize"):
        load_config(TrainConfig, overrides=["data.batchsize=3"])
    with pytest.raises(ConfigError, match="data.batch_size: expected an integer, got 'many'"):
        load_config(TrainConfig, overrides=["data.batch_size=many"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("optim.lr")


def test_cross_field_checks_carry_values():
    with pytest.raises(ConfigError, match="bottom_mlp\\[-1\\] == model.embedding_dim, got 64 and 128"):
        load_config(TrainConfig, overrides=["model.bottom_mlp=[64]"])
    with pytest.raises(ConfigError, match=r"optim.optimizer: expected one of \['sgd', 'adagrad'\], got 'adam'"):
        load_config(TrainConfig, overrides=["optim.optimizer=adam"])


def test_invalid_yaml_names_line(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("optim:\n  lr: [1,\n")
    with pytest.raises(ConfigError, match="broken.yaml: line"):
        load_config(TrainConfig, files=[f])


def test_from_dict_nested_types():
    cfg = from_dict(TrainConfig, {"model": {"top_mlp": [8, 4]}, "optim": {"lr": 3}})
    assert cfg.model.top_mlp == [8, 4] and isinstance(cfg.optim.lr, float)


@pytest.mark.parametrize("text,value", [("80Gi", 80 * 2**30), ("16G", 16 * 10**9), ("512Mi", 512 * 2**20), ("1024", 1024),
                                        ("1.5Gi", 3 * 2**29), ("2e3", 2000), ("1E", 10**18), ("1Ei", 2**60)])
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


def test_parse_bytes_rejects():
    with pytest.raises(ConfigError, match="is not a Kubernetes quantity"):
        parse_bytes("80 parsecs")


def test_dcn_fields():
    cfg = load_config(TrainConfig, overrides=["model.interaction=dcn", "model.bottom_mlp=[64, 32]"])
    assert (cfg.model.dcn_num_layers, cfg.model.dcn_low_rank_dim) == (3, 512)  # MLPerf's
    for bad, message in [("model.dcn_num_layers=0", r"model\.dcn_num_layers: expected an integer >= 1, got 0"),
                         ("model.dcn_low_rank_dim=0", r"model\.dcn_low_rank_dim: expected an integer >= 1, got 0"),
                         ("model.interaction=dcnv2", r"model\.interaction: expected one of \['dot', 'cat', 'dcn'\], got 'dcnv2'")]:
        with pytest.raises(ConfigError, match=message):
            load_config(TrainConfig, overrides=["model.interaction=dcn", bad])


@pytest.mark.parametrize("override,message", [
    ("optim.lr=.inf", r"optim\.lr: expected a finite number, got inf"),
    ("optim.lr=.nan", r"optim\.lr: expected a finite number, got nan"),
    ("optim.lr=0", r"optim\.lr: expected a finite number > 0, got 0\.0"),
    ("optim.lr=-1", r"optim\.lr: expected a finite number > 0, got -1\.0"),
    ("seed=-1", r"seed: expected an integer in \[0, \d+\], got -1"),
    ("model.bottom_mlp=[0, 128]", r"model\.bottom_mlp\[0\]: expected an integer >= 1, got 0"),
    ("model.top_mlp=[8, -4]", r"model\.top_mlp\[1\]: expected an integer >= 1, got -4"),
    ("model.bottom_mlp=[]", r"model\.bottom_mlp: expected a non-empty list, got \[\]"),
    ("model.embedding_dim=0", r"model\.embedding_dim: expected an integer >= 1, got 0"),
    ("epochs=0", r"epochs: expected an integer >= 1, got 0"),
    ("checkpoint_keep=-1", r"checkpoint_keep: expected an integer >= 0, got -1"),
    ("target_auc=1.5", r"target_auc: expected a finite number in \[0, 1\], got 1\.5"),
    ("data.prefetch=100000", r"data\.prefetch: expected an integer in \[0, 64\], got 100000"),
    ("data.eval_batch_size=1.5", r"data\.eval_batch_size: expected an integer, got 1\.5"),
    ("dist.device_memory=eighty", r"dist\.device_memory: expected a size as a Kubernetes quantity such as 80Gi.*got 'eighty'"),
    ("dist.collective_timeout_s=0", r"dist\.collective_timeout_s: expected an integer >= 1, got 0"),
    ("device=tpu", r"device: expected one of \['auto', 'cpu', 'cuda'\], got 'tpu'"),
    ("amp=fp8", r"amp: expected one of .*got 'fp8'"),
    ("dist.sharding=column", r"dist\.sharding: expected one of .*got 'column'"),
    ("out=", r"out: expected a non-empty string, got ''"),
    ("optim.decay_power=.inf", r"optim\.decay_power: expected a finite number, got inf"),
])
def test_every_numeric_field_has_its_range(override, message):
    """The key, the value and the range in one message, naming the override that brought it."""
    with pytest.raises(ConfigError, match=message) as e:
        load_config(TrainConfig, overrides=[override])
    assert str(e.value).startswith(f"override {override!r}: ")


def test_range_names_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("optim:\n  lr: .inf\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: optim\.lr: expected a finite number, got inf"):
        load_config(TrainConfig, files=[f])


def test_numbers_yaml_leaves_as_text_are_numbers():
    """PyYAML reads 1e-8 (no dot) as a string; a float field takes it, a word stays an error."""
    cfg = load_config(TrainConfig, overrides=["optim.adagrad_eps=1e-8", "data.batch_size=1e3"])
    assert cfg.optim.adagrad_eps == 1e-8 and cfg.data.batch_size == 1000


def test_every_field_is_typed_and_numbers_are_bounded():
    """A numeric field without a range is how .inf and -1 reached torch: every int/float has one."""
    def walk(cls, prefix=""):
        for name, tp in typing.get_type_hints(cls, include_extras=True).items():
            base = typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp
            if dataclasses.is_dataclass(base):
                yield from walk(base, f"{prefix}{name}.")
            elif base in (int, float):
                yield f"{prefix}{name}", typing.get_origin(tp) is Annotated
            elif base is str:  # a choice must be a Literal, not a str checked later
                assert name not in ("device", "amp", "interaction", "optimizer", "sharding"), name
    unbounded = [path for path, bounded in walk(TrainConfig) if not bounded]
    assert not unbounded, f"numeric fields without a Range: {unbounded}"
    check_values(TrainConfig())  # the defaults pass their own checks


def test_validate_checks_objects_built_in_code():
    cfg = TrainConfig()
    cfg.optim.lr = float("inf")
    with pytest.raises(ConfigError, match=r"optim\.lr: expected a finite number, got inf"):
        cfg.validate()
    cfg = TrainConfig()
    cfg.model.interaction = "sum"
    with pytest.raises(ConfigError, match=r"model\.interaction: expected one of"):
        cfg.validate()


def test_generic_checks_work_for_any_dataclass():
    @dataclass
    class Job:
        nodes: AtLeast1 = 1
        ratio: Annotated[float, Range(gt=0, lt=1)] = 0.5
        memory: Annotated[str, ByteSize()] = "1Gi"
        names: Annotated[list[str], Length(min=1, max=2)] = field(default_factory=lambda: ["a"])
        mode: typing.Literal["a", "b"] = "a"
        maybe: int | None = None

    assert from_dict(Job, {"nodes": 3, "maybe": None}).nodes == 3
    for data, message in [({"nodes": 0}, r"job: nodes: expected an integer >= 1, got 0"),
                          ({"ratio": 1}, r"ratio: expected a finite number in \(0, 1\), got 1\.0"),
                          ({"memory": "-1Gi"}, r"memory: expected a size"),
                          ({"names": ["a", "b", "c"]}, r"names: expected a list of length 1 to 2"),
                          ({"mode": "c"}, r"mode: expected one of \['a', 'b'\]"),
                          ({"maybe": "x"}, r"maybe: expected an integer, got 'x'")]:
        with pytest.raises(ConfigError, match=message):
            from_dict(Job, data, where="job: ")


def test_parse_bytes_refuses_non_finite():
    for text in ["1e400Gi", "-1Gi", "nanGi", "inf", "80GiB", "16GB", "500m"]:
        with pytest.raises(ConfigError, match="is not a Kubernetes quantity|is out of range|is not a whole number of bytes"):
            parse_bytes(text)


def test_memory_reserve_below_device_memory():
    with pytest.raises(ConfigError, match=r"dist\.memory_reserve \(8Gi\) must be less than dist\.device_memory \(4Gi\)"):
        load_config(TrainConfig, overrides=["dist.device_memory=4Gi", "dist.memory_reserve=8Gi"])


def test_mlperf_dcnv2_builtin_is_the_reference_recipe():
    from dlrm.training.train import BUILTIN_CONFIGS

    cfg = load_config(TrainConfig, files=[BUILTIN_CONFIGS / "mlperf-dcnv2.yaml"])
    m, o = cfg.model, cfg.optim
    assert (m.interaction, m.dcn_num_layers, m.dcn_low_rank_dim, m.embedding_dim) == ("dcn", 3, 512, 128)
    assert (m.bottom_mlp, m.top_mlp) == ([512, 256, 128], [1024, 1024, 512, 256])
    assert (o.optimizer, o.lr, o.adagrad_eps, o.warmup_steps, o.decay_steps) == ("adagrad", 0.005, 1e-8, 0, 0)
    assert (cfg.data.batch_size, cfg.evals_per_epoch, cfg.target_auc) == (65536, 20, 0.80275)
