"""Criteo preprocessing, local engine: line rules, ids, splits, bad lines, folders, resume, CLI.

Outputs are checked against tests/preprocess_reference.py, a line-by-line Python version
of the transform. The Spark engine's byte-identity is in test_preprocess_spark.py.
"""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from preprocess_reference import reference

from dlrm.__main__ import main as dlrm_main
from dlrm.data.spec import FeatureSpec
from dlrm.errors import DataError, UserError
from dlrm.preprocess import local
from dlrm.preprocess.gen import generate_days
from dlrm.preprocess.inputs import parse_days, first_half
from dlrm.preprocess.output import SPLITS, Settings
from dlrm.preprocess.parse import parse_block
from dlrm.preprocess.vocab import build_vocab, count_values, merge_counts

ALL = ("train", "test", "validation")


def settings(inp, out, days=(0, 1, 2), fl=3, **kw) -> Settings:
    kw.setdefault("max_bad_line_share", 0.05)  # the `days` fixture damages 13 lines a day: 1.1% to 1.9%
    return Settings(input=Path(inp), out=Path(out), days=list(days), frequency_threshold=fl, progress=False, **kw)


def load(out) -> dict:
    spec = FeatureSpec.load(out)
    rows = spec.check(ALL)
    data = {}
    for split in ALL:
        num = np.fromfile(spec.root / split / "numerical.bin", np.float16).reshape(-1, 13)
        cat = np.stack([np.fromfile(spec.root / split / f"cat_{j}.bin", spec.dtypes[f"cat_{j}.bin"])
                        for j in range(26)], 1) if rows[split] else np.zeros((0, 26), np.int64)
        lab = np.fromfile(spec.root / split / "label.bin", np.bool_)
        data[split] = (num, cat, lab)
    return data


def same_bytes(a: Path, b: Path) -> bool:
    names = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file() and p.name != "preprocess_report.json")
    other = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file() and p.name != "preprocess_report.json")
    return names == other and all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def line(label="1", nums=("1",) * 13, cats=("0000000a",) * 26) -> str:
    return "\t".join([label, *nums, *cats])


# -- parsing rules --------------------------------------------------------------------------------
def test_parse_values_missing_negative_uppercase_crlf_and_no_final_newline():
    nums = ("-5", "", "0", "007", "123456789012345678", "-1") + ("2",) * 7
    cats = ("", "ABCDEF12", "abcdef12", "ffffffff") + ("00000001",) * 22
    buf = (line("0", nums, cats) + "\r\n" + line("1")).encode()
    p = parse_block(buf, first_line=7)
    assert p.lines == 2 and p.rows == 2 and p.line.tolist() == [7, 8]
    assert p.label.tolist() == [False, True]
    assert p.numerical[0, :6].tolist() == [-5, 0, 0, 7, 123456789012345678, -1]
    assert p.num_present[0, :3].tolist() == [True, False, True]
    assert p.categorical[0, :4].tolist() == [0, 0xABCDEF12, 0xABCDEF12, 0xFFFFFFFF]
    assert p.cat_present[0, :2].tolist() == [False, True]


@pytest.mark.parametrize("text,kind,detail", [
    ("1\t2", "fields", "2 tab-separated fields"),
    ("", "fields", "1 tab-separated fields"),
    (line() + "\textra", "fields", "41 tab-separated fields"),
    (line(label="2"), "label", "label '2'"),
    (line(label=""), "label", "label ''"),
    (line(nums=("1.5",) + ("1",) * 12), "numerical", "num_0 '1.5'"),
    (line(nums=("1",) * 12 + ("-",)), "numerical", "num_12 '-'"),
    (line(nums=("1234567890123456789",) + ("1",) * 12), "numerical", "num_0 '1234567890123456789'"),
    (line(cats=("0000000a",) * 25 + ("abcdef1",)), "categorical", "cat_25 'abcdef1'"),
    (line(cats=("GGGGGGGG",) + ("0000000a",) * 25), "categorical", "cat_0 'GGGGGGGG'"),
    (line(cats=("abcdef123",) + ("0000000a",) * 25), "categorical", "cat_0 'abcdef123'"),
])
def test_each_kind_of_bad_line_is_caught_with_line_and_detail(text, kind, detail):
    buf = (line() + "\n" + text + "\n" + line() + "\n").encode()
    p = parse_block(buf, first_line=10)
    assert p.rows == 2 and p.line.tolist() == [10, 12]
    assert p.bad_counts[kind] == 1 and sum(p.bad_counts.values()) == 1
    (ex,) = p.examples
    assert (ex.kind, ex.line) == (kind, 11) and detail in ex.detail()


