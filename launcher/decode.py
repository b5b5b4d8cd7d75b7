"""Rendered objects -> the job plan: the decoders of `run-local FILE` and `images/docker_job.py FILE`.

    plan = load_plan_file("job.yaml")        # one or many documents, or a `kind: List`
    plan = plan_from_objects(objects)        # its one PyTorchJob, or its TrainJob and runtime

The inverse of launcher/encode.py: nothing else interprets a manifest. Every field read is
type-checked, and every malformed one is a one-line UserError naming where it is.
"""
from __future__ import annotations

from dlrm.errors import UserError
from dlrm.io.fsutil import load_yaml_file_all
from launcher.plan import (MASTER_PORT, NODE_ROLE, PORT_NAME, ROLES, Container, EnvVar, JobPlan, Mount, Pod, Port,
                           ReplicaGroup, RunPolicy, Volume)
from launcher.podblock import SPEC_FIELDS
from launcher.trainjob import (ANCESTOR_LABEL, ANCESTOR_TRAINER, DEFAULT_RUNTIME_KIND, MASTER_PORT as TRAINER_PORT, NODE,
                               apply_runtime_patches)


_REQUIRED = object()
_NOUNS = {dict: "a mapping", list: "a list", str: "a string", int: "an integer", bool: "true or false"}


def the_job(objects: list[dict], kind: str, where: str) -> tuple[dict, str, str, dict]:
    """The one object of `kind` among `objects`: (its metadata, name, "<kind> <name>" for messages, spec)."""
    jobs = [o for o in objects if o.get("kind") == kind]
    if len(jobs) != 1:
        kinds = sorted({str(o.get("kind")) for o in objects})
        raise UserError(f"{where}: expected exactly one {kind} among the objects, found {len(jobs)} "
                        f"(kinds: {', '.join(kinds) or 'none'})")
    job = jobs[0]
    meta = _typed(job.get("metadata"), dict, f"{kind}.metadata", {})
    name = _typed(meta.get("name"), str, f"{kind}.metadata.name", "")
    if not name:
        raise UserError(f"{where}: the {kind} has no metadata.name")
    label = f"{kind} {name}"
    return meta, name, label, _typed(job.get("spec"), dict, f"{label}: spec", {})


def _typed(value, tp, where: str, default=_REQUIRED):
    """`value` if it is a `tp`; `default` if it is absent (None) and a default is given; else a UserError."""
    if value is None and default is not _REQUIRED:
        return default
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        noun = " or ".join(_NOUNS.get(t, t.__name__) for t in (tp if isinstance(tp, tuple) else (tp,)))
        raise UserError(f"{where}: expected {noun}, got {value!r}"[:300])
    return value


def _strings(value, where: str) -> list[str]:
    items = _typed(value, list, where, [])
    return [str(_typed(v, (str, int, float), f"{where}[{i}]")) for i, v in enumerate(items)]


def _container(raw, where: str) -> Container:
    c = _typed(raw, dict, where)
    env = []
    for i, e in enumerate(_typed(c.get("env"), list, f"{where}.env", [])):
        e = _typed(e, dict, f"{where}.env[{i}]")
        name = _typed(e.get("name"), str, f"{where}.env[{i}].name")
        if "value" in e:
            env.append(EnvVar(name, str(e["value"])))
        else:
            env.append(EnvVar(name, value_from=_typed(e.get("valueFrom"), dict, f"{where}.env[{i}].valueFrom", {})))
    mounts = []
    for i, m in enumerate(_typed(c.get("volumeMounts"), list, f"{where}.volumeMounts", [])):
        m = _typed(m, dict, f"{where}.volumeMounts[{i}]")
        name, path = m.get("name"), m.get("mountPath")
        if not isinstance(name, str) or not isinstance(path, str):
            raise UserError(f"{where}.volumeMounts[{i}]: needs a name and a mountPath, got {m!r}"[:300])
        mounts.append(Mount(name, path, bool(m.get("readOnly", False)), _typed(m.get("subPath"), str, f"{where}.volumeMounts[{i}].subPath", "")))
    ports = [Port(str(p.get("name", "")), _typed(p.get("containerPort"), int, f"{where}.ports[{i}].containerPort", 0))
             for i, p in enumerate(_typed(c.get("ports"), list, f"{where}.ports", [])) if isinstance(p, dict)]
    resources = _typed(c.get("resources"), dict, f"{where}.resources", {})
    return Container(
        name=_typed(c.get("name"), str, f"{where}.name", "?"), image=_typed(c.get("image"), str, f"{where}.image", ""),
        command=_strings(c.get("command"), f"{where}.command"), args=_strings(c.get("args"), f"{where}.args"),
        env=env, env_from=_typed(c.get("envFrom"), list, f"{where}.envFrom", []), mounts=mounts, ports=ports,
        requests=_typed(resources.get("requests"), dict, f"{where}.resources.requests", {}),
        limits=_typed(resources.get("limits"), dict, f"{where}.resources.limits", {}),
        security=_typed(c.get("securityContext"), dict, f"{where}.securityContext", {}),
        pull_policy=str(c.get("imagePullPolicy", "IfNotPresent")),
        working_dir=_typed(c.get("workingDir"), str, f"{where}.workingDir", ""),
        sidecar=c.get("restartPolicy") == "Always")


