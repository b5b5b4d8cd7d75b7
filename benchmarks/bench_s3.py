"""push/pull throughput against a local S3 endpoint (moto server in its own process), next to a
plain boto3 upload_file/download_file of the same bytes in the same run.

    .venv/bin/python benchmarks/bench_s3.py [--mb 200] [--files 4] [--workers 8]

Ours does more work than the baseline (SHA-256 of every file, a HEAD per object to resume, the
manifest, and a hash check of every download), so "ratio >= 1" means that work is paid for by
parallelism. Against moto both sides are bounded by the server's CPU; real S3 has more headroom.
Prints `name: value unit (ratio vs baseline)` lines.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import boto3  # noqa: E402

from launcher.data.transfer import S3Options, pull, push  # noqa: E402
from launcher.procs import free_port  # noqa: E402

MiB = 1024 * 1024


def start_moto(port: int) -> subprocess.Popen:
    # A separate process: an in-process server would share our GIL and skew both numbers.
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("moto server did not start within 30 s")


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=200, help="total data size in MiB")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=endpoint, AWS_EC2_METADATA_DISABLED="true")
    proc = start_moto(port)
    work = Path(tempfile.mkdtemp(prefix="bench_s3_"))
    try:
        src = work / "src"
        src.mkdir()
        per_file = args.mb * MiB // args.files
        for i in range(args.files):
            (src / f"part-{i}.bin").write_bytes(os.urandom(per_file))
        total = per_file * args.files
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="bench")
        names = sorted(p.name for p in src.iterdir())
        opts = S3Options(workers=args.workers, progress=False, log=lambda s: None)

        # Baseline: one boto3 call per file, default TransferConfig, files one after another.
        def base_up():
            for n in names:
                s3.upload_file(str(src / n), "bench", f"plain/{n}")

        def base_down(dest):
            dest.mkdir()
            for n in names:
                s3.download_file("bench", f"plain/{n}", str(dest / n))

        # Rounds interleave baseline and ours and keep each one's best time, so a burst of load
        # from other processes on a shared machine does not decide the ratio.
        best = {"base_up": 1e9, "push": 1e9, "base_down": 1e9, "pull": 1e9}
        for r in range(args.rounds):
            t = {"base_up": timed(base_up),
                 "push": timed(lambda r=r: push(src, f"s3://bench/ours{r}", opts)),
                 "base_down": timed(lambda r=r: base_down(work / f"plain{r}")),
                 "pull": timed(lambda r=r: pull(f"s3://bench/ours{r}", work / f"ours{r}", opts))}
            best = {k: min(best[k], t[k]) for k in best}
            for n in names:
                assert (work / f"ours{r}" / n).read_bytes() == (src / n).read_bytes(), n
            shutil.rmtree(work / f"plain{r}")
            shutil.rmtree(work / f"ours{r}")
            s3.delete_objects(Bucket="bench", Delete={"Objects": [{"Key": f"plain/{n}"} for n in names]})
        resume = timed(lambda: push(src, "s3://bench/ours0", opts))  # all present: hashes + HEADs only

        mb = total / MiB
        print(f"data: {mb:.0f} MiB in {args.files} files, workers {args.workers}, best of {args.rounds} rounds, "
              f"moto at {endpoint}")
        print(f"baseline upload_file: {mb / best['base_up']:.1f} MiB/s (1.00x)")
        print(f"push (sha256 + resume checks + manifest): {mb / best['push']:.1f} MiB/s "
              f"({best['base_up'] / best['push']:.2f}x)")
        print(f"baseline download_file: {mb / best['base_down']:.1f} MiB/s (1.00x)")
        print(f"pull (sha256 check of every file): {mb / best['pull']:.1f} MiB/s "
              f"({best['base_down'] / best['pull']:.2f}x)")
        print(f"push, nothing to send: {resume:.2f} s ({best['base_up'] / resume:.1f}x faster than re-uploading)")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
