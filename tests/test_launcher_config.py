"""The job config: layering (profile <- values <- flags <- --set), unknown keys, cross-field checks."""
from __future__ import annotations

import re
import sys
import warnings

import pytest

from dlrm.data.spec import FeatureSpec
from dlrm.errors import ConfigError
from launcher.encode import plan_job
from launcher.config import PROFILES_DIR, TABLE_PRESETS, JobConfig, load_job_config, parse_quantity, table_sizes
from launcher.resources import pod_resources, scale_quantity

PROFILES = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_loads_and_validates(profile):
    cfg = load_job_config(profile)
    assert isinstance(cfg, JobConfig) and cfg.name and cfg.image


def test_required_profiles_exist():
    assert {"criteo-fl15", "synthetic-smoke"} <= set(PROFILES)


def test_default_image_is_versioned():
    from dlrm import __version__

    assert load_job_config("synthetic-smoke").image == f"dlrm-k8s-train:{__version__}"
    assert load_job_config("synthetic-smoke").preprocess.image == f"dlrm-k8s-preprocess:{__version__}"


def test_layering_order(tmp_path):
    values = tmp_path / "v.yaml"
    values.write_text("nodes: 3\ngpus_per_node: 2\ntrain:\n  epochs: 4\n  optim:\n    lr: 0.25\n")
    cfg = load_job_config("synthetic-smoke", values=[str(values)])
    assert (cfg.nodes, cfg.gpus_per_node, cfg.train.epochs, cfg.train.optim.lr) == (3, 2, 4, 0.25)
    assert cfg.train.model.embedding_dim == 8  # the profile's, untouched by the merge
    cfg = load_job_config("synthetic-smoke", values=[str(values)], overrides={"nodes": 5})
    assert cfg.nodes == 5
    cfg = load_job_config("synthetic-smoke", values=[str(values)], overrides=["nodes=6", "train.optim.lr=0.5"])
    assert (cfg.nodes, cfg.train.optim.lr) == (6, 0.5)


def test_dict_overrides_keep_types():
    cfg = load_job_config("synthetic-smoke", overrides={"image": "1.10", "cluster": {"env": {"A": "true"}}})
    # JSON-encoded, so "1.10" is not read back as the float 1.1, nor "true" as a bool.
    assert cfg.image == "1.10" and cfg.cluster.env == {"A": "true"}


def test_profile_as_path(tmp_path):
    p = tmp_path / "mine.yaml"
    text = (PROFILES_DIR / "synthetic-smoke.yaml").read_text()
    p.write_text(text.replace("\nname: ", "\nname: mine\n_old_name: ", 1).replace("\n_old_name: ", "\n# was: ", 1))
    assert load_job_config(str(p)).name == "mine"


def test_unknown_profile_lists_known():
    with pytest.raises(ConfigError, match=r"unknown profile 'nope' \(known: .*synthetic-smoke"):
        load_job_config("nope")


def test_unknown_key_names_key_file_and_valid_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster:\n  gpu_prodcut: H100\n")
    with pytest.raises(ConfigError) as e:
        load_job_config("synthetic-smoke", values=[str(bad)])
    msg = str(e.value)
    assert str(bad) in msg and "cluster.gpu_prodcut" in msg and "gpu_product" in msg and "\n" not in msg


def test_unknown_override_key():
    with pytest.raises(ConfigError, match=r"unknown key train\.optim\.lrr .*valid keys of train\.optim: .*lr"):
        load_job_config("synthetic-smoke", overrides=["train.optim.lrr=1"])


def test_wrong_type_names_path():
    with pytest.raises(ConfigError, match=r"nodes: expected an integer, got 'two'"):
        load_job_config("synthetic-smoke", overrides={"nodes": "two"})


