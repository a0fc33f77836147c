"""charts/roost rendered in every example configuration, validated offline, and held to its promises."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from services.metrics import METRIC_NAMES
from tests.charts.helpers import (
    BENTOML_METRICS,
    CHART,
    CONFIGS,
    CRD_KINDS,
    DCGM_METRICS,
    EXAMPLES,
    MODELS,
    NAMESPACE,
    base_metric,
    checkov_json,
    config_args,
    crd_problems,
    dashboard_panels,
    effective_values,
    kubernetes_validate,
    promql_metric_names,
    restricted_violations,
)

STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)

# checkov findings accepted on purpose; everything else fails the build.
CHECKOV_SKIPS = [
    "CKV_K8S_43",  # "Image should use digest": images are pinned by immutable release tags
                   # (appVersion); set models.<m>.image.tag to "<tag>@sha256:..." to pin digests.
    "CKV_K8S_15",  # "Image pull policy should be Always": IfNotPresent is right for immutable tags
                   # and avoids a registry round trip on every (scale-up) pod start.
    "CKV_K8S_11",  # "CPU limits should be set": CPU limits throttle (CFS) inference latency; pods
                   # request CPU (the HPA needs it) and set memory limits.
]
# Only where networkPolicy.enabled is false (the default: allowed callers depend on the cluster).
CHECKOV_SKIP_WITHOUT_NETPOL = "CKV2_K8S_6"  # "Minimize the admission of pods which lack a NetworkPolicy"


def models_enabled(values: dict) -> list[str]:
    return [m for m in MODELS if values["models"][m]["enabled"]]


# --- lint, Kubernetes schemas, CRD schemas, checkov ---------------------------------------------------

@pytest.mark.parametrize("config", CONFIGS)
def test_helm_lint_strict(helm, config):
    result = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, *config_args(config), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


@pytest.mark.parametrize("config", CONFIGS)
def test_manifests_validate_against_kubernetes_1_29_and_1_37(rendered_files, render_config, config):
    rendered = render_config(config)
    result = kubernetes_validate(rendered_files[config], "1.29", "1.37")
    lines = result.stdout.splitlines() + result.stderr.splitlines()
    assert result.returncode == 0, "\n".join(lines)
    crds = [d for d in rendered.docs if d["kind"] in CRD_KINDS]
    expected_warn = re.compile(r"^WARN .* Couldn't find schema for kind (%s) with api version \S+ for kubernetes version 1\.(29|37)$" % "|".join(CRD_KINDS))
    unexpected = [line for line in lines if not line.startswith("INFO") and not expected_warn.match(line)]
    assert not unexpected, "\n".join(unexpected)
    # every non-CRD object was validated against both versions
    passed = [line for line in lines if line.startswith("INFO") and " passed for resource " in line]
    assert len(passed) == 2 * (len(rendered.docs) - len(crds)), "\n".join(lines)
    assert sum(1 for line in lines if line.startswith("WARN")) == 2 * len(crds)


def test_kubernetes_validate_is_strict_here(tmp_path):
    """Guard the guard: an unknown field fails kubernetes-validate --strict."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {portz: []}\n")
    result = kubernetes_validate(bad, "1.29")
    assert result.returncode != 0 and "portz" in result.stdout + result.stderr


@pytest.mark.parametrize("config", CONFIGS)
def test_crd_objects_match_their_schemas(render_config, config):
    crds = [d for d in render_config(config).docs if d["kind"] in CRD_KINDS]
    values = effective_values(config)
    expect_keda = any(values["models"][m]["autoscaling"]["mode"] == "keda" and values["models"][m]["autoscaling"]["enabled"] for m in models_enabled(values))
    assert any(d["kind"] == "ScaledObject" for d in crds) == expect_keda
    for doc in crds:
        assert crd_problems(doc) == [], doc["metadata"]["name"]


