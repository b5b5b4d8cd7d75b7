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
TABLE_PRESETS = {"criteo-fl15": CRITEO_FL15_CARDINALITIES, "small": SMALL_CARDINALITIES}
