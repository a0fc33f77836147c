"""Where data comes from, in words a manifest can carry to another machine."""

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from training.data import SHARED_DATASETS, named


def test_data_paths_are_named_relative_to_a_root():
    assert named(SHARED_DATASETS / "bird_or_forest") == "shared datasets: bird_or_forest"
    assert named(ROOT / "data" / "birds") == "project: data/birds"
    assert named(Path.home() / "photos" / "birds") == "home: photos/birds"
    assert named("/somewhere/else/birds") == "elsewhere: birds"


def test_roost_shared_datasets_moves_the_shared_folder(tmp_path):
    code = "from training.data import SHARED_DATASETS, named; print(SHARED_DATASETS); print(named(SHARED_DATASETS / 'x'))"
    env = {**os.environ, "ROOST_SHARED_DATASETS": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [str(tmp_path), "shared datasets: x"]