def test_crd_check_catches_unknown_fields(render):
    doc = render("--set", "metrics.serviceMonitor.enabled=true").kind("ServiceMonitor")[0]
    doc = json.loads(json.dumps(doc))
    doc["spec"]["endpoints"][0]["intervall"] = "15s"
    assert any("intervall" in p for p in crd_problems(doc))


@pytest.fixture(scope="session")
def checkov_reports(tools, rendered_files):
    """One checkov run over all configurations (a run costs seconds)."""
    with_netpol = [c for c in CONFIGS if "kind: NetworkPolicy" in rendered_files[c].read_text()]
    without = [c for c in CONFIGS if c not in with_netpol]
    results = {}
    for configs, skips in ((with_netpol, CHECKOV_SKIPS), (without, [*CHECKOV_SKIPS, CHECKOV_SKIP_WITHOUT_NETPOL])):
        if not configs:
            continue
        for report in checkov_json(tools, [rendered_files[c] for c in configs], "kubernetes", skips):
            for check in report["results"]["failed_checks"]:
                config = next(c for c in configs if Path(check["file_path"]).name == f"{c}.yaml")
                results.setdefault(config, []).append(f"{check['check_id']} {check['check_name']}: {check['resource']}")
            for config in configs:
                results.setdefault(config, [])
    return results


@pytest.mark.parametrize("config", CONFIGS)
def test_checkov_finds_nothing_beyond_the_skip_list(checkov_reports, config):
    assert checkov_reports[config] == []


# --- what the chart promises ------------------------------------------------------------------------

@pytest.mark.parametrize("config", CONFIGS)
def test_each_enabled_model_gets_its_objects_and_disabled_ones_nothing(render_config, config):
    rendered = render_config(config)
    values = effective_values(config)
    enabled = models_enabled(values)
    for model in MODELS:
        kinds = sorted(d["kind"] for d in rendered.of_model(model))
        if model not in enabled:
            assert kinds == [], f"{model} is disabled yet renders {kinds}"
            assert model not in rendered.text.replace("roost-ml/roost-", ""), f"{model} mentioned while disabled"
            continue
        autoscaler = "ScaledObject" if values["models"][model]["autoscaling"]["mode"] == "keda" else "HorizontalPodAutoscaler"
        for kind in ("Service", "ServiceAccount", "PodDisruptionBudget", autoscaler):
            assert kinds.count(kind) == 1, f"{model}: {kinds}"
        canary = (values["models"][model].get("canary") or {}).get("enabled", False)
        assert kinds.count("Deployment") == 1 + canary, f"{model}: {kinds}"
    for doc in rendered.docs:
        labels = doc["metadata"].get("labels", {})
        missing = [k for k in STANDARD_LABELS if k not in labels]
        assert not missing, f"{doc['kind']}/{doc['metadata']['name']} lacks {missing}"
        assert doc["metadata"]["namespace"] == NAMESPACE


@pytest.mark.parametrize("model", MODELS)
def test_a_single_enabled_model_renders_only_itself(render, model):
    args = []
    for m in MODELS:
        args += ["--set", f"models.{m}.enabled={'true' if m == model else 'false'}"]
    rendered = render(*args)
    components = {d["metadata"]["labels"].get("app.kubernetes.io/component") for d in rendered.docs if d["kind"] != "ConfigMap"}
    assert components == {model}
    [dep] = rendered.kind("Deployment")
    assert dep["spec"]["template"]["spec"]["containers"][0]["args"][0] == f"services.{model}:{model.capitalize()}"


def test_no_model_enabled_renders_nothing(render):
    args = []
    for m in MODELS:
        args += ["--set", f"models.{m}.enabled=false"]
    assert render(*args).docs == []


