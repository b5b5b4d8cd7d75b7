"""Turn a rendered PyTorchJob into `docker run` arguments, one container per replica, the way the
training operator turns it into pods. Used by images/test-images.sh for the two-"node" run.

    python images/docker_job.py RENDERED.yaml --image IMG --prefix P --network NET --out DIR

Writes DIR/<replica>.args (NUL-separated `docker run` arguments, image and command included) and
prints one line per replica (`replica NAME ARGSFILE`) and per shared volume (`volume K8S_NAME
DOCKER_VOLUME MOUNT_PATH`, hostPath and PVC volumes: every replica sees the same one, as on a node
path or a ReadWriteMany claim). The container's own command, env, mounts and security context are
taken from the manifest as they are; only what the operator injects is added (PET_*, MASTER_*,
WORLD_SIZE, RANK with the master container's name as its address). Anything this does not know how
to reproduce (an env valueFrom, a secret volume, ...) is an error, not silently dropped.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

CONTAINER = "pytorch"  # the operator's required container name
MASTER_PORT = 23456  # the operator's default (and the manifest's pytorchjob-port)
REPLICA_ORDER = ("Master", "Worker")


def fail(message: str) -> None:
    sys.exit(f"docker_job: {message}")


def replicas(job: dict) -> list[tuple[str, int, dict]]:
    """(name, node rank, pod template) per replica: Master is rank 0, then the Workers."""
    specs = job["spec"]["pytorchReplicaSpecs"]
    out = []
    for kind in REPLICA_ORDER:
        for i in range(int(specs.get(kind, {}).get("replicas", 0))):
            out.append((f"{kind.lower()}-{i}", len(out), specs[kind]["template"]))
    unknown = set(specs) - set(REPLICA_ORDER)
    if unknown or not out or not out[0][0].startswith("master"):
        fail(f"expected one Master and optional Workers, got {sorted(specs)}")
    return out


def size_bytes(quantity: str) -> str:
    """A Kubernetes quantity (2Gi) as docker's size syntax (2g); docker reads plain bytes too."""
    units = {"Ki": "k", "Mi": "m", "Gi": "g"}
    for k8s, docker in units.items():
        if quantity.endswith(k8s):
            return quantity[: -len(k8s)] + docker
    return quantity


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rendered", type=Path)
    ap.add_argument("--image", required=True, help="local image to run instead of the manifest's")
    ap.add_argument("--prefix", required=True, help="container/volume name prefix (unique per test run)")
    ap.add_argument("--network", required=True)
    ap.add_argument("--label", default="", help="KEY=VALUE put on every container and volume, for cleanup")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()

    objs = [d for d in yaml.safe_load_all(args.rendered.read_text()) if d]
    jobs = [o for o in objs if o.get("kind") == "PyTorchJob"]
    if len(jobs) != 1:
        fail(f"{args.rendered}: expected one PyTorchJob, found {len(jobs)}")
    job = jobs[0]
    configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in objs if o.get("kind") == "ConfigMap"}
    reps = replicas(job)
    nproc = str(job["spec"].get("nprocPerNode", "1"))
    master = f"{args.prefix}-{reps[0][0]}"
    args.out.mkdir(parents=True, exist_ok=True)
    shared: dict[str, tuple[str, str]] = {}

    for name, rank, template in reps:
        pod = template["spec"]
        if pod.get("initContainers"):
            fail("init containers are not reproduced here; use a profile without them (storage.mode hostPath)")
        containers = [c for c in pod["containers"] if c["name"] == CONTAINER]
        if len(containers) != 1:
            fail(f"{name}: no container named {CONTAINER!r}")
        c = containers[0]
        cname = f"{args.prefix}-{name}"
        run = ["--name", cname, "--hostname", cname, "--network", args.network]
        if args.label:
            run += ["--label", args.label]

        # Security context, pod level then container level, as the kubelet applies it.
        sc = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
        if "runAsUser" in sc:
            run += ["--user", f"{sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}"]
        if "fsGroup" in sc:
            run += ["--group-add", str(sc["fsGroup"])]
        if sc.get("readOnlyRootFilesystem"):
            run += ["--read-only"]
        if sc.get("allowPrivilegeEscalation") is False:
            run += ["--security-opt", "no-new-privileges"]
        for cap in sc.get("capabilities", {}).get("drop", []):
            run += ["--cap-drop", cap]

        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for m in c.get("volumeMounts", []):
            v, path = volumes[m["name"]], m["mountPath"]
            ro = ",readonly" if m.get("readOnly") else ""
            if "configMap" in v:
                data = configmaps.get(v["configMap"]["name"])
                if data is None:
                    fail(f"ConfigMap {v['configMap']['name']} is not in the rendered objects")
                folder = args.out / "configmaps" / v["configMap"]["name"]
                folder.mkdir(parents=True, exist_ok=True)
                for key, text in data.items():
                    (folder / key).write_text(text)
                run += ["--mount", f"type=bind,source={folder.resolve()},target={path}{ro}"]
            elif "emptyDir" in v and v["emptyDir"].get("medium") == "Memory":
                limit = size_bytes(str(v["emptyDir"].get("sizeLimit", "64Mi")))
                if path == "/dev/shm":
                    run += ["--shm-size", limit]
                else:
                    run += ["--tmpfs", f"{path}:rw,exec,mode=1777,size={limit}"]
            elif "emptyDir" in v:
                # A fresh per-pod volume (a named one, so the script can read the output afterwards).
                run += ["--mount", f"type=volume,source={cname}-{m['name']},target={path}{ro}"]
            elif "hostPath" in v or "persistentVolumeClaim" in v:
                vol = f"{args.prefix}-{m['name']}"
                shared[m["name"]] = (vol, path)
                run += ["--mount", f"type=volume,source={vol},target={path}{ro}"]
            else:
                fail(f"{name}: volume {m['name']} has a type this test cannot reproduce: {sorted(v)}")

        # The manifest's env as it is, then what the training operator injects into each pod.
        env = {}
        for e in c.get("env", []):
            if "value" not in e:
                fail(f"{name}: env {e['name']} is not a literal value ({sorted(e)})")
            env[e["name"]] = str(e["value"])
        env.update({
            "PET_NNODES": str(len(reps)), "PET_NPROC_PER_NODE": nproc, "PET_NODE_RANK": str(rank),
            "PET_MASTER_ADDR": master, "PET_MASTER_PORT": str(MASTER_PORT),
            "MASTER_ADDR": master, "MASTER_PORT": str(MASTER_PORT),
            "WORLD_SIZE": str(len(reps)), "RANK": str(rank),
        })
        for k, val in env.items():
            run += ["--env", f"{k}={val}"]
        if c.get("workingDir"):
            run += ["--workdir", c["workingDir"]]

        # Kubernetes' command replaces the image ENTRYPOINT and args its CMD; docker's the same.
        command, cargs = c.get("command", []), c.get("args", [])
        if command:
            run += ["--entrypoint", command[0], args.image, *command[1:], *cargs]
        else:
            run += [args.image, *cargs]
        argfile = args.out / f"{name}.args"
        argfile.write_bytes(b"".join(a.encode() + b"\0" for a in run))
        print(f"replica {name} {argfile}")

    for k8s_name, (vol, path) in sorted(shared.items()):
        print(f"volume {k8s_name} {vol} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
