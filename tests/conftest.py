import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "datasets"
BIRD_EXAMPLES = SHARED / "bird_or_forest_examples"

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("MPLBACKEND", "Agg")


def train_quick(model: str, out: Path, *extra: str) -> Path:
    """Run the real training CLI in quick mode; returns the bundle folder it printed."""
    cache = ROOT / ".cache"  # converted weights and fastai data are reusable across runs
    result = subprocess.run(
        [sys.executable, "-m", "training", model, "--quick", "--out", str(out), "--cache", str(cache), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    if result.returncode != 0:
        raise RuntimeError(f"training {model} failed:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def bird_bundle(tmp_path_factory) -> Path:
    """One quick bird model per test session, trained on a real subset of the shared photos."""
    return train_quick("bird", tmp_path_factory.mktemp("artifacts"))
