"""A job's run identity (issue 19): which run its pods continue, rendered into every training command.

    run_id(cfg)   # "dlrm-criteo-fl15-52cb96f5a0e1": the job's name and its config's hash

The trainer continues the run in its output only when that run's recorded run id is this one (a pod the
operator restarted, or the identical job applied again) or when --resume says so; otherwise it refuses
to train over it. train.run_id is always "" in a job config (JobConfig.validate), so the config's hash
is its hash without a run id.
"""
from __future__ import annotations

import hashlib
import json

from dlrm.config import to_dict


def config_sha256(cfg) -> str:
    """The resolved JobConfig's hash: the jobs' dlrm-k8s.io/config-sha256 annotation and the run id's suffix."""
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()


def run_id(cfg) -> str:
    """The same for every pod and restart of this job (and the identical job applied again), different for
    another name or any other setting. Pure: no clock, no randomness."""
    return f"{cfg.name}-{config_sha256(cfg)[:12]}"
