"""Criteo preprocessing throughput: the local engine against Spark local mode on the same day files.

Generated day files (gen.py: skewed hashes, missing values, negatives), FL = 3, both passes and
the assembly included; rows/s = input lines / wall time. The local engine runs with every core,
Spark in local[cores]. Targets: local >= 5x Spark, and Criteo 1TB (4.4 billion lines) within
1 hour on a 64-core node at the measured per-core rate (about 20,000 lines/s per core).

    python benchmarks/bench_preprocess.py         # ~300k lines, about 2 minutes on 2 cores
    BENCH_PREPROCESS_LINES=1000000 python benchmarks/bench_preprocess.py

The projection assumes per-core throughput holds at 64 cores (the parent process that reads the
files and the final concatenation are not parallel) and that the vocabulary lookups, measured
here on small vocabularies, cost the same on Criteo's larger ones: read it as an upper bound.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dlrm.preprocess import local  # noqa: E402
from dlrm.preprocess.gen import generate_days  # noqa: E402
from dlrm.preprocess.output import Settings  # noqa: E402

LINES = int(os.environ.get("BENCH_PREPROCESS_LINES", 300_000))
CRITEO_1TB_LINES = 4_373_472_329
NODE_CORES = 64


def main() -> int:
    cores = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="bench_preprocess_"))
    try:
        per_day = [LINES * 2 // 5, LINES * 2 // 5, LINES - 2 * (LINES * 2 // 5)]
        generate_days(tmp / "raw", days=3, lines=per_day, seed=0, bad_lines=13)
        settings = dict(input=tmp / "raw", days=[0, 1, 2], frequency_threshold=3, progress=False)

        t = time.perf_counter()
        report = local.run(Settings(out=tmp / "local", **settings), workers=cores)
        local_s = time.perf_counter() - t
        local_rate = LINES / local_s
        print(f"local_rows_per_s: {local_rate:,.0f} rows/s (ratio per core {local_rate / cores:,.0f}; "
              f"{cores} workers, {LINES} lines, pass1 {report['seconds']['pass1']} s, pass2 {report['seconds']['pass2']} s)")

        from dlrm.preprocess import spark as spark_engine

        session = spark_engine.session(f"local[{cores}]", {"spark.sql.shuffle.partitions": str(2 * cores)})
        try:
            t = time.perf_counter()
            spark_engine.run(Settings(out=tmp / "spark", **settings), session)
            spark_s = time.perf_counter() - t
        finally:
            session.stop()
        spark_rate = LINES / spark_s
        print(f"spark_rows_per_s: {spark_rate:,.0f} rows/s (ratio per core {spark_rate / cores:,.0f}; local[{cores}])")

        same = all((tmp / "local" / p.relative_to(tmp / "spark")).read_bytes() == p.read_bytes()
                   for p in (tmp / "spark").rglob("*.bin"))
        ratio = local_rate / spark_rate
        print(f"local_over_spark: {ratio:.1f} x (ratio target >= 5; outputs byte-identical: {same})")

        per_core = local_rate / cores
        hours = CRITEO_1TB_LINES / (per_core * NODE_CORES) / 3600
        print(f"criteo_1tb_projection: {hours:.2f} hours (ratio to 1 h target {hours:.2f}; "
              f"{NODE_CORES} cores at {per_core:,.0f} lines/s/core, both passes)")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
