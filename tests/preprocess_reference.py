"""A slow, obvious, line-by-line Python version of the Criteo transform, to check the engines against.

Written from the rules in the brief, not from the engines' code: str.split, int(), int(x, 16).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import numpy as np

NUM = re.compile(r"-?[0-9]{1,18}")
HEX = re.compile(r"[0-9a-fA-F]{8}")


def read_lines(path: Path) -> list[str]:
    import gzip

    data = gzip.open(path, "rb").read() if path.name.endswith(".gz") else path.read_bytes()
    text = data.decode()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def classify(line: str):
    """None for a good line, else the kind of the first problem."""
    f = line.split("\t")
    if len(f) != 40:
        return "fields"
    if f[0] not in ("0", "1"):
        return "label"
    if any(x and not NUM.fullmatch(x) for x in f[1:14]):
        return "numerical"
    if any(x and not HEX.fullmatch(x) for x in f[14:]):
        return "categorical"
    return None


def reference(day_paths: list[Path], thresholds: list[int], vocabulary_days: str = "all"):
    """{split: (numerical float16 [R,13], ids [R,26], label [R])}, cardinalities, bad {kind: n}.

    vocabulary_days "all": values are counted on every day (NVIDIA's rule), "train": on the
    training days only."""
    days = [read_lines(p) for p in day_paths]
    bad = Counter()
    counts = [Counter() for _ in range(26)]
    good = []  # (split, fields)
    for d, lines in enumerate(days):
        cut = len(lines) - len(lines) // 2
        for i, line in enumerate(lines):
            split = "train" if d < len(days) - 1 else ("test" if i < cut else "validation")
            kind = classify(line)
            if kind:
                bad[kind] += 1
                continue
            f = line.split("\t")
            good.append((split, f))
            if split == "train" or vocabulary_days == "all":
                for j in range(26):
                    if f[14 + j]:
                        counts[j][int(f[14 + j], 16)] += 1
    ids, cards = [], []
    for j in range(26):
        kept = [(-c, v) for v, c in counts[j].items() if c >= thresholds[j]]
        kept.sort()
        ids.append({v: k + 1 for k, (_, v) in enumerate(kept)})
        cards.append(len(kept) + 1)
    out = {}
    for split in ("train", "test", "validation"):
        rows = [f for s, f in good if s == split]
        num = np.array([[np.float16(math.log(max(int(x), -2) + 3)) if x else np.float16(0) for x in f[1:14]]
                        for f in rows], dtype=np.float16).reshape(-1, 13)
        cat = np.array([[ids[j].get(int(f[14 + j], 16), 0) if f[14 + j] else 0 for j in range(26)] for f in rows],
                       dtype=np.int64).reshape(-1, 26)
        lab = np.array([f[0] == "1" for f in rows], dtype=bool)
        out[split] = (num, cat, lab)
    return out, cards, dict(bad)
