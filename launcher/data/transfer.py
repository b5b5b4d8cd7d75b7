"""push / pull / verify / stage: move a dataset folder to and from s3://bucket/prefix, resumably.

Integrity: every object carries its SHA-256 in user metadata (x-amz-meta-sha256), which AWS S3,
MinIO and moto all store unchanged (S3's own "additional checksums" are per-part composites for
multipart uploads, so they cannot be compared with a plain file hash). `_manifest.json` is written
last; until it exists the prefix is an incomplete dataset and pull/verify/stage refuse it.

Metadata can be copied onto other bytes, so push also records each object's ETag in the manifest:
an object whose ETag changed since (replaced behind our back) is sent again, and `--verify-remote`
hashes the remote content itself instead of trusting either.

Resume: push skips an object whose size matches and whose metadata hash equals the local file's
(and whose ETag is the one the manifest recorded), and aborts the multipart uploads a killed push
left open under the prefix; pull skips a local file whose size and hash match the manifest, and
downloads into a temp name that is renamed only after its hash checks out.

A local copy: pull writes the new manifest before any file changes and the `.verified` record
last (see dlrm.data.manifest), so a pull that fails half-way leaves a folder the trainer refuses.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import botocore.exceptions as bex
from s3transfer.manager import TransferManager
from s3transfer.subscribers import BaseSubscriber
from tqdm import tqdm

from dlrm.data.manifest import (MANIFEST_NAME, MARKER_NAME, PARTIAL_TAG, Entry, Manifest, Report, check_spec_files,
                                is_content, is_verified, key_problem, local_file_ok, scan_dir, sha256_file,
                                write_record)
from dlrm.errors import UserError
from dlrm.io.fsutil import atomic_write, parse_s3_uri
from dlrm.io.s3_settings import Timeouts
from dlrm.io.storage_s3 import MiB, check_bucket, make_client, s3_errors, transfer_config

META_KEY = "sha256"  # user metadata name: sent as the x-amz-meta-sha256 header


@dataclass(frozen=True)  # a default argument value, shared by every call
class S3Options:
    endpoint_url: str | None = None  # None: AWS_ENDPOINT_URL(_S3) or the AWS default
    region: str | None = None
    profile: str | None = None
    workers: int = 8
    part_size: int = 16 * MiB
    progress: bool = True
    timeouts: Timeouts | None = None  # None: Timeouts.resolve() (DLRM_S3_*/AWS_MAX_ATTEMPTS, else defaults)
    log: Callable[[str], None] = field(default=lambda s: print(s, flush=True))


@dataclass
class Result:
    sent: int = 0  # files uploaded/downloaded
    skipped: int = 0  # already present with the right size and hash
    bytes: int = 0  # bytes of the files sent


def _bar(opts: S3Options, desc: str, total: int) -> tqdm:
    # Off a terminal (an init container's log) redraw rarely, or the log fills with bars.
    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not opts.progress, file=sys.stderr, mininterval=0.2 if tty else 30, leave=tty)


class _Progress(BaseSubscriber):
    def __init__(self, bar: tqdm, lock: threading.Lock):
        self.bar, self.lock = bar, lock

    def on_progress(self, future, bytes_transferred, **kwargs):
        with self.lock:  # s3transfer calls this from its worker threads
            self.bar.update(bytes_transferred)


def _join(prefix: str, rel: str) -> str:
    return f"{prefix}/{rel}" if prefix else rel


def _uri(bucket: str, prefix: str, rel: str = "") -> str:
    return "s3://" + "/".join(p for p in (bucket, prefix, rel) if p)


def _client(opts: S3Options, client):
    return client or make_client(opts.endpoint_url, opts.region, opts.profile, opts.workers, opts.timeouts)


def list_objects(client, bucket: str, prefix: str) -> dict[str, tuple[int, str]]:
    """Relative key -> (size, ETag) of every object under the prefix."""
    out = {}
    base = prefix + "/" if prefix else ""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
        for o in page.get("Contents", []):
            out[o["Key"][len(base):]] = (o["Size"], o.get("ETag", "").strip('"'))
    return out


def list_sizes(client, bucket: str, prefix: str) -> dict[str, int]:
    """Relative key -> size of every object under the prefix."""
    return {k: size for k, (size, _) in list_objects(client, bucket, prefix).items()}


def _old_manifest(client, bucket: str, prefix: str, remote) -> dict[str, Entry]:
    """The entries of the manifest already at the prefix (for their ETags), or none."""
    if MANIFEST_NAME not in remote:
        return {}
    try:
        return Manifest.from_bytes(fetch_manifest(client, bucket, prefix), _uri(bucket, prefix, MANIFEST_NAME)).by_key()
    except UserError:  # unreadable or gone meanwhile: trust nothing it said
        return {}


def abort_stale_uploads(client, bucket: str, prefix: str, log) -> int:
    """Abort the multipart uploads a killed push left open under the prefix (their parts are
    stored, and billed, until aborted); returns how many."""
    base = prefix + "/" if prefix else ""
    n = 0
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=base):
        for u in page.get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
            n += 1
    if n:
        log(f"aborted {n} unfinished multipart upload(s) under {_uri(bucket, prefix)} (left by an interrupted push)")
    return n


def fetch_manifest(client, bucket: str, prefix: str) -> bytes:
    uri = _uri(bucket, prefix)
    try:
        return client.get_object(Bucket=bucket, Key=_join(prefix, MANIFEST_NAME))["Body"].read()
    except bex.ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise UserError(f"incomplete dataset: no {MANIFEST_NAME} under {uri}; push it again") from None
        raise


def push(src: str | os.PathLike, uri: str, opts: S3Options = S3Options(), *, client=None,
         dry_run: bool = False, verify_remote: bool = False) -> Result:
    """Upload every file under `src` to `uri`, skipping objects already there, then the manifest.
    `verify_remote`: hash each object that would be skipped (a GET of every byte) instead of
    trusting its metadata and ETag."""
    src, (bucket, prefix) = Path(src), parse_s3_uri(uri)
    # Every local check before the first request: nothing is sent from a dataset that is refused.
    sizes = scan_dir(src)
    if not sizes:
        raise UserError(f"no files under {src}; nothing to push")
    check_spec_files(src)
    for rel in sizes:
        if problem := key_problem(_join(prefix, rel)):
            raise UserError(f"{src / rel}: the object key {_uri(bucket, prefix, rel)} is too long ({problem})")
    with s3_errors(uri):
        client = _client(opts, client)
        check_bucket(client, uri)
        if not dry_run:
            abort_stale_uploads(client, bucket, prefix, opts.log)
        remote = list_objects(client, bucket, prefix)
        old = _old_manifest(client, bucket, prefix, remote)
        hashes, todo = _hash_and_upload(client, src, bucket, prefix, sizes, remote, old, opts, dry_run, verify_remote)
        res = Result(sent=len(todo), skipped=len(sizes) - len(todo), bytes=sum(sizes[r] for r in todo))
        if dry_run:
            opts.log(f"dry run: would send {res.sent} files ({res.bytes / MiB:.1f} MiB), "
                     f"skip {res.skipped} already at {uri}")
            return res
        etags = {k: etag for k, (_, etag) in list_objects(client, bucket, prefix).items()}
        manifest = Manifest(tuple(Entry(k, sizes[k], hashes[k], etags.get(k) or None) for k in sizes)).to_bytes()
        client.put_object(Bucket=bucket, Key=_join(prefix, MANIFEST_NAME), Body=manifest,
                          ContentType="application/json")
    opts.log(f"pushed {src} -> {uri}: sent {res.sent} files ({res.bytes / MiB:.1f} MiB), "
             f"skipped {res.skipped} already there; wrote {MANIFEST_NAME}")
    extra = sorted(k for k in remote if is_content(k) and k not in sizes)
    if extra:
        opts.log(f"note: {len(extra)} objects under {uri} are not in {src} (e.g. {extra[0]}); "
                 "verify will report them as extra")
    return res


def _hash_and_upload(client, src, bucket, prefix, sizes, remote, old, opts, dry_run, verify_remote):
    """Hash each file and start its upload as soon as its hash is known (the hash goes into the
    upload's metadata), so a big push sends bytes from the first file on instead of reading the
    whole dataset first. Returns every file's hash and the files sent (or to send, on a dry run)."""
    hashes, todo, futures = {}, [], []
    bar, lock = _bar(opts, "push", sum(sizes.values())), threading.Lock()

    def check(rel):  # the hash, and whether the object there already has that size and hash
        h = sha256_file(src / rel)
        size, etag = remote.get(rel, (None, None))
        if size != sizes[rel]:
            return rel, h, False
        if verify_remote:
            return rel, h, hash_object(client, bucket, _join(prefix, rel)) == h
        if rel in old and old[rel].etag and old[rel].etag != etag:
            return rel, h, False  # replaced since our manifest was written, whatever its metadata says
        head = client.head_object(Bucket=bucket, Key=_join(prefix, rel))
        return rel, h, head.get("Metadata", {}).get(META_KEY) == h

    tm = contextlib.nullcontext() if dry_run else TransferManager(client, transfer_config(opts.workers, opts.part_size))
    pool = ThreadPoolExecutor(opts.workers)
    # Leaving the TransferManager's `with` on an exception cancels the uploads still queued.
    with bar, tm:
        try:
            for done in as_completed([pool.submit(check, rel) for rel in sizes]):
                rel, hashes[rel], present = done.result()
                if present:
                    with lock:
                        bar.update(sizes[rel])  # already in place: counts as done
                    continue
                todo.append(rel)
                if dry_run:
                    continue
                if not futures and MANIFEST_NAME in remote:
                    # The dataset is about to change: drop the old manifest before the first
                    # object does, so nobody uses a half-updated prefix as complete.
                    client.delete_object(Bucket=bucket, Key=_join(prefix, MANIFEST_NAME))
                futures.append(tm.upload(str(src / rel), bucket, _join(prefix, rel),
                                         extra_args={"Metadata": {META_KEY: hashes[rel]}},
                                         subscribers=[_Progress(bar, lock)]))
            for f in futures:
                f.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return hashes, sorted(todo)


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.name}{PARTIAL_TAG}")


