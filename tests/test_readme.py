"""The README's commands run as written (issue 28): every `$ ` line of its console blocks, in order, in a
fresh clone, in a clean environment (no venv activated, PATH without it), and what each prints matches
the README's sample output under it.

Kept cheap: the clone is `git clone --shared` plus the working tree's changes; its .venv is a link to the
venv running this test, and make may not set that up again (its markers are `make -o`'s old files);
`make demo` runs as `make demo-data` (the dataset the later examples use; the training is the demo's own
figures, compared by hand when the README's are updated); a block after `<!-- readme-test: skip (why) -->`
is not run (a server in the foreground, a multi-process run the suite has elsewhere).

Sample output: a `...` line stands for any number of lines; other lines match the command's lines one
for one, where `…` matches any text and times and speeds (`1.1s`, `2,000 samples/s`, `0:00:12`) any
number. A command whose sample shows an `error:` line must fail; every other must exit 0.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = re.compile(r"^<!-- readme-test: skip \((.+)\) -->$")
# Run instead of the README's command, and how many of its sample lines that prints.
INSTEAD = {"make demo": ("make demo-data", 1)}
NOT_HERE = {"make test": "the suite itself"}
MARK = "\x1ereadme-test rc="


def console_blocks(text: str) -> list[tuple[str | None, list[str]]]:
    """(skip reason or None, the block's lines) for each ```console block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == "```console":
            before = next((line.strip() for line in reversed(lines[:i]) if line.strip()), "")
            skip = SKIP.match(before)
            end = lines.index("```", i + 1)
            blocks.append((skip.group(1) if skip else None, lines[i + 1:end]))
            i = end
        i += 1
    return blocks


def commands(blocks) -> list[tuple[str, list[str]]]:
    """(command, its sample output lines) for every `$ ` line of the blocks that run."""
    out: list[tuple[str, list[str]]] = []
    for skip, lines in blocks:
        if skip:
            continue
        first = len(out)
        for line in lines:
            if line.startswith("$ "):
                out.append((line[2:], []))
            elif len(out) > first and line.strip():  # a block without `$ ` lines is a synopsis, not output
                out[-1][1].append(line)
    return out


def _norm(line: str) -> str:
    line = re.sub(r"\d+:\d\d:\d\d", "#", line)
    line = re.sub(r"\d[\d,]*(\.\d+)?(?= samples/s)", "#", line)
    line = re.sub(r"\d+(\.\d+)?%(?= of the run)", "#", line)  # checkpoints' share of the run's time: a time too
    return re.sub(r"\d[\d,]*(\.\d+)?(?=s\b)", "#", line).rstrip()


def _pattern(line: str) -> re.Pattern:
    return re.compile(".*".join(re.escape(part) for part in _norm(line).split("…")) + "$")


def matches(sample: list[str], printed: list[str]) -> str:
    """'' when the printed lines fit the sample, else what does not."""
    printed = [_norm(line) for line in printed]
    pos, gap = 0, False
    for want in sample:
        if want.strip() == "...":
            gap = True
            continue
        pattern = _pattern(want)
        found = next((i for i in range(pos, len(printed) if gap else min(pos + 1, len(printed))) if pattern.match(printed[i])), None)
        if found is None:
            return f"no printed line {'from' if gap else 'at'} line {pos + 1} matches {want!r}"
        pos, gap = found + 1, False
    return ""


def test_the_sample_matcher_can_fail():
    assert matches(["a 1.5s", "...", "c …"], ["a 2.0s", "b", "c d"]) == ""
    assert matches(["a", "c"], ["a", "b", "c"]) != ""  # no `...`: lines follow one another
    assert matches(["a 3 rows"], ["a 4 rows"]) != ""  # counts are not times


def _clone(tmp_path: Path) -> Path:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--shared", str(ROOT), str(clone)], check=True, capture_output=True)
    diff = subprocess.run(["git", "-C", str(ROOT), "diff", "HEAD", "--binary"], check=True, capture_output=True).stdout
    if diff:  # what is not committed yet
        subprocess.run(["git", "-C", str(clone), "apply", "--whitespace=nowarn"], input=diff, check=True, capture_output=True)
    untracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--others", "--exclude-standard", "-z"], check=True,
                               capture_output=True, text=True).stdout
    for name in filter(None, untracked.split("\0")):
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, clone / name)
    return clone


@pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None or shutil.which("make") is None,
                    reason="needs a git checkout, git and GNU make")
@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="needs to run in a venv (the clone's .venv links to it)")
def test_readme_console_commands_run_as_written(tmp_path):
    runs = []
    for command, sample in commands(console_blocks((ROOT / "README.md").read_text())):
        word = command.split("#")[0].strip()
        if word in NOT_HERE:
            continue
        instead, keep = INSTEAD.get(word, (command, len(sample)))
        runs.append((command, instead, sample[:keep]))
    assert {c.split("#")[0].strip() for c, _, _ in runs} >= set(INSTEAD), "a command this test replaces left the README"
    assert any(c.startswith("source .venv/bin/activate") for c, _, _ in runs)

    clone = _clone(tmp_path)
    (clone / ".venv").symlink_to(sys.prefix)
    bin_dir = tmp_path / "bin"  # make, without ever setting up the linked venv again
    bin_dir.mkdir()
    (bin_dir / "make").write_text(f"#!/bin/sh\nexec {shutil.which('make')} -o .venv/.installed -o .venv/.installed-dev \"$@\"\n")
    (bin_dir / "make").chmod(0o755)
    script = "".join(f"{{ {instead}\n}} 2>&1 </dev/null; printf '\\n{MARK}%s\\n' $?\n" for _, instead, _ in runs)
    env = {"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    proc = subprocess.run(["bash", "-c", script], cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    outputs = proc.stdout.split(MARK)
    assert len(outputs) == len(runs) + 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    problems = []
    for k, (command, _, sample) in enumerate(runs):
        rc = int(outputs[k + 1].split("\n", 1)[0])
        printed = outputs[k] if k == 0 else outputs[k].split("\n", 1)[1]  # after the previous command's rc
        lines = printed.rstrip("\n").splitlines()
        failing = any(line.startswith("error:") for line in sample)
        if (rc != 0) != failing:
            problems.append(f"$ {command}\n  exit {rc}, expected {'non-zero' if failing else 0}:\n  " + "\n  ".join(lines[-5:]))
        elif why := matches(sample, lines):
            problems.append(f"$ {command}\n  {why}; printed:\n  " + "\n  ".join(lines[:12]))
    assert not problems, "\n".join(problems)


def demo_differences(log: str, readme: str | None = None) -> str:
    """'' when a `make demo` log fits the README's sample of it (AUCs and losses exactly: the demo is
    seeded; times and speeds any), else what does not; the figures to compare are in its last line."""
    runs = commands(console_blocks(readme or (ROOT / "README.md").read_text()))
    sample = next(out for command, out in runs if command.split("#")[0].strip() == "make demo")
    lines = log.splitlines()
    # a fresh clone's log starts with setting up .venv (pip's lines): the demo's own output starts at its dataset
    start = next((i for i, line in enumerate(lines) if line.startswith("synth: ")), 0)
    return matches(sample, lines[start:])


if __name__ == "__main__":  # make demo 2>&1 | tee demo.log; .venv/bin/python tests/test_readme.py demo.log
    text = Path(sys.argv[1]).read_text()
    why = demo_differences(text)
    print(f"README: {why}" if why else "the log fits the README's make demo sample")
    print("this run:", next((line for line in reversed(text.splitlines()) if line.startswith("final AUC")), "no final line"))
    sys.exit(1 if why else 0)
