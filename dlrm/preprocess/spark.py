"""The Spark engine: the same transform as local.py, written in Spark SQL, for a cluster.

Runs in local mode (`--spark-master local[N]`), under spark-submit, or on Spark-on-Kubernetes;
the input and output folders must be visible to the driver and every executor (a shared volume).

  lines    every day file read as text ('\\n' line ends); each line keeps (day, line number):
           numbered from (file block start, monotonically_increasing_id) plus per-block counts
           collected in a first small job, so numbering needs no sort and no single-task pass;
  rules    the bad-line rules of parse.py as SQL expressions (regexes anchored with \\z);
  stats    bad lines by kind and split (first few with file and line), rows, clamped values;
  vocab    counts per (feature, value) over the vocabulary days (all, or the training days), threshold, row_number by
           (count desc, value asc) - the ids of vocab.py;
  output   26 left joins give the ids (small vocabularies broadcast); rows are range-partitioned
           and sorted by (day, line) and written as Parquet, one file per partition; Spark tasks
           turn each file into binary parts through SplitBinaryWriter (.preprocess/spark/part-NNNNN/)
           and the driver concatenates the parts in partition order. (Parquet, not mapInArrow,
           because mapInArrow requires pandas.)

Numerical values are log-transformed in Spark (double) and rounded to float16 by numpy in the
writer, as the local engine rounds its float64 logs, so the two engines write the same bytes.
"""
from __future__ import annotations

import functools
import os
import re
import sys
import time
from pathlib import Path

from dlrm.errors import DataError
from dlrm.preprocess.inputs import first_half
from dlrm.preprocess.output import (SPLITS, BadLineTally, Settings, check_bad_lines, check_splits, make_report,
                                    open_output, strict_error)
from dlrm.preprocess.parse import KINDS, MAX_DIGITS, NUM_CATEGORICAL, NUM_FIELDS, NUM_NUMERICAL, describe

NUM_RE = rf"^-?[0-9]{{1,{MAX_DIGITS}}}\z"  # \z: Java's $ would also match before a final '\r'
HEX_RE = r"^[0-9a-fA-F]{8}\z"
BROADCAST_IDS = 2_000_000  # vocabularies up to this size are broadcast, larger ones shuffle-joined
ROWS_PER_PART = 2_000_000  # rows per output partition (one task writes one part of each split)


def session(master: str | None = None, conf: dict | None = None, cores: int | None = None):
    """A SparkSession: the one spark-submit set up, else `master` (default local[cores])."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # executors run this interpreter in local mode
    builder = SparkSession.builder.appName("dlrm-preprocess")
    under_submit = "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit already chose the master
    if master or not (under_submit or "spark.master" in (conf or {})):
        builder = builder.master(master or f"local[{cores or '*'}]")
    builder = builder.config("spark.sql.shuffle.partitions", str(max(2, 2 * (cores or os.cpu_count() or 2))))
    builder = builder.config("spark.ui.enabled", "false").config("spark.driver.memory", "4g")
    for k, v in (conf or {}).items():
        builder = builder.config(k, v)
    return builder.getOrCreate()


def _spark_errors(files):
    """Turn a failed Spark job that was reading a corrupt .gz into a one-line DataError."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*a, **k):
            try:
                return fn(*a, **k)
            except Exception as e:  # py4j / pyspark errors carry the Java stack as text
                text = str(e)
                if not re.search(r"gzip|GZIP|ZipException|EOFException|Unexpected end of", text):
                    raise
                path = next((str(f.path) for f in files if f.path.name in text), "a .gz day file")
                reason = next((ln.strip() for ln in text.splitlines() if re.search(r"Exception:|EOF", ln)), "")
                raise DataError(f"{path}: unreadable gzip (truncated or corrupt): {reason[:200]}") from None
        return inner
    return wrap


def _write_part(parts_root: str, cardinalities: list[int]):
    """The task that turns one sorted Parquet file of output rows into binary part files."""
    def convert(task):
        index, path = task
        import numpy as np
        import pyarrow.parquet as pq

        from dlrm.data.spec import FeatureSpec
        from dlrm.data.writer import SplitBinaryWriter

        root = Path(parts_root) / f"part-{index:05d}"
        writers, rows = {}, {}
        try:
            for b in pq.ParquetFile(path).iter_batches(batch_size=65536):
                col = {name: b.column(i) for i, name in enumerate(b.schema.names)}
                split = col["split"].to_numpy()
                label = col["label"].to_numpy(zero_copy_only=False).astype(bool)
                # float64 logs rounded once to float16, exactly as transform_numerical does
                num = np.stack([col[f"n{i}"].to_numpy() for i in range(NUM_NUMERICAL)], 1).astype(np.float16)
                ids = np.stack([col[f"i{j}"].to_numpy() for j in range(NUM_CATEGORICAL)], 1)
                for k in np.unique(split).tolist():
                    name = SPLITS[k]
                    if name not in writers:
                        spec = FeatureSpec.default(root, cardinalities, NUM_NUMERICAL, splits=(name,))
                        writers[name], rows[name] = SplitBinaryWriter(spec, name), 0
                    sel = split == k
                    writers[name].append(num[sel], ids[sel], label[sel])
                    rows[name] += int(sel.sum())
            for w in writers.values():
                w.close()
        except BaseException:
            for w in writers.values():
                w.abort()
            raise
        return index, rows
    return convert


