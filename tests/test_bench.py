"""Where `make bench-<model>` writes: an ignored folder by default, docs/benchmarks.md only when asked."""

import datetime as dt
import subprocess
from pathlib import Path

from tests.bench import RECORD_FILE, RESULTS_DIR, output_paths
from tests.conftest import ROOT

NOW = dt.datetime(2026, 12, 5, 9, 30, 0, tzinfo=dt.timezone.utc)


def ignored(path: Path) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT).returncode == 0


def test_a_plain_run_writes_only_to_an_ignored_results_file():
    (path,) = output_paths("bird", None, record=False, now=NOW)
    assert path == RESULTS_DIR / "bird-20261205-093000.md"
    assert ignored(path) and not ignored(RECORD_FILE)


def test_record_also_appends_to_the_tracked_benchmarks_page_once():
    assert output_paths("tabular", None, record=True, now=NOW) == [RESULTS_DIR / "tabular-20261205-093000.md", RECORD_FILE]
    assert output_paths("tabular", ROOT / "docs" / "benchmarks.md", record=True, now=NOW) == [RECORD_FILE]
    assert output_paths("tabular", Path("/tmp/b.md"), record=False, now=NOW) == [Path("/tmp/b.md")]


def make_bench_command(*args: str) -> str:
    out = subprocess.run(["make", "-n", "bench-collab", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return next(line for line in out.splitlines() if "tests.bench" in line)


def test_make_records_only_with_record_1():
    assert "--record" not in make_bench_command()
    assert "--record" not in make_bench_command("RECORD=0")
    assert "--record" in make_bench_command("RECORD=1")
