"""k8s/promote.py: promotion checks a bundle (sha256, signature, metrics gate, a real smoke
inference) before it prints the helm upgrade that pins it; a bad bundle changes nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.charts.helpers import ROOT

pytestmark = pytest.mark.slow
PROMOTE = ROOT / "k8s" / "promote.py"


def promote(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROMOTE), *args], capture_output=True, text=True, timeout=400, cwd=ROOT)


@pytest.fixture
def store(bundle_of, tmp_path):
    """An artifacts store holding a copy of the session's quick bird bundle: (root, version)."""
    src = bundle_of("bird")
    version = json.loads((src / "manifest.json").read_text())["version"]
    shutil.copytree(src, tmp_path / "bird" / version)
    return tmp_path, version


def test_a_good_bundle_passes_every_check_and_gets_pinned(store):
    root, version = store
    result = promote("bird", version, "--artifacts", str(root), "--max-metric", "error_rate=1", "--release", "r", "-n", "ns")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok  smoke inference: POST /predict_batch -> 200" in result.stdout
    assert f"--set models.bird.bundleVersion={version} --set models.bird.canary.enabled=false" in result.stdout
    canary = promote("bird", version, "--artifacts", str(root), "--no-smoke", "--canary")
    assert f"--set models.bird.canary.enabled=true --set models.bird.canary.bundleVersion={version}" in canary.stdout


def test_a_tampered_bundle_is_refused(store):
    root, version = store
    onnx = root / "bird" / version / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"\0")
    result = promote("bird", version, "--artifacts", str(root), "--no-smoke")
    assert result.returncode == 1 and "REFUSED" in result.stderr and "helm upgrade" not in result.stdout


def test_the_metrics_gate_and_the_signature_are_enforced(store, signing_keys):
    root, version = store
    result = promote("bird", version, "--artifacts", str(root), "--no-smoke", "--max-metric", "error_rate=0")
    assert result.returncode == 1 and "fails the gate <= 0" in result.stderr
    result = promote("bird", version, "--artifacts", str(root), "--no-smoke", "--min-metric", "accuracy=0.5")
    assert result.returncode == 1 and "accuracy = None" in result.stderr  # a gate on a metric the bundle lacks
    result = promote("bird", version, "--artifacts", str(root), "--no-smoke", "--trusted-key", str(signing_keys[1]))
    assert result.returncode == 1 and "not signed" in result.stderr
    from services.signing import sign

    sign(root / "bird" / version, signing_keys[0])
    result = promote("bird", version, "--artifacts", str(root), "--no-smoke", "--trusted-key", str(signing_keys[1]))
    assert result.returncode == 0, result.stderr
    assert "ok  signature" in result.stdout