def run(s: Settings, spark=None, rows_per_part: int = ROWS_PER_PART) -> dict:
    """Preprocess s.input into s.out with Spark; the same report and bytes as local.run."""
    from pyspark import StorageLevel
    from pyspark.sql import DataFrame, Window
    from pyspark.sql import functions as F

    t0 = time.time()
    files, out, finished = open_output(s, "spark")
    if finished is not None:
        return finished
    thresholds = s.thresholds()
    spark = spark or session()
    spark.conf.set("spark.sql.ansi.enabled", "false")  # invalid fields are caught by the rules, never by a cast error
    guard = _spark_errors(files)
    n, last = len(files), len(files) - 1

    # -- lines, numbered ---------------------------------------------------------------------------
    reads = [spark.read.option("lineSep", "\n").text(str(f.path)).select(
        F.lit(i).alias("d"), F.input_file_block_start().alias("blk"),
        F.monotonically_increasing_id().alias("mid"), "value") for i, f in enumerate(files)]
    raw = functools.reduce(DataFrame.unionByName, reads)
    blocks = guard(lambda: raw.groupBy("d", "blk").agg(F.count("*").alias("n"), F.min("mid").alias("m0")).collect())()
    offsets, lines = [], dict.fromkeys(range(n), 0)
    for r in sorted(blocks, key=lambda r: (r["d"], r["blk"])):
        offsets.append((r["d"], r["blk"], lines[r["d"]] + 1 - r["m0"]))  # line = mid + offset
        lines[r["d"]] += r["n"]
    split_at = first_half(lines[last])
    off = spark.createDataFrame(offsets or [(0, 0, 0)], "d int, blk long, off long")
    v = F.col("value")
    v = F.when(v.endswith("\r"), F.expr("substring(value, 1, length(value) - 1)")).otherwise(v)
    numbered = raw.join(F.broadcast(off), ["d", "blk"]).select(
        "d", (F.col("mid") + F.col("off")).alias("line"), F.split(v, "\t", -1).alias("f"))
    split = F.when(F.col("d") < last, 0).when(F.col("line") <= split_at, 1).otherwise(2)

    # -- the rules: code -2 wrong field count, 0 label, 1..13 numerical, 14..39 categorical, -1 ok --
    fld = [F.get(F.col("f"), i) for i in range(NUM_FIELDS)]
    code = F.when(F.size("f") != NUM_FIELDS, -2).when(~fld[0].isin("0", "1"), 0)
    for i in range(1, NUM_FIELDS):
        regex = NUM_RE if i <= NUM_NUMERICAL else HEX_RE
        code = code.when((fld[i] != "") & ~fld[i].rlike(regex), i)
    checked = numbered.select("d", "line", "f", split.alias("split"), code.otherwise(-1).alias("code"))
    kind = (F.when(F.col("code") == -1, "ok").when(F.col("code") == -2, KINDS[0]).when(F.col("code") == 0, KINDS[1])
            .when(F.col("code") <= NUM_NUMERICAL, KINDS[2]).otherwise(KINDS[3]))
    cols = ["d", "line", "split", "code", kind.alias("kind"), F.size("f").alias("nf"),
            F.when(F.col("code") >= 0, F.get(F.col("f"), F.greatest(F.col("code"), F.lit(0)))).alias("text"),
            (F.get(F.col("f"), 0) == "1").alias("label")]
    for i in range(NUM_NUMERICAL):
        x = F.get(F.col("f"), 1 + i)
        cols.append(F.when(x == "", None).otherwise(x.cast("long")).alias(f"x{i}"))
    for j in range(NUM_CATEGORICAL):
        h = F.get(F.col("f"), 1 + NUM_NUMERICAL + j)
        cols.append(F.when(h == "", None).otherwise(F.conv(h, 16, 10).cast("long")).alias(f"c{j}"))
    # Parsed once and kept (memory, spilling to disk): stats, counting and mapping all read it.
    parsed = checked.select(*cols).persist(StorageLevel.MEMORY_AND_DISK)
    rows = parsed.filter(F.col("code") == -1)
    bad = parsed.filter(F.col("code") != -1)

    # -- stats: one job for rows, clamps and bad lines by split and kind; a second for examples --------
    clamp = sum((F.coalesce(F.col(f"x{i}"), F.lit(0)) < -2).cast("long") for i in range(NUM_NUMERICAL))
    tally = BadLineTally(s.max_examples)
    row_counts, clamped = dict.fromkeys(SPLITS, 0), dict.fromkeys(SPLITS, 0)
    day_bad, first_bad = dict.fromkeys(range(n), 0), dict.fromkeys(range(n))
    stats = parsed.groupBy("d", "split", "kind").agg(F.count("*").alias("n"), F.sum(clamp).alias("c"),
                                                     F.min("line").alias("l0"))
    for r in guard(stats.collect)():
        if r["kind"] == "ok":
            row_counts[SPLITS[r["split"]]] += r["n"]
            clamped[SPLITS[r["split"]]] += r["c"] or 0
        else:
            tally.add_counts(SPLITS[r["split"]], r["kind"], r["n"])
            day_bad[r["d"]] += r["n"]
            first_bad[r["d"]] = min(r["l0"], first_bad[r["d"]] or r["l0"])
    if tally.total:
        w = Window.partitionBy("kind").orderBy("d", "line")
        first = (bad.withColumn("k", F.row_number().over(w)).filter(F.col("k") <= s.max_examples)
                 .select("d", "line", "kind", "code", "nf", "text").collect())
        for r in sorted(first, key=lambda r: (r["d"], r["line"])):
            detail = describe(r["kind"], max(r["code"], 0), r["text"] or "", r["nf"])
            if s.strict:
                raise strict_error(files[r["d"]].path, r["line"], detail)
            tally.add_example(r["kind"], (r["d"], r["line"]), f"{files[r['d']].path}:{r['line']}: {detail}")
    # Before any id is counted or row written, as the local engine does (--strict failed above).
    check_bad_lines(s, files, {f.day: lines[i] for i, f in enumerate(files)},
                    {f.day: day_bad[i] for i, f in enumerate(files)}, {f.day: first_bad[i] for i, f in enumerate(files)})
    check_splits(s, files, row_counts)
    t1 = time.time()

    # -- vocabulary from every day (NVIDIA's), or the training days only (split 0) ---------------------
    counted = rows if s.vocabulary_days == "all" else rows.filter(F.col("split") == 0)
    pairs = counted.select(
        F.posexplode(F.array(*[F.col(f"c{j}") for j in range(NUM_CATEGORICAL)])).alias("feat", "value"))
    counts = pairs.filter(F.col("value").isNotNull()).groupBy("feat", "value").count()
    limit = F.element_at(F.array(*[F.lit(t) for t in thresholds]), F.col("feat") + 1)
    rank = Window.partitionBy("feat").orderBy(F.desc("count"), F.asc("value"))
    vocab = counts.filter(F.col("count") >= limit).withColumn("id", F.row_number().over(rank)).persist()
    cards = [1] * NUM_CATEGORICAL
    for r in guard(lambda: vocab.groupBy("feat").agg(F.max("id").alias("m")).collect())():
        cards[r["feat"]] = r["m"] + 1
    t2 = time.time()

    # -- ids, order, write -----------------------------------------------------------------------------
    mapped = rows
    for j in range(NUM_CATEGORICAL):
        vj = vocab.filter(F.col("feat") == j).select(F.col("value").alias(f"c{j}"), F.col("id").alias(f"i{j}"))
        if cards[j] <= BROADCAST_IDS:  # small tables go to every executor: no shuffle of the rows
            vj = F.broadcast(vj)
        mapped = mapped.join(vj, f"c{j}", "left")
    final = [F.col("split"), F.col("d"), F.col("line"), F.col("label")]
    for i in range(NUM_NUMERICAL):
        x = F.col(f"x{i}")
        final.append(F.when(x.isNull(), F.lit(0.0)).otherwise(F.log(F.greatest(x, F.lit(-2)) + 3)).alias(f"n{i}"))
    final += [F.coalesce(F.col(f"i{j}"), F.lit(0)).cast("int").alias(f"i{j}") for j in range(NUM_CATEGORICAL)]
    total = sum(row_counts.values())
    parts_root = out.work / "spark"
    ordered = (mapped.select(*final).repartitionByRange(max(1, -(-total // rows_per_part)), "d", "line")
               .sortWithinPartitions("d", "line"))
    rows_dir = parts_root / "rows.parquet"
    guard(lambda: ordered.write.mode("overwrite").parquet(str(rows_dir)))()
    # One file per non-empty partition, named part-NNNNN-...: the partition number is the order.
    pq_files = sorted(rows_dir.glob("part-*.parquet"), key=lambda p: (int(p.name.split("-")[1]), p.name))
    tasks = list(enumerate(str(p) for p in pq_files))
    summary = (spark.sparkContext.parallelize(tasks, max(1, len(tasks)))
               .map(_write_part(str(parts_root), cards)).collect()) if tasks else []
    vocab.unpersist()
    parsed.unpersist()
    t3 = time.time()

    parts = {name: [] for name in SPLITS}
    written = dict.fromkeys(SPLITS, 0)
    for index, counts in sorted(summary):
        for name, r in counts.items():
            parts[name].append(parts_root / f"part-{index:05d}")
            written[name] += r
    if written != row_counts:
        raise DataError(f"{s.input}: {written} rows written but {row_counts} counted; the input changed during preprocessing")
    seconds = {"pass1": t1 - t0, "vocab": t2 - t1, "pass2": t3 - t2}
    report = make_report("spark", s, files, {f.day: lines[i] for i, f in enumerate(files)}, row_counts, cards,
                         tally, clamped, seconds)
    report["spark_master"] = spark.sparkContext.master
    return out.finish(cards, parts, report, started=t0)
