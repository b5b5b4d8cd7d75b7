"""Embedding table sizes of known datasets: one definition for synth, the planner and the launcher."""

# Criteo 1TB after NVIDIA's preprocessing with frequency threshold 15: 26 tables, 32,709,138 rows.
CRITEO_FL15_CARDINALITIES = [
    7912889, 33823, 17139, 7339, 20046, 4, 7105, 1382, 63, 5554114, 582469, 245828, 11, 2209, 10667, 104, 4,
    968, 15, 8165896, 2675940, 7156453, 302516, 12022, 97, 35,
]
# Criteo's shape (a few huge tables, many small ones) at a size a CPU trains in minutes.
SMALL_CARDINALITIES = [
    1000, 500, 20000, 8000, 300, 4, 5000, 1200, 60, 40000, 25000, 15000, 11, 2000, 9000, 100, 4, 900, 15,
    50000, 30000, 45000, 12000, 6000, 90, 35,
]
# MLPerf Training's DLRM-DCNv2 (recommendation_v2/torchrec_dlrm): Criteo 1TB with every table capped
# at 40,000,000 rows (ids taken modulo the cap), and the per-feature hotness of its synthetic
# multi-hot dataset (materialize_synthetic_multihot_dataset.py --multi_hot_sizes).
MLPERF_TABLE_CAP = 40_000_000
MLPERF_DCNV2_CARDINALITIES = [
    40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956, 405282, 10, 2209, 11938, 155, 4,
    976, 14, 40000000, 40000000, 40000000, 590152, 12973, 108, 36,
]
MLPERF_HOTNESS = [3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1]
TABLE_PRESETS = {"criteo-fl15": CRITEO_FL15_CARDINALITIES, "small": SMALL_CARDINALITIES,
                 "mlperf-dcnv2": MLPERF_DCNV2_CARDINALITIES}
# Presets whose data is multi-hot: ids per row of each table (the others are one-hot).
TABLE_HOTNESS = {"mlperf-dcnv2": MLPERF_HOTNESS}
MULTI_HOT_PRESETS = {"mlperf": MLPERF_HOTNESS}
