"""The Spark engine writes the very bytes the local engine writes, and the same bad-line report.

One SparkSession (local[2]) for the module; Spark's fixed cost per job makes each run tens of
seconds on a small machine, so each input is run once and checked several ways.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from test_preprocess import same_bytes, settings

from dlrm.data.spec import FeatureSpec
from dlrm.errors import DataError
from dlrm.preprocess import local
from dlrm.preprocess.gen import generate_days

pyspark = pytest.importorskip("pyspark")
pytestmark = pytest.mark.slow

ALL = ("train", "test", "validation")
SAME = ("rows", "lines", "cardinalities", "bad_lines", "clamped_values", "train_days", "test_validation_day",
        "vocabulary_days")


# A JVM that lives for a minute of small jobs: the quick (C1) JIT only, and one GC thread. The
# C2 compiler's CPU would never pay back here, on a machine where the other tests need the cores.
SHORT_JVM = {"spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"}


@pytest.fixture(scope="session")
def spark():
    from dlrm.preprocess.spark import session

    s = session("local[2]", {"spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2", **SHORT_JVM})
    yield s
    s.stop()


def both(inp: Path, root: Path, spark_session, **kw):
    from dlrm.preprocess import spark as spark_engine

    a = local.run(settings(inp, root / "local", **kw), workers=2, chunk_rows=64)
    # rows_per_part small: several output partitions, so their order is exercised too
    b = spark_engine.run(settings(inp, root / "spark", **kw), spark_session, rows_per_part=700)
    return a, b


def test_generated_days_give_byte_identical_datasets(spark, tmp_path):
    inp = tmp_path / "raw"
    generate_days(inp, days=3, lines=[1500, 1100, 901], seed=11, bad_lines=13, gz=(1,), crlf=(2,))
    a, b = both(inp, tmp_path, spark, feature_thresholds={"cat_4": 1, "cat_9": 30})
    assert same_bytes(tmp_path / "local", tmp_path / "spark")
    assert {k: a[k] for k in SAME} == {k: b[k] for k in SAME}
    assert a["bad_lines"]["total"] == 39 and b["engine"] == "spark"
    assert FeatureSpec.load(tmp_path / "spark").check(ALL) == b["rows"]
    # the leak-free vocabulary (training days only): the engines agree on it too
    c, d = both(inp, tmp_path / "train-only", spark, vocabulary_days="train", feature_thresholds={"cat_4": 1, "cat_9": 30})
    assert same_bytes(tmp_path / "train-only" / "local", tmp_path / "train-only" / "spark")
    assert {k: c[k] for k in SAME} == {k: d[k] for k in SAME} and c["vocabulary_days"] == [0, 1]
    assert c["cardinalities"] != a["cardinalities"]


def test_real_sample_gives_byte_identical_datasets(spark, shared_dir, tmp_path):
    lines = (shared_dir / "data" / "criteo_sample_100.tsv").read_bytes().splitlines(keepends=True)
    inp = tmp_path / "raw"
    inp.mkdir()
    for d, (lo, hi) in enumerate([(0, 60), (60, 80), (80, 100)]):
        (inp / f"day_{d}").write_bytes(b"".join(lines[lo:hi]))
    a, b = both(inp, tmp_path, spark, fl=2)
    assert same_bytes(tmp_path / "local", tmp_path / "spark")
    assert {k: a[k] for k in SAME} == {k: b[k] for k in SAME}
    assert b["rows"] == {"train": 80, "test": 10, "validation": 10}


def test_strict_and_corrupt_gzip_are_errors_in_spark_too(spark, tmp_path):
    from dlrm.preprocess import spark as spark_engine

    inp = tmp_path / "raw"
    generate_days(inp, days=2, lines=[50, 40], seed=2, bad_lines=1, gz=(1,))
    with pytest.raises(DataError, match=r"day_0:1: bad line: 39 tab-separated fields"):
        spark_engine.run(settings(inp, tmp_path / "a", days=(0, 1), strict=True), spark)
    assert not (tmp_path / "a" / "feature_spec.yaml").exists()
    data = (inp / "day_1.gz").read_bytes()
    (inp / "day_1.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="unreadable gzip"):
        spark_engine.run(settings(inp, tmp_path / "b", days=(0, 1)), spark)


def test_bad_line_share_and_empty_split_fail_alike_in_both_engines(spark, tmp_path):
    """The same checks, in the same words, before anything is written: a day above
    --max-bad-line-share, and (with --allow-bad-lines) a split left without rows."""
    from dlrm.preprocess import spark as spark_engine

    inp = tmp_path / "raw"
    generate_days(inp, days=2, lines=[60, 40], seed=5, bad_lines=3)  # 5% of day_0, 7.5% of day_1

    def errors(tag: str, **kw) -> list[str]:
        out = []
        for name, run in (("local", lambda s: local.run(s, workers=1)), ("spark", lambda s: spark_engine.run(s, spark))):
            with pytest.raises(DataError) as e:
                run(settings(inp, tmp_path / f"{tag}-{name}", days=(0, 1), **kw))
            assert not (tmp_path / f"{tag}-{name}" / "feature_spec.yaml").exists()
            out.append(str(e.value))
        return out

    a, b = errors("share", max_bad_line_share=0.04)
    assert a == b and "day_0: 3 of 60 lines are bad (5.00%, the first at line 1), more than --max-bad-line-share 0.04" in a
    day1 = inp / "day_1"
    day1.write_text("\n".join(line + "\t" if line else line for line in day1.read_text().split("\n")))
    a, b = errors("empty", max_bad_line_share=1.0)
    assert a == b and "the test split would be empty (0 good lines in day_1)" in a