def _clear_partials(dest: Path) -> None:
    """Remove temp files a killed pull left behind (ours only: their names carry PARTIAL_TAG)."""
    for dirpath, _, files in os.walk(dest):
        for name in files:
            if PARTIAL_TAG in name:
                Path(dirpath, name).unlink(missing_ok=True)


def _pull(client, bucket, prefix, manifest_bytes, dest: Path, opts: S3Options, dry_run=False) -> Result:
    manifest = Manifest.from_bytes(manifest_bytes, _uri(bucket, prefix, MANIFEST_NAME))
    entries = manifest.entries
    with ThreadPoolExecutor(opts.workers) as pool:
        have = list(pool.map(lambda e: local_file_ok(dest / e.key, e), entries))
    todo = [e for e, ok in zip(entries, have) if not ok]
    res = Result(sent=len(todo), skipped=len(entries) - len(todo), bytes=sum(e.size for e in todo))
    if dry_run:
        opts.log(f"dry run: would fetch {res.sent} files ({res.bytes / MiB:.1f} MiB), "
                 f"keep {res.skipped} already in {dest}")
        return res
    dest.mkdir(parents=True, exist_ok=True)
    _clear_partials(dest)
    local_manifest = dest / MANIFEST_NAME
    if todo or not local_manifest.is_file() or local_manifest.read_bytes() != manifest_bytes:
        # Files are about to change: withdraw the record first, then put the NEW manifest in
        # place, so from here until the record is rewritten the folder holds a manifest its files
        # do not (yet) match, and the trainer refuses it (dlrm.data.manifest.require_verified).
        (dest / MARKER_NAME).unlink(missing_ok=True)
        atomic_write(local_manifest, manifest_bytes, tag=PARTIAL_TAG)
    corrupt = _download(client, bucket, prefix, todo, dest, opts)
    if corrupt:
        names = ", ".join(_uri(bucket, prefix, k) for k in sorted(corrupt))
        raise UserError(f"corrupt object(s), sha256 differs from the manifest: {names}; "
                        "push the dataset again with --verify-remote")
    write_record(dest, manifest_bytes)  # last: every file was hashed (kept or fetched) just now
    return res


