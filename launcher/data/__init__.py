"""Datasets and checkpoints on S3: `python -m launcher data push|pull|verify|stage`.

The manifest format and the `.verified` record live in dlrm.data.manifest (the trainer checks a
copy with them and must not import the launcher); the transfer functions in launcher.data.transfer.
"""
from dlrm.data.manifest import MANIFEST_NAME, MARKER_NAME, is_verified

__all__ = ["MANIFEST_NAME", "MARKER_NAME", "is_verified"]
