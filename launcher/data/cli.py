"""`python -m launcher data push|pull|verify|stage`: the command module for launcher/__main__.py.

    data push DIR s3://bucket/prefix     upload a folder (resumable), manifest last
    data pull s3://bucket/prefix DIR     download it (resumable), every file hash-checked
    data verify s3://bucket/prefix|DIR   recompute hashes; list missing/extra/corrupt files
    data stage s3://bucket/prefix DIR    pull + verify + write DIR/.verified (init container)

Connection settings: --endpoint-url/--region/--profile, else the standard AWS sources
(AWS_ENDPOINT_URL(_S3), AWS_REGION, AWS_PROFILE, shared config, pod/instance identity).
Timeouts for a tool someone waits on: --connect-timeout (DLRM_S3_CONNECT_TIMEOUT, default 5 s),
--read-timeout (DLRM_S3_READ_TIMEOUT, 20 s without a byte), --max-attempts (AWS_MAX_ATTEMPTS, 3).
"""
from __future__ import annotations

import argparse
import sys

from dlrm.errors import UserError
from dlrm.io.fsutil import local_path
from dlrm.io.s3_settings import (ATTEMPTS_ENV, CONNECT_TIMEOUT_ENV, DEFAULT_ATTEMPTS, DEFAULT_CONNECT_TIMEOUT,
                              DEFAULT_READ_TIMEOUT, READ_TIMEOUT_ENV, Timeouts)

MiB = 1024 * 1024


def _s3_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (MinIO); default: AWS_ENDPOINT_URL(_S3) or AWS")
    p.add_argument("--region", help="bucket region; default: AWS_REGION / shared config")
    p.add_argument("--profile", help="shared-config profile; default: AWS_PROFILE")
    p.add_argument("--workers", type=int, default=8, help="parallel transfers (default 8)")
    p.add_argument("--part-size-mb", type=int, default=16, help="multipart part size in MiB (default 16, min 5)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--connect-timeout", type=float, metavar="S",
                   help=f"seconds to open a connection (default: {CONNECT_TIMEOUT_ENV} or {DEFAULT_CONNECT_TIMEOUT:g})")
    p.add_argument("--read-timeout", type=float, metavar="S",
                   help=f"seconds to wait for a byte of an answer (default: {READ_TIMEOUT_ENV} or "
                        f"{DEFAULT_READ_TIMEOUT:g})")
    p.add_argument("--max-attempts", type=int, metavar="N",
                   help=f"tries per request, the first included (default: {ATTEMPTS_ENV} or {DEFAULT_ATTEMPTS})")


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = sub.add_parser("push", help="upload a folder to s3://bucket/prefix (resumable), manifest last")
    p.add_argument("src", metavar="DIR")
    p.add_argument("uri", metavar="S3_URI")
    p.add_argument("--dry-run", action="store_true", help="report what would be sent; change nothing")
    p.add_argument("--verify-remote", action="store_true",
                   help="hash the content of every object already there (a full read) instead of trusting its "
                        "metadata; use after `verify` reported corrupt objects")
    _s3_options(p)
    p = sub.add_parser("pull", help="download s3://bucket/prefix into a folder (resumable)")
    p.add_argument("uri", metavar="S3_URI")
    p.add_argument("dest", metavar="DIR")
    p.add_argument("--dry-run", action="store_true", help="report what would be fetched; change nothing")
    _s3_options(p)
    p = sub.add_parser("verify", help="recompute hashes of s3://… or a pulled folder against its manifest")
    p.add_argument("target", metavar="S3_URI|DIR")
    _s3_options(p)
    p = sub.add_parser("stage", help="pull, verify and mark a folder usable by the trainer (init container)")
    p.add_argument("uri", metavar="S3_URI")
    p.add_argument("dest", metavar="DIR")
    p.add_argument("--link", metavar="PATH", help="stage into DIR/dataset-<manifest hash> (DIR: a node's stage folder "
                                                  "shared by jobs; locked while staging) and point the symlink PATH at it")
    _s3_options(p)


def main(args: argparse.Namespace) -> int:
    # Imported here so `python -m launcher data --help` does not pay for boto3.
    from launcher.data import transfer

    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    if args.part_size_mb < 5:
        raise UserError(f"--part-size-mb must be at least 5 (the S3 minimum part size), got {args.part_size_mb}")
    timeouts = Timeouts.resolve(args.connect_timeout, args.read_timeout, args.max_attempts)
    opts = transfer.S3Options(endpoint_url=args.endpoint_url, region=args.region, profile=args.profile,
                              workers=args.workers, part_size=args.part_size_mb * MiB,
                              progress=not args.no_progress, timeouts=timeouts)
    action = args.data_command
    # each action has one S3 side and one local side: a URI on the local side is refused here, once,
    # or Path() would make it a local folder named 's3:'
    if action == "push":
        local_path(args.src, "DIR", "launcher data push", f"to copy between prefixes, pull {args.src} to a "
                   "local folder first and push that", what="reads a local folder")
    elif action in ("pull", "stage"):
        local_path(args.dest, "DIR", f"launcher data {action}", f"name a local folder (an S3 to S3 copy: "
                   f"`aws s3 sync {args.uri} {args.dest}`)")
    if action == "push":
        transfer.push(args.src, args.uri, opts, dry_run=args.dry_run, verify_remote=args.verify_remote)
    elif action == "pull":
        transfer.pull(args.uri, args.dest, opts, dry_run=args.dry_run)
    elif action == "stage" and args.link:
        transfer.stage_keyed(args.uri, args.dest, args.link, opts)
    elif action == "stage":
        transfer.stage(args.uri, args.dest, opts)
    else:
        report = transfer.verify(args.target, opts)
        for line in report.lines():
            print(line)
        if not report.ok:
            raise UserError(report.summary(args.target))
        print(f"{args.target}: every file matches the manifest")
    return 0


if __name__ == "__main__":  # `python -m launcher.data.cli` works too
    from launcher.__main__ import main as launcher_main

    sys.exit(launcher_main(["data", *sys.argv[1:]]))
