"""k8s/: training Jobs (kustomization), prometheus-adapter rules and the KEDA example, validated offline."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from services.metrics import METRIC_NAMES
from tests.charts.helpers import (
    CRD_KINDS,
    EXAMPLES,
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


def kustomized(tools, tmp_path_factory, folder: str):
    """`kubectl kustomize k8s/<folder>` (offline) -> (file, docs)."""
    out = subprocess.run([str(tools.kubectl), "kustomize", str(K8S / folder)], capture_output=True, text=True,
                         env=tools.env, timeout=60, check=True).stdout
    path = tmp_path_factory.mktemp("k8s") / f"{folder}.yaml"
    path.write_text(out)
    return path, [d for d in yaml.safe_load_all(out) if d]


def assert_valid_kubernetes(path, docs):
    result = kubernetes_validate(path, "1.29", "1.37")
    lines = (result.stdout + result.stderr).splitlines()
    assert result.returncode == 0, "\n".join(lines)
    assert [line for line in lines if not line.startswith("INFO")] == []
    assert sum(" passed for resource " in line for line in lines) == 2 * len(docs)


@pytest.fixture(scope="module")
def training(tools, tmp_path_factory):
    return kustomized(tools, tmp_path_factory, "training")


def test_training_manifests_validate_against_kubernetes(training):
    path, docs = training
    assert_valid_kubernetes(path, docs)


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


# --- k8s/promotion: promotion as a Job -------------------------------------------------------------
# The API group and resource of every kind the chart renders: what `helm upgrade` must be allowed to change.
CHART_KIND_RESOURCES = {
    "ConfigMap": ("", "configmaps"), "Service": ("", "services"), "ServiceAccount": ("", "serviceaccounts"),
    "Deployment": ("apps", "deployments"), "HorizontalPodAutoscaler": ("autoscaling", "horizontalpodautoscalers"),
    "PodDisruptionBudget": ("policy", "poddisruptionbudgets"), "NetworkPolicy": ("networking.k8s.io", "networkpolicies"),
    "ServiceMonitor": ("monitoring.coreos.com", "servicemonitors"), "PrometheusRule": ("monitoring.coreos.com", "prometheusrules"),
    "ScaledObject": ("keda.sh", "scaledobjects"),
}
CHANGE = {"get", "list", "watch", "create", "update", "patch", "delete"}


@pytest.fixture(scope="module")
def promotion(tools, tmp_path_factory):
    return kustomized(tools, tmp_path_factory, "promotion")


def test_promotion_manifests_validate_against_kubernetes(promotion):
    path, docs = promotion
    assert sorted(d["kind"] for d in docs) == ["Job", "NetworkPolicy", "Role", "RoleBinding", "ServiceAccount"]
    assert_valid_kubernetes(path, docs)


def test_promotion_manifests_pass_checkov(tools, promotion):
    path, _ = promotion
    reports = checkov_json(tools, [path], "kubernetes", CHECKOV_SKIPS)
    failed = [f"{c['check_id']} {c['check_name']}: {c['resource']}" for r in reports for c in r["results"]["failed_checks"]]
    assert failed == []


def test_the_promotion_role_is_namespaced_and_covers_exactly_what_the_chart_renders(promotion, render_config, render):
    _, docs = promotion
    by_kind = {d["kind"]: d for d in docs}
    sa, role, binding, job = by_kind["ServiceAccount"], by_kind["Role"], by_kind["RoleBinding"], by_kind["Job"]
    ns = job["metadata"]["namespace"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": ns}]
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    allowed: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], rule  # no wildcards
        assert "resourceNames" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                allowed.setdefault((group, resource), set()).update(rule["verbs"])
    # every kind any example renders (canary, KEDA, alerts, network policy included) can be changed by helm
    kinds = set()
    for args in (("-f", str(EXAMPLES["all-models"]), "--set", "alerts.enabled=true,networkPolicy.enabled=true"),
                 ("-f", str(EXAMPLES["keda"]), "--set", "metrics.serviceMonitor.enabled=true"),
                 ("-f", str(EXAMPLES["pvc"]), "--set", "models.bird.canary.enabled=true,models.bird.canary.bundleVersion=v2")):
        kinds |= {d["kind"] for d in render(*args).docs if not (d["metadata"].get("annotations") or {}).get("helm.sh/hook")}
    assert kinds <= set(CHART_KIND_RESOURCES), kinds - set(CHART_KIND_RESOURCES)
    for kind in kinds:
        assert allowed.get(CHART_KIND_RESOURCES[kind], set()) >= CHANGE, kind
    # helm's release Secrets; --wait reads pods and replicasets; and nothing more
    assert allowed[("", "secrets")] == {"get", "list", "create", "update", "patch", "delete"}
    assert allowed[("", "pods")] == allowed[("apps", "replicasets")] == {"get", "list", "watch"}
    assert set(allowed) == {CHART_KIND_RESOURCES[k] for k in CHART_KIND_RESOURCES} | {("", "secrets"), ("", "pods"), ("apps", "replicasets")}
    assert not any(g == "rbac.authorization.k8s.io" or r in {"pods/exec", "nodes", "persistentvolumes"} for g, r in allowed)


def test_the_promotion_job_runs_promote_py_on_the_read_only_store_with_the_trusted_key(promotion, render_config):
    _, docs = promotion
    [job] = [d for d in docs if d["kind"] == "Job"]
    spec = job["spec"]["template"]["spec"]
    assert restricted_violations(spec) == []
    assert spec["securityContext"]["runAsUser"] == 10001 and spec["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] == 0 and spec["automountServiceAccountToken"] is True
    [c] = spec["containers"]
    [init] = spec["initContainers"]
    pvc_values = effective_values("pvc")["modelSource"]["pvc"]
    # the serving image (code, bentoml, onnxruntime), promote.py with --apply on the PVC's mount path
    [bird] = [d for d in render_config("default").kind("Deployment") if d["metadata"]["name"] == "roost-bird"]
    assert c["image"] == bird["spec"]["template"]["spec"]["containers"][0]["image"]  # the chart's own serving image
    script = c["args"][0]
    assert script.startswith("exec python /opt/promote/promote.py \"$MODEL\" \"$VERSION\"")
    assert f"--artifacts {pvc_values['mountPath']}" in script and script.rstrip().endswith("--apply")
    assert "--helm /opt/helm/helm" in script and "--chart /opt/promote/roost-chart.tgz" in script
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert mounts["models"]["mountPath"] == pvc_values["mountPath"] and mounts["models"]["readOnly"] is True
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": pvc_values["claimName"], "readOnly": True}
    env = {e["name"]: e for e in c["env"]}
    key = volumes["trusted-key"]["secret"]
    assert env["ROOST_TRUSTED_KEY"]["value"] == f"{mounts['trusted-key']['mountPath']}/{key['items'][0]['path']}"
    assert key["items"][0]["key"] == effective_values("default")["bundleSigning"]["key"]
    assert mounts["trusted-key"]["readOnly"] is True and mounts["promote"]["readOnly"] is True
    assert env["NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    for name in ("MODEL", "VERSION"):
        assert env[name]["valueFrom"]["configMapKeyRef"]["name"] == "roost-promote-request"
    # the init container hands over a helm binary through the shared emptyDir
    assert init["command"] == ["cp", "/usr/bin/helm", "/opt/helm/helm"]
    assert {"name": "helm", "mountPath": "/opt/helm"} in init["volumeMounts"] and "emptyDir" in volumes["helm"]
