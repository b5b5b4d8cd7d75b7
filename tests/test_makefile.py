"""The Makefile composes (issue 20 item 5): `make render | kubectl apply -f -` gets YAML and nothing else on
stdout, SET="k=v k2=v2" is one --set each, RESUME=1 is --resume, and cancel/list reach run-local jobs.
make runs for real against a stand-in venv (this interpreter), so no test installs anything."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


@pytest.fixture
def venv(tmp_path) -> Path:
    """A folder make takes for an up-to-date .venv: bin/python runs this interpreter."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    (bin_dir / "python").chmod(0o755)
    installed = tmp_path / "venv" / ".installed"
    installed.touch()
    stamp = (ROOT / "pyproject.toml").stat().st_mtime + 60  # newer than pyproject.toml: no setup runs
    os.utime(installed, (stamp, stamp))
    return tmp_path / "venv"


def make(venv: Path, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MAKEFLAGS", None)
    return subprocess.run(["make", "-f", str(ROOT / "Makefile"), f"VENV={venv}", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_make_render_prints_only_the_yaml(venv):
    r = make(venv, "render", "PROFILE=synthetic-smoke", "SET=train.epochs=2 train.max_steps=5")
    assert r.returncode == 0, r.stderr
    objs = list(yaml.safe_load_all(r.stdout))  # what kubectl apply -f - would read: every line is YAML
    assert [o["kind"] for o in objs] == ["ConfigMap", "PyTorchJob"]
    train = yaml.safe_load(objs[0]["data"]["train.yaml"])
    assert (train["epochs"], train["max_steps"]) == (2, 5)  # each word of SET was its own --set
    assert "launcher" not in r.stdout.split("\n", 1)[0] and "--set" not in r.stdout.replace("- --set", "")


def test_make_s_c_from_another_folder_adds_no_directory_lines(venv, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(["make", "-s", "-C", str(ROOT), f"VENV={venv}", "render", "PROFILE=synthetic-smoke"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Entering directory" not in r.stdout and yaml.safe_load_all(r.stdout)


def test_resume_and_set_reach_the_command(venv):
    r = make(venv, "-n", "submit", "SET=a=1 b.c=x", "RESUME=1", "NAME=exp-b")
    assert r.returncode == 0, r.stderr
    assert "--set 'a=1' --set 'b.c=x' --resume" in r.stdout and "--name exp-b" in r.stdout


def test_setup_output_goes_to_stderr(tmp_path):
    """What a first `make render` prints while it installs: every line on stderr (dry run: nothing installed)."""
    r = subprocess.run(["make", "-f", str(ROOT / "Makefile"), "-n", f"VENV={tmp_path / 'fresh'}", "render"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    pip = [line for line in r.stdout.splitlines() if "pip install" in line or "-m venv" in line]
    assert pip and all(line.rstrip().endswith(">&2") for line in pip), r.stdout


@pytest.mark.parametrize("target, expected", [("cancel", "cancel demo --local"), ("list", "list --local")])
def test_cancel_and_list_reach_run_local_jobs(venv, target, expected):
    r = make(venv, "-n", target, "NAME=demo", "BACKEND=local")
    assert r.returncode == 0 and f"-m launcher {expected}" in " ".join(r.stdout.split()), r.stdout + r.stderr


def test_make_list_local_runs(venv, tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")  # runs/local is read from make's folder
    (tmp_path / "pyproject.toml").touch()
    os.utime(tmp_path / "pyproject.toml", (1, 1))  # older than the stand-in venv
    r = make(venv, "-s", "list", "BACKEND=local", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == "no run-local jobs in runs/local/ (jobs run with --workdir elsewhere are not listed)\n"
