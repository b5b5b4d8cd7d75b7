"""Background checkpoints that fail: a full disk (RLIMIT_FSIZE) or a failed metadata write is
reported on the next progress line, retried or stops the run (checkpoint_on_error), and never
leaves a half checkpoint that counts. One process, tiny dims, in this process (the kill during a
background write: tests/test_dist_train.py, 2 forked ranks, in a folder and on s3://)."""
from __future__ import annotations

import contextlib
import errno
import io
import re
import resource
import signal
import warnings

import pytest
import torch
from datasets import small_dataset, tiny_config  # noqa: F401 (small_dataset: the `dataset` fixture)

from dlrm.errors import UserError
from dlrm.training.checkpointer import CheckpointFailed
from dlrm.io import storage
from dlrm.io.checkpoint import complete_checkpoints, whole_tables
from dlrm.training.train import train



@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """A full disk for this process: a write past `nbytes` fails with EFBIG (SIGXFSZ ignored)."""
    old_limit, old_handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


def test_a_full_disk_stops_the_run_with_checkpoint_on_error_stop_and_leaves_no_half_checkpoint(tmp_path, dataset):
    cfg = tiny_config(tmp_path, dataset, max_steps=6, checkpoint_every=2, checkpoint_on_error="stop",
                      **{"optim.schedule_check": "warn"})
    # the run's small files fit; a checkpoint's table file (~40 KB) does not
    with file_size_limit(12_000), pytest.raises(CheckpointFailed) as e, contextlib.redirect_stdout(io.StringIO()):
        train(cfg)
    ckpts = tmp_path / "run" / "checkpoints"
    assert re.match(rf"checkpoint {ckpts}/ckpt-0000000\d\d failed: rank 0: \[Errno 27\] File too large: "
                    rf"'{ckpts}/ckpt-0000000\d\d/rank-0\.pt'; its files were removed \(checkpoint_on_error=stop\)$",
                    str(e.value)), str(e.value)
    assert complete_checkpoints(storage.open_store(ckpts)) == []
    assert not [p for p in ckpts.rglob("*") if p.is_file()]  # no shard, no temp file left to fill the disk


def test_a_failed_metadata_write_is_reported_on_the_next_progress_line_and_retried(tmp_path, dataset, monkeypatch):
    """As an S3 PUT that fails: the step-2 checkpoint's metadata.json cannot be written, once."""
    real, failed = storage.LocalStore.put_bytes, []

    def put_bytes(self, key, data):
        if key.endswith("/metadata.json") and not failed:
            failed.append(key)
            raise OSError(errno.EIO, "Input/output error", str(self._path(key)))
        real(self, key, data)

    monkeypatch.setattr(storage.LocalStore, "put_bytes", put_bytes)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        summary = train(tiny_config(tmp_path, dataset, max_steps=6, checkpoint_every=2, checkpoint_keep=0, log_every=1,
                                    **{"optim.schedule_check": "warn"}))
    text = out.getvalue()
    assert failed == ["ckpt-000000002/metadata.json"] and summary["step"] == 6
    ckpts = tmp_path / "run" / "checkpoints"
    line = re.search(r"^step +(\d)/6 .* \| checkpoint ckpt-000000002 FAILED \(rank 0: \[Errno 5\] Input/output error: "
                     rf"'{ckpts}/ckpt-000000002/metadata\.json'\): retrying$", text, re.M)
    assert line, text
    # taken again where the failure was seen: at a check-in (then on that step's line) or when the
    # next save waited for it (that save is the retry, on the line after it)
    names = complete_checkpoints(storage.open_store(ckpts))
    seen = int(line.group(1))
    retried = next(n for n in (f"ckpt-{seen:09d}", f"ckpt-{seen - 1:09d}") if n in names)
    assert "ckpt-000000002" not in names and names[-1] == "ckpt-000000006", (names, text)
    assert sorted(p.name for p in ckpts.iterdir()) == names  # the failed one's files went with it
    assert re.search(r"^checkpoints: \d saved, training waited [\d.]+s for them: [\d.]+% of the run's [\d.]+s$", text, re.M)
    tables, _ = whole_tables(str(ckpts), retried)  # verifies
    assert all(torch.isfinite(t).all() for t in tables.values())