def _pod(raw, where: str) -> Pod:
    template = _typed(raw, dict, where, {})
    spec = _typed(template.get("spec"), dict, f"{where}.spec", {})
    volumes = []
    for i, v in enumerate(_typed(spec.get("volumes"), list, f"{where}.spec.volumes", [])):
        v = _typed(v, dict, f"{where}.spec.volumes[{i}]")
        kinds = [k for k in v if k != "name"]
        if not isinstance(v.get("name"), str) or len(kinds) != 1:
            raise UserError(f"{where}.spec.volumes[{i}]: expected a name and one volume source, got {sorted(v)}")
        volumes.append(Volume(v["name"], kinds[0], _typed(v[kinds[0]], dict, f"{where}.spec.volumes[{i}].{kinds[0]}", {})))
    return Pod(
        containers=[_container(c, f"{where}.spec.containers[{i}]")
                    for i, c in enumerate(_typed(spec.get("containers"), list, f"{where}.spec.containers", []))],
        init_containers=[_container(c, f"{where}.spec.initContainers[{i}]")
                         for i, c in enumerate(_typed(spec.get("initContainers"), list, f"{where}.spec.initContainers", []))],
        volumes=volumes, security=_typed(spec.get("securityContext"), dict, f"{where}.spec.securityContext", {}),
        host_network=_typed(spec.get("hostNetwork"), bool, f"{where}.spec.hostNetwork", False),
        dns_policy=_typed(spec.get("dnsPolicy"), str, f"{where}.spec.dnsPolicy", ""),
        spec_extra={k: spec[k] for k in SPEC_FIELDS if k in spec},
        grace_seconds=_typed(spec.get("terminationGracePeriodSeconds"), int, f"{where}.spec.terminationGracePeriodSeconds", None))


def _nproc(value, pod: Pod) -> int:
    """spec.nprocPerNode as a number. 'auto'/'gpu' would mean every CPU core off a GPU node: the GPU count instead."""
    text = str(value if value is not None else "1")
    if text.isdigit() and int(text) >= 1:
        return int(text)
    gpus = pod.main.limits.get("nvidia.com/gpu")
    return int(gpus) if str(gpus).isdigit() and int(gpus) >= 1 else 1


