"""The local engine: one machine, all its cores, bounded memory, resumable per day.

The parent process reads each day file (plain or .gz) as blocks of whole lines and hands them to
a pool of worker processes; results come back in input order through a bounded window, so
memory stays at about (2 x workers) blocks however large a day is.

  pass 1  per day: parse, count categorical values (every day, or the training days only with
          vocabulary_days=train), tally lines, rows and bad lines. Saved per day under
          .preprocess/pass1/, so a rerun skips the days already done.
  vocab   counts of the vocabulary days merged, thresholded and ranked (vocab.py).
  pass 2  per day: parse again, transform, look up ids, append to that day's part files through
          SplitBinaryWriter; a day counts as done once its writers closed and done.json exists.
  finish  parts concatenated into the final files, report, then feature_spec.yaml (output.py).

Pass 2 writes per-day parts rather than appending to the final files because SplitBinaryWriter
starts its files afresh; the parts make a resume exact at the cost of one sequential copy.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
from collections import deque
from contextlib import ExitStack, contextmanager

import numpy as np
from tqdm import tqdm

from dlrm.data.writer import SplitBinaryWriter
from dlrm.errors import DataError
from dlrm.io.fsutil import atomic_path
from dlrm.preprocess.inputs import DayFile, first_half, read_blocks
from dlrm.preprocess.output import (SPLITS, BadLineTally, Output, Settings, check_bad_lines, check_splits, make_report,
                                    open_output, strict_error)
from dlrm.preprocess.parse import KINDS, parse_block, transform_numerical
from dlrm.preprocess.vocab import Vocab, build_vocab, count_values, merge_counts

BYTES_PER_LINE = 256  # a little above a Criteo line's average, to size blocks from --chunk-rows
_VOCAB: Vocab | None = None  # set before pass-2 workers fork, so they share it copy-on-write


# -- work done in the worker processes ------------------------------------------------------------
def _pass1_block(task):
    block, first_line, pos, count, max_examples = task
    p = parse_block(block, first_line, max_examples)
    keys, counts = count_values(p.categorical, p.cat_present) if count else (np.zeros(0, np.uint64), np.zeros(0, np.int64))
    return {"lines": p.lines, "rows": p.rows, "bad": p.bad_counts, "examples": p.examples,
            "first_bad": int(p.bad_lines[0]) if p.bad_lines.shape[0] else None,
            "keys": keys, "counts": counts, "pos": pos}


def _pass2_block(task):
    block, first_line, pos, split_at = task
    p = parse_block(block, first_line, 0)
    if split_at is None:
        groups = {"train": slice(None)}
        bad_split = np.zeros(p.bad_lines.shape, np.int8)
    else:  # the last day: lines up to split_at are test, the rest validation
        k = int(np.searchsorted(p.line, split_at, side="right"))
        groups = {"test": slice(0, k), "validation": slice(k, None)}
        bad_split = np.where(p.bad_lines <= split_at, 1, 2).astype(np.int8)
    out = {}
    for split, sl in groups.items():
        num, clamped = transform_numerical(p.numerical[sl], p.num_present[sl])
        ids = _VOCAB.lookup(p.categorical[sl], p.cat_present[sl])
        out[split] = (num, ids, p.label[sl], clamped)
    bad = np.bincount(bad_split.astype(np.int64) * len(KINDS) + p.bad_kinds, minlength=len(SPLITS) * len(KINDS))
    return out, bad.reshape(len(SPLITS), len(KINDS)), p.lines, pos


# -- the parent -----------------------------------------------------------------------------------
@contextmanager
def _pool(workers: int):
    """A fork pool (workers inherit _VOCAB), or None to run inline when one worker is asked for."""
    if workers <= 1:
        yield None
        return
    pool = mp.get_context("fork").Pool(workers)
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()


def _ordered(pool, fn, tasks, window: int):
    """fn over tasks in the pool, results in task order, at most `window` tasks in flight."""
    if pool is None:
        yield from map(fn, tasks)
        return
    pending = deque()
    for task in tasks:
        pending.append(pool.apply_async(fn, (task,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _bar(f: DayFile, what: str, show: bool):
    return tqdm(total=f.size, unit="B", unit_scale=True, desc=f"{what} {f.path.name}", disable=not show,
                leave=False, mininterval=1.0)


def _pass1_day(f: DayFile, count: bool, pool, s: Settings, block_bytes: int, window: int):
    acc, lines, rows, first_bad = [], 0, 0, None
    bad = dict.fromkeys(KINDS, 0)
    examples = []
    tasks = ((b, line, pos, count, s.max_examples) for b, line, pos in read_blocks(f, block_bytes))
    with _bar(f, "pass 1", s.progress) as bar:
        for r in _ordered(pool, _pass1_block, tasks, window):
            if s.strict and r["examples"]:
                first = min(r["examples"], key=lambda e: e.line)
                raise strict_error(f.path, first.line, first.detail())
            acc.append((r["keys"], r["counts"]))
            if len(acc) >= 16:  # keep the day's counts compact as blocks arrive
                acc = [merge_counts(acc)]
            lines, rows = lines + r["lines"], rows + r["rows"]
            first_bad = first_bad or r["first_bad"]  # blocks arrive in order: the first one that has any
            for k in KINDS:
                bad[k] += r["bad"][k]
            examples += [(e.kind, e.line, e.detail()) for e in r["examples"]]
            bar.update(r["pos"] - bar.n)
    kept = []
    for k in KINDS:
        kept += [e for e in examples if e[0] == k][: s.max_examples]
    keys, counts = merge_counts(acc)
    return {"lines": lines, "rows": rows, "bad": bad, "examples": kept, "first_bad": first_bad}, keys, counts


def _pass2_day(f: DayFile, last: bool, lines: int, pool, out: Output, cards: list[int], block_bytes: int,
               window: int, show: bool) -> dict:
    root = out.work / "pass2" / f"day_{f.day}"
    shutil.rmtree(root, ignore_errors=True)  # leftovers of an interrupted attempt
    splits = ("test", "validation") if last else ("train",)
    split_at = first_half(lines) if last else None
    spec = out.spec(cards, root=root, splits=splits)
    rows, clamped = dict.fromkeys(splits, 0), dict.fromkeys(splits, 0)
    bad = np.zeros((len(SPLITS), len(KINDS)), np.int64)
    seen = 0
    tasks = ((b, line, pos, split_at) for b, line, pos in read_blocks(f, block_bytes))
    with ExitStack() as stack, _bar(f, "pass 2", show) as bar:
        writers = {sp: stack.enter_context(SplitBinaryWriter(spec, sp)) for sp in splits}
        for result, bad_block, n, pos in _ordered(pool, _pass2_block, tasks, window):
            for sp, (num, ids, label, c) in result.items():
                if label.shape[0]:  # the writer cannot append an empty batch (memoryview of size 0)
                    writers[sp].append(num, ids, label)
                rows[sp] += int(label.shape[0])
                clamped[sp] += c
            bad += bad_block
            seen += n
            bar.update(pos - bar.n)
    if seen != lines:
        raise DataError(f"{f.path}: {seen} lines in pass 2 but {lines} in pass 1; the file changed during preprocessing")
    where = ("test", "validation") if last else ("train",)
    stats = {"rows": rows, "clamped": clamped,
             "bad": {sp: dict(zip(KINDS, bad[SPLITS.index(sp)].tolist())) for sp in where}}
    (root / "done.json").write_text(json.dumps(stats))
    return stats


def run(s: Settings, workers: int | None = None, chunk_rows: int = 100_000) -> dict:
    """Preprocess s.input into s.out; returns the report (also written as preprocess_report.json)."""
    global _VOCAB
    t0 = time.time()
    files, out, finished = open_output(s, "local")
    if finished is not None:
        return finished
    thresholds = s.thresholds()
    workers = max(1, workers or os.cpu_count() or 1)
    block_bytes = max(1, chunk_rows) * BYTES_PER_LINE
    window = 2 * workers
    n = len(files)
    pass1 = out.work / "pass1"
    pass1.mkdir(exist_ok=True)

    day_stats = {}
    counted = s.vocabulary_files(files)
    with _pool(workers) as pool:
        for f in files:
            done = pass1 / f"day_{f.day}.json"
            if not done.exists():  # counts first, then the json that marks the day done
                stats, keys, counts = _pass1_day(f, f in counted, pool, s, block_bytes, window)
                with atomic_path(pass1 / f"day_{f.day}.npz", fsync=False, tag=".tmp.npz") as tmp:  # savez adds .npz otherwise
                    np.savez(tmp, keys=keys, counts=counts)
                done.write_text(json.dumps(stats))
            day_stats[f.day] = json.loads(done.read_text())
    # Before any id is counted or row written: a day of mostly bad lines, or no training rows, stops here.
    check_bad_lines(s, files, {d: st["lines"] for d, st in day_stats.items()},
                    {d: sum(st["bad"].values()) for d, st in day_stats.items()},
                    {d: st.get("first_bad") for d, st in day_stats.items()})
    check_splits(s, files, {"train": sum(day_stats[f.day]["rows"] for f in files[:-1])})
    t1 = time.time()

    merged = (np.zeros(0, np.uint64), np.zeros(0, np.int64))
    for f in counted:  # ids come from the vocabulary days (all, or the training days only)
        with np.load(pass1 / f"day_{f.day}.npz") as z:
            merged = merge_counts([merged, (z["keys"], z["counts"])])
    _VOCAB = vocab = build_vocab(*merged, thresholds)
    del merged
    t2 = time.time()

    with _pool(workers) as pool:  # forked now, so the workers see _VOCAB
        for i, f in enumerate(files):
            root = out.work / "pass2" / f"day_{f.day}"
            if not (root / "done.json").exists():
                _pass2_day(f, i == n - 1, day_stats[f.day]["lines"], pool, out, vocab.cardinalities,
                           block_bytes, window, s.progress)
    t3 = time.time()

    tally, rows, clamped = BadLineTally(s.max_examples), dict.fromkeys(SPLITS, 0), dict.fromkeys(SPLITS, 0)
    for i, f in enumerate(files):
        d1 = day_stats[f.day]
        d2 = json.loads((out.work / "pass2" / f"day_{f.day}" / "done.json").read_text())
        for sp, r in d2["rows"].items():
            rows[sp] += r
            clamped[sp] += d2["clamped"][sp]
        for sp, kinds in d2["bad"].items():
            for k, c in kinds.items():
                tally.add_counts(sp, k, c)
        if sum(d1["bad"].values()) != sum(sum(k.values()) for k in d2["bad"].values()):
            raise DataError(f"{f.path}: bad lines differ between pass 1 and pass 2; the file changed during preprocessing")
        for kind, line, detail in d1["examples"]:
            tally.add_example(kind, (i, line), f"{f.path}:{line}: {detail}")
    check_splits(s, files, rows)
    parts = {"train": [out.work / "pass2" / f"day_{f.day}" for f in files[:-1]],
             "test": [out.work / "pass2" / f"day_{files[-1].day}"],
             "validation": [out.work / "pass2" / f"day_{files[-1].day}"]}
    seconds = {"pass1": t1 - t0, "vocab": t2 - t1, "pass2": t3 - t2}
    report = make_report("local", s, files, {f.day: day_stats[f.day]["lines"] for f in files}, rows,
                         vocab.cardinalities, tally, clamped, seconds)
    report["workers"] = workers
    out.finish(vocab.cardinalities, parts, report, started=t0)
    _VOCAB = None
    return report
