"""What a checkpoint costs training: the stall per checkpoint, write throughput and peak extra host
memory of (a) our synchronous write, (b) our background write (dlrm.training.checkpointer) and
(c) torch.distributed.checkpoint's async_save (AsyncCheckpointerType.PROCESS, on a gloo group), on
the same state: an embedding table and its row-wise Adagrad state (1 GiB+), to a local folder and
to the S3 test endpoint (a moto server in its own process, started here).

    .venv/bin/python benchmarks/bench_checkpoint.py [--gib 1.0] [--rounds 2]

The stall is what the training thread waits for: the whole write for (a), the host copy for (b) and
DCP's staging for (c). Throughput is the state's bytes over the time until the checkpoint is
durable (ours: metadata.json written, every file fsynced and hashed). Every method is measured
`--rounds` times and the last round is reported: the first allocates the host buffers (ours) or
starts the background process (DCP), once per run. DCP has no S3 writer in torch (its
FsspecWriter needs s3fs), so its S3 column is n/a. Ends with one line per target:
`checkpoint stall (<target>): ours X s, dcp Y s, sync Z s`.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.bench_s3 import start_moto  # noqa: E402
from dlrm.dist.runtime import Runtime  # noqa: E402
from dlrm.io.checkpoint import Piece  # noqa: E402
from dlrm.io.s3_settings import READ_TIMEOUT_ENV  # noqa: E402
from dlrm.training.checkpointer import Checkpointer  # noqa: E402
from launcher.procs import free_port  # noqa: E402

GiB = 1 << 30
DIM = 128


EXCLUDE: set[int] = set()  # the moto server: our child, but the S3 endpoint, not the writer's memory


def rss_tree(pid: int) -> int:
    """Resident bytes of `pid` and every process below it (DCP's background process)."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in map(int, (task / "children").read_text().split()):
                total += rss_tree(child) if child not in EXCLUDE else 0
    except (OSError, ValueError):
        pass
    return total


class PeakMemory:
    """The peak of rss_tree(this process) above its value at start, sampled every 5 ms."""

    def __enter__(self):
        self.base = self.peak = rss_tree(os.getpid())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_tree(os.getpid()))

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.extra = self.peak - self.base


def make_state(gib: float) -> dict:
    rows = int(gib * GiB) // (DIM * 4)
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(rows, DIM, generator=g)  # random: nothing compresses or dedups it
    acc = torch.rand(rows, generator=g)
    dense = {"model": {"mlp.weight": torch.randn(512, 512, generator=g)}, "optimizer": {"state": {}, "param_groups": []}}
    return {"weight": weight, "sum": acc, "dense": dense}


def nbytes(state: dict) -> int:
    return state["weight"].nbytes + state["sum"].nbytes


def ours(uri: str, state: dict, rounds: int, background: bool) -> dict:
    """Our writer: (stall s, seconds to durable, peak extra bytes) of its last round."""
    rows = state["weight"].shape[0]
    ckpt = Checkpointer(uri, Runtime(), keep=1)  # one process, no group; rotation as in a run
    pieces = {0: [Piece("t", 0, rows, 0)]}
    meta = {"data": {"epoch": 0, "position": 0}, "config": {}, "plan": {}}
    with PeakMemory() as mem:
        for step in range(1, rounds + 1):
            t0 = time.perf_counter()
            ckpt.save(step, weight=state["weight"], row_state={"sum": state["sum"]}, pieces_by_rank=pieces,
                      dense=state["dense"], meta=meta, final=not background)
            stall = time.perf_counter() - t0
            outcome = ckpt.wait()
            assert outcome and outcome.error is None, outcome
            durable = time.perf_counter() - t0
    return {"stall": stall, "durable": durable, "extra": mem.extra}


def dcp_async(folder: Path, state: dict, rounds: int) -> dict:
    """DCP async_save, PROCESS type, on a one-rank gloo group: the same measures."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    group = dist.new_group(backend="gloo")
    sd = {"tables.t.weight": state["weight"], "tables.t.sum": state["sum"],
          **{f"dense.model.{k}": v for k, v in state["dense"]["model"].items()}}
    with PeakMemory() as mem:
        for step in range(1, rounds + 1):
            path = folder / f"step-{step}"
            t0 = time.perf_counter()
            future = dcp.async_save(sd, storage_writer=dcp.FileSystemWriter(str(path)), process_group=group,
                                    async_checkpointer_type=AsyncCheckpointerType.PROCESS)
            stall = time.perf_counter() - t0
            future.result()
            durable = time.perf_counter() - t0
            if step > 1:
                shutil.rmtree(folder / f"step-{step - 1}", ignore_errors=True)
    return {"stall": stall, "durable": durable, "extra": mem.extra}


def report(target: str, method: str, r: dict, size: int, sync: dict | None) -> None:
    vs = f" ({r['stall'] / sync['stall']:.3f}x sync's stall)" if sync else ""
    speed = f" ({sync['durable'] / r['durable']:.2f}x sync)" if sync else ""
    print(f"{target} {method}: stall {r['stall']:.3f} s{vs} | {size / r['durable'] / 1e6:,.0f} MB/s to durable{speed} | "
          f"peak extra host memory {r['extra'] / GiB:.2f} GiB", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0, help="table + row state size in GiB")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    state = make_state(args.gib)
    size = nbytes(state)
    print(f"state: {size / GiB:.2f} GiB (table [{state['weight'].shape[0]:,}, {DIM}] fp32 + row-wise Adagrad), "
          f"{args.rounds} rounds each, the last reported", flush=True)
    port = free_port()
    moto = start_moto(port)
    EXCLUDE.add(moto.pid)
    # moto assembles a 1 GiB multipart upload in memory, slower than S3's 20 s read timeout on a busy machine
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", **{READ_TIMEOUT_ENV: "600"})
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench")
    summary = []
    try:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
            for target, uri in (("local", f"{tmp}/ckpts"), ("s3", "s3://bench/ckpts")):
                sync = ours(f"{uri}-sync", state, args.rounds, background=False)
                report(target, "sync (ours, in place)", sync, size, None)
                bg = ours(f"{uri}-async", state, args.rounds, background=True)
                report(target, "ours (background)", bg, size, sync)
                dcp_r = None
                if target == "local":
                    dcp_r = dcp_async(Path(tmp) / "dcp", state, args.rounds)
                    report(target, "dcp async_save (process)", dcp_r, size, sync)
                else:
                    print("s3 dcp async_save: n/a (torch's DCP has no S3 writer; FsspecWriter needs s3fs)", flush=True)
                dcp_stall = f"{dcp_r['stall']:.3f} s" if dcp_r else "n/a"
                summary.append(f"checkpoint stall ({target}): ours {bg['stall']:.3f} s, dcp {dcp_stall}, "
                               f"sync {sync['stall']:.3f} s")
    finally:
        moto.kill()
        moto.wait()
    for line in summary:
        print(line)


if __name__ == "__main__":
    main()
