"""The Makefile composes (issue 20 item 5, issue 28 item 5): `make render | kubectl apply -f -` gets YAML and
nothing else on stdout, SET="k=v k2={a: b}" is one --set per top-level word, VALUES layers several files,
values with spaces or quotes reach the command whole, RESUME=1 is --resume, cancel/list reach run-local
jobs, `make help` lists every target, and `make demo` installs less than `make test`.
make runs for real against a stand-in venv (this interpreter), so no test installs anything."""
from __future__ import annotations

import os
import re
import shlex
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


def top_level_env(**extra: str) -> dict[str, str]:
    """The environment of a make typed in a shell: under `make test` the suite inherits MAKEFLAGS and
    MAKELEVEL, and a make that believes it is a sub-make prints "Entering directory" lines."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    return {**env, **extra}


def make(venv: Path, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = top_level_env(PYTHONPATH=str(ROOT))
    return subprocess.run(["make", "-f", str(ROOT / "Makefile"), f"VENV={venv}", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_make_render_prints_only_the_yaml(venv, tmp_path):
    (tmp_path / "site.yaml").write_text("train: {epochs: 3, max_steps: 7}\n")
    (tmp_path / "run.yaml").write_text("train: {max_steps: 6}\n")
    r = make(venv, "render", "PROFILE=synthetic-smoke", f"VALUES={tmp_path / 'site.yaml'} {tmp_path / 'run.yaml'}",
             "SET=train.epochs=2  cluster.node_selector={pool: gpu-a, zone: 'b-c'}")
    assert r.returncode == 0, r.stderr
    objs = list(yaml.safe_load_all(r.stdout))  # what kubectl apply -f - would read: every line is YAML
    assert [o["kind"] for o in objs] == ["ConfigMap", "PyTorchJob"]
    train = yaml.safe_load(objs[0]["data"]["train.yaml"])
    assert (train["epochs"], train["max_steps"]) == (2, 6)  # SET over run.yaml over site.yaml
    pod = objs[1]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["nodeSelector"]["pool"] == "gpu-a" and pod["nodeSelector"]["zone"] == "b-c"  # the flow value stayed whole
    assert "launcher" not in r.stdout.split("\n", 1)[0] and "--set" not in r.stdout.replace("- --set", "")


def test_make_s_c_from_another_folder_adds_no_directory_lines(venv, tmp_path):
    env = top_level_env(PYTHONPATH=str(ROOT))
    r = subprocess.run(["make", "-s", "-C", str(ROOT), f"VENV={venv}", "render", "PROFILE=synthetic-smoke"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Entering directory" not in r.stdout and yaml.safe_load_all(r.stdout)


def test_resume_and_set_reach_the_command(venv):
    r = make(venv, "-n", "submit", "SET=a=1 b.c={p: q}", "RESUME=1", "NAME=exp-b")
    assert r.returncode == 0, r.stderr
    argv = shlex.split(r.stdout)
    assert argv[argv.index("--set-list") + 1] == "a=1 b.c={p: q}" and "--resume" in argv
    assert argv[argv.index("--name") + 1] == "exp-b"


@pytest.mark.parametrize("target", ["render", "submit", "status", "results", "logs", "cancel"])
def test_values_with_spaces_and_quotes_stay_one_word(venv, target):
    odd = "it's a \"b\" `x`; y"  # ($ is make's own: NAME=$HOME is make's variable H, then OME)
    r = make(venv, "-n", target, f"NAME={odd}", f"OUT={odd}", f"NAMESPACE={odd}", "VALUES=a.yaml b.yaml")
    assert r.returncode == 0, r.stderr
    argv = shlex.split(r.stdout.strip().splitlines()[-1])
    job = target in ("render", "submit")
    flags = ["--namespace"] + ["--name"] * job + ["--out"] * (target in ("render", "results"))
    assert [argv[argv.index(f) + 1] for f in flags] == [odd] * len(flags)
    assert argv.count(odd) == len(flags) + (not job)  # a job command's NAME is its positional argument
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--values"] == ["a.yaml", "b.yaml"] * job  # layered in order


def test_help_lists_every_target_once():
    r = subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile"), "help"], cwd=ROOT, env=top_level_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    text = (ROOT / "Makefile").read_text()
    phony = text.split(".PHONY:", 1)[1].split("\n\n", 1)[0].replace("\\\n", " ").split()
    rules = re.findall(r"^([a-z][a-z0-9-]*):(?!=)", text, flags=re.M)  # every named rule, ## comment or not
    listed = [line.split()[0] for line in r.stdout.split("\nvariables")[0].splitlines() if line.startswith("  ")]
    assert sorted(listed) == sorted(phony) == sorted(set(rules)), (listed, phony, rules)
    assert "{pool: gpu-a}" in r.stdout  # says how SET splits


def _stub_python(tmp_path: Path) -> tuple[Path, Path]:
    """A PY whose `-m venv DIR` makes a venv whose python (and ruff) only log their arguments."""
    log = tmp_path / "calls.log"
    stub = f"#!/bin/sh\necho \"$*\" >> {log}\n"
    py = tmp_path / "py"
    py.write_text(f"#!/bin/sh\nif [ \"$1 $2\" = '-m venv' ]; then mkdir -p \"$3/bin\"; for b in python ruff; do "
                  f"printf '%s' '{stub}' > \"$3/bin/$b\"; chmod +x \"$3/bin/$b\"; done; fi\n")
    py.chmod(0o755)
    return py, log


def test_demo_installs_the_runtime_and_test_adds_only_the_extras(tmp_path):
    py, log = _stub_python(tmp_path)

    def run(*targets):
        log.write_text("")
        r = subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile"), f"PY={py}", f"VENV={tmp_path / 'v'}", *targets], cwd=ROOT,
                           env=top_level_env(),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return [line for line in log.read_text().splitlines() if line.startswith("-m pip install") and "-e" in line]

    assert run("setup") == ["-m pip install -q -e ."]  # make demo's setup: no extras
    assert run("setup") == []
    assert run("lint", "bytecode") == ["-m pip install -q -e .[dev]"]  # make test's, after it: the extras
    assert run("setup", "setup-dev") == []
    shutil.rmtree(tmp_path / "v")
    assert run("lint", "bytecode") == ["-m pip install -q -e .[dev]"]  # a fresh make test: one install, as before


def test_setup_output_goes_to_stderr(tmp_path):
    """What a first `make render` prints while it installs: every line on stderr (dry run: nothing installed)."""
    r = subprocess.run(["make", "-f", str(ROOT / "Makefile"), "-n", f"VENV={tmp_path / 'fresh'}", "render"], cwd=ROOT, env=top_level_env(),
                       capture_output=True, text=True, timeout=60)
    pip = [line for line in r.stdout.splitlines() if "pip install" in line or "-m venv" in line]
    assert pip and all(line.rstrip().endswith(">&2") for line in pip), r.stdout


@pytest.mark.parametrize("target, expected", [("cancel", "cancel demo --local"), ("list", "list --local")])
def test_cancel_and_list_reach_run_local_jobs(venv, target, expected):
    r = make(venv, "-n", target, "NAME=demo", "BACKEND=local")
    assert r.returncode == 0 and f"-m launcher {expected}" in " ".join(shlex.split(r.stdout)), r.stdout + r.stderr


def test_make_list_local_runs(venv, tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")  # runs/local is read from make's folder
    (tmp_path / "pyproject.toml").touch()
    os.utime(tmp_path / "pyproject.toml", (1, 1))  # older than the stand-in venv
    r = make(venv, "-s", "list", "BACKEND=local", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == "no run-local jobs in runs/local/ (jobs run with --workdir elsewhere are not listed)\n"
