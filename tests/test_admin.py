"""The admin bundle (launcher/admin.py) and the small TrainJobs that run on its ClusterTrainingRuntime:
bundle objects valid and building with kustomize, a job validated and run (run-local --runtime, staging
from S3 on 2 nodes) against it, and per-dataset stage folders shared by two jobs on one node."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.__main__ import main
from launcher.admin import bundle_objects
from launcher.config import load_job_config
from launcher.render import to_yaml

# A site whose runtime stages from S3 onto a node folder; users' jobs reference it.
STAGE_SITE = ["storage.mode=stage", "storage.stage_host_path=/mnt/nvme/dlrm-stage", "dataset=s3://site-bucket/default"]
USER = ["api=trainjob", "trainjob.cluster_runtime=dlrm", "trainjob.runtime_source=admin"]


def _trainer_missing() -> str:
    import importlib.util

    missing = [m for m in ("dlrm.training.train", "dlrm.data.synth") if importlib.util.find_spec(m) is None]
    return f"needs {', '.join(missing)} (not landed yet)" if missing else ""


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.skipif(bool(_trainer_missing()), reason=_trainer_missing() or "-")
def test_jobs_on_the_admin_runtime_stage_their_own_datasets_and_train(tmp_path, capsys, monkeypatch, s3_bucket, s3_endpoint):
    """The admin's runtime file given to run-local: a 2-node job and a 1-node job (1 process per node) stage
    different datasets from S3 into one node stage folder, each into its own dataset-<manifest hash>
    folder, and each trains on its own (its run record names that dataset's manifest)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    from dlrm.__main__ import main as dlrm_main
    from launcher.data.transfer import S3Options, push

    stage = tmp_path / "node-stage"  # the node's stage folder: exists here, so both jobs share it
    stage.mkdir()
    site = load_job_config("synthetic-smoke", overrides=["storage.mode=stage", f"storage.stage_host_path={stage}",
                                                         f"dataset=s3://{s3_bucket}/a", f"s3.endpoint_url={s3_endpoint}"])
    runtime = tmp_path / "clustertrainingruntime-dlrm.yaml"
    runtime.write_text(to_yaml([o for o in bundle_objects(site) if o["kind"] == "ClusterTrainingRuntime"]))
    for name, rows in (("a", 3000), ("b", 2000)):
        assert dlrm_main(["synth", "--out", str(tmp_path / name), "--rows", str(rows), "--tables", "small", "--seed", "1"]) == 0
        push(tmp_path / name, f"s3://{s3_bucket}/{name}", S3Options(progress=False, log=lambda s: None))
    for name, nodes in (("a", 2), ("b", 1)):
        sets = [*USER, f"nodes={nodes}", "gpus_per_node=1", f"dataset=s3://{s3_bucket}/{name}", "storage.mode=stage",
                f"s3.endpoint_url={s3_endpoint}", "train.max_steps=4", "train.checkpoint_every=0", f"name=job-{name}"]
        rc = main(["run-local", "--profile", "synthetic-smoke", "--runtime", str(runtime), "--workdir", str(tmp_path / f"wd-{name}"),
                   *[a for s in sets for a in ("--set", s)]])
        out = capsys.readouterr().out
        assert rc == 0, out[-3000:]
        assert f"{nodes} node(s) x 1 process(es)" in out and "final AUC" in out
    # `logs --local` finds a TrainJob's replicas by node rank (node-0-N, not worker-N)
    assert main(["logs", "job-a", "--local", "--workdir", str(tmp_path / "wd-a"), "--node", "1"]) == 0
    assert capsys.readouterr().out == (tmp_path / "wd-a" / "logs" / "node-0-1.log").read_text() != ""
    copies = sorted(p.name for p in stage.iterdir() if p.is_dir())
    assert len(copies) == 2 and all(c.startswith("dataset-") for c in copies), copies
    import hashlib

    import boto3

    for name in ("a", "b"):
        record = json.loads((tmp_path / f"wd-{name}" / "pods" / "node-0-0" / "output" / "run.json").read_text())
        manifest = boto3.client("s3").get_object(Bucket=s3_bucket, Key=f"{name}/_manifest.json")["Body"].read()
        want = hashlib.sha256(manifest).hexdigest()
        assert record["dataset"]["manifest_sha256"] == want
        assert Path(record["dataset"]["path"]).resolve().parent == stage.resolve()
