"""Hybrid parallelism: embedding tables sharded over ranks (table- or row-wise, see plan.py),
MLPs data-parallel (DDP), joined by an all-to-all of the looked-up embeddings (sharded.py).

Applied from outside the model: `parallelize(model, plan, runtime)` in parallel.py. This
package's __init__ imports nothing heavy so `python -m dlrm plan` stays quick.
"""