@pytest.mark.parametrize("config", CONFIGS)
def test_gpu_requests_appear_exactly_when_asked(render_config, config):
    values = effective_values(config)
    for dep in render_config(config).kind("Deployment"):
        model = dep["metadata"]["labels"]["app.kubernetes.io/component"]
        gpu = values["models"][model]["gpu"]
        spec = dep["spec"]["template"]["spec"]
        [container] = spec["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        resources = container["resources"]
        if gpu:
            assert resources["limits"]["nvidia.com/gpu"] == gpu
            assert resources["requests"]["nvidia.com/gpu"] == gpu
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
            for k, v in values["gpuNodes"]["nodeSelector"].items():
                assert spec["nodeSelector"][k] == v
            assert env["ROOST_DEVICE"] == "cuda"
            assert container["image"].endswith("-gpu")
        else:
            assert "nvidia.com/gpu" not in json.dumps(spec), f"{model} has gpu: 0"
            assert env["ROOST_DEVICE"] in ("auto", "cpu")
            assert not container["image"].endswith("-gpu")


@pytest.mark.parametrize("count", [1, 2])
def test_gpu_count_and_resource_name_come_from_values(render, count):
    rendered = render("--set", f"models.segment.enabled=true,models.segment.gpu={count}",
                      "--set", "gpuNodes.resourceName=amd.com/gpu,gpuNodes.nodeSelector.accelerator=mi300")
    deps = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in rendered.kind("Deployment")}
    seg = deps["segment"]["spec"]["template"]["spec"]
    assert seg["containers"][0]["resources"]["limits"]["amd.com/gpu"] == count
    assert seg["nodeSelector"] == {"accelerator": "mi300"}
    assert "amd.com/gpu" not in json.dumps(deps["bird"])


@pytest.mark.parametrize("config", CONFIGS)
def test_every_container_meets_pod_security_restricted(render_config, config):
    pods = render_config(config).pod_specs()
    assert pods
    for name, spec in pods:
        assert restricted_violations(spec) == [], name
        assert spec["automountServiceAccountToken"] is False, name


def test_the_restricted_check_catches_violations():
    spec = {"containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": True}}], "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}
    problems = restricted_violations(spec)
    assert any("allowPrivilegeEscalation" in p for p in problems)
    assert any("hostPath" in p for p in problems)
    assert any("runAsNonRoot" in p for p in problems)


@pytest.mark.parametrize("config", CONFIGS)
def test_autoscaling_metric_is_one_the_service_exports(render_config, config):
    rendered = render_config(config)
    for hpa in rendered.kind("HorizontalPodAutoscaler"):
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "Pods":
                assert metric["pods"]["metric"]["name"] in METRIC_NAMES
            else:
                assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    for so in rendered.kind("ScaledObject"):
        for trigger in so["spec"]["triggers"]:
            names = promql_metric_names(trigger["metadata"]["query"])
            assert names and names <= set(METRIC_NAMES), names


def test_custom_autoscaling_renders_a_pods_metric_hpa(render_config):
    rendered = render_config("custom-autoscaling")
    hpas = {h["metadata"]["labels"]["app.kubernetes.io/component"]: h for h in rendered.kind("HorizontalPodAutoscaler")}
    metric = hpas["bird"]["spec"]["metrics"][0]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "roost_requests_in_flight"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "16"}
    # the Deployment leaves replicas to the autoscaler
    assert all("replicas" not in d["spec"] for d in rendered.kind("Deployment"))