def plan_from_objects(objects: list, where: str = "objects") -> JobPlan:
    """The plan of an already rendered job: its one PyTorchJob, and the ConfigMaps beside it."""
    if not isinstance(objects, list) or not all(isinstance(o, dict) for o in objects):
        bad = next((o for o in objects if not isinstance(o, dict)), objects) if isinstance(objects, list) else objects
        raise UserError(f"{where}: expected Kubernetes objects (mappings), got {type(bad).__name__} {str(bad)[:60]!r}")
    if any(o.get("kind") == "TrainJob" for o in objects):
        return plan_from_trainjob(objects, where)
    meta, name, label, spec = the_job(objects, "PyTorchJob", where)
    specs = _typed(spec.get("pytorchReplicaSpecs"), dict, f"{label}: spec.pytorchReplicaSpecs", {})
    unknown = sorted(set(map(str, specs)) - set(ROLES))
    if unknown or "Master" not in specs:
        raise UserError(f"{label}: replica types {sorted(map(str, specs))}; expected Master and optionally Worker")
    groups = []
    for role in ROLES:
        if role not in specs:
            continue
        rs = _typed(specs[role], dict, f"{label}: spec.pytorchReplicaSpecs.{role}")
        n = _typed(rs.get("replicas"), int, f"{label}: {role}.replicas", 1)
        if role == "Master" and n != 1:
            raise UserError(f"{label}: Master has replicas={n}; the operator allows exactly 1")
        if n < 0:
            raise UserError(f"{label}: {role}.replicas must be >= 0, got {n}")
        pod = _pod(rs.get("template"), f"{label}: {role}.template")
        pod.main  # noqa: B018 - raises naming the missing `pytorch` container
        groups.append(ReplicaGroup(role, n, str(rs.get("restartPolicy", "Never")), pod))
    policy = _typed(spec.get("runPolicy"), dict, f"{label}: spec.runPolicy", {})
    main = groups[0].pod.main
    port = next((p.port for p in main.ports if p.name == PORT_NAME and p.port), MASTER_PORT)
    return JobPlan(name=name, namespace=str(meta.get("namespace", "default")), groups=groups,
                   nproc_per_node=_nproc(spec.get("nprocPerNode"), groups[0].pod), master_port=port,
                   run_policy=RunPolicy(_typed(policy.get("backoffLimit"), int, f"{label}: runPolicy.backoffLimit", None),
                                        _typed(policy.get("activeDeadlineSeconds"), int, f"{label}: runPolicy.activeDeadlineSeconds", None)),
                   config_maps=config_maps_of(objects), objects=list(objects))


def config_maps_of(objects: list[dict]) -> dict[str, dict[str, str]]:
    """What each rendered ConfigMap holds: {name: {key: text}}."""
    config_maps = {}
    for o in objects:
        if o.get("kind") == "ConfigMap":
            cm_name = _typed(_typed(o.get("metadata"), dict, "ConfigMap.metadata", {}).get("name"), str, "ConfigMap.metadata.name", "")
            config_maps[cm_name] = {str(k): str(v) for k, v in _typed(o.get("data"), dict, f"ConfigMap {cm_name}: data", {}).items()}
    return config_maps


def load_plan_file(path) -> JobPlan:
    """A rendered YAML file (one or many documents, or a `kind: List`), or the folder `render --out`
    wrote (its NN-<kind>-<name>.yaml files, in order), as a plan."""
    from pathlib import Path

    from launcher.render import RENDERED_FILE

    if Path(path).is_dir():
        files = sorted(f for f in Path(path).iterdir() if RENDERED_FILE.match(f.name) and f.is_file())
        if not files:
            raise UserError(f"{path}: a folder without rendered files (NN-<kind>-<name>.yaml, as `python -m launcher "
                            f"render --out {path}` writes them)")
        docs = [d for f in files for d in load_yaml_file_all(f, "rendered YAML file (from `python -m launcher render`)", UserError)]
    else:
        docs = load_yaml_file_all(path, "rendered YAML file (from `python -m launcher render`)", UserError)
    objs = []
    for i, d in enumerate(docs):
        if not isinstance(d, dict):
            raise UserError(f"{path}: document {i + 1} is a {type(d).__name__}, expected a Kubernetes object (a mapping)")
        if d.get("kind") == "List":
            items = d.get("items")
            if not isinstance(items, list):
                raise UserError(f"{path}: document {i + 1} is a List without an items list")
            objs += items
        else:
            objs.append(d)
    return plan_from_objects(objs, str(path))


# ---------------------------------------------------------------------------------------------
# A rendered TrainJob (and the runtime rendered with it) -> the job plan, for run-local FILE.