def test_label_and_numeric_problems_report_the_first_kind_in_rule_order():
    p = parse_block((line(label="x", nums=("y",) * 13, cats=("z",) * 26) + "\n").encode())
    assert p.examples[0].kind == "label"


# -- ids, thresholds, splits ---------------------------------------------------------------------------
def test_ids_by_descending_count_ties_by_hash_threshold_and_cardinality():
    cat = np.zeros((9, 26), np.uint32)
    cat[:, 0] = [0x30, 0x30, 0x30, 0x20, 0x20, 0x10, 0x10, 0x05, 0x30]
    present = np.ones_like(cat, bool)
    present[8, 0] = False  # a missing value is never counted
    keys, counts = merge_counts([count_values(cat[:5], present[:5]), count_values(cat[5:], present[5:])])
    thresholds = [2] + [100] * 25
    v = build_vocab(keys, counts, thresholds)
    ids = v.lookup(np.array([[0x30] + [0] * 25, [0x10] + [0] * 25, [0x20] + [0] * 25, [0x05] + [0] * 25,
                             [0x99] + [0] * 25], np.uint32), np.ones((5, 26), bool))
    # 0x30 seen 3 times -> 1; 0x10 and 0x20 twice each, tie -> the smaller hash first; 0x05 once < FL -> 0
    assert ids[:, 0].tolist() == [1, 2, 3, 0, 0]
    assert v.cardinalities[0] == 4 and v.cardinalities[1:] == [1] * 25  # feature 1: only 0s, below 100


def test_split_arithmetic_and_days():
    assert [first_half(n) for n in (0, 1, 2, 3, 1001)] == [0, 1, 1, 2, 501]
    assert parse_days("0-3,7") == [0, 1, 2, 3, 7]
    for bad in ("0", "3-1", "a", "1,1"):
        with pytest.raises(UserError):
            parse_days(bad)


# -- end to end on generated day files ------------------------------------------------------------------
@pytest.fixture(scope="session")
def days(tmp_path_factory) -> tuple[Path, dict]:
    inp = tmp_path_factory.mktemp("raw")
    bad = generate_days(inp, days=3, lines=[1200, 900, 701], seed=3, bad_lines=13, gz=(1,), crlf=(2,))
    return inp, bad


