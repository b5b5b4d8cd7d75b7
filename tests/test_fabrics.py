"""Cloud GPU fabric presets and the cluster.pod block: a golden render per preset and job API, each
compared field by field with what the vendor documents (written out here, from
../shared/docs/cloud-fabrics.md's sources, not read from launcher/fabrics.py), and validated.

Regenerate the golden files after an intended change with:  UPDATE_GOLDEN=1 pytest tests/test_fabrics.py
"""
from __future__ import annotations

import functools
import json
import os

import pytest

from dlrm.errors import ConfigError
from launcher import pods, podblock
from launcher.config import load_job_config
from launcher.decode import plan_from_objects
from launcher.encode import plan_job
from launcher.local_steps import plan_steps
from launcher.render import render_objects, to_yaml
from launcher.validate import validate_objects
from test_render import GOLDEN, REV

PRESETS = ("efa", "gke-tcpx", "gke-tcpxo", "gke-rdma", "azure-ib", "oci-roce")
CASES = {f"{api}-fabric-{f}": ("criteo-fl15", {"nodes": 2, "api": api, "cluster": {"fabric": f}})
         for api in ("pytorchjob", "trainjob") for f in PRESETS}
POD_BLOCK = {
    "labels": {"topology.kubernetes.io/zone": "us-east-1a"}, "annotations": {"example.com/owner": "ml-platform"},
    "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "dlrm-criteo-fl15"}},
         "topologyKey": "kubernetes.io/hostname"}]}},
    "topology_spread_constraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                     "whenUnsatisfiable": "DoNotSchedule"}],
    "scheduler_name": "my-scheduler", "runtime_class_name": "nvidia", "host_network": True,
    "capabilities": ["SYS_PTRACE"], "volumes": [{"name": "certs", "secret": {"secretName": "ca-bundle"}}],
    "mounts": [{"name": "certs", "mountPath": "/etc/ssl/custom", "readOnly": True}],
    "init_containers": [{"name": "log-shipper", "image": "fluent/fluent-bit:3.1", "restartPolicy": "Always"}],
    "env": [{"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "api-key"}}}],
    "env_from": [{"configMapRef": {"name": "team-settings"}}]}
CASES.update({f"{api}-pod-block-tas": ("criteo-fl15", {
    "nodes": 2, "api": api, "cluster": {"pod": POD_BLOCK}, "scheduling": {
        "gang": "kueue", "queue": "gpu-queue", "topology": {"level": "cloud.google.com/gce-topology-block", "mode": "preferred"}}})
    for api in ("pytorchjob", "trainjob")})

GKE_LIBS = "/home/kubernetes/bin/nvidia"
GPUS = [f"/dev/nvidia{i}" for i in range(8)] + ["/dev/nvidiactl", "/dev/nvidia-uvm"]
# What each vendor documents for a pod on its fabric (cloud-fabrics.md; E1/E5 AWS, G1-G3 Google, A1-A3 Azure, O1 Oracle).
DOC = {
    "efa": dict(selector={"node.kubernetes.io/instance-type": "p5.48xlarge"},
                limits={"vpc.amazonaws.com/efa": 32, "hugepages-2Mi": "5120Mi"},
                env={"FI_PROVIDER": "efa", "FI_EFA_FORK_SAFE": "1", "NCCL_BUFFSIZE": "8388608", "NCCL_P2P_NET_CHUNKSIZE": "524288"},
                host_paths={}),
    "gke-tcpx": dict(selector={"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
                     env={"LD_LIBRARY_PATH": "/usr/local/nvidia/lib64", "NCCL_SOCKET_IFNAME": "eth0",
                          "NCCL_GPUDIRECTTCPX_SOCKET_IFNAME": "eth1,eth2,eth3,eth4", "NCCL_GPUDIRECTTCPX_CTRL_DEV": "eth0",
                          "NCCL_CROSS_NIC": "0", "NCCL_PROTO": "Simple", "NCCL_NET_GDR_LEVEL": "PIX", "NCCL_BUFFSIZE": "4194304",
                          "NCCL_GPUDIRECTTCPX_PROGRAM_FLOW_STEERING_WAIT_MICROS": "500000"},
                     caps=["IPC_LOCK"], host_paths={f"{GKE_LIBS}/lib64": "/usr/local/nvidia/lib64", "/run/tcpx": "/run/tcpx"},
                     networks=["vpc1", "vpc2", "vpc3", "vpc4"], devices=GPUS,
                     sidecar=("tcpx-daemon", "us-docker.pkg.dev/gce-ai-infra/gpudirect-tcpx/tcpgpudmarxd-dev:v2.0.12", ["NET_ADMIN"])),
    "gke-tcpxo": dict(selector={"cloud.google.com/gke-accelerator": "nvidia-h100-mega-80gb"},
                      env={"LD_LIBRARY_PATH": "/usr/local/nvidia/lib64", "NCCL_FASTRAK_LLCM_DEVICE_DIRECTORY": "/dev/aperture_devices",
                           "NCCL_LIB_DIR": "/usr/local/nvidia/lib64",
                           "DLRM_NCCL_ENV_PROFILE": "/usr/local/nvidia/lib64/nccl-env-profile.sh"},
                      caps=["IPC_LOCK"], host_paths={GKE_LIBS: "/usr/local/nvidia", "/dev/aperture_devices": "/dev/aperture_devices"},
                      networks=[f"vpc{i}" for i in range(1, 9)], devices=GPUS + ["/dev/dmabuf_import_helper"],
                      sidecar=("tcpxo-daemon", "us-docker.pkg.dev/gce-ai-infra/gpudirect-tcpxo/tcpgpudmarxd-dev:v1.0.21",
                               ["NET_ADMIN", "NET_BIND_SERVICE"])),
    "gke-rdma": dict(selector={"cloud.google.com/gke-accelerator": "nvidia-h200-141gb"},
                     env={"DLRM_NCCL_ENV_PROFILE": "/usr/local/gib/scripts/set_nccl_env.sh", "NCCL_PLUGIN_PATH": "/usr/local/gib/lib64",
                          "LD_LIBRARY_PATH": "/usr/local/gib/lib64:/usr/local/nvidia/lib64"},
                     host_paths={GKE_LIBS: "/usr/local/nvidia", "/home/kubernetes/bin/gib": "/usr/local/gib"},
                     networks=["gvnic-1"] + [f"rdma-{i}" for i in range(8)]),
    "azure-ib": dict(selector={"node.kubernetes.io/instance-type": "Standard_ND96isr_H100_v5"}, limits={"rdma/ib": 8},
                     env={"NCCL_TOPO_FILE": "/etc/ndv5-topo.xml", "NCCL_IB_PCI_RELAXED_ORDERING": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                          "NCCL_SOCKET_IFNAME": "eth0", "UCX_TLS": "rc", "UCX_NET_DEVICES": "mlx5_ib0:1", "NCCL_MIN_NCHANNELS": "32"},
                     caps=["IPC_LOCK"], host_paths={}),
    "oci-roce": dict(selector={"node.kubernetes.io/instance-type": "BM.GPU.H100.8"},
                     env={"NCCL_IB_GID_INDEX": "3", "NCCL_IB_TC": "41", "NCCL_IB_SL": "0", "NCCL_IB_TIMEOUT": "22",
                          "NCCL_CUMEM_ENABLE": "0", "NCCL_IB_SPLIT_DATA_ON_QPS": "0", "NCCL_SOCKET_IFNAME": "eth0",
                          "NCCL_IB_HCA": "=" + ",".join(f"mlx5_{i}" for i in (0, 1, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17))},
                     caps=["IPC_LOCK"], privileged=True, host_network=True, host_paths={"/dev/infiniband": "/dev/infiniband"}),
}


@functools.lru_cache(maxsize=None)  # each case is read by several tests, none changes it
def render(name: str) -> list[dict]:
    profile, overrides = CASES[name]
    return render_objects(load_job_config(profile, overrides=overrides), git_revision=REV)


def wired(objs: list[dict]) -> tuple[dict, dict, dict, dict, dict]:
    """(pod metadata, pod spec, training container, its env {name: value or valueFrom}, its limits) as the
    cluster sees the pod: a PyTorchJob's Master, or a TrainingRuntime's pod with the TrainJob's trainer over it."""
    kinds = {o["kind"]: o for o in objs}
    if "PyTorchJob" in kinds:
        template = kinds["PyTorchJob"]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
        main = template["spec"]["containers"][0]
        env, limits = main["env"], main["resources"]["limits"]
    else:
        template = kinds["TrainingRuntime"]["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
        main = template["spec"]["containers"][0]
        trainer = kinds["TrainJob"]["spec"]["trainer"]
        env, limits = trainer["env"], trainer["resourcesPerNode"]["limits"]
    return (template["metadata"], template["spec"], main, {e["name"]: e.get("value", e.get("valueFrom")) for e in env}, limits)


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_and_valid(name):
    objs = render(name)
    text = to_yaml(objs)
    path = GOLDEN / f"{name}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"{path} missing: run UPDATE_GOLDEN=1 pytest tests/test_fabrics.py"
    assert text == path.read_text(), f"{name} differs from {path}; if intended, UPDATE_GOLDEN=1"
    assert validate_objects(objs) == []


@pytest.mark.parametrize("api", ["pytorchjob", "trainjob"])
@pytest.mark.parametrize("fabric", PRESETS)
def test_documented_wiring(fabric, api):
    doc = DOC[fabric]
    meta, spec, main, env, limits = wired(render(f"{api}-fabric-{fabric}"))
    assert {k: spec["nodeSelector"].get(k) for k in doc["selector"]} == doc["selector"]
    assert limits["nvidia.com/gpu"] == 8 and {k: limits.get(k) for k in doc.get("limits", {})} == doc.get("limits", {})
    assert {k: env.get(k) for k in doc["env"]} == doc["env"] and env["DLRM_FABRIC"] == fabric
    security = main["securityContext"]
    assert sorted(security["capabilities"].get("add", [])) == doc.get("caps", [])
    assert security.get("privileged", False) == doc.get("privileged", False)
    assert spec.get("hostNetwork", False) == doc.get("host_network", False)
    assert spec.get("dnsPolicy") == ("ClusterFirstWithHostNet" if doc.get("host_network") else None)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    node_paths = {v["hostPath"]["path"]: mounts[n] for n, v in volumes.items() if "hostPath" in v and n in mounts}
    assert node_paths == doc["host_paths"]
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
    annotations = meta.get("annotations", {})
    if "networks" in doc:
        assert annotations["networking.gke.io/default-interface"] == "eth0"
        interfaces = json.loads(annotations["networking.gke.io/interfaces"])
        assert interfaces == [{"interfaceName": "eth0", "network": "default"}] + [
            {"interfaceName": f"eth{i}", "network": n} for i, n in enumerate(doc["networks"], 1)]
    else:
        assert not any(k.startswith(("networking.gke.io", "devices.gke.io")) for k in annotations)
    sidecars = [c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    if "sidecar" not in doc:
        assert sidecars == []
        return
    name, image, caps = doc["sidecar"]
    (sidecar,) = sidecars
    assert (sidecar["name"], sidecar["image"], sorted(sidecar["securityContext"]["capabilities"]["add"])) == (name, image, caps)
    assert not sidecar["securityContext"].get("privileged") and "resources" not in sidecar
    assert {m["mountPath"] for m in sidecar["volumeMounts"]} >= {"/hostsysfs", "/hostprocsysfs"}
    assert {volumes[m["name"]]["hostPath"]["path"] for m in sidecar["volumeMounts"]} >= {"/sys", "/proc/sys"}
    assert [line.removeprefix("- path: ") for line in annotations[f"devices.gke.io/container.{name}"].splitlines()] == doc["devices"]


@pytest.mark.parametrize("node,count", [("p5.48xlarge", 32), ("p5e.48xlarge", 32), ("p5en.48xlarge", 16), ("p6-b200.48xlarge", 8)])
def test_efa_count_comes_from_the_instance_type(node, count):
    cfg = load_job_config("synthetic-smoke", overrides={"cluster": {"fabric": "efa", "instance_type": node}})
    assert pods.train_pod(cfg).main.limits["vpc.amazonaws.com/efa"] == count
    assert pods.node_selector(cfg)["node.kubernetes.io/instance-type"] == node
    assert load_job_config("synthetic-smoke", overrides={"cluster": {"fabric": "efa", "instance_type": node, "efa": count}})
    with pytest.raises(ConfigError, match=f"cluster.efa={count + 1}: {node} has {count} EFA devices"):
        load_job_config("synthetic-smoke", overrides={"cluster": {"fabric": "efa", "instance_type": node, "efa": count + 1}})



def test_efa_on_an_unlisted_instance_type_takes_its_count_from_cluster_efa():
    cfg = load_job_config("synthetic-smoke", overrides={"cluster": {"fabric": "efa", "instance_type": "p4d.24xlarge", "efa": 4}})
    assert pods.train_pod(cfg).main.limits["vpc.amazonaws.com/efa"] == 4
    with pytest.raises(ConfigError, match=r"'p4d.24xlarge' is not a node type of cluster.fabric=efa .*give its count, cluster.efa"):
        load_job_config("synthetic-smoke", overrides={"cluster": {"fabric": "efa", "instance_type": "p4d.24xlarge"}})


def test_cluster_specific_values_are_parameters():
    cfg = load_job_config("synthetic-smoke", overrides={"cluster": {"fabric": "gke-tcpxo", "fabric_options": {
        "networks": [f"a3mega-net-{i}" for i in range(8)],
        "daemon_image": "registry.example/tcpgpudmarxd-dev:v1.0.22"}}})
    pod = pods.train_pod(cfg)
    assert json.loads(pod.annotations["networking.gke.io/interfaces"])[8] == {"interfaceName": "eth8", "network": "a3mega-net-7"}
    assert pod.init_containers[-1].image == "registry.example/tcpgpudmarxd-dev:v1.0.22"
    with pytest.raises(ConfigError, match=r"plugin_version=v1\.0\.99: no documented gke-tcpxo daemon .*daemon_image"):
        load_job_config("synthetic-smoke", overrides={"cluster": {"fabric": "gke-tcpxo", "fabric_options": {"plugin_version": "v1.0.99"}}})
    azure = load_job_config("synthetic-smoke", overrides={"cluster": {"fabric": "azure-ib", "fabric_options": {
        "topology_configmap": "ndv5-topology", "rdma_resource": "rdma/shared_ib", "rdma_count": 1}}})
    pod = pods.train_pod(azure)
    assert {e.name: e.value for e in pod.main.env}["NCCL_TOPO_FILE"] == "/opt/nvidia-topology/topo.xml"
    assert pod.main.limits["rdma/shared_ib"] == 1 and "rdma/ib" not in pod.main.limits
    assert any(v.kind == "configMap" and v.source == {"name": "ndv5-topology"} for v in pod.volumes)


def test_stock_cluster_runtime_takes_a_fabric_without_a_sidecar_only():
    cfg = {"api": "trainjob", "nodes": 2, "trainjob": {"cluster_runtime": "torch-distributed"}}
    objs = render_objects(load_job_config("criteo-fl15", overrides={**cfg, "cluster": {"fabric": "azure-ib"}}), REV)
    job = next(o for o in objs if o["kind"] == "TrainJob")
    assert job["spec"]["trainer"]["resourcesPerNode"]["limits"]["rdma/ib"] == 8
    patched = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    container = patched["template"]["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"] and validate_objects(objs) == []
    for fabric, needs in (("gke-tcpxo", "a sidecar"), ("oci-roce", "hostNetwork")):
        with pytest.raises(ConfigError, match=f"cluster.fabric={fabric} needs {needs}, which a TrainJob cannot add"):
            load_job_config("criteo-fl15", overrides={**cfg, "cluster": {"fabric": fabric}})


def test_pod_block_renders_alike_for_both_job_apis():
    views = [wired(render(f"{api}-pod-block-tas")) for api in ("pytorchjob", "trainjob")]
    for meta, spec, main, env, _ in views:
        assert meta["labels"]["topology.kubernetes.io/zone"] == "us-east-1a"
        assert meta["annotations"]["kueue.x-k8s.io/podset-preferred-topology"] == "cloud.google.com/gce-topology-block"
        assert meta["annotations"]["example.com/owner"] == "ml-platform"
        assert spec["affinity"] == POD_BLOCK["affinity"] and spec["topologySpreadConstraints"] == POD_BLOCK["topology_spread_constraints"]
        assert (spec["schedulerName"], spec["runtimeClassName"], spec["hostNetwork"], spec["dnsPolicy"]) == (
            "my-scheduler", "nvidia", True, "ClusterFirstWithHostNet")
        assert spec["initContainers"] == POD_BLOCK["init_containers"]
        assert {"name": "certs", "secret": {"secretName": "ca-bundle"}} in spec["volumes"]
        assert {"name": "certs", "mountPath": "/etc/ssl/custom", "readOnly": True} in main["volumeMounts"]
        assert main["securityContext"]["capabilities"] == {"add": ["SYS_PTRACE"], "drop": ["ALL"]}
        assert env["WANDB_API_KEY"] == POD_BLOCK["env"][0]["valueFrom"]
    assert views[0][2]["envFrom"] == views[1][2]["envFrom"] == POD_BLOCK["env_from"]
    pytorch_pod = {k: v for k, v in views[0][1].items() if k not in ("containers", "restartPolicy")}
    runtime_pod = {k: v for k, v in views[1][1].items() if k not in ("containers", "restartPolicy")}
    assert pytorch_pod == runtime_pod


def test_pod_block_keys_with_dots_through_set_and_what_run_local_cannot_apply():
    cfg = load_job_config("synthetic-smoke", overrides=[r"cluster.pod.labels.topology\.kubernetes\.io/zone=us-east-1a",
                                                        "cluster.pod.host_network=true", "cluster.pod.scheduler_name=kai",
                                                        'cluster.pod.capabilities=["IPC_LOCK"]'])
    pod = pods.train_pod(cfg)
    assert pod.labels == {"topology.kubernetes.io/zone": "us-east-1a"}
    assert podblock.local_limits(pod) == [
        "pod schedulerName: no scheduler places local processes",
        "pod hostNetwork: local processes already share this machine's network",
        "container pytorch: capabilities IPC_LOCK not granted: local processes keep this user's privileges"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_rendered_file_decodes_to_the_same_plan(name):
    """run-local FILE sees what run-local --profile sees: the sidecars, host network and PodSpec fields included."""
    profile, overrides = CASES[name]
    plan = plan_job(load_job_config(profile, overrides=overrides), git_revision=REV)
    decoded = plan_from_objects(render(name))
    assert decoded.groups == plan.groups
    pod = plan.groups[0].pod
    assert podblock.local_limits(decoded.groups[0].pod) == podblock.local_limits(pod)


def test_run_local_runs_no_init_container_of_another_image(tmp_path):
    cfg = load_job_config("synthetic-smoke", overrides={"cluster": {"fabric": "gke-tcpxo", "pod": {"init_containers": [
        {"name": "wait-for-dns", "image": "busybox:1.36", "command": ["sh", "-c", "nslookup kubernetes.default"]}]}}})
    plan = plan_job(cfg)
    (replica,) = plan.replicas
    folders = {v.name: tmp_path / v.name for v in plan.pod(replica).volumes}
    said: list[str] = []
    steps = plan_steps(plan, replica, {}, folders, said.append)
    assert [s.container for s in steps] == ["pytorch"]
    assert said[:2] == ["master-0: sidecar init container tcpxo-daemon is not run locally",
                        "master-0: init container wait-for-dns is not run locally: its image busybox:1.36 is not this machine"]


@pytest.mark.parametrize("overrides,error", [
    ({"cluster": {"pod": {"labels": {"app.kubernetes.io/name": "x"}}}}, r"cluster.pod.labels: app.kubernetes.io/name is one of the job's own"),
    ({"cluster": {"pod": {"annotations": {"kueue.x-k8s.io/podset-required-topology": "x"}}}},
     r"kueue.x-k8s.io/podset-required-topology is rendered from scheduling.topology"),
    ({"cluster": {"pod": {"volumes": [{"name": "shm", "emptyDir": {}}]}}}, r"cluster.pod.volumes\[0\].name='shm': the launcher renders"),
    ({"cluster": {"pod": {"mounts": [{"name": "nope", "mountPath": "/x"}]}}}, r"cluster.pod.mounts\[0\].name='nope': no such volume"),
    ({"cluster": {"pod": {"capabilities": ["ipc_lock"]}}}, r"cluster.pod.capabilities\[0\]='ipc_lock': expected a Linux capability"),
    ({"cluster": {"pod": {"dns_policy": "ClusterFirstWithHostNet"}}}, r"ClusterFirstWithHostNet is for host_network=true"),
    ({"cluster": {"pod": {"env": [{"name": "HOME", "value": "/x"}]}}}, r"cluster.pod.env\[0\].name=HOME: already set"),
    ({"api": "trainjob", "trainjob": {"cluster_runtime": "torch-distributed"},
      "cluster": {"pod": {"env_from": [{"secretRef": {"name": "s"}}]}}}, r"cluster.pod.env_from cannot reach trainjob.cluster_runtime"),
])
def test_pod_block_refusals(overrides, error):
    with pytest.raises(ConfigError, match=error):
        pods.train_pod(load_job_config("synthetic-smoke", overrides=overrides))


def test_pod_block_through_a_stock_cluster_runtimes_patch():
    patchable = {k: POD_BLOCK[k] for k in ("labels", "annotations", "affinity", "volumes", "mounts", "capabilities", "env")}
    objs = render_objects(load_job_config("criteo-fl15", overrides={
        "api": "trainjob", "nodes": 2, "trainjob": {"cluster_runtime": "torch-distributed"}, "cluster": {"pod": patchable}}), REV)
    job = next(o for o in objs if o["kind"] == "TrainJob")
    template = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    assert template["metadata"]["labels"]["topology.kubernetes.io/zone"] == "us-east-1a"
    assert template["spec"]["affinity"] == POD_BLOCK["affinity"] and POD_BLOCK["volumes"][0] in template["spec"]["volumes"]
    assert template["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] == ["SYS_PTRACE"]
    assert {"name": "WANDB_API_KEY", "valueFrom": POD_BLOCK["env"][0]["valueFrom"]} in job["spec"]["trainer"]["env"]
    assert validate_objects(objs) == []
