"""Kubeflow Trainer v2 (trainer.kubeflow.org/v1alpha1, on JobSet): the facts the launcher relies on,
defined once, and the Trainer admission rules that no schema expresses.

    errors = trainer_errors(objects)        # every TrainJob / (Cluster)TrainingRuntime among them
    pods = apply_runtime_patches(runtime, job)   # the runtime as Trainer builds the job's JobSet from it

Facts, from Trainer v2.3's sources (pkg/constants, the torch plugin, the JobSet plugin):
a TrainJob references a runtime; the runtime's replicated job labelled
`trainer.kubeflow.org/trainjob-ancestor-step: trainer` (ours: `node`) runs `numNodes` pods
<job>-node-0-<i>, each with a container `node`. For a torch runtime the torch plugin injects
PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK (the Job completion index), PET_MASTER_ADDR
(<job>-node-0-0.<job>, the JobSet headless service) and PET_MASTER_PORT (29500), which torchrun reads.
JobSet labels every pod with `jobset.sigs.k8s.io/jobset-name` (= the TrainJob's name).
"""
from __future__ import annotations

from dlrm.errors import UserError
from dlrm.training.runlog import duration  # one format for an ETA: the trainer's log line's
from launcher import admin_policy
from launcher.command import STAGE_SOURCE_ENV
from launcher.names import DNS1035_LABEL

API_VERSION = "trainer.kubeflow.org/v1alpha1"
GROUP = "trainer.kubeflow.org"
RUNTIME_KINDS = ("TrainingRuntime", "ClusterTrainingRuntime")
DEFAULT_RUNTIME_KIND = "ClusterTrainingRuntime"  # runtimeRef.kind's CRD default
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
ANCESTOR_TRAINER = "trainer"
# The ancestors the TrainingRuntime webhook knows, and the container each must have.
ANCESTOR_CONTAINERS = {"trainer": "node", "dataset-initializer": "dataset-initializer", "model-initializer": "model-initializer"}
NODE = "node"  # the trainer's replicated job and its container
PATCH_MANAGER = "dlrm-k8s.io/launcher"  # our entry in a TrainJob's runtimePatches (keyed by manager)
MASTER_PORT = 29500  # constants.ContainerTrainerPort
# Set by the torch plugin; a TrainJob that sets one is refused by the webhook (TorchRunReservedEnvNames).
PET_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")
COMPLETION_INDEX_FIELD = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
# Trainer's Volcano plugin sets its PodGroup's queue from this annotation (the runtime's, or the TrainJob's).
VOLCANO_QUEUE_ANNOTATION = "scheduling.volcano.sh/queue-name"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
# TrainJob.spec.managedBy's allowed values (CRD CEL rule).
MANAGED_BY = ("trainer.kubeflow.org/trainjob-controller", "kueue.x-k8s.io/multikueue")
# ContainerPatch.env may not target these: their env comes only from spec.trainer / spec.initializer.
NO_ENV_PATCH = ("node", "dataset-initializer", "model-initializer")
# The TrainJobStatus plugin (Trainer v2.2+, feature gate TrainJobStatus) adds to every container of the
# runtime's trainer ancestor the KUBEFLOW_TRAINER_SERVER_* env (dlrm/training/progress.py reads it) and
# this volume at this path: a projected token and the CA. Nothing needs rendering for it but the ancestor
# label; our pods must only leave the name and the path free.
PROGRESS_VOLUME = "kubeflow-trainer-token"
PROGRESS_MOUNT = "/var/run/secrets/kubeflow/trainer"
# The Trainer releases whose admission rules `launcher validate --trainer-version` applies. The default
# is the newest: its rules only add to 2.3's, so objects that pass them are admitted by either.
TRAINER_VERSIONS = ("2.3", "2.4")
DEFAULT_TRAINER_VERSION = "2.4"
# Trainer v2.4 (kubeflow/trainer #4394): a runtime's replicatedJobs[].name is at most 20 characters.
RUNTIME_RJOB_NAME_MAX = {"2.4": 20}


def master_addr(job: str) -> str:
    """The address the torch plugin gives every node: pod <job>-node-0-0 in the JobSet's subdomain <job>."""
    return f"{job}-{NODE}-0-0.{job}"


def pod_selector(job: str, node: int | None = None) -> str:
    """Label selector for a TrainJob's trainer pods (all, or node rank `node`)."""
    selector = f"{JOBSET_NAME_LABEL}={job},{REPLICATED_JOB_LABEL}={NODE}"
    return selector if node is None else f"{selector},{COMPLETION_INDEX_LABEL}={node}"