# Each cross-field rule: the overrides that break it and what the one-line message must contain.
CROSS_FIELD = [
    ({"gpus_per_node": 0}, ["gpus_per_node: expected an integer >= 1, got 0"]),
    ({"gpus_per_node": 9}, ["gpus_per_node", "max_gpus_per_node=8", "got 9"]),
    ({"gpus_per_node": 4, "max_gpus_per_node": 2}, ["max_gpus_per_node=2", "got 4"]),
    ({"nodes": 0}, ["nodes: expected an integer in [1, 10000], got 0"]),
    ({"name": "Bad_Name"}, ["name 'Bad_Name'", "DNS-1035"]),
    ({"name": "9lives"}, ["name '9lives'", "DNS-1035"]),
    ({"name": "a" * 54, "nodes": 16}, [f"name '{'a' * 54}' is 54 chars", "'-worker-14'", "at most 53"]),
    ({"name": "a" * 55}, ["is 55 chars", "'-master-0'", "at most 54"]),
    ({"namespace": "Team_A"}, ["namespace 'Team_A'"]),
    ({"resources": {"shm_size": "16Gi", "memory_limit": "16Gi", "memory_request": "8Gi"}},
     ["resources.shm_size=16Gi", "resources.memory_limit=16Gi"]),
    ({"resources": {"memory_request": "32Gi", "memory_limit": "16Gi"}}, ["resources.memory_request=32Gi", "resources.memory_limit=16Gi"]),
    ({"resources": {"shm_per_gpu": "16Gi"}}, ["resources.shm_size=16Gi (from resources.shm_per_gpu x 1 GPUs)",
                                             "resources.memory_limit=16Gi (the memory request)"]),
    ({"resources": {"memory_per_gpu": "1e3"}}, ["resources.memory_per_gpu", "'1e3'", "not an exponent form"]),
    ({"resources": {"cpu_per_gpu": "0"}}, ["resources.cpu_per_gpu must be above 0"]),
    ({"resources": {"memory_per_gpu": "3Gi"}, "train_tables": [10**7] * 4},
     ["resources.memory_limit=3Gi less shm_size=2Gi", "writing a checkpoint copies up to", "resources.memory_per_gpu"]),
    ({"resources": {"memory_limit": "16 Gi"}}, ["resources.memory_limit", "'16 Gi'", "Kubernetes quantity"]),
    ({"resources": {"cpu_request": "4cores"}}, ["resources.cpu_request", "'4cores'"]),
    ({"resources": {"cpu_request": "8", "cpu_limit": "4"}}, ["resources.cpu_request=8", "resources.cpu_limit=4"]),
    ({"storage": {"mode": "nfs"}}, ["storage.mode", "['pvc', 'hostPath', 'mount', 'stage']", "'nfs'"]),
    ({"storage": {"mode": "mount"}}, ["storage.mode=mount", "s3://bucket/prefix", "'/mnt/dlrm/synthetic'"]),
    ({"storage": {"mode": "pvc"}}, ["storage.mode=pvc", "storage.claim"]),
    ({"storage": {"mode": "pvc", "claim": "data"}}, ["'/mnt/dlrm/synthetic'", "relative folder inside claim 'data'"]),
    ({"dataset": "s3://b/p"}, ["storage.mode=hostPath", "'s3://b/p'"]),
    ({"dataset": "relative/dir"}, ["'relative/dir'", "absolute node path"]),
    ({"dataset": ""}, ["dataset is empty"]),
    ({"scheduling": {"gang": "kueue"}}, ["scheduling.gang=kueue", "scheduling.queue"]),
    ({"scheduling": {"gang": "yunikorn"}}, ["scheduling.gang", "'yunikorn'"]),
    ({"scheduling": {"min_available": 2}}, ["scheduling.min_available=2", "nodes=1"]),
    ({"cluster": {"clean_pod_policy": "Some"}}, ["cluster.clean_pod_policy", "'Some'"]),
    ({"cluster": {"env": {"BAD-NAME": "x"}}}, ["cluster.env", "'BAD-NAME'"]),
    ({"cluster": {"extra_resources": {"rdma": 1}}}, ["cluster.extra_resources", "'rdma'"]),
    ({"cluster": {"service_account": "Admin"}}, ["cluster.service_account", "'Admin'"]),
    ({"train_tables": "criteo-fl99"}, ["train_tables 'criteo-fl99'", "criteo-fl15"]),
    ({"train_tables": [10, 0]}, ["train_tables", "[10, 0]"]),
    ({"train_tables": ""}, ["'/mnt/dlrm/synthetic'", "train_tables"]),
    ({"kind": "serve"}, ["kind", "'serve'"]),
    ({"train": {"epochs": 0}}, ["train.epochs: expected an integer >= 1, got 0"]),
    ({"train": {"checkpoint_dir": "runs/ckpt"}}, ["train.checkpoint_dir 'runs/ckpt'", "s3://"]),
    ({"train": {"out": "/mnt/runs/x"}}, ["train.out '/mnt/runs/x'", "s3://bucket/prefix/run", "storage.output_claim"]),
    ({"train_tables": [10**9] * 4}, ["nodes=1 x gpus_per_node=1", "train.dist.device_memory=16Gi", "do not fit"]),
]


