"""A dataset's identity as a checkpoint depends on it: what resume, eval and export compare.

    identity = dataset_identity(spec)               # recorded in every checkpoint's metadata
    errors = feature_differences(meta, identity)    # 'dataset feature cat_3 hotness 1 -> 20', ...

The tables, each table's hotness and padded features, the numerical features and the row counts: the
same weights mean another model when any of these changed, so every reader of a checkpoint refuses it.
"""
from __future__ import annotations

from dlrm.data.spec import FeatureSpec


def dataset_identity(spec: FeatureSpec, rows: bool = True) -> dict:
    """What the saved state depends on in the dataset: its tables, each table's hotness (ids pooled
    per row: the same weights mean another model on k-hot rows) and padded features, the numerical
    features, train rows (the data position), and test rows (reported if changed)."""
    identity = {"tables": {f: spec.cardinalities[f] for f in spec.categorical}, "numerical": list(spec.numerical),
                "hotness": {f: spec.hotness.get(f, 1) for f in spec.categorical}, "padded": sorted(spec.padded)}
    if rows:
        counts = spec.check()
        identity.update(train_rows=counts.get("train"), test_rows=counts.get("test"))
    return identity


def feature_differences(meta: dict, identity: dict) -> list[str]:
    """Differences in what the saved model's shapes depend on: the tables and the numerical
    features (also what `dlrm eval --dataset OTHER` must share with the checkpoint)."""
    old = meta.get("dataset")
    if not old:
        return []
    errors = []
    t_old, t_now = old.get("tables") or {}, identity["tables"]
    if list(t_old) != list(t_now):
        errors.append(f"dataset tables {list(t_old)} -> {list(t_now)}")
    else:
        errors += [f"dataset table {t} rows {t_old[t]} -> {t_now[t]}" for t in t_old if t_old[t] != t_now[t]]
    if old.get("numerical") != identity["numerical"]:
        errors.append(f"dataset numerical features {old.get('numerical')} -> {identity['numerical']}")
    # checkpoints from before hotness was recorded here: the plan's table_hotness ([]: all one-hot)
    plan = meta.get("plan") or {}
    h_old = old.get("hotness") or dict(zip(plan.get("table_names") or [], plan.get("table_hotness") or []))
    h_now = identity.get("hotness") or {}
    errors += [f"dataset feature {t} hotness {h_old.get(t, 1)} -> {h_now[t]}" for t in h_now
               if t in t_old and h_old.get(t, 1) != h_now[t]]
    if "padded" in old and sorted(old["padded"]) != identity.get("padded", []):
        errors.append(f"dataset padded features {sorted(old['padded'])} -> {identity.get('padded', [])}")
    return errors
