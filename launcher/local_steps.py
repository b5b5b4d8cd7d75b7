"""run-local's planning: a job plan's replica -> the local commands its pod would run. Nothing runs here.

Each container becomes a `Step` (argv, env, cwd): volumes become folders (a ConfigMap's data written
out, emptyDir per replica under <workdir>/pods, PVCs and hostPaths shared folders, or `--volume
NAME=DIR`), and every mountPath in the command, args and env is rewritten to its folder.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from dlrm.errors import UserError
from dlrm.io.fsutil import atomic_write
from launcher.local_jobs import PODS
from launcher.plan import Container, JobPlan, Replica

# The image's interpreters are not on this machine: the current one has torch and dlrm installed.
COMMAND_MAP = {"python": [sys.executable], "python3": [sys.executable],
               "torchrun": [sys.executable, "-m", "torch.distributed.run"]}



@dataclass
class Step:
    container: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    init: bool = False


def volume_folders(plan: JobPlan, replica: Replica, workdir: Path, mapped: dict[str, Path], say) -> dict[str, Path]:
    """Pod volume name -> local folder, created (and for ConfigMaps filled) now."""
    out: dict[str, Path] = {}
    for vol in plan.pod(replica).volumes:
        if vol.name in mapped:
            out[vol.name] = mapped[vol.name]
            continue
        src = vol.source
        if vol.kind == "configMap":
            cm_name = str(src.get("name"))
            data = plan.config_maps.get(cm_name)
            if data is None:
                raise UserError(f"volume {vol.name}: ConfigMap {cm_name} is not among the rendered objects; map it with --volume {vol.name}=DIR")
            folder = workdir / "configmaps" / cm_name
            items = src.get("items") or [{"key": k, "path": k} for k in data]
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise UserError(f"volume {vol.name}: configMap.items must be a list of {{key, path}} mappings, got {items!r}"[:300])
            for item in items:
                if item.get("key") not in data or ".." in Path(str(item.get("path"))).parts or str(item.get("path")).startswith("/"):
                    raise UserError(f"volume {vol.name}: item {item} names no key of ConfigMap {cm_name} or a path outside its folder")
                atomic_write(folder / item["path"], data[item["key"]], fsync=False)
        elif vol.kind == "persistentVolumeClaim":
            folder = workdir / "volumes" / str(src.get("claimName"))
        elif vol.kind == "hostPath":
            # This machine is the node: a node path that exists here is used as it is (a dataset made
            # with `dlrm synth`, say); one that does not (a cluster's NVMe mount) becomes a workdir folder.
            path = Path(str(src.get("path")))
            folder = path if path.exists() else workdir / "volumes" / "host" / str(path).strip("/")
            if folder != path:
                say(f"volume {vol.name}: hostPath {path} is not on this machine; using {folder} (or pass --volume {vol.name}=DIR)")
        elif vol.kind == "emptyDir":
            folder = workdir / PODS / replica.name / vol.name
        else:
            folder = workdir / "volumes" / vol.name
            say(f"volume {vol.name} ({vol.kind}) has no local equivalent: an empty folder {folder} (or pass --volume {vol.name}=DIR)")
        folder.mkdir(parents=True, exist_ok=True)
        out[vol.name] = folder
    return out


def mount_rewriter(container: Container, folders: dict[str, Path]):
    """A function rewriting each mountPath (as a whole path prefix) in a string to its local folder."""
    local = {}
    for m in container.mounts:
        if m.volume not in folders:
            raise UserError(f"volumeMount {m.path} names volume {m.volume!r}, which the pod does not define")
        local[m.path.rstrip("/") or "/"] = str(folders[m.volume] / m.sub_path)
    if not local:
        return lambda s: s
    # Longest first so /data/dataset wins over /data; the lookarounds keep /x/tmp and /tmpfoo untouched.
    alternatives = "|".join(re.escape(p) for p in sorted(local, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w./-])({alternatives})(?=/|$|[^\w.-])")
    return lambda s: pattern.sub(lambda m: local[m.group(1)].rstrip("/"), s)


def expand_vars(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command/args; $$( escapes, unknown names stay as written."""
    return re.sub(r"\$\$\(|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$(" if m.group(1) is None else env.get(m.group(1), m.group(0)), text)


def container_env(container: Container, pod: str, say) -> dict[str, str]:
    """The container's env values. Secrets and other references do not exist here: the shell's env stands in."""
    env: dict[str, str] = {}
    for src in container.env_from:
        say(f"envFrom {src}: not available locally; variables come from your shell instead")
    for e in container.env:
        ref = (e.value_from or {}).get("fieldRef")
        field_path = ref.get("fieldPath") if isinstance(ref, dict) else None
        if e.value is not None:
            env[e.name] = expand_vars(e.value, env)
        elif field_path == "metadata.name":
            env[e.name] = pod
        else:
            say(f"env {e.name}: {e.value_from} is not available locally; set it in your shell if the job needs it")
    return env


def plan_steps(plan: JobPlan, replica: Replica, world: dict[str, str], folders: dict[str, Path], say) -> list[Step]:
    """The init containers, then the `pytorch` container, as local commands."""
    pod = plan.pod(replica)
    main = pod.main
    for c in pod.containers:
        if c is not main:
            say(f"{replica.name}: sidecar container {c.name} is not run locally")
    steps = []
    for c, init in [(c, True) for c in pod.init_containers] + [(main, False)]:
        if init and c.sidecar:
            say(f"{replica.name}: sidecar init container {c.name} is not run locally")
            continue
        if init and c.image != main.image:  # this machine stands in for the job's image only (cluster.pod's own)
            say(f"{replica.name}: init container {c.name} is not run locally: its image {c.image} is not this machine")
            continue
        rewrite = mount_rewriter(c, folders)
        env = {k: rewrite(v) for k, v in container_env(c, plan.pod_name(replica), say).items()}
        env.update(world if not init else {k: v for k, v in world.items() if k == "CUDA_VISIBLE_DEVICES"})
        if not c.command:
            raise UserError(f"{replica.name}: container {c.name} has no command; run-local cannot know the image's entrypoint")
        argv = [expand_vars(rewrite(a), env) for a in c.command + c.args]
        argv = COMMAND_MAP.get(argv[0], [argv[0]]) + argv[1:]
        cwd = rewrite(c.working_dir)
        steps.append(Step(c.name, argv, env, cwd if cwd and Path(cwd).is_dir() else os.getcwd(), init))
    return steps
