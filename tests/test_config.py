import pytest

from dlrm.config import TrainConfig, from_dict, load_config, parse_bytes, parse_override
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
    with pytest.raises(ConfigError, match="optimizer must be sgd or adagrad, got 'adam'"):
        load_config(TrainConfig, overrides=["optim.optimizer=adam"])


def test_invalid_yaml_names_line(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("optim:\n  lr: [1,\n")
    with pytest.raises(ConfigError, match="broken.yaml: line"):
        load_config(TrainConfig, files=[f])


def test_from_dict_nested_types():
    cfg = from_dict(TrainConfig, {"model": {"top_mlp": [8, 4]}, "optim": {"lr": 3}})
    assert cfg.model.top_mlp == [8, 4] and isinstance(cfg.optim.lr, float)


@pytest.mark.parametrize("text,value", [("80GiB", 80 * 2**30), ("16GB", 16 * 10**9), ("512Mi", 512 * 2**20), ("1024", 1024)])
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


def test_parse_bytes_rejects():
    with pytest.raises(ConfigError, match="is not a size"):
        parse_bytes("80 parsecs")


def test_dcn_fields():
    cfg = load_config(TrainConfig, overrides=["model.interaction=dcn", "model.bottom_mlp=[64, 32]"])
    assert (cfg.model.dcn_num_layers, cfg.model.dcn_low_rank_dim) == (3, 512)  # MLPerf's
    for bad, message in [("model.dcn_num_layers=0", "dcn_num_layers must be >= 1"),
                         ("model.dcn_low_rank_dim=0", "dcn_low_rank_dim must be >= 1"),
                         ("model.interaction=dcnv2", "must be dot, cat or dcn")]:
        with pytest.raises(ConfigError, match=message):
            load_config(TrainConfig, overrides=["model.interaction=dcn", bad])