def trainer_job(runtime: dict) -> tuple[int, dict] | None:
    """(index, replicated job) of the runtime's trainer ancestor, or None."""
    rjobs = (((runtime.get("spec") or {}).get("template") or {}).get("spec") or {}).get("replicatedJobs") or []
    for i, rjob in enumerate(rjobs):
        labels = ((rjob.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if isinstance(rjob, dict) and labels.get(ANCESTOR_LABEL) == ANCESTOR_TRAINER:
            return i, rjob
    return None


# ---------------------------------------------------------------------------------------------
# The Trainer's admission rules (CRD CEL rules and webhooks) that the vendored schema cannot express.


def runtime_errors(rt: dict, label: str, version: str = DEFAULT_TRAINER_VERSION) -> list[str]:
    """TrainingRuntime webhook (validateReplicatedJobs, validatePriorityClassName) and MLPolicy's one-of
    rules, as Trainer `version` applies them."""
    errors = []
    spec = rt.get("spec") or {}
    ml = spec.get("mlPolicy") or {}
    sources = [k for k in ("torch", "mpi", "flux", "jax", "xgboost") if k in ml]
    if len(sources) > 1:
        errors.append(f"{label}: spec.mlPolicy: only one of the policies can be configured, got {', '.join(sources)}")
    if "numNodes" in ml and not (isinstance(ml["numNodes"], int) and ml["numNodes"] >= 1):
        errors.append(f"{label}: spec.mlPolicy.numNodes: must be >= 1, got {ml['numNodes']!r}")
    groups = [k for k in ("coscheduling", "volcano") if k in (spec.get("podGroupPolicy") or {})]
    if len(groups) > 1:
        errors.append(f"{label}: spec.podGroupPolicy: only one of coscheduling, volcano may be specified")
    rjobs = ((spec.get("template") or {}).get("spec") or {}).get("replicatedJobs") or []
    limit = RUNTIME_RJOB_NAME_MAX.get(version)
    for i, rjob in enumerate(rjobs):
        where = f"spec.template.spec.replicatedJobs[{i}]"
        if limit and len(str(rjob.get("name", ""))) > limit:
            errors.append(f"{label}: {where}.name: {rjob.get('name')!r} is {len(str(rjob['name']))} characters; Trainer "
                          f"v{version} allows at most {limit} in a runtime")
        ancestor = (((rjob.get("template") or {}).get("metadata") or {}).get("labels") or {}).get(ANCESTOR_LABEL)
        pod = ((((rjob.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec")) or {}
        if ancestor in ANCESTOR_CONTAINERS:
            if rjob.get("replicas", 1) != 1:
                errors.append(f"{label}: {where}.replicas: always must be 1 for the {ancestor} ancestor, got {rjob.get('replicas')!r}")
            names = [c.get("name") for c in pod.get("containers") or [] if isinstance(c, dict)]
            if ANCESTOR_CONTAINERS[ancestor] not in names:
                errors.append(f"{label}: {where}.template.spec.template.spec.containers: must contain the required "
                              f"container {ANCESTOR_CONTAINERS[ancestor]!r} for the ancestor {ancestor} (got {names})")
        if pod.get("priorityClassName") and ancestor != ANCESTOR_TRAINER:
            errors.append(f"{label}: {where}.template.spec.template.spec.priorityClassName: must not be set on this "
                          f"replicatedJob: only the one labelled with the {ANCESTOR_TRAINER!r} ancestor may set it")
    if trainer_job(rt) is None:
        errors.append(f"{label}: spec.template.spec.replicatedJobs: no replicated job labelled "
                      f"{ANCESTOR_LABEL}: {ANCESTOR_TRAINER}, so a TrainJob's trainer settings would apply to nothing")
    return errors


def trainjob_errors(job: dict, label: str, runtimes: dict[tuple[str, str, str], dict]) -> list[str]:
    """TrainJob CRD rules, the TrainJob webhook and the torch plugin's checks; `runtimes` maps
    (kind, namespace or '', name) to the runtimes rendered alongside, for the cross-object checks."""
    errors = []
    meta, spec = job.get("metadata") or {}, job.get("spec") or {}
    name = meta.get("name", "")
    if not DNS1035_LABEL.accepts(name):
        errors.append(f"{label}: metadata.name: {name!r} must be an RFC 1035 DNS label of at most 63 characters")
    ref = spec.get("runtimeRef") or {}
    kind, group = ref.get("kind", DEFAULT_RUNTIME_KIND), ref.get("apiGroup", GROUP)
    if not ref.get("name"):
        errors.append(f"{label}: spec.runtimeRef.name: must name a TrainingRuntime or ClusterTrainingRuntime")
    if group != GROUP or kind not in RUNTIME_KINDS:
        errors.append(f"{label}: spec.runtimeRef: unsupported runtime {kind}.{group}; expected "
                      f"{' or '.join(RUNTIME_KINDS)} of {GROUP}")
    trainer = spec.get("trainer") or {}
    for key in ("numNodes", "numProcPerNode"):
        if key in trainer and not (isinstance(trainer[key], int) and trainer[key] >= 1):
            errors.append(f"{label}: spec.trainer.{key}: must be >= 1, got {trainer[key]!r}")
    reserved = sorted({e.get("name") for e in trainer.get("env") or [] if isinstance(e, dict)} & set(PET_ENV))
    if reserved:
        errors.append(f"{label}: spec.trainer.env: must not have reserved envs, invalid envs configured: {reserved} "
                      f"(the torch plugin sets them)")
    if "activeDeadlineSeconds" in spec and not (isinstance(spec["activeDeadlineSeconds"], int) and spec["activeDeadlineSeconds"] >= 1):
        errors.append(f"{label}: spec.activeDeadlineSeconds: must be >= 1, got {spec['activeDeadlineSeconds']!r}")
    if "managedBy" in spec and spec["managedBy"] not in MANAGED_BY:
        errors.append(f"{label}: spec.managedBy: must be {' or '.join(MANAGED_BY)}, got {spec['managedBy']!r}")
    errors += _patch_errors(spec.get("runtimePatches") or [], label)
    runtime = runtimes.get((kind, "" if kind == "ClusterTrainingRuntime" else meta.get("namespace", ""), ref.get("name")))
    if runtime is not None:
        errors += _against_runtime(spec, runtime, label, meta.get("annotations"))
    return errors


def _patch_errors(patches: list, label: str) -> list[str]:
    errors = []
    if len(patches) > 16:
        errors.append(f"{label}: spec.runtimePatches: at most 16 entries, got {len(patches)}")
    managers = [p.get("manager") for p in patches if isinstance(p, dict)]
    for m in sorted({m for m in managers if managers.count(m) > 1}):
        errors.append(f"{label}: spec.runtimePatches: manager {m!r} appears more than once (the list is keyed by manager)")
    for i, p in enumerate(patches):
        if not isinstance(p, dict):
            continue
        if not p.get("manager"):
            errors.append(f"{label}: spec.runtimePatches[{i}].manager: must not be empty")
        rjobs = ((((p.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}).get("replicatedJobs")) or []
        for j, rjob in enumerate(rjobs):
            pod = (((rjob.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
            for key in ("containers", "initContainers"):
                for k, c in enumerate(pod.get(key) or []):
                    if c.get("env") and c.get("name") in NO_ENV_PATCH:
                        errors.append(f"{label}: spec.runtimePatches[{i}].trainingRuntimeSpec.template.spec.replicatedJobs[{j}]"
                                      f".template.spec.template.spec.{key}[{k}].env: cannot be set for container "
                                      f"{c.get('name')!r}; its env comes from spec.trainer or spec.initializer")
    return errors


def _against_runtime(spec: dict, runtime: dict, label: str, annotations: dict | None = None) -> list[str]:
    """What a TrainJob needs of the runtime it references, when that runtime is rendered with it (or given)."""
    errors = []
    where = f"{runtime['kind']}/{runtime['metadata'].get('name')}"
    if VOLCANO_QUEUE_ANNOTATION in (annotations or {}) and "volcano" not in ((runtime.get("spec") or {}).get("podGroupPolicy") or {}):
        errors.append(f"{label}: metadata.annotations.{VOLCANO_QUEUE_ANNOTATION}: only Trainer's Volcano plugin reads it, and {where} "
                      f"has no podGroupPolicy.volcano: the job would run outside the queue, not ganged; render it with the "
                      f"runtime's scheduling.gang")
    ml = (runtime.get("spec") or {}).get("mlPolicy") or {}
    if "torch" not in ml:
        errors.append(f"{label}: spec.runtimeRef: {where} has no mlPolicy.torch, so no PET_* environment is injected "
                      f"and torchrun would start a single-node job on every node")
    # The TrainJob's numNodes overrides the runtime's mlPolicy.numNodes (the torch plugin's
    # EnforceMLPolicy); a job relying on the runtime's default must find a valid one there.
    trainer = spec.get("trainer") or {}
    if "numNodes" not in trainer and not (isinstance(ml.get("numNodes", 1), int) and ml.get("numNodes", 1) >= 1):
        errors.append(f"{label}: spec.trainer.numNodes: unset, and {where}'s mlPolicy.numNodes {ml.get('numNodes')!r} is not >= 1")
    names = {rj.get("name") for rj in (((runtime.get("spec") or {}).get("template") or {}).get("spec") or {}).get("replicatedJobs") or []}
    for i, p in enumerate(spec.get("runtimePatches") or []):
        rjobs = ((((p.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}).get("replicatedJobs")) or []
        for j, rjob in enumerate(rjobs):
            at = f"spec.runtimePatches[{i}].trainingRuntimeSpec.template.spec.replicatedJobs[{j}]"
            if rjob.get("name") not in names:
                errors.append(f"{label}: {at}.name: {where} has no replicated job {rjob.get('name')!r} (it has {sorted(n for n in names if n)})")
                continue
            target = _pod_spec(next(r for r in runtime["spec"]["template"]["spec"]["replicatedJobs"] if r.get("name") == rjob.get("name")))
            for key in ("containers", "initContainers"):
                have = [c.get("name") for c in target.get(key) or []]
                for k, c in enumerate(_pod_spec(rjob).get(key) or []):
                    if c.get("name") not in have:  # Trainer would patch nothing: the job runs without what it patched in
                        errors.append(f"{label}: {at}.template.spec.template.spec.{key}[{k}].name: {where}'s {rjob['name']!r} "
                                      f"pod has no {key[:-1] if key == 'containers' else 'init container'} {c.get('name')!r} "
                                      f"(it has {have}): the runtime is not the one the job was rendered for")
    errors += _patched_pod_errors(spec, runtime, label, where)
    return errors + image_errors({"spec": spec}, runtime, label)


def image_errors(job: dict, runtime: dict, label: str) -> list[str]:
    """The admin's image rule (launcher.admin_policy) for a TrainJob against the runtime it references."""
    found = trainer_job(runtime)
    image = next((c.get("image") for c in (_pod_spec(found[1]) if found else {}).get("containers") or []
                  if isinstance(c, dict) and c.get("name") == NODE), None)
    return admin_policy.image_errors(((job.get("spec") or {}).get("trainer") or {}).get("image"), image, runtime, label)


def _pod_spec(rjob: dict) -> dict:
    return ((((rjob.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec")) or {}


def _upsert(items: list, patch: list, key: str) -> list:
    """Trainer's pkg/apply upsert: an item of `patch` replaces the one of the same `key`, else is appended."""
    out = [dict(x) for x in items]
    for item in patch:
        at = next((n for n, x in enumerate(out) if x.get(key) == item.get(key)), None)
        if at is None:
            out.append(dict(item))
        else:
            out[at] = dict(item)
    return out


def apply_runtime_patches(runtime: dict, job: dict) -> dict:
    """The runtime as Trainer builds a TrainJob's JobSet from it: each of the job's runtime patches applied
    to the pods of the replicated job it names (volumes, and each named container's env and volume mounts
    upserted by name; the pod's other patched fields replace the runtime's). A copy; the inputs are untouched."""
    import copy

    rt = copy.deepcopy(runtime)
    rjobs = (((rt.get("spec") or {}).get("template") or {}).get("spec") or {}).get("replicatedJobs")
    patches = (job.get("spec") or {}).get("runtimePatches")
    if not isinstance(rjobs, list) or not isinstance(patches, list):  # malformed: the decoder or the schema says where
        return rt
    by_name = {r.get("name"): r for r in rjobs if isinstance(r, dict)}
    for p in patches:
        for rjob in ((((p.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}).get("replicatedJobs")) or []:
            if not isinstance(rjob, dict) or rjob.get("name") not in by_name:
                continue
            pod = _pod_spec(by_name[rjob["name"]])
            for k, v in _pod_spec(rjob).items():
                if k == "volumes":
                    pod["volumes"] = _upsert(pod.get("volumes") or [], v, "name")
                elif k in ("containers", "initContainers"):
                    for c in v:
                        target = next((t for t in pod.get(k) or [] if t.get("name") == c.get("name")), None)
                        if target is None:
                            continue
                        for field in ("env", "volumeMounts"):
                            if field in c:
                                target[field] = _upsert(target.get(field) or [], c[field], "name")
                        if "securityContext" in c:
                            target["securityContext"] = c["securityContext"]
                else:
                    pod[k] = v
    return rt


def _patched_pod_errors(spec: dict, runtime: dict, label: str, where: str) -> list[str]:
    """The trainer pod as the runtime and the job's patches make it: every mount names a volume, and a
    runtime that stages a dataset is told this job's (else it stages the runtime's default)."""
    found = trainer_job(apply_runtime_patches(runtime, {"spec": spec}))
    if found is None:
        return []
    pod, errors = _pod_spec(found[1]), []
    volumes = {v.get("name") for v in pod.get("volumes") or []}
    for key in ("initContainers", "containers"):
        for c in pod.get(key) or []:
            for m in c.get("volumeMounts") or []:
                if m.get("name") not in volumes:
                    errors.append(f"{label}: {where}'s container {c.get('name')!r}, patched, mounts volume {m.get('name')!r}, "
                                  f"which the pod lacks (it has {sorted(v for v in volumes if v)})")
    patched = {e.get("name") for p in spec.get("runtimePatches") or [] for r in
               ((((p.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}).get("replicatedJobs")) or []
               for c in _pod_spec(r).get("initContainers") or [] for e in c.get("env") or []}
    for c in pod.get("initContainers") or [] if runtime.get("kind") == "ClusterTrainingRuntime" else []:  # not the job's own
        if any(f"$({STAGE_SOURCE_ENV})" in str(a) for a in (c.get("command") or []) + (c.get("args") or [])) \
                and STAGE_SOURCE_ENV not in patched:
            errors.append(f"{label}: spec.runtimePatches: {where} stages a dataset (init container {c.get('name')!r}) and the "
                          f"job does not set its {STAGE_SOURCE_ENV}, so it would train on the runtime's default dataset; render "
                          f"the job with storage.mode=stage")
    return errors


def trainer_errors(objs: list[dict], labels: list[str], version: str = DEFAULT_TRAINER_VERSION,
                   known_runtimes: list[dict] = ()) -> list[str]:
    """Every rule of Trainer `version` over the objects (labels[i] names objs[i] in messages); a TrainJob
    is also checked against `known_runtimes` (those on the cluster: `validate --runtime FILE`)."""
    if version not in TRAINER_VERSIONS:
        raise UserError(f"Trainer version {version!r}: the rules known are those of {', '.join(TRAINER_VERSIONS)}")
    runtimes = {(o["kind"], "" if o["kind"] == "ClusterTrainingRuntime" else (o.get("metadata") or {}).get("namespace", ""),
                 (o.get("metadata") or {}).get("name")): o
                for o in [*known_runtimes, *objs]
                if isinstance(o, dict) and o.get("apiVersion") == API_VERSION and o.get("kind") in RUNTIME_KINDS}
    errors = []
    for obj, label in zip(objs, labels):
        if not isinstance(obj, dict) or obj.get("apiVersion") != API_VERSION:
            continue
        if obj.get("kind") in RUNTIME_KINDS:
            errors += runtime_errors(obj, label, version)
        elif obj.get("kind") == "TrainJob":
            errors += trainjob_errors(obj, label, runtimes)
    return errors


# ---------------------------------------------------------------------------------------------
# status.trainerStatus: what rank 0 reports through Trainer's progress API (dlrm/training/progress.py).


def trainer_status(job: dict) -> dict | None:
    """A TrainJob's reported progress: {progress, eta_s, metrics: {name: value}, updated}; None when unreported."""
    status = ((job.get("status") or {}).get("trainerStatus")) if isinstance(job, dict) else None
    if not isinstance(status, dict):
        return None
    metrics = {str(m.get("name")): str(m.get("value")) for m in status.get("metrics") or [] if isinstance(m, dict)}
    return {"progress": status.get("progressPercentage"), "eta_s": status.get("estimatedRemainingSeconds"),
            "metrics": metrics, "updated": status.get("lastUpdatedTime")}


def trainer_status_lines(job: dict) -> list[str]:
    """`launcher status`'s line for a TrainJob's reported progress (none for a PyTorchJob or before the first report)."""
    s = trainer_status(job)
    if s is None:
        return []
    m = dict(s["metrics"])
    parts = [f"{s['progress']}%" if s["progress"] is not None else "progress unknown"]
    if isinstance(s["eta_s"], int):
        parts.append(f"ETA {duration(s['eta_s'])}")
    if "step" in m:
        parts.append(f"step {m.pop('step')}" + (f"/{m.pop('total_steps')}" if "total_steps" in m else ""))
    parts += [f"{k} {v}" for k, v in m.items()]
    return [f"trainer status (status.trainerStatus, {s['updated'] or 'no time'}): " + " | ".join(parts)]
