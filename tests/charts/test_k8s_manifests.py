"""k8s/: training Jobs (kustomization), prometheus-adapter rules and the KEDA example, validated offline."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from services.metrics import METRIC_NAMES
from tests.charts.helpers import (
    CRD_KINDS,
    MODELS,
    ROOT,
    checkov_json,
    crd_problems,
    effective_values,
    kubernetes_validate,
    promql_metric_names,
    restricted_violations,
)

K8S = ROOT / "k8s"
# checkov findings accepted for k8s/ (see tests/charts/test_chart.py for the chart's list).
CHECKOV_SKIPS = [
    "CKV_K8S_43",  # image digest: the training image is pinned by its release tag
    "CKV_K8S_15",  # pull policy Always: IfNotPresent for an immutable tag
    "CKV_K8S_21",  # default namespace: these files carry none; `kubectl apply -n <ns>` chooses it
]


@pytest.fixture(scope="module")
def training(tools, tmp_path_factory):
    """`kubectl kustomize k8s/training` (offline) -> (file, docs)."""
    out = subprocess.run([str(tools.kubectl), "kustomize", str(K8S / "training")], capture_output=True, text=True,
                         env=tools.env, timeout=60, check=True).stdout
    path = tmp_path_factory.mktemp("k8s") / "training.yaml"
    path.write_text(out)
    return path, [d for d in yaml.safe_load_all(out) if d]


def test_training_manifests_validate_against_kubernetes(training):
    path, docs = training
    result = kubernetes_validate(path, "1.29", "1.37")
    lines = (result.stdout + result.stderr).splitlines()
    assert result.returncode == 0, "\n".join(lines)
    assert [line for line in lines if not line.startswith("INFO")] == []
    assert sum(" passed for resource " in line for line in lines) == 2 * len(docs)


def test_one_training_job_per_model_writes_to_the_shared_pvc(training):
    _, docs = training
    jobs = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in docs if d["kind"] == "Job"}
    assert set(jobs) == set(MODELS)
    [pvc] = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    claim = pvc["metadata"]["name"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    # the chart's pvc example reads the same claim at the same path
    pvc_values = effective_values("pvc")["modelSource"]["pvc"]
    assert pvc_values["claimName"] == claim
    for model, job in jobs.items():
        spec = job["spec"]["template"]["spec"]
        [c] = spec["containers"]
        assert c["command"] == ["python", "-m", "training"]
        # the cache under the /tmp emptyDir: the training image's root filesystem is read-only
        assert c["args"] == [model, "--out", pvc_values["mountPath"], "--cache", "/tmp/cache"]
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
        mount = next(m for m in c["volumeMounts"] if m["name"] == "models")
        assert mount["mountPath"] == pvc_values["mountPath"] and not mount.get("readOnly")
        assert {"name": "models", "persistentVolumeClaim": {"claimName": claim}} in spec["volumes"]
        assert spec["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] <= 2
        assert restricted_violations(spec) == [], model
        gpu = c["resources"].get("limits", {}).get("nvidia.com/gpu")
        if model in ("bird", "segment"):  # the vision models train on a GPU node
            assert gpu == 1 and spec["nodeSelector"] and spec["tolerations"]
        else:
            assert gpu is None and "nodeSelector" not in spec


def test_k8s_manifests_pass_checkov(tools, training):
    path, _ = training
    reports = checkov_json(tools, [path, K8S / "keda" / "scaledobject-bird.yaml"], "kubernetes", CHECKOV_SKIPS)
    failed = [f"{c['check_id']} {c['check_name']}: {c['resource']}" for r in reports for c in r["results"]["failed_checks"]]
    assert failed == []


def test_keda_example_is_a_valid_scaled_object_on_an_exported_metric():
    path = K8S / "keda" / "scaledobject-bird.yaml"
    [doc] = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert doc["kind"] in CRD_KINDS
    assert crd_problems(doc) == []
    result = kubernetes_validate(path, "1.29", "1.37")
    warns = [line for line in (result.stdout + result.stderr).splitlines() if not line.startswith("INFO")]
    assert result.returncode == 0 and all("Couldn't find schema for kind ScaledObject" in w for w in warns)
    queries = [t["metadata"]["query"] for t in doc["spec"]["triggers"] if t["type"] == "prometheus"]
    assert queries and all(promql_metric_names(q) <= set(METRIC_NAMES) for q in queries)


def test_prometheus_adapter_rules_serve_the_chart_metric():
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    rules = values["rules"]["custom"]
    served = set()
    for rule in rules:
        series = promql_metric_names(rule["seriesQuery"])
        assert series <= set(METRIC_NAMES), series
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]
        name = rule["name"]["as"]
        assert re.fullmatch(rule["name"]["matches"], next(iter(series)))
        served.add(name)
    assert served <= set(METRIC_NAMES)
    # every metric an example HPA asks for is served by a rule
    for config in ("default", "gpu", "custom-autoscaling", "all-models"):
        for m in MODELS:
            autoscaling = effective_values(config)["models"][m]["autoscaling"]
            if autoscaling["mode"] == "custom":
                assert autoscaling["metricName"] in served
