"""Datasets and checkpoints on S3: `python -m launcher data push|pull|verify|stage`.

Only the boto3-free pieces are imported here, so the trainer's `is_verified` check stays cheap;
the transfer functions live in launcher.data.transfer.
"""
from launcher.data.manifest import MANIFEST_NAME, MARKER_NAME, is_verified

__all__ = ["MANIFEST_NAME", "MARKER_NAME", "is_verified"]
