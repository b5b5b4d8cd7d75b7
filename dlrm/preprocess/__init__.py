"""Criteo preprocessing: raw click-log day files -> the split-binary dataset (feature_spec.yaml).

    python -m dlrm preprocess --input DIR --out DIR --frequency-threshold 15 --engine local|spark

Two engines apply one transform and write byte-identical datasets:
  local.py  numpy on one machine, all cores, bounded memory, resumable per day;
  spark.py  the same transform in Spark SQL, for a cluster (or local mode).
Shared pieces: parse.py (line rules, vectorised parser), vocab.py (counts -> ids),
inputs.py (day files, splits, blocks), output.py (folder, report, assembly), gen.py (test data).
"""
