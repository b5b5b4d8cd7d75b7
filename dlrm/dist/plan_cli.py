"""`python -m dlrm plan`: print the embedding sharding plan for a world size, or why it does not fit.

    python -m dlrm plan --tables criteo-fl15 --world-size 8 --device-memory 80Gi --batch-size 65536
    python -m dlrm plan --feature-spec data/criteo/feature_spec.yaml --world-size 16 --device-memory 80Gi --batch-size 65536 --json

Exits 2 with the numbers when the tables do not fit (UserError, caught by dlrm.__main__).
"""
from __future__ import annotations

import argparse

from dlrm.config import parse_bytes
from dlrm.dist.plan import OPTIMIZERS, SHARDINGS, plan_tables
from dlrm.errors import UserError
from dlrm.modules.tables import TABLE_HOTNESS, TABLE_PRESETS


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--feature-spec", metavar="FILE", help="feature_spec.yaml (or its folder): one table per categorical feature")
    src.add_argument("--tables", metavar="NAME", help=f"a known table set: {', '.join(TABLE_PRESETS)}")
    p.add_argument("--world-size", type=int, required=True, help="ranks (GPUs) in all")
    p.add_argument("--device-memory", default="80Gi", help="memory per rank, a Kubernetes quantity: 80Gi, 141Gi (default %(default)s)")
    p.add_argument("--batch-size", type=int, required=True, help="global batch size")
    p.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS, help="embedding optimizer (default %(default)s)")
    p.add_argument("--dim", type=int, default=128, help="embedding dim (default %(default)s)")
    p.add_argument("--reserve", default="4Gi", help="kept free per rank (default %(default)s)")
    p.add_argument("--sharding", default="auto", choices=SHARDINGS, help="default %(default)s")
    p.add_argument("--weight-bytes", type=int, default=4, help="bytes per embedding element (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON instead")


def main(args: argparse.Namespace) -> int:
    if args.tables:
        tables = TABLE_PRESETS
        if args.tables not in tables:
            raise UserError(f"--tables {args.tables!r}: unknown; known: {', '.join(tables)}")
        sizes, names, hotness = tables[args.tables], None, TABLE_HOTNESS.get(args.tables)
    else:
        from dlrm.data.spec import FeatureSpec

        spec = FeatureSpec.load(args.feature_spec)
        sizes, names, hotness = spec.table_sizes, list(spec.categorical), spec.table_hotness
    plan = plan_tables(
        sizes, dim=args.dim, world_size=args.world_size, device_memory_bytes=parse_bytes(args.device_memory, "--device-memory"),
        batch_size=args.batch_size, optimizer=args.optimizer, reserve_bytes=parse_bytes(args.reserve, "--reserve"),
        sharding=args.sharding, weight_bytes=args.weight_bytes, table_names=names, hotness=hotness,
    )
    print(plan.to_json() if args.json else plan.describe())
    return 0
