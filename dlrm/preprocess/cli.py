"""`python -m dlrm preprocess`: raw Criteo day files -> split-binary dataset (see dlrm/preprocess).

    python -m dlrm preprocess --input /data/criteo --out /data/criteo-fl15 --frequency-threshold 15 \\
        [--feature-threshold cat_3=2 ...] [--engine local|spark] [--days 0-23] [--strict] \\
        [--max-bad-line-share F | --allow-bad-lines] [--vocabulary-days all|train] [--workers N] [--chunk-rows N]
        [--overwrite]

Prints the report (JSON, also written as preprocess_report.json in --out). Rerunning the same
command resumes an interrupted local run at the day it stopped; on a finished dataset it only
prints the report.
"""
from __future__ import annotations

import argparse
import json

from dlrm.errors import UserError
from dlrm.io.fsutil import local_path
from dlrm.preprocess.inputs import parse_days
from dlrm.preprocess.output import DEFAULT_MAX_BAD_LINE_SHARE, VOCABULARY_DAYS, Settings


def _pair(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE")
    k, v = text.split("=", 1)
    return k.strip(), v.strip()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="folder holding day_0 ... day_23 (plain or .gz)")
    p.add_argument("--out", required=True, help="output folder (new or empty, or an earlier output to resume/replace)")
    p.add_argument("--frequency-threshold", type=int, default=15, metavar="FL",
                   help="values seen fewer than FL times in the vocabulary days get id 0 (default 15)")
    p.add_argument("--vocabulary-days", default="all", metavar="|".join(VOCABULARY_DAYS),
                   help="days counted for the ids: all (default; NVIDIA's rule, test/validation day included, "
                        "so table sizes match NVIDIA's) or train (training days only: no look-ahead into the test day)")
    p.add_argument("--feature-threshold", type=_pair, action="append", default=[], metavar="cat_N=FL",
                   help="a different threshold for one feature; repeatable")
    p.add_argument("--engine", choices=("local", "spark"), default="local")
    p.add_argument("--days", default="0-23", help="days in order, e.g. 0-23 or 0,1,2; the last is test/validation")
    p.add_argument("--strict", action="store_true", help="a bad line is an error (default: skip it and count it)")
    bad = p.add_mutually_exclusive_group()
    bad.add_argument("--max-bad-line-share", type=float, default=DEFAULT_MAX_BAD_LINE_SHARE, metavar="F",
                     help=f"fail if more than this fraction of a day's lines are bad (default "
                          f"{DEFAULT_MAX_BAD_LINE_SHARE:g} = {DEFAULT_MAX_BAD_LINE_SHARE * 100:g}%%); they are skipped below it")
    bad.add_argument("--allow-bad-lines", action="store_const", const=1.0, dest="max_bad_line_share",
                     help="skip and count bad lines however many there are (= --max-bad-line-share 1)")
    p.add_argument("--workers", type=int, default=None, help="processes (local) or local[N] cores (spark); default all")
    p.add_argument("--chunk-rows", type=int, default=100_000, help="about this many lines per block (local engine)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset or unfinished run already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--max-examples", type=int, default=10, help="bad lines listed per kind in the report")
    p.add_argument("--spark-master", default=None,
                   help="spark engine: master URL (default: spark-submit's, else local[--workers])")
    p.add_argument("--spark-conf", type=_pair, action="append", default=[], metavar="KEY=VALUE",
                   help="spark engine: extra Spark configuration; repeatable")


def settings_from_args(args) -> Settings:
    thresholds = {}
    for name, value in args.feature_threshold:
        try:
            thresholds[name] = int(value)
        except ValueError:
            raise UserError(f"--feature-threshold {name}={value}: expected an integer count") from None
    if args.chunk_rows < 1 or (args.workers is not None and args.workers < 1):
        raise UserError("--chunk-rows and --workers must be >= 1")
    s = Settings(input=local_path(args.input, "--input", "dlrm preprocess",
                                  f"download the day files first (aws s3 cp --recursive {args.input} DIR)",
                                  what="reads local day files"),
                 out=local_path(args.out, "--out", "dlrm preprocess", "write it to a local folder, then upload "
                                f"it: python -m launcher data push DIR {args.out}"), days=parse_days(args.days),
                 frequency_threshold=args.frequency_threshold, feature_thresholds=thresholds, strict=args.strict,
                 overwrite=args.overwrite, progress=not args.no_progress, max_examples=args.max_examples,
                 max_bad_line_share=args.max_bad_line_share, vocabulary_days=args.vocabulary_days)
    s.thresholds()  # validate names and values before any work
    s.vocabulary_files([])
    return s


def main(args) -> int:
    s = settings_from_args(args)
    if args.engine == "local":
        from dlrm.preprocess import local

        report = local.run(s, workers=args.workers, chunk_rows=args.chunk_rows)
    else:
        try:
            import pyspark  # noqa: F401
        except ImportError:
            raise UserError("--engine spark needs pyspark (pip install 'dlrm-k8s[spark]'); or use --engine local") from None
        from dlrm.preprocess import spark

        session = spark.session(args.spark_master, dict(args.spark_conf), cores=args.workers)
        try:
            report = spark.run(s, session)
        finally:
            session.stop()
    print(json.dumps(report, indent=2))
    return 0
