"""The ONE definition of what the containers run and where their volumes are mounted.

The images' Dockerfiles are checked against these (the entrypoints must exist on PATH in
`dlrm-k8s-train` / `dlrm-k8s-preprocess`), and `run-local` rewrites the mount paths below to local
folders by prefix, which is why every path a container needs appears in its args or env and not
only inside the mounted config file.
"""
from __future__ import annotations

from dlrm.training.runlog import MODEL_DIR

# Mount points inside the pods.
CONFIG_DIR = "/etc/dlrm"  # the ConfigMap <name>-config
CONFIG_FILE = "train.yaml"  # its key: the resolved dlrm.config.TrainConfig
DATASET_MOUNT = "/data/dataset"  # pvc, hostPath and mount modes: the dataset, read-only
# stage mode: the node's stage folder (storage.stage_host_path) or an emptyDir. It holds one copy per
# dataset, in dataset-<its manifest's sha256 prefix> (launcher.data.transfer.stage_keyed), so jobs
# staging different datasets onto one node never share a copy and jobs staging the same one reuse it.
STAGE_MOUNT = "/stage"
OUTPUT_MOUNT = "/output"  # the run folder (metrics, plots, checkpoints unless checkpoint_dir is s3://)
TMP_MOUNT = "/tmp"  # writable emptyDir: the root filesystem is read-only
SHM_MOUNT = "/dev/shm"
# The training container's dataset in stage mode: a link in the pod's own /tmp (an emptyDir both
# containers mount) that the stage init container points at this job's copy under STAGE_MOUNT.
STAGED_DATASET = f"{TMP_MOUNT}/staged-dataset"
# The stage container's dataset, as env: a TrainJob patches it per job into an admin's runtime.
STAGE_SOURCE_ENV = "DLRM_STAGE_SOURCE"
PREPROCESS_INPUT = "/data/input"
PREPROCESS_OUTPUT = "/data/output"
# On a training job whose run output is s3:// (train.out): where `launcher status/results` find it.
OUTPUT_ANNOTATION = "dlrm-k8s.io/output"


def train_out(out: str) -> str:
    """The trainer's `out` in the pods: an s3:// run output as given, else the output mount."""
    return out if out.startswith("s3://") else OUTPUT_MOUNT

# torchrun without --nnodes/--node-rank/--master-*: the training operator sets PET_NNODES,
# PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR and PET_MASTER_PORT, which torchrun reads.
TRAIN_COMMAND = ["torchrun", "--module", "dlrm", "train"]
STAGE_COMMAND = ["python", "-m", "launcher", "data", "stage"]
PREPROCESS_COMMAND = ["python", "-m", "dlrm", "preprocess"]
EXPORT_COMMAND = ["python", "-m", "dlrm", "export"]
EXPORT_DIR = f"{OUTPUT_MOUNT}/{MODEL_DIR}"  # the export Job's model, in the run output `launcher results` fetches
# spark-submit needs a file, not a module: the preprocess image ships this one, holding
#   import runpy; runpy.run_module("dlrm", run_name="__main__", alter_sys=True)
SPARK_MAIN_FILE = "local:///opt/dlrm/dlrm_main.py"


def train_args(dataset: str, out: str, run_id: str, resume: bool = False) -> list[str]:
    """Arguments after TRAIN_COMMAND. run_id lets a restarted pod (or the same job applied again) continue
    its own run and no other; --resume only when the user asked to continue a run of another config."""
    return ["--config", f"{CONFIG_DIR}/{CONFIG_FILE}", "--set", f"data.dataset={dataset}", "--set", f"out={out}",
            "--set", f"run_id={run_id}", *(["--resume"] if resume else [])]


def stage_args(source: str = f"$({STAGE_SOURCE_ENV})", root: str = STAGE_MOUNT, link: str = STAGED_DATASET) -> list[str]:
    """Arguments after STAGE_COMMAND: the dataset (by default the container's STAGE_SOURCE_ENV, which
    Kubernetes expands), copied into its own folder under `root`, `link` pointed at that folder."""
    return [source, root, "--link", link]


def preprocess_args(input: str, output: str, frequency_threshold: int, engine: str,
                    vocabulary_days: str = "all") -> list[str]:
    """Arguments after PREPROCESS_COMMAND (or after SPARK_MAIN_FILE, with `preprocess` first)."""
    return ["--input", input, "--out", output, "--frequency-threshold", str(frequency_threshold),
            "--vocabulary-days", vocabulary_days, "--engine", engine]


def export_args(checkpoints: str, table_dtype: str, triton: bool, run: str = OUTPUT_MOUNT, out: str = EXPORT_DIR) -> list[str]:
    """Arguments after EXPORT_COMMAND: wait until the run's trainer wrote its summary, then export its latest checkpoint."""
    return ["--wait-for-run", run, "--checkpoints", checkpoints, "--out", out, "--table-dtype", table_dtype,
            *(["--triton"] if triton else [])]