@pytest.mark.parametrize("overrides,fragments", CROSS_FIELD, ids=[str(o) for o, _ in CROSS_FIELD])
def test_cross_field_errors(overrides, fragments):
    with pytest.raises(ConfigError) as e:  # the config's own checks, then the plan's (the embedding plan fits)
        plan_job(load_job_config("synthetic-smoke", overrides=overrides))
    msg = str(e.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, (f, msg)


@pytest.mark.parametrize("gpus", [1, 8])
def test_gpu_boundaries_accepted(gpus):
    assert load_job_config("synthetic-smoke", overrides={"gpus_per_node": gpus}).gpus_per_node == gpus


@pytest.mark.parametrize("gpus,cpu,memory,shm", [(1, "8", "100Gi", "16Gi"), (2, "16", "200Gi", "32Gi"), (8, "64", "800Gi", "128Gi")])
def test_cpu_and_memory_follow_the_gpus(gpus, cpu, memory, shm):
    """Issue 20: `--gpus 1` asks for an eighth of an 8-GPU node, from the profile's per-GPU figures."""
    plan = plan_job(load_job_config("criteo-fl15", overrides={"gpus_per_node": gpus, "nodes": 8 // gpus}))
    main = plan.groups[0].pod.main
    assert main.requests == {"cpu": cpu, "memory": memory} and main.limits["memory"] == memory
    assert next(v for v in plan.groups[0].pod.volumes if v.name == "shm").source["sizeLimit"] == shm


def test_an_explicit_total_wins_over_the_per_gpu_figure():
    cfg = load_job_config("criteo-fl15", overrides=["gpus_per_node=2", "nodes=4", "resources.cpu_request=3",
                                                    "resources.memory_limit=300Gi", "resources.cpu_per_gpu=500m"])
    assert pod_resources(cfg) == {"cpu_request": "3", "cpu_limit": "", "memory_request": "200Gi",
                                  "memory_limit": "300Gi", "shm_size": "32Gi"}
    assert scale_quantity("500m", 3, "x") == "1500m" and scale_quantity("1.5", 3, "x") == "4.5"


def test_the_host_memory_check_uses_the_rendered_figures():
    """A node whose memory limit less /dev/shm cannot hold its ranks' embedding weights (written to host
    memory by a checkpoint) is refused; the same figures with more memory per GPU pass."""
    tables = ["train_tables=[10000000, 10000000, 10000000, 10000000]"]
    with pytest.raises(ConfigError, match="leaves 1.0 GiB per node, but writing a checkpoint copies up to 1.2 GiB"):
        plan_job(load_job_config("synthetic-smoke", overrides=tables + ["resources.memory_per_gpu=3Gi"]))
    plan_job(load_job_config("synthetic-smoke", overrides=tables + ["resources.memory_per_gpu=4Gi"]))


def test_longest_name_that_fits():
    # 63 - len("-worker-14") = 53 characters is exactly allowed with 16 nodes.
    assert len(load_job_config("synthetic-smoke", overrides={"name": "a" * 53, "nodes": 16}).name) == 53


def test_plan_fits_only_with_enough_ranks():
    """Criteo FL15 with fp32 tables needs ~18 GiB: not one 16 GiB GPU, fine on eight."""
    over = {"train_tables": "criteo-fl15", "train": {"model": {"embedding_dim": 128, "bottom_mlp": [128]},
                                                    "data": {"batch_size": 4096}}}
    with pytest.raises(ConfigError, match="do not fit"):
        plan_job(load_job_config("synthetic-smoke", overrides=over))
    assert plan_job(load_job_config("synthetic-smoke", overrides={**over, "gpus_per_node": 8})).world_size == 8


def test_preprocess_checks():
    with pytest.raises(ConfigError, match="preprocess.input and preprocess.output"):
        load_job_config("criteo-preprocess", overrides={"preprocess": {"input": ""}})
    with pytest.raises(ConfigError, match="storage.mode=mount is not supported"):
        load_job_config("criteo-preprocess", overrides={"storage": {"mode": "mount"}})


def test_a_local_folder_at_the_dataset_path_changes_nothing(tmp_path):
    """Rendering depends on declared inputs only: a feature spec that happens to sit at the dataset's
    path on this machine is not read (the cluster's copy may differ)."""
    FeatureSpec.default(tmp_path, [11, 22, 33]).save()
    cfg = load_job_config("synthetic-smoke", overrides={"dataset": str(tmp_path)})
    assert table_sizes(cfg) == [1000, 500, 100, 50, 10, 3]  # the profile's train_tables
    with pytest.raises(ConfigError, match="--feature-spec"):
        plan_job(load_job_config("synthetic-smoke", overrides={"dataset": str(tmp_path), "train_tables": ""}))
    assert table_sizes(load_job_config("criteo-fl15")) == TABLE_PRESETS["criteo-fl15"]


def test_missing_planner_warns_and_skips(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlrm.dist.plan", None)  # `import` now raises ModuleNotFoundError
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan_job(load_job_config("synthetic-smoke", overrides={"train_tables": [10**9] * 4}))
    assert any("plan was not checked" in str(w.message) for w in caught)


@pytest.mark.parametrize("text,value", [("64Gi", 64 * 2**30), ("500m", 0.5), ("16", 16), ("1.5G", 1.5e9),
                                        ("2e3", 2000), ("1Ki", 1024), (".5", 0.5)])
def test_parse_quantity(text, value):
    assert parse_quantity(text, "x") == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "Gi", "64GiB", "1.2.3", "-", "64 Gi", "1Ki1"])
def test_parse_quantity_rejects(text):
    with pytest.raises(ConfigError, match=r"^x: "):
        parse_quantity(text, "x")


def test_every_numeric_job_field_has_a_range_and_choices_are_literals():
    """Each int is Annotated with its Range (checked once by the loader, key in the message); each
    choice is a Literal. dict values (extra_resources counts) included."""
    import dataclasses
    import typing

    from dlrm.config import check_values

    def walk(cls, prefix=""):
        for name, tp in typing.get_type_hints(cls, include_extras=True).items():
            if name == "train":  # TrainConfig: dlrm's own test covers it
                continue
            if typing.get_origin(tp) is dict:
                tp = typing.get_args(tp)[1]
            base = typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp
            if dataclasses.is_dataclass(base):
                yield from walk(base, f"{prefix}{name}.")
            elif base in (int, float):
                yield f"{prefix}{name}", typing.get_origin(tp) is typing.Annotated
            elif base is str:
                assert name not in ("kind", "mode", "gang", "clean_pod_policy", "image_pull_policy", "engine"), name
    fields = list(walk(JobConfig))
    assert len(fields) >= 15 and not [p for p, bounded in fields if not bounded], fields
    check_values(load_job_config("criteo-fl15"))


# Names, references and labels: full-match rules (a trailing newline or control character is refused).
NAME_CASES = [
    ({"name": "dlrm\n"}, "name 'dlrm\\n' is not a DNS-1035 label"),
    ({"name": "dlrm-"}, "name 'dlrm-' is not a DNS-1035 label"),
    ({"namespace": "ml\x00"}, "namespace 'ml\\x00' is not a DNS-1123 label"),
    ({"namespace": "a" * 64}, "is not a DNS-1123 label"),
    ({"storage": {"output_claim": "runs\n"}}, "storage.output_claim 'runs\\n' is not a Kubernetes object name"),
    ({"s3": {"secret": "creds\t"}}, "s3.secret 'creds\\t' is not a Kubernetes object name"),
    ({"scheduling": {"priority_class": "High"}}, "scheduling.priority_class 'High'"),
    ({"cluster": {"image_pull_secrets": ["a\n"]}}, "cluster.image_pull_secrets[0] 'a\\n'"),
    ({"cluster": {"node_selector": {"example.com/pool": "gpu\n"}}}, "cluster.node_selector.example.com/pool 'gpu\\n' is not a label value"),
    ({"cluster": {"node_selector": {"-bad": "x"}}}, "cluster.node_selector key '-bad' is not a qualified name"),
    ({"cluster": {"node_selector": {"a" * 64: "x"}}}, "is not a qualified name"),
    ({"cluster": {"gpu_product": "x" * 64}}, "cluster.gpu_product"),
    ({"cluster": {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}}, "operator Exists takes no value"),
    ({"cluster": {"tolerations": [{"key": "k", "value": "v", "effect": "NoRun"}]}}, "tolerations[0].effect must be empty or one of"),
    ({"cluster": {"tolerations": [{"key": "k", "valu": "v"}]}}, "tolerations[0]: unknown key 'valu'"),
    ({"cluster": {"tolerations": [{"value": "v"}]}}, "an empty key needs operator Exists"),
    ({"cluster": {"extra_resources": {"gpu": 1}}}, "cluster.extra_resources key 'gpu' is not a qualified name with a domain prefix"),
    ({"scheduling": {"gang": "kueue", "queue": "q\n"}}, "scheduling.queue 'q\\n' is not the name of a queue or priority class"),
    ({"image": " reg/x:1"}, "image ' reg/x:1' is not an image reference"),
    ({"preprocess": {"spark": {"service_account": "Spark"}}}, "preprocess.spark.service_account 'Spark'"),
]


@pytest.mark.parametrize("overrides,fragment", NAME_CASES, ids=[repr(o) for o, _ in NAME_CASES])
def test_names_follow_the_api_servers_rules(overrides, fragment):
    with pytest.raises(ConfigError) as e:
        load_job_config("synthetic-smoke", overrides=overrides)
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_valid_names_and_labels_pass():
    cfg = load_job_config("synthetic-smoke", overrides={
        "namespace": "team-a", "storage": {"output_claim": "runs.v2"}, "s3": {"secret": "aws.creds-1"},
        "cluster": {"node_selector": {"example.com/pool": "gpu_a.1", "zone": ""}, "gpu_product": "NVIDIA-H100-80GB-HBM3",
                    "tolerations": [{"operator": "Exists"}, {"key": "k", "operator": "Equal", "value": "v",
                                                             "effect": "NoExecute", "tolerationSeconds": 60}]}})
    assert cfg.cluster.node_selector["zone"] == ""


@pytest.mark.parametrize("text,hint", [("64GiB", "Kubernetes writes 64Gi (no B)"),
                                       ("16GB", "Kubernetes writes 16G (no B) for decimal, 16Gi for binary")])
def test_the_other_size_grammar_gets_a_hint(text, hint):
    with pytest.raises(ConfigError, match=re.escape(hint)):
        parse_quantity(text, "resources.memory_limit")


def test_mlperf_dcnv2_profile_trains_the_builtin_recipe():
    """The profile's train block is dlrm/configs/mlperf-dcnv2.yaml (plus its run output on S3): one recipe."""
    from dlrm.config import TrainConfig, load_config, to_dict
    from dlrm.training.train import BUILTIN_CONFIGS

    job = load_job_config("mlperf-dcnv2")
    builtin = load_config(TrainConfig, files=[BUILTIN_CONFIGS / "mlperf-dcnv2.yaml"])
    ours = to_dict(job.train)
    assert ours.pop("out") == "s3://dlrm-runs/dlrm-mlperf-dcnv2"
    theirs = to_dict(builtin)
    theirs.pop("out")
    assert ours == theirs
    t = job.train
    assert (t.model.interaction, t.model.dcn_num_layers, t.model.dcn_low_rank_dim) == ("dcn", 3, 512)
    assert (t.optim.optimizer, t.optim.lr, t.optim.warmup_steps, t.optim.decay_steps) == ("adagrad", 0.005, 0, 0)
    assert (t.data.batch_size, t.evals_per_epoch, t.target_auc) == (65536, 20, 0.80275)
    assert table_sizes(job) == TABLE_PRESETS["mlperf-dcnv2"] and max(table_sizes(job)) == 40_000_000


def test_mlperf_dcnv2_plan_counts_multi_hot_and_dcn():
    """8 H100s hold MLPerf's tables; 1 GPU is refused with the dense arches in the numbers."""
    plan_job(load_job_config("mlperf-dcnv2"))
    with pytest.raises(ConfigError, match="replicated dense arches"):
        plan_job(load_job_config("mlperf-dcnv2", overrides={"gpus_per_node": 1}))
