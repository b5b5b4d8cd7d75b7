"""`render --out DIR` (issue 19): a new render replaces an earlier one whole, so `kubectl apply -f DIR` and
`launcher validate` never see an earlier render's stale objects; a folder with anything else is refused."""
from __future__ import annotations

import pytest

from launcher.__main__ import main
from launcher.cli_render import exchange


def render(out, *flags) -> int:
    return main(["render", "--profile", "criteo-fl15", "--set", "dataset=criteo/fl15", "--set", "storage.mode=pvc", "--set", "storage.claim=data",
                 "--set", "storage.output_claim=runs", "--set", "train.out=/output", *flags, "--out", str(out)])


def test_a_render_replaces_an_earlier_one_whole(tmp_path, capsys):
    out = tmp_path / "yaml"
    assert render(out, "--set", "export=true") == 0
    assert sorted(p.name for p in out.iterdir()) == ["00-configmap-dlrm-criteo-fl15-config.yaml",
                                                     "01-pytorchjob-dlrm-criteo-fl15.yaml", "02-job-dlrm-criteo-fl15-export.yaml"]
    assert render(out, "--name", "exp-b") == 0  # fewer objects, other names: nothing of the first render is left
    assert sorted(p.name for p in out.iterdir()) == ["00-configmap-exp-b-config.yaml", "01-pytorchjob-exp-b.yaml"]
    assert not [p for p in tmp_path.iterdir() if p.name != "yaml"]  # no staging folder left behind
    assert oct(out.stat().st_mode & 0o777) == "0o755"
    capsys.readouterr()
    assert main(["validate", *map(str, sorted(out.iterdir()))]) == 0


def test_a_folder_holding_other_files_is_refused_untouched(tmp_path, capsys):
    out = tmp_path / "yaml"
    out.mkdir()
    (out / "kustomization.yaml").write_text("resources: []\n")
    (out / "00-configmap-old.yaml").write_text("kind: ConfigMap\n")
    assert render(out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds files render did not write (kustomization.yaml)" in err
    assert sorted(p.name for p in out.iterdir()) == ["00-configmap-old.yaml", "kustomization.yaml"]


def test_a_bad_render_leaves_the_earlier_one(tmp_path, capsys):
    out = tmp_path / "yaml"
    assert render(out) == 0
    before = {p.name: p.read_text() for p in out.iterdir()}
    assert render(out, "--nodes", "0") == 2
    assert {p.name: p.read_text() for p in out.iterdir()} == before


def test_exchange_swaps_two_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x").write_text("a"), (b / "x").write_text("b")
    exchange(a, b)
    assert ((a / "x").read_text(), (b / "x").read_text()) == ("b", "a")


@pytest.mark.parametrize("name", ["notes.txt", "00-configmap-x.yml", "sub"])
def test_anything_render_does_not_write_is_foreign(tmp_path, capsys, name):
    out = tmp_path / "yaml"
    out.mkdir()
    (out / name).mkdir() if name == "sub" else (out / name).write_text("x")
    assert render(out) == 2 and name in capsys.readouterr().err
