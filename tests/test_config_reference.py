"""docs/config-reference.md is generated from the typed config: every key documented, the file current."""
from __future__ import annotations

import dataclasses

from launcher import config_reference as ref
from launcher.config import JobConfig


def _leaf_keys(cls=JobConfig, prefix="") -> set[str]:
    """Every leaf key, walked from the instances' values (not from the annotations the generator reads)."""
    out = set()
    for f in dataclasses.fields(cls):
        value = getattr(cls(), f.name)
        out |= _leaf_keys(type(value), f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else {prefix + f.name}
    return out


def test_every_field_of_the_job_config_and_the_train_config_is_documented():
    rows = ref.fields()
    assert {r["key"] for r in rows} == _leaf_keys() and len(rows) == len(_leaf_keys())
    assert any(r["key"] == "train.optim.lr" for r in rows) and any(r["key"] == "resources.memory_per_gpu" for r in rows)
    missing = [r["key"] for r in rows if not r["note"].strip()]
    assert not missing, f"fields with no description (a comment beside the field, or launcher.config_reference.NOTES): {missing}"
    assert {r["section"] for r in rows} <= set(ref.RENDERS), "a section without its 'renders to' line"


def test_notes_are_only_for_fields_without_a_comment():
    """A NOTES entry for a key that does not exist, or whose field has a comment, would never show."""
    rows = {r["key"]: r for r in ref.fields()}
    stale = [k for k, note in ref.NOTES.items() if k not in rows or rows[k]["note"] != note]
    assert not stale, stale


def test_types_defaults_and_allowed_values_come_from_the_annotations():
    rows = {r["key"]: r for r in ref.fields()}
    assert rows["nodes"]["type"] == "int" and rows["nodes"]["allowed"] == "an integer in [1, 10000]" and rows["nodes"]["default"] == "1"
    assert rows["storage.mode"]["allowed"] == "one of `pvc`, `hostPath`, `mount`, `stage`"
    assert rows["train.dist.device_memory"]["allowed"].startswith("a size as a Kubernetes quantity")
    assert rows["train_tables"]["type"] == "str or list[int]"
    extra = rows["cluster.extra_resources"]
    assert extra["type"] == "dict[str, int]" and "each value: an integer in [1, 2147483647]" in extra["allowed"]
    assert rows["cluster.termination_grace_seconds"]["default"] == "120" and "SIGTERM" in rows["cluster.termination_grace_seconds"]["note"]


def test_the_committed_reference_is_the_generated_one():
    assert ref.OUTPUT.read_text() == ref.render(), "docs/config-reference.md is stale: run python -m launcher.config_reference"
    assert ref.main(["--check"]) == 0