def plan_from_trainjob(objects: list[dict], where: str = "objects"):
    """The plan of a rendered TrainJob: its runtime's trainer pod with spec.trainer applied, as
    Trainer builds the JobSet (image, command, args and resources replaced, env upserted by name)."""
    meta, name, label, spec = the_job(objects, "TrainJob", where)
    ref = _typed(spec.get("runtimeRef"), dict, f"{label}: spec.runtimeRef", {})
    kind, ref_name = ref.get("kind", DEFAULT_RUNTIME_KIND), ref.get("name")
    runtime = next((o for o in objects if o.get("kind") == kind and isinstance(o.get("metadata"), dict)
                    and o["metadata"].get("name") == ref_name), None)
    if runtime is None:
        raise UserError(f"{label}: its runtime {kind} {ref_name!r} is not among the objects"
                        + (": a ClusterTrainingRuntime lives on the cluster; pass its file (run-local --runtime FILE, "
                           "e.g. the admin bundle's), or render with trainjob.cluster_runtime empty" if kind == "ClusterTrainingRuntime" else ""))
    runtime = apply_runtime_patches(runtime, {"spec": spec})  # the pods Trainer builds: the job's patches applied
    rt = f"{kind} {ref_name}"
    rt_spec = _typed(runtime.get("spec"), dict, f"{rt}: spec", {})
    ml = _typed(rt_spec.get("mlPolicy"), dict, f"{rt}: spec.mlPolicy", {})
    js = _typed(_typed(rt_spec.get("template"), dict, f"{rt}: spec.template", {}).get("spec"), dict, f"{rt}: spec.template.spec", {})
    restarts = _typed(_typed(js.get("failurePolicy"), dict, f"{rt}: failurePolicy", {}).get("maxRestarts"), int,
                      f"{rt}: failurePolicy.maxRestarts", 0)
    template = None
    for i, rjob in enumerate(_typed(js.get("replicatedJobs"), list, f"{rt}: replicatedJobs", [])):
        where = f"{rt}: replicatedJobs[{i}].template"
        job_template = _typed(_typed(rjob, dict, f"{rt}: replicatedJobs[{i}]").get("template"), dict, where, {})
        labels = _typed(_typed(job_template.get("metadata"), dict, f"{where}.metadata", {}).get("labels"), dict,
                        f"{where}.metadata.labels", {})
        if labels.get(ANCESTOR_LABEL) == ANCESTOR_TRAINER:
            template = _typed(job_template.get("spec"), dict, f"{where}.spec", {}).get("template")
            pod = _pod(template, f"{where}.spec.template")
            break
    if template is None:
        raise UserError(f"{label}: {rt} has no replicated job labelled {ANCESTOR_LABEL}: {ANCESTOR_TRAINER}")
    pod.main_name = NODE
    main = pod.main
    trainer = _typed(spec.get("trainer"), dict, f"{label}: spec.trainer", {})
    overlay = _pod({"spec": {"containers": [{"name": NODE, **{k: v for k, v in trainer.items() if k in ("image", "command", "args", "env")},
                                             "resources": trainer.get("resourcesPerNode") or {}}]}}, f"{label}: spec.trainer")
    given = overlay.containers[0]
    main.image = given.image or main.image
    main.command = given.command or main.command
    main.args = given.args or main.args
    main.env = [e for e in main.env if e.name not in {g.name for g in given.env}] + given.env
    if "resourcesPerNode" in trainer:
        main.requests, main.limits = given.requests, given.limits
    nodes = _typed(trainer.get("numNodes", ml.get("numNodes", 1)), int, f"{label}: spec.trainer.numNodes")
    if nodes < 1:
        raise UserError(f"{label}: spec.trainer.numNodes must be >= 1, got {nodes}")
    nproc = _typed(trainer.get("numProcPerNode"), int, f"{label}: spec.trainer.numProcPerNode", None)
    if nproc is None:  # the torch plugin's "auto": a node's GPUs; off a GPU node every CPU, which locally means 1
        gpus = main.limits.get("nvidia.com/gpu")
        nproc = int(gpus) if str(gpus).isdigit() and int(gpus) >= 1 else 1
    return JobPlan(name=name, namespace=str(meta.get("namespace", "default")), api="trainjob",
                   groups=[ReplicaGroup(NODE_ROLE, nodes, "OnFailure", pod)], nproc_per_node=nproc, master_port=TRAINER_PORT,
                   run_policy=RunPolicy(restarts, _typed(spec.get("activeDeadlineSeconds"), int, f"{label}: spec.activeDeadlineSeconds", None)),
                   config_maps=config_maps_of(objects), objects=list(objects))