def _download(client, bucket, prefix, todo: list[Entry], dest: Path, opts: S3Options) -> list[str]:
    """Fetch `todo` into temp names, check each hash and rename it into place; return bad keys."""
    corrupt, lock = [], threading.Lock()
    bar = _bar(opts, "pull", sum(e.size for e in todo))

    class Finish(BaseSubscriber):
        # Runs in the transfer thread as each file completes, so hashing overlaps the network.
        def __init__(self, entry):
            self.entry = entry

        def on_done(self, future, **kwargs):
            tmp, path = _partial(dest / self.entry.key), dest / self.entry.key
            try:
                future.result()
            except BaseException:
                return  # the error surfaces from result() in the main thread
            if sha256_file(tmp) == self.entry.sha256:
                os.replace(tmp, path)
            else:
                tmp.unlink(missing_ok=True)
                with lock:
                    corrupt.append(self.entry.key)

    # Leaving the `with` joins s3transfer's threads, so every Finish.on_done has run by then.
    with bar, TransferManager(client, transfer_config(opts.workers, opts.part_size)) as tm:
        futures = []
        for e in todo:
            (dest / e.key).parent.mkdir(parents=True, exist_ok=True)
            futures.append(tm.download(bucket, _join(prefix, e.key), str(_partial(dest / e.key)),
                                       subscribers=[_Progress(bar, lock), Finish(e)]))
        for e, f in zip(todo, futures):
            try:
                f.result()
            except OSError as err:  # a full disk: name the file, not s3transfer's temp name (or nothing)
                raise OSError(err.errno, f"{err.strerror or err} (while downloading it; {dest} is not usable "
                              "until a pull or stage completes)", str(dest / e.key)) from None
    return corrupt


