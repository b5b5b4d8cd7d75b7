"""The admin bundle's README.md (launcher/admin.py): what to install first, what the bundle holds, how users use it."""
from __future__ import annotations

from launcher import command as cmd
from launcher.admin_policy import ALLOWED_IMAGES_ANNOTATION
from launcher.config import JobConfig, gang_scheduler, kueue_queue
from launcher.render import file_name

TRAINER_VERSION = "2.3.0"  # the release whose schemas launcher/schemas/trainer.json holds


def _prerequisites(cfg: JobConfig) -> list[str]:
    s, gang = cfg.storage, cfg.scheduling.gang
    items = [
        "**Kubernetes 1.30 or newer**: the image policy is a `ValidatingAdmissionPolicy` of "
        "`admissionregistration.k8s.io/v1`, GA (and on by default) since 1.30; an older API server refuses the bundle.",
        f"**Kubeflow Trainer v{TRAINER_VERSION}** (its chart installs JobSet too) with the `TrainJobStatus` feature gate, "
        f"so `launcher status` shows the trainer's progress:\n\n"
        f"  ```sh\n  helm install kubeflow-trainer oci://ghcr.io/kubeflow/charts/kubeflow-trainer \\\n"
        f"    --namespace kubeflow-system --create-namespace --version {TRAINER_VERSION} \\\n"
        f"    --set manager.config.featureGates.TrainJobStatus=true\n  ```",
    ]
    if kueue_queue(cfg):
        items.append("**Kueue** (v0.15 or newer: the examples are `kueue.x-k8s.io/v1beta2`) with the TrainJob integration: add "
                     "`trainer.kubeflow.org/trainjob` to `integrations.frameworks` in its Configuration and restart it. "
                     "Kueue admits a job only when the quota for all its pods is free; with `waitForPodsReady.enable: true` "
                     "it also evicts and requeues a job whose pods do not all start, which makes the admission a gang.")
    if gang == "volcano":
        items.append(f"**Volcano**, installed before Trainer's controller starts (or restart it after): Trainer's Volcano "
                     f"plugin creates a `scheduling.volcano.sh/v1beta1` PodGroup per TrainJob (minMember = its nodes) and "
                     f"labels the pods with it; the runtime's pods name `schedulerName: {gang_scheduler(cfg)}`. Users' queue: "
                     f"the TrainJob annotation `scheduling.volcano.sh/queue-name` (scheduling.queue).")
    if gang == "scheduler-plugins":
        items.append(f"**scheduler-plugins** with the Coscheduling plugin, as a second scheduler whose profile is named "
                     f"`{gang_scheduler(cfg)}` (scheduling.scheduler_name), and its `scheduling.x-k8s.io` PodGroup CRD "
                     f"installed before Trainer's controller starts (its CoScheduling plugin watches PodGroups only if the "
                     f"CRD is there at start: restart it after). The plugin creates a PodGroup per TrainJob (minMember = "
                     f"its nodes, timeout {cfg.trainjob.schedule_timeout_seconds} s) and labels the pods "
                     f"`scheduling.x-k8s.io/pod-group`. It has no queues.")
    if s.mode == "mount":
        items.append(f"**The Mountpoint for Amazon S3 CSI driver** (`s3.csi.aws.com`), with its own IAM role or "
                     f"kube-system Secret for bucket `{cfg.dataset}`: the PersistentVolume mounts the dataset read-only.")
    if s.mode == "stage" and s.stage_host_path:
        items.append(f"**The stage folder on every GPU node**, owned by the pods' user (the hostPath is mounted with type "
                     f"`Directory`: a missing one fails the pod instead of being created root-owned):\n\n"
                     f"  ```sh\n  install -d -o {cfg.cluster.run_as_user} -g {cfg.cluster.run_as_group} -m 0775 "
                     f"{s.stage_host_path}    # node bootstrap / user data\n  ```\n\n"
                     f"  Each dataset is staged into its own `dataset-<manifest hash>` folder there, under a lock: jobs of "
                     f"the same dataset reuse the verified copy, other datasets never share it. Nothing removes old "
                     f"copies: prune them when the disk fills.")
    if cfg.s3.role_arn:
        items.append(f"**The IAM role** `{cfg.s3.role_arn}` trusting the ServiceAccount `{cfg.namespace}/"
                     f"{cfg.cluster.service_account or cfg.name}` (IRSA).")
    if cfg.admin.gcp_service_account:
        items.append(f"**Workload identity**: `{cfg.admin.gcp_service_account}` granting `roles/iam.workloadIdentityUser` to "
                     f"`{cfg.namespace}/{cfg.cluster.service_account or cfg.name}`.")
    return items


