"""Run a job plan as `docker run` arguments, one container per replica, the way the training
operator turns a PyTorchJob into pods. Used by images/test-images.sh for the two-"node" run.

    python images/docker_job.py --profile synthetic-smoke --nodes 2 --gpus 2 --image IMG --prefix P --network NET --out DIR
    python images/docker_job.py RENDERED.yaml --prefix P ...            # an already rendered job, its image as written

The job is a `launcher.plan.JobPlan`, from the same function `render`, `submit` and `run-local`
use (or decoded from a rendered file by launcher.plan). Writes DIR/<replica>.args (NUL-separated
`docker run` arguments, image and command included) and prints one line per replica (`replica NAME
ARGSFILE`) and per shared volume (`volume K8S_NAME DOCKER_VOLUME MOUNT_PATH`, hostPath and PVC
volumes: every replica sees the same one, as on a node path or a ReadWriteMany claim). The
container's command, env, mounts and security context are the plan's; the operator's env is
`JobPlan.replica_env` with the master container's name as its address. Anything this does not know
how to reproduce (an env valueFrom, a secret volume, ...) is an error, not silently dropped.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dlrm.errors import UserError
from dlrm.io.fsutil import atomic_write
from launcher.decode import load_plan_file
from launcher.plan import JobPlan


def fail(message: str) -> None:
    sys.exit(f"docker_job: {message}")


def size_bytes(quantity: str) -> str:
    """A Kubernetes quantity (2Gi) as docker's size syntax (2g); docker reads plain bytes too."""
    units = {"Ki": "k", "Mi": "m", "Gi": "g"}
    for k8s, docker in units.items():
        if quantity.endswith(k8s):
            return quantity[: -len(k8s)] + docker
    return quantity


def load_plan(args: argparse.Namespace) -> JobPlan:
    if args.rendered:
        if args.image or args.nodes or args.gpus or args.overrides or args.values or args.resume:
            raise UserError(f"{args.rendered} is already rendered: give the job flags (--profile, --image...) instead")
        return load_plan_file(args.rendered)
    from launcher.cli_render import plan_from_args

    return plan_from_args(args)


def main() -> int:
    from launcher.cli_render import add_job_arguments

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rendered", nargs="?", type=Path, help="an already rendered YAML file (instead of --profile and the job flags)")
    add_job_arguments(ap)
    ap.add_argument("--prefix", required=True, help="container/volume name prefix (unique per test run)")
    ap.add_argument("--network", required=True)
    ap.add_argument("--label", default="", help="KEY=VALUE put on every container and volume, for cleanup")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    try:
        plan = load_plan(args)
    except UserError as e:
        fail(str(e))
    if not plan.groups:
        fail(f"job {plan.name} (kind {plan.kind}) has no replicas to run")
    replicas = plan.replicas
    master = f"{args.prefix}-{replicas[0].name}"
    args.out.mkdir(parents=True, exist_ok=True)
    shared: dict[str, tuple[str, str]] = {}

    for replica in replicas:
        pod = plan.pod(replica)
        if [c for c in pod.init_containers if not c.sidecar]:
            fail("init containers are not reproduced here; use a profile without them (storage.mode hostPath)")
        c = pod.main
        cname = f"{args.prefix}-{replica.name}"
        run = ["--name", cname, "--hostname", cname, "--network", args.network]
        if args.label:
            run += ["--label", args.label]

        # Security context, pod level then container level, as the kubelet applies it.
        sc = {**pod.security, **c.security}
        if "runAsUser" in sc:
            run += ["--user", f"{sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}"]
        if "fsGroup" in sc:
            run += ["--group-add", str(sc["fsGroup"])]
        if sc.get("readOnlyRootFilesystem"):
            run += ["--read-only"]
        if sc.get("allowPrivilegeEscalation") is False:
            run += ["--security-opt", "no-new-privileges"]
        caps = sc.get("capabilities") or {}
        for cap in (caps.get("drop") or []) if isinstance(caps, dict) else fail(f"{replica.name}: securityContext.capabilities {caps!r}"):
            run += ["--cap-drop", str(cap)]

        volumes = {v.name: v for v in pod.volumes}
        for m in c.mounts:
            if m.volume not in volumes:
                fail(f"{replica.name}: mount {m.path} names volume {m.volume!r}, which the pod does not define")
            v, path = volumes[m.volume], m.path
            ro = ",readonly" if m.read_only else ""
            if v.kind == "configMap":
                data = plan.config_maps.get(v.source.get("name"))
                if data is None:
                    fail(f"ConfigMap {v.source.get('name')} is not in the plan's objects")
                folder = args.out / "configmaps" / v.source["name"]
                for key, text in data.items():
                    atomic_write(folder / key, text, fsync=False)
                run += ["--mount", f"type=bind,source={folder.resolve()},target={path}{ro}"]
            elif v.kind == "emptyDir" and v.source.get("medium") == "Memory":
                limit = size_bytes(str(v.source.get("sizeLimit", "64Mi")))
                if path == "/dev/shm":
                    run += ["--shm-size", limit]
                else:
                    run += ["--tmpfs", f"{path}:rw,exec,mode=1777,size={limit}"]
            elif v.kind == "emptyDir":
                # A fresh per-pod volume (a named one, so the script can read the output afterwards).
                run += ["--mount", f"type=volume,source={cname}-{m.volume},target={path}{ro}"]
            elif v.kind in ("hostPath", "persistentVolumeClaim"):
                vol = f"{args.prefix}-{m.volume}"
                shared[m.volume] = (vol, path)
                run += ["--mount", f"type=volume,source={vol},target={path}{ro}"]
            else:
                fail(f"{replica.name}: volume {m.volume} is a {v.kind}, which this test cannot reproduce")

        # The plan's env as it is, then what the training operator injects into each pod.
        env = {}
        for e in c.env:
            if e.value is None:
                fail(f"{replica.name}: env {e.name} is not a literal value ({e.value_from})")
            env[e.name] = e.value
        env.update(plan.replica_env(replica, master))
        for k, val in env.items():
            run += ["--env", f"{k}={val}"]
        if c.working_dir:
            run += ["--workdir", c.working_dir]

        # Kubernetes' command replaces the image ENTRYPOINT and args its CMD; docker's the same.
        if c.command:
            run += ["--entrypoint", c.command[0], c.image, *c.command[1:], *c.args]
        else:
            run += [c.image, *c.args]
        argfile = args.out / f"{replica.name}.args"
        atomic_write(argfile, b"".join(a.encode() + b"\0" for a in run), fsync=False)
        print(f"replica {replica.name} {argfile}")

    for k8s_name, (vol, path) in sorted(shared.items()):
        print(f"volume {k8s_name} {vol} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
