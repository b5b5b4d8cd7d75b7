"""Vectorised parsing of raw Criteo lines, and the bad-line rules both engines apply.

A line is: label, 13 integers, 26 categorical hashes, tab-separated; an empty field is missing.
`parse_block` takes a block of whole lines (bytes) and returns the valid rows as arrays plus the
bad lines, without a Python loop over lines: newline and tab positions come from numpy, fields
are gathered into fixed-width byte matrices and decoded with lookup tables.

The rules (the Spark engine writes the same ones in Spark SQL, see spark.py):
  * a line ends at '\\n'; one '\\r' right before it is dropped (CRLF files);
  * `fields`      - not exactly 40 tab-separated fields;
  * `label`       - the label is not exactly "0" or "1";
  * `numerical`   - a non-empty integer field that is not -?[0-9]{1,18};
  * `categorical` - a non-empty categorical field that is not exactly 8 hex digits (either case).
A line gets the first kind in that order; the detail names the first bad field.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NUM_NUMERICAL, NUM_CATEGORICAL = 13, 26
NUM_FIELDS = 1 + NUM_NUMERICAL + NUM_CATEGORICAL
MAX_DIGITS = 18  # 18 decimal digits always fit int64, so parsing can never overflow
KINDS = ("fields", "label", "numerical", "categorical")

_DIGIT = np.full(256, 255, np.uint8)
_DIGIT[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10, dtype=np.uint8)
_HEX = _DIGIT.copy()
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16, dtype=np.uint8)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint8)
_SHIFTS = np.arange(28, -1, -4, dtype=np.uint32)  # nibble weights of an 8-digit hash


def field_name(index: int) -> str:
    """The name of field `index` (0 = label) as it appears in reports and the feature spec."""
    if index == 0:
        return "label"
    if index <= NUM_NUMERICAL:
        return f"num_{index - 1}"
    return f"cat_{index - 1 - NUM_NUMERICAL}"


def describe(kind: str, field_index: int, text: str, nfields: int) -> str:
    """One line of a bad-line report; shared by both engines so their reports read the same."""
    text = text[:40]
    if kind == "fields":
        return f"{nfields} tab-separated fields, expected {NUM_FIELDS}"
    if kind == "label":
        return f"label {text!r}, expected 0 or 1"
    if kind == "numerical":
        return f"{field_name(field_index)} {text!r}, expected an integer of at most {MAX_DIGITS} digits or empty"
    return f"{field_name(field_index)} {text!r}, expected 8 hex digits or empty"


@dataclass
class BadLine:
    kind: str
    line: int  # 1-based line number in its file
    field: int  # index of the first bad field (0 for `fields`)
    text: str  # that field's text (empty for `fields`)
    nfields: int

    def detail(self) -> str:
        return describe(self.kind, self.field, self.text, self.nfields)


@dataclass
class Parsed:
    """The valid rows of a block, in line order, and what was wrong with the others."""

    lines: int  # physical lines in the block
    line: np.ndarray  # [R] int64, 1-based line number of each valid row
    label: np.ndarray  # [R] bool
    numerical: np.ndarray  # [R, 13] int64 (0 where missing)
    num_present: np.ndarray  # [R, 13] bool
    categorical: np.ndarray  # [R, 26] uint32 hash values (0 where missing)
    cat_present: np.ndarray  # [R, 26] bool
    bad_counts: dict = field(default_factory=dict)  # kind -> count
    bad_lines: np.ndarray = None  # [K] int64 line numbers of every bad line (for split accounting)
    bad_kinds: np.ndarray = None  # [K] int8 index into KINDS of each bad line
    examples: list = field(default_factory=list)  # first few BadLine of each kind

    @property
    def rows(self) -> int:
        return int(self.line.shape[0])


def _text(a: np.ndarray, start: int, end: int) -> str:
    return bytes(a[start:end]).decode("utf-8", "replace")


def parse_block(buf: bytes | memoryview, first_line: int = 1, max_examples: int = 5) -> Parsed:
    """Parse whole lines. `buf` ends at a newline, except a file's last line may lack one."""
    a = np.frombuffer(buf, np.uint8)
    size = a.shape[0]
    ends = np.flatnonzero(a == 10)
    if size and a[-1] != 10:
        ends = np.append(ends, size)
    n = ends.shape[0]
    starts = np.empty(n, np.int64)
    starts[:1] = 0
    starts[1:] = ends[:-1] + 1
    # Line numbers of tabs; a tab is never a line end, so 'left' finds its own line.
    tabs = np.flatnonzero(a == 9)
    tab_line = np.searchsorted(ends, tabs)
    nfields = np.bincount(tab_line, minlength=n) + 1
    # Drop one '\r' before the newline (a CRLF file); it can only follow the last tab.
    ends = ends - ((ends > starts) & (a[np.maximum(ends - 1, 0)] == 13))

    kind = np.where(nfields != NUM_FIELDS, 0, -1).astype(np.int8)  # index into KINDS, -1 = good
    bad_field = np.zeros(n, np.int16)
    good = np.flatnonzero(nfields == NUM_FIELDS)
    g = good.shape[0]
    t = tabs[(nfields == NUM_FIELDS)[tab_line]].reshape(g, NUM_FIELDS - 1)
    fs = np.empty((g, NUM_FIELDS), np.int64)
    fe = np.empty((g, NUM_FIELDS), np.int64)
    fs[:, 0], fs[:, 1:] = starts[good], t + 1
    fe[:, :-1], fe[:, -1] = t, ends[good]
    last = max(size - 1, 0)

    # label: exactly one byte, '0' or '1'
    c0 = a[np.minimum(fs[:, 0], last)]
    label_ok = (fe[:, 0] - fs[:, 0] == 1) & ((c0 == 48) | (c0 == 49))
    gkind = np.where(label_ok, -1, 1).astype(np.int8)
    gfield = np.zeros(g, np.int16)

    numerical = np.zeros((g, NUM_NUMERICAL), np.int64)
    num_present = fe[:, 1:1 + NUM_NUMERICAL] > fs[:, 1:1 + NUM_NUMERICAL]
    for j in range(NUM_NUMERICAL):
        s, e = fs[:, 1 + j], fe[:, 1 + j]
        present = num_present[:, j]
        neg = present & (a[np.minimum(s, last)] == 45)
        ds = s + neg
        nd = e - ds
        width = int(min(nd.max(initial=0), MAX_DIGITS))
        ok = ~present | ((nd >= 1) & (nd <= MAX_DIGITS))
        if width:
            # Right-aligned window of `width` bytes ending at the field's end; bytes before the
            # first digit are masked out, so one matrix decodes fields of any length.
            idx = e[:, None] - width + np.arange(width)
            inside = idx >= ds[:, None]
            d = _DIGIT[a[np.clip(idx, 0, last)]]
            ok &= np.all((d < 10) | ~inside, axis=1)
            d = np.where(inside & ok[:, None], d, 0).astype(np.int64)
            value = d @ (10 ** np.arange(width - 1, -1, -1, dtype=np.int64))
            numerical[:, j] = np.where(neg, -value, value)
        newly = (gkind < 0) & ~ok
        gkind[newly], gfield[newly] = 2, 1 + j

    categorical = np.zeros((g, NUM_CATEGORICAL), np.uint32)
    cat_present = np.empty((g, NUM_CATEGORICAL), bool)
    offs = np.arange(8)
    for j in range(NUM_CATEGORICAL):
        col = 1 + NUM_NUMERICAL + j
        s, e = fs[:, col], fe[:, col]
        length = e - s
        present = length > 0
        nib = _HEX[a[np.clip(s[:, None] + offs, 0, last)]]
        ok = ~present | ((length == 8) & np.all(nib < 16, axis=1))
        value = (nib.astype(np.uint32) << _SHIFTS).sum(axis=1, dtype=np.uint32)
        categorical[:, j] = np.where(present & ok, value, 0)
        cat_present[:, j] = present
        newly = (gkind < 0) & ~ok
        gkind[newly], gfield[newly] = 3, col

    kind[good], bad_field[good] = gkind, gfield
    valid = good[gkind < 0]
    keep = gkind < 0
    bad = np.flatnonzero(kind >= 0)
    counts = {k: int(c) for k, c in zip(KINDS, np.bincount(kind[bad], minlength=len(KINDS)))}
    examples = []
    for k in range(len(KINDS)):
        for i in bad[kind[bad] == k][:max_examples]:
            f = int(bad_field[i])
            if k == 0:
                text = ""
            else:
                gi = int(np.searchsorted(good, i))
                text = _text(a, int(fs[gi, f]), int(fe[gi, f]))
            examples.append(BadLine(KINDS[k], first_line + int(i), f, text, int(nfields[i])))
    return Parsed(
        lines=n,
        line=first_line + valid.astype(np.int64),
        label=c0[keep] == 49,
        numerical=numerical[keep],
        num_present=num_present[keep],
        categorical=categorical[keep],
        cat_present=cat_present[keep],
        bad_counts=counts,
        bad_lines=first_line + bad.astype(np.int64),
        bad_kinds=kind[bad],
        examples=examples,
    )


def transform_numerical(values: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, int]:
    """log(max(x, -2) + 3) as float16, 0 where missing; returns the values and how many were clamped.

    The log is taken in float64 and rounded once to float16, as the Spark engine does, so the two
    engines agree bit for bit.
    """
    clamped = present & (values < -2)
    x = (np.maximum(values, -2) + 3).astype(np.float64)
    out = np.where(present, np.log(x), 0.0).astype(np.float16)
    return out, int(clamped.sum())