def pull(uri: str, dest: str | os.PathLike, opts: S3Options = S3Options(), *, client=None,
         dry_run: bool = False) -> Result:
    """Download the dataset at `uri` into `dest`, skipping files already there and intact."""
    bucket, prefix = parse_s3_uri(uri)
    with s3_errors(uri):
        client = _client(opts, client)
        check_bucket(client, uri)
        res = _pull(client, bucket, prefix, fetch_manifest(client, bucket, prefix), Path(dest), opts, dry_run)
    if not dry_run:
        opts.log(f"pulled {uri} -> {dest}: fetched {res.sent} files ({res.bytes / MiB:.1f} MiB), "
                 f"kept {res.skipped} already there")
    return res


def hash_object(client, bucket: str, key: str) -> str:
    """The sha256 of an object's content, read in full (its metadata is not trusted)."""
    h = hashlib.sha256()
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    for chunk in iter(lambda: body.read(MiB), b""):
        h.update(chunk)
    return h.hexdigest()


def _compare(manifest: Manifest, sizes: dict[str, int], hash_of: Callable[[str], str], opts) -> Report:
    want = manifest.by_key()
    missing = sorted(k for k in want if k not in sizes)
    extra = sorted(k for k in sizes if k not in want)
    corrupt = [f"{k}: size {sizes[k]}, manifest says {want[k].size}"
               for k in sorted(want) if k in sizes and sizes[k] != want[k].size]
    check = [want[k] for k in sorted(want) if sizes.get(k) == want[k].size]
    bar, lock = _bar(opts, "verify", sum(e.size for e in check)), threading.Lock()

    def one(e):
        h = hash_of(e.key)
        with lock:
            bar.update(e.size)
        return None if h == e.sha256 else f"{e.key}: sha256 differs from the manifest"

    with bar, ThreadPoolExecutor(opts.workers) as pool:
        corrupt += [c for c in pool.map(one, check) if c]
    return Report(missing, extra, sorted(corrupt))


def verify(target: str, opts: S3Options = S3Options(), *, client=None) -> Report:
    """Recompute every file's hash at `target` (s3://… or a pulled folder) against its manifest."""
    if target.startswith("s3://"):
        bucket, prefix = parse_s3_uri(target)
        with s3_errors(target):
            client = _client(opts, client)
            check_bucket(client, target)
            manifest = Manifest.from_bytes(fetch_manifest(client, bucket, prefix), target)
            sizes = {k: s for k, s in list_sizes(client, bucket, prefix).items() if is_content(k)}
            return _compare(manifest, sizes, lambda k: hash_object(client, bucket, _join(prefix, k)), opts)
    root = Path(target)
    if not (root / MANIFEST_NAME).is_file():
        raise UserError(f"no {MANIFEST_NAME} in {root}: pull or stage the dataset first, or verify its s3:// URI")
    manifest = Manifest.from_bytes((root / MANIFEST_NAME).read_bytes(), str(root / MANIFEST_NAME))
    return _compare(manifest, scan_dir(root), lambda k: sha256_file(root / k), opts)


