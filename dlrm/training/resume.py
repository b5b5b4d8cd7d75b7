"""`--resume`: pick the checkpoint to continue from, and refuse one from another run shape.

    found = resume_latest(uri, cfg, dataset_identity(spec), weight=..., row_state=..., pieces=..., gather=...)

Before anything is loaded, the checkpoint's recorded config and dataset are compared with this
run's (`compare`): a field the saved state depends on (the model's shape, the tables, the batch
size and order that give the saved data position its meaning, the optimizer whose state is
saved) is an error listing every difference; the rest (learning rate, epochs, eval and
checkpoint cadence...) may change and is printed. Then the newest checkpoint that verifies is
loaded; each newer one that does not is skipped with the reason printed. Every decision is taken
on what all ranks saw (`gather`): ranks that list different checkpoints (one output folder per
node) are refused at once, before any rank waits in a collective the others never reach.
"""
from __future__ import annotations

from typing import Callable

from dlrm.io.checkpoint import CheckpointCorrupt, complete_checkpoints, load_checkpoint, read_metadata
from dlrm.config import TrainConfig, to_dict
from dlrm.data.identity import feature_differences
from dlrm.errors import UserError
from dlrm.io.storage import open_store

# Config fields (dotted prefixes) whose change makes the saved state mean something else.
MUST_MATCH = (
    "model.",  # layer sizes, embedding dim, interaction: the saved tensors' shapes and meaning
    "optim.optimizer",  # the saved per-row and dense optimizer state
    "data.batch_size",  # the saved position counts batches: another size means other samples
    "data.shuffle_batches",  # ... in another order
    "seed",  # ... the order is drawn from the seed
)
# Fields that say where, not what: never reported as changes.
WHERE = ("resume", "out", "checkpoint_dir", "data.dataset", "run_id")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def compare(meta: dict, cfg: TrainConfig, identity: dict) -> tuple[list[str], list[str]]:
    """(differences that forbid resuming, changes that are fine), each 'key: saved -> now'."""
    saved, now = _flat(meta.get("config") or {}), _flat(to_dict(cfg))
    errors, changes = [], []
    for key in sorted(set(saved) | set(now)):
        if key in WHERE or saved.get(key, now.get(key)) == now.get(key, saved.get(key)):
            continue  # equal, or a field only one side knows (another version): nothing to compare
        line = f"{key} {saved[key]!r} -> {now[key]!r}"
        (errors if key.startswith(MUST_MATCH) else changes).append(line)
    errors += feature_differences(meta, identity)
    old = meta.get("dataset")
    if old:  # checkpoints before this record carry no dataset identity
        if old.get("train_rows") != identity["train_rows"]:
            errors.append(f"dataset train rows {old.get('train_rows')} -> {identity['train_rows']} "
                          f"(the saved data position would point at other samples)")
        if old.get("test_rows") != identity["test_rows"]:
            changes.append(f"dataset test rows {old.get('test_rows')} -> {identity['test_rows']}")
    return errors, changes


def resume_latest(uri: str, cfg: TrainConfig, identity: dict, *, weight, row_state, pieces,
                  gather: Callable[[object], list] = lambda obj: [obj], log: Callable[[str], None] = print):
    """Load the newest checkpoint under `uri` that verifies; (name, meta, dense), or None when
    there is no complete checkpoint. Every rank calls it; `gather(obj)` returns every rank's `obj`
    (Runtime.all_gather_object), so every rank takes each decision on what all ranks saw: the
    same candidates, the same skip, the same error, and never a collective only some ranks reach."""
    store = open_store(uri)
    views = gather(complete_checkpoints(store))
    split = set().union(*map(set, views)) - set.intersection(*map(set, views))
    if split:  # one output folder per node: rank 0 holds the metadata, the others their shards
        seen = "; ".join(f"rank {r}: {', '.join(v[-2:]) if v else 'none'}" for r, v in enumerate(views))
        raise UserError(f"{uri}: the ranks do not see the same checkpoints ({seen}): each node has its own "
                        f"output folder, so a checkpoint's shards are split across nodes and none can be loaded; "
                        f"give every node the same output (out=s3://..., or a shared volume claim), or remove "
                        f"{uri} on every node to start over")
    skipped = []
    for name in reversed(views[0]):
        found = problem = mismatch = None
        try:
            meta = read_metadata(store, name)
            errors, changes = compare(meta, cfg, identity)
            if errors:
                mismatch = (f"cannot resume from {uri}/{name}: this run differs in what the checkpoint "
                            f"depends on: {'; '.join(errors)} (start a new run folder, or change them back)")
            else:
                _, dense = load_checkpoint(uri, name, weight=weight, row_state=row_state, pieces=pieces)
                found = name, meta, dense
        except CheckpointCorrupt as e:
            problem = str(e)
        outcomes = gather((mismatch, problem))
        mismatch = next((m for m, _ in outcomes if m), None)
        if mismatch:
            raise UserError(mismatch)
        problem = next((p for _, p in outcomes if p), None)
        if problem is None:
            for line in skipped:
                log(line)
            if changes:
                log(f"resume: changed since {name} (allowed): {', '.join(changes)}")
            return found
        skipped.append(f"resume: skipped {uri}/{name}: {problem}")
    for line in skipped:
        log(line)
    if skipped:
        raise UserError(f"{uri}: no checkpoint verifies ({len(skipped)} tried, newest first; see above); "
                        f"remove them to start over")
    return None
