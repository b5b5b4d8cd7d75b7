"""Refresh the vendored upstream CRDs (launcher/schemas/*.yaml) from the release they are pinned to.

    python launcher/schemas/vendor_crds.py                          # re-fetch the pinned versions
    python launcher/schemas/vendor_crds.py --tag v1.9.5 --blob ID   # move PyTorchJob to another tag

Each file is fetched from GitHub at a tag and kept only if its git blob id (what `git hash-object`
prints) is the pinned one, so a moved tag or a proxy's rewrite cannot slip in; the file is written
whole or not at all. Update the table in README.md when the tag changes.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # run as a script from a checkout

# file -> (repository, path in it, tag, git blob id)
PINNED = {
    "kubeflow.org_pytorchjobs.yaml": ("kubeflow/trainer", "manifests/base/crds/kubeflow.org_pytorchjobs.yaml",
                                      "v1.9.4", "357f88d3864200c4d85422934bd296e610ab8ce7"),
}


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def fetch(repo: str, path: str, tag: str, timeout: float = 30) -> bytes:
    url = f"https://raw.githubusercontent.com/{repo}/{tag}/{path}"
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - a fixed https URL
        return r.read()


def main(argv: list[str] | None = None) -> int:
    from dlrm.io.fsutil import atomic_write

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tag", help="another release tag for the PyTorchJob CRD")
    ap.add_argument("--blob", help="the git blob id the file must have at --tag")
    args = ap.parse_args(argv)
    if bool(args.tag) != bool(args.blob):
        ap.error("--tag and --blob go together: pin what you fetch")
    for name, (repo, path, tag, blob) in PINNED.items():
        tag, blob = (args.tag, args.blob) if args.tag else (tag, blob)
        data = fetch(repo, path, tag)
        got = git_blob_id(data)
        if got != blob:
            sys.exit(f"error: {repo}@{tag}:{path} has blob {got}, expected {blob}; nothing written")
        atomic_write(HERE / name, data)
        print(f"{HERE / name}: {repo}@{tag} blob {got}, {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