def test_keda_mode_renders_a_scaled_object_and_no_hpa(render_config):
    rendered = render_config("keda")
    assert rendered.kind("HorizontalPodAutoscaler") == []
    sos = {s["metadata"]["labels"]["app.kubernetes.io/component"]: s for s in rendered.kind("ScaledObject")}
    assert set(sos) == {"bird", "collab"}
    trigger = sos["bird"]["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    # scoped to this release's pods (the ServiceMonitor labels each series with its Service)
    assert trigger["metadata"]["query"] == f'sum(roost_requests_in_flight{{namespace="{NAMESPACE}",service="roost-bird",model="bird"}})'
    assert sos["bird"]["spec"]["scaleTargetRef"]["name"] == "roost-bird"
    # Prometheus down: hold maxReplicas instead of falling to the minimum
    assert sos["bird"]["spec"]["fallback"] == {"failureThreshold": 3, "replicas": 8}
    assert all("replicas" not in d["spec"] for d in rendered.kind("Deployment"))


def test_autoscaling_off_sets_replicas(render):
    rendered = render("--set", "models.bird.autoscaling.enabled=false,models.bird.replicas=3")
    assert rendered.kind("HorizontalPodAutoscaler") == []
    assert rendered.kind("Deployment")[0]["spec"]["replicas"] == 3


def test_service_names_its_http_and_grpc_ports(render_config):
    for svc in render_config("all-models").kind("Service"):
        ports = {p["name"]: p for p in svc["spec"]["ports"]}
        assert ports["http"]["port"] == 3000 and ports["http"]["targetPort"] == "http"
        assert ports["grpc"]["port"] == 8001 and ports["grpc"]["targetPort"] == "grpc"
    for dep in render_config("all-models").kind("Deployment"):
        env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["ROOST_GRPC_PORT"] == "8001"
        assert env["BENTOML_HOME"] == "/tmp/bentoml" and env["BENTOML_DO_NOT_TRACK"] == "True"


def test_service_accounts_mount_no_token(render_config):
    sas = render_config("all-models").kind("ServiceAccount")
    assert len(sas) == 4 and all(sa["automountServiceAccountToken"] is False for sa in sas)


def test_probes_and_graceful_shutdown(render_config):
    values = effective_values("default")
    [dep] = render_config("default").kind("Deployment")
    spec = dep["spec"]["template"]["spec"]
    [c] = spec["containers"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 120  # model loading
    sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert spec["terminationGracePeriodSeconds"] > sleep + values["models"]["bird"]["timeoutSeconds"]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]


def test_service_monitor_when_the_operator_api_is_there_else_scrape_annotations(render):
    plain = render()
    assert plain.kind("ServiceMonitor") == []
    annotations = plain.kind("Deployment")[0]["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": "3000", "prometheus.io/path": "/metrics"}

    detected = render("--api-versions", "monitoring.coreos.com/v1/ServiceMonitor")
    [sm] = detected.kind("ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "http" and sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert "prometheus.io/scrape" not in (detected.kind("Deployment")[0]["spec"]["template"]["metadata"].get("annotations") or {})

    assert render("--api-versions", "monitoring.coreos.com/v1/ServiceMonitor", "--set", "metrics.serviceMonitor.enabled=false").kind("ServiceMonitor") == []
    assert len(render("--set", "metrics.serviceMonitor.enabled=true").kind("ServiceMonitor")) == 1


def test_pvc_source_mounts_the_claim_read_only(render_config):
    for dep in render_config("pvc").kind("Deployment"):
        spec = dep["spec"]["template"]["spec"]
        [c] = spec["containers"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["ROOST_ARTIFACTS"] == "/models"
        assert {"name": "models", "mountPath": "/models", "readOnly": True} in c["volumeMounts"]
        assert {"name": "models", "persistentVolumeClaim": {"claimName": "roost-artifacts", "readOnly": True}} in spec["volumes"]
    for dep in render_config("default").kind("Deployment"):
        assert "persistentVolumeClaim" not in json.dumps(dep)


def test_bundle_version_pins_roost_bundle(render):
    dep = render("--set", "modelSource.type=pvc,models.bird.bundleVersion=20261101-120000").kind("Deployment")[0]
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ROOST_BUNDLE"] == "/models/bird/20261101-120000"


def container_env(dep: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_runtime_and_knobs_reach_the_environment(render):
    dep = render("--set", "bundleSigning.trustedKeySecret=roost-bundle-key,"
                 "models.bird.runtime=fastai,models.bird.batching.maxBatchSize=8,models.bird.maxQueue=5,"
                 "models.bird.batching.maxLatencyMs=0,models.bird.resources.requests.cpu=2500m",
                 "--set-json", "models.bird.timeoutSeconds=2.5").kind("Deployment")[0]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    env = container_env(dep)
    assert env["ROOST_RUNTIME"] == "fastai" and c["image"].endswith(":0.1.0-fastai")
    assert env["ROOST_MAX_BATCH_SIZE"] == "8" and env["ROOST_MAX_QUEUE"] == "5"
    assert env["ROOST_MAX_LATENCY_MS"] == "0" and env["ROOST_TIMEOUT_S"] == "2.5"
    assert env["ROOST_WORKERS"] == "1"
    assert env["ROOST_ORT_THREADS"] == "3"  # 2500m rounded up
    assert "ROOST_MAX_CONCURRENCY" not in env  # gone from the service: nothing reads it


@pytest.mark.parametrize("config", CONFIGS)
def test_every_model_knob_reaches_the_environment(render_config, config):
    values = effective_values(config)
    for dep in render_config(config).kind("Deployment"):
        m = values["models"][dep["metadata"]["labels"]["app.kubernetes.io/component"]]
        env = container_env(dep)
        assert env["ROOST_MAX_BATCH_SIZE"] == str(m["batching"]["maxBatchSize"])
        assert env["ROOST_MAX_LATENCY_MS"] == str(m["batching"]["maxLatencyMs"])
        assert env["ROOST_MAX_QUEUE"] == str(m["maxQueue"])
        assert env["ROOST_TIMEOUT_S"] == str(m["timeoutSeconds"])
        assert env["ROOST_WORKERS"] == str(m.get("workers", 1))


@pytest.mark.parametrize(("workers", "cpu", "threads"), [(1, "2", "2"), (2, "2", "1"), (2, "2500m", "2"), (3, "500m", "1")])
def test_workers_reach_the_environment_and_share_the_cpu_request(render, workers, cpu, threads):
    dep = render("--set", f"models.bird.workers={workers}", "--set-string", f"models.bird.resources.requests.cpu={cpu}").kind("Deployment")[0]
    env = container_env(dep)
    assert env["ROOST_WORKERS"] == str(workers)
    assert env["ROOST_ORT_THREADS"] == threads  # per worker: the CPU request / workers, rounded up
    explicit = render("--set", f"models.bird.workers={workers},models.bird.ortThreads=7").kind("Deployment")[0]
    assert container_env(explicit)["ROOST_ORT_THREADS"] == "7"


def test_a_trusted_key_secret_is_mounted_and_named_in_roost_trusted_key(render):
    dep = render("--set", "bundleSigning.trustedKeySecret=roost-bundle-key").kind("Deployment")[0]
    pod = dep["spec"]["template"]["spec"]
    assert container_env(dep)["ROOST_TRUSTED_KEY"] == "/etc/roost/trusted-key/roost-signing.pub"
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "trusted-key")
    assert mount["mountPath"] == "/etc/roost/trusted-key" and mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == "trusted-key")
    assert volume["secret"]["secretName"] == "roost-bundle-key"
    unsigned = render().kind("Deployment")[0]
    assert "ROOST_TRUSTED_KEY" not in container_env(unsigned)


def test_the_fastai_runtime_without_a_trusted_key_does_not_render(helm):
    result = helm("template", "roost", str(CHART), "--set", "models.bird.runtime=fastai", check=False)
    assert result.returncode != 0 and "bundleSigning.trustedKeySecret" in result.stderr


@pytest.mark.parametrize("config", CONFIGS)
def test_http_and_grpc_listen_on_the_pod_ip(render_config, config):
    """Both servers bind 0.0.0.0 (the service's gRPC default would be loopback-only outside a pod)."""
    for dep in render_config(config).kind("Deployment"):
        [c] = dep["spec"]["template"]["spec"]["containers"]
        assert "--host=0.0.0.0" in c["args"]
        assert container_env(dep)["ROOST_GRPC_HOST"] == "0.0.0.0"


@pytest.mark.parametrize("config", CONFIGS)
def test_grace_period_outlasts_the_preStop_sleep_plus_each_models_deadline(render_config, config):
    values = effective_values(config)
    for dep in render_config(config).kind("Deployment"):
        m = values["models"][dep["metadata"]["labels"]["app.kubernetes.io/component"]]
        spec = dep["spec"]["template"]["spec"]
        sleep = int(spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][1])
        assert spec["terminationGracePeriodSeconds"] > sleep + m["timeoutSeconds"]
        assert spec["terminationGracePeriodSeconds"] >= values["shutdown"]["terminationGracePeriodSeconds"]


def test_network_policy_is_optional(render_config):
    assert render_config("default").kind("NetworkPolicy") == []
    policies = render_config("all-models").kind("NetworkPolicy")
    assert len(policies) == 4
    for policy in policies:
        ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
        assert ports == {"http", "grpc"}


def test_dashboard_charts_only_metrics_that_exist(render_config):
    [cm] = render_config("default").kind("ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["roost.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    used = {base_metric(n) for e in exprs for n in promql_metric_names(e)}
    # every roost_* name is one services/metrics.py exports, every bentoml_* one BentoML's, and the rest
    # are dcgm-exporter's GPU series: nothing else
    assert {n for n in used if n.startswith("roost_")} <= set(METRIC_NAMES), used - set(METRIC_NAMES)
    assert {n for n in used if n.startswith("bentoml_")} <= set(BENTOML_METRICS), used - set(BENTOML_METRICS)
    others = used - set(METRIC_NAMES) - set(BENTOML_METRICS)
    assert others <= set(DCGM_METRICS), others - set(DCGM_METRICS)
    # the panels the issue asks for: rate, latency percentiles, batch size, shed counts, per-label predictions
    for metric in ("roost_requests_total", "roost_stage_seconds", "roost_batch_size", "roost_rejected_total",
                   "roost_predictions_total", "roost_requests_in_flight", "bentoml_service_request_duration_seconds"):
        assert metric in used



def test_dashboard_has_protocol_latency_queue_and_gpu_panels(render_config):
    panels = {p["title"]: p for p in dashboard_panels(render_config("default"))}
    assert len(panels) == len(dashboard_panels(render_config("default")))  # titles are unique
    ids = [p["id"] for p in panels.values()]
    assert len(set(ids)) == len(ids)

    def exprs(fragment: str) -> list[str]:
        [panel] = [p for t, p in panels.items() if fragment in t]
        return [t["expr"] for t in panel["targets"]]

    # latency by protocol, p50 and p99, from the server-side histogram (gRPC included: no protocol filter)
    latency = exprs("Request latency by protocol")
    assert [e.split(",")[0] for e in latency] == ["histogram_quantile(0.5", "histogram_quantile(0.99"]
    for e in latency:
        assert "roost_request_seconds_bucket" in e and "by (le, model, protocol)" in e and "protocol=" not in e
    # the batcher's queue: wait and depth
    assert any("roost_queue_seconds_bucket" in e for e in exprs("Queue wait"))
    assert any("roost_queue_rows" in e for e in exprs("Queue depth"))
    # GPU: dcgm-exporter's series, joined to this dashboard's Roost pods by (namespace, pod)
    for fragment, metric in (("GPU utilisation", "DCGM_FI_DEV_GPU_UTIL"), ("GPU memory", "DCGM_FI_DEV_FB_USED")):
        [first, *_] = exprs(fragment)
        assert first.startswith(f"max by (model, pod, gpu) ({metric}{{")
        assert "* on (namespace, pod) group_left(model)" in first and "roost_model_info{" in first
        [panel] = [p for t, p in panels.items() if fragment in t]
        assert "dcgm-exporter" in panel["description"] and "Empty without" in panel["description"]


def test_helm_test_pods_check_readiness_and_one_inference(render_config):
    rendered = render_config("all-models")
    pods = rendered.kind("Pod")
    assert len(pods) == 4
    for pod in pods:
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        model = env["ROOST_MODEL"]
        assert env["ROOST_URL"] == f"http://roost-{model}:3000"
        script = pod["spec"]["containers"][0]["args"][0]
        compile(script, "helm-test", "exec")  # the inline script is valid Python
        assert "/readyz" in script and "/v2/models/{model}/ready" in script


def test_notes_say_how_to_reach_each_model(helm):
    out = helm("install", "roost", str(CHART), "--namespace", NAMESPACE, "--dry-run=client",
               "-f", str(EXAMPLES["all-models"])).stdout
    notes = out.split("NOTES:", 1)[1]
    for model in MODELS:
        assert f"port-forward service/roost-{model}" in notes
        assert f"/v2/models/{model}" in notes


# --- values.schema.json -----------------------------------------------------------------------------

BAD_VALUES = {
    "unknown model": ["--set", "models.dog.enabled=true"],
    "gpu not an integer": ["--set", "models.bird.gpu=one"],
    "negative gpu": ["--set", "models.bird.gpu=-1"],
    "gpu as a string": ["--set-string", "models.bird.gpu=1"],
    "unknown runtime": ["--set", "models.bird.runtime=tensorflow"],
    "unknown device": ["--set", "models.bird.device=tpu"],
    "unknown precision": ["--set", "models.bird.precision=int4"],
    "unknown canary precision": ["--set", "models.bird.canary.precision=fp16"],
    "unknown autoscaling mode": ["--set", "models.bird.autoscaling.mode=memory"],
    "enabled not a boolean": ["--set-string", "models.bird.enabled=yes"],
    "replicas as a string": ["--set-string", "models.bird.replicas=2"],
    "zero batch size": ["--set", "models.bird.batching.maxBatchSize=0"],
    "negative batch latency": ["--set", "models.bird.batching.maxLatencyMs=-1"],
    "zero queue": ["--set", "models.bird.maxQueue=0"],
    "queue as a string": ["--set-string", "models.bird.maxQueue=64"],
    "zero workers": ["--set", "models.bird.workers=0"],
    "maxConcurrency is gone": ["--set", "models.bird.maxConcurrency=64"],
    "unknown model source": ["--set", "modelSource.type=s3"],
    "unknown model key": ["--set", "models.bird.gpus=1"],
    "unknown top-level key": ["--set", "autoscaling.enabled=true"],
    "bad metric name": ["--set", "models.bird.autoscaling.metricName=requests-in-flight"],
    "relative pvc mount": ["--set", "modelSource.pvc.mountPath=models"],
    "image without repository": ["--set", "models.bird.image.repository="],
    "unknown autoscaler mode external-ish": ["--set", "models.bird.autoscaling.mode=externally"],
    "zero grace period": ["--set", "models.bird.terminationGracePeriodSeconds=0"],
    "gpu resource name with spaces": ["--set", "models.bird.gpuResourceName=nvidia gpu"],
    "unknown strategy type": ["--set", "strategy.type=BlueGreen"],
    "keda fallback of zero replicas": ["--set", "models.bird.autoscaling.keda.fallback.replicas=0"],
}


@pytest.mark.parametrize("args", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_schema_rejects_bad_values(helm, args):
    result = helm("template", "roost", str(CHART), *args, check=False)
    assert result.returncode != 0, f"accepted: {args}"
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr


def test_schema_accepts_every_example_and_the_defaults_file():
    """The schema file is JSON and the defaults validate against it as plain JSON Schema too."""
    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    for config in CONFIGS:
        jsonschema.validate(effective_values(config), schema)
    assert set(schema["properties"]["models"]["properties"]) == set(MODELS)
    assert schema["properties"]["models"]["additionalProperties"] is False
    assert set(yaml.safe_load((CHART / "values.yaml").read_text())["models"]) == set(MODELS)


def test_chart_supports_kubernetes_1_29_and_up(helm):
    assert helm("template", "roost", str(CHART), "--kube-version", "1.29.0", check=False).returncode == 0
    assert helm("template", "roost", str(CHART), "--kube-version", "1.37.0", check=False).returncode == 0
    old = helm("template", "roost", str(CHART), "--kube-version", "1.28.0", check=False)
    assert old.returncode != 0 and "kubeVersion" in old.stderr