def stage(uri: str, dest: str | os.PathLike, opts: S3Options = S3Options(), *, client=None,
          manifest_bytes: bytes | None = None) -> Result:
    """The init container's step: pull `uri` into `dest`, every file checked against the manifest
    (`manifest_bytes` when the caller already fetched it), the `.verified` record written last.
    Skipped when the local manifest is the remote one and the record still matches every file's size
    and mtime (a file changed since is hashed again)."""
    bucket, prefix = parse_s3_uri(uri)
    dest = Path(dest)
    with s3_errors(uri):
        client = _client(opts, client)
        if manifest_bytes is None:
            check_bucket(client, uri)
            manifest_bytes = fetch_manifest(client, bucket, prefix)
        manifest = Manifest.from_bytes(manifest_bytes, _uri(bucket, prefix, MANIFEST_NAME))
        local = dest / MANIFEST_NAME
        if local.is_file() and local.read_bytes() == manifest_bytes and is_verified(dest):
            opts.log(f"{dest} already holds verified {uri}; nothing to do")
            return Result(skipped=len(manifest.entries))
        # _pull withdraws a stale record before changing any file and hashes every file it keeps
        # or fetches against the manifest: that is the verification, and a second full read of
        # the dataset here would only double the init container's time.
        res = _pull(client, bucket, prefix, manifest_bytes, dest, opts)
    extra = sorted(k for k in scan_dir(dest) if k not in manifest.by_key())
    if extra:
        opts.log(f"note: {len(extra)} files in {dest} are not in the manifest (e.g. {extra[0]}); left as is")
    opts.log(f"staged {uri} -> {dest}: fetched {res.sent} files ({res.bytes / MiB:.1f} MiB), "
             f"kept {res.skipped}; record {MARKER_NAME} written")
    return res


STAGED_PREFIX = "dataset-"  # <stage root>/dataset-<manifest sha256, 16 hex>: one copy per dataset content


def stage_keyed(uri: str, root: str | os.PathLike, link: str | os.PathLike, opts: S3Options = S3Options(), *,
                client=None) -> Path:
    """Stage `uri` into its own folder under `root` (a node's stage folder shared by every job there),
    named by its manifest's hash, and point `link` (in the pod's own /tmp) at it. Jobs staging different
    datasets (or one dataset pushed again with other content) get different folders; jobs staging the
    same one take turns under a lock on the node, and the second finds the first's verified copy."""
    import fcntl

    bucket, prefix = parse_s3_uri(uri)
    root, link = Path(root), Path(link)
    if not root.is_dir() or not os.access(root, os.W_OK | os.X_OK):
        raise UserError(f"stage folder {root}: {'not a folder' if not root.is_dir() else 'not writable'} for uid "
                        f"{os.getuid()}: create it on every node, owned by that user "
                        f"(install -d -o {os.getuid()} -g {os.getgid()} -m 0775 PATH; see the admin bundle's README)")
    with s3_errors(uri):
        client = _client(opts, client)
        check_bucket(client, uri)
        manifest_bytes = fetch_manifest(client, bucket, prefix)
    dest = root / f"{STAGED_PREFIX}{hashlib.sha256(manifest_bytes).hexdigest()[:16]}"
    with open(root / f".{dest.name}.lock", "a") as lock:  # flock: released by the kernel if this pod dies
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            opts.log(f"another pod on this node is staging the same dataset into {dest}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        stage(uri, dest, opts, client=client, manifest_bytes=manifest_bytes)
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(dest.resolve(), target_is_directory=True)
    os.replace(tmp, link)  # a link of an earlier attempt of this pod is replaced whole
    opts.log(f"{link} -> {dest}")
    return dest
