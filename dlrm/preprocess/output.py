"""What both engines share around the transform: settings, the output folder, the report.

The output folder holds train/, test/, validation/, preprocess_report.json and, while a run is
in progress, `.preprocess/` (the engines' work: per-day counts, per-day or per-partition parts).
The final files are assembled from the parts by byte concatenation, then the report is written,
then feature_spec.yaml - last, so a folder without it is never mistaken for a dataset.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from dlrm.data.spec import SPEC_FILE, FeatureSpec
from dlrm.errors import DataError, UserError
from dlrm.io.fsutil import atomic_path
from dlrm.preprocess.inputs import find_days, DayFile
from dlrm.preprocess.parse import KINDS, NUM_CATEGORICAL, NUM_NUMERICAL

SPLITS = ("train", "test", "validation")
WORK = ".preprocess"
REPORT = "preprocess_report.json"
FORMAT = 1  # bump when the transform changes, so old work is not resumed
OURS = {*SPLITS, SPEC_FILE, REPORT, WORK}
# Real Criteo days hold (next to) no bad lines; a day with more is a wrong or damaged file
# (another format, a shifted column), whose "good" lines would be a skewed sample of it.
DEFAULT_MAX_BAD_LINE_SHARE = 0.01


VOCABULARY_DAYS = ("all", "train")  # see Settings.vocabulary_days


@dataclass
class Settings:
    input: Path
    out: Path
    days: list[int]
    frequency_threshold: int = 15
    feature_thresholds: dict[str, int] = field(default_factory=dict)  # {"cat_3": 2}
    strict: bool = False
    overwrite: bool = False
    progress: bool = True
    max_examples: int = 10  # bad lines listed per kind
    max_bad_line_share: float = DEFAULT_MAX_BAD_LINE_SHARE  # above it in any day: an error (1.0 allows all)
    # Which days the vocabulary (value counts, hence ids and cardinalities) is built from:
    # "all": every day given, the test/validation day included, as NVIDIA's Spark scripts do
    #        (spark_data_utils.py --mode generate_models --days 0-23): NVIDIA's table sizes and ids;
    # "train": the training days only, so the test day never shapes the ids (no look-ahead).
    vocabulary_days: str = "all"

    def vocabulary_files(self, files: list) -> list:
        """The day files whose values are counted for the vocabulary (files in --days order)."""
        if self.vocabulary_days not in VOCABULARY_DAYS:
            raise UserError(f"--vocabulary-days {self.vocabulary_days!r}: expected one of {', '.join(VOCABULARY_DAYS)}")
        return list(files) if self.vocabulary_days == "all" else list(files[:-1])

    def thresholds(self) -> list[int]:
        """The frequency threshold of each categorical feature, in order."""
        names = [f"cat_{j}" for j in range(NUM_CATEGORICAL)]
        for name, value in self.feature_thresholds.items():
            if name not in names:
                raise UserError(f"--feature-threshold {name}={value}: no feature {name!r}; expected cat_0 ... cat_25")
            if value < 0:
                raise UserError(f"--feature-threshold {name}={value}: expected a count >= 0")
        if not 0.0 <= self.max_bad_line_share <= 1.0:  # NaN fails too
            raise UserError(f"--max-bad-line-share {self.max_bad_line_share}: expected a fraction from 0 to 1 "
                            "(0.01 = 1%)")
        if self.frequency_threshold < 0:
            raise UserError(f"--frequency-threshold {self.frequency_threshold}: expected a count >= 0")
        return [self.feature_thresholds.get(n, self.frequency_threshold) for n in names]


def open_output(s: Settings, engine: str) -> tuple[list[DayFile], "Output", dict | None]:
    """The day files and the claimed output folder, and the report of a finished identical run
    (then there is nothing to do: both engines return it as it is)."""
    files = find_days(s.input, s.days)
    out = Output(s, files, engine)
    if out.state == "done":
        shutil.rmtree(out.work, ignore_errors=True)
        return files, out, out.existing_report()
    return files, out, None


def identity(files: list[DayFile], s: Settings) -> dict:
    """What determines the dataset's bytes; stored in the spec's metadata, compared on reruns."""
    return {
        "format": FORMAT,
        "inputs": [[f.path.name, f.size] for f in files],
        "days": list(s.days),
        "frequency_threshold": s.frequency_threshold,
        "feature_thresholds": dict(sorted(s.feature_thresholds.items())),
        "vocabulary_days": s.vocabulary_days,
    }


class Output:
    """Claims the output folder and knows where each piece goes.

    state is "done" (the same dataset is already there), "resume" (unfinished work of this
    engine for the same input and settings) or "fresh".
    """

    def __init__(self, s: Settings, files: list[DayFile], engine: str):
        self.root = Path(s.out).resolve()
        self.work = self.root / WORK
        self.identity = identity(files, s)
        # Resuming also requires the files to be untouched since the work was done.
        self.resume_key = {**self.identity, "engine": engine, "mtimes": [f.mtime_ns for f in files]}
        self.state = self._claim(s.overwrite)

    def _claim(self, overwrite: bool) -> str:
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"--out {self.root}: exists and is not a folder")
        self.root.mkdir(parents=True, exist_ok=True)
        strangers = sorted(p.name for p in self.root.iterdir() if p.name not in OURS)
        if strangers:
            raise DataError(f"--out {self.root}: holds {', '.join(strangers[:3])} which preprocessing did not write; "
                            f"expected an empty or new folder (or an earlier output of preprocess)")
        spec = self.root / SPEC_FILE
        if spec.exists():
            try:
                old = (FeatureSpec.load(spec).metadata or {}).get("preprocess", {}).get("identity")
            except DataError:  # unreadable: certainly not this dataset
                old = None
            if old == self.identity and not overwrite:
                return "done"
            if not overwrite:
                raise DataError(f"--out {self.root}: already holds a different dataset ({SPEC_FILE} from other input "
                                f"or settings); pass --overwrite to replace it, or choose another folder")
            spec.unlink()  # first: from here on the folder is an incomplete dataset
        state_file = self.work / "state.json"
        if state_file.exists() and not overwrite:
            try:
                old = json.loads(state_file.read_text())
            except ValueError:
                old = None
            if old == self.resume_key:
                return "resume"
            raise DataError(f"--out {self.root}: holds an unfinished run ({state_file}) of another engine, input or "
                            f"settings; rerun it as it was to resume, or pass --overwrite to discard it")
        for name in (*SPLITS, REPORT, WORK):
            p = self.root / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        self.work.mkdir()
        (self.work / "state.json").write_text(json.dumps(self.resume_key))
        return "fresh"

    def existing_report(self) -> dict:
        p = self.root / REPORT
        return json.loads(p.read_text()) if p.exists() else {}

    def spec(self, cardinalities: list[int], root: Path | None = None, splits=SPLITS, metadata=None) -> FeatureSpec:
        return FeatureSpec.default(root or self.root, cardinalities, NUM_NUMERICAL, splits=splits, metadata=metadata)

    def finish(self, cardinalities: list[int], parts: dict[str, list[Path]], report: dict, started: float) -> dict:
        """Concatenate each split's parts (roots of part datasets, in order) into the final files,
        check them, write the report, then the yaml, then drop the work folder."""
        t = time.time()
        meta = {"source": "criteo", "preprocess": {"identity": self.identity}}
        spec = self.spec(cardinalities, metadata=meta)
        for split in SPLITS:
            for chunk in spec.sources[split]:
                rel = chunk.file.relative_to(self.root)
                _concatenate([root / rel for root in parts.get(split, [])], chunk.file)
        rows = spec.check(SPLITS)
        if rows != report["rows"]:
            raise DataError(f"{self.root}: assembled rows {rows} differ from the rows counted {report['rows']}")
        report["seconds"]["assemble"] = round(time.time() - t, 2)
        report["seconds"]["total"] = round(time.time() - started, 2)
        (self.root / REPORT).write_text(json.dumps(report, indent=2) + "\n")
        spec.save()
        shutil.rmtree(self.work, ignore_errors=True)
        return report


def _concatenate(sources: list[Path], dest: Path) -> None:
    """dest = the sources back to back, written under a temp name and renamed when complete."""
    with atomic_path(dest, fsync=False) as tmp, open(tmp, "wb") as out:
        for src in sources:
            with open(src, "rb") as f:
                shutil.copyfileobj(f, out, 16 << 20)


class BadLineTally:
    """Bad lines by kind and split, and the first few of each kind with file and line."""

    def __init__(self, max_examples: int):
        self.max_examples = max_examples
        self.counts = {k: {s: 0 for s in SPLITS} for k in KINDS}
        self.first: dict[str, list] = {k: [] for k in KINDS}

    def add_counts(self, split: str, kind: str, n: int) -> None:
        self.counts[kind][split] += int(n)

    def add_example(self, kind: str, where: tuple[int, int], text: str) -> None:
        """where = (day index, line): examples are kept in input order, the first N of each kind."""
        lst = self.first[kind]
        lst.append((where, text))
        lst.sort(key=lambda e: e[0])
        del lst[self.max_examples:]

    @property
    def total(self) -> int:
        return sum(sum(v.values()) for v in self.counts.values())

    def to_dict(self, strict: bool) -> dict:
        return {
            "policy": "fatal (--strict)" if strict else "skipped: counted here, not written to any split",
            "total": self.total,
            "by_kind": {
                k: {"count": sum(self.counts[k].values()), "by_split": dict(self.counts[k]),
                    "first": [text for _, text in self.first[k]]}
                for k in KINDS
            },
        }


def check_bad_lines(s: Settings, files: list[DayFile], lines: dict, bad: dict, first_bad: dict) -> None:
    """Print each day's bad-line share on stderr; a day above s.max_bad_line_share is a DataError
    naming the file, its share and its first bad line. `lines`, `bad`, `first_bad`: by day."""
    for f in files:
        n, k = int(lines[f.day]), int(bad[f.day])
        print(f"{f.path.name}: {k} of {n} lines bad ({k / max(n, 1):.2%})", file=sys.stderr, flush=True)
    for f in files:
        n, k = int(lines[f.day]), int(bad[f.day])
        if k and k > s.max_bad_line_share * n:
            raise DataError(f"{f.path}: {k} of {n} lines are bad ({k / n:.2%}, the first at line {first_bad[f.day]}), "
                            f"more than --max-bad-line-share {s.max_bad_line_share:g}; fix the file, or pass "
                            "--allow-bad-lines (or a higher --max-bad-line-share) to skip them")


def check_splits(s: Settings, files: list[DayFile], rows: dict) -> None:
    """Every split must get rows: an empty one would train 0 steps or evaluate nothing."""
    for split, n in rows.items():
        if n == 0:
            days = [f.path.name for f in (files[:-1] if split == "train" else files[-1:])]
            raise DataError(f"{s.input}: the {split} split would be empty (0 good lines in {', '.join(days)}); "
                            "check the day files and --days")


def strict_error(path: Path, line: int, detail: str) -> DataError:
    return DataError(f"{path}:{line}: bad line: {detail} (--strict makes bad lines fatal; "
                     f"without it they are skipped and counted in the report)")


def make_report(engine: str, s: Settings, files: list[DayFile], lines: dict, rows: dict, cardinalities: list[int],
                bad: BadLineTally, clamped: dict, seconds: dict) -> dict:
    return {
        "engine": engine,
        "input": str(s.input),
        "out": str(Path(s.out).resolve()),
        "train_days": [f.day for f in files[:-1]],
        "test_validation_day": files[-1].day,
        "vocabulary_days": [f.day for f in s.vocabulary_files(files)],
        "frequency_threshold": s.frequency_threshold,
        "feature_thresholds": dict(s.feature_thresholds),
        "lines": {f.path.name: int(lines[f.day]) for f in files},
        "rows": {k: int(rows[k]) for k in SPLITS},
        "cardinalities": {f"cat_{j}": int(c) for j, c in enumerate(cardinalities)},
        "bad_lines": bad.to_dict(s.strict),
        "clamped_values": {k: int(clamped.get(k, 0)) for k in SPLITS},
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
