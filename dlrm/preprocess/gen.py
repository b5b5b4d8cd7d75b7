"""Generate Criteo-like raw day files for tests and benchmarks.

Realistic where it matters to preprocessing: categorical values are heavily skewed (a few values
take most of the mass, a long tail is seen once or twice, so thresholds bite), each feature has
its own vocabulary size and missing rate, integers are log-normal with some negatives and
missing values, and a few hashes are upper case. Optionally each day gets bad lines of every
kind at known lines, and days can be written gzipped or with CRLF line ends.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from dlrm.preprocess.parse import NUM_CATEGORICAL, NUM_NUMERICAL

# One bad line of each flavour; the generator cycles through them. (kind, how to damage a line)
BAD_FLAVOURS = [
    ("fields", "drop_last"), ("fields", "extra"), ("fields", "empty"),
    ("label", "2"), ("label", ""),
    ("numerical", "1.5"), ("numerical", "abc"), ("numerical", "-"), ("numerical", "1234567890123456789"),
    ("categorical", "zz"), ("categorical", "abcdef1"), ("categorical", "GGGGGGGG"), ("categorical", "abcdef123"),
]


def _vocab_sizes(rng: np.random.Generator) -> np.ndarray:
    return np.round(np.exp(rng.uniform(np.log(3), np.log(20000), NUM_CATEGORICAL))).astype(np.int64)


def _day_lines(rng: np.random.Generator, lines: int, hashes: list[np.ndarray], cat_missing: np.ndarray,
               num_missing: np.ndarray) -> list[str]:
    cols = [np.where(rng.random(lines) < 0.25, "1", "0").astype(object)]
    for j in range(NUM_NUMERICAL):
        x = np.floor(np.exp(rng.normal(1.5 + 0.3 * j, 1.5, lines))).astype(np.int64)
        neg = rng.random(lines) < 0.03
        x = np.where(neg, -rng.integers(1, 6, lines), x)  # -1 ... -5: some are clamped at -2
        s = np.array([str(v) for v in x.tolist()], dtype=object)
        s[rng.random(lines) < num_missing[j]] = ""
        cols.append(s)
    for j in range(NUM_CATEGORICAL):
        v = hashes[j]
        idx = np.minimum((v.size * rng.random(lines) ** 4).astype(np.int64), v.size - 1)  # power-law skew
        table = np.array([f"{h:08x}" for h in v.tolist()], dtype=object)
        s = table[idx]
        upper = rng.random(lines) < 0.001
        s[upper] = [t.upper() for t in s[upper]]
        s[rng.random(lines) < cat_missing[j]] = ""
        cols.append(s)
    return ["\t".join(r) for r in zip(*cols)]


def _damage(line: str, how: str, kind: str, rng: np.random.Generator) -> str:
    f = line.split("\t")
    if kind == "fields":
        return {"drop_last": "\t".join(f[:-1]), "extra": line + "\tff", "empty": ""}[how]
    if kind == "label":
        f[0] = how
    elif kind == "numerical":
        f[1 + int(rng.integers(NUM_NUMERICAL))] = how
    else:
        f[1 + NUM_NUMERICAL + int(rng.integers(NUM_CATEGORICAL))] = how
    return "\t".join(f)


def generate_days(folder: str | Path, days: int = 3, lines: int | list[int] = 1000, seed: int = 0,
                  bad_lines: int = 0, gz: tuple[int, ...] = (), crlf: tuple[int, ...] = ()) -> dict:
    """Write day_0 ... day_<days-1> into `folder`; returns {(day, line): kind} of the bad lines.

    `lines` per day (or a list, one per day); `bad_lines` damaged lines per day, spread evenly;
    days in `gz` are written as day_<d>.gz, days in `crlf` with CRLF line ends.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = _vocab_sizes(rng)
    hashes = [rng.choice(2**32, size=int(n), replace=False).astype(np.uint64) for n in sizes]
    cat_missing = rng.choice([0.0, 0.0, 0.05, 0.4], NUM_CATEGORICAL)
    num_missing = rng.choice([0.0, 0.1, 0.45], NUM_NUMERICAL)
    per_day = lines if isinstance(lines, list) else [lines] * days
    bad: dict[tuple[int, int], str] = {}
    for d in range(days):
        text = _day_lines(rng, per_day[d], hashes, cat_missing, num_missing)
        for k, i in enumerate(np.linspace(0, per_day[d] - 1, bad_lines).astype(int).tolist() if bad_lines else []):
            kind, how = BAD_FLAVOURS[(k + d) % len(BAD_FLAVOURS)]
            text[i] = _damage(text[i], how, kind, rng)
            bad[(d, i + 1)] = kind
        eol = "\r\n" if d in crlf else "\n"
        data = (eol.join(text) + eol).encode() if text else b""
        if d in gz:
            with gzip.open(folder / f"day_{d}.gz", "wb", compresslevel=1) as fh:
                fh.write(data)
        else:
            (folder / f"day_{d}").write_bytes(data)
    return bad


# ---------------------------------------------------------------------------------------------
# `python -m dlrm synth-raw`: the same generator, for a person trying `dlrm preprocess`.


def add_arguments(p) -> None:
    p.add_argument("--out", required=True, help="folder for day_0 ... day_<DAYS-1> (new, empty, or an earlier synth-raw's)")
    p.add_argument("--days", type=int, default=3, help="day files (at least 2: the last is the test/validation day; default 3)")
    # 2 training days of 6,400 lines: 50 batches of `--config tiny`, its whole lr schedule in one epoch
    p.add_argument("--lines", type=int, default=6400, help="lines per day (default 6400)")
    p.add_argument("--bad-lines", type=int, default=0, help="damaged lines per day, of every kind preprocess skips and counts")
    p.add_argument("--seed", type=int, default=0)


def main(args) -> int:
    from dlrm.errors import UserError
    from dlrm.io.fsutil import local_path

    out = local_path(args.out, "--out", "dlrm synth-raw", "write the day files to a local folder; preprocess reads local files")
    for flag, value, low in (("--days", args.days, 2), ("--lines", args.lines, 1), ("--bad-lines", args.bad_lines, 0)):
        if not low <= value <= 10_000_000:
            raise UserError(f"{flag} {value}: expected a whole number from {low} to 10,000,000")
    if args.bad_lines > args.lines:
        raise UserError(f"--bad-lines {args.bad_lines}: more than --lines {args.lines}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: not a folder")
    foreign = sorted(p.name for p in out.iterdir() if not p.name.startswith("day_")) if out.is_dir() else []
    if foreign:
        raise UserError(f"--out {out} holds {', '.join(foreign[:3])}: day files go into a new or empty folder")
    for old in out.glob("day_*") if out.is_dir() else ():  # an earlier sample's days: never mixed with these
        old.unlink()
    generate_days(out, days=args.days, lines=args.lines, seed=args.seed, bad_lines=args.bad_lines)
    print(f"wrote day_0 ... day_{args.days - 1} in {out}: {args.lines:,} lines each (label, {NUM_NUMERICAL} integers, "
          f"{NUM_CATEGORICAL} hashed categoricals, tab-separated), {args.bad_lines} bad line(s) each")
    return 0
