"""`make bench`: run every benchmarks/bench_*.py (or those named) and print their figures.

Each benchmark is a script that prints `name: value unit (ratio vs its baseline)` lines; it
measures its baseline in the same run, so ratios hold on whatever machine runs them.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(names: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if names:
        scripts = [s for s in scripts if any(n in s.stem for n in names)]
    env = dict(os.environ, PYTHONPATH=str(HERE.parent), CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    failed = []
    for script in scripts:
        print(f"== {script.stem} ==", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script)], cwd=HERE.parent, env=env)
        print(f"   ({time.perf_counter() - t0:.0f} s{'' if rc == 0 else f', exit {rc}'})", flush=True)
        if rc:
            failed.append(script.stem)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