@pytest.fixture(scope="session")
def done(days, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("out") / "ds"
    s = settings(days[0], out, feature_thresholds={"cat_3": 1, "cat_7": 40})
    return out, local.run(s, workers=1, chunk_rows=200)


def test_output_matches_the_line_by_line_reference(days, done):
    out, report = done
    thresholds = [3] * 26
    thresholds[3], thresholds[7] = 1, 40
    ref, cards, bad = reference([days[0] / "day_0", days[0] / "day_1.gz", days[0] / "day_2"], thresholds)
    got = load(out)
    for split in ALL:
        np.testing.assert_array_equal(got[split][0].view(np.uint16), ref[split][0].view(np.uint16))
        np.testing.assert_array_equal(got[split][1], ref[split][1])
        np.testing.assert_array_equal(got[split][2], ref[split][2])
    assert report["cardinalities"] == {f"cat_{j}": c for j, c in enumerate(cards)}
    spec = FeatureSpec.load(out)
    assert spec.table_sizes == cards and spec.check(ALL) == report["rows"]
    assert {k: v["count"] for k, v in report["bad_lines"]["by_kind"].items() if v["count"]} == bad
    assert report["clamped_values"]["train"] > 0  # the generator writes -3 ... -5


def test_vocabulary_days_all_is_nvidias_and_train_is_leak_free(days, done, tmp_path):
    """Default: the test/validation day's values count too (NVIDIA's generate_models --days 0-23);
    vocabulary_days=train: only the training days' (values seen only in the test day get id 0)."""
    out, report = done
    assert report["vocabulary_days"] == [0, 1, 2] and report["train_days"] == [0, 1]
    thresholds = [3] * 26
    thresholds[3], thresholds[7] = 1, 40
    paths = [days[0] / "day_0", days[0] / "day_1.gz", days[0] / "day_2"]
    report_train = local.run(settings(days[0], tmp_path / "ds", vocabulary_days="train",
                                      feature_thresholds={"cat_3": 1, "cat_7": 40}), workers=1, chunk_rows=200)
    assert report_train["vocabulary_days"] == [0, 1]
    ref, cards, _ = reference(paths, thresholds, vocabulary_days="train")
    got = load(tmp_path / "ds")
    for split in ALL:
        for a, b in zip(got[split], ref[split]):
            np.testing.assert_array_equal(a, b)
    assert list(report_train["cardinalities"].values()) == cards
    # counting one more day can only add values over the threshold
    assert all(a >= b for a, b in zip(report["cardinalities"].values(), cards))
    assert report["cardinalities"] != report_train["cardinalities"]
    # a different vocabulary is a different dataset: not resumed into the other's folder
    with pytest.raises(DataError, match="already holds a different dataset"):
        local.run(settings(days[0], out, vocabulary_days="train", feature_thresholds={"cat_3": 1, "cat_7": 40}),
                  workers=1)


def test_bad_lines_are_counted_by_kind_and_split_with_file_and_line(days, done):
    inp, bad = days
    by_kind = done[1]["bad_lines"]["by_kind"]
    expected = {k: {s: 0 for s in SPLITS} for k in by_kind}
    for (d, ln), kind in bad.items():
        expected[kind]["train" if d < 2 else ("test" if ln <= first_half(701) else "validation")] += 1
    assert {k: v["by_split"] for k, v in by_kind.items()} == expected
    listed = [e.split(": ")[0] for v in by_kind.values() for e in v["first"]]
    names = {0: "day_0", 1: "day_1.gz", 2: "day_2"}
    first = []  # the report lists the first 10 of each kind, in input order
    for kind in by_kind:
        first += [f"{inp / names[d]}:{ln}" for (d, ln) in sorted(k for k, v in bad.items() if v == kind)][:10]
    assert listed == first
    rows = done[1]["rows"]
    assert rows["test"] + rows["validation"] == 701 - sum(1 for d, _ in bad if d == 2)


def test_blocks_and_workers_do_not_change_a_byte(days, done, tmp_path):
    out = tmp_path / "ds"
    local.run(settings(days[0], out, feature_thresholds={"cat_3": 1, "cat_7": 40}), workers=2, chunk_rows=37)
    assert same_bytes(out, done[0])


def test_strict_fails_at_the_first_bad_line(days, tmp_path):
    with pytest.raises(DataError, match=r"day_0:1: bad line: 39 tab-separated fields"):
        local.run(settings(days[0], tmp_path / "ds", strict=True), workers=1)
    assert not (tmp_path / "ds" / "feature_spec.yaml").exists()


def test_rerun_is_a_no_op_and_other_settings_need_overwrite(days, done):
    out, report = done
    again = local.run(settings(days[0], out, feature_thresholds={"cat_3": 1, "cat_7": 40}), workers=1)
    assert again == report
    with pytest.raises(DataError, match="already holds a different dataset"):
        local.run(settings(days[0], out, fl=5), workers=1)


class Killed(Exception):
    pass


def test_resume_after_interruption_continues_at_the_day_it_stopped(days, done, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    s = settings(days[0], out, feature_thresholds={"cat_3": 1, "cat_7": 40})
    real_day = local._pass2_day
    passes, fail = [], [True]

    def interrupted(f, *a, **k):
        passes.append(f.day)
        if f.day == 1 and fail[0]:
            raise Killed("the machine went away")
        return real_day(f, *a, **k)

    monkeypatch.setattr(local, "_pass2_day", interrupted)
    with pytest.raises(Killed):
        local.run(s, workers=1)
    assert not (out / "feature_spec.yaml").exists()  # never looks complete
    with pytest.raises(DataError):
        FeatureSpec.load(out)
    monkeypatch.setattr(local, "_pass1_day", lambda *a, **k: pytest.fail("pass 1 was finished; must not rerun"))
    passes.clear()
    fail[0] = False
    local.run(s, workers=1)
    assert passes == [1, 2]  # day 0 of pass 2 was done and kept
    assert same_bytes(out, done[0])


# -- inputs and folders ---------------------------------------------------------------------------------
def test_missing_day_and_corrupt_gzip_are_clear_errors(days, tmp_path):
    with pytest.raises(UserError, match="day 5 is missing"):
        local.run(settings(days[0], tmp_path / "a", days=(0, 5)), workers=1)
    inp = tmp_path / "in"
    shutil.copytree(days[0], inp)
    data = (inp / "day_1.gz").read_bytes()
    (inp / "day_1.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"day_1.gz: unreadable gzip"):
        local.run(settings(inp, tmp_path / "b"), workers=1)
    (inp / "day_1.gz").write_bytes(gzip.decompress(data))  # plain text under a .gz name
    with pytest.raises(DataError, match="not a gzip file"):
        local.run(settings(inp, tmp_path / "c"), workers=1)


def test_output_folder_with_foreign_files_is_refused(days, tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="notes.txt which preprocessing did not write"):
        local.run(settings(days[0], tmp_path / "ds", overwrite=True), workers=1)


def test_real_sample_matches_the_reference(shared_dir, tmp_path):
    lines = (shared_dir / "data" / "criteo_sample_100.tsv").read_bytes().splitlines(keepends=True)
    inp = tmp_path / "in"
    inp.mkdir()
    for d, (a, b) in enumerate([(0, 60), (60, 80), (80, 100)]):
        (inp / f"day_{d}").write_bytes(b"".join(lines[a:b]))
    report = local.run(settings(inp, tmp_path / "ds", fl=2), workers=1)
    ref, cards, bad = reference([inp / f"day_{d}" for d in range(3)], [2] * 26)
    assert bad == {} and report["rows"] == {"train": 80, "test": 10, "validation": 10}
    got = load(tmp_path / "ds")
    for split in ALL:
        for a, b in zip(got[split], ref[split]):
            np.testing.assert_array_equal(a, b)
    assert list(report["cardinalities"].values()) == cards and max(cards) > 1


def test_cli_prints_the_report_and_user_errors_exit_2(days, tmp_path, capsys):
    out = tmp_path / "ds"
    rc = dlrm_main(["preprocess", "--input", str(days[0]), "--out", str(out), "--days", "0-2",
                    "--frequency-threshold", "3", "--feature-threshold", "cat_3=1", "--workers", "1", "--no-progress",
                    "--max-bad-line-share", "0.05"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "preprocess_report.json").read_text())
    assert printed["feature_thresholds"] == {"cat_3": 1} and printed["vocabulary_days"] == [0, 1, 2]
    rc = dlrm_main(["preprocess", "--input", str(days[0]), "--out", str(tmp_path / "x"), "--vocabulary-days", "test"])
    assert rc == 2 and "--vocabulary-days 'test': expected one of all, train" in capsys.readouterr().err
    rc = dlrm_main(["preprocess", "--input", str(days[0]), "--out", str(tmp_path / "x"), "--feature-threshold", "cat_26=1"])
    assert rc == 2 and "no feature 'cat_26'" in capsys.readouterr().err
