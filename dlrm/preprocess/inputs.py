"""Finding the day files, choosing the splits, and reading a file as blocks of whole lines.

Day d is `day_<d>` or `day_<d>.gz` in the input folder. The days given (default 0-23) are in
order; all but the last are `train`; the last day's first `lines - lines // 2` physical lines are
`test` and the rest `validation` (counted in physical lines, so where a bad line falls does not
move the boundary; bad lines are then dropped from whichever half they are in).
"""
from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from dlrm.errors import DataError, UserError

GZIP_MAGIC = b"\x1f\x8b"
NEWLINE = b"\n"


@dataclass(frozen=True)
class DayFile:
    day: int
    path: Path
    size: int
    mtime_ns: int

    @property
    def gz(self) -> bool:
        return self.path.name.endswith(".gz")


def parse_days(text: str) -> list[int]:
    """'0-23' or '0,1,5' or '0-3,7': the days in the order given, without repeats."""
    days: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                days.extend(range(lo, hi + 1))
            else:
                days.append(int(part))
        except ValueError:
            raise UserError(f"--days {text!r}: cannot read {part!r}; expected e.g. 0-23 or 0,1,2 (day numbers >= 0)") from None
    if any(d < 0 for d in days) or len(set(days)) != len(days):
        raise UserError(f"--days {text!r}: days must be distinct numbers >= 0")
    if len(days) < 2:
        raise UserError(f"--days {text!r}: need at least two days (training days, then the test/validation day)")
    return days


def find_days(input_dir: str | os.PathLike, days: list[int]) -> list[DayFile]:
    """The day files, in the order of `days`; a missing or ambiguous day is a UserError."""
    root = Path(input_dir)
    if not root.is_dir():
        raise UserError(f"--input {root}: not a folder (expected a folder holding day_0 ... day_23, plain or .gz)")
    out = []
    for d in days:
        found = [p for p in (root / f"day_{d}", root / f"day_{d}.gz") if p.is_file()]
        if not found:
            raise UserError(f"{root}: day {d} is missing (expected {root / f'day_{d}'} or {root / f'day_{d}.gz'})")
        if len(found) > 1:
            raise UserError(f"{root}: day {d} is there twice ({found[0].name} and {found[1].name}); keep one")
        st = found[0].stat()
        if st.st_size == 0:  # an empty day would give a "complete" dataset with no rows or ids from it
            raise UserError(f"{found[0]}: empty file (0 bytes); a Criteo day file holds one sample a line")
        out.append(DayFile(d, found[0], st.st_size, st.st_mtime_ns))
    return out


def first_half(lines: int) -> int:
    """Physical lines of the last day that go to `test`; the rest go to `validation`."""
    return lines - lines // 2


def read_blocks(f: DayFile, block_bytes: int) -> Iterator[tuple[bytes, int, int]]:
    """(block of whole lines, its first line number, bytes of the file consumed so far).

    Blocks end at a newline (the last one may not); a line longer than a block grows the block.
    The third value drives progress bars: compressed bytes for .gz files.
    """
    raw = open(f.path, "rb")
    try:
        if f.gz:
            if raw.read(2) != GZIP_MAGIC:
                raise DataError(f"{f.path}: not a gzip file (no gzip header); rename it to day_{f.day} if it is plain text")
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw, mode="rb")
        else:
            stream = raw
        line, carry = 1, b""
        while True:
            try:
                data = stream.read(block_bytes)
            except (OSError, EOFError, zlib.error) as e:
                whole = line + carry.count(NEWLINE) - 1
                raise DataError(f"{f.path}: unreadable gzip after line {whole} (truncated or corrupt): {e}") from None
            if not data:
                if carry:
                    yield carry, line, raw.tell()
                return
            data = carry + data if carry else data
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # no newline yet: a very long line, keep reading
                carry = data
                continue
            block, carry = data[:cut], data[cut:]
            yield block, line, raw.tell()
            line += block.count(b"\n")
    finally:
        raw.close()
