"""Checkpoints verify before they load; resume falls back past damage and refuses another run shape;
run folders and checkpoint stores are locked and probed for writes. One process, tiny dims."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dlrm.io.checkpoint import complete_checkpoints, whole_tables
from dlrm.errors import UserError
from dlrm.training.runlock import LOCK, Lock, _me, probe_writable
from dlrm.io.storage import open_store
from dlrm.training.train import train
from datasets import make_dataset, small_dataset, tiny_config  # noqa: F401 (small_dataset: the `dataset` fixture)

ROOT = Path(__file__).resolve().parents[1]


tiny = tiny_config



@pytest.fixture
def run3(tmp_path, dataset):
    """A run with checkpoints at steps 2, 4 and 6 (all kept)."""
    train(tiny(tmp_path, dataset, max_steps=6, checkpoint_every=2, checkpoint_keep=0))
    return tmp_path / "run" / "checkpoints"


def flip_a_byte(path: Path, at: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


# -- what metadata.json records, and verification on load -----------------------------------------


def test_metadata_records_size_and_sha256_of_every_file(run3):
    meta = json.loads((run3 / "ckpt-000000006" / "metadata.json").read_text())
    assert set(meta["checksums"]) == {"rank-0.pt", "dense.pt"}
    import hashlib
    for fname, d in meta["checksums"].items():
        data = (run3 / "ckpt-000000006" / fname).read_bytes()
        assert d == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert meta["dataset"]["train_rows"] == 2048 and meta["dataset"]["tables"]["cat_2.bin"] == 300


@pytest.mark.parametrize("damage,message", [
    ("flip", r"rank-0\.pt: sha256 does not match metadata\.json"),
    ("truncate", r"rank-0\.pt: \d+ bytes, metadata\.json says \d+ \(truncated\?\)"),
    ("remove", r"rank-0\.pt: missing \(listed in metadata\.json\)"),
    ("metadata", r"metadata\.json: not valid JSON \(truncated\?\)"),
])
def test_resume_falls_back_past_a_damaged_newest_checkpoint(tmp_path, dataset, run3, capsys, damage, message):
    newest = run3 / "ckpt-000000006"
    if damage == "flip":
        flip_a_byte(newest / "rank-0.pt")
    elif damage == "truncate":
        os.truncate(newest / "rank-0.pt", 1000)
    elif damage == "remove":
        (newest / "rank-0.pt").unlink()
    else:
        os.truncate(newest / "metadata.json", 50)
    capsys.readouterr()
    s = train(tiny(tmp_path, dataset, max_steps=8, checkpoint_every=2, checkpoint_keep=0, resume="true"))
    out = capsys.readouterr().out
    assert "resume: skipped" in out and "ckpt-000000006" in out
    import re
    assert re.search(message, out), out
    assert "resumed from" in out and "ckpt-000000004: step 4" in out
    assert s["step"] == 8
    # the abandoned newer checkpoint is gone; what is there now verifies
    assert complete_checkpoints(open_store(run3)) == ["ckpt-000000002", "ckpt-000000004", "ckpt-000000006",
                                                      "ckpt-000000008"]
    whole_tables(str(run3), "ckpt-000000006")


def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(tmp_path, dataset, run3):
    for ckpt in run3.iterdir():
        flip_a_byte(ckpt / "dense.pt")
    with pytest.raises(UserError, match=r"no checkpoint verifies \(3 tried"):
        train(tiny(tmp_path, dataset, max_steps=8, resume="true"))


def test_eval_of_a_damaged_checkpoint_is_one_line(run3, capsys):
    from dlrm.__main__ import main

    flip_a_byte(run3 / "ckpt-000000006" / "dense.pt")
    assert main(["eval", "--checkpoints", str(run3)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dense.pt: sha256 does not match" in err[0]
    os.truncate(run3 / "ckpt-000000004" / "metadata.json", 10)
    assert main(["eval", "--checkpoints", str(run3), "--name", "ckpt-000000004"]) == 2
    assert "metadata.json: not valid JSON" in capsys.readouterr().err


def test_rotation_deletes_metadata_first(tmp_path, dataset, monkeypatch):
    """A rotation killed after its first delete leaves a folder that no longer counts as complete."""
    from dlrm.io import storage

    deleted = []
    real = storage.LocalStore.delete

    def recording(self, prefix):
        deleted.append(prefix)
        real(self, prefix)

    monkeypatch.setattr(storage.LocalStore, "delete", recording)
    train(tiny(tmp_path, dataset, max_steps=6, checkpoint_every=2, checkpoint_keep=1))
    ckpt_deletes = [d for d in deleted if d.startswith("ckpt-")]
    assert ckpt_deletes[:2] == ["ckpt-000000002/metadata.json", "ckpt-000000002"]
    assert complete_checkpoints(open_store(tmp_path / "run" / "checkpoints")) == ["ckpt-000000006"]


def test_metadata_only_folder_is_skipped(tmp_path, dataset, run3, capsys):
    """What a rotation killed half-way by the old code left: metadata.json and no shards."""
    for f in (run3 / "ckpt-000000006").glob("*.pt"):
        f.unlink()
    train(tiny(tmp_path, dataset, max_steps=6, resume="true"))
    assert "resumed from" in capsys.readouterr().out


# -- resume into another run shape --------------------------------------------------------------------


def test_resume_into_another_shape_lists_every_difference(tmp_path, dataset, run3):
    with pytest.raises(UserError) as e:
        train(tiny(tmp_path, dataset, max_steps=8, resume="true", **{
            "model.embedding_dim": 16, "model.bottom_mlp": "[16,16]", "data.batch_size": 128}))
    msg = str(e.value)
    assert "\n" not in msg and "cannot resume from" in msg
    for part in ["model.embedding_dim 8 -> 16", "model.bottom_mlp [16, 8] -> [16, 16]", "data.batch_size 256 -> 128"]:
        assert part in msg, msg


def test_resume_on_another_dataset_shape(tmp_path, dataset, run3):
    other = tmp_path / "other"
    make_dataset(other, rows=1024, test_rows=512, sizes=(7, 50, 301, 3, 1000))
    with pytest.raises(UserError) as e:
        train(tiny(tmp_path, other, max_steps=8, resume="true"))
    assert "dataset table cat_2.bin rows 300 -> 301" in str(e.value)
    assert "dataset train rows 2048 -> 1024" in str(e.value)


def test_eval_on_a_dataset_of_another_shape(tmp_path, run3, capsys):
    from dlrm.__main__ import main

    other = tmp_path / "other"
    make_dataset(other, rows=256, test_rows=256, sizes=(7, 50, 300, 3))
    assert main(["eval", "--checkpoints", str(run3), "--dataset", str(other)]) == 2
    err = capsys.readouterr().err
    assert "does not fit checkpoint" in err and "dataset tables ['cat_0.bin'" in err and "Traceback" not in err
    make_dataset(tmp_path / "same", rows=256, test_rows=256, seed=3)  # same shape, other rows: fine
    assert main(["eval", "--checkpoints", str(run3), "--dataset", str(tmp_path / "same")]) == 0


def test_resume_prints_fields_that_may_change(tmp_path, dataset, run3, capsys):
    train(tiny(tmp_path, dataset, max_steps=8, resume="true", **{"optim.lr": 0.25, "eval_every": 4}))
    out = capsys.readouterr().out
    assert "changed since ckpt-000000006 (allowed):" in out and "optim.lr 0.5 -> 0.25" in out and "eval_every 0 -> 4" in out


# -- locks and write probes ----------------------------------------------------------------------------

HOLD = textwrap.dedent("""
    import sys, time
    from dlrm.training.runlock import Lock, _me
    from dlrm.io.storage import open_store
    Lock(open_store(sys.argv[1]), _me()).acquire()
    print("held", flush=True)
    time.sleep(120)