def readme(cfg: JobConfig, objs: list[dict]) -> str:
    """README.md for the bundle of `cfg` (launcher.admin.runtime_config's) holding `objs`."""
    runtime, ns = cfg.admin.runtime, cfg.namespace
    lines = [f"# dlrm admin bundle: ClusterTrainingRuntime `{runtime}`", "",
             "Written by `python -m launcher admin`; do not edit: change the site values and write it again.", "",
             "## Install first", ""]
    lines += [f"{i}. {item}" for i, item in enumerate(_prerequisites(cfg), 1)]
    lines += ["", "## Install", "", "```sh", "kubectl apply -k .          # this folder: a kustomize base", "```", "",
              f"The namespaced objects go to `{ns}`; for another namespace, an overlay with `namespace:` and the "
              f"ClusterQueue's namespace selector changed, or render the bundle again with `--set namespace=...`.", "",
              "| file | object | why |", "| --- | --- | --- |"]
    why = {"ClusterTrainingRuntime": "the training pod: users' TrainJobs reference it and patch in only what varies per job",
           "ConfigMap": "the site's train.yaml: what a TrainJob that brings no config of its own trains with",
           "Role": "what users may do: trainjobs, their configmaps, pods and logs; no runtimes, nothing cluster-scoped",
           "RoleBinding": f"gives the Role to {', '.join(cfg.admin.user_groups)}",
           "ValidatingAdmissionPolicy": "refuses a TrainJob on the runtime whose `spec.trainer.image` the image rule (below) does not allow",
           "ValidatingAdmissionPolicyBinding": "puts that policy in force in every namespace (action Deny)",
           "ServiceAccount": "the pods' cloud identity (no keys in any manifest)",
           "PersistentVolume": "the S3 dataset through the CSI driver (cluster-scoped, so the admin's)",
           "PersistentVolumeClaim": "the users' jobs mount the dataset through it, by name",
           "ResourceFlavor": "example: the GPU nodes", "ClusterQueue": "example: quota for one job of the site's size",
           "LocalQueue": "the users' queue (scheduling.queue)"}
    lines += [f"| `{file_name(o)}` | {o['kind']} `{o['metadata']['name']}` | {why.get(o['kind'], '')} |" for o in objs]
    allowed = cfg.admin.allowed_images
    lines += ["", "## Images", "",
              f"The runtime's pods run `{cfg.image}`. A TrainJob that sets no `spec.trainer.image` (a user who leaves "
              f"`image` unset) runs it; one that sets another image is refused at admission unless it is "
              + (f"one `admin.allowed_images` admits: {', '.join(f'`{a}`' for a in allowed)} (an entry ending in `/`, `:` or "
                 f"`@` is a prefix, any other one exact image)." if allowed else
                 "listed in `admin.allowed_images`, which is empty: only the runtime's image runs, because its pods "
                 "hold the site's cloud identity, node folders and devices.")
              + " A user who needs another image asks the admin to add it (or its registry path) to `admin.allowed_images` "
                "and to write and apply the bundle again; the runtime's `" + ALLOWED_IMAGES_ANNOTATION + "` annotation "
                "carries the same list for `launcher validate --runtime` offline.", "",
              "## Users", "",
              "Users render TrainJobs that reference the runtime; each TrainJob sets the command, args, env, "
              "nodes, processes and resources (the image only when the user sets one), and patches in its own config, "
              f"dataset and output volumes and the stage container's `{cmd.STAGE_SOURCE_ENV}` (Trainer upserts them by "
              "name). Their values file:", "",
              "```yaml", "api: trainjob", f"namespace: {ns}", "trainjob:", f"  cluster_runtime: {runtime}",
              "  runtime_source: admin", "storage:", f"  mode: {cfg.storage.mode}", "dataset: s3://bucket/their-dataset",
              "train:", "  out: s3://bucket/runs/{name}",
              *(["scheduling:", f"  gang: {cfg.scheduling.gang}"] + ([f"  queue: {cfg.scheduling.queue}"] if cfg.scheduling.queue else [])
                if cfg.scheduling.gang != "none" or cfg.scheduling.queue else []), "```", "",
              "```sh",
              "python -m launcher submit --values user.yaml --nodes 2 --gpus 8",
              f"python -m launcher validate job.yaml --runtime clustertrainingruntime-{runtime}.yaml   # offline, before submitting",
              f"python -m launcher run-local --values user.yaml --runtime clustertrainingruntime-{runtime}.yaml   # on this machine, CPU",
              "```", ""]
    return "\n".join(lines)
