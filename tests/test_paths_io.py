"""Inputs read silently wrong before: URIs taken for local folders, help strings argparse cannot format,
YAML's last-wins duplicate keys and bare off/on booleans, a dataset identity blind to hotness."""
from __future__ import annotations

import pytest

from dlrm.config import TrainConfig, load_config
from dlrm.errors import ConfigError, UserError
from dlrm.io.fsutil import is_uri, load_yaml, local_path


@pytest.mark.parametrize("arg", ["s3://b/x", "gs://b/x", "file:///tmp/x", "S3://b"])
def test_local_path_refuses_every_uri(arg):
    with pytest.raises(UserError, match=rf"^--out {arg}: dlrm synth writes a local folder; push it$"):
        local_path(arg, "--out", "dlrm synth", "push it")


@pytest.mark.parametrize("arg", ["runs/x", "/abs/s3:/x", "./s3", "a://"[1:], "weird:name"])
def test_local_path_keeps_local_paths(arg):
    assert not is_uri(arg)
    assert str(local_path(arg, "--out", "c", "i")) == str(__import__("pathlib").Path(arg))


def _commands():
    from dlrm.__main__ import COMMANDS as DLRM
    from launcher.__main__ import COMMANDS as LAUNCHER

    out = [("dlrm", [c]) for c in DLRM] + [("launcher", [c]) for c in LAUNCHER]
    return out + [("launcher", ["data", a]) for a in ("push", "pull", "verify", "stage")]


@pytest.mark.parametrize("prog,argv", _commands(), ids=lambda v: v if isinstance(v, str) else "-".join(v))
def test_every_help_renders(prog, argv, capsys):
    """argparse %-formats help strings: a bare % (as in '5%') crashed `dlrm preprocess --help`."""
    import importlib

    main = importlib.import_module(f"{prog}.__main__").main
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_preprocess_help_shows_the_share_as_a_percentage(capsys):
    from dlrm.__main__ import main

    with pytest.raises(SystemExit):
        main(["preprocess", "--help"])
    assert "= 1%)" in " ".join(capsys.readouterr().out.split())


# -- YAML ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,line,first", [
    ("a: 1\nb: 2\na: 3\n", 3, 1),
    ("x:\n  lr: 1\n  lr: 2\n", 3, 2),
    ("{a: 1, a: 2}", 1, 1),
    ("- {k: 1}\n- k: 1\n  k: 2\n", 3, 2),
])
def test_duplicate_keys_are_an_error_naming_file_line_and_key(text, line, first):
    with pytest.raises(ConfigError, match=rf"^cfg\.yaml: line {line} column \d+: is not valid YAML: duplicate key "
                                          rf"'\w+' \(first at line {first}\)$"):
        load_yaml(text, "cfg.yaml")


def test_merge_keys_still_override():
    assert load_yaml("b: &b {x: 1, y: 2}\nd:\n  <<: *b\n  x: 3\n")["d"] == {"x": 3, "y": 2}


def test_duplicate_key_in_a_config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.1\n  lr: 10\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: line 3 column 3: is not valid YAML: duplicate key 'lr'"):
        load_config(TrainConfig, files=[path])


def test_documented_words_that_yaml_reads_as_booleans(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  verify: off\namp: off\n")
    cfg = load_config(TrainConfig, files=[path])
    assert (cfg.data.verify, cfg.amp) == ("off", "none")
    cfg = load_config(TrainConfig, overrides=["data.verify=off", "amp=no"])
    assert (cfg.data.verify, cfg.amp) == ("off", "none")
    cfg = load_config(TrainConfig, overrides=["data.verify='off'", "amp=none"])
    assert (cfg.data.verify, cfg.amp) == ("off", "none")
    with pytest.raises(ConfigError, match=r"device: expected one of \['auto', 'cpu', 'cuda'\], got True \(YAML reads"):
        load_config(TrainConfig, overrides=["device=on"])
    with pytest.raises(ConfigError, match=r"resume: expected true or false"):
        load_config(TrainConfig, overrides=["resume=maybe"])


# -- dataset identity ---------------------------------------------------------------------------------


def _identity(tmp_path, name, **kw):
    from datasets import make_dataset
    from dlrm.data.identity import dataset_identity

    return dataset_identity(make_dataset(tmp_path / name, rows=64, test_rows=32, **kw), rows=False)


def test_identity_names_the_feature_whose_hotness_changed(tmp_path):
    from dlrm.data.identity import feature_differences

    one = _identity(tmp_path, "one")
    multi = _identity(tmp_path, "multi", hotness=[1, 3, 1, 1, 1])
    padded = _identity(tmp_path, "padded", hotness=[1, 3, 1, 1, 1], padded=[False, True, False, False, False])
    assert feature_differences({"dataset": one}, multi) == ["dataset feature cat_1.bin hotness 1 -> 3"]
    assert feature_differences({"dataset": multi}, one) == ["dataset feature cat_1.bin hotness 3 -> 1"]
    assert feature_differences({"dataset": multi}, padded) == ["dataset padded features [] -> ['cat_1.bin']"]
    assert feature_differences({"dataset": multi}, multi) == []


def test_identity_of_checkpoints_from_before_hotness_was_recorded(tmp_path):
    """Their plan carries table_hotness ([] in older plans: every table one-hot)."""
    from dlrm.data.identity import feature_differences

    multi = _identity(tmp_path, "multi", hotness=[1, 3, 1, 1, 1])
    old = {k: v for k, v in multi.items() if k not in ("hotness", "padded")}
    names = list(multi["tables"])
    assert feature_differences({"dataset": old, "plan": {"table_names": names, "table_hotness": []}}, multi) == [
        "dataset feature cat_1.bin hotness 1 -> 3"]
    assert feature_differences({"dataset": old, "plan": {"table_names": names,
                                                         "table_hotness": [1, 3, 1, 1, 1]}}, multi) == []
