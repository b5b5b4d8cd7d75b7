"""data.verify: how the trainer checks a dataset folder holding _manifest.json, per mode, and the
launcher's choice of mode per storage mode (a read-only S3 mount gets `sizes`)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from dlrm.data.manifest import MANIFEST_NAME, Entry, Manifest, require_verified, sha256_file, write_record
from dlrm.dist.runtime import Runtime
from dlrm.errors import DataError
from launcher.config import load_job_config
from launcher.render import render_objects

ROOT = Path(__file__).resolve().parents[1]


def _copy(root: Path, verified: bool = False) -> Path:
    """A two-file dataset copy with its manifest (and the .verified record if asked)."""
    (root / "train").mkdir(parents=True)
    (root / "train/label.bin").write_bytes(bytes(range(64)))
    (root / "feature_spec.yaml").write_text("x: 1\n")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    data = Manifest(tuple(Entry(p.relative_to(root).as_posix(), p.stat().st_size, sha256_file(p)) for p in files)).to_bytes()
    (root / MANIFEST_NAME).write_bytes(data)
    if verified:
        write_record(root, data)
    return root


def _flip(path: Path) -> None:
    """Same size, other content."""
    blob = bytearray(path.read_bytes())
    blob[3] ^= 0xFF
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("mode", ["auto", "full", "sizes", "off"])
def test_every_mode_accepts_a_matching_copy(tmp_path, mode):
    require_verified(_copy(tmp_path), mode)


@pytest.mark.parametrize("mode", ["auto", "full", "sizes"])
def test_a_truncated_file_is_refused_by_every_checking_mode(tmp_path, mode):
    d = _copy(tmp_path)
    os.truncate(d / "train/label.bin", 10)
    with pytest.raises(DataError, match=r"train/label\.bin: size 10, manifest says 64"):
        require_verified(d, mode)


def test_sizes_reads_no_content_and_off_checks_nothing(tmp_path, monkeypatch):
    d = _copy(tmp_path)
    _flip(d / "train/label.bin")
    calls = []
    monkeypatch.setattr("dlrm.data.manifest.sha256_file", lambda p, *a: calls.append(p) or "0")
    require_verified(d, "sizes")  # same sizes: accepted, and not one file hashed
    os.truncate(d / "train/label.bin", 1)
    require_verified(d, "off")
    assert calls == []


def test_auto_trusts_the_record_and_full_does_not(tmp_path):
    d = _copy(tmp_path, verified=True)
    require_verified(d, "auto")
    require_verified(d, "full")
    _flip(d / "train/label.bin")  # a newer mtime: the record no longer matches, auto hashes
    with pytest.raises(DataError, match="sha256 differs"):
        require_verified(d, "auto")
    with pytest.raises(DataError, match="sha256 differs"):
        require_verified(d, "full")


def test_full_hashes_even_when_the_record_matches(tmp_path):
    d = _copy(tmp_path, verified=True)
    st = (d / "train/label.bin").stat()
    _flip(d / "train/label.bin")
    os.utime(d / "train/label.bin", ns=(st.st_atime_ns, st.st_mtime_ns))  # content changed, record still matches
    require_verified(d, "auto")  # the record's promise (size + mtime) is all auto checks
    with pytest.raises(DataError, match="sha256 differs"):
        require_verified(d, "full")


def test_once_per_node_runs_the_check_in_one_process():
    seen = []
    Runtime().once_per_node("a check", lambda: seen.append(1))
    assert seen == [1]
    with pytest.raises(DataError, match="boom"):
        Runtime().once_per_node("a check", lambda: (_ for _ in ()).throw(DataError("boom")))


def _train_yaml(profile: str, overrides: list[str]) -> dict:
    import yaml

    objs = render_objects(load_job_config(profile, overrides=overrides), git_revision="x")
    cm = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-config"))
    return yaml.safe_load(cm["data"]["train.yaml"])["data"]


def test_launcher_sets_sizes_for_a_mount_and_leaves_other_modes_and_explicit_choices():
    assert _train_yaml("criteo-fl15", [])["verify"] == "sizes"
    assert _train_yaml("criteo-fl15", ["storage.mode=stage"])["verify"] == "auto"
    assert _train_yaml("criteo-fl15", ["train.data.verify=full"])["verify"] == "full"


def _two_ranks(rank: int, port: int, fail: bool, results) -> None:
    import datetime
    import time

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=30))
    rt = Runtime(rank=rank, local_rank=rank, world_size=2, backend="gloo")
    rt.local_rank = 0 if rank == 0 else 1  # one node: rank 0 checks, rank 1 waits

    def check():
        time.sleep(0.5)  # longer than poll_s: the waiting rank goes through several rounds
        if fail:
            raise DataError("copy differs")

    try:
        rt.once_per_node("the dataset check", check, poll_s=0.1)
        results[rank] = "ok"
    except Exception as e:  # noqa: BLE001 - the test reports what each rank raised
        results[rank] = f"{type(e).__name__}: {e}"
    dist.destroy_process_group()


@pytest.mark.parametrize("fail", [False, True])
def test_once_per_node_under_gloo_one_rank_checks_and_every_rank_agrees(fail):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_two_ranks, args=(port, fail, results), nprocs=2)
    if fail:
        assert results[0] == "DataError: copy differs"
        assert results[1].startswith("UserError: rank 1: the dataset check failed on 1 node(s)")
    else:
        assert dict(results) == {0: "ok", 1: "ok"}
