"""`launcher validate` on hand-edited renders (the sweep of issue 19/20's classes): what the API server
or kubectl refuses must not read as valid."""
from __future__ import annotations

import copy

import pytest

from launcher.__main__ import main as launcher_main
from launcher.validate import validate_objects

from test_render import by_kind, render


@pytest.fixture(scope="module")
def smoke_job() -> dict:
    return by_kind(render("synthetic-smoke"), "PyTorchJob")


def test_a_request_above_its_limit_is_an_error(smoke_job):
    job = copy.deepcopy(smoke_job)
    resources = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["resources"]
    limit = resources["limits"]["memory"]
    resources["requests"]["memory"] = "99Ei"  # a hand edit: the API server refuses the pod
    errors = validate_objects([job])
    assert errors == [f"PyTorchJob/{job['metadata']['name']}: spec.pytorchReplicaSpecs.Master.template.spec.containers[0]"
                      f".resources.requests.memory: 99Ei is above its limit {limit} (the API server refuses a request "
                      f"above its limit)"]


def test_a_request_equal_to_its_limit_is_valid(smoke_job):
    job = copy.deepcopy(smoke_job)
    resources = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["resources"]
    resources["requests"]["memory"] = resources["limits"]["memory"]
    assert validate_objects([job]) == []


@pytest.mark.parametrize("text", ["", "---\n# nothing else\n"])
def test_a_file_without_objects_is_not_valid(tmp_path, capsys, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    assert launcher_main(["validate", str(path)]) == 1
    out, err = capsys.readouterr()
    assert err.strip() == f"{path}: no Kubernetes objects in the file"
    assert out.strip() == "0 objects in 1 files: 1 errors"