def test_eval_of_the_latest_takes_the_newer_one_when_rotation_removed_it_mid_read(tmp_path, dataset, monkeypatch, capsys):
    """`dlrm eval` without --name found ckpt-2 the latest; before it read it, the run committed
    ckpt-4 and rotated ckpt-2 away. It evaluates ckpt-4 instead of calling ckpt-2 incomplete."""
    import json
    import shutil
    from types import SimpleNamespace

    from dlrm.training import evaluate

    with contextlib.redirect_stdout(io.StringIO()):
        train(tiny_config(tmp_path, dataset, max_steps=4, checkpoint_every=2, checkpoint_keep=0,
                          **{"optim.schedule_check": "warn"}))
    ckpts = tmp_path / "run" / "checkpoints"
    monkeypatch.setattr(evaluate, "latest_checkpoint", lambda uri: "ckpt-000000002")  # listed before the rotation
    shutil.rmtree(ckpts / "ckpt-000000002")  # ... which then removed it
    args = SimpleNamespace(checkpoints=str(ckpts), name=None, dataset=None, max_batches=1)
    assert evaluate.main(args) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == f"{ckpts}/ckpt-000000004"
    with pytest.raises(UserError, match=r"ckpt-000000002/metadata\.json: missing; the checkpoint is incomplete"):
        evaluate.main(SimpleNamespace(**{**vars(args), "name": "ckpt-000000002"}))  # asked for by name: an error


def test_export_dcp_loads_with_torch_distributed_checkpoint_tensor_by_tensor(tmp_path, dataset, capsys):
    """An Adagrad run (per-row optimizer state too) exported by the command; dcp.load into an empty
    state dict of the same layout gives back every tensor; dcp_to_torch_save (the module
    `python -m torch.distributed.checkpoint.format_utils` runs) converts it. The 2-rank export:
    tests/test_dist_train.py's kill test."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from dlrm.__main__ import main
    from dlrm.io.checkpoint import whole_state

    with contextlib.redirect_stdout(io.StringIO()):
        train(tiny_config(tmp_path, dataset, max_steps=2, **{"optim.optimizer": "adagrad", "optim.lr": 0.05,
                                                             "optim.schedule_check": "warn"}))
    ckpts, out = tmp_path / "run" / "checkpoints", tmp_path / "dcp"
    assert main(["export-dcp", "--checkpoints", str(ckpts), "--out", str(out)]) == 0
    assert f"exported {ckpts}/ckpt-000000002 as a torch.distributed.checkpoint to {out}" in capsys.readouterr().out
    state = whole_state(str(ckpts))
    assert set(state[2]["cat_0.bin"]) == {"weight", "sum"}  # row-wise Adagrad's state travels too
    assert_dcp_matches(out, state)
    dcp_to_torch_save(out, tmp_path / "model.pt")
    saved = torch.load(tmp_path / "model.pt", weights_only=False)
    assert saved["step"] == 2 and torch.equal(saved["tables.cat_0.bin.weight"], whole_tables(str(ckpts))[0]["cat_0.bin"])
    assert main(["export-dcp", "--checkpoints", str(ckpts), "--out", str(out)]) == 2  # not over an export
    assert "exists and is not an empty folder" in capsys.readouterr().err


def assert_dcp_matches(out, state) -> None:
    """dcp.load of `out` into zeros of each tensor's shape equals `state` (whole_state's), tensor by tensor."""
    import torch.distributed.checkpoint as dcp

    _, meta, tables, dense = state
    want = {f"tables.{t}.{k}": v for t, named in tables.items() for k, v in named.items()}
    want.update({f"dense.model.{k}": v for k, v in dense["model"].items()})
    got = {k: torch.zeros_like(v) for k, v in want.items()}
    got["step"] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "assuming the intent is to load in a single process"
        dcp.load(got, storage_reader=dcp.FileSystemReader(str(out)), no_dist=True)
    assert got.pop("step") == meta["step"]
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_checkpoint_every_s_is_decided_at_check_ins(tmp_path, dataset):
    """No step interval, a wall-clock one every check-in passes (log_every=1: every step checks in)."""
    with contextlib.redirect_stdout(io.StringIO()):
        train(tiny_config(tmp_path, dataset, max_steps=4, log_every=1, checkpoint_every_s=1e-9, checkpoint_keep=0,
                          **{"optim.schedule_check": "warn"}))
    names = complete_checkpoints(storage.open_store(tmp_path / "run" / "checkpoints"))
    assert names == [f"ckpt-{s:09d}" for s in range(1, 5)]


def test_a_host_without_room_for_the_copy_writes_in_place_said_once(tmp_path, monkeypatch, capsys):
    from dlrm.dist import hostmem
    from dlrm.dist.runtime import Runtime
    from dlrm.training.checkpointer import Checkpointer

    state = [torch.zeros(1000, 8), torch.zeros(1000)]  # 36,000 bytes to copy
    monkeypatch.setattr(hostmem, "host_memory_available", lambda: 20_000)
    assert not Checkpointer(str(tmp_path), Runtime(), keep=1, state=state).background
    assert capsys.readouterr().out == ("note: checkpoints are written in place, training waits for them: a host copy for "
                                       "background writes does not fit (the node of rank 0 needs 35.16 KiB for the copy, "
                                       "19.53 KiB is available)\n")
    monkeypatch.setattr(hostmem, "host_memory_available", lambda: 40_000)
    assert Checkpointer(str(tmp_path), Runtime(), keep=1, state=state).background and not capsys.readouterr().out