""")


def test_second_trainer_fails_naming_the_holder(tmp_path, dataset):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"run is in use by another run \(host \S+, pid {holder.pid}, started "):
            train(tiny(tmp_path, dataset, max_steps=8))  # past tiny.yaml's warmup: the schedule check passes
        assert not (run / "config.yaml").exists() and not (run / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock is stale (a dead pid on this host) and taken over
    assert train(tiny(tmp_path, dataset, max_steps=8))  # past tiny.yaml's warmup: the schedule check passes["step"] == 2
    assert not (run / LOCK).exists()  # released at the end


def test_lock_is_reentrant_for_its_own_process_only(tmp_path):
    store = open_store(tmp_path)
    me = _me()
    Lock(store, me).acquire()
    Lock(store, me).acquire()  # the same process again (a test calling train() twice)
    (tmp_path / LOCK).write_text(json.dumps(dict(me, pid_start="0")))  # this pid, but another (dead) process
    Lock(store, me).acquire()  # stale: taken over
    assert json.loads((tmp_path / LOCK).read_text())["pid_start"] == me["pid_start"]
    remote = dict(me, host="elsewhere")
    (tmp_path / LOCK).write_text(json.dumps(remote))
    with pytest.raises(UserError, match=r"host elsewhere, pid \d+.*delete .*\.dlrm-lock\.json"):
        Lock(store, me).acquire()


def test_s3_lock_uses_a_conditional_put(s3_bucket):
    uri = f"s3://{s3_bucket}/ckpt"
    store = open_store(uri)
    assert store.put_bytes_if_absent("x", b"1") and not store.put_bytes_if_absent("x", b"2")
    assert store.get_bytes("x") == b"1"
    Lock(store, dict(_me(), host="elsewhere")).acquire()
    with pytest.raises(UserError, match=rf"{uri} is in use by another run \(host elsewhere"):
        Lock(open_store(uri), _me()).acquire()


def test_unwritable_outputs_fail_before_the_first_step(tmp_path, dataset, s3_bucket):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(OSError, match="cannot write here") as e:
        train(tiny(tmp_path, dataset, checkpoint_dir=str(tmp_path / "a-file" / "ckpt")))
    assert e.value.filename == str(tmp_path / "a-file" / "ckpt")
    with pytest.raises(UserError, match=r"no such bucket 'no-such-bucket-x' \(s3://no-such-bucket-x/ckpt\)"):
        train(tiny(tmp_path, dataset, checkpoint_dir="s3://no-such-bucket-x/ckpt"))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    probe_writable(f"s3://{s3_bucket}/ok")
    assert not open_store(f"s3://{s3_bucket}/ok").list("")  # the probe is deleted
