"""k8s/promote.py: promotion checks a bundle (sha256, signature, metrics gate, a real smoke
inference) before it prints the helm upgrade that pins it; a bad bundle changes nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

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


def job_script() -> tuple[str, dict]:
    """The promotion Job's container script and its literal env (k8s/promotion/job-promote.yaml)."""
    import yaml

    [job] = [d for d in yaml.safe_load_all((ROOT / "k8s" / "promotion" / "job-promote.yaml").read_text()) if d]
    [c] = job["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["/bin/sh", "-c"]
    return c["args"][0], {e["name"]: e["value"] for e in c["env"] if "value" in e}


def run_job_script(tmp_path, store_root, key: str, request: dict, helm) -> subprocess.CompletedProcess:
    """Run the Job's own script the way its pod would, with its mounts mapped to folders here:
    promote.py alone in a folder (the ConfigMap, away from the repository: services/ comes from
    PYTHONPATH as in the image), the chart packaged by helm, a helm that records what it is asked."""
    import os

    script, env = job_script()
    promote_dir, helm_dir = tmp_path / "promote", tmp_path / "helm"
    promote_dir.mkdir()
    helm_dir.mkdir()
    shutil.copy(PROMOTE, promote_dir / "promote.py")
    helm("package", str(ROOT / "charts" / "roost"), "-d", str(tmp_path))
    [chart] = tmp_path.glob("roost-*.tgz")
    chart.rename(promote_dir / "roost-chart.tgz")
    fake = helm_dir / "helm"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$HELM_ARGS_LOG"\n')
    fake.chmod(0o755)
    mounts = {"/opt/promote": str(promote_dir), "/opt/helm": str(helm_dir), "/models": str(store_root)}
    for path, here in mounts.items():
        script = script.replace(path, here)
    assert env["PYTHONPATH"] == "/opt/roost" and env["ROOST_TRUSTED_KEY"].startswith("/etc/roost/trusted-key/")
    run_env = {**os.environ, **request, "NAMESPACE": "roost", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path),
               "ROOST_TRUSTED_KEY": key, "HELM_ARGS_LOG": str(tmp_path / "helm-args"),
               "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(["/bin/sh", "-c", script], env=run_env, capture_output=True, text=True, timeout=400, cwd=tmp_path)


def test_the_promotion_jobs_script_checks_then_runs_helm(store, signing_keys, tmp_path, helm):
    """k8s/promotion/job-promote.yaml's command, run as its pod would: every check (signature, gate,
    a real smoke inference with the request from the packaged chart), then helm upgrade --reuse-values."""
    from services.signing import sign

    root, version = store
    sign(root / "bird" / version, signing_keys[0])
    request = {"MODEL": "bird", "VERSION": version, "RELEASE": "roost",
               "PROMOTE_ARGS": "--max-metric error_rate=1 --canary"}
    result = run_job_script(tmp_path, root, str(signing_keys[1]), request, helm)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok  signature" in result.stdout and "ok  smoke inference: POST /predict_batch -> 200" in result.stdout
    args = (tmp_path / "helm-args").read_text().split()
    assert args == ["upgrade", "roost", str(tmp_path / "promote" / "roost-chart.tgz"), "--namespace", "roost",
                    "--reuse-values", "--wait", "--set", "models.bird.canary.enabled=true",
                    "--set", f"models.bird.canary.bundleVersion={version}"]


def test_the_promotion_jobs_script_refuses_an_unsigned_bundle_and_runs_no_helm(store, signing_keys, tmp_path, helm):
    root, version = store
    request = {"MODEL": "bird", "VERSION": version, "PROMOTE_ARGS": "--no-smoke"}  # RELEASE unset: roost
    result = run_job_script(tmp_path, root, str(signing_keys[1]), request, helm)
    assert result.returncode == 1 and "REFUSED" in result.stderr and "not signed" in result.stderr
    assert not (tmp_path / "helm-args").exists()
