"""Embedding sharding plan: which rank holds which tables (or row ranges of a table), decided
before any memory is touched.

    plan = plan_tables(table_sizes, dim=128, world_size=8, device_memory_bytes=80 << 30, batch_size=65536)
    print(plan.describe())

Table-wise first: whole tables, largest first, each onto the rank with the least load (bytes and
lookups, each as a share of the ideal even split). A table bigger than one rank's budget, or one
that leaves no room for the rest, is split by rows over several distinct ranks (row-wise); each row
shard looks up the whole global batch, answering zeros for ids outside its range, and the owners
of a batch slice sum the shards' partial results. `sharding="row"` splits every table over all
ranks (tests use it to exercise the row-wise path on tiny tables).

Memory counted per rank (budget = device memory - reserve):
  per shard: rows x (D x weight_bytes + optimizer bytes per row)
             + B x (2 x D x weight_bytes): the pooled lookup output sent forward, its gradient
               received backward
             + B x h x (D x weight_bytes + 8): the sparse gradient's values (one row per id) and
               the int64 ids, h the table's hotness (ids per row; 1 for one-hot)
             + for multi-hot (h > 1): B x 8 bag offsets + B x h x weight_bytes per-id weights
  per rank:  2 x ceil(B / W) x F x D x weight_bytes: the received [B_local, F, D] forward and the
             gradient sent back. Multi-hot tables are pooled before the all-to-all, so these
             buffers do not grow with hotness; the ids and sparse gradients above do.
             + dense_bytes: the replicated dense arches (bottom MLP, interaction - DCN's cross
             layers -, top MLP), weights + gradients + DDP's gradient buckets + optimizer state
Optimizer state: "sgd" none; "adagrad" one fp32 accumulator per row: dlrm.training.optim's tables use
row-wise Adagrad (as FBGEMM/TorchRec), 4 bytes a row instead of 4 x D.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from dlrm.errors import UserError

OPTIMIZERS = ("sgd", "adagrad")
SHARDINGS = ("auto", "table", "row")
ID_BYTES = 8


def optimizer_bytes_per_row(optimizer: str, dim: int) -> int:
    if optimizer == "sgd":
        return 0
    if optimizer == "adagrad":
        return 4
    raise UserError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")


def dense_parameter_count(num_numerical: int, num_tables: int, cfg) -> int:
    """Parameters of the dense arches (bottom MLP, interaction, top MLP) of dlrm.modules.model.DLRM for a
    dlrm.config.ModelConfig `cfg`, without building it (no torch here: the launcher plans too).
    tests/test_model.py holds it to the model's own count."""
    def linear(sizes: list[int]) -> int:
        return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))

    D, F, dense = cfg.embedding_dim, num_tables, cfg.bottom_mlp[-1]
    if cfg.interaction == "dot":  # dense + the strictly lower triangle of F + 1 vectors, padded to 8
        width = (D + (F + 1) * F // 2 + 7) // 8 * 8
    else:  # cat and dcn: the concatenation
        width = dense + D * F
    cross = cfg.dcn_num_layers * (2 * width * cfg.dcn_low_rank_dim + width) if cfg.interaction == "dcn" else 0
    return linear([num_numerical] + list(cfg.bottom_mlp)) + cross + linear([width] + list(cfg.top_mlp) + [1])


def dense_memory_bytes(num_parameters: int, optimizer: str) -> int:
    """Per rank, for the replicated dense arches: fp32 weights, gradients, DDP's gradient buckets
    (a second copy of the gradients) and the optimizer's state (Adagrad: one fp32 sum per weight)."""
    return num_parameters * (4 + 4 + 4 + (4 if optimizer == "adagrad" else 0))


def human(n: float) -> str:
    """Bytes in binary units: 17179869184 -> '16.00 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.2f} TiB"


@dataclass(frozen=True)
class Shard:
    """Rows [row_start, row_end) of table `table` (an index into Plan.table_names) on `rank`."""

    table: int
    rank: int
    row_start: int
    row_end: int
    bytes: int  # everything this shard costs its rank (see the module docstring)
    lookups: float  # its share of the table's lookup cost

    @property
    def rows(self) -> int:
        return self.row_end - self.row_start


@dataclass
class Plan:
    world_size: int
    dim: int
    batch_size: int
    optimizer: str
    weight_bytes: int
    device_memory_bytes: int
    reserve_bytes: int
    sharding: str
    table_names: list[str]
    table_sizes: list[int]
    rank_fixed_bytes: int  # the per-rank all-to-all buffers and dense_bytes
    shards: list[Shard] = field(default_factory=list)
    table_hotness: list[int] = field(default_factory=list)  # ids per row per table; [] (older plans): all 1
    dense_bytes: int = 0  # the replicated dense arches' weights, gradients and optimizer state, per rank

    # -- queries used by the sharded lookup and checkpoints -----------------------------------
    @property
    def num_tables(self) -> int:
        return len(self.table_sizes)

    @property
    def budget_bytes(self) -> int:
        return self.device_memory_bytes - self.reserve_bytes

    def rank_shards(self, rank: int) -> list[Shard]:
        """Shards on `rank` in table order: the order of its local fused weight's row blocks."""
        return sorted((s for s in self.shards if s.rank == rank), key=lambda s: (s.table, s.row_start))

    def table_shards(self, table: int) -> list[Shard]:
        return sorted((s for s in self.shards if s.table == table), key=lambda s: s.row_start)

    def rank_tables(self, rank: int) -> list[int]:
        """Tables whose ids `rank` reads (for the global batch): one per shard it holds."""
        return [s.table for s in self.rank_shards(rank)]

    def rank_bytes(self, rank: int) -> int:
        return self.rank_fixed_bytes + sum(s.bytes for s in self.shards if s.rank == rank)

    def rank_lookups(self, rank: int) -> float:
        return sum(s.lookups for s in self.shards if s.rank == rank)

    def hotness(self, table: int) -> int:
        return self.table_hotness[table] if self.table_hotness else 1

    def is_row_wise(self, table: int) -> bool:
        return len(self.table_shards(table)) > 1

    def _by_rank(self) -> list[list[Shard]]:
        """Each rank's shards in table order, in one pass (rank_shards per rank is O(ranks x shards))."""
        out: list[list[Shard]] = [[] for _ in range(self.world_size)]
        for s in sorted(self.shards, key=lambda s: (s.table, s.row_start)):
            out[s.rank].append(s)
        return out

    def imbalance(self) -> tuple[float, float]:
        """(max / mean) of per-rank bytes and of per-rank lookups; 1.0 is perfect balance."""
        W, by_rank = self.world_size, self._by_rank()
        b = [self.rank_fixed_bytes + sum(s.bytes for s in shards) for shards in by_rank]
        lk = [sum(s.lookups for s in shards) for shards in by_rank]
        mb, ml = sum(b) / W, sum(lk) / W
        return (max(b) / mb if mb else 1.0, max(lk) / ml if ml else 1.0)

    # -- printing and (de)serialisation -------------------------------------------------------
    def describe(self) -> str:
        total_lookups = sum(s.lookups for s in self.shards) or 1.0
        lines = [
            f"plan: {self.num_tables} tables, {sum(self.table_sizes):,} rows, dim {self.dim}, "
            f"{self.world_size} ranks, batch {self.batch_size}, optimizer {self.optimizer}, sharding {self.sharding}",
            f"budget per rank: {human(self.budget_bytes)} (device {human(self.device_memory_bytes)} - reserve "
            f"{human(self.reserve_bytes)}); all-to-all buffers {human(self.rank_fixed_bytes - self.dense_bytes)} per rank",
        ]
        if any(h > 1 for h in self.table_hotness):
            lines.append(f"multi-hot: {sum(self.table_hotness)} ids per row over {self.num_tables} tables "
                         f"(hotness {','.join(map(str, self.table_hotness))}), pooled before the all-to-all")
        if self.dense_bytes:
            lines.append(f"dense arches (replicated): {human(self.dense_bytes)} per rank")
        shard_count = [0] * self.num_tables
        for s in self.shards:
            shard_count[s.table] += 1
        for r, shards in enumerate(self._by_rank()):
            parts = []
            for s in shards:
                name = self.table_names[s.table]
                if shard_count[s.table] > 1:
                    parts.append(f"{name}[{s.row_start}:{s.row_end}]")
                else:
                    parts.append(name)
            used = self.rank_fixed_bytes + sum(s.bytes for s in shards)
            lines.append(
                f"  rank {r}: {human(used)} ({100 * used / self.budget_bytes:.1f}% of budget), "
                f"{100 * sum(s.lookups for s in shards) / total_lookups:.1f}% of lookups: {', '.join(parts) or '-'}"
            )
        row_wise = [self.table_names[t] for t in range(self.num_tables) if shard_count[t] > 1]
        ib, il = self.imbalance()
        lines.append(f"row-wise tables: {', '.join(row_wise) or 'none'}")
        lines.append(f"imbalance (max/mean): bytes {ib:.3f}, lookups {il:.3f}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shards"] = [asdict(s) for s in self.shards]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        d = dict(d)
        shards = [Shard(**s) for s in d.pop("shards")]
        return cls(**d, shards=shards)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls.from_dict(json.loads(text))


# ---------------------------------------------------------------------------------------------
# Planning.


def _split_rows(rows: int, parts: int) -> list[tuple[int, int]]:
    """Even row ranges; never an empty one (a table of 3 rows splits at most 3 ways)."""
    parts = max(1, min(parts, rows))
    bounds = [rows * i // parts for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _greedy(items: list[tuple[int, int, int, int, float]], world_size: int, capacity: int):
    """Place (table, start, end, bytes, lookups) items largest first on the least loaded rank
    with room and no other shard of the same table. Returns ranks per item, or None."""
    total_b = sum(i[3] for i in items) or 1
    total_l = sum(i[4] for i in items) or 1.0
    used_b, used_l = [0] * world_size, [0.0] * world_size
    holds: list[set[int]] = [set() for _ in range(world_size)]
    order = sorted(range(len(items)), key=lambda k: (-items[k][3], -items[k][4], items[k][0], items[k][1]))
    ranks = [0] * len(items)
    for k in order:
        t, _, _, b, lk = items[k]
        best, best_score = None, None
        for r in range(world_size):
            if t in holds[r] or used_b[r] + b > capacity:
                continue
            # each load as a fraction of a perfectly even split, so bytes and lookups weigh alike
            score = (used_b[r] + b) * world_size / total_b + (used_l[r] + lk) * world_size / total_l
            if best_score is None or score < best_score:
                best, best_score = r, score
        if best is None:
            return None
        ranks[k] = best
        used_b[best] += b
        used_l[best] += lk
        holds[best].add(t)
    return ranks


# Planning is linear in the ranks (~35,000 a second): this bound is above what the launcher can
# render (10,000 nodes x 64 GPUs) and far above any cluster, and a typo's 100,000,000 fails at
# once instead of planning for an hour.
MAX_WORLD_SIZE = 1 << 20
# The placement search checks every (shard, rank) pair per pass, and `auto` may take several passes:
# bounded in all, so `dlrm plan` (or a trainer's start) answers in seconds or says why, instead of
# searching for minutes (sharding=row over 4,000 ranks was 104,000 shards x 4,000 ranks per pass).
MAX_PLAN_CHECKS = 1 << 25


def plan_tables(
    table_sizes: list[int],
    dim: int,
    world_size: int,
    device_memory_bytes: int,
    batch_size: int,
    optimizer: str = "sgd",
    reserve_bytes: int = 4 << 30,
    sharding: str = "auto",
    weight_bytes: int = 4,
    table_names: list[str] | None = None,
    lookup_costs: list[float] | None = None,
    hotness: list[int] | None = None,
    dense_bytes: int = 0,
) -> Plan:
    """Place `table_sizes` (rows per table) on `world_size` ranks; UserError when they do not fit.

    hotness: ids per row of each table (multi-hot; None: one-hot); lookup costs default to it.
    dense_bytes: what the replicated dense arches take on every rank (`dense_memory_bytes`).
    """
    T, W, B, D = len(table_sizes), world_size, batch_size, dim
    if T < 1:
        raise UserError("no embedding tables to plan")
    if W > MAX_WORLD_SIZE:
        raise UserError(f"world size {W:,}: at most {MAX_WORLD_SIZE:,} ranks (nodes x processes per node) can be planned")
    if W < 1 or B < 1 or D < 1 or weight_bytes < 1:
        raise UserError(f"world size, batch size, dim and weight bytes must be >= 1, got {W}, {B}, {D}, {weight_bytes}")
    if any(int(n) < 1 for n in table_sizes):
        raise UserError(f"every table needs >= 1 row, got sizes {list(table_sizes)}")
    if sharding not in SHARDINGS:
        raise UserError(f"sharding must be one of {', '.join(SHARDINGS)}, got {sharding!r}")
    names = list(table_names) if table_names is not None else [f"table_{t}" for t in range(T)]
    hot = [int(h) for h in hotness] if hotness is not None else [1] * T
    costs = list(lookup_costs) if lookup_costs is not None else [float(h) for h in hot]
    if len(names) != T or len(costs) != T or len(hot) != T:
        raise UserError(f"{T} tables but {len(names)} names, {len(costs)} lookup costs and {len(hot)} hotness values")
    if min(hot) < 1 or dense_bytes < 0:
        raise UserError(f"hotness must be >= 1 per table and dense bytes >= 0, got {hot} and {dense_bytes}")
    sizes = [int(n) for n in table_sizes]
    per_row = D * weight_bytes + optimizer_bytes_per_row(optimizer, D)

    def per_shard(t: int) -> int:
        h = hot[t]
        pooling = B * ID_BYTES + B * h * weight_bytes if h > 1 else 0
        return B * (2 * D * weight_bytes + h * (D * weight_bytes + ID_BYTES)) + pooling

    fixed = 2 * math.ceil(B / W) * T * D * weight_bytes + dense_bytes
    budget = device_memory_bytes - reserve_bytes
    capacity = budget - fixed
    plan = Plan(W, D, B, optimizer, weight_bytes, device_memory_bytes, reserve_bytes, sharding, names, sizes, fixed,
                table_hotness=hot if max(hot) > 1 else [], dense_bytes=dense_bytes)

    def shard_bytes(rows: int, t: int) -> int:
        return rows * per_row + per_shard(t)

    largest = max(range(T), key=lambda t: sizes[t])
    total = sum(shard_bytes(n, t) for t, n in enumerate(sizes))

    dense_text = f" and the replicated dense arches {dense_bytes} B" if dense_bytes else ""

    def does_not_fit(why: str) -> UserError:
        return UserError(
            f"embedding tables do not fit: {why}. {T} tables, {sum(sizes):,} rows x dim {D} x {weight_bytes} B "
            f"+ {optimizer} state = {human(total)} ({total} B) in all; per-rank budget {human(budget)} ({budget} B) = "
            f"device memory {device_memory_bytes} B - reserve {reserve_bytes} B, of which all-to-all buffers take "
            f"{fixed - dense_bytes} B for batch {B}{dense_text}; world size {W} gives {human(max(capacity, 0) * W)} "
            f"({max(capacity, 0) * W} B); largest table {names[largest]} has {sizes[largest]:,} rows = "
            f"{human(shard_bytes(sizes[largest], largest))} ({shard_bytes(sizes[largest], largest)} B). "
            f"Add ranks, device memory, or lower the batch size or dim"
        )

    if capacity <= 0:
        raise does_not_fit(f"the all-to-all buffers and dense arches ({fixed} B) and reserve leave no room on a rank")
    if sharding == "row":
        splits = [W] * T
    else:
        # the fewest parts that let each fit a rank; each part also carries its batch buffers
        splits = [1 if shard_bytes(n, t) <= capacity else math.ceil(n * per_row / max(capacity - per_shard(t), 1))
                  for t, n in enumerate(sizes)]
        if sharding == "table" and any(s > 1 for s in splits):
            t = max(range(T), key=lambda t: splits[t])
            raise does_not_fit(f"sharding=table but table {names[t]} ({shard_bytes(sizes[t], t)} B) exceeds one rank's "
                               f"room ({capacity} B)")
    checks = 0
    while True:
        if any(s > W for s in splits):
            t = max(range(T), key=lambda t: splits[t])
            raise does_not_fit(f"table {names[t]} needs {splits[t]} ranks but there are {W}")
        items = [(t, a, b, shard_bytes(b - a, t), costs[t] * (b - a) / sizes[t])
                 for t in range(T) for a, b in _split_rows(sizes[t], splits[t])]
        if sum(i[3] for i in items) > capacity * W:
            raise does_not_fit(f"they need {sum(i[3] for i in items)} B with their batch buffers, more than "
                               f"{W} x {capacity} B")
        checks += len(items) * W
        if checks > MAX_PLAN_CHECKS:
            raise UserError(f"planning {T} tables ({len(items):,} shards, sharding={sharding}) over {W:,} ranks needs more "
                            f"than {MAX_PLAN_CHECKS:,} (shard, rank) placement checks, the planner's limit: use fewer "
                            f"ranks, sharding=auto (fewer shards), or more device memory per rank")
        ranks = _greedy(items, W, capacity)
        if ranks is not None:
            plan.shards = [Shard(t, r, a, b, nb, lk) for (t, a, b, nb, lk), r in zip(items, ranks)]
            return plan
        if sharding != "auto":
            raise does_not_fit(f"no placement of the {len(items)} shards ({sharding}-wise) fits every rank")
        # Split further the table whose shards are biggest (and can still be split).
        candidates = [t for t in range(T) if splits[t] < min(W, sizes[t])]
        if not candidates:
            raise does_not_fit("no placement fits even with every table split by rows over all ranks")
        t = max(candidates, key=lambda t: (shard_bytes(math.ceil(sizes[t] / splits[t]), t), -t))
        splits[t] += 1


def plan_for_config(cfg, table_sizes: list[int], table_names: list[str] | None, world_size: int,
                    hotness: list[int] | None = None, num_numerical: int | None = None) -> Plan:
    """The plan a training run (a dlrm.config.TrainConfig) uses: its memory budget, batch, optimizer
    and sharding, the tables' hotness, and the dense arches it builds (DCN's cross layers included)."""
    from dlrm.config import parse_bytes

    num_numerical = cfg.model.num_numerical if num_numerical is None else num_numerical
    dense = dense_memory_bytes(dense_parameter_count(num_numerical, len(table_sizes), cfg.model), cfg.optim.optimizer)
    return plan_tables(table_sizes, cfg.model.embedding_dim, world_size, parse_bytes(cfg.dist.device_memory),
                       cfg.data.batch_size, optimizer=cfg.optim.optimizer,
                       reserve_bytes=parse_bytes(cfg.dist.memory_reserve), sharding=cfg.dist.sharding,
                       table_names=table_names, hotness=hotness, dense_bytes=dense)
